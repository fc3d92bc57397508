"""The fast paths of rendering large frames: table lookups by blocks of rows on several threads, and
JPEGs encoded in strips joined by restart markers. Each must give exactly what the plain path gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pacs.dicom.json import to_dicom_json
from pacs.dicom.render import JPEG, apply_table, encode_image, encode_jpeg, parse_viewport, render_frame
from tests.support.factories import diconde_dx


def _pillow_jpeg(image: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)))


@pytest.mark.parametrize("shape", [(3000, 3000), (1025, 1030), (2049, 777), (513, 4000)])
def test_a_large_grey_jpeg_is_libjpegs_own_with_a_restart_after_every_mcu_row(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    jpeg = encode_jpeg(image, 90)
    # byte for byte what libjpeg writes for the whole image with restart_marker_rows=1 ...
    assert jpeg == _pillow_jpeg(image, restart_marker_rows=1)
    # ... which decodes to the very pixels of the plain encoding (restarts change no coefficient)
    assert np.array_equal(_pixels(jpeg), _pixels(_pillow_jpeg(image)))
    assert Image.open(io.BytesIO(jpeg)).size == (shape[1], shape[0])


@pytest.mark.parametrize("shape", [(100, 100), (1000, 1000), (1200, 1200, 3)])
def test_small_and_colour_jpegs_are_encoded_in_one_piece(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(7).integers(0, 256, shape, dtype=np.uint8)
    assert encode_jpeg(image, 90) == _pillow_jpeg(image)


def test_a_viewport_image_goes_through_the_same_encoder() -> None:
    image = np.random.default_rng(5).integers(0, 256, (2100, 2100), dtype=np.uint8)
    jpeg = encode_image(image, viewport=parse_viewport("2048,2048"), media_type=JPEG)
    assert Image.open(io.BytesIO(jpeg)).size == (2048, 2048)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((3000, 3000), np.uint16), ((64, 64), np.uint16), ((1500, 1100), np.uint8), ((0, 5), np.uint16)],
)
def test_table_lookup_by_blocks_equals_one_lookup(shape: tuple[int, int], dtype: type) -> None:
    rng = np.random.default_rng(3)
    table = rng.integers(0, 256, 1 << (8 * np.dtype(dtype).itemsize), dtype=np.uint8)
    indices = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    assert np.array_equal(apply_table(table, indices), table[indices])


def test_rendering_a_large_radiograph_matches_the_plain_pipeline() -> None:
    ds = diconde_dx(rows=1536, columns=1200, seed=4)
    frame = bytes(ds.PixelData)
    jpeg = render_frame(frame, to_dicom_json(ds), str(ds.file_meta.TransferSyntaxUID), media_type=JPEG)
    # the plain pipeline: stored values through the window to 8 bits, one Pillow encoding
    values = ds.pixel_array.astype(np.float64)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    y = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    y = np.where(values <= c - 0.5 - (w - 1) / 2, 0.0, np.where(values > c - 0.5 + (w - 1) / 2, 255.0, y))
    expected = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    assert np.array_equal(_pixels(jpeg), _pixels(_pillow_jpeg(expected)))
