"""The keys of a C-MOVE or C-GET identifier: which instances a hierarchical retrieve names.

PS3.4 C.4.2.2.1 (C-MOVE) and C.4.3.2.1 (C-GET), baseline hierarchical retrieve, for the Patient Root
and Study Root information models (C.6.1, C.6.2):

* the identifier carries the Query/Retrieve Level and the unique keys of that level and of every
  level above it (Patient Root: PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID;
  Study Root has no PATIENT level and no patient key);
* the unique keys above the level hold a single value, the one at the level may hold a list of
  UIDs (C.2.2.2.2); universal (empty) and wild card matching are not allowed in a retrieve;
* unique keys below the level are not part of a hierarchical retrieve (the relational retrieve that
  allows them is not offered), so a non-empty one is refused rather than silently ignored: moving a
  whole study when the caller also named one series would send far more than was asked for.

Other attributes (Specific Character Set, return keys copied from a C-FIND) are ignored. Every error
names the tag at fault; the DIMSE face sends it as Offending Element and Error Comment.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from pacs.errors import InvalidObject

QUERY_RETRIEVE_LEVEL = 0x00080052
PATIENT_ID = 0x00100020
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# The unique key of each level, top down (PS3.4 C.6.1.1 / C.6.2.1).
UNIQUE_KEYS: dict[str, tuple[int, str]] = {
    "PATIENT": (PATIENT_ID, "PatientID"),
    "STUDY": (STUDY_INSTANCE_UID, "StudyInstanceUID"),
    "SERIES": (SERIES_INSTANCE_UID, "SeriesInstanceUID"),
    "IMAGE": (SOP_INSTANCE_UID, "SOPInstanceUID"),
}


class InformationModel(enum.StrEnum):
    PATIENT_ROOT = "Patient Root"
    STUDY_ROOT = "Study Root"

    @property
    def levels(self) -> tuple[str, ...]:
        return LEVELS if self is InformationModel.PATIENT_ROOT else LEVELS[1:]


class InvalidIdentifier(InvalidObject):
    """A retrieve identifier that does not name instances the way the information model requires."""

    def __init__(self, message: str, tag: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag


@dataclass(frozen=True)
class RetrieveRequest:
    """What a retrieve names: the level and the unique keys given at it and above it."""

    model: InformationModel
    level: str
    patient_id: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"{self.model.value} {self.level}"]
        if self.patient_id is not None:
            parts.append(f"part {self.patient_id!r}")
        for name, uids in (
            ("study", self.study_uids),
            ("series", self.series_uids),
            ("instance", self.sop_instance_uids),
        ):
            if uids:
                parts.append(f"{len(uids)} {name} UID(s)" if len(uids) > 1 else f"{name} {uids[0]}")
        return ", ".join(parts)


def parse_retrieve_identifier(identifier: Dataset, model: InformationModel) -> RetrieveRequest:
    """The :class:`RetrieveRequest` of a C-MOVE/C-GET identifier; :class:`InvalidIdentifier` if it is
    not a valid hierarchical retrieve for ``model``."""
    level = _level(identifier, model)
    depth = model.levels.index(level)
    values: dict[str, tuple[str, ...]] = {}
    for position, name in enumerate(model.levels):
        tag, keyword = UNIQUE_KEYS[name]
        if position > depth:
            if _raw_text(identifier, tag, keyword):
                raise InvalidIdentifier(f"{keyword} {_tag(tag)} not allowed at {level} level", tag)
            continue
        values[name] = _unique_key(identifier, tag, keyword, level, many=position == depth)
    patient = values.get("PATIENT")
    return RetrieveRequest(
        model=model,
        level=level,
        patient_id=patient[0] if patient else None,
        study_uids=values.get("STUDY", ()),
        series_uids=values.get("SERIES", ()),
        sop_instance_uids=values.get("IMAGE", ()),
    )


def _level(identifier: Dataset, model: InformationModel) -> str:
    value = _raw_text(identifier, QUERY_RETRIEVE_LEVEL, "QueryRetrieveLevel")
    if not value:
        raise InvalidIdentifier(
            f"QueryRetrieveLevel {_tag(QUERY_RETRIEVE_LEVEL)} missing", QUERY_RETRIEVE_LEVEL
        )
    level = value.strip().upper()
    if level not in model.levels:
        raise InvalidIdentifier(
            f"QueryRetrieveLevel {_tag(QUERY_RETRIEVE_LEVEL)} not a {model.value} level: {value.strip()!r}",
            QUERY_RETRIEVE_LEVEL,
        )
    return level


def _unique_key(identifier: Dataset, tag: int, keyword: str, level: str, *, many: bool) -> tuple[str, ...]:
    try:
        element = identifier.get(tag)
        value = None if element is None else element.value
    except Exception as exc:  # an undecodable value: pydicom decodes lazily, on first access
        raise InvalidIdentifier(f"{keyword} {_tag(tag)} cannot be decoded: {exc}", tag) from None
    if isinstance(value, MultiValue | list | tuple):
        items = [str(v).strip() for v in value]
    elif value is None or value == "":
        items = []
    else:
        items = [str(value).strip()]
    items = [v for v in items if v]
    if not items:
        raise InvalidIdentifier(f"{keyword} {_tag(tag)} missing, required at {level} level", tag)
    if keyword == "PatientID":
        if len(items) > 1:
            raise InvalidIdentifier(f"PatientID {_tag(tag)} must be a single value", tag)
        if "*" in items[0] or "?" in items[0]:
            raise InvalidIdentifier(f"PatientID {_tag(tag)}: no wild card matching in a retrieve", tag)
        return (items[0],)
    if len(items) > 1 and not many:
        raise InvalidIdentifier(f"{keyword} {_tag(tag)} must be one UID above {level} level", tag)
    for item in items:
        if not UID(item).is_valid:
            raise InvalidIdentifier(f"{keyword} {_tag(tag)} not a valid UID: {item[:40]!r}", tag)
    return tuple(dict.fromkeys(items))  # a UID listed twice is retrieved once


def _raw_text(identifier: Dataset, tag: int, keyword: str) -> str:
    """A text element's value as a string ('' when absent or empty)."""
    try:
        element = identifier.get(tag)
        value = None if element is None else element.value
    except Exception as exc:
        raise InvalidIdentifier(f"{keyword} {_tag(tag)} cannot be decoded: {exc}", tag) from None
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
