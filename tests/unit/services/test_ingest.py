"""IngestService on both backend pairs: the write rule that protects data.

What a sender relies on when it deletes its copy after "stored": the object is kept byte-exact, its
dataset and file meta hashed as they arrived; a re-send of the same dataset changes nothing; a
changed object becomes a new version and the old one stays readable; and whatever fails, nothing
half-kept remains (no index row without its object, no object left behind by a refused store).
"""

from __future__ import annotations

import hashlib
import random
import re
import struct
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import text

from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.dicom.digest import Part10Hasher
from pacs.errors import InvalidObject, ObjectMismatch, ResourceUnavailable
from pacs.index.repository import Outcome
from pacs.services.ingest import Expected, Incoming
from tests.support.factories import diconde_dx, write
from tests.support.stores import contents

CTX = CallerContext(via="import", user="tester")
EMPTY = {"components": 0, "inspections": 0, "series": 0, "instances": 0, "versions": 0}


def object_keys(archive: Archive) -> set[str]:
    """Stored objects and staged files (tests.support.stores): a failed store leaves neither."""
    return contents(archive.store)


def stored_bytes(archive: Archive, sop_uid: str) -> bytes:
    with archive.retrieve.open(archive.retrieve.current(sop_uid)) as f:
        return f.read()


def dataset_offset(data: bytes) -> int:
    """After the preamble, DICM and the file meta group (its length is in (0002,0000))."""
    assert data[132:138] == b"\x02\x00\x00\x00UL"
    return 144 + struct.unpack_from("<L", data, 140)[0]


def received(archive: Archive, data: bytes, chunks: list[int] | None = None) -> Incoming:
    """An object received into the store the way the DIMSE face receives one: in pieces."""
    incoming = archive.ingest.receive()
    sizes = iter(chunks or [])
    start = 0
    while start < len(data):
        step = next(sizes, 65536)
        incoming.write(data[start : start + step])
        start += step
    return incoming


@pytest.fixture
def dx_file(tmp_path: Path) -> Path:
    return write(diconde_dx(part_id="BLADE-9", seed=1), tmp_path / "dx.dcm")


# -- storing -----------------------------------------------------------------------------------
def test_ingest_stores_the_file_byte_exact(archive: Archive, dx_file: Path) -> None:
    data = dx_file.read_bytes()
    offset = dataset_offset(data)
    result = archive.ingest.ingest_file(dx_file, CTX)

    assert result.outcome is Outcome.STORED
    assert result.part_id == "BLADE-9"
    assert result.size == len(data)
    assert result.dataset_sha256 == hashlib.sha256(data[offset:]).hexdigest()
    version = archive.retrieve.current(result.sop_instance_uid)
    assert version.dataset_sha256 == hashlib.sha256(data[offset:]).hexdigest()
    assert version.file_meta_sha256 == hashlib.sha256(data[:offset]).hexdigest()
    assert version.dataset_offset == offset
    assert version.size == len(data)
    assert version.id == result.version_id
    assert stored_bytes(archive, result.sop_instance_uid) == data
    assert object_keys(archive) == {version.object_key}
    assert archive.index.counts() == {k: 1 for k in EMPTY}
    # The source file is the caller's: ingest copies, it does not move it.
    assert dx_file.read_bytes() == data


def test_identical_reingest_is_a_duplicate_and_stores_nothing(archive: Archive, dx_file: Path) -> None:
    first = archive.ingest.ingest_file(dx_file, CTX)
    keys = object_keys(archive)

    again = archive.ingest.ingest_file(dx_file, CTX)

    assert again.outcome is Outcome.DUPLICATE
    assert (again.version_id, again.dataset_sha256) == (first.version_id, first.dataset_sha256)
    assert object_keys(archive) == keys
    assert archive.index.counts()["versions"] == 1


def test_the_same_dataset_in_another_file_meta_is_a_duplicate(archive: Archive, tmp_path: Path) -> None:
    """Identity is the dataset the sender made, not the file meta a toolkit wrapped it in."""
    ds = diconde_dx()
    data = write(ds, tmp_path / "device.dcm").read_bytes()
    ds.file_meta.ImplementationVersionName = "OTHER_TOOLKIT"
    rewrapped = write(ds, tmp_path / "rewrapped.dcm").read_bytes()
    assert rewrapped[dataset_offset(rewrapped) :] == data[dataset_offset(data) :]
    assert rewrapped[: dataset_offset(rewrapped)] != data[: dataset_offset(data)]

    first = archive.ingest.ingest_file(tmp_path / "device.dcm", CTX)
    again = archive.ingest.ingest_incoming(received(archive, b"X" * 128 + rewrapped[128:]), CTX)

    assert again.outcome is Outcome.DUPLICATE
    assert again.version_id == first.version_id
    assert len(object_keys(archive)) == 1
    assert stored_bytes(archive, ds.SOPInstanceUID) == data


def test_changed_file_under_the_same_uid_is_a_new_version(
    archive: Archive, dx_file: Path, tmp_path: Path
) -> None:
    first = archive.ingest.ingest_file(dx_file, CTX)
    old_bytes = dx_file.read_bytes()
    changed = write(
        diconde_dx(part_id="BLADE-9", seed=2, sop_uid=first.sop_instance_uid), tmp_path / "changed.dcm"
    )
    new_bytes = changed.read_bytes()
    assert new_bytes != old_bytes

    second = archive.ingest.ingest_file(changed, CTX)

    assert second.outcome is Outcome.NEW_VERSION
    assert second.dataset_sha256 == hashlib.sha256(new_bytes[dataset_offset(new_bytes) :]).hexdigest()
    assert stored_bytes(archive, first.sop_instance_uid) == new_bytes
    old, new = archive.retrieve.versions(first.sop_instance_uid)
    assert (old.id, new.id) == (first.version_id, second.version_id)
    assert (old.is_current, new.is_current) == (False, True)
    with archive.retrieve.open(old) as f:
        assert f.read() == old_bytes
    assert object_keys(archive) == {old.object_key, new.object_key}


def test_frames_and_metadata_are_indexed(archive: Archive, dx_file: Path) -> None:
    result = archive.ingest.ingest_file(dx_file, CTX)
    meta = archive.index.version_metadata(result.version_id)
    assert meta is not None
    data = dx_file.read_bytes()
    [[(offset, length)]] = meta["frames"]
    assert length == 256 * 256 * 2
    assert meta["pixel_data_offset"] == offset
    assert offset + length == len(data)
    assert (
        archive.store.read_range(archive.retrieve.current(result.sop_instance_uid).object_key, offset, 16)
        == (data[offset : offset + 16])
    )
    assert meta["dicom_json"]["00100020"] == {"vr": "LO", "Value": ["BLADE-9"]}
    assert meta["dicom_json"]["7FE00010"] == {"vr": "OW", "BulkDataURI": "7FE00010"}


def test_a_string_with_an_embedded_nul_is_stored_on_every_backend(archive: Archive, tmp_path: Path) -> None:
    """Devices do write odd bytes into text values. Whether such an object is kept must not depend
    on the index backend, and it is never a "try later" (ResourceUnavailable, C-STORE 0xA700): a
    sender would retry it forever."""
    ds = diconde_dx(StationName="ST\x00ATION-1", StudyDescription="Weld\x00scan")
    path = write(ds, tmp_path / "nul.dcm")

    result = archive.ingest.ingest_file(path, CTX)

    assert result.outcome is Outcome.STORED
    assert stored_bytes(archive, ds.SOPInstanceUID) == path.read_bytes()


# -- refusals leave nothing --------------------------------------------------------------------
def assert_nothing_kept(archive: Archive) -> None:
    assert archive.index.counts() == EMPTY
    assert object_keys(archive) == set()


def test_a_file_that_does_not_parse_is_refused_and_leaves_nothing(archive: Archive, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("inspection notes, not DICOM\n" * 20)
    with pytest.raises(InvalidObject, match="DICM"):
        archive.ingest.ingest_file(text_file, CTX)

    data = write(diconde_dx(), tmp_path / "full.dcm").read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 1000])
    with pytest.raises(InvalidObject, match="truncated"):
        archive.ingest.ingest_file(truncated, CTX)

    with pytest.raises(InvalidObject, match="not found"):
        archive.ingest.ingest_file(tmp_path / "absent.dcm", CTX)
    assert_nothing_kept(archive)


def test_a_radiograph_cut_before_its_pixel_data_is_refused_and_leaves_nothing(
    archive: Archive, tmp_path: Path
) -> None:
    """A file cut at an element boundary after the UIDs (a partial copy) has lost its image.

    Storing it would answer "stored" for an instance whose pixel data exists nowhere any more.
    """
    data = write(diconde_dx(rows=32, columns=32), tmp_path / "full.dcm").read_bytes()
    cut = data.index(b"\x28\x00\x02\x00US")  # (0028,0002) Samples per Pixel opens the Image Pixel module
    partial = tmp_path / "partial.dcm"
    partial.write_bytes(data[:cut])
    with pytest.raises(InvalidObject):
        archive.ingest.ingest_file(partial, CTX)
    assert_nothing_kept(archive)


@pytest.mark.parametrize(
    ("missing", "tag"),
    [
        ("StudyInstanceUID", "(0020,000D)"),
        ("SeriesInstanceUID", "(0020,000E)"),
        ("SOPInstanceUID", "(0008,0018)"),
    ],
)
def test_a_dataset_without_a_required_uid_is_a_mismatch(
    archive: Archive, tmp_path: Path, missing: str, tag: str
) -> None:
    ds = diconde_dx()
    del ds[missing]  # the file meta keeps its Media Storage SOP Instance UID
    path = write(ds, tmp_path / "incomplete.dcm")
    with pytest.raises(ObjectMismatch, match=re.escape(f"{missing} {tag} is missing")):
        archive.ingest.ingest_file(path, CTX)
    assert_nothing_kept(archive)


def test_file_meta_uid_must_match_the_dataset(archive: Archive, tmp_path: Path) -> None:
    ds = diconde_dx()
    uid = str(ds.SOPInstanceUID)
    other = uid[:-1] + ("1" if uid[-1] != "1" else "2")
    data = write(ds, tmp_path / "ok.dcm").read_bytes()
    meta_end = data.index(uid.encode()) + len(uid)
    assert meta_end < 400  # the first occurrence is the file meta's (0002,0003)
    path = tmp_path / "meta.dcm"
    path.write_bytes(data.replace(uid.encode(), other.encode(), 1))
    with pytest.raises(ObjectMismatch, match="file meta and dataset SOP Instance UIDs differ"):
        archive.ingest.ingest_file(path, CTX)
    assert_nothing_kept(archive)


def install_refusing_trigger(archive: Archive) -> None:
    """Make every insert of an instance version fail inside the index transaction."""
    with archive.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_versions BEFORE INSERT ON instance_version "
                    "BEGIN SELECT RAISE(ABORT, 'index refuses versions'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_versions() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'index refuses versions'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_versions BEFORE INSERT ON instance_version "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_versions()"
                )
            )


def test_a_failed_index_write_removes_the_object(archive: Archive, dx_file: Path) -> None:
    """The object is put before the index transaction; when that fails, the object goes too."""
    install_refusing_trigger(archive)
    with pytest.raises(Exception, match="index refuses versions"):
        archive.ingest.ingest_file(dx_file, CTX)
    assert_nothing_kept(archive)


def test_a_failed_index_write_of_a_received_object_removes_it(archive: Archive, dx_file: Path) -> None:
    install_refusing_trigger(archive)
    incoming = received(archive, dx_file.read_bytes())
    with pytest.raises(Exception, match="index refuses versions"):
        archive.ingest.ingest_incoming(incoming, CTX)
    assert not incoming.path.exists()
    assert_nothing_kept(archive)


def test_an_unusable_index_is_resource_unavailable_and_keeps_nothing(archive: Archive, dx_file: Path) -> None:
    """A lost table stands for any index failure: the sender must hear "try later" (0xA700)."""
    with archive.engine.begin() as conn:
        conn.execute(text("ALTER TABLE instance_version RENAME TO instance_version_gone"))
    with pytest.raises(ResourceUnavailable):
        archive.ingest.ingest_file(dx_file, CTX)
    assert object_keys(archive) == set()
    with archive.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM instance")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM instance_version_gone")).scalar_one() == 0


# -- objects received into the store as they arrive (the C-STORE path) -----------------------
def test_a_received_object_is_committed_under_its_key(archive: Archive, dx_file: Path) -> None:
    data = dx_file.read_bytes()
    rng = random.Random(7)
    # Small, uneven pieces first: the file meta group arrives split across many writes.
    incoming = received(archive, data, chunks=[rng.randint(1, 40) for _ in range(30)])
    assert incoming.size == len(data)

    result = archive.ingest.ingest_incoming(incoming, CTX)

    assert result.outcome is Outcome.STORED
    version = archive.retrieve.current(result.sop_instance_uid)
    assert version.object_key == incoming.key
    offset = dataset_offset(data)
    assert (version.dataset_sha256, version.file_meta_sha256) == (
        hashlib.sha256(data[offset:]).hexdigest(),
        hashlib.sha256(data[:offset]).hexdigest(),
    )
    assert object_keys(archive) == {incoming.key}
    assert stored_bytes(archive, result.sop_instance_uid) == data


def test_objects_received_side_by_side_are_hashed_apart(archive: Archive, tmp_path: Path) -> None:
    """Every object being received shares one hashing thread; their chunks interleave on it."""
    files = [write(diconde_dx(seed=n), tmp_path / f"{n}.dcm").read_bytes() for n in range(3)]
    incomings = [archive.ingest.receive() for _ in files]
    for start in range(0, max(map(len, files)), 1000):
        for incoming, data in zip(incomings, files, strict=True):
            if start < len(data):
                incoming.write(data[start : start + 1000])
    for incoming, data in zip(incomings, files, strict=True):
        digests = incoming.digests()
        assert digests is not None
        offset = dataset_offset(data)
        assert digests.dataset_sha256 == hashlib.sha256(data[offset:]).hexdigest()
        assert digests.file_meta_sha256 == hashlib.sha256(data[:offset]).hexdigest()
        assert archive.ingest.ingest_incoming(incoming, CTX).outcome is Outcome.STORED


def test_a_chunk_the_hashing_thread_fails_on_is_hashed_from_the_object(
    archive: Archive, dx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = dx_file.read_bytes()
    real = Part10Hasher.update
    calls = 0

    def failing_once(self: Part10Hasher, chunk: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise MemoryError("no room to hash")
        real(self, chunk)

    monkeypatch.setattr(Part10Hasher, "update", failing_once)
    incoming = received(archive, data)
    assert incoming.digests() is None  # not trusted: a chunk went unhashed

    result = archive.ingest.ingest_incoming(incoming, CTX)

    offset = dataset_offset(data)
    assert result.dataset_sha256 == hashlib.sha256(data[offset:]).hexdigest()
    assert archive.retrieve.current(result.sop_instance_uid).file_meta_sha256 == (
        hashlib.sha256(data[:offset]).hexdigest()
    )
    assert stored_bytes(archive, result.sop_instance_uid) == data
    # The thread goes on hashing the next object.
    monkeypatch.setattr(Part10Hasher, "update", real)
    again = received(archive, data)
    assert again.digests() is not None
    again.abort()


def test_a_refused_received_object_leaves_no_object(archive: Archive, tmp_path: Path) -> None:
    data = write(diconde_dx(), tmp_path / "full.dcm").read_bytes()
    incoming = received(archive, data[:-500])
    with pytest.raises(InvalidObject):
        archive.ingest.ingest_incoming(incoming, CTX)
    assert not incoming.path.exists()
    assert_nothing_kept(archive)


def test_a_received_object_not_matching_the_request_leaves_no_object(archive: Archive, dx_file: Path) -> None:
    incoming = received(archive, dx_file.read_bytes())
    expected = Expected(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        sop_instance_uid=generate_uid(),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    with pytest.raises(ObjectMismatch, match="differs from the C-STORE request"):
        archive.ingest.ingest_incoming(incoming, CTX, expected)
    assert not incoming.path.exists()
    assert_nothing_kept(archive)


def test_a_duplicate_received_object_is_discarded(archive: Archive, dx_file: Path) -> None:
    first = archive.ingest.ingest_file(dx_file, CTX)
    keys = object_keys(archive)
    incoming = received(archive, dx_file.read_bytes())

    again = archive.ingest.ingest_incoming(incoming, CTX)

    assert again.outcome is Outcome.DUPLICATE
    assert again.version_id == first.version_id
    assert object_keys(archive) == keys
    assert incoming.key not in keys
    assert not incoming.path.exists()


def test_object_keys_are_unique_and_share_a_prefix_within_a_day() -> None:
    """Keys group a day's objects in few store folders (no folder creation per object in a
    young archive) and stay unique."""
    from pacs.services.ingest import new_object_key

    noon = 20_000 * 86400 + 43200.0
    keys = {new_object_key(noon) for _ in range(10_000)}
    assert len(keys) == 10_000
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in keys)
    assert {k[:2] for k in keys} == {f"{20_000 % 256:02x}"}
    assert new_object_key(noon + 86400)[:2] == f"{20_001 % 256:02x}"
