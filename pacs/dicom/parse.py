"""Understand a stored DICOM Part 10 file without loading its bulk data.

Two steps, both reading only element headers and the values before the pixel data:

1. :func:`_walk` checks the encoding of the whole file element by element (PS3.5 7): every header is
   complete, every VR is a VR, every length fits in the file, sequences and items are closed and
   nested at most :data:`_MAX_DEPTH` deep, and the last element ends at the last byte. pydicom's
   reader is deliberately lenient (it stops quietly at a truncated element and reads garbage as one
   odd element), which is right for a viewer and wrong for an archive that answers "stored" to a
   sender who will then delete its copy.
2. Only then does pydicom read the values up to the pixel data (``stop_before_pixels``) for
   indexing: it never sees a file the walk refused (pydicom recurses once per nested sequence).

A deflated data set (PS3.5 A.5) is inflated as the walk asks for it, never whole: what comes
before the pixel data is kept (in memory up to a few MiB, then in a temporary file) for pydicom,
native pixel data is inflated only to be checked and dropped. Memory therefore stays bounded
whatever a deflated object inflates to: at most :data:`_MAX_INFLATED_HEADER` bytes are handed to
pydicom, and inflation stops at :data:`_MAX_INFLATED` (a "deflate bomb" is refused there).

The result records where the pixel data is and the byte segments of every frame (PS3.5 A.4), so a
frame can be served by ranged reads into the stored object later.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, cast

from pydicom import dcmread
from pydicom.datadict import DicomDictionary, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_partial
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from pacs.diconde import indexed_attributes
from pacs.diconde.encodings import STORED_TRANSFER_SYNTAXES, codestream_start_marker, is_video
from pacs.diconde.iods import is_image_storage
from pacs.errors import InvalidObject, ObjectMismatch

PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00009: "DoubleFloatPixelData", 0x7FE00008: "FloatPixelData"}
_VRS = frozenset(
    [
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FL",
        "FD",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    ]
)
_LONG_VRS = frozenset(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"])
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 64
_IMAGE_PIXEL_KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated")
#: A deflated data set may inflate to at most this many bytes (checked as it inflates, in bounded memory).
_MAX_INFLATED = 1 << 30
#: ... of which at most this many before its pixel data: pydicom reads that part into memory.
_MAX_INFLATED_HEADER = 64 << 20
_INFLATE_CHUNK = 1 << 20  # inflated bytes per step
_INFLATE_INPUT = 1 << 16  # compressed bytes read per step
_SPOOL_IN_MEMORY = 4 << 20  # kept inflated bytes beyond this go to a temporary file

Segment = tuple[int, int]  # (offset, length) in the stored file


@dataclass(frozen=True)
class PixelDataInfo:
    tag: int
    vr: str
    value_offset: int  # first byte of the value (for encapsulated data: the Basic Offset Table item)
    length: int | None  # None for encapsulated (undefined length) data
    #: per frame, the byte segments holding it; None when frames cannot be cut out of the stored bytes
    #: (deflated or video transfer syntax, or fragments whose frame boundaries are unknown)
    frames: list[list[Segment]] | None

    @property
    def encapsulated(self) -> bool:
        return self.length is None


@dataclass(frozen=True)
class ParsedObject:
    dataset: Dataset  # everything before the pixel data, with ``file_meta``
    dataset_offset: int  # where the dataset starts: after preamble, DICM and the file meta group
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    pixel_data: PixelDataInfo | None
    size: int


# --------------------------------------------------------------------------------------------------
def parse_part10(f: BinaryIO, *, name: str = "object") -> ParsedObject:
    """Check and parse the Part 10 file open in ``f``; ``name`` (a path or UID) goes into errors."""
    size = os.fstat(f.fileno()).st_size if _has_fileno(f) else _seek_size(f)
    f.seek(0)
    head = f.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise InvalidObject(f"{name}: not a DICOM Part 10 file (no 'DICM' prefix at byte 128)")

    meta_end, transfer_syntax = _walk_file_meta(f, size, name)
    if not transfer_syntax:
        raise InvalidObject(f"{name}: file meta has no Transfer Syntax UID (0002,0010)")
    if transfer_syntax not in STORED_TRANSFER_SYNTAXES:
        raise InvalidObject(f"{name}: transfer syntax {transfer_syntax} is not supported")

    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        with _InflatedSource(f, meta_end, size, name) as inflated:
            pixel = _walk(inflated, implicit=False, little=True, name=name)
            header = inflated.header(f, head[:128], _read_file_meta(f, meta_end, name))
            # Offsets into the inflated stream mean nothing in the stored file: no frame ranges.
            return _parsed(header, meta_end, transfer_syntax, pixel, inflated, False, size, name)
    source = _Source(f, meta_end, size)
    pixel = _walk(source, implicit=implicit, little=little, name=name)
    f.seek(0)
    try:
        header = dcmread(f, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on bad input; all mean the same here
        raise InvalidObject(f"{name}: cannot parse dataset: {exc}") from exc
    return _parsed(header, meta_end, transfer_syntax, pixel, source, True, size, name)


def read_header(f: BinaryIO, *, name: str = "object", last_tag: int | None = None) -> Dataset:
    """The data set of the Part 10 file open in ``f`` up to its pixel data, or only up to
    ``last_tag``, with its ``file_meta``: a look at an object's UIDs before it is ingested, without
    the checks of :func:`parse_part10` but in the same bounded memory (a deflated data set is
    inflated only as far as it is read). :class:`InvalidObject` for anything pydicom cannot read."""
    size = os.fstat(f.fileno()).st_size if _has_fileno(f) else _seek_size(f)
    f.seek(0)
    if f.read(132)[128:132] != b"DICM":
        raise InvalidObject(f"{name}: not a DICOM Part 10 file (no 'DICM' prefix at byte 128)")
    meta_end, transfer_syntax = _walk_file_meta(f, size, name)

    def stop(tag: int, vr: str | None, length: int) -> bool:
        return tag in PIXEL_TAGS or (last_tag is not None and tag > last_tag)

    try:
        if transfer_syntax != DeflatedExplicitVRLittleEndian:
            f.seek(0)
            return read_partial(f, stop_when=stop)
        file_meta = _read_file_meta(f, meta_end, name)
        with _InflatedSource(f, meta_end, size, name) as inflated:
            dataset = read_dataset(
                cast(BinaryIO, _Stream(inflated)), is_implicit_VR=False, is_little_endian=True, stop_when=stop
            )
        f.seek(0)
        header = FileDataset(f, dataset, f.read(128), file_meta, is_implicit_VR=False, is_little_endian=True)
        header.set_original_encoding(False, True, dataset._character_set)
        return header
    except InvalidObject:
        raise
    except Exception as exc:  # pydicom raises many types on bad input, RecursionError among them
        raise InvalidObject(f"{name}: cannot parse dataset: {exc}") from exc


def _parsed(
    header: Dataset,
    meta_end: int,
    transfer_syntax: str,
    pixel: _RawPixel | None,
    source: _Source,
    addressable: bool,
    size: int,
    name: str,
) -> ParsedObject:
    _check_readable(header, name)
    sop_class = str(header.get("SOPClassUID", "") or "")
    sop_instance = str(header.get("SOPInstanceUID", "") or "")
    meta = getattr(header, "file_meta", None) or {}
    claimed_class = sop_class or str(meta.get("MediaStorageSOPClassUID", "") or "")

    if pixel is None and (is_image_storage(claimed_class) or any(k in header for k in _IMAGE_PIXEL_KEYWORDS)):
        # An image without its pixels: a dataset cut short at an element boundary looks exactly so.
        raise ObjectMismatch(f"{name}: Pixel Data (7FE0,0010) is missing from an image")
    pixel_info = None
    if pixel is not None:
        pixel_info = _pixel_info(pixel, header, transfer_syntax, addressable, source, name)
    return ParsedObject(header, meta_end, transfer_syntax, sop_class, sop_instance, pixel_info, size)


def _check_readable(header: Dataset, name: str) -> None:
    """pydicom converts a value from its bytes when it is first read, and a malformed one (a US of
    odd length, ...) raises there, in whatever code reads it first. Read now the values the archive
    itself reads (this module, the ingest checks, the index columns): one it needs that cannot be
    read refuses the object; another is left out of the header, as the index's DICOM JSON leaves
    out what it cannot convert (the stored object keeps every byte)."""
    wanted = _read_by_archive()
    for ds in (getattr(header, "file_meta", None), header):  # in tag order, as they were read
        if ds is None:
            continue
        for tag in [tag for tag in ds.keys() if tag in wanted]:  # noqa: SIM118 (a copy: del below)
            try:
                ds[tag]
            except Exception as exc:  # pydicom raises many types on bad values
                if tag in _NEEDED:
                    keyword = keyword_for_tag(tag) or "element"
                    raise InvalidObject(
                        f"{name}: {keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X}) cannot be read: {exc}"
                    ) from exc
                del ds[tag]


_NEEDED = frozenset(
    tag_for_keyword(keyword) or 0
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID",
        "NumberOfFrames",
        "ExtendedOffsetTable",
        *_IMAGE_PIXEL_KEYWORDS,
    )
)


@functools.cache
def _read_by_archive() -> frozenset[int]:
    indexed = {attribute.tag for level in indexed_attributes().values() for attribute in level}
    return frozenset(_NEEDED | indexed)


def _read_file_meta(f: BinaryIO, meta_end: int, name: str) -> FileMetaDataset:
    """pydicom's reading of the file meta group alone (the bytes up to ``meta_end``)."""
    f.seek(0)
    try:
        return dcmread(io.BytesIO(f.read(meta_end))).file_meta
    except Exception as exc:  # as in parse_part10
        raise InvalidObject(f"{name}: cannot parse the file meta: {exc}") from exc


def _has_fileno(f: BinaryIO) -> bool:
    try:
        f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    return True


def _seek_size(f: BinaryIO) -> int:
    f.seek(0, os.SEEK_END)
    return f.tell()


# --------------------------------------------------------------------------------------------------
class _Source:
    """Random access to the dataset bytes ``start`` to ``end`` of the file."""

    def __init__(self, f: BinaryIO, start: int, end: int) -> None:
        self.f = f
        self.start = start
        self.end = end

    def read(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(n)

    def available(self, offset: int) -> int:
        """How far the data reach towards ``offset`` (``offset`` itself when they go that far)."""
        return min(offset, self.end)

    def pixel_data_at(self, offset: int, encapsulated: bool) -> None:
        """The walk found the top-level pixel data element at ``offset``."""


class _InflatedSource(_Source):
    """A deflated data set (PS3.5 A.5), inflated as the walk reads on, in bounded memory.

    The walk reads forward only, apart from a few bytes back. Bytes before the top-level pixel data
    are kept for pydicom (:meth:`header`); so are encapsulated pixel data, whose offset tables are
    read once the walk is done. Native pixel data are inflated into a small window and dropped.
    A read of bytes that were dropped is a bug and fails loudly.
    """

    _UNBOUNDED = 1 << 62  # the top-level limit of the walk: the end is known once inflated

    def __init__(self, f: BinaryIO, start: int, size: int, name: str) -> None:
        super().__init__(f, 0, self._UNBOUNDED)
        self.name = name
        self.size = size  # of the stored file, for what may follow the deflated stream
        f.seek(start)
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._input = b""  # compressed bytes read but not yet inflated
        self._crc = 0
        self._ended = False
        self.produced = 0  # inflated bytes so far
        self._kept = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        self._keeping = True
        self._kept_end = 0  # inflated bytes 0 .. _kept_end are in _kept
        self._header_end: int | None = None  # where the top-level pixel data element starts
        self._window = bytearray()  # inflated bytes _window_start .. produced, when not keeping
        self._window_start = 0
        self._wanted = 0  # bytes before this offset need not stay in the window

    def __enter__(self) -> _InflatedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self._kept.close()

    # -- the walk's view ---------------------------------------------------------------------
    def read(self, offset: int, n: int) -> bytes:
        self._wanted = offset
        self._inflate_to(offset + n)
        out = b""
        if offset < self._kept_end:
            self._kept.seek(offset)
            out = self._kept.read(min(n, self._kept_end - offset))
            offset, n = offset + len(out), n - len(out)
        if n > 0 and offset < self.produced:
            if offset < self._window_start:
                raise RuntimeError(f"inflated bytes {offset}..{self._window_start} were already dropped")
            at = offset - self._window_start
            out += bytes(self._window[at : at + n])
        return out

    def available(self, offset: int) -> int:
        self._wanted = offset
        self._inflate_to(offset)
        return min(offset, self.produced)

    def pixel_data_at(self, offset: int, encapsulated: bool) -> None:
        if self._header_end is not None:  # a second pixel data element: pydicom stops at the first
            return
        self._header_end = offset
        if not encapsulated and self._keeping:
            self._keeping = False
            self._window_start = self._kept_end

    # -- inflating -----------------------------------------------------------------------------
    def _inflate_to(self, offset: int) -> None:
        while self.produced < offset and not self._ended:
            if not self._input:
                self._input = self.f.read(_INFLATE_INPUT)
                if not self._input:
                    self._take(self._inflater.flush())
                    if not self._inflater.eof:
                        raise InvalidObject(f"{self.name}: deflated dataset is truncated")
                    self._finish(b"")
                    return
            try:
                data = self._inflater.decompress(self._input, _INFLATE_CHUNK)
            except zlib.error as exc:
                raise InvalidObject(f"{self.name}: deflated dataset is corrupt: {exc}") from exc
            self._input = self._inflater.unconsumed_tail
            self._take(data)
            if self._inflater.eof:
                self._finish(self._inflater.unused_data)

    def _take(self, data: bytes) -> None:
        if not data:
            return
        self.produced += len(data)
        if self.produced > _MAX_INFLATED:
            raise InvalidObject(f"{self.name}: deflated dataset inflates beyond {_MAX_INFLATED} bytes")
        if self._header_end is None and self.produced > _MAX_INFLATED_HEADER:
            raise InvalidObject(
                f"{self.name}: deflated dataset inflates beyond {_MAX_INFLATED_HEADER} bytes "
                "before its pixel data"
            )
        self._crc = zlib.crc32(data, self._crc)
        if self._keeping:
            self._kept.seek(self._kept_end)
            self._kept.write(data)
            self._kept_end = self.produced
            return
        self._window += data
        drop = min(self._wanted - self._window_start, len(self._window))
        if drop > 0:
            del self._window[:drop]
            self._window_start += drop

    def _finish(self, unused: bytes) -> None:
        """The deflated stream has ended: only a trailer may follow it in the file."""
        self._ended = True
        rest = self.size - self.f.tell()
        if len(unused) + rest > 9:  # more than a pad byte and an 8-byte trailer
            raise InvalidObject(
                f"{self.name}: {len(unused) + rest} unparseable bytes after the deflated dataset"
            )
        _check_deflate_trailer(unused + self.f.read(rest), self._crc, self.produced, self.name)
        self.end = self.produced

    # -- pydicom's view ----------------------------------------------------------------------
    def header(self, f: BinaryIO, preamble: bytes, file_meta: FileMetaDataset) -> FileDataset:
        """The data set up to its pixel data, read by pydicom from the kept bytes."""
        end = self._header_end if self._header_end is not None else self.end
        try:
            bounded = cast(BinaryIO, _Bounded(self._kept, end))
            dataset = read_dataset(bounded, is_implicit_VR=False, is_little_endian=True)
            header = FileDataset(f, dataset, preamble, file_meta, is_implicit_VR=False, is_little_endian=True)
            header.set_original_encoding(False, True, dataset._character_set)
        except Exception as exc:  # as in parse_part10
            raise InvalidObject(f"{self.name}: cannot parse dataset: {exc}") from exc
        return header


class _Bounded:
    """The first ``end`` bytes of a file, as a file (what pydicom reads of a kept inflated stream)."""

    def __init__(self, f: BinaryIO | tempfile.SpooledTemporaryFile[bytes], end: int) -> None:
        self.f = f
        self.end = end
        f.seek(0)

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self.end - self.f.tell())
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            offset, whence = self.end + offset, os.SEEK_SET
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()


class _Stream:
    """An inflated data set as a file that inflates as it is read (for pydicom alone)."""

    def __init__(self, source: _InflatedSource) -> None:
        self.source = source
        self.pos = 0

    def read(self, n: int | None = -1) -> bytes:
        data = self.source.read(self.pos, _MAX_INFLATED_HEADER if n is None or n < 0 else n)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            raise io.UnsupportedOperation("an inflating stream has no known end")
        self.pos = max(0, offset + (self.pos if whence == os.SEEK_CUR else 0))
        return self.pos

    def tell(self) -> int:
        return self.pos


def _check_deflate_trailer(unused: bytes, crc: int, size: int, name: str) -> None:
    """What may follow the deflated stream: one padding byte (to an even length), and, as some
    writers (dcmtk) add, a gzip-style trailer of CRC-32 and length that matches the data. Any
    other byte is not part of the dataset."""
    if len(unused) % 2 and unused.endswith(b"\x00"):
        unused = unused[:-1]
    if not unused:
        return
    if len(unused) == 8 and struct.unpack("<LL", unused) == (crc, size & 0xFFFFFFFF):
        return
    raise InvalidObject(f"{name}: {len(unused)} unparseable bytes after the deflated dataset")


@dataclass
class _RawPixel:
    tag: int
    vr: str
    value_offset: int
    length: int | None
    items: list[Segment]  # encapsulated: value segments of the items, Basic Offset Table first


def _walk_file_meta(f: BinaryIO, size: int, name: str) -> tuple[int, str]:
    """Return the offset where the dataset starts (after group 0002, always explicit VR LE) and the
    Transfer Syntax UID (0002,0010), empty when the group has none."""
    pos = 132
    transfer_syntax = ""
    while pos + 8 <= size:
        f.seek(pos)
        head = f.read(8)
        group, elem = struct.unpack_from("<HH", head)
        if group != 0x0002:
            return pos, transfer_syntax
        vr = head[4:6].decode("latin-1")
        if vr not in _VRS:
            raise InvalidObject(f"{name}: file meta element at byte {pos} has invalid VR {vr!r}")
        if vr in _LONG_VRS:
            raw = f.read(4)
            if len(raw) < 4:
                raise InvalidObject(f"{name}: file meta is truncated at byte {pos}")
            length, value = struct.unpack("<L", raw)[0], pos + 12
        else:
            length, value = struct.unpack_from("<H", head, 6)[0], pos + 8
        if value + length > size:
            raise InvalidObject(f"{name}: file meta is truncated")
        if elem == 0x0010 and length <= 64 + 2:
            f.seek(value)
            transfer_syntax = f.read(length).decode("latin-1").strip("\0 ")
        pos = value + length
    return pos, transfer_syntax


def _walk(source: _Source, *, implicit: bool, little: bool, name: str) -> _RawPixel | None:
    """Check the encoding of the dataset; return the top-level pixel data element, if any.

    ``enc`` travels down the recursion as (implicit, little): the content of a UN element of
    undefined length is always implicit VR little endian (PS3.5 6.2.2), whatever the transfer syntax.
    Sequences are walked whatever their length encoding (in implicit VR, those the dictionary
    knows as SQ), so nesting is bounded before pydicom, which recurses, reads them.
    """
    pixel: _RawPixel | None = None
    Enc = tuple[bool, bool]

    def fmt(enc: Enc, code: str) -> str:
        return ("<" if enc[1] else ">") + code

    def within(end: int, limit: int) -> int:
        """How much of ``end`` the data reach, inside ``limit``."""
        return source.available(min(end, limit))

    def tag_at(pos: int, limit: int, enc: Enc) -> int:
        raw = source.read(pos, 4)
        if len(raw) < 4 or pos + 4 > limit:
            raise InvalidObject(f"{name}: truncated element header at byte {pos}")
        group, elem = struct.unpack(fmt(enc, "HH"), raw)
        return (group << 16) | elem

    def u32_at(pos: int, enc: Enc, what: str) -> int:
        raw = source.read(pos, 4)
        if len(raw) < 4:
            raise InvalidObject(f"{name}: truncated {what} at byte {pos}")
        return int(struct.unpack(fmt(enc, "L"), raw)[0])

    def element(pos: int, limit: int, depth: int, enc: Enc) -> int:
        """Walk one element starting at ``pos``; return the offset just after it."""
        nonlocal pixel
        tag = tag_at(pos, limit, enc)
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {pos}"
        if tag in (_ITEM, _ITEM_END, _SEQ_END):
            raise InvalidObject(f"{name}: item tag {where} outside a sequence")
        if enc[0]:
            vr, length, value = "", u32_at(pos + 4, enc, "element header"), pos + 8
        else:
            raw = source.read(pos + 4, 4)
            if len(raw) < 4:
                raise InvalidObject(f"{name}: truncated element header at byte {pos}")
            vr = raw[:2].decode("latin-1")
            if vr not in _VRS:
                raise InvalidObject(f"{name}: element {where} has invalid VR {vr!r}")
            if vr in _LONG_VRS:
                length, value = u32_at(pos + 8, enc, "element header"), pos + 12
            else:
                length, value = struct.unpack_from(fmt(enc, "H"), raw, 2)[0], pos + 8
        top_pixel = depth == 0 and tag in PIXEL_TAGS
        if length == _UNDEFINED:
            if top_pixel and vr in ("OB", "OW", ""):
                source.pixel_data_at(pos, encapsulated=True)
                items: list[Segment] = []
                end = fragments(value, limit, items, where, enc)
                pixel = _RawPixel(tag, vr or "OB", value, None, items)
                return end
            if vr not in ("SQ", "UN", ""):
                raise InvalidObject(f"{name}: element {where} has undefined length but VR {vr}")
            inner = (True, True) if vr == "UN" else enc
            return sequence(value, limit, depth + 1, where, inner)
        if top_pixel:
            source.pixel_data_at(pos, encapsulated=False)
        reach = within(value + length, limit)
        if reach < value + length:
            raise InvalidObject(
                f"{name}: element {where} claims {length} bytes, "
                f"only {max(0, reach - value)} remain (truncated?)"
            )
        if vr == "SQ" or (enc[0] and not top_pixel and _known_sequence(tag)):
            return sequence(value, value + length, depth + 1, where, enc, defined=True)
        if top_pixel:
            pixel = _RawPixel(tag, vr or "OW", value, length, [])
        return value + length

    def dataset(pos: int, limit: int, depth: int, enc: Enc, until_item_end: bool) -> int:
        if depth > _MAX_DEPTH:
            raise InvalidObject(f"{name}: sequences nested deeper than {_MAX_DEPTH}")
        while pos < limit and (depth > 0 or within(pos + 1, limit) > pos):
            if until_item_end and tag_at(pos, limit, enc) == _ITEM_END:
                return pos + 8
            pos = element(pos, limit, depth, enc)
        if until_item_end:
            raise InvalidObject(f"{name}: item without Item Delimitation (FFFE,E00D), truncated?")
        return pos

    def sequence(pos: int, limit: int, depth: int, where: str, enc: Enc, defined: bool = False) -> int:
        """The items from ``pos`` on, up to the Sequence Delimitation Item or, for a sequence of
        defined length, up to ``limit`` (its end)."""
        while not defined or pos < limit:
            tag = tag_at(pos, limit, enc)
            length = u32_at(pos + 4, enc, f"sequence {where}")
            if tag == _SEQ_END:
                return pos + 8
            if tag != _ITEM:
                raise InvalidObject(
                    f"{name}: sequence {where} holds tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) "
                    f"at byte {pos}, not an item"
                )
            if length == _UNDEFINED:
                pos = dataset(pos + 8, limit, depth, enc, until_item_end=True)
            else:
                if within(pos + 8 + length, limit) < pos + 8 + length:
                    raise InvalidObject(f"{name}: item at byte {pos} in sequence {where} is truncated")
                dataset(pos + 8, pos + 8 + length, depth, enc, until_item_end=False)
                pos += 8 + length
        if pos != limit:
            raise InvalidObject(f"{name}: the items of sequence {where} overrun its length")
        return pos

    def fragments(pos: int, limit: int, items: list[Segment], where: str, enc: Enc) -> int:
        while True:
            raw = source.read(pos, 8)
            if len(raw) < 8:
                raise InvalidObject(f"{name}: encapsulated Pixel Data {where} is truncated at byte {pos}")
            group, elem, length = struct.unpack(fmt(enc, "HHL"), raw)
            tag = (group << 16) | elem
            if tag == _SEQ_END:
                if not items:
                    raise InvalidObject(
                        f"{name}: encapsulated Pixel Data {where} has no Basic Offset Table item"
                    )
                return pos + 8
            if tag != _ITEM or length == _UNDEFINED:
                raise InvalidObject(f"{name}: encapsulated Pixel Data {where} has a bad item at byte {pos}")
            reach = within(pos + 8 + length, limit)
            if reach < pos + 8 + length:
                raise InvalidObject(
                    f"{name}: fragment at byte {pos} of Pixel Data {where} claims {length} bytes, "
                    f"only {max(0, reach - pos - 8)} remain (truncated?)"
                )
            items.append((pos + 8, length))
            pos += 8 + length

    dataset(source.start, source.end, 0, (implicit, little), until_item_end=False)
    return pixel


def _known_sequence(tag: int) -> bool:
    """Whether the data dictionary knows ``tag`` as a sequence (implicit VR gives no VR)."""
    entry = DicomDictionary.get(tag)
    return entry is not None and entry[0] == "SQ"


# --------------------------------------------------------------------------------------------------
def _pixel_info(
    raw: _RawPixel, ds: Dataset, transfer_syntax: str, addressable: bool, source: _Source, name: str
) -> PixelDataInfo:
    keyword = PIXEL_TAGS[raw.tag]
    for required in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(required) in (None, ""):
            raise ObjectMismatch(f"{name}: {keyword} present but {required} is missing")
    try:
        frame_count = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise ObjectMismatch(
            f"{name}: Number of Frames (0028,0008) {ds.NumberOfFrames!r} is not a number"
        ) from None
    if frame_count < 1:
        raise ObjectMismatch(f"{name}: Number of Frames (0028,0008) is {frame_count}")

    frames: list[list[Segment]] | None
    if raw.length is not None:  # native
        frames = _native_frames(raw, ds, frame_count, keyword, name)
    else:
        frames = _encapsulated_frames(raw, ds, frame_count, transfer_syntax, source, name)
    if not addressable:
        frames = None
    return PixelDataInfo(raw.tag, raw.vr, raw.value_offset, raw.length, frames)


def _native_frames(
    raw: _RawPixel, ds: Dataset, frame_count: int, keyword: str, name: str
) -> list[list[Segment]] | None:
    assert raw.length is not None
    try:
        expected = get_expected_length(ds, unit="bytes")
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise ObjectMismatch(f"{name}: cannot size {keyword}: {exc}") from exc
    if raw.length < expected:
        raise ObjectMismatch(
            f"{name}: {keyword} holds {raw.length} bytes but Rows x Columns x Samples x Bits x Frames "
            f"needs {expected}"
        )
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
    bits = pixels * int(ds.BitsAllocated)
    if bits % 8:
        return None  # bit-packed frames that do not start on a byte
    frame_bytes = bits // 8
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        frame_bytes = expected // frame_count
    return [[(raw.value_offset + i * frame_bytes, frame_bytes)] for i in range(frame_count)]


def _encapsulated_frames(
    raw: _RawPixel, ds: Dataset, frame_count: int, transfer_syntax: str, source: _Source, name: str
) -> list[list[Segment]] | None:
    bot, fragments = raw.items[0], raw.items[1:]
    if not fragments:
        raise ObjectMismatch(f"{name}: encapsulated Pixel Data has no fragments")
    if is_video(transfer_syntax):
        return None
    if frame_count == 1:
        return [list(fragments)]
    if len(fragments) < frame_count:
        raise ObjectMismatch(
            f"{name}: Number of Frames is {frame_count} but the Pixel Data holds only "
            f"{len(fragments)} fragments"
        )
    # Item tag offsets of the fragments, relative to the first fragment's item tag (as the tables count).
    first_item = fragments[0][0] - 8
    relative = [offset - 8 - first_item for offset, _ in fragments]

    starts: list[int] | None = None
    eot = ds.get(0x7FE00001)  # Extended Offset Table, PS3.5 A.4 (OV: 64-bit offsets)
    if eot is not None and eot.value:
        starts = list(struct.unpack(f"<{len(eot.value) // 8}Q", eot.value))
    elif bot[1]:
        table = source.read(bot[0], bot[1])
        starts = list(struct.unpack(f"<{len(table) // 4}L", table))
    if starts is not None:
        return _group_by_offsets(fragments, relative, starts, frame_count, name)
    if len(fragments) == frame_count:
        return [[fragment] for fragment in fragments]
    marker = codestream_start_marker(transfer_syntax)
    if marker is not None:
        first = [
            i for i, (offset, length) in enumerate(fragments) if source.read(offset, len(marker)) == marker
        ]
        if len(first) == frame_count and first[0] == 0:
            bounds = [*first, len(fragments)]
            return [list(fragments[bounds[i] : bounds[i + 1]]) for i in range(frame_count)]
    return None  # frames exist but only a decoder can tell where; served by decoding later


def _group_by_offsets(
    fragments: list[Segment], relative: list[int], starts: list[int], frame_count: int, name: str
) -> list[list[Segment]]:
    if len(starts) != frame_count or starts[0] != 0 or starts != sorted(starts):
        raise ObjectMismatch(
            f"{name}: the offset table lists {len(starts)} frames for Number of Frames {frame_count}"
        )
    index = {offset: i for i, offset in enumerate(relative)}
    bounds = []
    for start in starts:
        if start not in index:
            raise ObjectMismatch(f"{name}: offset table entry {start} does not point at a fragment")
        bounds.append(index[start])
    bounds.append(len(fragments))
    return [list(fragments[bounds[i] : bounds[i + 1]]) for i in range(frame_count)]
