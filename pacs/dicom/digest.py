"""SHA-256 of a DICOM Part 10 object, in two parts: the file meta, and the dataset.

The dataset (everything after the File Meta Information group) is what the sender transmitted;
its hash identifies the content, whoever wrapped it in a file: the same scan arriving by C-STORE
(file meta written by our DICOM toolkit) and by ``pacs import`` (file meta written by the device) is
recognised as the same. The file meta (128-byte preamble, ``DICM``, group 0002) gets a hash of its
own, so the stored object is still verified byte for byte (``pacs fsck``).

:class:`Part10Hasher` computes both while bytes stream in; :func:`hash_part10_file` in one pass
over a file.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import BinaryIO

_META_HEADER = 132 + 12  # preamble, DICM, then (0002,0000) UL element header and value


@dataclass(frozen=True)
class Digests:
    file_meta_sha256: str  # of bytes [0, dataset_offset)
    dataset_sha256: str  # of bytes [dataset_offset, size)
    dataset_offset: int
    size: int


class Part10Hasher:
    """Hashes a Part 10 stream as it is written, splitting it after the file meta group.

    The split is found from File Meta Information Group Length (0002,0000), the first element of
    the meta, which every writer includes; without it :meth:`digests` returns ``None`` and the
    caller hashes the finished file instead.
    """

    def __init__(self) -> None:
        self._meta = hashlib.sha256()
        self._dataset = hashlib.sha256()
        self._start = bytearray()  # bytes held until the split is known
        self._split: int | None = None
        self._unknown = False
        self._abandoned = False
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if self._split is not None or self._unknown:
            self._dataset.update(data)
            return
        self._start += data
        if len(self._start) < _META_HEADER:
            return
        head = bytes(self._start[132:_META_HEADER])
        if head[:4] != b"\x02\x00\x00\x00" or head[4:6] != b"UL":
            self._unknown = True
            self._meta.update(self._start)
            self._start = bytearray()
            return
        split = _META_HEADER + struct.unpack("<L", head[8:12])[0]
        if len(self._start) >= split:
            self._split = split
            self._meta.update(self._start[:split])
            self._dataset.update(self._start[split:])
            self._start = bytearray()

    def abandon(self) -> None:
        """The stream was not hashed whole: :meth:`digests` returns ``None`` from now on."""
        self._abandoned = True

    def digests(self) -> Digests | None:
        if self._split is None or self._abandoned:
            return None
        return Digests(self._meta.hexdigest(), self._dataset.hexdigest(), self._split, self.size)


def hash_part10_file(f: BinaryIO, dataset_offset: int) -> Digests:
    """Both digests of the object read from ``f`` (positioned at its start, read to its end in
    order: a stream from S3 cannot seek), whose dataset starts at ``dataset_offset``."""
    meta = hashlib.sha256(f.read(dataset_offset))
    dataset = hashlib.sha256()
    size = dataset_offset
    while chunk := f.read(1 << 20):
        dataset.update(chunk)
        size += len(chunk)
    return Digests(meta.hexdigest(), dataset.hexdigest(), dataset_offset, size)
