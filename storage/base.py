"""The object store contract and its exceptions."""

from __future__ import annotations

import datetime as dt
import errno
import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable


class StorageError(Exception):
    """The store could not complete an operation (I/O error, server unreachable, disk full)."""


class StorageFull(StorageError):
    """No space left where the store writes (``ENOSPC``, ``EDQUOT``); stores work again once some is freed."""


def os_error(exc: OSError, doing: str) -> StorageError:
    """A :class:`StorageError` for an ``OSError`` met while ``doing`` something, the reason first
    ("No space left on device: writing object 'ab…'"): callers keep only the start of a message
    (a DIMSE Error Comment holds 64 characters)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    message = f"{reason}: {doing}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(message)
    return StorageError(message)


class ObjectNotFound(StorageError):
    """No object is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object {key!r} not found")
        self.key = key


class ObjectExists(StorageError):
    """An object is already stored under the key; keys are never overwritten."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object {key!r} already exists; keys are never overwritten")
        self.key = key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: dt.datetime  # timezone-aware, UTC


@runtime_checkable
class ObjectWriter(Protocol):
    """An object being written: bytes go in as they arrive, and nothing is promised until commit.

    ``path`` is a local file holding the bytes written so far, readable before the commit (the
    archive checks a received object there before deciding to keep it).
    """

    key: str
    path: Path

    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def finish(self) -> None:
        """Every byte is written: the store may start making the object durable now, in the
        background, while the caller checks it; :meth:`commit` still decides and waits. Optional
        to call; nothing more may be written after it."""
        ...

    def commit(self) -> None:
        """Make the object durable under ``key``; on return it survives a crash."""
        ...

    def abort(self) -> None:
        """Discard what was written, unless committed (then it does nothing: a committed object
        is removed with :meth:`ObjectStore.delete`). Safe to call more than once."""
        ...


@runtime_checkable
class ObjectStore(Protocol):
    """What the archive needs from a place that keeps bytes."""

    #: A human-readable location for logs and the start-up line (no secrets).
    location: str

    def put_file(self, key: str, path: Path) -> None:
        """Store a copy of the file at ``path`` under ``key``; durable when this returns."""
        ...

    def create(self, key: str, *, background: Executor | None = None) -> ObjectWriter:
        """Start writing a new object under ``key``. :class:`ObjectExists` if the key is taken:
        from here where the store can tell at no cost, at the latest from :meth:`ObjectWriter.commit`.

        ``background``: where the store may do work of its own while the caller writes (making the
        new name durable, say); :meth:`ObjectWriter.commit` waits for that work.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """Open the whole object for sequential reading (the caller closes it)."""
        ...

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Read ``length`` bytes from ``offset``; fewer only at the end of the object."""
        ...

    def stat(self, key: str) -> ObjectInfo: ...

    def delete(self, key: str) -> None: ...

    def iter_objects(self) -> Iterator[ObjectInfo]:
        """Every stored object, in no particular order (for consistency checks)."""
        ...

    def check(self) -> None:
        """Raise :class:`StorageError` unless the store is reachable and writable."""
        ...

    def stale_staging(self, older_than: float) -> list[ObjectInfo]:
        """The local copies on their way into the store that were last written more than
        ``older_than`` seconds ago: what a crash left (younger ones may belong to a process still
        writing). ``key`` is the copy's file name."""
        ...

    def sweep_staging(self, older_than: float) -> int:
        """Remove the copies :meth:`stale_staging` lists; returns how many."""
        ...

    def close(self) -> None: ...


def stale_files(paths: Iterator[Path], older_than: float) -> list[ObjectInfo]:
    """Files among ``paths`` last written more than ``older_than`` seconds ago: the stores'
    :meth:`ObjectStore.stale_staging`."""
    limit = time.time() - older_than
    stale = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:  # committed or aborted meanwhile
            continue
        if path.is_file() and st.st_mtime <= limit:
            stale.append(ObjectInfo(path.name, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC)))
    return stale


def remove_files(folder: Path, files: list[ObjectInfo]) -> int:
    """Remove ``files`` (by name) from ``folder``; how many were still there."""
    removed = 0
    for info in files:
        try:
            os.unlink(folder / info.key)
            removed += 1
        except FileNotFoundError:
            pass
    return removed
