"""IndexRepository.record on SQLite and PostgreSQL: outcomes, versions, and concurrent first arrivals.

The index is what makes "stored" true: a duplicate must not add a version, a changed object must
become current while the old one stays as evidence, and devices that send the first images of a new
part in parallel must end up in one component, inspection and series.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from pacs.archive import Archive
from pacs.diconde import column_values
from pacs.index.repository import NewVersion, Outcome, Recorded
from pacs.index.schema import component, inspection, instance, series
from tests.support.factories import diconde_dx

T = TypeVar("T")
THREADS = 8


def new_version(
    ds: Dataset, *, sha256: str | None = None, key: str | None = None, size: int = 1000
) -> NewVersion:
    """What ingest would record for ``ds``; ``sha256`` is the dataset's. Hashes and key are made up:
    no object is involved here."""
    parts = column_values("component", ds)
    parts["part_id"] = parts["part_id"] or ""
    return NewVersion(
        sop_instance_uid=str(ds.SOPInstanceUID),
        component=parts,
        inspection=column_values("inspection", ds),
        series=column_values("series", ds),
        instance=column_values("instance", ds),
        object_key=key or uuid.uuid4().hex,
        dataset_sha256=sha256 or hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
        file_meta_sha256=hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
        dataset_offset=300,
        size=size,
        transfer_syntax_uid=str(ExplicitVRLittleEndian),
        pixel_data_offset=1234,
        frames=[[[1234, 131072]]],  # type: ignore[list-item]
        dicom_json={"00100020": {"vr": "LO", "Value": [str(ds.PatientID)]}},
        received_at=dt.datetime.now(dt.UTC),
        received_via="import",
        source_ae="TEST_SCU",
        source_address="127.0.0.1",
        received_by="tester",
    )


def rows(archive: Archive, table: Any) -> list[Any]:
    with archive.engine.connect() as conn:
        return list(conn.execute(select(table).order_by(table.c.id)).all())


def all_at_once(jobs: list[Callable[[], T]]) -> list[T]:
    """Run the jobs on their own threads, released together by a barrier to maximise the race."""
    barrier = threading.Barrier(len(jobs))

    def run(job: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


# -- one instance ------------------------------------------------------------------------------
def test_a_new_instance_is_stored_with_its_component_inspection_and_series(archive: Archive) -> None:
    ds = diconde_dx(part_id="BLADE-1", component_name="Turbine^Blade")
    new = new_version(ds, size=4321)
    recorded = archive.index.record(new)

    assert recorded.outcome is Outcome.STORED
    assert archive.index.counts() == {
        "components": 1,
        "inspections": 1,
        "series": 1,
        "instances": 1,
        "versions": 1,
    }
    [part] = rows(archive, component)
    assert (part.part_id, part.component_name, part.material_thickness) == ("BLADE-1", "Turbine^Blade", 12.5)
    [study] = rows(archive, inspection)
    assert (study.study_instance_uid, study.component_id, study.accession_number) == (
        ds.StudyInstanceUID,
        part.id,
        "WO-1000",
    )
    [acquisition] = rows(archive, series)
    assert (acquisition.series_instance_uid, acquisition.inspection_id, acquisition.modality) == (
        ds.SeriesInstanceUID,
        study.id,
        "DX",
    )
    [image] = rows(archive, instance)
    assert (image.sop_instance_uid, image.series_id, image.rows) == (ds.SOPInstanceUID, acquisition.id, 256)
    assert image.current_version_id == recorded.version_id
    assert recorded.instance_id == image.id

    [version] = archive.index.versions(ds.SOPInstanceUID)
    assert (version.object_key, version.dataset_sha256, version.file_meta_sha256) == (
        new.object_key,
        new.dataset_sha256,
        new.file_meta_sha256,
    )
    assert (version.dataset_offset, version.size, version.is_current) == (
        300,
        4321,
        True,
    )
    assert archive.index.find_version(ds.SOPInstanceUID, new.dataset_sha256) == recorded.version_id
    metadata = archive.index.version_metadata(recorded.version_id)
    assert metadata == {
        "dicom_json": new.dicom_json,
        "frames": [[[1234, 131072]]],
        "pixel_data_offset": 1234,
    }


def test_the_same_bytes_again_are_a_duplicate_without_a_new_version(archive: Archive) -> None:
    ds = diconde_dx()
    first = archive.index.record(new_version(ds, sha256="a" * 64))
    again = archive.index.record(new_version(ds, sha256="a" * 64))

    assert again == Recorded(Outcome.DUPLICATE, first.instance_id, first.version_id)
    assert archive.index.counts()["versions"] == 1
    [version] = archive.index.versions(ds.SOPInstanceUID)
    assert version.id == first.version_id
    # The duplicate's (made-up) object key is not referenced: fsck may collect it.
    assert archive.index.known_keys([version.object_key, "0" * 32]) == {version.object_key}


def test_different_bytes_become_the_current_version_and_keep_the_old_one(archive: Archive) -> None:
    ds = diconde_dx()
    first = archive.index.record(new_version(ds, sha256="a" * 64, key="k" * 32))
    second = archive.index.record(new_version(ds, sha256="b" * 64, key="j" * 32))

    assert second.outcome is Outcome.NEW_VERSION
    assert second.instance_id == first.instance_id
    assert second.version_id != first.version_id

    current = archive.index.current_version(ds.SOPInstanceUID)
    assert current is not None
    assert (current.id, current.dataset_sha256, current.object_key) == (second.version_id, "b" * 64, "j" * 32)
    versions = archive.index.versions(ds.SOPInstanceUID)
    assert [(v.id, v.dataset_sha256, v.is_current) for v in versions] == [
        (first.version_id, "a" * 64, False),
        (second.version_id, "b" * 64, True),
    ]
    assert archive.index.counts()["instances"] == 1
    # Re-sending the first bytes is still a duplicate of the first version, not a third version.
    back = archive.index.record(new_version(ds, sha256="a" * 64))
    assert back == Recorded(Outcome.DUPLICATE, first.instance_id, first.version_id)
    assert archive.index.current_version(ds.SOPInstanceUID).id == second.version_id  # type: ignore[union-attr]


def test_a_new_version_in_another_series_moves_the_instance(archive: Archive) -> None:
    sop_uid = generate_uid()
    first = diconde_dx(sop_uid=sop_uid)
    moved = diconde_dx(sop_uid=sop_uid, study_uid=first.StudyInstanceUID, SeriesNumber=2)
    archive.index.record(new_version(first))
    archive.index.record(new_version(moved))

    series_rows = {r.series_instance_uid: r.id for r in rows(archive, series)}
    [image] = rows(archive, instance)
    assert image.series_id == series_rows[moved.SeriesInstanceUID]
    assert image.series_id != series_rows[first.SeriesInstanceUID]


def test_the_first_component_attributes_are_kept(archive: Archive) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    archive.index.record(
        new_version(
            diconde_dx(part_id="P-1", component_name="First^Name", study_uid=study_uid, series_uid=series_uid)
        )
    )
    archive.index.record(
        new_version(
            diconde_dx(
                part_id="P-1",
                component_name="Second^Name",
                study_uid=study_uid,
                series_uid=series_uid,
                MaterialGrade="Ti-6Al-4V",
                StudyDescription="changed",
            )
        )
    )

    [part] = rows(archive, component)
    assert (part.component_name, part.material_grade) == ("First^Name", "Inconel 718")
    [study] = rows(archive, inspection)
    assert study.study_description == "DX inspection of P-1"
    assert archive.index.counts()["instances"] == 2


def test_unknown_instance_has_no_versions(archive: Archive) -> None:
    assert archive.index.versions("1.2.3.4") == []
    assert archive.index.current_version("1.2.3.4") is None
    assert archive.index.find_version("1.2.3.4", "a" * 64) is None


# -- concurrency -------------------------------------------------------------------------------
def test_parallel_first_instances_of_a_new_part_make_one_component(archive: Archive) -> None:
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = [
        diconde_dx(part_id="NEW-PART", study_uid=study_uid, series_uid=series_uid, InstanceNumber=i + 1)
        for i in range(THREADS)
    ]
    assert len({ds.SOPInstanceUID for ds in datasets}) == THREADS
    news = [new_version(ds) for ds in datasets]

    results = all_at_once([lambda new=new: archive.index.record(new) for new in news])

    assert [r.outcome for r in results] == [Outcome.STORED] * THREADS
    assert archive.index.counts() == {
        "components": 1,
        "inspections": 1,
        "series": 1,
        "instances": THREADS,
        "versions": THREADS,
    }
    [acquisition] = rows(archive, series)
    assert {r.series_id for r in rows(archive, instance)} == {acquisition.id}
    assert len({r.version_id for r in results}) == THREADS


@pytest.mark.parametrize("part_known", [False, True], ids=["new-part", "known-part"])
def test_parallel_identical_copies_make_one_version(archive: Archive, part_known: bool) -> None:
    """With a known part the copies race on the instance row itself (unique constraint, retry)."""
    ds = diconde_dx()
    if part_known:
        sibling = diconde_dx(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID)
        archive.index.record(new_version(sibling))
    sha = hashlib.sha256(b"the same bytes").hexdigest()
    news = [new_version(ds, sha256=sha) for _ in range(THREADS)]  # each copy under its own key

    results = all_at_once([lambda new=new: archive.index.record(new) for new in news])

    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes == sorted([Outcome.STORED.value] + [Outcome.DUPLICATE.value] * (THREADS - 1))
    assert len(archive.index.versions(ds.SOPInstanceUID)) == 1
    assert archive.index.counts()["instances"] == 1 + part_known
    assert archive.index.counts()["components"] == 1
    assert len({r.version_id for r in results}) == 1
    [version] = archive.index.versions(ds.SOPInstanceUID)
    winner = next(new for new in news if new.object_key == version.object_key)
    assert winner.dataset_sha256 == sha


# -- counts and keys kept for queries --------------------------------------------------------------
def counts(archive: Archive) -> dict[str, Any]:
    with archive.engine.connect() as conn:
        comp = conn.execute(
            select(
                component.c.number_of_studies, component.c.number_of_series, component.c.number_of_instances
            )
        ).all()
        insp = conn.execute(
            select(
                inspection.c.study_instance_uid,
                inspection.c.number_of_series,
                inspection.c.number_of_instances,
                inspection.c.modalities_in_study,
            )
        ).all()
        ser = conn.execute(select(series.c.series_instance_uid, series.c.number_of_instances)).all()
    return {
        "component": [tuple(r) for r in comp],
        "inspection": {r[0]: tuple(r[1:]) for r in insp},
        "series": {r[0]: r[1] for r in ser},
    }


def test_related_counts_and_modalities_follow_what_is_recorded(archive: Archive) -> None:
    """Number of ... Related ... and Modalities in Study are answered from counts kept in the ingest
    transaction; they must equal what the rows say after new instances, duplicates and new versions."""
    repo = archive.index
    study_a, study_b = generate_uid(), generate_uid()
    dx_series, ct_series, b_series = generate_uid(), generate_uid(), generate_uid()
    a1 = diconde_dx(part_id="BLADE-9", study_uid=study_a, series_uid=dx_series, seed=1)
    a2 = diconde_dx(part_id="BLADE-9", study_uid=study_a, series_uid=dx_series, seed=2)
    a3 = diconde_dx(part_id="BLADE-9", study_uid=study_a, series_uid=ct_series, seed=3, Modality="CT")
    b1 = diconde_dx(part_id="BLADE-9", study_uid=study_b, series_uid=b_series, seed=4)
    for ds in (a1, a2, a3, b1):
        assert repo.record(new_version(ds)).outcome is Outcome.STORED
    duplicate = new_version(a1, sha256="d" * 64)
    repo.record(duplicate)
    assert repo.record(new_version(a1, sha256="d" * 64)).outcome is Outcome.DUPLICATE
    assert repo.record(new_version(a2)).outcome is Outcome.NEW_VERSION  # same series: counts unchanged

    seen = counts(archive)
    assert seen["component"] == [(2, 3, 4)]
    assert seen["inspection"] == {study_a: (2, 3, "CT\\DX"), study_b: (1, 1, "DX")}
    assert seen["series"] == {dx_series: 2, ct_series: 1, b_series: 1}


def test_a_new_version_in_another_series_moves_the_count(archive: Archive) -> None:
    repo = archive.index
    study = generate_uid()
    first_series, second_series = generate_uid(), generate_uid()
    original = diconde_dx(part_id="P-1", study_uid=study, series_uid=first_series, seed=1)
    repo.record(new_version(original))
    moved = diconde_dx(
        part_id="P-1", study_uid=study, series_uid=second_series, sop_uid=original.SOPInstanceUID, seed=2
    )
    assert repo.record(new_version(moved)).outcome is Outcome.NEW_VERSION

    seen = counts(archive)
    assert seen["series"] == {first_series: 0, second_series: 1}
    assert seen["inspection"][study][:2] == (2, 1)
    assert seen["component"] == [(1, 2, 1)]


def test_ingest_keeps_the_component_name_case_folded_for_matching(archive: Archive, tmp_path: Path) -> None:
    from pacs.context import CallerContext
    from tests.support.factories import write

    name = "MÜLLER^Straße"
    path = write(diconde_dx(part_id="CASE-1", component_name=name, charset="ISO_IR 192"), tmp_path / "a.dcm")
    archive.ingest.ingest_file(path, CallerContext(via="import"))
    with archive.engine.connect() as conn:
        row = conn.execute(select(component.c.component_name, component.c.component_name_key)).one()
    assert tuple(row) == (name, "müller^strasse")
