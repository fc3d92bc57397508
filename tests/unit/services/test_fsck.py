"""FsckService on both backend pairs: does ``pacs fsck`` see what can go wrong with stored evidence?

Objects that vanished, bytes that changed (same size: only the SHA-256 shows it; other size: the
size does), and objects no index entry names (what a crash between put and commit leaves). Repair
removes only those, and never an object young enough to belong to a store still in flight.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from pathlib import Path

import pytest

from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.index.repository import VersionRow
from storage.filesystem import FilesystemStore
from storage.s3 import S3Store
from tests.support.factories import diconde_dx, write

CTX = CallerContext(via="import", user="tester")
LATER = dt.timedelta(hours=2)  # with the default grace of one hour, "now + LATER" makes every object old


@pytest.fixture
def stored(archive: Archive, tmp_path: Path) -> list[VersionRow]:
    """Three ingested radiographs; their current versions."""
    versions = []
    for i in range(3):
        path = write(diconde_dx(part_id=f"PART-{i}", rows=32, columns=32, seed=i), tmp_path / f"{i}.dcm")
        result = archive.ingest.ingest_file(path, CTX)
        versions.append(archive.retrieve.current(result.sop_instance_uid))
    return versions


def overwrite(archive: Archive, request: pytest.FixtureRequest, key: str, data: bytes) -> None:
    """Change the stored bytes behind the archive's back, as a disk fault or an intruder would."""
    store = archive.store
    if isinstance(store, FilesystemStore):
        store.path_for(key).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        client = request.getfixturevalue("s3_server").client()
        client.put_object(store.bucket, key, io.BytesIO(data), len(data))
    assert archive.store.stat(key).size == len(data)


def read(archive: Archive, key: str) -> bytes:
    with archive.store.open(key) as f:
        return f.read()


def put_unreferenced(archive: Archive, tmp_path: Path, size: int = 777) -> str:
    source = tmp_path / f"orphan-{uuid.uuid4().hex}"
    source.write_bytes(b"\x5a" * size)
    key = uuid.uuid4().hex
    archive.store.put_file(key, source)
    return key


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_a_healthy_archive_is_ok(archive: Archive, stored: list[VersionRow]) -> None:
    report = archive.fsck().run(now=now() + LATER)
    assert report.ok
    assert report.problems == []
    assert report.versions_checked == 3
    assert report.objects_listed == 3
    assert report.bytes_hashed == sum(v.size for v in stored)
    assert report.summary().endswith("OK")


def test_a_deleted_object_is_missing(archive: Archive, stored: list[VersionRow]) -> None:
    gone = stored[1]
    archive.store.delete(gone.object_key)

    report = archive.fsck().run()

    assert not report.ok
    [problem] = report.problems
    assert (problem.kind, problem.key) == ("missing", gone.object_key)
    assert gone.sop_instance_uid in problem.detail
    assert "1 missing" in report.summary() and "PROBLEMS FOUND" in report.summary()


def test_changed_bytes_of_the_same_size_are_corrupt(
    archive: Archive, stored: list[VersionRow], request: pytest.FixtureRequest
) -> None:
    victim = stored[0]
    data = bytearray(read(archive, victim.object_key))
    data[-1] ^= 0xFF  # one bit pattern in the last pixel
    overwrite(archive, request, victim.object_key, bytes(data))

    report = archive.fsck().run()

    [problem] = report.problems
    assert (problem.kind, problem.key) == ("corrupt", victim.object_key)
    assert victim.dataset_sha256 in problem.detail
    assert not report.ok


def test_changed_file_meta_bytes_are_corrupt(
    archive: Archive, stored: list[VersionRow], request: pytest.FixtureRequest
) -> None:
    """The dataset identifies the instance, but the stored object is verified byte for byte."""
    victim = stored[1]
    data = read(archive, victim.object_key)
    overwrite(archive, request, victim.object_key, b"\xff" + data[1:])  # the preamble's first byte

    report = archive.fsck().run()

    [problem] = report.problems
    assert (problem.kind, problem.key) == ("corrupt", victim.object_key)
    assert "file meta" in problem.detail


def test_quick_skips_hashing(
    archive: Archive, stored: list[VersionRow], request: pytest.FixtureRequest
) -> None:
    victim = stored[0]
    data = bytearray(read(archive, victim.object_key))
    data[-1] ^= 0xFF
    overwrite(archive, request, victim.object_key, bytes(data))

    report = archive.fsck().run(quick=True)

    assert report.bytes_hashed == 0
    assert report.versions_checked == 3
    assert report.problems == []  # same size: only a full check can tell


def test_changed_size_is_reported_even_when_quick(
    archive: Archive, stored: list[VersionRow], request: pytest.FixtureRequest
) -> None:
    victim = stored[2]
    overwrite(archive, request, victim.object_key, read(archive, victim.object_key)[:-10])

    for quick in (True, False):
        report = archive.fsck().run(quick=quick)
        [problem] = report.problems
        assert (problem.kind, problem.key) == ("size", victim.object_key)
        assert str(victim.size) in problem.detail


def test_an_old_unreferenced_object_is_reported_and_removed_on_repair(
    archive: Archive, stored: list[VersionRow], tmp_path: Path
) -> None:
    orphan = put_unreferenced(archive, tmp_path)

    report = archive.fsck().run(now=now() + LATER)
    [problem] = report.problems
    assert (problem.kind, problem.key) == ("unreferenced", orphan)
    assert "777 bytes" in problem.detail
    assert not report.ok
    assert archive.store.stat(orphan).size == 777  # reporting removes nothing

    repaired = archive.fsck().run(now=now() + LATER, repair=True)
    assert repaired.removed == 1
    assert repaired.ok
    assert [p.detail.endswith("(removed)") for p in repaired.problems] == [True]
    assert {obj.key for obj in archive.store.iter_objects()} == {v.object_key for v in stored}
    # The referenced objects are untouched and the archive is clean afterwards.
    after = archive.fsck().run(now=now() + LATER)
    assert after.ok and after.problems == []


def test_a_young_unreferenced_object_is_left_alone(
    archive: Archive, stored: list[VersionRow], tmp_path: Path
) -> None:
    orphan = put_unreferenced(archive, tmp_path)

    report = archive.fsck().run(repair=True)  # the default grace: one hour

    assert report.problems == []
    assert report.removed == 0
    assert report.objects_listed == 4
    assert archive.store.stat(orphan).size == 777


def test_progress_reports_both_phases(archive: Archive, stored: list[VersionRow]) -> None:
    seen: dict[str, int] = {}

    def progress(phase: str, n: int) -> None:
        seen[phase] = seen.get(phase, 0) + n

    archive.fsck().run(progress=progress)
    assert seen == {"verify": 3, "scan": 3}


def test_a_staging_copy_a_crash_left_is_reported_and_removed_on_repair(
    archive: Archive, stored: list[VersionRow]
) -> None:
    """A crash while an object arrives leaves its copy in the store's staging folder, under no key:
    fsck names it (it may be gigabytes) once older than the grace period, and repair removes it.
    An object still arriving is left alone."""
    incoming = archive.ingest.receive()
    incoming.write(b"\0" * 128 + b"DICM" + b"x" * 4000)  # the start of an object, never finished
    left = incoming.path  # what a crash would leave
    assert left.exists()

    young = archive.fsck().run(repair=True)  # the default grace: it may be a store in flight
    assert young.problems == [] and left.exists()

    report = archive.fsck().run(now=now() + LATER)
    [problem] = report.problems
    assert (problem.kind, problem.key) == ("staged", left.name)
    assert "4132 bytes" in problem.detail
    assert not report.ok and "1 stale staging copies" in report.summary()
    assert left.exists()  # reporting removes nothing

    repaired = archive.fsck().run(now=now() + LATER, repair=True)
    assert repaired.ok and repaired.removed_staged == 1
    assert "(1 removed)" in repaired.summary().split("unreferenced")[1]
    assert not left.exists()
    assert archive.fsck().run(now=now() + LATER).problems == []
    incoming.abort()  # the writer of a crashed process would not; here it finds nothing to remove
