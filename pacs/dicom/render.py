"""Render one stored frame as a consumer-format image (PS3.18 8.3.5, 10.4.1.1.3): JPEG or PNG.

The grayscale pipeline is the one of PS3.3 C.11 (Figure C.11-1): stored values -> Modality LUT
(Rescale Slope / Intercept, or a Modality LUT Sequence) -> VOI (a window, or a VOI LUT Sequence) ->
8-bit presentation values, inverted for MONOCHROME1. The window is, in this order: the caller's,
the frame's (Frame VOI LUT of the per-frame, then shared, functional groups of an enhanced object),
the instance's Window Center / Width, its VOI LUT Sequence, else the frame's own minimum and maximum.
Colour frames (RGB, YBR, after decoding) are passed through, reduced to 8 bits per sample.

Speed: integer frames of up to 16 bits allocated are rendered with one table lookup per pixel. The
whole chain (bit masking, sign extension, rescale, VOI, inversion) is evaluated once for every
possible stored bit pattern (65,536 at most) into a ``uint8`` table, so an 18 MB frame costs one
``numpy.take``, not a float pipeline over millions of pixels. The lookup runs over blocks of rows
(numpy widens the indices of each call to 64 bits: a block's stay in the cache, a whole frame's
would be 72 MB written and read back), on the module's threads for a large frame.

A large grey JPEG is encoded in horizontal strips on those threads, joined into one baseline JPEG
by restart markers (:func:`encode_jpeg`): the result is byte for byte the one libjpeg writes for
the whole image with a restart marker after every MCU row, and decodes to the same pixels as one
without. Every JPEG is encoded into a file descriptor, the one way Pillow's encoder lets go of the
GIL while it works (into a ``BytesIO`` it holds the GIL: the server's event loop would stall).
"""

from __future__ import annotations

import base64
import io
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from isal import isal_zlib
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import UID

from pacs.errors import InvalidObject, InvalidQuery

JPEG = "image/jpeg"
PNG = "image/png"
MEDIA_TYPES = (JPEG, PNG)

#: Window functions (PS3.3 C.11.2.1.3 VOI LUT Function), by their PS3.18 query spelling too.
FUNCTIONS = {
    "linear": "linear",
    "linear-exact": "linear_exact",
    "linear_exact": "linear_exact",
    "sigmoid": "sigmoid",
}

#: A viewport may enlarge an image, up to this many output pixels (memory stays bounded).
MAX_OUTPUT_PIXELS = 50_000_000
PNG_COMPRESS_LEVEL = 1  # zlib level: speed first, a rendered frame is a view, not an archive copy
_NATIVE_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"

# DICOM JSON tags (PS3.18 F.2: 8 hex digits, upper case)
_ROWS = "00280010"
_COLUMNS = "00280011"
_SAMPLES = "00280002"
_PHOTOMETRIC = "00280004"
_PLANAR = "00280006"
_FRAMES = "00280008"
_BITS_ALLOCATED = "00280100"
_BITS_STORED = "00280101"
_HIGH_BIT = "00280102"
_PIXEL_REPRESENTATION = "00280103"
_WINDOW_CENTER = "00281050"
_WINDOW_WIDTH = "00281051"
_VOI_FUNCTION = "00281056"
_RESCALE_INTERCEPT = "00281052"
_RESCALE_SLOPE = "00281053"
_MODALITY_LUT_SEQUENCE = "00283000"
_VOI_LUT_SEQUENCE = "00283010"
_LUT_DESCRIPTOR = "00283002"
_LUT_DATA = "00283006"
_SHARED_GROUPS = "52009229"
_PER_FRAME_GROUPS = "52009230"
_PIXEL_VALUE_TRANSFORMATION = "00289145"
_FRAME_VOI_LUT = "00289132"


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center and width in modality values, and its function."""

    center: float
    width: float
    function: str = "linear"  # linear | linear_exact | sigmoid

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise InvalidQuery(
                f"window center and width must be finite numbers, not {self.center}, {self.width}"
            )
        if self.function not in ("linear", "linear_exact", "sigmoid"):
            raise InvalidQuery(
                f"window function {self.function!r} is not one of linear, linear-exact, sigmoid"
            )
        if self.function == "linear" and self.width < 1:
            raise InvalidQuery(f"a linear window needs a width of at least 1, not {self.width}")
        if self.width <= 0:
            raise InvalidQuery(f"the window width must be positive, not {self.width}")


@dataclass(frozen=True)
class Viewport:
    """The size to fit the rendered image into, keeping its aspect ratio (PS3.18 8.3.5.1.3); and,
    optionally, the source region (sx, sy, sw, sh) to render, a negative sw / sh flipping it."""

    width: int | None
    height: int | None
    region: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.width is None and self.height is None:
            raise InvalidQuery("a viewport needs a width or a height")
        for name, value in (("width", self.width), ("height", self.height)):
            if value is not None and not 1 <= value <= 16384:
                raise InvalidQuery(f"viewport {name} must be 1..16384, not {value}")


def parse_window(text: str) -> Window:
    """``center,width,function`` (PS3.18 8.3.5.1.4; the function defaults to linear)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise InvalidQuery(f"window={text!r}: expected center,width,function (linear|linear-exact|sigmoid)")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidQuery(f"window={text!r}: center and width must be numbers") from None
    function = "linear"
    if len(parts) == 3:
        name = parts[2].lower()
        if name not in FUNCTIONS:
            raise InvalidQuery(f"window={text!r}: the function must be linear, linear-exact or sigmoid")
        function = FUNCTIONS[name]
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    """``vw,vh`` or ``vw,vh,sx,sy,sw,sh`` (PS3.18 8.3.5.1.3); vw or vh may be empty (keep aspect)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 6):
        raise InvalidQuery(f"viewport={text!r}: expected vw,vh or vw,vh,sx,sy,sw,sh")
    try:
        size = [int(p) if p else None for p in parts[:2]]
        region = tuple(int(p) for p in parts[2:]) if len(parts) == 6 else None
    except ValueError:
        raise InvalidQuery(f"viewport={text!r}: the values must be integers") from None
    if region is not None and (region[0] < 0 or region[1] < 0 or region[2] == 0 or region[3] == 0):
        raise InvalidQuery(f"viewport={text!r}: sx, sy must be >= 0 and sw, sh non-zero")
    return Viewport(size[0], size[1], region)  # type: ignore[arg-type]


def parse_quality(text: str) -> int:
    try:
        quality = int(text)
    except ValueError:
        raise InvalidQuery(f"quality={text!r} is not an integer 1..100") from None
    if not 1 <= quality <= 100:
        raise InvalidQuery(f"quality={quality} must be 1..100")
    return quality


# -- the public entry point ---------------------------------------------------------------------
def render_frame(
    frame_bytes: bytes,
    dicom_json: Mapping[str, Any],
    transfer_syntax_uid: str,
    frame_number: int = 1,
    *,
    window: Window | None = None,
    viewport: Viewport | None = None,
    media_type: str = JPEG,
    quality: int = 90,
) -> bytes:
    """Frame ``frame_number`` (1-based) of an instance, from its stored bytes, as JPEG or PNG bytes.

    ``frame_bytes``: the frame as the retrieve service cuts it from the object (native pixels, or
    the frame's compressed bitstream); ``dicom_json``: the instance's metadata from the index.
    :class:`InvalidQuery` for a bad media type or quality; :class:`InvalidObject` when the frame
    cannot be decoded (unsupported transfer syntax, wrong length, unusable image pixel module).
    """
    if media_type not in MEDIA_TYPES:
        raise InvalidQuery(f"cannot render as {media_type!r}: only {', '.join(MEDIA_TYPES)}")
    if not 1 <= quality <= 100:
        raise InvalidQuery(f"quality={quality} must be 1..100")
    pixels = PixelModule.of(dicom_json)
    image = present(
        decode_frame(frame_bytes, pixels, transfer_syntax_uid), pixels, dicom_json, frame_number, window
    )
    return encode_image(image, viewport=viewport, media_type=media_type, quality=quality)


def present(
    stored: np.ndarray,
    pixels: PixelModule,
    dicom_json: Mapping[str, Any],
    frame_number: int = 1,
    window: Window | None = None,
) -> np.ndarray:
    """Decoded stored values to 8-bit display values: (rows, columns) grey or (rows, columns, 3) RGB."""
    if stored.ndim == 3:
        return _colour_to_8bit(stored, pixels)
    if pixels.photometric == "PALETTE COLOR":
        return _palette(stored, dicom_json)
    attrs = _frame_attributes(dicom_json, frame_number)
    modality = _modality(attrs)
    voi = _voi(attrs, window)
    invert = pixels.photometric == "MONOCHROME1"
    if stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2:
        return _render_by_table(stored, pixels, modality, voi, invert)
    values = _apply_modality(stored.astype(np.float64), modality)
    if voi is None:
        voi = _minmax_window(values)
    out = _apply_voi(values, voi)
    return 255 - out if invert else out


# -- the image pixel module -----------------------------------------------------------------------
@dataclass(frozen=True)
class PixelModule:
    rows: int
    columns: int
    samples: int
    photometric: str
    planar: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    signed: bool
    frames: int

    @classmethod
    def of(cls, dicom_json: Mapping[str, Any]) -> PixelModule:
        try:
            rows, columns = int(_first(dicom_json, _ROWS)), int(_first(dicom_json, _COLUMNS))
            allocated = int(_first(dicom_json, _BITS_ALLOCATED))
        except (TypeError, ValueError):
            raise InvalidObject(
                "the instance has no usable Rows, Columns and Bits Allocated (0028,0100)"
            ) from None
        stored = int(_first(dicom_json, _BITS_STORED) or allocated)
        module = cls(
            rows=rows,
            columns=columns,
            samples=int(_first(dicom_json, _SAMPLES) or 1),
            photometric=str(_first(dicom_json, _PHOTOMETRIC) or "MONOCHROME2").strip().upper(),
            planar=int(_first(dicom_json, _PLANAR) or 0),
            bits_allocated=allocated,
            bits_stored=stored,
            high_bit=int(_first(dicom_json, _HIGH_BIT) or stored - 1),
            signed=int(_first(dicom_json, _PIXEL_REPRESENTATION) or 0) == 1,
            frames=int(_first(dicom_json, _FRAMES) or 1),
        )
        if rows < 1 or columns < 1 or module.samples not in (1, 3):
            raise InvalidObject(f"cannot render {rows}x{columns} pixels of {module.samples} samples")
        if allocated not in (1, 8, 16, 32, 64) or not 1 <= stored <= allocated:
            raise InvalidObject(f"cannot render Bits Allocated {allocated}, Bits Stored {stored}")
        return module

    def options(self) -> dict[str, Any]:
        """pydicom's decoding options for one frame."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples,
            "photometric_interpretation": self.photometric,
            "planar_configuration": self.planar,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": int(self.signed),
            "number_of_frames": 1,
        }


# -- decoding -----------------------------------------------------------------------------------
def decode_frame(frame_bytes: bytes, pixels: PixelModule, transfer_syntax_uid: str) -> np.ndarray:
    """One frame's stored values: (rows, columns) for grey, (rows, columns, 3) for colour (RGB after
    decoding, native YBR_FULL converted too).

    Native 8/16/32-bit grey or interleaved colour: a view of the bytes, no copy. Bit-packed, YBR 4:2:2
    and encapsulated frames go through pydicom's decoders (pylibjpeg, openjpeg, libjpeg, RLE).
    Bits above Bits Stored are not masked here; the presentation step handles them.
    """
    syntax = UID(transfer_syntax_uid)
    if syntax == _DEFLATED:
        raise InvalidObject("frames of a deflated object cannot be rendered from byte ranges")
    if (
        not syntax.is_compressed
        and pixels.bits_allocated in (8, 16, 32, 64)
        and pixels.photometric != "YBR_FULL_422"
    ):
        return _native(frame_bytes, pixels, big_endian=syntax == _NATIVE_BIG_ENDIAN)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise InvalidObject(f"no decoder for transfer syntax {transfer_syntax_uid}") from None
    if not decoder.is_available:
        raise InvalidObject(f"no decoder available for transfer syntax {transfer_syntax_uid}")
    source = encapsulate([frame_bytes]) if syntax.is_encapsulated else frame_bytes
    try:
        options: Any = {**pixels.options(), "transfer_syntax_uid": syntax}
        array, _ = decoder.as_array(source, index=0, **options)
    except Exception as exc:  # the codecs raise anything from ValueError to RuntimeError
        raise InvalidObject(f"cannot decode the frame ({syntax.name}): {exc}") from exc
    if array.ndim == 3 and pixels.samples == 1:  # defensive: a single frame kept its frame axis
        array = array[0]
    return array


def _native(frame_bytes: bytes, pixels: PixelModule, *, big_endian: bool) -> np.ndarray:
    size = pixels.bits_allocated // 8
    count = pixels.rows * pixels.columns * pixels.samples
    if len(frame_bytes) < count * size:
        raise InvalidObject(f"the frame holds {len(frame_bytes)} bytes, {count * size} expected")
    kind = "i" if pixels.signed and pixels.samples == 1 else "u"
    dtype = np.dtype(f"{'>' if big_endian else '<'}{kind}{size}")
    array = np.frombuffer(frame_bytes, dtype=dtype, count=count)
    if pixels.samples == 1:
        return array.reshape(pixels.rows, pixels.columns)
    if pixels.planar == 1:
        colour = array.reshape(3, pixels.rows, pixels.columns).transpose(1, 2, 0)
    else:
        colour = array.reshape(pixels.rows, pixels.columns, 3)
    if pixels.photometric == "YBR_FULL":  # as the decoders do for encapsulated YBR: hand back RGB
        colour = convert_color_space(np.ascontiguousarray(colour), "YBR_FULL", "RGB")
    return colour


def _colour_to_8bit(array: np.ndarray, pixels: PixelModule) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    shift = max(pixels.bits_stored - 8, 0)
    mask = (1 << pixels.bits_stored) - 1
    return ((array.astype(np.uint32) & mask) >> shift).astype(np.uint8)


def _palette(stored: np.ndarray, dicom_json: Mapping[str, Any]) -> np.ndarray:
    """PALETTE COLOR (PS3.3 C.7.6.3.1.5) through its red, green and blue LUTs, when inline."""
    channels = []
    for descriptor_tag, data_tag in (
        ("00281101", "00281201"),
        ("00281102", "00281202"),
        ("00281103", "00281203"),
    ):
        lut = _lut({_LUT_DESCRIPTOR: dicom_json.get(descriptor_tag), _LUT_DATA: dicom_json.get(data_tag)})
        if lut is None:
            raise InvalidObject(
                "PALETTE COLOR without inline palette data (segmented or bulk) cannot be rendered"
            )
        top = float(lut.data.max()) > 255 and lut.bits > 8
        table = np.clip(np.rint(lut.data / 257.0 if top else lut.data), 0, 255).astype(np.uint8)
        index = np.clip(stored.astype(np.int64) - lut.first, 0, len(table) - 1)
        channels.append(table[index])
    return np.stack(channels, axis=-1)


# -- attributes of the frame ----------------------------------------------------------------------
def _first(item: Mapping[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not element:
        return None
    values = element.get("Value")
    return values[0] if values else None


def _values(item: Mapping[str, Any], tag: str) -> list[Any]:
    element = item.get(tag)
    return list(element.get("Value") or []) if element else []


def _group(groups: Mapping[str, Any] | None, tag: str) -> Mapping[str, Any] | None:
    """The single item of functional group ``tag`` in a functional groups item, if present."""
    if not groups:
        return None
    items = _values(groups, tag)
    return items[0] if items else None


def _frame_attributes(dicom_json: Mapping[str, Any], frame_number: int) -> dict[str, Any]:
    """The top-level attributes, overridden by the shared then the per-frame functional groups
    (PS3.3 C.7.6.16): Pixel Value Transformation and Frame VOI LUT."""
    attrs: dict[str, Any] = {
        tag: dicom_json[tag]
        for tag in (
            _RESCALE_INTERCEPT,
            _RESCALE_SLOPE,
            _MODALITY_LUT_SEQUENCE,
            _WINDOW_CENTER,
            _WINDOW_WIDTH,
            _VOI_FUNCTION,
            _VOI_LUT_SEQUENCE,
        )
        if tag in dicom_json
    }
    shared = _values(dicom_json, _SHARED_GROUPS)
    per_frame = _values(dicom_json, _PER_FRAME_GROUPS)
    layers: list[Mapping[str, Any] | None] = [shared[0] if shared else None]
    if 1 <= frame_number <= len(per_frame):
        layers.append(per_frame[frame_number - 1])
    for groups in layers:
        transform = _group(groups, _PIXEL_VALUE_TRANSFORMATION)
        if transform:
            for tag in (_RESCALE_INTERCEPT, _RESCALE_SLOPE):
                attrs.pop(tag, None)
            attrs.update({t: transform[t] for t in (_RESCALE_INTERCEPT, _RESCALE_SLOPE) if t in transform})
        voi = _group(groups, _FRAME_VOI_LUT)
        if voi:
            for tag in (_WINDOW_CENTER, _WINDOW_WIDTH, _VOI_FUNCTION, _VOI_LUT_SEQUENCE):
                attrs.pop(tag, None)
            attrs.update(
                {
                    t: voi[t]
                    for t in (_WINDOW_CENTER, _WINDOW_WIDTH, _VOI_FUNCTION, _VOI_LUT_SEQUENCE)
                    if t in voi
                }
            )
    return attrs


# -- modality and VOI -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Lut:
    """A LUT (PS3.3 C.11.1.1.1 / C.11.2.1.1): values before ``first`` map to data[0], after the end
    to data[-1]; ``bits``: the output range."""

    first: int
    data: np.ndarray
    bits: int

    def __call__(self, values: np.ndarray) -> np.ndarray:
        index = np.clip(np.rint(values - self.first), 0, len(self.data) - 1).astype(np.intp)
        return self.data[index].astype(np.float64)


@dataclass(frozen=True)
class Modality:
    slope: float = 1.0
    intercept: float = 0.0
    lut: Lut | None = None


def _modality(attrs: Mapping[str, Any]) -> Modality:
    items = _values(attrs, _MODALITY_LUT_SEQUENCE)
    if items:
        lut = _lut(items[0])
        if lut is not None:
            return Modality(lut=lut)
    try:
        slope = float(_first(attrs, _RESCALE_SLOPE) if _first(attrs, _RESCALE_SLOPE) is not None else 1.0)
        intercept = float(_first(attrs, _RESCALE_INTERCEPT) or 0.0)
    except (TypeError, ValueError):
        slope, intercept = 1.0, 0.0
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        slope, intercept = 1.0, 0.0
    return Modality(slope, intercept)


def _lut(item: Mapping[str, Any]) -> Lut | None:
    """A LUT from its descriptor and inline data; None when the data is not in the metadata (a LUT
    longer than the index's inline threshold is bulk data, left in the stored object)."""
    descriptor = _values(item, _LUT_DESCRIPTOR)
    element = item.get(_LUT_DATA) or {}
    if len(descriptor) != 3 or ("Value" not in element and "InlineBinary" not in element):
        return None
    entries = int(descriptor[0]) or 65536  # 0 means 2**16 entries (C.11.1.1.1)
    first, bits = int(descriptor[1]), int(descriptor[2])
    if "InlineBinary" in element:
        raw = base64.b64decode(element["InlineBinary"])
        data = np.frombuffer(raw, dtype="u1" if len(raw) == entries else "<u2")
    else:
        data = np.asarray(element["Value"], dtype=np.float64)
    if data.size == 0:
        return None
    return Lut(first, data[:entries].astype(np.float64), bits if 1 <= bits <= 16 else 16)


Voi = Window | Lut


def _voi(attrs: Mapping[str, Any], requested: Window | None) -> Voi | None:
    if requested is not None:
        return requested
    try:
        center, width = _first(attrs, _WINDOW_CENTER), _first(attrs, _WINDOW_WIDTH)
        if center is not None and width is not None:
            function = FUNCTIONS.get(str(_first(attrs, _VOI_FUNCTION) or "LINEAR").strip().lower(), "linear")
            return Window(float(center), float(width), function)
    except (TypeError, ValueError, InvalidQuery):
        pass  # an unusable stored window: fall through to the VOI LUT or the frame's range
    items = _values(attrs, _VOI_LUT_SEQUENCE)
    if items:
        return _lut(items[0])
    return None


def _apply_modality(values: np.ndarray, modality: Modality) -> np.ndarray:
    if modality.lut is not None:
        return modality.lut(values)
    if modality.slope == 1.0 and modality.intercept == 0.0:
        return values
    return values * modality.slope + modality.intercept


def window_values(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 with y in 0..255, as float (unrounded)."""
    c, w = window.center, window.width
    x = np.asarray(values, dtype=np.float64)
    if window.function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == "linear_exact":
        y = ((x - c) / w + 0.5) * 255.0
        return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 255.0, y))
    # linear, C.11.2.1.2.1
    low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0 if w > 1 else np.zeros_like(x)
    return np.where(x <= low, 0.0, np.where(x > high, 255.0, y))


def _apply_voi(values: np.ndarray, voi: Voi) -> np.ndarray:
    if isinstance(voi, Window):
        y = window_values(values, voi)
    else:
        top = float(2**voi.bits - 1)
        if voi.data.max() > top:  # a descriptor that understates its output range
            top = float(2 ** int(voi.data.max()).bit_length() - 1)
        y = voi(values) * (255.0 / top)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _minmax_window(values: np.ndarray) -> Window:
    low, high = float(np.min(values)), float(np.max(values))
    # linear_exact maps low to 0 and high to 255 exactly.
    return Window((low + high) / 2, max(high - low, 1e-6), "linear_exact")


def _render_by_table(
    stored: np.ndarray, pixels: PixelModule, modality: Modality, voi: Voi | None, invert: bool
) -> np.ndarray:
    """Every bit pattern of the frame's unsigned view through mask, sign, modality, VOI and inversion
    into a uint8 table; then one lookup per pixel."""
    width = 8 * stored.dtype.itemsize
    unsigned = stored.view(np.dtype(stored.dtype.byteorder + f"u{stored.dtype.itemsize}"))
    if unsigned.dtype.byteorder == ">":
        unsigned = unsigned.astype(unsigned.dtype.newbyteorder("="))
    patterns = np.arange(1 << width, dtype=np.int64)
    bits = min(pixels.bits_stored, width)
    # Bits Stored sit at bit 0 in every form we decode (High Bit = Bits Stored - 1, PS3.5 8.1.1);
    # bits above them (old overlays) are ignored.
    values = patterns & ((1 << bits) - 1)
    if pixels.signed:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    modality_values = _apply_modality(values.astype(np.float64), modality)
    if voi is None:
        low, high = _stored_range(unsigned, values, bits == width and not pixels.signed)
        in_frame = modality_values[(values >= low) & (values <= high)]
        voi = _minmax_window(in_frame)
    table = _apply_voi(modality_values, voi)
    if invert:
        table = 255 - table
    return apply_table(table, unsigned)


_LOOKUP_BLOCK = 1 << 15  # pixels looked up per numpy call: their 64-bit indices fit in a core's cache
_PARALLEL_PIXELS = 1 << 20  # frames from this size up are looked up and JPEG-encoded on several threads


def apply_table(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``table[indices]`` for a (rows, columns) integer array, by blocks of rows (see the module's
    notes); a large frame on the module's threads (numpy lets go of the GIL in the lookup)."""
    out = np.empty(indices.shape, dtype=table.dtype)
    rows = indices.shape[0]
    step = max(1, _LOOKUP_BLOCK // max(1, indices[0].size if rows else 1))

    def look_up(bounds: tuple[int, int]) -> None:
        for start in range(bounds[0], bounds[1], step):
            stop = min(start + step, bounds[1])
            np.take(table, indices[start:stop], out=out[start:stop], mode="clip")

    parts = _row_parts(rows, indices.size)
    if len(parts) == 1:
        look_up(parts[0])
    else:
        for _ in _pool().map(look_up, parts):
            pass
    return out


def _row_parts(rows: int, pixels: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``rows`` split into a few parts for the module's threads (one part for a small image), each
    a multiple of ``multiple`` rows but the last."""
    count = 1 if pixels < _PARALLEL_PIXELS else min(2 * _workers(), max(1, rows // 256))
    step = max(1, -(-rows // count))
    step = -(-step // multiple) * multiple
    return [(start, min(start + step, rows)) for start in range(0, rows, step)] or [(0, 0)]


def _stored_range(unsigned: np.ndarray, values: np.ndarray, plain: bool) -> tuple[int, int]:
    """The lowest and highest stored value in the frame."""
    if plain:
        return int(unsigned.min()), int(unsigned.max())
    decoded = np.take(values.astype(np.int32), unsigned)
    return int(decoded.min()), int(decoded.max())


# -- encoding -------------------------------------------------------------------------------------
def encode_image(
    image: np.ndarray, *, viewport: Viewport | None = None, media_type: str = JPEG, quality: int = 90
) -> bytes:
    """8-bit grey (rows, columns) or RGB (rows, columns, 3) to JPEG or PNG, fitted to ``viewport``."""
    if viewport is not None and viewport.region is not None:
        image = _crop(image, viewport.region)
    if viewport is not None:
        rows, columns = image.shape[:2]
        size = _fit((columns, rows), viewport)
        if size != (columns, rows):
            picture = Image.fromarray(np.ascontiguousarray(image), "L" if image.ndim == 2 else "RGB")
            image = np.asarray(picture.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    if media_type == PNG:
        return encode_png(image)
    return encode_jpeg(image, quality)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """A baseline JPEG of 8-bit grey (rows, columns) or RGB (rows, columns, 3) pixels, as Pillow
    (libjpeg-turbo) writes it at ``quality``.

    A large grey image is cut into strips of whole multiples of 8 MCU rows, each encoded on a thread
    with a restart marker after every MCU row; the strips' scans are joined under the first strip's
    headers (its frame height patched to the whole image's), with the restart marker RST7 between
    two strips, where the whole image's scan has it: the restart numbers run 0..7 within each 8 MCU
    rows, and each strip starts at a multiple of 8. A restart resets the DC predictions, so each
    strip's scan is what the whole image's would hold there. Other images: one encoding.
    """
    image = np.ascontiguousarray(image)
    rows, columns = image.shape[:2]
    parts = _row_parts(rows, rows * columns, multiple=8 * _JPEG_MCU)
    if image.ndim != 2 or len(parts) == 1 or -(-columns // _JPEG_MCU) > 0xFFFF:
        return _jpeg(image, quality)
    strips = list(_pool().map(lambda b: _jpeg(image[b[0] : b[1]], quality, True), parts))
    joined = _join_strips(strips, rows)
    return joined if joined is not None else _jpeg(image, quality)


_JPEG_MCU = 8  # rows of a grey JPEG's MCU (one 8x8 block)


def _jpeg(image: np.ndarray, quality: int, restart_every_row: bool = False) -> bytes:
    """Pillow's JPEG of contiguous ``image`` rows (read in place, not copied), encoded into a file
    descriptor: Pillow's encoder lets go of the GIL only when it writes to a file (into a
    ``BytesIO`` it holds the GIL throughout)."""
    options: dict[str, Any] = {"restart_marker_rows": 1} if restart_every_row else {}
    picture = Image.fromarray(image, "L" if image.ndim == 2 else "RGB")
    with _scratch_file() as f:
        picture.save(f, format="JPEG", quality=quality, **options)
        f.seek(0)
        return f.read()


def _scratch_file() -> io.BufferedRandom:
    """An anonymous file in memory (memfd), else a temporary file."""
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("pacs-jpeg", os.MFD_CLOEXEC), "w+b")  # noqa: SIM115
    return tempfile.TemporaryFile()  # noqa: SIM115


def _jpeg_parts(data: bytes) -> tuple[bytes, int, bytes] | None:
    """(headers up to the end of the SOS segment, offset of the frame height within them, the
    entropy-coded scan without EOI) of a single-scan baseline JPEG; None if it is not one."""
    at = 2
    height_at = None
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], struct.unpack_from(">H", data, at + 2)[0]
        if marker in (0xC0, 0xC1):  # SOF0 / SOF1: P, Y, X, ...
            height_at = at + 5
        elif marker == 0xDA:  # SOS: the scan follows the segment
            end = at + 2 + length
            if height_at is None or not data.endswith(b"\xff\xd9"):
                return None
            return data[:end], height_at, data[end:-2]
        elif marker in (0xC2, 0xC3) or 0xC5 <= marker <= 0xCF:  # progressive, lossless, ...
            return None
        at += 2 + length
    return None


def _join_strips(strips: list[bytes], rows: int) -> bytes | None:
    """The strips' scans under the first strip's headers (see :func:`encode_jpeg`); None when the
    strips' headers differ in anything but the frame height."""
    pieces = [_jpeg_parts(strip) for strip in strips]
    if any(p is None for p in pieces):
        return None
    parsed = [p for p in pieces if p is not None]
    heads = set()
    for head, height_at, _ in parsed:
        heads.add(head[:height_at] + head[height_at + 2 :])
    if len(heads) != 1:
        return None
    head, height_at, scan = parsed[0]
    out = [head[:height_at], struct.pack(">H", rows), head[height_at + 2 :], scan]
    for _, _, more in parsed[1:]:
        out += [b"\xff\xd7", more]  # RST7: the restart after the previous strip's last MCU row
    out.append(b"\xff\xd9")
    return b"".join(out)


def encode_png(image: np.ndarray) -> bytes:
    """8-bit grey or RGB as PNG (ISO/IEC 15948), written here for speed.

    Pillow tries every PNG filter on every row and then deflates at the chosen level; on a noisy
    9-megapixel radiograph that takes most of a second. Here every row takes the Sub filter
    (computed by numpy in one pass; it suits the smooth gradients of radiographs) and the rows are
    deflated with the run-length strategy, in slices on several threads (zlib releases the GIL),
    joined into one zlib stream by sync flushes (as pigz does): a few times faster, and smaller.
    """
    image = np.ascontiguousarray(image)
    rows, columns = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    line = image.reshape(rows, columns * channels)
    filtered = np.empty((rows, columns * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type Sub
    filtered[:, 1 : 1 + channels] = line[:, :channels]
    np.subtract(line[:, channels:], line[:, :-channels], out=filtered[:, 1 + channels :])
    data = filtered.data.cast("B")  # contiguous: one flat byte view, no copy
    slices = _png_slices(len(data))
    if len(slices) == 1:
        body = _deflate(data, True)
    else:
        body = b"".join(
            _pool().map(lambda bounds: _deflate(data[bounds[0] : bounds[1]], bounds[1] == len(data)), slices)
        )
    stream = b"\x78\x01" + body + struct.pack(">I", zlib.adler32(data))
    header = struct.pack(">IIBBBBB", columns, rows, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


_PNG_SLICE = 2 << 20  # bytes of filtered rows per deflate slice
_threads: ThreadPoolExecutor | None = None


def _workers() -> int:
    return max(2, min(os.cpu_count() or 2, 8))


def _pool() -> ThreadPoolExecutor:
    """The module's threads: PNG deflate slices, lookups and JPEG strips of large frames (each task
    runs in numpy, zlib or libjpeg with the GIL released)."""
    global _threads
    if _threads is None:
        _threads = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="render")
    return _threads


def _png_slices(size: int) -> list[tuple[int, int]]:
    count = max(1, min(size // _PNG_SLICE, 2 * (os.cpu_count() or 1)))
    step = -(-size // count)
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def _deflate(data: memoryview, last: bool) -> bytes:
    # ISA-L's deflate (python-isal) at level 1 is 2-3x as fast as zlib's fastest level on radiographs
    # and about as small; it writes the same raw deflate stream, which any PNG reader inflates.
    compressor = isal_zlib.compressobj(PNG_COMPRESS_LEVEL, isal_zlib.DEFLATED, -15, 9)
    return compressor.compress(data) + compressor.flush(
        isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH
    )


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(payload, zlib.crc32(kind)))
    )


def _crop(image: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    sx, sy, sw, sh = region
    rows, columns = image.shape[:2]
    if sx >= columns or sy >= rows:
        raise InvalidQuery(f"viewport region starts at ({sx},{sy}), outside the {columns}x{rows} image")
    xs = slice(sx, min(sx + sw, columns)) if sw > 0 else slice(max(sx + sw + 1, 0), sx + 1)
    ys = slice(sy, min(sy + sh, rows)) if sh > 0 else slice(max(sy + sh + 1, 0), sy + 1)
    out = image[ys, xs]
    if sw < 0:
        out = out[:, ::-1]
    if sh < 0:
        out = out[::-1]
    return out


def _fit(size: tuple[int, int], viewport: Viewport) -> tuple[int, int]:
    width, height = size
    scales = [
        s
        for s in (
            viewport.width / width if viewport.width else None,
            viewport.height / height if viewport.height else None,
        )
        if s is not None
    ]
    scale = min(scales)
    fitted = max(1, round(width * scale)), max(1, round(height * scale))
    if fitted[0] * fitted[1] > MAX_OUTPUT_PIXELS:
        raise InvalidQuery(
            f"viewport {viewport.width},{viewport.height} would enlarge the image to "
            f"{fitted[0]}x{fitted[1]}, "
            f"more than {MAX_OUTPUT_PIXELS} pixels"
        )
    return fitted


def representative_frame(frame_count: int) -> int:
    """The frame a thumbnail of a multi-frame instance shows: the middle one (1-based)."""
    return max(1, (frame_count + 1) // 2)


__all__: Sequence[str] = (
    "JPEG",
    "PNG",
    "PixelModule",
    "Viewport",
    "Window",
    "apply_table",
    "decode_frame",
    "encode_image",
    "encode_jpeg",
    "parse_quality",
    "parse_viewport",
    "parse_window",
    "present",
    "render_frame",
    "representative_frame",
    "window_values",
)
