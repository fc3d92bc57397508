"""The object store contract (``storage/__init__.py``), run unchanged against every backend.

The archive's write rule depends on these promises holding on the filesystem and on S3 alike: a key
is written once, a writer keeps nothing until it commits, a missing object is ``ObjectNotFound``, and
bytes come back exactly as they went in (also across S3 multipart boundaries).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import storage
from storage import ObjectExists, ObjectNotFound, ObjectStore, StoreURLError
from storage.filesystem import FilesystemStore
from storage.s3 import DEFAULT_PART_SIZE, S3Store

BACKENDS = ["file", "s3"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "file":
        opened: ObjectStore = FilesystemStore(tmp_path / "objects")
    else:
        opened = storage.open_store(request.getfixturevalue("s3_url"), staging_dir=tmp_path / "staging")
    yield opened
    opened.close()


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "sources"
    folder.mkdir()
    return folder


def new_key() -> str:
    return uuid.uuid4().hex


def source_file(folder: Path, data: bytes) -> Path:
    path = folder / f"src-{uuid.uuid4().hex}"
    path.write_bytes(data)
    return path


def read_all(store: ObjectStore, key: str) -> bytes:
    with store.open(key) as f:
        return f.read()


def stored_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# -- put / read ------------------------------------------------------------------------------
def test_put_file_then_stat_open_and_read_range_are_byte_exact(store: ObjectStore, source_dir: Path) -> None:
    data = os.urandom(100_003)
    key = new_key()
    before = dt.datetime.now(dt.UTC)
    store.put_file(key, source_file(source_dir, data))

    info = store.stat(key)
    assert info.key == key
    assert info.size == len(data)
    assert info.modified.tzinfo is not None
    assert abs(info.modified - before) < dt.timedelta(minutes=2)

    assert read_all(store, key) == data
    assert store.read_range(key, 0, 10) == data[:10]
    assert store.read_range(key, 50_000, 1234) == data[50_000:51_234]
    assert store.read_range(key, len(data) - 10, 10) == data[-10:]
    # A range running over the end is cut at the end; one starting at or after it is empty.
    assert store.read_range(key, len(data) - 3, 100) == data[-3:]
    assert store.read_range(key, len(data), 10) == b""
    assert store.read_range(key, len(data) + 500, 10) == b""
    assert store.read_range(key, 7, 0) == b""


def test_put_on_an_existing_key_raises_and_keeps_the_original(store: ObjectStore, source_dir: Path) -> None:
    original = b"original bytes " * 100
    key = new_key()
    store.put_file(key, source_file(source_dir, original))

    with pytest.raises(ObjectExists) as caught:
        store.put_file(key, source_file(source_dir, b"replacement"))
    assert caught.value.key == key
    # A writer is refused when it starts (filesystem) or at the latest when it commits (S3).
    with pytest.raises(ObjectExists):
        writer = store.create(key)
        try:
            writer.write(b"replacement")
            writer.finish()
            writer.commit()
        finally:
            writer.abort()

    assert read_all(store, key) == original
    assert store.stat(key).size == len(original)


def test_put_file_of_a_missing_source_raises_and_stores_nothing(store: ObjectStore, source_dir: Path) -> None:
    key = new_key()
    with pytest.raises(FileNotFoundError):
        store.put_file(key, source_dir / "does-not-exist")
    with pytest.raises(ObjectNotFound):
        store.stat(key)


# -- writers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("background", [False, True], ids=["inline", "background-executor"])
def test_writer_commit_produces_the_object(store: ObjectStore, background: bool) -> None:
    """With a background executor the store may make the object's name durable there; commit still
    returns only when everything is done."""
    chunks = [os.urandom(n) for n in (1, 4096, 70_000, 3)]
    key = new_key()
    executor = ThreadPoolExecutor(max_workers=1) if background else None
    writer = store.create(key, background=executor)
    assert writer.key == key
    for chunk in chunks:
        assert writer.write(chunk) == len(chunk)
    # The bytes written so far are readable in the local file before the commit.
    assert writer.path.read_bytes() == b"".join(chunks)
    writer.commit()
    if executor is not None:
        executor.shutdown()

    assert store.stat(key).size == sum(map(len, chunks))
    assert read_all(store, key) == b"".join(chunks)


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background-executor"])
def test_a_finished_writer_commits_or_aborts_and_takes_no_more_bytes(
    store: ObjectStore, tmp_path: Path, background: bool
) -> None:
    """finish() may start making the object durable early (a filesystem store's fdatasync on the
    background executor); the archive may still reject the object then, and commit() or abort()
    must each work after it."""
    executor = ThreadPoolExecutor(max_workers=1) if background else None
    data = os.urandom(300_000)
    kept = store.create(kept_key := new_key(), background=executor)
    kept.write(data)
    kept.finish()
    with pytest.raises(storage.StorageError):
        kept.write(b"more")
    kept.commit()
    rejected = store.create(rejected_key := new_key(), background=executor)
    rejected.write(data)
    rejected.finish()
    rejected.abort()
    if executor is not None:
        executor.shutdown()

    assert read_all(store, kept_key) == data
    with pytest.raises(ObjectNotFound):
        store.stat(rejected_key)
    assert not rejected.path.exists()
    assert stored_files(tmp_path / "staging") == []


def test_writer_abort_leaves_no_object_and_no_local_file(store: ObjectStore, tmp_path: Path) -> None:
    key = new_key()
    writer = store.create(key)
    writer.write(os.urandom(10_000))
    assert writer.path.exists()
    writer.abort()
    writer.abort()  # safe to call twice

    assert not writer.path.exists()
    with pytest.raises(ObjectNotFound):
        store.stat(key)
    assert key not in {obj.key for obj in store.iter_objects()}
    assert stored_files(tmp_path / "staging") == []
    # The key is free again: nothing half-written blocks it.
    store.create(key).abort()


def test_writer_abort_after_commit_keeps_the_object(store: ObjectStore) -> None:
    data = os.urandom(5000)
    key = new_key()
    writer = store.create(key)
    writer.write(data)
    writer.commit()
    writer.abort()

    assert read_all(store, key) == data


def test_writer_refuses_writes_after_commit(store: ObjectStore) -> None:
    writer = store.create(new_key())
    writer.write(b"abc")
    writer.commit()
    with pytest.raises(storage.StorageError):
        writer.write(b"more")
    with pytest.raises(storage.StorageError):
        writer.commit()


# -- missing objects and deletes -------------------------------------------------------------
def test_missing_key_raises_object_not_found(store: ObjectStore) -> None:
    key = new_key()
    with pytest.raises(ObjectNotFound) as caught:
        store.open(key)
    assert caught.value.key == key
    with pytest.raises(ObjectNotFound):
        store.stat(key)
    with pytest.raises(ObjectNotFound):
        store.read_range(key, 0, 10)


def test_delete_is_idempotent(store: ObjectStore, source_dir: Path) -> None:
    key, other = new_key(), new_key()
    store.put_file(key, source_file(source_dir, b"to be deleted"))
    store.put_file(other, source_file(source_dir, b"stays"))

    store.delete(key)
    store.delete(key)
    store.delete(new_key())  # never existed

    with pytest.raises(ObjectNotFound):
        store.stat(key)
    assert read_all(store, other) == b"stays"


def test_iter_objects_lists_exactly_what_is_stored(store: ObjectStore, source_dir: Path) -> None:
    assert list(store.iter_objects()) == []
    expected: dict[str, int] = {}
    for size in (0, 1, 17, 4096, 65_537):
        key = new_key()
        store.put_file(key, source_file(source_dir, os.urandom(size)))
        expected[key] = size
    writer = store.create(key := new_key())
    writer.write(b"x" * 333)
    writer.commit()
    expected[key] = 333
    aborted = store.create(new_key())
    aborted.write(b"never kept")
    aborted.abort()
    deleted = new_key()
    store.put_file(deleted, source_file(source_dir, b"gone"))
    store.delete(deleted)

    listed = list(store.iter_objects())
    assert {obj.key: obj.size for obj in listed} == expected
    assert len(listed) == len(expected)
    assert all(obj.modified.tzinfo is not None for obj in listed)


def test_a_multi_part_object_round_trips_byte_exact(
    store: ObjectStore, source_dir: Path, request: pytest.FixtureRequest
) -> None:
    """40 MB is above S3Store's 16 MiB part size, so S3 stores it as a multipart upload."""
    size = 40 * 1024 * 1024 + 12_345
    data = os.urandom(size)
    assert size > 2 * DEFAULT_PART_SIZE
    key = new_key()
    store.put_file(key, source_file(source_dir, data))

    assert store.stat(key).size == size
    digest = hashlib.sha256()
    with store.open(key) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    # Ranges across the part boundaries and at the very end.
    for boundary in (DEFAULT_PART_SIZE, 2 * DEFAULT_PART_SIZE):
        assert store.read_range(key, boundary - 100, 200) == data[boundary - 100 : boundary + 100]
    assert store.read_range(key, size - 50, 1000) == data[-50:]
    if isinstance(store, S3Store):  # a multipart upload's ETag ends with "-<number of parts>"
        etag = request.getfixturevalue("s3_server").client().stat_object(store.bucket, key).etag
        assert etag.endswith("-3")


def test_a_large_object_written_through_a_writer_round_trips(store: ObjectStore) -> None:
    key = new_key()
    digest = hashlib.sha256()
    writer = store.create(key)
    for seed in range(20):  # 20 MiB in 1 MiB chunks: crosses the write-back step many times
        chunk = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)
        digest.update(chunk)
        writer.write(chunk)
    writer.commit()

    read = hashlib.sha256()
    with store.open(key) as f:
        while chunk := f.read(1 << 20):
            read.update(chunk)
    assert read.hexdigest() == digest.hexdigest()
    assert store.stat(key).size == 20 << 20


def test_check_passes_on_a_working_store(store: ObjectStore) -> None:
    store.check()
    assert "secret" not in store.location.lower()


# -- staging leftovers ----------------------------------------------------------------------
HOUR = 3600.0


def test_sweep_staging_keeps_objects_and_copies_in_flight(store: ObjectStore, source_dir: Path) -> None:
    key = new_key()
    store.put_file(key, source_file(source_dir, b"kept"))
    writer = store.create(in_flight := new_key())
    writer.write(b"still arriving")

    assert store.sweep_staging(HOUR) == 0

    writer.write(b" and done")
    writer.commit()
    assert read_all(store, in_flight) == b"still arriving and done"
    assert read_all(store, key) == b"kept"


def test_sweep_staging_removes_old_leftovers_only(
    store: ObjectStore, source_dir: Path, tmp_path: Path
) -> None:
    """What a crash leaves on the way in: a half-copied file in ``.staging`` (filesystem), or the
    local spool of an upload that never happened (S3). Stored objects are never touched."""
    key = new_key()
    store.put_file(key, source_file(source_dir, b"kept"))
    if isinstance(store, FilesystemStore):
        leftover = store.root / ".staging" / uuid.uuid4().hex
        leftover.write_bytes(b"half a copy")
    else:
        writer = store.create(new_key())
        writer.write(b"never uploaded")
        leftover = writer.path
    old = time.time() - 2 * HOUR
    os.utime(leftover, (old, old))
    for path in stored_files(tmp_path / "objects"):  # objects old too: the sweep must still skip them
        os.utime(path, (old, old))

    assert store.sweep_staging(HOUR) == 1

    assert not leftover.exists()
    assert read_all(store, key) == b"kept"
    assert {obj.key for obj in store.iter_objects()} == {key}


# -- filesystem specifics --------------------------------------------------------------------
@pytest.mark.parametrize(
    "key", ["../x", "", "..", "a/b/c/d", ".staging", "ab", "../../etc/passwd", "a" * 201]
)
def test_filesystem_store_rejects_invalid_keys(tmp_path: Path, key: str) -> None:
    root = tmp_path / "objects"
    fs = FilesystemStore(root)
    src = tmp_path / "src"
    src.write_bytes(b"data")
    with pytest.raises(ValueError, match="invalid object key"):
        fs.put_file(key, src)
    with pytest.raises(ValueError, match="invalid object key"):
        fs.create(key)
    with pytest.raises(ValueError, match="invalid object key"):
        fs.open(key)
    with pytest.raises(ValueError, match="invalid object key"):
        fs.stat(key)
    with pytest.raises(ValueError, match="invalid object key"):
        fs.delete(key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects", "src"]
    assert stored_files(root) == []


def test_filesystem_put_leaves_nothing_in_staging(tmp_path: Path) -> None:
    fs = FilesystemStore(tmp_path / "objects")
    src = tmp_path / "src"
    src.write_bytes(b"data")
    key = new_key()
    fs.put_file(key, src)
    with pytest.raises(ObjectExists):
        fs.put_file(key, src)
    assert list((tmp_path / "objects" / ".staging").iterdir()) == []
    assert [p.name for p in stored_files(tmp_path / "objects")] == [key]


# -- URLs ------------------------------------------------------------------------------------
SECRET = "Sup3rS3cretValue"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"s3://access:{SECRET}@127.0.0.1:9000", "bucket"),
        (f"s3://access:{SECRET}@127.0.0.1:9000/", "bucket"),
        (f"s3://access:{SECRET}@127.0.0.1:9000/a/b", "bucket"),
        ("s3://127.0.0.1:9000/bucket", "credentials"),
        ("s3://access@127.0.0.1:9000/bucket", "credentials"),
        (f"s3://access:{SECRET}@/bucket", "host"),
        (f"ftp://access:{SECRET}@127.0.0.1:9000/bucket", "unsupported"),
        (f"http://access:{SECRET}@127.0.0.1:9000/bucket", "unsupported"),
        (f"s3://access:{SECRET}@127.0.0.1:9000/bucket?secure=maybe", "secure"),
        (f"s3://access:{SECRET}@127.0.0.1:9000/bucket?colour=red", "unknown"),
        ("file://", "path"),
        # An S3 bucket name needs 3 to 63 characters: the URL is wrong, not the index nor the server.
        (f"s3://access:{SECRET}@127.0.0.1:9000/b1", "bucket"),
    ],
)
def test_open_store_url_errors_name_the_fault_and_hide_the_secret(url: str, message: str) -> None:
    with pytest.raises(StoreURLError) as caught:
        storage.open_store(url)
    text = str(caught.value)
    assert message in text
    assert SECRET not in text


def test_open_store_file_url_opens_a_filesystem_store(tmp_path: Path) -> None:
    opened = storage.open_store(f"file://{tmp_path / 'objects'}")
    assert isinstance(opened, FilesystemStore)
    assert opened.root == tmp_path / "objects"
    opened.check()


def test_open_store_s3_url_location_hides_the_secret(s3_url: str, tmp_path: Path) -> None:
    opened = storage.open_store(s3_url, staging_dir=tmp_path)
    try:
        opened.check()
        secret = s3_url.split("@")[0].split(":")[-1]
        assert secret not in opened.location
        assert opened.location.startswith("s3://")
    finally:
        opened.close()
