"""The test-data factories make what the rest of the suite takes for granted: IOD-valid DICONDE instances
(checked by dciodvfy), every transfer syntax round-tripping, streamed large files of exact layout, and
usable real-world samples. A broken factory would make every archive test prove nothing.
"""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from tests.support import factories as f

GENERATORS: dict[str, Callable[[], Dataset]] = {
    "dx": f.diconde_dx,
    "dx-mono1-12bit": lambda: f.diconde_dx(photometric="MONOCHROME1", bits_stored=12, rows=128, columns=96),
    "dx-latin1": lambda: f.diconde_dx(charset="ISO_IR 100", component_name="Müller^Schaufel"),
    "dx-utf8": lambda: f.diconde_dx(charset="ISO_IR 192", component_name="Лопатка^Турбина"),
    "ct": f.enhanced_ct,
    "ct-1-frame": lambda: f.enhanced_ct(frames=1),
    "us": f.us_multiframe,
    "us-1-frame": lambda: f.us_multiframe(frames=1),
}


def assert_iod_valid(path: Path) -> None:
    errors = f.dciodvfy_errors(path)
    assert not errors, f"dciodvfy on {path.name}:\n" + "\n".join(errors)


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_output_passes_dciodvfy(name: str, tmp_path: Path) -> None:
    assert_iod_valid(f.write(GENERATORS[name](), tmp_path / f"{name}.dcm"))


def test_large_multiframe_file_passes_dciodvfy(tmp_path: Path) -> None:
    assert_iod_valid(f.large_multiframe_file(tmp_path / "big.dcm", 3 * 64 * 64 * 2, rows=64, columns=64))


def test_dx_carries_the_diconde_component_and_calibration() -> None:
    ds = f.diconde_dx(part_id="VANE-9", study_uid="1.2.3.4", series_uid="1.2.3.4.5", sop_uid="1.2.3.4.5.6")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
    assert (ds.PatientID, str(ds.PatientName)) == ("VANE-9", "Turbine^Blade")
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        "1.2.3.4",
        "1.2.3.4.5",
        "1.2.3.4.5.6",
    )
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5.6"
    for keyword in (
        "MaterialThickness",
        "ComponentManufacturer",
        "MaterialGrade",
        "ComponentShape",
        "OtherPatientIDs",
        "PatientBirthDate",
        "ImagerPixelSpacing",
        "EstimatedRadiographicMagnificationFactor",
        "KVP",
        "StudyDate",
        "AccessionNumber",
    ):
        assert ds.get(keyword) not in (None, ""), keyword
    assert (ds.BitsAllocated, ds.Rows, ds.Columns) == (16, 256, 256)
    assert ds.pixel_array.dtype == np.uint16


def test_overrides_set_delete_and_reject_typos() -> None:
    ds = f.us_multiframe(AccessionNumber="WO-17", StationName=None)
    assert ds.AccessionNumber == "WO-17"
    assert "StationName" not in ds
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        f.enhanced_ct(AccessionNumbr="WO-17")


def test_sop_instance_uid_override_reaches_file_meta() -> None:
    ds = f.diconde_dx(SOPInstanceUID="1.2.826.0.1.3680043.99.1")
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.826.0.1.3680043.99.1"


@pytest.mark.parametrize("generator", [f.diconde_dx, f.enhanced_ct, f.us_multiframe])
def test_pixels_are_deterministic_per_seed(generator: Callable[..., Dataset]) -> None:
    assert generator(seed=3).PixelData == generator(seed=3).PixelData
    assert generator(seed=3).PixelData != generator(seed=4).PixelData


def test_same_uids_give_the_same_bytes() -> None:
    uids = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_uid": "1.2.3.4.5"}
    assert f.part10_bytes(f.enhanced_ct(**uids)) == f.part10_bytes(f.enhanced_ct(**uids))


@pytest.mark.parametrize(
    ("charset", "name", "codec"),
    [
        ("ISO_IR 100", "Müller^Schaufel", "latin_1"),
        ("ISO_IR 192", "Лопатка^Турбина", "utf_8"),
        ("ISO_IR 192", "叶片", "utf_8"),
    ],
)
def test_non_ascii_component_names_round_trip(charset: str, name: str, codec: str, tmp_path: Path) -> None:
    path = f.write(f.diconde_dx(charset=charset, component_name=name), tmp_path / "named.dcm")
    back = pydicom.dcmread(path)
    assert back.SpecificCharacterSet == charset
    assert str(back.PatientName) == name
    assert name.encode(codec) in path.read_bytes()  # really encoded in the declared set


@pytest.mark.parametrize(
    ("charset", "name"), [(None, "Müller^Schaufel"), ("ISO_IR 100", "叶片"), ("ISO 2022 IR 87", "x")]
)
def test_unencodable_component_names_are_refused(charset: str | None, name: str) -> None:
    with pytest.raises(ValueError):
        f.diconde_dx(charset=charset, component_name=name)


ENCODING_SOURCES: dict[str, Callable[[], Dataset]] = {
    "dx16": lambda: f.diconde_dx(rows=64, columns=48),
    "ct16-multiframe": lambda: f.enhanced_ct(frames=3, rows=32, columns=32),
    "us8-multiframe": lambda: f.us_multiframe(frames=3, rows=32, columns=40),
}


@pytest.mark.parametrize("syntax", f.ENCODABLE_TRANSFER_SYNTAXES, ids=lambda uid: uid.keyword)
@pytest.mark.parametrize("source", ENCODING_SOURCES)
def test_every_syntax_writes_a_valid_readable_file(source: str, syntax: str, tmp_path: Path) -> None:
    ds = ENCODING_SOURCES[source]()
    original = ds.pixel_array.copy()
    path = f.write(ds, tmp_path / "encoded.dcm", syntax)

    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back.SOPInstanceUID == ds.SOPInstanceUID == back.file_meta.MediaStorageSOPInstanceUID
    assert path.read_bytes()[128:132] == b"DICM"
    assert_iod_valid(path)
    if syntax in f.LOSSLESS_TRANSFER_SYNTAXES:
        np.testing.assert_array_equal(back.pixel_array, original)
    elif syntax == JPEG2000:
        assert back.pixel_array.shape == original.shape
        assert back.LossyImageCompression == "01"
    else:  # relabelled HTJ2K: a JPEG 2000 Part 1 codestream (SOC, SIZ; no Part 15 CAP marker) per frame
        assert syntax in f.RELABELLED_TRANSFER_SYNTAXES
        frames = list(generate_frames(back.PixelData, number_of_frames=int(back.get("NumberOfFrames", 1))))
        assert len(frames) == int(back.get("NumberOfFrames", 1))
        assert all(frame[:4] == b"\xff\x4f\xff\x51" for frame in frames)
        assert all(b"\xff\x50" not in frame[:200] for frame in frames)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # the source was not touched


def test_part10_bytes_equal_the_written_file(tmp_path: Path) -> None:
    ds = f.us_multiframe()
    for syntax in (None, DeflatedExplicitVRLittleEndian, RLELossless):
        assert f.part10_bytes(ds, syntax) == f.write(ds, tmp_path / f"{syntax}.dcm", syntax).read_bytes()


def test_reencoding_starts_from_compressed_and_big_endian_data() -> None:
    ds = f.enhanced_ct(frames=2, rows=32, columns=40)
    chain = f.encode(f.encode(f.encode(ds, RLELossless), ExplicitVRBigEndian), JPEG2000Lossless)
    np.testing.assert_array_equal(f.encode(chain, ExplicitVRLittleEndian).pixel_array, ds.pixel_array)


@pytest.mark.parametrize(
    "name", ["SC_rgb_expb_16bit.dcm", "MR_small_bigendian.dcm", "OBXXXX1A_expb.dcm", "SC_rgb_expb_32bit.dcm"]
)
def test_big_endian_samples_convert_both_ways(name: str) -> None:
    """Third-party big endian data: 16/32-bit samples, and 8-bit pixels stored as OW words."""
    sample = pydicom.dcmread(f.sample_file(name))
    little = pydicom.dcmread(io.BytesIO(f.part10_bytes(sample, ExplicitVRLittleEndian)))
    big = pydicom.dcmread(io.BytesIO(f.part10_bytes(little, ExplicitVRBigEndian)))
    np.testing.assert_array_equal(little.pixel_array, sample.pixel_array)
    np.testing.assert_array_equal(big.pixel_array, sample.pixel_array)


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEGLSLossless, "1.2.3.4"])
def test_encode_refuses_what_it_cannot_make(syntax: str) -> None:
    with pytest.raises(ValueError):
        f.encode(f.us_multiframe(), syntax)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, f.RELABELLED_TRANSFER_SYNTAXES[0]])
def test_encode_refuses_jpeg2000_below_openjpegs_minimum_size(syntax: str) -> None:
    with pytest.raises(ValueError, match=">= 32"):
        f.encode(f.us_multiframe(rows=31, columns=64), syntax)
    f.encode(f.us_multiframe(rows=32, columns=32), syntax)


def test_large_multiframe_file_has_exact_layout(tmp_path: Path) -> None:
    rows, columns, size = 512, 512, 20_000_000
    path = f.large_multiframe_file(tmp_path / "big.dcm", size, sop_uid="1.2.826.0.1.3680043.99.2")
    frames = size // (rows * columns * 2)
    pixel_length = frames * rows * columns * 2

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (ds.NumberOfFrames, ds.Rows, ds.Columns, ds.BitsAllocated) == (frames, rows, columns, 16)
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == "1.2.826.0.1.3680043.99.2"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    file_size = path.stat().st_size
    assert abs(file_size - size) < rows * columns * 2
    header = file_size - 12 - pixel_length  # everything before the Pixel Data element
    with path.open("rb") as fh:
        head = fh.read(header + 12)
    assert head[header:] == b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_length.to_bytes(4, "little")
    assert head[:header] == f.part10_bytes(
        ds
    )  # pydicom's header, the pixel element, the pixels: nothing else

    last = pixel_array(path, index=frames - 1)
    expected = (np.add.outer(np.arange(rows), np.arange(columns)) + frames - 1) % 65536
    np.testing.assert_array_equal(last, expected)


def test_large_multiframe_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        f.large_multiframe_file(tmp_path / "big.dcm", 120_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "big.dcm").stat().st_size > 119_000_000
    assert peak < 32 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB while writing a 120 MB file"


def test_large_multiframe_file_refuses_lengths_beyond_a_defined_length(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        f.large_multiframe_file(tmp_path / "huge.dcm", 2**32)
    assert not (tmp_path / "huge.dcm").exists()


def test_sample_dirs_are_pydicom_and_pydicom_data() -> None:
    assert [d.parts[-2:] for d in f.SAMPLE_DIRS] == [("data", "test_files"), ("data_store", "data")]
    with pytest.raises(FileNotFoundError):
        f.sample_file("no-such-sample.dcm")


@pytest.mark.parametrize("syntax", f.SAMPLES_BY_TRANSFER_SYNTAX)
def test_samples_by_transfer_syntax_are_readable_and_indexable(syntax: str) -> None:
    path = f.sample_file(f.SAMPLES_BY_TRANSFER_SYNTAX[syntax])
    ds = pydicom.dcmread(path)
    assert ds.preamble is not None
    assert ds.file_meta.TransferSyntaxUID == syntax
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        assert keyword in ds, keyword
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        assert 0 < len(ds[keyword].value) <= 64, keyword
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.pixel_array.size > 0


def test_samples_can_share_one_archive() -> None:
    datasets = [
        pydicom.dcmread(f.sample_file(name), stop_before_pixels=True)
        for name in f.SAMPLES_BY_TRANSFER_SYNTAX.values()
    ]
    sop_uids = [ds.SOPInstanceUID for ds in datasets]
    assert len(set(sop_uids)) == len(sop_uids)
    patient_of_study: dict[str, str] = {}
    for ds in datasets:
        assert patient_of_study.setdefault(ds.StudyInstanceUID, ds.PatientID) == ds.PatientID
