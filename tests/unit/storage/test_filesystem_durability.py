"""What the filesystem store syncs for an object written through ``create``, and on which thread.

The write rule answers Success only for a durable object: its data (``fdatasync``) and every name
on its path (an fsync of the folder holding its name, and of the folders holding its fan-out
folders' names until the process has made those durable once). The bytes go to a staging file,
which gets its final name (``link``) only once its data is durable, so a final name never holds a
partial object. With a background executor the fsyncs and the link run there, not on the thread
that writes the bytes (the one receiving them from the network), which only asks for write-back as
it goes. The calls are observed by wrapping the real ``os.fsync``/``os.fdatasync``/``os.link`` and
the store's ``sync_file_range``, which still run.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from storage import ObjectExists, StorageError, filesystem
from storage.filesystem import FilesystemStore

CHUNK = 128 * 1024
SIZE = 3 * 1024 * 1024 + 1000  # three write-back steps of 1 MiB and a tail


class Calls:
    """(what, path or (path, offset, length), thread name) for every sync the store asked for."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, str]] = []
        self.lock = threading.Lock()

    def add(self, what: str, detail: Any) -> None:
        with self.lock:
            self.seen.append((what, detail, threading.current_thread().name))

    def of(self, what: str) -> list[tuple[Any, str]]:
        with self.lock:
            return [(detail, thread) for kind, detail, thread in self.seen if kind == what]


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    seen = Calls()
    real_fsync, real_fdatasync, real_link = os.fsync, os.fdatasync, os.link

    def fsync(fd: int) -> None:
        seen.add("fsync", _fd_path(fd))
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        seen.add("fdatasync", _fd_path(fd))
        real_fdatasync(fd)

    def link(source: Any, target: Any, **kwargs: Any) -> None:
        seen.add("link", (str(source), str(target)))
        real_link(source, target, **kwargs)

    real_writeback = filesystem._sync_file_range()
    assert real_writeback is not None, "sync_file_range is expected on Linux"

    def writeback(fd: int, offset: int, length: int) -> None:
        seen.add("writeback", (_fd_path(fd), offset, length))
        real_writeback(fd, offset, length)

    def sync_file_range() -> Callable[[int, int, int], None]:
        return writeback

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(filesystem, "_sync_file_range", sync_file_range)
    yield seen


def _write(writer: filesystem.FileObjectWriter, data: bytes) -> None:
    for start in range(0, len(data), CHUNK):
        writer.write(data[start : start + CHUNK])


def test_with_a_background_executor_the_writing_thread_does_not_wait_for_fsyncs(
    tmp_path: Path, calls: Calls
) -> None:
    store = FilesystemStore(tmp_path / "objects")
    data = os.urandom(SIZE)
    key = uuid.uuid4().hex
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sync") as background:
        writer = store.create(key, background=background)
        _write(writer, data)
        writer.finish()
        writer.commit()
    path, staged = store.path_for(key), str(writer.path)
    assert path.read_bytes() == data
    assert list((store.root / ".staging").iterdir()) == []

    background = [(what, detail) for what, detail, thread in calls.seen if what != "writeback"]
    assert {thread for what, _, thread in calls.seen if what != "writeback"} == {"store-sync_0"}
    # The fan-out folders' names (outermost first) while the data arrived; then the data, the
    # final name and the folder holding it, in that order.
    assert background == [
        ("fsync", str(store.root)),
        ("fsync", str(path.parent.parent)),
        ("fdatasync", staged),
        ("link", (staged, str(path))),
        ("fsync", str(path.parent)),
    ]
    # Write-back was asked for each MiB as it was written, in order, by the writing thread.
    me = threading.current_thread().name
    assert calls.of("writeback") == [((staged, offset, 1 << 20), me) for offset in (0, 1 << 20, 2 << 20)]


def test_an_object_has_no_final_name_until_it_is_whole_and_durable(tmp_path: Path, calls: Calls) -> None:
    store = FilesystemStore(tmp_path / "objects")
    key = uuid.uuid4().hex
    with ThreadPoolExecutor(max_workers=1) as background:
        writer = store.create(key, background=background)
        _write(writer, os.urandom(SIZE))
        assert writer.path.parent == store.root / ".staging" and writer.path.stat().st_size == SIZE
        assert not store.path_for(key).exists()
        assert list(store.iter_objects()) == []  # fsck sees nothing in flight
        writer.finish()
        writer.commit()
    assert [info.key for info in store.iter_objects()] == [key]
    assert list((store.root / ".staging").iterdir()) == []


def test_a_key_taken_while_the_object_arrived_fails_the_commit_and_stays_intact(
    tmp_path: Path, calls: Calls
) -> None:
    """``create`` refuses a key already taken; one taken after it (no writer of the archive does,
    keys are random) is refused by the link at commit, and the other object is left as it is."""
    store = FilesystemStore(tmp_path / "objects")
    key = uuid.uuid4().hex
    source = tmp_path / "other"
    source.write_bytes(b"the other object")
    with ThreadPoolExecutor(max_workers=1) as background:
        writer = store.create(key, background=background)
        writer.write(b"this object")
        store.put_file(key, source)
        writer.finish()
        with pytest.raises(ObjectExists):
            writer.commit()
        writer.abort()
        with pytest.raises(ObjectExists):
            store.create(key, background=background)
    assert store.path_for(key).read_bytes() == b"the other object"
    assert list((store.root / ".staging").iterdir()) == []


def _store_one(store: FilesystemStore, key: str, background: ThreadPoolExecutor) -> None:
    writer = store.create(key, background=background)
    writer.write(b"object " + key.encode())
    writer.finish()
    writer.commit()


def test_a_folder_is_synced_again_only_for_what_is_new_in_it(tmp_path: Path, calls: Calls) -> None:
    """A second object in the same folders: only the folder holding its own name is fsynced."""
    store = FilesystemStore(tmp_path / "objects")
    first, second = "ab00" + "0" * 28, "ab00" + "1" * 28  # the same fan-out folders
    level2 = store.path_for(first).parent
    with ThreadPoolExecutor(max_workers=1) as background:
        _store_one(store, first, background)
        _store_one(store, second, background)
        _store_one(store, third := "ab01" + "2" * 28, background)  # a new folder beside them
    assert [p for p, _ in calls.of("fsync")] == [
        *(str(store.root), str(level2.parent), str(level2)),
        str(level2),
        *(str(level2.parent), str(store.path_for(third).parent)),
    ]
    assert store.path_for(second).read_bytes() == b"object " + second.encode()


def test_folders_another_process_made_are_made_durable_before_the_object(
    tmp_path: Path, calls: Calls
) -> None:
    """Whoever made the fan-out folders may not have synced their names yet: a process that finds
    them fsyncs the folders holding them before its first object there is committed."""
    root = tmp_path / "objects"
    key = "ab00" + "3" * 28
    os.makedirs(root / "ab" / "00")  # as another process would, the moment before
    store = FilesystemStore(root)
    with ThreadPoolExecutor(max_workers=1) as background:
        _store_one(store, key, background)
    assert [p for p, _ in calls.of("fsync")] == [str(root), str(root / "ab"), str(root / "ab" / "00")]


def test_commit_waits_until_the_names_are_durable(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data's fdatasync may finish first (two store threads here): commit still waits for the
    fsync of the folder holding the object's name."""
    store = FilesystemStore(tmp_path / "objects")
    key = uuid.uuid4().hex
    level2 = str(store.path_for(key).parent)
    release = threading.Event()
    spied_fsync = os.fsync

    def held_fsync(fd: int) -> None:
        if _fd_path(fd) == level2:
            release.wait(30)
        spied_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)
    with ThreadPoolExecutor(max_workers=2) as background:
        writer = store.create(key, background=background)
        try:
            writer.write(b"data")
            writer.finish()
            committing = threading.Thread(target=writer.commit)
            committing.start()
            committing.join(0.3)
            assert committing.is_alive(), "commit returned before the object's name was durable"
        finally:
            release.set()
        committing.join(10)
        assert not committing.is_alive()
    assert [p for p, _ in calls.of("fsync")][-1] == level2


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background-executor"])
def test_a_failed_folder_fsync_fails_the_commit_and_keeps_nothing(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch, background: bool
) -> None:
    store = FilesystemStore(tmp_path / "objects")
    key = uuid.uuid4().hex
    spied_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if _fd_path(fd) == str(store.root):
            raise OSError(errno.EIO, "Input/output error")
        spied_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    executor = ThreadPoolExecutor(max_workers=1) if background else None
    try:
        if executor is None:  # inline, the names are synced when the object is created
            with pytest.raises(StorageError, match=key):
                store.create(key)
        else:
            writer = store.create(key, background=executor)
            writer.write(b"data")
            writer.finish()
            with pytest.raises(StorageError, match=key):
                writer.commit()
            writer.abort()
    finally:
        if executor is not None:
            executor.shutdown()
    assert not store.path_for(key).exists()
    assert list((store.root / ".staging").iterdir()) == []
    # Nothing was remembered as durable: the next object tries again.
    monkeypatch.setattr(os, "fsync", spied_fsync)
    with ThreadPoolExecutor(max_workers=1) as again:
        _store_one(store, key2 := uuid.uuid4().hex, again)
    assert store.path_for(key2).exists()
    assert str(store.root) in [p for p, _ in calls.of("fsync")]


def test_put_file_keeps_nothing_when_a_name_cannot_be_made_durable(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FilesystemStore(tmp_path / "objects")
    source = tmp_path / "source"
    source.write_bytes(b"an object to import")
    key = uuid.uuid4().hex
    spied_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if _fd_path(fd) == str(store.path_for(key).parent):
            raise OSError(errno.EIO, "Input/output error")
        spied_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StorageError, match=key):
        store.put_file(key, source)
    assert not store.path_for(key).exists()
    assert list((store.root / ".staging").iterdir()) == []


def test_without_an_executor_commit_syncs_the_same_on_the_writing_thread(
    tmp_path: Path, calls: Calls
) -> None:
    store = FilesystemStore(tmp_path / "objects")
    data = os.urandom(SIZE)
    key = uuid.uuid4().hex
    writer = store.create(key)
    _write(writer, data)
    writer.commit()
    path, staged = store.path_for(key), str(writer.path)
    assert path.read_bytes() == data
    assert {thread for _, _, thread in calls.seen} == {threading.current_thread().name}
    assert [(what, detail) for what, detail, _ in calls.seen if what != "writeback"] == [
        ("fsync", str(store.root)),
        ("fsync", str(path.parent.parent)),
        ("fdatasync", staged),
        ("link", (staged, str(path))),
        ("fsync", str(path.parent)),
    ]
    assert [detail for detail, _ in calls.of("writeback")] == [
        (staged, offset, 1 << 20) for offset in (0, 1 << 20, 2 << 20)
    ]


def test_put_file_syncs_the_copy_and_every_name_on_its_path(tmp_path: Path, calls: Calls) -> None:
    store = FilesystemStore(tmp_path / "objects")
    source = tmp_path / "source"
    source.write_bytes(b"an object to import")
    key = "ab00" + "2" * 28
    store.put_file(key, source)
    path = store.path_for(key)
    assert path.read_bytes() == b"an object to import"
    fsynced = [p for p, _ in calls.of("fsync")]
    # The staged copy (its data), then the names: the folders an earlier writer may have made too.
    assert len(fsynced) == 4 and Path(fsynced[0]).parent == store.root / ".staging"
    assert fsynced[1:] == [str(store.root), str(path.parent.parent), str(path.parent)]


def test_abort_drops_durability_work_that_has_not_started(tmp_path: Path, calls: Calls) -> None:
    """A rejected object aborted while its fdatasync and link are still queued: they never run (no
    fsync for an object that is not kept, no name for it, not even briefly)."""
    store = FilesystemStore(tmp_path / "objects")
    key = uuid.uuid4().hex
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as background:
        writer = store.create(key, background=background)
        background.submit(release.wait, 30)  # keeps the work below queued
        try:
            _write(writer, os.urandom(1 << 20))
            writer.finish()
            writer.abort()  # returns at once: nothing of this object is running
            assert not writer.path.exists()
        finally:
            release.set()
    assert calls.of("fdatasync") == [] and calls.of("link") == []
    assert not store.path_for(key).exists()
    assert list((store.root / ".staging").iterdir()) == []


def test_abort_waits_for_durability_work_running_before_closing_the_object(
    tmp_path: Path, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Aborted while its fdatasync runs: the descriptor stays open until that work is done (closed
    first, its number could be reused by another file meanwhile), then both names go."""
    store = FilesystemStore(tmp_path / "objects")
    key = uuid.uuid4().hex
    started, release = threading.Event(), threading.Event()
    spied_fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        started.set()
        release.wait(30)
        spied_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    with ThreadPoolExecutor(max_workers=1) as background:
        writer = store.create(key, background=background)
        try:
            _write(writer, os.urandom(1 << 20))
            writer.finish()
            assert started.wait(10)
            aborting = threading.Thread(target=writer.abort)
            aborting.start()
            aborting.join(0.3)
            assert aborting.is_alive(), "abort returned while the fdatasync was running"
            assert writer.path.exists()
        finally:
            release.set()
        aborting.join(10)
        assert not aborting.is_alive()
    # The running work went to its end (the object was named), then abort removed both names.
    assert [detail for detail, _ in calls.of("fdatasync")] == [str(writer.path)]
    assert [detail for detail, _ in calls.of("link")] == [(str(writer.path), str(store.path_for(key)))]
    assert not store.path_for(key).exists()
    assert list((store.root / ".staging").iterdir()) == []


def test_abort_from_another_thread_waits_for_a_write_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection of an association that is receiving closes: its object is aborted from
    another thread while the receiving thread is inside a write. abort() waits for that write
    before it closes the descriptor (closed under it, the number could be taken by a file opened
    meanwhile, which the write would then corrupt); the next write fails cleanly."""
    store = FilesystemStore(tmp_path / "objects")
    writer = store.create(uuid.uuid4().hex)
    in_write, release = threading.Event(), threading.Event()
    real_write = os.write

    def held_write(fd: int, data: Any) -> int:
        in_write.set()
        release.wait(30)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", held_write)
    receiving = threading.Thread(target=writer.write, args=(b"a chunk",))
    receiving.start()
    try:
        assert in_write.wait(10)
        aborting = threading.Thread(target=writer.abort)
        aborting.start()
        aborting.join(0.3)
        assert aborting.is_alive(), "abort closed the object while a write was using it"
    finally:
        release.set()
    aborting.join(10)
    receiving.join(10)
    assert not aborting.is_alive() and not receiving.is_alive()
    with pytest.raises(StorageError, match="closed for writing"):
        writer.write(b"the next chunk")
    assert list((store.root / ".staging").iterdir()) == []
