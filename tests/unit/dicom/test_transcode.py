"""Transcoding on retrieve: the stored bytes when the peer takes the stored syntax, else the same
pixels and attributes in a syntax it accepted, never a lossy copy.

Each prepared dataset is encoded here exactly as pynetdicom encodes a C-STORE dataset
(``pynetdicom.dsutils.encode``) and decoded back, so what is checked is what goes on the wire.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.pixels import apply_color_lut
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom.dsutils import encode

from pacs.dicom.transcode import (
    LOSSLESS_TARGETS,
    NATIVE_TARGETS,
    TranscodeError,
    choose_transfer_syntax,
    prepare,
)
from tests.support.factories import (
    ENCODABLE_TRANSFER_SYNTAXES,
    RELABELLED_TRANSFER_SYNTAXES,
    SAMPLES_BY_TRANSFER_SYNTAX,
    diconde_dx,
    enhanced_ct,
    sample_file,
    us_multiframe,
    write,
)

SAMPLES = sorted(SAMPLES_BY_TRANSFER_SYNTAX.values())
TARGETS = [*NATIVE_TARGETS, *LOSSLESS_TARGETS]


def dataset_bytes(part10: bytes) -> bytes:
    (group_length,) = struct.unpack_from("<L", part10, 140)
    return part10[144 + group_length :]


def on_the_wire(ds: Dataset) -> bytes:
    """The C-STORE dataset pynetdicom sends for ``ds`` in its file meta's transfer syntax."""
    syntax = ds.file_meta.TransferSyntaxUID
    encoded = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    assert encoded is not None, "pynetdicom could not encode the dataset"
    return encoded


def received(ds: Dataset) -> Dataset:
    """What a receiver decodes from :func:`on_the_wire`."""
    syntax = ds.file_meta.TransferSyntaxUID
    data = on_the_wire(ds)
    if syntax.is_deflated:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    back = read_dataset(io.BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
    back.file_meta = FileMetaDataset()
    back.file_meta.TransferSyntaxUID = syntax
    return back


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A DX radiograph in every syntax the factories encode, plus multi-frame CT and US."""
    folder = tmp_path_factory.mktemp("generated")
    files = {
        f"dx-{UID(ts).keyword}": write(diconde_dx(rows=48, columns=48, seed=i), folder / f"dx{i}.dcm", ts)
        for i, ts in enumerate(ENCODABLE_TRANSFER_SYNTAXES)
    }
    files["ct-rle"] = write(enhanced_ct(frames=3, rows=32, columns=32), folder / "ct.dcm", RLELossless)
    files["us-implicit"] = write(
        us_multiframe(frames=2, rows=32, columns=40), folder / "us.dcm", ImplicitVRLittleEndian
    )
    return files


def all_files(generated: dict[str, Path]) -> list[Path]:
    return [sample_file(name) for name in SAMPLES] + list(generated.values())


# -- choosing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stored", "accepted", "chosen"),
    [
        (JPEG2000Lossless, [ExplicitVRLittleEndian, JPEG2000Lossless], JPEG2000Lossless),  # stored wins
        (JPEG2000Lossless, [ImplicitVRLittleEndian, ExplicitVRLittleEndian], ExplicitVRLittleEndian),
        (JPEGBaseline8Bit, [ImplicitVRLittleEndian], ImplicitVRLittleEndian),
        (ExplicitVRBigEndian, [ExplicitVRLittleEndian, ExplicitVRBigEndian], ExplicitVRBigEndian),
        (
            ExplicitVRLittleEndian,
            [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
            DeflatedExplicitVRLittleEndian,
        ),
        (ExplicitVRLittleEndian, [JPEG2000Lossless, RLELossless], RLELossless),  # lossless only
        (JPEGLSLossless, [JPEG2000Lossless], JPEG2000Lossless),
        (HTJ2KLossless, [ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    ],
)
def test_the_stored_syntax_first_then_native_then_lossless(
    stored: str, accepted: list[str], chosen: str
) -> None:
    assert choose_transfer_syntax(str(stored), [str(a) for a in accepted]) == chosen


@pytest.mark.parametrize(
    ("stored", "accepted", "reason"),
    [
        (ExplicitVRLittleEndian, [JPEG2000, JPEGBaseline8Bit], "no lossless syntax"),  # never a lossy copy
        (JPEGBaseline8Bit, [JPEGLSNearLossless], "no lossless syntax"),
        (ExplicitVRLittleEndian, [JPEGLSLossless], "no lossless syntax"),  # no JPEG-LS encoder
        (MPEG2MPML, [ExplicitVRLittleEndian], "no decoder"),  # video: nothing decodes it here
        (ExplicitVRLittleEndian, [], "no presentation context"),
    ],
)
def test_no_acceptable_syntax_is_a_clear_error(stored: str, accepted: list[str], reason: str) -> None:
    with pytest.raises(TranscodeError, match=reason):
        choose_transfer_syntax(str(stored), [str(a) for a in accepted])


# -- untouched ----------------------------------------------------------------------------------------
def test_the_stored_syntax_is_sent_byte_for_byte(generated: dict[str, Path]) -> None:
    for path in all_files(generated):
        stored = path.read_bytes()
        ds = prepare(path, str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID))
        sent = on_the_wire(ds)
        if ds.file_meta.TransferSyntaxUID.is_deflated and sent != dataset_bytes(stored):
            # Re-deflated by pynetdicom at zlib's default level; another sender's level differs.
            inflate = lambda b: zlib.decompress(b, -zlib.MAX_WBITS)  # noqa: E731
            assert inflate(sent) == inflate(dataset_bytes(stored)), path.name
            assert path.name == "image_dfl.dcm"  # the only sample deflated by another tool
        else:
            assert sent == dataset_bytes(stored), path.name


def test_group_lengths_are_the_one_thing_pydicom_drops(tmp_path: Path) -> None:
    """Documented limit: (gggg,0000) of groups above 0006 are not written back (PS3.5 7.2)."""
    path = write(diconde_dx(rows=32, columns=32), tmp_path / "group-length.dcm")
    data = path.read_bytes()
    start = len(data) - len(dataset_bytes(data))
    # pydicom would not write one either: put a (0008,0000) UL element in front of the dataset by hand.
    path.write_bytes(data[:start] + b"\x08\x00\x00\x00UL\x04\x00" + struct.pack("<L", 0) + data[start:])
    sent = on_the_wire(prepare(path, ExplicitVRLittleEndian))
    stored = dataset_bytes(path.read_bytes())
    assert sent != stored
    assert sent == stored[12:]  # exactly the 12-byte (0008,0000) UL element is missing


# -- transcoded ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_every_stored_syntax_becomes_each_target_with_the_same_pixels(
    generated: dict[str, Path], target: str
) -> None:
    for path in all_files(generated):
        original = dcmread(path)
        ds = prepare(path, target)
        assert ds.file_meta.TransferSyntaxUID == target, path.name
        back = received(ds)
        assert np.array_equal(back.pixel_array, original.pixel_array), f"{path.name} -> {UID(target).keyword}"
        for keyword in (
            "SOPInstanceUID",
            "SOPClassUID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "PatientID",
        ):
            assert back.get(keyword) == original.get(keyword), f"{path.name}: {keyword}"


@pytest.mark.parametrize("target", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_attributes_survive_a_change_of_vr_encoding_and_byte_order(
    generated: dict[str, Path], target: str
) -> None:
    """Every public attribute of a DICONDE instance (numbers, dates, sequences, the group 0014 NDE
    ones) decodes to the same value after the re-encoding."""
    for name in ("dx-ExplicitVRLittleEndian", "ct-rle", "us-implicit"):
        path = generated[name]
        original = dcmread(path)
        back = received(prepare(path, str(target)))
        public = [e.tag for e in original if not e.tag.is_private and e.tag != 0x7FE00010]
        for tag in public:
            assert back[tag].value == original[tag].value, f"{name}: {original[tag].keyword}"


def test_big_endian_conversion_swaps_lookup_tables_too(tmp_path: Path) -> None:
    """A palette colour image (segmented 16-bit LUT data, OW) to big endian and back: same colours."""
    path = sample_file(SAMPLES_BY_TRANSFER_SYNTAX[str(ImplicitVRLittleEndian)])  # US, PALETTE COLOR
    original = dcmread(path)
    assert original.PhotometricInterpretation == "PALETTE COLOR"
    big = received(prepare(path, ExplicitVRBigEndian))
    big_path = tmp_path / "big.dcm"
    big.save_as(big_path, enforce_file_format=True)
    little = received(prepare(big_path, ExplicitVRLittleEndian))
    for ds in (big, little):
        assert np.array_equal(
            apply_color_lut(ds.pixel_array, ds), apply_color_lut(original.pixel_array, original)
        )
    for keyword in ("SegmentedRedPaletteColorLookupTableData", "SegmentedBluePaletteColorLookupTableData"):
        assert little[keyword].value == original[keyword].value
        assert big[keyword].value != original[keyword].value  # really swapped on the way


def test_deflated_to_explicit_sends_the_inflated_dataset(generated: dict[str, Path]) -> None:
    for path in (generated["dx-DeflatedExplicitVRLittleEndian"], sample_file("image_dfl.dcm")):
        sent = on_the_wire(prepare(path, ExplicitVRLittleEndian))
        assert sent == zlib.decompress(dataset_bytes(path.read_bytes()), -zlib.MAX_WBITS), path.name


def test_relabelled_htj2k_decodes(generated: dict[str, Path]) -> None:
    """The factories' HTJ2K instances carry JPEG 2000 Part 1 codestreams; openjpeg decodes them."""
    for syntax in RELABELLED_TRANSFER_SYNTAXES:
        path = generated[f"dx-{UID(syntax).keyword}"]
        back = received(prepare(path, ExplicitVRLittleEndian))
        reference = received(prepare(generated["dx-JPEG2000Lossless"], ExplicitVRLittleEndian))
        assert back.pixel_array.shape == reference.pixel_array.shape


def test_decoding_more_than_the_limit_is_refused(generated: dict[str, Path]) -> None:
    path = generated["ct-rle"]  # 3 frames of 32 x 32 x 2 bytes = 6 KiB decoded
    with pytest.raises(TranscodeError, match="limit"):
        prepare(path, ExplicitVRLittleEndian, max_decoded_bytes=4096)
    assert prepare(path, ExplicitVRLittleEndian, max_decoded_bytes=8192).file_meta.TransferSyntaxUID == (
        ExplicitVRLittleEndian
    )


def test_an_unreadable_object_is_a_transcode_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.dcm"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(TranscodeError, match="cannot read"):
        prepare(path, ExplicitVRLittleEndian)
