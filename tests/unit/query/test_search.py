"""Matching semantics of the search service on a real index, both backend pairs (SQLite and PostgreSQL).

What an inspector relies on: a query finds exactly the scans the standard's rules say it finds,
whichever database is behind the archive: case-sensitive values, case-insensitive component names,
wildcards that treat SQL's special characters as text, date and time ranges, multi-valued
attributes matched by any value, counts and NDE keys, and every requested key answered.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DigitalXRayImageStorageForPresentation, EnhancedCTImageStorage, ExplicitVRLittleEndian

from pacs.archive import Archive
from pacs.query.identifier import query_from_identifier
from pacs.query.model import Query
from tests.support.factories import diconde_dx, write
from tests.unit.query.conftest import CTX, Scans
from tests.unit.query.queries import PATIENT_ROOT, STUDY_ROOT, find, identifier, received, values


def studies(scans: Scans, **keys: object) -> list[str]:
    """Names (S1..S5) of the inspections a Study Root STUDY query finds, in response order."""
    names = {v: k for k, v in scans.study.items()}
    responses = find(scans.archive, identifier("STUDY", **{"StudyInstanceUID": "", **keys}))
    return [names[uid] for uid in values(responses, "StudyInstanceUID")]


# -- the three queries an inspector makes most ----------------------------------------------------
def test_inspections_by_part_id(scans: Scans) -> None:
    responses = find(
        scans.archive,
        identifier("STUDY", PatientID="BLADE-0001", StudyInstanceUID="", StudyDate=""),
        PATIENT_ROOT,
    )
    assert values(responses, "StudyInstanceUID") == [scans.study["S1"]]
    assert values(responses, "StudyDate") == ["20240315"]
    assert studies(scans, PatientID="BLADE-000*") == ["S1", "S2"]  # not blade-0003: IDs are case-sensitive
    assert studies(scans, PatientID="blade-0001") == []


def test_component_names_match_case_insensitively(scans: Scans) -> None:
    """The archive's person name policy: PN values match whatever their case, and come back as stored."""
    assert studies(scans, PatientName="turbine*") == ["S1", "S2", "S5"]
    assert studies(scans, PatientName="BLADE*") == []
    assert studies(scans, PatientName="TURBINE^BLADE") == ["S1", "S5"]
    responses = find(scans.archive, identifier("STUDY", PatientName="tURBINE^bLADE^spare"))
    assert values(responses, "PatientName") == ["TURBINE^Blade^Spare"]
    assert studies(scans, PatientName="*^blade") == ["S1", "S5"]
    assert studies(scans, PatientName="Turbine^Bl?de") == ["S1", "S5"]


def test_inspections_by_date_range(scans: Scans) -> None:
    assert studies(scans, StudyDate="20240315") == ["S1", "S4"]
    assert studies(scans, StudyDate="20240301-20240331") == ["S1", "S4"]
    assert studies(scans, StudyDate="-20231231") == ["S3"]
    assert studies(scans, StudyDate="20240401-") == ["S2", "S5"]
    assert studies(scans, StudyDate="20230101-20231231\\20240501-20240531") == ["S3", "S5"]
    assert studies(scans, StudyDate="20250101-") == []


# -- strings --------------------------------------------------------------------------------------
def test_values_match_case_sensitively(scans: Scans) -> None:
    assert studies(scans, AccessionNumber="WO-1000") == ["S1"]
    assert studies(scans, AccessionNumber="wo-1000") == []
    assert studies(scans, AccessionNumber="wo-*") == []
    assert studies(scans, StudyDescription="weld*") == []
    assert studies(scans, StudyDescription="Weld*") == ["S1", "S2"]


def test_sql_special_characters_are_text(scans: Scans) -> None:
    """'%', '_', '[' and '\\' mean nothing special in DICOM: only '*' and '?' are wildcards."""
    assert studies(scans, StudyDescription="Weld 100% [A]_1") == ["S1"]
    assert studies(scans, StudyDescription="*% [A]_*") == ["S1"]
    assert studies(scans, StudyDescription="*[A]*") == ["S1"]  # not "Weld A"
    assert studies(scans, StudyDescription="Weld 100_*") == []
    assert studies(scans, StudyDescription="Weld ?") == ["S2"]
    assert studies(scans, StudyDescription="Weld %") == []


def test_times_match_by_the_period_they_name(scans: Scans) -> None:
    assert studies(scans, StudyTime="1000-1100") == ["S1", "S5"]
    assert studies(scans, StudyTime="1600") == ["S3", "S4"]  # 16:00 and 16:00:00.25
    assert studies(scans, StudyTime="-0959") == ["S2"]
    assert studies(scans, StudyTime="160000.2-") == ["S4"]
    assert studies(scans, StudyTime="160000.3-") == []


def test_uid_lists(scans: Scans) -> None:
    listed = f"{scans.study['S3']}\\{scans.study['S1']}"
    assert studies(scans, StudyInstanceUID=listed) == ["S1", "S3"]
    series = find(
        scans.archive,
        identifier("SERIES", StudyInstanceUID=listed, SeriesInstanceUID="", Modality=""),
    )
    assert values(series, "Modality") == ["DX", "CT", "US"]


# -- multi-valued attributes and NDE keys ---------------------------------------------------------
def test_serial_numbers_match_any_of_their_values(scans: Scans) -> None:
    assert studies(scans, OtherPatientIDs="SN-BLADE-0002-B") == ["S2"]
    assert studies(scans, OtherPatientIDs="SN-C*-A") == ["S3"]
    assert studies(scans, OtherPatientIDs="SN-BLADE-0001-A\\SN-CASING-7-B") == ["S1", "S3"]
    # A wildcard matches within one value, never across two ("SN-BLADE-0001-A\\SN-BLADE-0001-B").
    assert studies(scans, OtherPatientIDs="SN-BLADE-0001-A*B") == []
    assert studies(scans, OtherPatientIDs="SN-BLADE-0001") == []
    responses = find(scans.archive, identifier("STUDY", PatientID="CASING-7", OtherPatientIDs=""))
    assert values(responses, "OtherPatientIDs") == [["SN-CASING-7-A", "SN-CASING-7-B"]]


def test_modalities_in_study(scans: Scans) -> None:
    assert studies(scans, ModalitiesInStudy="DX") == ["S1", "S2", "S5"]
    assert studies(scans, ModalitiesInStudy="CT\\US") == ["S1", "S3", "S4"]
    assert studies(scans, ModalitiesInStudy="C?") == ["S1"]
    responses = find(scans.archive, identifier("STUDY", PatientID="BLADE-0001", ModalitiesInStudy=""))
    assert values(responses, "ModalitiesInStudy") == [["CT", "DX"]]


def test_component_attributes_of_diconde(scans: Scans) -> None:
    def components(**keys: object) -> list[str]:
        responses = find(scans.archive, identifier("PATIENT", PatientID="", **keys), PATIENT_ROOT)
        return values(responses, "PatientID")

    assert components(MaterialGrade="Ti-6Al-4V") == ["BLADE-0002"]
    assert components(MaterialGrade="Inconel*") == ["BLADE-0001", "CASING-7", "WELD-3", "blade-0003"]
    assert components(MaterialThickness="8") == ["BLADE-0002"]
    assert components(MaterialThickness="12.50") == ["BLADE-0001", "CASING-7", "WELD-3", "blade-0003"]
    assert components(ComponentShape="OTHER") == [
        "BLADE-0001",
        "BLADE-0002",
        "CASING-7",
        "WELD-3",
        "blade-0003",
    ]
    assert components(ComponentManufacturer="acme*") == []
    assert components(PatientBirthDate="20190101-20191231") == [
        "BLADE-0001",
        "BLADE-0002",
        "CASING-7",
        "WELD-3",
        "blade-0003",
    ]
    responses = find(
        scans.archive,
        identifier(
            "PATIENT", PatientID="BLADE-0002", MaterialThickness="", MaterialGrade="", ComponentShape=""
        ),
        PATIENT_ROOT,
    )
    assert values(responses, "MaterialThickness") == ["8"]
    assert values(responses, "MaterialGrade") == ["Ti-6Al-4V"]


def test_series_by_method_and_number(scans: Scans) -> None:
    responses = find(
        scans.archive,
        identifier(
            "SERIES",
            PatientID="BLADE-0001",
            StudyInstanceUID=scans.study["S1"],
            SeriesInstanceUID="",
            Modality="",
            SeriesNumber="",
            NumberOfSeriesRelatedInstances="",
        ),
        PATIENT_ROOT,
    )
    assert values(responses, "SeriesInstanceUID") == [scans.series["S1-DX"], scans.series["S1-CT"]]
    assert values(responses, "Modality") == ["DX", "CT"]
    assert values(responses, "SeriesNumber") == ["1", "2"]
    assert values(responses, "NumberOfSeriesRelatedInstances") == ["2", "1"]
    ct = find(
        scans.archive,
        identifier("SERIES", StudyInstanceUID=scans.study["S1"], SeriesInstanceUID="", SeriesNumber="2"),
    )
    assert len(ct) == 1 and ct[0].SeriesInstanceUID == scans.series["S1-CT"]
    assert find(scans.archive, identifier("SERIES", StudyInstanceUID=scans.study["S1"], Modality="dx")) == []


def test_images_with_their_geometry_and_encoding(scans: Scans) -> None:
    responses = find(
        scans.archive,
        identifier(
            "IMAGE",
            StudyInstanceUID=scans.study["S1"],
            SeriesInstanceUID=f"{scans.series['S1-DX']}\\{scans.series['S1-CT']}",
            SOPInstanceUID="",
            SOPClassUID="",
            InstanceNumber="",
            Rows="",
            NumberOfFrames="",
            AvailableTransferSyntaxUID="",
        ),
    )
    assert values(responses, "SOPInstanceUID") == [scans.instance[n] for n in ("I1", "I2", "I3")]
    assert values(responses, "SOPClassUID") == [
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForPresentation,
        EnhancedCTImageStorage,
    ]
    assert values(responses, "InstanceNumber") == ["1", "2", "1"]
    assert values(responses, "Rows") == [16, 16, 16]
    assert values(responses, "NumberOfFrames") == [None, None, "2"]  # empty when the image has none
    assert "NumberOfFrames" in responses[0]
    assert values(responses, "AvailableTransferSyntaxUID") == [ExplicitVRLittleEndian] * 3
    only_ct = find(
        scans.archive,
        identifier(
            "IMAGE",
            StudyInstanceUID=scans.study["S1"],
            SeriesInstanceUID=scans.series["S1-CT"],
            SOPClassUID=EnhancedCTImageStorage,
        ),
    )
    assert len(only_ct) == 1


# -- counts ---------------------------------------------------------------------------------------
def test_related_counts(scans: Scans) -> None:
    patient = find(
        scans.archive,
        identifier(
            "PATIENT",
            PatientID="BLADE-0001",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedSeries="",
            NumberOfPatientRelatedInstances="",
        ),
        PATIENT_ROOT,
    )
    assert [
        (
            ds.NumberOfPatientRelatedStudies,
            ds.NumberOfPatientRelatedSeries,
            ds.NumberOfPatientRelatedInstances,
        )
        for ds in patient
    ] == [(1, 2, 3)]
    study = find(
        scans.archive,
        identifier(
            "STUDY",
            StudyInstanceUID=scans.study["S1"],
            NumberOfStudyRelatedSeries="",
            NumberOfStudyRelatedInstances="",
        ),
    )
    assert [(ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances) for ds in study] == [(2, 3)]
    assert studies(scans, NumberOfStudyRelatedInstances="3") == ["S1"]


def test_sop_classes_in_study(scans: Scans) -> None:
    responses = find(
        scans.archive, identifier("STUDY", StudyInstanceUID=scans.study["S1"], SOPClassesInStudy="")
    )
    assert values(responses, "SOPClassesInStudy") == [
        sorted([DigitalXRayImageStorageForPresentation, EnhancedCTImageStorage])
    ]
    assert studies(scans, SOPClassesInStudy=EnhancedCTImageStorage) == ["S1"]
    assert studies(scans, SOPClassesInStudy=f"{EnhancedCTImageStorage}\\1.2.840.10008.5.1.4.1.1.3.1") == [
        "S1",
        "S3",
        "S4",
    ]


# -- keys the index keeps only in the DICOM JSON -------------------------------------------------
def test_keys_read_from_the_metadata(scans: Scans) -> None:
    def series_of(**keys: object) -> list[str]:
        names = {v: k for k, v in scans.series.items()}
        found = []
        for study in scans.study.values():
            responses = find(
                scans.archive, identifier("SERIES", StudyInstanceUID=study, SeriesInstanceUID="", **keys)
            )
            found += [names[uid] for uid in values(responses, "SeriesInstanceUID")]
        return found

    assert series_of(OperatorsName="smith^jane") == ["S2-DX"]  # a PN: case-insensitive here too
    assert series_of(OperatorsName="Inspector*") == ["S1-DX", "S1-CT", "S3-US", "S4-US", "S5-DX"]
    assert series_of(DeviceSerialNumber="0001", Modality="US") == ["S3-US", "S4-US"]

    images = find(
        scans.archive,
        identifier(
            "IMAGE",
            StudyInstanceUID=scans.study["S1"],
            SeriesInstanceUID=scans.series["S1-DX"],
            SOPInstanceUID="",
            ImageType="DERIVED",
        ),
    )
    assert values(images, "SOPInstanceUID") == [scans.instance["I2"]]
    assert values(images, "ImageType") == [["DERIVED", "SECONDARY"]]
    kvp = find(
        scans.archive,
        identifier(
            "IMAGE", StudyInstanceUID=scans.study["S2"], SeriesInstanceUID=scans.series["S2-DX"], KVP="120.0"
        ),
    )
    assert values(kvp, "KVP") == ["120"]


def test_sequence_matching_returns_the_matching_items(scans: Scans) -> None:
    def indications(item: Dataset | None) -> list[Dataset]:
        ds = identifier(
            "IMAGE",
            StudyInstanceUID=scans.study["S1"],
            SeriesInstanceUID=scans.series["S1-DX"],
            SOPInstanceUID="",
        )
        ds.IndicationSequence = Sequence([item] if item is not None else [])
        return find(scans.archive, ds)

    crack = Dataset()
    crack.IndicationType = "CRACK"
    crack.IndicationLabel = ""
    found = indications(crack)
    assert values(found, "SOPInstanceUID") == [scans.instance["I1"]]
    (item,) = found[0].IndicationSequence
    assert item.IndicationLabel == "CRACK-1" and item.IndicationType == "CRACK"
    assert "IndicationDisposition" not in item  # only the requested item keys

    pores = Dataset()
    pores.IndicationType = "PORO*"
    pores.IndicationDisposition = "ACCEPT"
    assert [ds.IndicationSequence[0].IndicationDisposition for ds in indications(pores)] == ["ACCEPT"]

    rejected_pore = Dataset()
    rejected_pore.IndicationType = "POROSITY"
    rejected_pore.IndicationDisposition = "REJECT"  # both keys must match in one item
    assert indications(rejected_pore) == []

    everything = indications(None)  # universal: every image, with its whole sequence
    assert values(everything, "SOPInstanceUID") == [scans.instance["I1"], scans.instance["I2"]]
    assert [len(ds.IndicationSequence) for ds in everything] == [2, 0]
    assert everything[0].IndicationSequence[1].IndicationDisposition == "REJECT"


# -- what every response carries ------------------------------------------------------------------
def test_every_requested_key_comes_back_empty_when_unknown(scans: Scans) -> None:
    ds = identifier(
        "STUDY",
        StudyInstanceUID=scans.study["S1"],
        ReferringPhysicianName="",  # in the data, but empty
        PatientComments="",  # not in the data
        Modality="",  # below the level: empty, though every series has one
        SeriesInstanceUID="",
        InstanceAvailability="",
    )
    ds.ProcedureCodeSequence = Sequence([])
    (response,) = find(scans.archive, ds)
    for keyword in ("ReferringPhysicianName", "PatientComments", "Modality", "SeriesInstanceUID"):
        assert keyword in response and response[keyword].is_empty, keyword
    assert response.ProcedureCodeSequence == Sequence([])
    assert response.QueryRetrieveLevel == "STUDY"
    assert response.RetrieveAETitle == "NDT_PACS"
    assert response.InstanceAvailability == "ONLINE"
    assert set(response.dir()) == {
        "StudyInstanceUID",
        "ReferringPhysicianName",
        "PatientComments",
        "Modality",
        "SeriesInstanceUID",
        "InstanceAvailability",
        "ProcedureCodeSequence",
        "QueryRetrieveLevel",
        "RetrieveAETitle",
    }


def test_results_come_in_arrival_order_and_page(scans: Scans) -> None:
    everything = studies(scans)
    assert everything == ["S1", "S2", "S3", "S4", "S5"]
    query = query_from_identifier(received(identifier("STUDY", StudyInstanceUID="")), STUDY_ROOT)
    paged = Query(query.model, query.level, query.keys, limit=2, offset=1)
    assert [scans.study["S2"], scans.study["S3"]] == [
        found.attributes["0020000D"]["Value"][0] for found in scans.archive.search.find(paged)
    ]
    assert scans.archive.search.count(paged) == 5
    # The same through Python-side matching (a time range is decided after SQL).
    timed = query_from_identifier(
        received(identifier("STUDY", StudyInstanceUID="", StudyTime="0900-1700")), STUDY_ROOT
    )
    timed_page = Query(timed.model, timed.level, timed.keys, limit=2, offset=1)
    assert [found.attributes["0020000D"]["Value"][0] for found in scans.archive.search.find(timed_page)] == [
        scans.study["S2"],
        scans.study["S3"],
    ]
    assert scans.archive.search.count(timed_page) == 5


@pytest.mark.parametrize("batch_size", [1, 2, 4, 5])
def test_results_beyond_the_first_batch_are_streamed_in_order(scans: Scans, batch_size: int) -> None:
    """The first batch is one plain query, the rest a cursor from after its last row: together
    they give every match once, in order, with SQL paging and with Python-side matching."""
    from pacs.services.search import SearchService

    search = SearchService(scans.archive.engine, batch_size=batch_size)
    order = [scans.study[name] for name in ("S1", "S2", "S3", "S4", "S5")]

    def uids(query: Query) -> list[str]:
        return [found.attributes["0020000D"]["Value"][0] for found in search.find(query)]

    plain = query_from_identifier(received(identifier("STUDY", StudyInstanceUID="")), STUDY_ROOT)
    timed = query_from_identifier(
        received(identifier("STUDY", StudyInstanceUID="", StudyTime="0900-1700")), STUDY_ROOT
    )
    for query in (plain, timed):
        assert uids(query) == order
        for offset, limit in ((0, 4), (1, 3), (2, None), (1, 1), (4, 5), (5, 2)):
            paged = Query(query.model, query.level, query.keys, limit=limit, offset=offset)
            assert uids(paged) == order[offset : None if limit is None else offset + limit], (offset, limit)


def test_stopping_early_ends_the_query(scans: Scans) -> None:
    """C-CANCEL closes the iterator: the read transaction ends and the next query runs normally."""
    query = query_from_identifier(received(identifier("STUDY", StudyInstanceUID="")), STUDY_ROOT)
    results = scans.archive.search.find(query)
    first = next(results)
    results.close()  # type: ignore[attr-defined]
    assert first.attributes["0020000D"]["Value"] == [scans.study["S1"]]
    assert len(list(scans.archive.search.find(query))) == 5
    assert scans.archive.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# -- queries never open stored objects ------------------------------------------------------------
def test_queries_answer_without_the_stored_objects(archive: Archive, tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    result = archive.ingest.ingest_file(
        write(diconde_dx(part_id="GONE-1", rows=16, columns=16), folder / "a.dcm"), CTX
    )
    for version in archive.retrieve.versions(result.sop_instance_uid):
        archive.store.delete(version.object_key)

    responses = find(
        archive,
        identifier(
            "STUDY",
            PatientID="GONE-1",
            StudyInstanceUID="",
            PatientName="",
            KVP="",
            ReferringPhysicianName="",
        ),
    )

    assert values(responses, "PatientName") == ["Turbine^Blade"]
    assert len(responses) == 1


@pytest.mark.parametrize("model", [PATIENT_ROOT, STUDY_ROOT], ids=["patient-root", "study-root"])
def test_each_level_of_each_model_answers(scans: Scans, model: object) -> None:
    above = {"PatientID": "BLADE-0001"} if model is PATIENT_ROOT else {}
    study = scans.study["S1"]
    dx = scans.series["S1-DX"]
    counts = {
        "STUDY": len(find(scans.archive, identifier("STUDY", **above, StudyInstanceUID=""), model)),  # type: ignore[arg-type]
        "SERIES": len(find(scans.archive, identifier("SERIES", **above, StudyInstanceUID=study), model)),  # type: ignore[arg-type]
        "IMAGE": len(
            find(
                scans.archive,
                identifier("IMAGE", **above, StudyInstanceUID=study, SeriesInstanceUID=dx),
                model,
            )  # type: ignore[arg-type]
        ),
    }
    assert counts == {"STUDY": 1 if model is PATIENT_ROOT else 5, "SERIES": 2, "IMAGE": 2}
