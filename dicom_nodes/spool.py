"""Receive C-STORE datasets straight into the archive, as they arrive.

pynetdicom's chunked receive (``_config.STORE_RECV_CHUNKED_DATASET``) writes each C-STORE dataset,
fragment by fragment, as a Part 10 file (preamble, file meta, then the dataset bytes exactly as
sent) to a file object it gets from ``tempfile.NamedTemporaryFile``, so memory stays bounded
whatever the instance size. :class:`Spooler` supplies that file object instead: a
:class:`SpoolFile` over a :class:`pacs.services.ingest.Incoming`, i.e. a new object of the store
hashed on the way. Hashing, and on a filesystem store the write-back to disk, then overlap the
network transfer; the C-STORE handler only checks, commits and indexes.

Nothing is kept until the handler commits. When a connection closes, the objects its association
was still receiving are discarded (:meth:`Spooler.on_connection_closed`, bound to
``EVT_CONN_CLOSE``), and :meth:`Spooler.abort_pending` discards what a stopping server still holds.

This relies on how pynetdicom 3.0 creates and uses that file (``dimse_messages.NamedTemporaryFile``,
then ``write``, ``file.flush``, ``name``, ``close``, and an ``unlink(name)`` after the handler); the
dependency is pinned and ``tests/unit/dicom_nodes/test_spool.py`` fails if that changes.

The file meta group pynetdicom writes at the head of each such file (``create_file_meta``, then
pydicom's ``write_file_meta_info``) took about 0.2 ms of the receiving thread per instance,
building and validating a pydicom dataset to encode seven elements. While installed,
:func:`write_file_meta` encodes the same bytes directly (ours is tested against pydicom's), for
UIDs of the usual form; any other value goes through pydicom as before.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import pynetdicom.dimse_messages
from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config
from pynetdicom.dsutils import create_file_meta
from pynetdicom.events import Event

from pacs.errors import ResourceUnavailable
from pacs.services.ingest import Incoming

log = logging.getLogger(__name__)


class SpoolFile:
    """The file object pynetdicom writes one received dataset to."""

    def __init__(
        self, incoming: Incoming | None, name: str, owner: object, error: Exception | None = None
    ) -> None:
        self.incoming = incoming
        # pynetdicom reports ``name`` as the dataset's path and unlinks it after the handler ran.
        # It is a token that never exists on disk, so that unlink can never touch the object.
        self.name = name
        self.owner = owner  # the receiving thread (pynetdicom's DUL thread of the association)
        self.error = error  # the store could not even start the object; the handler reports it
        self.claimed = False

    @property
    def file(self) -> SpoolFile:
        """pynetdicom calls ``.file.flush()`` after each fragment."""
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.incoming is not None:
            # pynetdicom hands over a new buffer for each fragment (a slice of the PDU it read)
            # and never touches it again: hashed as it is, not copied (1 MiB a fragment).
            self.incoming.write(data, handed_over=True)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: the object is written through."""

    def close(self) -> None:
        """The object stays open until the handler commits or discards it."""

    def discard(self) -> None:
        self.claimed = True
        if self.incoming is not None:
            self.incoming.abort()


class Spooler:
    """Creates :class:`SpoolFile` objects for pynetdicom and hands them to the C-STORE handler."""

    def __init__(self, receive: Callable[[], Incoming], token_dir: Path) -> None:
        self._receive = receive
        self._token_dir = Path(token_dir)
        self._files: dict[str, SpoolFile] = {}  # being received, not yet claimed by the handler
        self._lock = threading.Lock()
        self._count = 0
        self._original: Any = None

    def create(self, *args: Any, **kwargs: Any) -> SpoolFile:
        """Called by pynetdicom in place of ``NamedTemporaryFile(delete=False, mode="wb", ...)``."""
        with self._lock:
            self._count += 1
            name = str(self._token_dir / f"receiving-{id(self)}-{self._count}")
        # pynetdicom calls this from the association's DUL thread, which receives its data.
        owner = threading.current_thread()
        try:
            spool = SpoolFile(self._receive(), name, owner)
        except ResourceUnavailable as exc:
            log.error("cannot start receiving a C-STORE dataset: %s", exc)
            spool = SpoolFile(None, name, owner, error=exc)
        with self._lock:
            self._files[name] = spool
        return spool

    def claim(self, path: Path | str) -> SpoolFile | None:
        """The spool file pynetdicom reported at ``path``; the caller now owns its object."""
        with self._lock:
            spool = self._files.pop(str(path), None)
        if spool is not None:
            spool.claimed = True
        return spool

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._files)

    def on_connection_closed(self, event: Event) -> None:
        """``EVT_CONN_CLOSE``: what the association was still receiving will never be complete."""
        receiver = getattr(event.assoc, "dul", None)
        with self._lock:
            mine = [name for name, spool in self._files.items() if spool.owner is receiver]
            spools = [self._files.pop(name) for name in mine]
        for spool in spools:
            log.warning("discarding a C-STORE dataset cut off by the end of its association")
            spool.discard()

    def abort_pending(self) -> int:
        """Discard every object still being received (the server is stopping); returns how many."""
        with self._lock:
            spools = list(self._files.values())
            self._files.clear()
        for spool in spools:
            spool.discard()
        return len(spools)

    def install(self) -> None:
        """Make pynetdicom receive C-STORE datasets in chunks, into this spooler (process-wide)."""
        if self._original is None:
            self._original = pynetdicom.dimse_messages.NamedTemporaryFile
        _config.STORE_RECV_CHUNKED_DATASET = True
        pynetdicom.dimse_messages.NamedTemporaryFile = self.create  # type: ignore[assignment]
        pynetdicom.dimse_messages.create_file_meta = FileMeta  # type: ignore[assignment]
        pynetdicom.dimse_messages.write_file_meta_info = write_file_meta  # type: ignore[assignment]

    def uninstall(self) -> None:
        if self._original is not None:
            pynetdicom.dimse_messages.NamedTemporaryFile = self._original
            self._original = None
        pynetdicom.dimse_messages.create_file_meta = create_file_meta
        pynetdicom.dimse_messages.write_file_meta_info = write_file_meta_info
        _config.STORE_RECV_CHUNKED_DATASET = False


class FileMeta(NamedTuple):
    """What pynetdicom's ``create_file_meta`` is given (the same keywords), kept for
    :func:`write_file_meta` instead of a pydicom dataset."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    implementation_uid: str = PYNETDICOM_IMPLEMENTATION_UID
    implementation_version: str = PYNETDICOM_IMPLEMENTATION_VERSION


def write_file_meta(fp: BinaryIO, file_meta: Any, enforce_standard: bool = True) -> None:
    """pydicom's ``write_file_meta_info(fp, create_file_meta(...))`` for a :class:`FileMeta`: the
    File Meta Information group, explicit VR little endian, (0002,0000) to (0002,0013)."""
    if isinstance(file_meta, FileMeta):
        encoded = _encoded_file_meta(file_meta)
        if encoded is not None:
            fp.write(encoded)
            return
        file_meta = create_file_meta(**file_meta._asdict())
    write_file_meta_info(fp, file_meta, enforce_standard)  # type: ignore[arg-type]  # a file, as pynetdicom passes


_PLAIN_UID = re.compile(r"[0-9.]{1,64}")
_PLAIN_SH = re.compile(r"[ -~]{0,16}")
_SHORT = struct.Struct("<HH2sH")  # tag, VR, 16-bit length
_LONG = struct.Struct("<HH2s2xL")  # tag, VR, reserved, 32-bit length (OB)


def _encoded_file_meta(meta: FileMeta) -> bytes | None:
    uids = [meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax, meta.implementation_uid]
    version = meta.implementation_version
    if not all(_PLAIN_UID.fullmatch(str(uid)) for uid in uids) or not _PLAIN_SH.fullmatch(str(version)):
        return None  # unusual values: pydicom's encoding (and its errors) as before

    def element(number: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
        if len(value) % 2:
            value += pad
        return _SHORT.pack(0x0002, number, vr, len(value)) + value

    body = b"".join(
        [
            _LONG.pack(0x0002, 0x0001, b"OB", 2) + b"\x00\x01",
            element(0x0002, b"UI", str(uids[0]).encode(), b"\0"),
            element(0x0003, b"UI", str(uids[1]).encode(), b"\0"),
            element(0x0010, b"UI", str(uids[2]).encode(), b"\0"),
            element(0x0012, b"UI", str(uids[3]).encode(), b"\0"),
            element(0x0013, b"SH", str(version).encode(), b" "),
        ]
    )
    return _SHORT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(body)) + body
