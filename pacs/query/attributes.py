"""Which attributes a query can match and return, at which level, and where the index keeps their values.

Three places hold an entity's values, and a query never opens a stored object:

* a **column** of the index (``pacs/diconde/attributes.csv``, plus the counters and the modalities
  kept by the ingest transaction, and the current version's transfer syntax): matched in SQL;
* a value **computed** in SQL at query time (SOP Classes in Study, from the instance rows);
* the **DICOM JSON** of the entity's first instance (its current version), for every other
  attribute: matched in Python on the candidates SQL has narrowed, so a query on such a key alone
  reads the metadata of every entity of its level. The first instance is the one that created the
  entity, whose values the columns keep too (``pacs/index/repository.py``).

Each attribute has a *home level* (PS3.4 C.6.1.1 / C.6.2.1): keys below the query level may only be
universal (they come back empty), keys above it are matched too. An attribute this table does not
know is taken to belong to the query level and answered from the DICOM JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword

from pacs.diconde import LEVELS, indexed_attributes
from pacs.query.model import InformationModel, Level

_LEVEL_OF_ENTITY = {level.entity: level for level in Level}


@dataclass(frozen=True)
class Column:
    """A column of ``table``; ``match_column`` is the column that matching uses when it is not the
    value column (person names match on their case-folded key)."""

    table: str
    column: str
    multi_valued: bool = False
    match_column: str | None = None


@dataclass(frozen=True)
class Computed:
    """Computed in SQL from the rows below the entity."""

    name: str


@dataclass(frozen=True)
class FromJson:
    """Read from the DICOM JSON of the entity's first instance."""


@dataclass(frozen=True)
class FromResponse:
    """Filled by the response itself (Query/Retrieve Level, Retrieve AE Title, Instance Availability)."""


Source = Column | Computed | FromJson | FromResponse


@dataclass(frozen=True)
class QueryAttribute:
    tag: int
    keyword: str
    vr: str
    level: Level | None  # None: any level (the response fills it)
    source: Source

    def home_level(self, model: InformationModel) -> Level | None:
        """The level the attribute belongs to in ``model``: patient attributes are study attributes
        of the Study Root model (PS3.4 C.6.2.1.2)."""
        if self.level is Level.PATIENT and model is InformationModel.STUDY_ROOT:
            return Level.STUDY
        return self.level


#: The unique key of each level (PS3.4 C.6.1.1 and C.6.2.1).
UNIQUE_KEYS: dict[Level, int] = {
    Level.PATIENT: 0x00100020,  # PatientID = part ID
    Level.STUDY: 0x0020000D,  # StudyInstanceUID
    Level.SERIES: 0x0020000E,  # SeriesInstanceUID
    Level.IMAGE: 0x00080018,  # SOPInstanceUID
}

# Counters the ingest transaction keeps (Number of ... Related ..., PS3.4 C.3.4).
_COUNTERS = (
    ("NumberOfPatientRelatedStudies", Level.PATIENT, "component", "number_of_studies"),
    ("NumberOfPatientRelatedSeries", Level.PATIENT, "component", "number_of_series"),
    ("NumberOfPatientRelatedInstances", Level.PATIENT, "component", "number_of_instances"),
    ("NumberOfStudyRelatedSeries", Level.STUDY, "inspection", "number_of_series"),
    ("NumberOfStudyRelatedInstances", Level.STUDY, "inspection", "number_of_instances"),
    ("NumberOfSeriesRelatedInstances", Level.SERIES, "series", "number_of_instances"),
)

# Attributes kept only in the DICOM JSON whose level is known, so that a query at a level above
# theirs is told they cannot be matched there (PS3.4 C.6.1.1 optional keys, DICONDE.md).
_JSON_LEVELS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "PatientSex",
        "PatientBirthTime",
        "OtherPatientNames",
        "PatientComments",
        "OtherPatientIDsSequence",
        "IssuerOfPatientIDQualifiersSequence",
        "ComponentWelderIDs",
    ),
    Level.STUDY: (
        "ReferringPhysicianName",
        "PhysiciansOfRecord",
        "NameOfPhysiciansReadingStudy",
        "ProcedureCodeSequence",
        "IssuerOfAccessionNumberSequence",
        "AdmittingDiagnosesDescription",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "ReasonForPerformedProcedureCodeSequence",
    ),
    Level.SERIES: (
        "BodyPartExamined",
        "Laterality",
        "OperatorsName",
        "PerformingPhysicianName",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepDescription",
        "RequestAttributesSequence",
        "InstitutionName",
        "InstitutionalDepartmentName",
        "ManufacturerModelName",
        "DeviceSerialNumber",
        "SoftwareVersions",
        "FrameOfReferenceUID",
    ),
    Level.IMAGE: (
        "ImageType",
        "AcquisitionDate",
        "AcquisitionTime",
        "AcquisitionDateTime",
        "AcquisitionNumber",
        "ImageComments",
        "ContentLabel",
        "ContentDescription",
        "ConceptNameCodeSequence",
        "CompletionFlag",
        "VerificationFlag",
        "PhotometricInterpretation",
        "SamplesPerPixel",
        "BitsStored",
        "PixelSpacing",
        "ImagerPixelSpacing",
        "KVP",
        "EvaluatorSequence",
        "IndicationSequence",
        "NominalFrequency",
        "CouplingMedium",
        "ImageQualityIndicatorMaterial",
    ),
}

# Answered by the response, at any level.
_RESPONSE_KEYS = ("QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability")


def _make(keyword: str, level: Level | None, source: Source) -> QueryAttribute:
    tag = tag_for_keyword(keyword)
    if tag is None:  # a typo in the tables above
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    return QueryAttribute(tag, keyword, dictionary_VR(tag), level, source)


def _multi_valued(tag: int) -> bool:
    return dictionary_VM(tag) != "1"


@cache
def query_attributes() -> dict[int, QueryAttribute]:
    """Every attribute the archive knows a home for, by tag."""
    table: dict[int, QueryAttribute] = {}
    for level_name in LEVELS:
        for attr in indexed_attributes()[level_name]:
            # A column keeps all values of a string, only the first of a number (pacs.diconde).
            multi = attr.python_type is str and _multi_valued(attr.tag)
            match_column = "component_name_key" if attr.column == "component_name" else None
            source = Column(level_name, attr.column, multi, match_column)
            table[attr.tag] = _make(attr.keyword, _LEVEL_OF_ENTITY[level_name], source)
    for keyword, level, table_name, column in _COUNTERS:
        attribute = _make(keyword, level, Column(table_name, column))
        table[attribute.tag] = attribute
    for attribute in (
        _make("ModalitiesInStudy", Level.STUDY, Column("inspection", "modalities_in_study", True)),
        _make("SOPClassesInStudy", Level.STUDY, Computed("sop_classes_in_study")),
        # The encoding a C-GET / C-MOVE sends the instance in when the peer accepts it.
        _make("AvailableTransferSyntaxUID", Level.IMAGE, Column("instance_version", "transfer_syntax_uid")),
    ):
        table[attribute.tag] = attribute
    for level, keywords in _JSON_LEVELS.items():
        for keyword in keywords:
            attribute = _make(keyword, level, FromJson())
            table.setdefault(attribute.tag, attribute)
    for keyword in _RESPONSE_KEYS:
        attribute = _make(keyword, None, FromResponse())
        table[attribute.tag] = attribute
    return table


def lookup(tag: int) -> QueryAttribute | None:
    return query_attributes().get(tag)


def attribute_for(tag: int, vr: str | None = None) -> QueryAttribute:
    """The attribute of ``tag``: a known one, or one read from the DICOM JSON at the query level."""
    known = lookup(tag)
    if known is not None:
        return known
    keyword = keyword_for_tag(tag) or ""
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    return QueryAttribute(tag, keyword, vr, None, FromJson())


def tag_hex(tag: int) -> str:
    """The attribute's key in DICOM JSON: eight upper-case hex digits."""
    return f"{tag:08X}"


def json_element(vr: str, value: Any) -> dict[str, Any] | None:
    """A column value as a DICOM JSON element (PS3.18 F.2); ``None`` for an unknown value.

    Strings of multi-valued attributes are kept backslash-joined in their column; person names as
    their DICOM string (component groups separated by ``=``).
    """
    if value is None or value == "":
        return None
    if vr == "PN":
        values: list[Any] = [_person_name(v) for v in str(value).split("\\")]
    elif vr in ("IS", "SL", "SS", "UL", "US", "SV", "UV"):
        values = [int(value)]
    elif vr in ("DS", "FL", "FD"):
        number = float(value)
        values = [int(number) if number.is_integer() and vr == "DS" else number]
    elif isinstance(value, str):
        values = value.split("\\")
    else:
        values = [value]
    return {"vr": vr, "Value": values}


def _person_name(text: str) -> dict[str, str]:
    groups = text.split("=")
    return {
        name: group
        for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
        if group
    }
