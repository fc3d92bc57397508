"""Understand a stored DICOM Part 10 file without loading its bulk data.

Two steps, both reading only element headers and the values before the pixel data:

1. :func:`_walk` checks the encoding of the whole file element by element (PS3.5 7): every header is
   complete, every VR is a VR, every length fits in the file, sequences and items are closed, and the
   last element ends at the last byte. pydicom's reader is deliberately lenient (it stops quietly at a
   truncated element and reads garbage as one odd element), which is right for a viewer and wrong for
   an archive that answers "stored" to a sender who will then delete its copy.
2. pydicom reads the values up to the pixel data (``stop_before_pixels``) for indexing.

The result records where the pixel data is and the byte segments of every frame (PS3.5 A.4), so a
frame can be served by ranged reads into the stored object later.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

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
_MAX_INFLATED = 1 << 30  # deflated datasets are inflated in memory to be checked; they are small in practice

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

    meta_end = _walk_file_meta(f, size, name)
    f.seek(0)
    try:
        header = dcmread(f, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on bad input; all mean the same here
        raise InvalidObject(f"{name}: cannot parse dataset: {exc}") from exc

    meta = header.file_meta
    transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
    if not transfer_syntax:
        raise InvalidObject(f"{name}: file meta has no Transfer Syntax UID (0002,0010)")
    if transfer_syntax not in STORED_TRANSFER_SYNTAXES:
        raise InvalidObject(f"{name}: transfer syntax {transfer_syntax} is not supported")

    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        source = _Source.inflated(f, meta_end, name)
        base = None  # offsets into the inflated stream mean nothing in the stored file
    else:
        source = _Source(f, meta_end, size)
        base = 0
    pixel = _walk(source, implicit=implicit, little=little, name=name)

    sop_class = str(header.get("SOPClassUID", "") or "")
    sop_instance = str(header.get("SOPInstanceUID", "") or "")
    claimed_class = sop_class or str(meta.get("MediaStorageSOPClassUID", "") or "")

    if pixel is None and (is_image_storage(claimed_class) or any(k in header for k in _IMAGE_PIXEL_KEYWORDS)):
        # An image without its pixels: a dataset cut short at an element boundary looks exactly so.
        raise ObjectMismatch(f"{name}: Pixel Data (7FE0,0010) is missing from an image")
    pixel_info = None
    if pixel is not None:
        pixel_info = _pixel_info(pixel, header, transfer_syntax, base is not None, source, name)
    return ParsedObject(header, meta_end, transfer_syntax, sop_class, sop_instance, pixel_info, size)


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
    """Random access to the dataset bytes (the file after the meta, or an inflated copy)."""

    def __init__(self, f: BinaryIO, start: int, end: int) -> None:
        self.f = f
        self.start = start
        self.end = end

    @classmethod
    def inflated(cls, f: BinaryIO, start: int, name: str) -> _Source:
        f.seek(start)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        out = io.BytesIO()
        crc = 0
        while chunk := f.read(1 << 20):
            try:
                data = inflater.decompress(chunk, _MAX_INFLATED - out.tell() + 1)
            except zlib.error as exc:
                raise InvalidObject(f"{name}: deflated dataset is corrupt: {exc}") from exc
            out.write(data)
            crc = zlib.crc32(data, crc)
            if out.tell() > _MAX_INFLATED:
                raise InvalidObject(f"{name}: deflated dataset inflates beyond {_MAX_INFLATED} bytes")
        tail = inflater.flush()
        out.write(tail)
        crc = zlib.crc32(tail, crc)
        if not inflater.eof:
            raise InvalidObject(f"{name}: deflated dataset is truncated")
        _check_deflate_trailer(inflater.unused_data, crc, out.tell(), name)
        return cls(out, 0, out.tell())

    def read(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(n)


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


def _walk_file_meta(f: BinaryIO, size: int, name: str) -> int:
    """Return the offset where the dataset starts (after group 0002, always explicit VR LE)."""
    pos = 132
    while pos + 8 <= size:
        f.seek(pos)
        head = f.read(8)
        group = struct.unpack_from("<H", head)[0]
        if group != 0x0002:
            return pos
        vr = head[4:6].decode("latin-1")
        if vr not in _VRS:
            raise InvalidObject(f"{name}: file meta element at byte {pos} has invalid VR {vr!r}")
        if vr in _LONG_VRS:
            raw = f.read(4)
            if len(raw) < 4:
                raise InvalidObject(f"{name}: file meta is truncated at byte {pos}")
            pos += 12 + struct.unpack("<L", raw)[0]
        else:
            pos += 8 + struct.unpack_from("<H", head, 6)[0]
        if pos > size:
            raise InvalidObject(f"{name}: file meta is truncated")
    return pos


def _walk(source: _Source, *, implicit: bool, little: bool, name: str) -> _RawPixel | None:
    """Check the encoding of the dataset; return the top-level pixel data element, if any.

    ``enc`` travels down the recursion as (implicit, little): the content of a UN element of
    undefined length is always implicit VR little endian (PS3.5 6.2.2), whatever the transfer syntax.
    """
    pixel: _RawPixel | None = None
    Enc = tuple[bool, bool]

    def fmt(enc: Enc, code: str) -> str:
        return ("<" if enc[1] else ">") + code

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
        if length == _UNDEFINED:
            if depth == 0 and tag in PIXEL_TAGS and vr in ("OB", "OW", ""):
                items: list[Segment] = []
                end = fragments(value, limit, items, where, enc)
                pixel = _RawPixel(tag, vr or "OB", value, None, items)
                return end
            if vr not in ("SQ", "UN", ""):
                raise InvalidObject(f"{name}: element {where} has undefined length but VR {vr}")
            inner = (True, True) if vr == "UN" else enc
            return sequence(value, limit, depth + 1, where, inner)
        if value + length > limit:
            raise InvalidObject(
                f"{name}: element {where} claims {length} bytes, "
                f"only {max(0, limit - value)} remain (truncated?)"
            )
        if depth == 0 and tag in PIXEL_TAGS:
            pixel = _RawPixel(tag, vr or "OW", value, length, [])
        return value + length

    def dataset(pos: int, limit: int, depth: int, enc: Enc, until_item_end: bool) -> int:
        if depth > _MAX_DEPTH:
            raise InvalidObject(f"{name}: sequences nested deeper than {_MAX_DEPTH}")
        while pos < limit:
            if until_item_end and tag_at(pos, limit, enc) == _ITEM_END:
                return pos + 8
            pos = element(pos, limit, depth, enc)
        if until_item_end:
            raise InvalidObject(f"{name}: item without Item Delimitation (FFFE,E00D), truncated?")
        return pos

    def sequence(pos: int, limit: int, depth: int, where: str, enc: Enc) -> int:
        while True:
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
                if pos + 8 + length > limit:
                    raise InvalidObject(f"{name}: item at byte {pos} in sequence {where} is truncated")
                dataset(pos + 8, pos + 8 + length, depth, enc, until_item_end=False)
                pos += 8 + length

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
            if pos + 8 + length > limit:
                raise InvalidObject(
                    f"{name}: fragment at byte {pos} of Pixel Data {where} claims {length} bytes, "
                    f"only {max(0, limit - pos - 8)} remain (truncated?)"
                )
            items.append((pos + 8, length))
            pos += 8 + length

    dataset(source.start, source.end, 0, (implicit, little), until_item_end=False)
    return pixel


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
