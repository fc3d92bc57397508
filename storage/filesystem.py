"""Objects as files under one root folder.

Layout: ``ROOT/ab/cd/abcd…`` (two fan-out levels from the key, so no folder holds more than a few
thousand entries even at tens of millions of objects) and ``ROOT/.staging`` for copies in flight.

Durability, for both ways in, the same steps: the bytes go to a file in ``ROOT/.staging``, are
fsynced, the file gets its final name with ``link()`` (which, unlike ``rename()``, refuses to replace
an existing file, so a key is never overwritten), and every name on its path is made durable
(:meth:`FilesystemStore._sync_names`). A final name therefore only ever names a whole object whose
data is durable.

* :meth:`FilesystemStore.put_file` (``pacs import``) copies a file that way.
* :meth:`FilesystemStore.create` (every C-STORE and STOW-RS part) writes the bytes as they arrive;
  writes ask the kernel to start writing back as they go (``sync_file_range``), the fan-out
  folders' names are made durable while the data is still arriving, and
  :meth:`FileObjectWriter.finish` starts the ``fdatasync``, the link and the fsync of the folder
  holding the new name as soon as the last byte is in, while the archive checks the object;
  :meth:`FileObjectWriter.commit` waits for all of it. With a background executor (the ingest
  service gives one) the fsyncs run there, so the thread receiving the data does not wait for them
  and the durability cost overlaps the network transfer and the checks instead of following them.

A crash leaves whole objects only. An object named but not recorded (a crash between its link,
which comes while the archive still checks it, and the index commit; or a rejected object whose
removal was not yet durable) is one no index row names, which ``pacs fsck`` reports as
unreferenced; copies in ``.staging`` are removed by :meth:`FilesystemStore.sweep_staging`, and
reported and removed by ``pacs fsck`` too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Executor, Future
from functools import cache, partial
from pathlib import Path
from typing import BinaryIO

from storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    StorageFull,
    os_error,
    remove_files,
    stale_files,
)

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{3,199}$")
_STAGING = ".staging"
_WRITEBACK_STEP = 1 << 20  # start write-back for every MiB written
#: Fan-out folders remembered as durable; beyond that the memory starts again (a day's objects
#: use one first-level folder and at most 256 second-level ones).
_DURABLE_REMEMBERED = 4096
#: Below this much free space the store reports itself unavailable (:meth:`FilesystemStore.check`):
#: no image of any size fits any more, and the index beside it may need the room.
LOW_SPACE = 1 << 20


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by path (a folder fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@cache
def _sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux ``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)``: start write-back, don't wait.

    Python's ``os`` does not expose it; without it (not Linux) writes are simply flushed at commit.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    write = 2  # SYNC_FILE_RANGE_WRITE

    def start(fd: int, offset: int, length: int) -> None:
        function(fd, offset, length, write)  # a hint: failure only means a longer commit

    return start


class FileObjectWriter:
    """A new object written to a staging file, given its final name once whole and durable (see
    the module docstring).

    ``path``: the staging file (the bytes written so far, readable until commit or abort).
    ``sync_folders``: makes the names of the object's fan-out folders durable; run on
    ``background`` while the data arrives if there is one (else now), waited for by commit.
    ``background``: an executor for the fsyncs and the link; the descriptor stays open until the
    work queued there has run.

    ``write``, ``finish`` and ``abort`` may come from different threads (a connection that closes
    aborts the object its association was receiving): they take turns on a lock, so a descriptor
    is never closed under a write, whose number another file could meanwhile have taken.
    """

    def __init__(
        self,
        key: str,
        path: Path,
        final: Path,
        sync_folders: Callable[[], None],
        background: Executor | None = None,
    ) -> None:
        self.key = key
        self.path = path
        self._final = final
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise os_error(exc, f"creating object {key!r} in {path.parent}") from exc
        self._written = 0
        self._flushed = 0
        self._linked = False  # the final name exists and is this object's
        self._committed = False
        self._writeback = _sync_file_range()
        self._background = background
        self._finished = False
        self._durable: Future[None] | None = None  # the fdatasync, link and fsync started by finish()
        self._named: Future[None] | None = None  # the fan-out folders' names
        self._lock = threading.Lock()
        if background is not None:
            try:
                self._named = background.submit(sync_folders)
            except RuntimeError as exc:  # the executor is shut down: the service is closing
                self.abort()
                raise StorageError(f"creating object {key!r}: the store is shutting down") from exc
        else:
            try:
                sync_folders()
            except OSError as exc:
                self.abort()
                raise os_error(exc, f"creating object {key!r} in {final.parent}") from exc

    def write(self, data: bytes | bytearray | memoryview) -> int:
        with self._lock:
            fd = self._fd
            if fd is None or self._finished:
                raise StorageError(f"object {self.key!r} is closed for writing")
            view = memoryview(data)
            try:
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            except OSError as exc:
                raise os_error(exc, f"writing object {self.key!r} in {self.path.parent}") from exc
            self._written += len(data)
            if self._writeback is not None and self._written - self._flushed >= _WRITEBACK_STEP:
                # On the writing thread: queued on the background executor instead, these requests
                # made one association of 2 MB images about 8% slower (paired, interleaved rounds).
                self._writeback(fd, self._flushed, self._written - self._flushed)
                self._flushed = self._written
        return len(data)

    def _make_durable(self, fd: int) -> None:
        """Data first, then the final name, then the folder holding it: the name never refers to
        bytes a crash could lose."""
        os.fdatasync(fd)
        try:
            os.link(self.path, self._final)
        except FileExistsError:
            raise ObjectExists(self.key) from None
        self._linked = True
        fsync_path(self._final.parent)

    def finish(self) -> None:
        """Start making the object durable on the background executor (without one, or with one
        shut down, commit() does it)."""
        with self._lock:
            self._finished = True
            if self._fd is not None and self._durable is None and self._background is not None:
                try:
                    self._durable = self._background.submit(self._make_durable, self._fd)
                except RuntimeError:  # the executor is shut down
                    pass

    def commit(self) -> None:
        with self._lock:
            fd = self._fd
            if fd is None:
                raise StorageError(f"object {self.key!r} was already committed or aborted")
            self._finished = True
            durable = self._durable
        try:
            if durable is not None:
                durable.result()
            else:
                self._make_durable(fd)
            if self._named is not None:
                self._named.result()
        except BaseException as exc:
            self._close()  # abort() removes the names
            if isinstance(exc, OSError):
                raise os_error(exc, f"making object {self.key!r} in {self._final.parent} durable") from exc
            if isinstance(exc, CancelledError):  # abort() from another thread got there first
                raise StorageError(f"object {self.key!r} was aborted") from exc
            raise
        with self._lock:
            if self._fd is None:  # aborted from another thread meanwhile: its names are gone
                raise StorageError(f"object {self.key!r} was aborted")
            try:
                os.unlink(self.path)  # the staging name; a crash before this leaves it to the sweep
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
            self._committed = True

    def abort(self) -> None:
        with self._lock:
            if self._committed:
                return
            self._finished = True  # no more writes, and finish() starts nothing now
            durable = self._durable
        # Work not started yet is dropped (a rejected object needs no fdatasync); work running
        # uses the descriptor, which stays open until it is done.
        if durable is not None and not durable.cancel():
            durable.exception()
        with self._lock:
            if self._committed:
                return
            self._close_locked()
            for name in (self._final, self.path) if self._linked else (self.path,):
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
            self._linked = False

    def _close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FilesystemStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.location = f"file://{self.root}"
        self._staging = self.root / _STAGING
        # Fan-out folders whose names this process has made durable (see _sync_names).
        self._durable: set[Path] = set()
        self._durable_lock = threading.Lock()
        try:
            self._staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create object folder {self.root}: {exc}") from exc

    # -- paths -------------------------------------------------------------------------------
    def path_for(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"invalid object key {key!r}")
        return self.root / key[0:2] / key[2:4] / key

    def _sync_names(self, path: Path) -> None:
        """Make every name on the path to the object at ``path`` durable: its own (an fsync of
        its folder, always) and those of its fan-out folders (:meth:`_sync_folders`)."""
        self._sync_folders(path)
        fsync_path(path.parent)

    def _sync_folders(self, path: Path) -> None:
        """Make the names of the two fan-out folders on ``path`` durable, each by an fsync of the
        folder holding it unless this process has done that since it saw the folder exist.
        Whoever made a folder, another writer or another process, its name is durable once this
        returns; a folder is fsynced again only when there is something new in it."""
        level2 = path.parent
        level1 = level2.parent
        for folder, holder in ((level1, self.root), (level2, level1)):
            if folder not in self._durable:
                fsync_path(holder)
                with self._durable_lock:
                    if len(self._durable) >= _DURABLE_REMEMBERED:  # old days' folders: forget them
                        self._durable.clear()
                    self._durable.add(folder)

    def _make_parent(self, path: Path) -> None:
        """Make the object's fan-out folders where missing; the caller syncs :meth:`_sync_names`."""
        parent = path.parent
        if parent.is_dir():
            return
        for folder in (parent.parent, parent):
            if not folder.is_dir():
                try:
                    folder.mkdir()
                except FileExistsError:
                    pass

    # -- writing -----------------------------------------------------------------------------
    def create(self, key: str, *, background: Executor | None = None) -> FileObjectWriter:
        final = self.path_for(key)
        try:
            self._make_parent(final)
        except OSError as exc:
            raise os_error(exc, f"creating the folder of object {key!r} under {self.root}") from exc
        if os.path.lexists(final):  # early, for the caller; the link at commit refuses it anyway
            raise ObjectExists(key)
        staged = self._staging / f"{key}.{uuid.uuid4().hex[:8]}"
        return FileObjectWriter(key, staged, final, partial(self._sync_folders, final), background)

    def put_file(self, key: str, path: Path) -> None:
        final = self.path_for(key)
        staged = self._staging / uuid.uuid4().hex
        try:
            self._make_parent(final)
            with open(path, "rb") as src, open(staged, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            try:
                os.link(staged, final)
            except FileExistsError:
                raise ObjectExists(key) from None
            try:
                self._sync_names(final)
            except OSError:  # not durable, and the caller will not know the key: not kept
                final.unlink(missing_ok=True)
                raise
        except (ObjectExists, FileNotFoundError):
            raise
        except OSError as exc:
            raise os_error(exc, f"storing object {key!r} under {self.root}") from exc
        finally:
            try:
                os.unlink(staged)
            except FileNotFoundError:
                pass

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise os_error(exc, f"deleting object {key!r} under {self.root}") from exc

    def stale_staging(self, older_than: float) -> list[ObjectInfo]:
        return stale_files(self._staging.glob("*"), older_than)

    def sweep_staging(self, older_than: float) -> int:
        return remove_files(self._staging, self.stale_staging(older_than))

    # -- reading -----------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path_for(key), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise os_error(exc, f"opening object {key!r} under {self.root}") from exc

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        with self.open(key) as f:
            return os.pread(f.fileno(), length, offset)

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self.path_for(key))
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        return ObjectInfo(key, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))

    def iter_objects(self) -> Iterator[ObjectInfo]:
        for level1 in _subfolders(self.root):
            if level1.name == _STAGING:
                continue
            for level2 in _subfolders(Path(level1.path)):
                for entry in os.scandir(level2.path):
                    if entry.is_file() and _KEY.match(entry.name):
                        st = entry.stat()
                        yield ObjectInfo(
                            entry.name, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)
                        )

    def check(self) -> None:
        if not os.access(self._staging, os.W_OK):
            raise StorageError(f"object folder {self.root} is not writable")
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            raise os_error(exc, f"checking object folder {self.root}") from exc
        free = st.f_bavail * st.f_frsize
        if free < LOW_SPACE:
            raise StorageFull(f"no space left: {free} bytes free under {self.root}")

    def close(self) -> None:
        pass


def _subfolders(path: Path) -> Iterator[os.DirEntry[str]]:
    with os.scandir(path) as entries:
        yield from sorted((e for e in entries if e.is_dir()), key=lambda e: e.name)
