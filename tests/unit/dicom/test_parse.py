"""pacs.dicom.parse.parse_part10: what the archive accepts, and where it says the frames are.

Two promises are checked here. Frame segments recorded at ingest must be exactly the bytes of each
frame in the stored file (frames are later served by ranged reads, never re-parsed). And a damaged
file must be refused with a message naming the place: the archive answers "stored" to senders that
then delete their copy, so a truncated or padded file must never pass as a good one.
"""

from __future__ import annotations

import io
import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_fragments, generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from pacs.dicom.parse import ParsedObject, parse_part10
from pacs.errors import InvalidObject, ObjectMismatch
from tests.support.factories import (
    SAMPLES_BY_TRANSFER_SYNTAX,
    diconde_dx,
    encode,
    enhanced_ct,
    part10_bytes,
    sample_file,
    us_multiframe,
)

#: An error message must say where the fault is: a tag, a byte offset or the element's name.
WHERE = re.compile(
    r"byte \d+|position [0-9A-Fa-f]+|\([0-9A-F]{4},[0-9A-F]{4}\)|PixelData|Pixel Data|Number of Frames"
)
NAME = "object-under-test"


def parse(data: bytes) -> ParsedObject:
    return parse_part10(io.BytesIO(data), name=NAME)


def refused(data: bytes) -> InvalidObject:
    """The InvalidObject (or ObjectMismatch) raised for ``data``; fails if it parses."""
    with pytest.raises(InvalidObject) as caught:
        parse(data)
    assert NAME in str(caught.value)
    return caught.value


def small_dx() -> bytes:
    return part10_bytes(diconde_dx(rows=16, columns=16))


def element(group: int, elem: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    if vr in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR"):
        return struct.pack("<HH2sHL", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def uid_value(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\0" * (len(raw) % 2)


def meta_end(data: bytes) -> int:
    """Where the dataset starts: after (0002,0000) File Meta Information Group Length's value."""
    assert data[132:136] == b"\x02\x00\x00\x00"
    return 144 + struct.unpack_from("<L", data, 140)[0]


# -- the samples of every stored transfer syntax -------------------------------------------------
@pytest.mark.parametrize(("transfer_syntax", "name"), sorted(SAMPLES_BY_TRANSFER_SYNTAX.items()))
def test_every_sample_parses_with_its_transfer_syntax(transfer_syntax: str, name: str) -> None:
    path = sample_file(name)
    with path.open("rb") as f:
        parsed = parse_part10(f, name=name)
    reference = dcmread(path)
    assert parsed.transfer_syntax == transfer_syntax
    assert parsed.sop_instance_uid == reference.SOPInstanceUID
    assert parsed.sop_class_uid == reference.SOPClassUID
    assert parsed.size == path.stat().st_size
    assert "PixelData" not in parsed.dataset
    assert parsed.dataset.PatientID == reference.PatientID
    pixel = parsed.pixel_data
    assert pixel is not None
    assert pixel.encapsulated == reference.file_meta.TransferSyntaxUID.is_encapsulated
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        assert pixel.frames is None  # offsets into the inflated stream mean nothing in the file
        return
    assert pixel.frames is not None
    assert len(pixel.frames) == int(reference.get("NumberOfFrames") or 1)
    data = path.read_bytes()
    if pixel.encapsulated:
        assert_segments_are_the_fragments(data, pixel.frames, reference)
    else:
        [[(offset, length)]] = pixel.frames
        assert offset == pixel.value_offset
        assert data[offset : offset + length] == reference.PixelData[:length]


def assert_segments_are_the_fragments(data: bytes, frames: list[list[tuple[int, int]]], ds: Dataset) -> None:
    """The frames' segments, in order, are exactly pydicom's fragments, read from the file's bytes."""
    encapsulated = ds.PixelData
    bot_length = struct.unpack_from("<L", encapsulated, 4)[0]
    fragments = list(generate_fragments(encapsulated[8 + bot_length :]))
    segments = [segment for frame in frames for segment in frame]
    assert len(segments) == len(fragments)
    for (offset, length), fragment in zip(segments, fragments, strict=True):
        assert length == len(fragment)
        assert data[offset : offset + length] == fragment
    offsets = [offset for offset, _ in segments]
    assert offsets == sorted(offsets)


# -- frames of generated multi-frame instances ---------------------------------------------------
@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_native_multiframe_segments_are_contiguous_frames(transfer_syntax: str) -> None:
    ds = enhanced_ct(frames=8, rows=64, columns=48)
    data = part10_bytes(ds, transfer_syntax)
    parsed = parse(data)

    pixel = parsed.pixel_data
    assert pixel is not None and pixel.frames is not None
    assert pixel.length == 8 * 64 * 48 * 2
    frame_bytes = 64 * 48 * 2
    assert pixel.frames == [[(pixel.value_offset + i * frame_bytes, frame_bytes)] for i in range(8)]
    assert pixel.value_offset + 8 * frame_bytes == len(data)
    volume = ds.pixel_array
    order = ">u2" if transfer_syntax == ExplicitVRBigEndian else "<u2"
    for i, [(offset, length)] in enumerate(pixel.frames):
        frame = np.frombuffer(data[offset : offset + length], dtype=order).reshape(64, 48)
        assert np.array_equal(frame, volume[i])


def test_eight_bit_multiframe_frames_are_rows_times_columns() -> None:
    ds = us_multiframe(frames=6, rows=64, columns=80)
    data = part10_bytes(ds)
    pixel = parse(data).pixel_data
    assert pixel is not None and pixel.frames is not None
    assert [length for [(_, length)] in pixel.frames] == [64 * 80] * 6
    for i, [(offset, length)] in enumerate(pixel.frames):
        assert data[offset : offset + length] == ds.pixel_array[i].tobytes()


def encapsulated_ct(pixel_data: bytes | None = None, **overrides: object) -> tuple[Dataset, list[bytes]]:
    """An 8-frame JPEG 2000 CT and its frame codestreams; ``pixel_data`` re-encapsulates them."""
    ds = encode(enhanced_ct(frames=8, rows=64, columns=64), JPEG2000Lossless)
    codestreams = list(generate_frames(ds.PixelData, number_of_frames=8))
    if pixel_data is not None:
        ds.PixelData = pixel_data
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    return ds, codestreams


def frame_bytes(data: bytes, frame: list[tuple[int, int]]) -> bytes:
    return b"".join(data[offset : offset + length] for offset, length in frame)


def assert_frames_are(
    data: bytes, frames: list[list[tuple[int, int]]] | None, codestreams: list[bytes]
) -> None:
    """Each frame's segments hold its codestream (plus at most the one pad byte of an odd fragment)."""
    assert frames is not None and len(frames) == len(codestreams)
    for frame, codestream in zip(frames, codestreams, strict=True):
        joined = frame_bytes(data, frame)
        assert joined[: len(codestream)] == codestream
        assert joined[len(codestream) :] in (b"", b"\0")


def test_encapsulated_frames_one_fragment_each_with_basic_offset_table() -> None:
    ds = encode(enhanced_ct(frames=8, rows=64, columns=64), RLELossless)
    data = part10_bytes(ds)
    pixel = parse(data).pixel_data
    assert pixel is not None and pixel.encapsulated
    assert_frames_are(data, pixel.frames, list(generate_frames(ds.PixelData, number_of_frames=8)))
    assert_segments_are_the_fragments(data, pixel.frames, ds)  # type: ignore[arg-type]


@pytest.mark.parametrize("has_bot", [True, False], ids=["basic-offset-table", "codestream-markers"])
def test_encapsulated_frames_of_several_fragments(has_bot: bool) -> None:
    """Two fragments per frame: grouped by the offset table, or by the J2K start-of-codestream marker."""
    _, codestreams = encapsulated_ct()
    ds, _ = encapsulated_ct(encapsulate(codestreams, fragments_per_frame=2, has_bot=has_bot))
    data = part10_bytes(ds)
    pixel = parse(data).pixel_data
    assert pixel is not None and pixel.frames is not None
    assert [len(frame) for frame in pixel.frames] == [2] * 8
    assert_frames_are(data, pixel.frames, codestreams)
    assert_segments_are_the_fragments(data, pixel.frames, ds)


def test_encapsulated_frames_from_the_extended_offset_table() -> None:
    _, codestreams = encapsulated_ct()
    pixel_data, offsets, lengths = encapsulate_extended(codestreams)
    ds, _ = encapsulated_ct(pixel_data, ExtendedOffsetTable=offsets, ExtendedOffsetTableLengths=lengths)
    data = part10_bytes(ds)
    pixel = parse(data).pixel_data
    assert pixel is not None
    assert_frames_are(data, pixel.frames, codestreams)


# -- refusals ------------------------------------------------------------------------------------
def test_truncated_files_are_refused_at_every_cut_point() -> None:
    data = small_dx()
    cuts = sorted(set(range(0, len(data), max(1, len(data) // 200))) | {len(data) - 1, len(data) - 2})
    assert len(cuts) >= 200
    accepted, wrong = [], []
    for cut in cuts:
        try:
            parse(data[:cut])
            accepted.append(cut)
        except InvalidObject:
            pass
        except Exception as exc:  # anything else escapes the error mapping of both faces
            wrong.append(f"{cut}: {type(exc).__name__}: {exc}")
    assert (accepted, wrong) == ([], []), (
        f"{len(data)}-byte file: accepted cuts {accepted}, wrong errors {wrong}"
    )


def test_a_cut_inside_the_file_meta_is_invalid_object() -> None:
    """Every cut in group 0002 must be refused as InvalidObject, never an internal error."""
    data = small_dx()
    for cut in range(128, meta_end(data)):
        error = refused(data[:cut])
        assert WHERE.search(str(error)) or "truncated" in str(error), (cut, str(error))


def test_a_radiograph_cut_before_its_image_pixel_module_is_refused() -> None:
    """Cut at an element boundary after the UIDs but before group 0028: the pixel data is lost."""
    data = small_dx()
    cut = data.index(b"\x28\x00\x02\x00US")  # (0028,0002) Samples per Pixel, first of the module
    error = refused(data[:cut])
    assert isinstance(error, ObjectMismatch)


def test_a_radiograph_cut_between_rows_and_columns_is_refused() -> None:
    data = small_dx()
    cut = data.index(b"\x28\x00\x11\x00US")  # (0028,0011) Columns, right after Rows
    refused(data[:cut])


def test_a_cut_inside_the_pixel_data_names_the_element() -> None:
    data = small_dx()
    error = refused(data[:-100])
    assert "(7FE0,0010)" in str(error)
    assert WHERE.search(str(error))


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        RLELossless,
        DeflatedExplicitVRLittleEndian,
    ],
)
def test_garbage_appended_is_refused(transfer_syntax: str) -> None:
    data = part10_bytes(diconde_dx(rows=32, columns=32), transfer_syntax)
    parse(data)  # the file itself is fine
    accepted = []
    for seed in range(40):
        rng = random.Random(seed)
        junk = rng.randbytes(rng.randint(1, 300))
        try:
            parse(data + junk)
            accepted.append(seed)
        except InvalidObject:
            pass
    assert accepted == [], f"garbage after a {transfer_syntax} file accepted for seeds {accepted}"


def test_a_file_without_the_dicm_prefix_is_refused() -> None:
    data = small_dx()
    for broken in (data[:128] + b"DICX" + data[132:], data[:131], b"", b"\0" * 1000, data[128:]):
        error = refused(broken)
        assert "DICM" in str(error) and "byte 128" in str(error)


def with_meta(data: bytes, transfer_syntax: str | None) -> bytes:
    """``data`` with its file meta rebuilt: the given Transfer Syntax UID, or none at all."""
    meta = dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    elements = (
        element(0x0002, 0x0001, "OB", b"\0\1")
        + element(0x0002, 0x0002, "UI", uid_value(meta.MediaStorageSOPClassUID))
        + element(0x0002, 0x0003, "UI", uid_value(meta.MediaStorageSOPInstanceUID))
        + (element(0x0002, 0x0010, "UI", uid_value(transfer_syntax)) if transfer_syntax else b"")
        + element(0x0002, 0x0012, "UI", uid_value(meta.ImplementationClassUID))
    )
    group_length = element(0x0002, 0x0000, "UL", struct.pack("<L", len(elements)))
    return data[:132] + group_length + elements + data[meta_end(data) :]


def test_a_rebuilt_file_meta_is_accepted() -> None:
    """The helper below is sound: with the right transfer syntax the rebuilt file parses."""
    data = small_dx()
    rebuilt = with_meta(data, ExplicitVRLittleEndian)
    assert rebuilt != data
    assert parse(rebuilt).transfer_syntax == ExplicitVRLittleEndian


def test_a_file_meta_without_transfer_syntax_is_refused() -> None:
    error = refused(with_meta(small_dx(), None))
    assert "(0002,0010)" in str(error)


def test_an_unsupported_transfer_syntax_is_refused() -> None:
    jpip = "1.2.840.10008.1.2.4.94"  # JPIP Referenced: the pixel data lives on another server
    error = refused(with_meta(small_dx(), jpip))
    assert jpip in str(error) and "not supported" in str(error)


def test_pixel_data_shorter_than_the_image_is_a_mismatch() -> None:
    ds = diconde_dx(rows=16, columns=16)
    ds.PixelData = ds.PixelData[:-2]
    error = refused(part10_bytes(ds))
    assert isinstance(error, ObjectMismatch)
    assert "510" in str(error) and "512" in str(error)
    assert WHERE.search(str(error))


def test_multiframe_pixel_data_short_of_one_frame_is_a_mismatch() -> None:
    ds = enhanced_ct(frames=4, rows=16, columns=16)
    ds.NumberOfFrames = 5
    error = refused(part10_bytes(ds))
    assert isinstance(error, ObjectMismatch)


def test_rows_and_columns_without_pixel_data_is_a_mismatch() -> None:
    ds = diconde_dx(rows=16, columns=16)
    del ds.PixelData
    error = refused(part10_bytes(ds))
    assert isinstance(error, ObjectMismatch)
    assert "(7FE0,0010)" in str(error)


def test_more_frames_than_fragments_is_a_mismatch() -> None:
    ds = encode(enhanced_ct(frames=8, rows=64, columns=64), RLELossless)
    ds.NumberOfFrames = 9
    error = refused(part10_bytes(ds))
    assert isinstance(error, ObjectMismatch)
    assert "Number of Frames" in str(error) and "8 fragments" in str(error)


def test_an_offset_table_disagreeing_with_number_of_frames_is_a_mismatch() -> None:
    _, codestreams = encapsulated_ct()
    ds, _ = encapsulated_ct(encapsulate(codestreams, fragments_per_frame=2, has_bot=True), NumberOfFrames=4)
    error = refused(part10_bytes(ds))
    assert isinstance(error, ObjectMismatch)
    assert "offset table" in str(error)


def test_a_broken_encapsulation_names_the_byte() -> None:
    ds = encode(diconde_dx(rows=32, columns=32), RLELossless)
    data = bytearray(part10_bytes(ds))
    end = len(data) - 8
    assert data[end:] == b"\xfe\xff\xdd\xe0\0\0\0\0"  # the Sequence Delimitation Item
    data[end : end + 4] = b"\xfe\xff\x00\xe1"  # no longer an item nor a delimiter
    error = refused(bytes(data))
    assert f"byte {end}" in str(error)


# -- accepted oddities ---------------------------------------------------------------------------
def test_un_of_undefined_length_holding_implicit_vr_items_is_accepted() -> None:
    """PS3.5 6.2.2: a UN of undefined length is a sequence encoded in implicit VR little endian."""
    data = small_dx()
    item = (
        struct.pack("<HHL", 0x0010, 0x0020, 6)  # implicit VR: tag, 4-byte length, value
        + b"ABC123"
        + struct.pack("<HHL", 0x0008, 0x0100, 4)
        + b"T-01"
    )
    un = (
        element(0x0009, 0x0010, "LO", b"NDT VENDOR")
        + struct.pack("<HH2sHL", 0x0009, 0x1001, b"UN", 0, 0xFFFFFFFF)
        + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + item
        + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    )
    where = data.index(b"\x10\x00\x10\x00PN")  # (0010,0010): the first element after group 0009
    patched = data[:where] + un + data[where:]

    original = parse(data).pixel_data
    parsed = parse(patched)

    assert parsed.pixel_data is not None and original is not None
    assert parsed.pixel_data.value_offset == original.value_offset + len(un)
    [[(offset, length)]] = parsed.pixel_data.frames  # type: ignore[misc]
    assert patched[offset : offset + length] == data[original.value_offset : original.value_offset + length]
    assert parsed.dataset.PatientID == "BLADE-0001"


def test_un_of_undefined_length_with_broken_items_is_refused() -> None:
    data = small_dx()
    un = struct.pack("<HH2sHL", 0x0009, 0x1001, b"UN", 0, 0xFFFFFFFF) + struct.pack(
        "<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF
    )  # an item that never ends
    where = data.index(b"\x10\x00\x10\x00PN")
    error = refused(data[:where] + un + data[where:])
    assert WHERE.search(str(error)) or "truncated" in str(error)


def test_parse_reads_a_real_file_as_well_as_a_buffer(tmp_path: Path) -> None:
    data = small_dx()
    path = tmp_path / "dx.dcm"
    path.write_bytes(data)
    with path.open("rb") as f:
        from_file = parse_part10(f, name=str(path))
    from_buffer = parse(data)
    assert from_file.pixel_data == from_buffer.pixel_data
    assert from_file.size == from_buffer.size == len(data)
