"""C-FIND against independent clients: DCMTK findscu (Debian) and pynetdicom, both backend pairs.

What an inspector at a viewer workstation relies on: both query models answer at every level with
the values the archive holds, each matching type finds what the standard says, component names
come back intact in UTF-8 and Latin-1, C-CANCEL stops a long answer, and a bad query gets a failure
status that says what is wrong while the archive goes on serving.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DigitalXRayImageStorageForPresentation, EnhancedCTImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from dicom_nodes.server import SERVICES
from pacs.archive import Archive, open_archive
from pacs.config import load_settings
from pacs.context import CallerContext
from pacs.index.schema import component, inspection
from tests.conftest import BACKENDS, RunningNode, start_dicom_node
from tests.support.factories import diconde_dx, enhanced_ct, us_multiframe, write

FINDSCU = "/usr/bin/findscu"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
LATIN1_NAME = "Gehäuse^Flügelrad"
UTF8_NAME = "Лопатка^涡轮叶片"
CTX = CallerContext(via="import", user="tester")


def uid(name: str) -> str:
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'test_find ' + name).int}"


S1, S2, S3, S4 = (uid(f"study {n}") for n in range(1, 5))
S1_DX, S1_CT, S2_DX, S3_US, S4_US = (
    uid(f"series {n}") for n in ("S1-DX", "S1-CT", "S2-DX", "S3-US", "S4-US")
)
I1, I2, I3 = (uid(f"instance {n}") for n in range(1, 4))


def _indication(label: str, kind: str) -> Dataset:
    item = Dataset()
    item.IndicationLabel = label
    item.IndicationType = kind
    return item


def _scans() -> list[Dataset]:
    small = {"rows": 16, "columns": 16}
    return [
        diconde_dx(
            part_id="BLADE-0001",
            study_uid=S1,
            series_uid=S1_DX,
            sop_uid=I1,
            AccessionNumber="WO-1000",
            IndicationSequence=Sequence([_indication("PORE-1", "POROSITY"), _indication("CRACK-1", "CRACK")]),
            **small,
        ),
        diconde_dx(
            part_id="BLADE-0001", study_uid=S1, series_uid=S1_DX, sop_uid=I2, InstanceNumber=2, **small
        ),
        enhanced_ct(
            part_id="BLADE-0001",
            component_name="Turbine^Blade",
            study_uid=S1,
            series_uid=S1_CT,
            sop_uid=I3,
            frames=2,
            SeriesNumber=2,
            **small,
        ),  # noqa: E501
        diconde_dx(
            part_id="BLADE-0002",
            component_name="TURBINE^Blade^Spare",
            study_uid=S2,
            series_uid=S2_DX,
            StudyDate="20240401",
            StudyTime="093000",
            AccessionNumber="WO-2000",
            MaterialGrade="Ti-6Al-4V",
            **small,
        ),
        us_multiframe(
            part_id="CASING-7",
            component_name=LATIN1_NAME,
            charset="ISO_IR 100",
            study_uid=S3,
            series_uid=S3_US,
            frames=2,
            StudyDate="20231120",
            AccessionNumber="WO-3000",
            **small,
        ),
        us_multiframe(
            part_id="WELD-3",
            component_name=UTF8_NAME,
            charset="ISO_IR 192",
            study_uid=S4,
            series_uid=S4_US,
            frames=2,
            StudyDate="20240315",
            StudyTime="160000",
            AccessionNumber="WO-4000",
            **small,
        ),
    ]


@dataclass
class Served:
    archive: Archive
    node: RunningNode
    folder: Path
    calls: list[int] = field(default_factory=lambda: [0])


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """An archive of four inspections behind a DIMSE node with the C-FIND SCP, per backend pair."""
    folder = tmp_path_factory.mktemp("find")
    values: dict[str, object] = {"data_dir": folder / "pacs-data"}
    database = None
    if request.param == "postgresql+s3":
        database = request.getfixturevalue("postgres").fresh()
        values["database_url"] = database
        values["object_store"] = request.getfixturevalue("s3_server").url(f"find-{uuid.uuid4().hex[:12]}")
    archive = open_archive(load_settings(values))
    for number, ds in enumerate(_scans()):
        archive.ingest.ingest_file(write(ds, folder / f"{number}.dcm"), CTX)
    node = start_dicom_node(archive, services=SERVICES)
    try:
        yield Served(archive, node, folder)
    finally:
        node.node.stop(grace=5)  # type: ignore[attr-defined]
        archive.close()
        if database is not None:
            request.getfixturevalue("postgres").drop(database)


# -- findscu ------------------------------------------------------------------------------------
@dataclass
class Findscu:
    returncode: int
    output: str
    responses: list[Dataset]

    @property
    def final_status(self) -> int:
        found = re.findall(r"DIMSE Status\s+:\s+0x([0-9a-fA-F]{4})", self.output)
        assert found, self.output[-2000:]
        return int(found[-1], 16)

    @property
    def error_comment(self) -> str:
        found = re.search(r"\(0000,0902\) LO \[(.*)\]", self.output)
        assert found, self.output[-2000:]
        return found.group(1)

    def values(self, keyword: str) -> list[object]:
        out: list[object] = []
        for ds in self.responses:
            value = ds[keyword].value if keyword in ds else None
            if type(value).__name__ == "MultiValue":
                value = [str(v) for v in value]
            elif value is not None and not isinstance(value, int | float | Sequence):
                value = str(value)
            out.append(value)
        return out


def findscu(served: Served, model: str, *keys: str | bytes, extra: tuple[str, ...] = ()) -> Findscu:
    """Run findscu with ``-k`` keys (str or raw bytes) and read the responses it extracts (``-X``)."""
    served.calls[0] += 1
    out = served.folder / f"rsp-{served.calls[0]}"
    out.mkdir()
    args: list[str | bytes] = [FINDSCU, "-d", model, "-X", "-od", str(out), *extra]
    args += ["-aec", served.node.ae_title, served.node.host, str(served.node.port)]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run(args, capture_output=True, timeout=120, env=DCMTK_ENV)
    output = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
    responses = [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    return Findscu(done.returncode, output, responses)


# -- both models, every level ---------------------------------------------------------------------
def test_patient_root_every_level(served: Served) -> None:
    patients = findscu(
        served,
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "PatientID=BLADE-000*",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
        "MaterialGrade",
    )
    assert patients.final_status == 0x0000
    assert patients.values("PatientID") == ["BLADE-0001", "BLADE-0002"]
    assert patients.values("PatientName") == ["Turbine^Blade", "TURBINE^Blade^Spare"]
    assert patients.values("NumberOfPatientRelatedStudies") == ["1", "1"]
    assert patients.values("NumberOfPatientRelatedInstances") == ["3", "1"]
    assert patients.values("MaterialGrade") == ["Inconel 718", "Ti-6Al-4V"]
    assert patients.values("QueryRetrieveLevel") == ["PATIENT", "PATIENT"]
    assert patients.values("RetrieveAETitle") == [served.node.ae_title] * 2

    studies = findscu(
        served, "-P", "QueryRetrieveLevel=STUDY", "PatientID=BLADE-0001", "StudyInstanceUID", "StudyDate"
    )
    assert studies.values("StudyInstanceUID") == [S1]
    assert studies.values("StudyDate") == ["20240315"]

    series = findscu(
        served,
        "-P",
        "QueryRetrieveLevel=SERIES",
        "PatientID=BLADE-0001",
        f"StudyInstanceUID={S1}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
    )
    assert series.values("SeriesInstanceUID") == [S1_DX, S1_CT]
    assert series.values("Modality") == ["DX", "CT"]
    assert series.values("NumberOfSeriesRelatedInstances") == ["2", "1"]

    images = findscu(
        served,
        "-P",
        "QueryRetrieveLevel=IMAGE",
        "PatientID=BLADE-0001",
        f"StudyInstanceUID={S1}",
        f"SeriesInstanceUID={S1_DX}",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "Rows",
    )
    assert images.values("SOPInstanceUID") == [I1, I2]
    assert images.values("SOPClassUID") == [DigitalXRayImageStorageForPresentation] * 2
    assert images.values("InstanceNumber") == ["1", "2"]
    assert images.values("Rows") == [16, 16]


def test_study_root_every_level(served: Served) -> None:
    studies = findscu(
        served,
        "-S",
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "PatientID",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "SOPClassesInStudy",
    )
    assert studies.final_status == 0x0000
    assert studies.values("StudyInstanceUID") == [S1, S2, S3, S4]
    assert studies.values("PatientID") == ["BLADE-0001", "BLADE-0002", "CASING-7", "WELD-3"]
    assert studies.values("AccessionNumber") == ["WO-1000", "WO-2000", "WO-3000", "WO-4000"]
    assert studies.values("ModalitiesInStudy") == [["CT", "DX"], "DX", "US", "US"]
    assert studies.values("NumberOfStudyRelatedSeries") == ["2", "1", "1", "1"]
    assert studies.values("NumberOfStudyRelatedInstances") == ["3", "1", "1", "1"]
    assert studies.values("SOPClassesInStudy")[0] == sorted(
        [DigitalXRayImageStorageForPresentation, EnhancedCTImageStorage]
    )

    series = findscu(
        served,
        "-S",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={S1}",
        "SeriesInstanceUID",
        "SeriesNumber",
    )
    assert series.values("SeriesInstanceUID") == [S1_DX, S1_CT]
    assert series.values("SeriesNumber") == ["1", "2"]

    images = findscu(
        served,
        "-S",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={S1}",
        f"SeriesInstanceUID={S1_CT}",
        "SOPInstanceUID",
        "NumberOfFrames",
        "SOPClassUID",
    )
    assert images.values("SOPInstanceUID") == [I3]
    assert images.values("NumberOfFrames") == ["2"]
    assert images.values("SOPClassUID") == [EnhancedCTImageStorage]


# -- each matching type ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (("PatientID=BLADE-0002",), [S2]),  # single value
        (("AccessionNumber=wo-1000",), []),  # single value, case-sensitive
        (("PatientName=turbine*",), [S1, S2]),  # wildcard; person names ignore case
        (("PatientName=Turbine^Bl?de",), [S1]),
        (("StudyDate=20240315",), [S1, S4]),
        (("StudyDate=20240301-20240331",), [S1, S4]),  # range
        (("StudyDate=20240401-",), [S2]),  # open ranges
        (("StudyDate=-20231231",), [S3]),
        (("StudyTime=1500-1700",), [S4]),
        ((f"StudyInstanceUID={S3}\\{S1}",), [S1, S3]),  # list of UIDs
        (("ModalitiesInStudy=DX",), [S1, S2]),  # any value of a multi-valued attribute
        (("ModalitiesInStudy=CT\\US",), [S1, S3, S4]),  # multiple values
        (("(0010,1000)=SN-CASING-7-B",), [S3]),  # serial numbers (OtherPatientIDs, retired in DCMTK)
        (("MaterialGrade=Ti-*",), [S2]),
        (("PatientName",), [S1, S2, S3, S4]),  # universal
        (("AccessionNumber=*",), [S1, S2, S3, S4]),
    ],
    ids=lambda v: str(v[0]) if isinstance(v, tuple) else None,
)
def test_each_matching_type(served: Served, keys: tuple[str, ...], expected: list[str]) -> None:
    result = findscu(served, "-S", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys)
    assert result.final_status == 0x0000
    assert result.values("StudyInstanceUID") == expected


def test_sequence_matching_of_one_item(served: Served) -> None:
    result = findscu(
        served,
        "-S",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={S1}",
        f"SeriesInstanceUID={S1_DX}",
        "SOPInstanceUID",
        "IndicationSequence[0].IndicationType=CRACK",
        "IndicationSequence[0].IndicationLabel",
    )
    assert result.values("SOPInstanceUID") == [I1]
    (item,) = result.responses[0].IndicationSequence
    assert (item.IndicationType, item.IndicationLabel) == ("CRACK", "CRACK-1")


def test_keys_the_archive_does_not_know_come_back_empty(served: Served) -> None:
    result = findscu(
        served,
        "-S",
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={S2}",
        "PatientComments",
        "ReferringPhysicianName",
        "Modality",
        "(0009,0010)",
    )
    (response,) = result.responses
    for keyword in ("PatientComments", "ReferringPhysicianName", "Modality"):
        assert keyword in response and response[keyword].is_empty
    assert 0x00090010 in response and response[0x00090010].is_empty


# -- character sets -------------------------------------------------------------------------------
def test_utf8_component_name(served: Served) -> None:
    result = findscu(
        served,
        "-S",
        "QueryRetrieveLevel=STUDY",
        "SpecificCharacterSet=ISO_IR 192",
        "PatientName=лопатка*",  # lower case: Cyrillic is case-folded like Latin
        "StudyInstanceUID",
    )
    assert result.values("StudyInstanceUID") == [S4]
    assert result.values("PatientName") == [UTF8_NAME]
    assert result.values("SpecificCharacterSet") == ["ISO_IR 192"]


def test_latin1_component_name(served: Served) -> None:
    result = findscu(
        served,
        "-P",
        "QueryRetrieveLevel=PATIENT",
        "SpecificCharacterSet=ISO_IR 100",
        b"PatientName=" + "gehäuse*".encode("latin-1"),
        "PatientID",
    )
    assert result.values("PatientID") == ["CASING-7"]
    assert result.values("PatientName") == [LATIN1_NAME]
    assert result.values("SpecificCharacterSet") == ["ISO_IR 100"]
    # The raw bytes on the wire are Latin-1, as the request's character set says.
    assert (
        "Gehäuse^Flügelrad".encode("latin-1")
        in (served.folder / f"rsp-{served.calls[0]}" / "rsp0001.dcm").read_bytes()
    )


def test_responses_switch_to_utf8_when_the_request_set_cannot_carry_a_name(served: Served) -> None:
    latin1 = findscu(
        served,
        "-S",
        "QueryRetrieveLevel=STUDY",
        "SpecificCharacterSet=ISO_IR 100",
        "PatientID=WELD-3",
        "PatientName",
    )
    assert latin1.values("SpecificCharacterSet") == ["ISO_IR 192"]
    assert latin1.values("PatientName") == [UTF8_NAME]
    default = findscu(served, "-S", "QueryRetrieveLevel=STUDY", "PatientID=CASING-7", "PatientName")
    assert default.values("SpecificCharacterSet") == ["ISO_IR 192"]
    assert default.values("PatientName") == [LATIN1_NAME]
    ascii_only = findscu(served, "-S", "QueryRetrieveLevel=STUDY", "PatientID=BLADE-0002", "PatientName")
    assert "SpecificCharacterSet" not in ascii_only.responses[0]


# -- bad queries ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "keys", "status", "comment"),
    [
        ("-S", ("PatientID=X",), 0xA900, "missing QueryRetrieveLevel (0008,0052)"),
        ("-S", ("QueryRetrieveLevel=PATIENT", "PatientID"), 0xA900, "not a level of the study root model"),
        ("-P", ("QueryRetrieveLevel=WORKLIST",), 0xA900, "not a level of the patient root model"),
        (
            "-P",
            ("QueryRetrieveLevel=STUDY", "StudyInstanceUID"),
            0xA900,
            "unique key of the PATIENT level missing",
        ),
        ("-S", ("QueryRetrieveLevel=STUDY", "Modality=DX"), 0xA900, "SERIES key matched in a STUDY query"),
        ("-S", ("QueryRetrieveLevel=STUDY", "StudyDate=20240101-2024"), 0xC000, "not a valid DA range"),
        (
            "-S",
            ("QueryRetrieveLevel=STUDY", "StudyDate=20240301-20240101"),
            0xC000,
            "range starts after it ends",
        ),
        ("-S", ("QueryRetrieveLevel=STUDY", "StudyDate=2024*"), 0xC000, "no wildcards in DA, use a range"),
        ("-S", ("QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.*"), 0xC000, "no wildcards in UI"),
    ],
    ids=lambda v: str(v) if isinstance(v, int) else None,
)
def test_bad_queries_get_a_failure_status_with_the_reason(
    served: Served, model: str, keys: tuple[str, ...], status: int, comment: str
) -> None:
    result = findscu(served, model, *keys)
    assert result.final_status == status
    assert result.error_comment.startswith(comment)
    assert len(result.error_comment) <= 64
    assert result.responses == []
    # ... and the archive goes on answering.
    assert findscu(served, "-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S2}").values(
        "StudyInstanceUID"
    ) == [S2]


def test_bad_query_names_the_offending_element_and_the_association_goes_on(served: Served) -> None:
    ae = AE("INSPECTOR")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(served.node.host, served.node.port, ae_title=served.node.ae_title)
    assert assoc.is_established
    try:
        bad = Dataset()
        bad.QueryRetrieveLevel = "SERIES"
        bad.StudyInstanceUID = ""
        ((status, identifier),) = list(assoc.send_c_find(bad, StudyRootQueryRetrieveInformationModelFind))
        assert status.Status == 0xA900
        assert status.OffendingElement == 0x0020000D
        assert (
            status.ErrorComment == "unique key of the STUDY level not a single value: StudyInstanceUID"[:64]
        )
        assert identifier is None

        good = Dataset()
        good.QueryRetrieveLevel = "SERIES"
        good.StudyInstanceUID = S1
        good.SeriesInstanceUID = ""
        answers = list(assoc.send_c_find(good, StudyRootQueryRetrieveInformationModelFind))
        assert [s.Status for s, _ in answers] == [0xFF00, 0xFF00, 0x0000]
        assert [ds.SeriesInstanceUID for _, ds in answers[:2]] == [S1_DX, S1_CT]
    finally:
        assoc.release()


def test_unsupported_sop_classes_are_not_accepted(served: Served) -> None:
    psonly = findscu(served, "-O", "QueryRetrieveLevel=STUDY")
    assert psonly.returncode != 0
    assert "No Acceptable Presentation Contexts" in psonly.output
    ae = AE("INSPECTOR")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(served.node.host, served.node.port, ae_title=served.node.ae_title)
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert accepted == {PatientRootQueryRetrieveInformationModelFind}
    finally:
        assoc.release()


# -- C-CANCEL -------------------------------------------------------------------------------------
MANY = 3000


def _many_inspections(archive: Archive) -> None:
    """Thousands of inspections of one component, written straight into the index: C-FIND reads only
    the index, and a stream this long cannot finish before a C-CANCEL arrives."""
    now = dt.datetime.now(dt.UTC)
    with archive.engine.begin() as conn:
        component_id = conn.execute(
            component.insert().values(part_id="FLEET-1", component_name="Fleet^Part", created_at=now)
        ).inserted_primary_key[0]
        conn.execute(
            inspection.insert(),
            [
                {
                    "component_id": component_id,
                    "study_instance_uid": f"1.2.826.0.1.3680043.10.1.{n}",
                    "study_date": "20240101",
                    "created_at": now,
                }
                for n in range(MANY)
            ],
        )


@pytest.fixture
def crowded(archive: Archive) -> Iterator[RunningNode]:
    _many_inspections(archive)
    node = start_dicom_node(archive, services=SERVICES)
    yield node
    node.node.stop(grace=5)  # type: ignore[attr-defined]


def test_c_cancel_stops_the_responses(crowded: RunningNode) -> None:
    ae = AE("INSPECTOR")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(crowded.host, crowded.port, ae_title=crowded.ae_title)
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "FLEET-1"
        query.StudyInstanceUID = ""
        context = assoc._get_valid_context(StudyRootQueryRetrieveInformationModelFind, "", "scu")
        statuses = []
        for status, _identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind, msg_id=11
        ):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(11, context.context_id)
        assert statuses[0] == 0xFF00
        assert statuses[-1] == 0xFE00  # Cancel
        assert len(statuses) - 1 < MANY

        # The association still answers afterwards.
        query.StudyInstanceUID = "1.2.826.0.1.3680043.10.1.7\\1.2.826.0.1.3680043.10.1.2999"
        again = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, msg_id=12))
        assert [status.Status for status, _ in again] == [0xFF00, 0xFF00, 0x0000]
    finally:
        assoc.release()


def test_findscu_cancel(crowded: RunningNode, tmp_path: Path) -> None:
    args = [FINDSCU, "-v", "-S", "--cancel", "1", "-aec", crowded.ae_title, crowded.host, str(crowded.port)]
    args += ["-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=FLEET-1", "-k", "StudyInstanceUID"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=DCMTK_ENV)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Sending Cancel Request" in output
    assert "Received Final Find Response (Cancel: MatchingTerminatedDueToCancelRequest)" in output
    pending = output.count("(Pending)")
    assert 1 <= pending < MANY


# -- the index is gone ----------------------------------------------------------------------------
def test_index_unavailable_gives_out_of_resources(archive: Archive, request: pytest.FixtureRequest) -> None:
    """A C-FIND while the database is gone is refused with 0xA700 (a retry may succeed), not a crash."""
    node = start_dicom_node(archive, services=SERVICES)
    try:
        archive.engine.dispose()
        if archive.engine.dialect.name == "sqlite":
            index = Path(str(archive.engine.url.database))
            for path in (index, index.with_name(index.name + "-wal"), index.with_name(index.name + "-shm")):
                path.unlink(missing_ok=True)  # a new, empty file has no tables
        else:
            request.getfixturevalue("postgres").drop(str(archive.settings.database_url))
        ae = AE("INSPECTOR")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
        assert assoc.is_established
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            ((status, identifier),) = list(
                assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            )
            assert status.Status == 0xA700
            assert status.ErrorComment.startswith("index unavailable")
            assert identifier is None
        finally:
            assoc.release()
    finally:
        node.node.stop(grace=5)  # type: ignore[attr-defined]
