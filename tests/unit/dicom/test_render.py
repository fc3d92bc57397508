"""Rendering a frame to JPEG / PNG: the PS3.3 C.11 grayscale pipeline checked against values
computed by hand, and decoding of every stored form checked against pydicom's pixel_array."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from pacs.dicom.json import to_dicom_json
from pacs.dicom.render import (
    JPEG,
    PNG,
    PixelModule,
    Window,
    decode_frame,
    encode_image,
    encode_png,
    parse_quality,
    parse_viewport,
    parse_window,
    present,
    render_frame,
    window_values,
)
from pacs.errors import InvalidObject, InvalidQuery
from tests.support.factories import diconde_dx, encode, enhanced_ct, sample_file

EXPLICIT = str(ExplicitVRLittleEndian)


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def grey_json(
    rows: int,
    columns: int,
    *,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    **extra: dict[str, Any],
) -> dict[str, Any]:
    """The DICOM JSON of a grey image; ``extra`` maps tags to elements."""
    model = {
        "00280002": _element("US", 1),
        "00280004": _element("CS", photometric),
        "00280010": _element("US", rows),
        "00280011": _element("US", columns),
        "00280100": _element("US", bits_allocated),
        "00280101": _element("US", bits_stored or bits_allocated),
        "00280103": _element("US", int(signed)),
    }
    model.update(extra)
    return model


def _png_pixels(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG")
    return np.asarray(Image.open(io.BytesIO(data)))


def _present(values: list[int], dtype: str, model: dict[str, Any], window: Window | None = None) -> list[int]:
    stored = np.array([values], dtype=dtype)
    return present(stored, PixelModule.of(model), model, 1, window)[0].tolist()  # type: ignore[no-any-return]


# -- window functions, PS3.3 C.11.2.1.2 ---------------------------------------------------------
def test_linear_window_matches_the_standard_formula_at_its_edges() -> None:
    # c=100, w=51: x <= 74.5 -> 0; x > 124.5 -> 255; else ((x - 99.5) / 50 + 0.5) * 255
    y = window_values(np.array([74.0, 74.5, 75.0, 100.0, 124.5, 125.0]), Window(100, 51))
    assert y.tolist() == pytest.approx([0.0, 0.0, 2.55, 130.05, 255.0, 255.0])


def test_linear_exact_window() -> None:
    # c=100, w=50: x <= 75 -> 0; x > 125 -> 255; else ((x - 100) / 50 + 0.5) * 255
    y = window_values(np.array([75.0, 87.5, 100.0, 125.0, 126.0]), Window(100, 50, "linear_exact"))
    assert y.tolist() == pytest.approx([0.0, 63.75, 127.5, 255.0, 255.0])


def test_sigmoid_window() -> None:
    y = window_values(np.array([100.0, 150.0, 50.0]), Window(100, 50, "sigmoid"))
    assert y.tolist() == pytest.approx([127.5, 255 / (1 + math.exp(-4)), 255 / (1 + math.exp(4))])


# -- the grayscale pipeline ---------------------------------------------------------------------
def test_unsigned_16_bit_with_an_explicit_window() -> None:
    model = grey_json(1, 5)
    window = Window(30000, 20001)  # 8000 ... 50000 -> ((x - 29999.5) / 20000 + 0.5) * 255
    assert _present([0, 19999, 29999, 45000, 65535], "<u2", model, window) == [0, 0, 127, 255, 255]


def test_monochrome1_is_inverted() -> None:
    model = grey_json(1, 3, photometric="MONOCHROME1")
    assert _present([0, 19999, 65535], "<u2", model, Window(30000, 20001)) == [255, 255, 0]


def test_signed_16_bit_with_rescale_slope_and_intercept() -> None:
    model = grey_json(1, 3, signed=True, **{"00281053": _element("DS", 2), "00281052": _element("DS", 100)})
    # modality values -1900, 100, 2100; linear-exact c=100 w=4001: ((x - 100) / 4001 + 0.5) * 255
    assert _present([-1000, 0, 1000], "<i2", model, Window(100, 4001, "linear_exact")) == [0, 128, 255]


def test_the_instance_window_and_function_apply_when_the_request_gives_none() -> None:
    model = grey_json(
        1,
        3,
        **{
            "00281050": _element("DS", 100, 999),  # first of several windows
            "00281051": _element("DS", 50, 1),
            "00281056": _element("CS", "LINEAR_EXACT"),
        },
    )
    assert _present([75, 100, 125], "<u2", model) == [0, 128, 255]


def test_bits_above_bits_stored_are_ignored_and_signed_values_sign_extended() -> None:
    unsigned = grey_json(
        1, 2, bits_stored=12, **{"00281050": _element("DS", 2048), "00281051": _element("DS", 4096)}
    )
    # 0xF000 has only high bits set (an old overlay): it is stored value 0
    assert _present([0xF000, 0xFFFF], "<u2", unsigned) == [0, 255]
    signed = grey_json(1, 3, bits_stored=12, signed=True)
    # 12-bit two's complement: 0x0800 = -2048, 0x0FFF = -1, 0x07FF = 2047; no window: min/max,
    # -1 -> ((-1 + 0.5) / 4095 + 0.5) * 255 = 127.47
    assert _present([0x0800, 0x0FFF, 0x07FF], "<u2", signed) == [0, 127, 255]


def test_a_voi_lut_sequence_maps_modality_values() -> None:
    lut = {
        "00283002": _element("US", 4, 10, 8),  # 4 entries from value 10, 8-bit output
        "00283006": _element("US", 0, 100, 200, 255),
    }
    model = grey_json(1, 6, **{"00283010": {"vr": "SQ", "Value": [lut]}})
    assert _present([0, 10, 11, 12, 13, 400], "<u2", model) == [0, 0, 100, 200, 255, 255]


def test_a_16_bit_voi_lut_is_scaled_to_8_bits() -> None:
    lut = {"00283002": _element("US", 3, 0, 16), "00283006": _element("US", 0, 32768, 65535)}
    model = grey_json(1, 3, **{"00283010": {"vr": "SQ", "Value": [lut]}})
    assert _present([0, 1, 2], "<u2", model) == [0, 128, 255]


def test_without_any_window_the_frame_range_is_stretched() -> None:
    assert _present([10, 20, 30], "<u2", grey_json(1, 3)) == [0, 128, 255]
    assert _present([10, 20, 30], "u1", grey_json(1, 3, bits_allocated=8)) == [0, 128, 255]
    assert _present([-5, 0, 5], "<i2", grey_json(1, 3, signed=True)) == [0, 128, 255]


def test_32_bit_frames_take_the_float_path() -> None:
    model = grey_json(1, 3, bits_allocated=32, **{"00281053": _element("DS", 0.5)})
    assert _present([0, 100000, 200000], "<u4", model) == [0, 128, 255]


def test_enhanced_ct_uses_shared_and_per_frame_functional_groups() -> None:
    ds = enhanced_ct(frames=3, rows=32, columns=32)
    per_frame_voi = Dataset()
    per_frame_voi.WindowCenter, per_frame_voi.WindowWidth = "0", "2"
    ds.PerFrameFunctionalGroupsSequence[1].FrameVOILUTSequence = [per_frame_voi]
    model = to_dicom_json(ds)
    frames = ds.pixel_array
    shared = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    intercept = float(
        ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleIntercept
    )
    pixels = PixelModule.of(model)
    for number, (center, width) in ((1, (shared.WindowCenter, shared.WindowWidth)), (2, (0, 2))):
        expected = np.clip(
            np.rint(window_values(frames[number - 1] + intercept, Window(float(center), float(width)))),
            0,
            255,
        )
        got = present(frames[number - 1], pixels, model, number)
        assert np.array_equal(got, expected.astype(np.uint8)), number


# -- decoding every stored form -----------------------------------------------------------------
def _first_frame(ds: Dataset) -> bytes:
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))
    frames = int(ds.get("NumberOfFrames") or 1)
    return bytes(ds.PixelData[: len(ds.PixelData) // frames])


def _round_trip(ds: Dataset) -> Dataset:
    """The dataset as read back from a file (pydicom then knows its encoded form)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless, JPEG2000Lossless]
)
def test_generated_frames_decode_like_pydicom(syntax: str) -> None:
    ds = _round_trip(encode(diconde_dx(rows=64, columns=48), syntax))
    model = to_dicom_json(ds)
    got = decode_frame(_first_frame(ds), PixelModule.of(model), syntax)
    assert np.array_equal(got, ds.pixel_array)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless, signed
        "RG3_J2KR.dcm",  # JPEG 2000 lossless
        "JPEG2000.dcm",  # JPEG 2000 lossy, signed
        "JPEG-LL.dcm",  # JPEG lossless
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, colour
        "SC_rgb_expb_16bit.dcm",  # big endian 16-bit RGB
        "CT_small.dcm",  # signed native
    ],
)
def test_sample_frames_decode_like_pydicom(name: str) -> None:
    ds = pydicom.dcmread(sample_file(name))
    model = to_dicom_json(ds)
    got = decode_frame(_first_frame(ds), PixelModule.of(model), ds.file_meta.TransferSyntaxUID)
    expected = ds.pixel_array
    assert np.array_equal(got, expected)


def test_a_multi_frame_rle_object_decodes_the_frame_asked_for() -> None:
    ds = _round_trip(encode(enhanced_ct(frames=4, rows=32, columns=32), RLELossless))
    frames = list(generate_frames(ds.PixelData, number_of_frames=4))
    model = to_dicom_json(ds)
    got = decode_frame(frames[2], PixelModule.of(model), RLELossless)
    assert np.array_equal(got, ds.pixel_array[2])


def test_a_short_frame_is_refused() -> None:
    model = grey_json(4, 4)
    with pytest.raises(InvalidObject, match="holds 10 bytes"):
        render_frame(b"\0" * 10, model, EXPLICIT)


def test_garbage_in_a_compressed_frame_is_refused() -> None:
    with pytest.raises(InvalidObject, match="cannot decode"):
        render_frame(b"\xff\x4f\xff\x51garbage", grey_json(4, 4), JPEG2000Lossless)


# -- output ---------------------------------------------------------------------------------------
def test_monochrome1_radiograph_renders_as_the_inverse_of_monochrome2() -> None:
    m2 = diconde_dx(rows=32, columns=40)
    m1 = diconde_dx(rows=32, columns=40, photometric="MONOCHROME1")
    renders = [
        _png_pixels(render_frame(ds.PixelData, to_dicom_json(ds), EXPLICIT, media_type=PNG))
        for ds in (m2, m1)
    ]
    assert renders[0].shape == (32, 40)
    assert np.array_equal(renders[1], 255 - renders[0])


def test_png_holds_the_windowed_pixels_and_jpeg_the_size() -> None:
    ds = diconde_dx(rows=30, columns=50)
    window = Window(float(ds.WindowCenter), float(ds.WindowWidth))
    expected = np.clip(np.rint(window_values(ds.pixel_array, window)), 0, 255).astype(np.uint8)
    png = render_frame(ds.PixelData, to_dicom_json(ds), EXPLICIT, media_type=PNG, window=window)
    assert np.array_equal(_png_pixels(png), expected)
    jpeg = render_frame(ds.PixelData, to_dicom_json(ds), EXPLICIT, quality=50)
    assert jpeg.startswith(b"\xff\xd8")
    assert Image.open(io.BytesIO(jpeg)).size == (50, 30)


def test_colour_frames_pass_through() -> None:
    ds = pydicom.dcmread(sample_file("SC_rgb_jpeg_dcmtk.dcm"))
    png = render_frame(_first_frame(ds), to_dicom_json(ds), ds.file_meta.TransferSyntaxUID, media_type=PNG)
    assert np.array_equal(_png_pixels(png), ds.pixel_array)


def test_png_encoder_round_trips_through_pillow() -> None:
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (7, 5), (1200, 2000), (33, 17, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(_png_pixels(encode_png(image)), image)


def test_viewport_fits_keeping_the_aspect_ratio() -> None:
    image = np.zeros((100, 200), dtype=np.uint8)
    sizes = {
        "64,64": (64, 32),
        "400,400": (400, 200),
        "50,": (50, 25),
        ",10": (20, 10),
    }
    for text, size in sizes.items():
        assert Image.open(io.BytesIO(encode_image(image, viewport=parse_viewport(text)))).size == size


def test_a_viewport_enlarging_beyond_the_output_limit_is_refused() -> None:
    image = np.zeros((2, 16384), dtype=np.uint8)
    assert Image.open(io.BytesIO(encode_image(image, viewport=parse_viewport("16384,16384")))).size == (
        16384,
        2,
    )
    with pytest.raises(InvalidQuery, match="more than"):
        encode_image(np.zeros((2, 2), dtype=np.uint8), viewport=parse_viewport("16384,16384"))


def test_viewport_region_crops_and_flips() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    png = encode_image(image, viewport=parse_viewport("2,2,1,1,2,2"), media_type=PNG)
    assert _png_pixels(png).tolist() == image[1:3, 1:3].tolist()
    flipped = encode_image(image, viewport=parse_viewport("2,1,2,0,-2,1"), media_type=PNG)
    assert _png_pixels(flipped).tolist() == [[image[0, 2], image[0, 1]]]


# -- parameters ---------------------------------------------------------------------------------
def test_window_parameter_forms() -> None:
    assert parse_window("40,400") == Window(40, 400, "linear")
    assert parse_window("40,400,LINEAR-EXACT") == Window(40, 400, "linear_exact")
    assert parse_window("-1.5,0.5,sigmoid") == Window(-1.5, 0.5, "sigmoid")


@pytest.mark.parametrize(
    "text", ["", "40", "a,b", "40,400,cubic", "40,0", "40,0.5,linear", "40,400,linear,1", "nan,1"]
)
def test_malformed_windows_are_refused(text: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_window(text)


@pytest.mark.parametrize("text", ["", "10", "a,b", "0,10", "10,10,1,1,0,1", "10,10,-1,0,1,1", ",", "99999,1"])
def test_malformed_viewports_are_refused(text: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_viewport(text)


def test_quality_and_media_type_are_checked() -> None:
    assert parse_quality("75") == 75
    for bad in ("0", "101", "x"):
        with pytest.raises(InvalidQuery):
            parse_quality(bad)
    with pytest.raises(InvalidQuery, match="image/gif"):
        render_frame(b"\0" * 4, grey_json(1, 2), EXPLICIT, media_type="image/gif")
    assert JPEG == "image/jpeg"
