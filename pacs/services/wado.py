"""What DICOMweb retrieval (WADO-RS, WADO-URI; PS3.18 9 and 10.4) needs of the archive, without HTTP.

Which instances a study / series / instance URL names, their stored bytes in chunks, a transcoded
copy when the caller cannot take the stored transfer syntax, metadata from the index alone, frames
by byte ranges, and bulk data elements. The HTTP face (``api/dicomweb``) only negotiates media
types and writes responses.

Memory: stored bytes are read in chunks of :data:`CHUNK` (a 2 GB instance costs a few chunks: the
one being sent, the one the HTTP face reads ahead). A transcoded instance is built in memory
(pydicom writes a whole dataset), bounded by :data:`pacs.dicom.transcode.DEFAULT_MAX_DECODED_BYTES`
of decoded pixels; a transcoded frame costs one decoded frame.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.filewriter import dcmwrite
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

from pacs.dicom.retrieve_keys import InformationModel, RetrieveRequest
from pacs.dicom.transcode import TranscodeError, choose_transfer_syntax, prepare
from pacs.diconde.encodings import is_video
from pacs.errors import InvalidQuery, NotFound, PacsError, ResourceUnavailable
from pacs.index.repository import VersionRow
from pacs.services.retrieve import RetrieveItem, RetrieveService
from storage import ObjectNotFound, StorageError

CHUNK = 4 << 20  # a read of the object per 4 MiB sent: few thread hops, bounded memory
#: Objects read whole (to find a bulk data element when there is no pixel data to stop at, or
#: frames that have no recorded byte ranges) above this size are refused rather than loaded.
MAX_WHOLE_READ = 1 << 30
EXPLICIT_LE = str(ExplicitVRLittleEndian)
PIXEL_DATA_TAGS = ("7FE00010", "7FE00008", "7FE00009")

#: Media type of a frame's bitstream per encapsulated transfer syntax (PS3.18 Table 8.7.3-2 / -3).
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/h265",
    "1.2.840.10008.1.2.4.108": "video/h265",
}
OCTET_STREAM = "application/octet-stream"


class NotAcceptable(PacsError):
    """No representation the caller accepts can be produced (HTTP 406)."""


@dataclass(frozen=True)
class FrameForm:
    """How frames go out: media type and transfer syntax of each part, and whether the stored
    bitstream is decoded first."""

    media_type: str
    transfer_syntax: str
    decode: bool


@dataclass(frozen=True)
class Frames:
    """An instance's frame layout and the Image Pixel values a frame needs to be decoded."""

    version: VersionRow
    layout: list[Any] | None
    count: int
    pixel: dict[str, Any]

    @property
    def encapsulated(self) -> bool:
        return UID(self.version.transfer_syntax_uid).is_encapsulated


class WadoService:
    def __init__(self, retrieve: RetrieveService) -> None:
        self.retrieve = retrieve

    # -- instances -----------------------------------------------------------------------------
    def items(self, study: str, series: str | None = None, instance: str | None = None) -> list[RetrieveItem]:
        """The current versions under a study, series or instance URL, from the index; a URL whose
        UIDs do not nest (an instance under another series) names nothing: :class:`NotFound`."""
        request = RetrieveRequest(
            InformationModel.STUDY_ROOT,
            "IMAGE" if instance else "SERIES" if series else "STUDY",
            study_uids=(study,),
            series_uids=(series,) if series else (),
            sop_instance_uids=(instance,) if instance else (),
        )
        found = self.retrieve.resolve(request)
        if not found:
            what = f"instance {instance}" if instance else f"series {series}" if series else f"study {study}"
            raise NotFound(f"no {what}" + (f" in study {study}" if series or instance else ""))
        return found

    @staticmethod
    def instance_syntax(stored: str, accepted: Collection[str]) -> str:
        """The transfer syntax to send an instance stored in ``stored`` in: the stored one when
        accepted (``*`` accepts any), else a lossless conversion; :class:`TranscodeError` if none."""
        if "*" in accepted or stored in accepted:
            return stored
        return choose_transfer_syntax(stored, accepted)

    def open(self, version: VersionRow) -> BinaryIO:
        return self.retrieve.open(version)

    def stored_chunks(self, version: VersionRow, opened: BinaryIO | None = None) -> Iterator[bytes]:
        """The stored Part 10 bytes of ``version`` in chunks; the object is opened on the first
        ``next`` unless ``opened`` (to report a missing object before a response starts). A short
        object raises :class:`ResourceUnavailable` at its end, so the response is cut, not completed."""
        f = opened if opened is not None else self.open(version)
        sent = 0
        with f:
            while chunk := f.read(CHUNK):
                sent += len(chunk)
                yield chunk
        if sent != version.size:
            raise ResourceUnavailable(
                f"object {version.object_key} of {version.sop_instance_uid} has {sent} bytes, "
                f"the index records {version.size} (run `pacs fsck`)"
            )

    def transcoded(self, item: RetrieveItem, target: str) -> bytes:
        """``item`` as a Part 10 file in ``target`` (built in memory, see the module's notes)."""
        with self.retrieve.local_file(item) as path:
            ds = prepare(path, target)
        buffer = io.BytesIO()
        try:
            dcmwrite(buffer, ds, enforce_file_format=True)
        except Exception as exc:
            raise TranscodeError(f"cannot write {item.sop_instance_uid} as {_name(target)}: {exc}") from exc
        return buffer.getvalue()

    # -- metadata ------------------------------------------------------------------------------
    def metadata(
        self, items: Sequence[RetrieveItem], bulk_base: Callable[[dict[str, Any]], str]
    ) -> list[Any]:
        """The DICOM JSON of each item, from the index alone; each BulkDataURI becomes
        ``bulk_base(instance_json) + "/" + path`` (see :func:`with_bulk_uris`)."""
        found = self.retrieve.dicom_json_of([item.version for item in items])
        models = []
        for item in items:
            model = found.get(item.version.id)
            if model is None:
                raise NotFound(f"no version {item.version.id} of {item.sop_instance_uid}")
            models.append(with_bulk_uris(model, bulk_base(model)))
        return models

    # -- frames --------------------------------------------------------------------------------
    def frames(self, version: VersionRow) -> Frames:
        entry = self.retrieve.metadata(version)
        model = entry["dicom_json"]
        if not any(tag in model for tag in PIXEL_DATA_TAGS):
            raise NotFound(f"{version.sop_instance_uid} has no pixel data")
        pixel = {
            "rows": _int(model, "00280010"),
            "columns": _int(model, "00280011"),
            "samples_per_pixel": _int(model, "00280002", 1),
            "bits_allocated": _int(model, "00280100"),
            "bits_stored": _int(model, "00280101") or _int(model, "00280100"),
            "pixel_representation": _int(model, "00280103", 0),
            "planar_configuration": _int(model, "00280006", 0),
            "photometric_interpretation": _str(model, "00280004") or "MONOCHROME2",
        }
        layout = entry["frames"]
        count = len(layout) if layout else _int(model, "00280008", 1) or 1
        return Frames(version, layout, count, pixel)

    @staticmethod
    def frame_form(frames: Frames, wanted: Sequence[tuple[str | None, str | None]]) -> FrameForm:
        """The first of ``wanted`` (media type or None for any, transfer syntax or None) that the
        frames can be sent as (PS3.18 8.7.3.3): the stored bitstream in its own media type, or
        for ``application/octet-stream`` of an encapsulated object, decoded pixels (Explicit VR
        Little Endian) unless ``transfer-syntax=*`` asks for the stored bitstream as it is."""
        stored = frames.version.transfer_syntax_uid
        if frames.encapsulated:
            own_type, own_syntax = FRAME_MEDIA_TYPES.get(stored, OCTET_STREAM), stored
        else:
            own_type, own_syntax = OCTET_STREAM, EXPLICIT_LE
        for media_type, syntax in wanted:
            if media_type in (None, "*/*", "*"):
                if syntax in (None, "*", own_syntax):
                    return FrameForm(own_type, own_syntax, False)
            elif media_type == OCTET_STREAM:
                if not frames.encapsulated and syntax in (None, "*", EXPLICIT_LE):
                    return FrameForm(OCTET_STREAM, EXPLICIT_LE, False)
                if frames.encapsulated and syntax == "*":
                    return FrameForm(OCTET_STREAM, stored, False)
                if frames.encapsulated and syntax in (None, EXPLICIT_LE) and _can_decode(stored):
                    return FrameForm(OCTET_STREAM, EXPLICIT_LE, True)
            elif _same_type(media_type, own_type) and syntax in (None, "*", own_syntax):
                return FrameForm(own_type, own_syntax, False)
        offered = ", ".join(f"{t or '*/*'}" + (f"; transfer-syntax={s}" if s else "") for t, s in wanted)
        raise NotAcceptable(
            f"frames of {frames.version.sop_instance_uid} are stored as {_name(stored)} ({own_type}); "
            f"they can be sent as {own_type}"
            + (
                " or decoded as application/octet-stream"
                if frames.encapsulated and _can_decode(stored)
                else ""
            )
            + f", not as {offered}"
        )

    def frame(self, frames: Frames, number: int, form: FrameForm) -> bytes:
        """Frame ``number`` (1-based) in ``form``: by byte ranges of the stored object, decoded only
        when ``form.decode``."""
        if not 1 <= number <= frames.count:
            raise NotFound(
                f"{frames.version.sop_instance_uid} has {frames.count} frame(s), not frame {number}"
            )
        if frames.layout:
            data = self.retrieve.frame(frames.version, number, frames.layout)
        else:
            data = self._frame_by_reading(frames, number)
        if form.decode:
            return _decode(data, frames)
        if not frames.encapsulated and frames.version.transfer_syntax_uid == str(ExplicitVRBigEndian):
            return _little_endian(data, frames.pixel["bits_allocated"])
        return data

    def _frame_by_reading(self, frames: Frames, number: int) -> bytes:
        """A frame of an object whose frames have no recorded byte ranges (deflated, video, or
        fragments whose boundaries only a decoder knows): read the object with pydicom."""
        version = frames.version
        if is_video(version.transfer_syntax_uid):
            raise NotAcceptable(f"{version.sop_instance_uid} is a video stream: it has no separate frames")
        ds = self._read_whole(version)
        try:
            if UID(version.transfer_syntax_uid).is_encapsulated:
                return bytes(get_frame(ds.PixelData, number - 1, number_of_frames=frames.count))
            data = ds.PixelData
            size = len(data) // frames.count
            return bytes(data[(number - 1) * size : number * size])
        except Exception as exc:
            raise ResourceUnavailable(
                f"cannot cut frame {number} out of {version.sop_instance_uid}: {exc}"
            ) from exc

    def _read_whole(self, version: VersionRow, stop_before_pixels: bool = False) -> Dataset:
        if version.size > MAX_WHOLE_READ:
            raise NotAcceptable(
                f"{version.sop_instance_uid} would have to be read whole ({version.size / 2**20:.0f} MiB, "
                f"over the {MAX_WHOLE_READ / 2**20:.0f} MiB limit)"
            )
        with self.open(version) as f:
            data = f.read()
        try:
            return dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
        except Exception as exc:
            raise ResourceUnavailable(f"cannot read stored {version.sop_instance_uid}: {exc}") from exc

    # -- bulk data -----------------------------------------------------------------------------
    def bulk_element(self, version: VersionRow, path: Sequence[str]) -> tuple[str, bytes]:
        """The VR and value of the (non pixel data) bulk data element at ``path``: tags in 8 hex
        digits, each sequence tag followed by a 1-based item number, as :func:`with_bulk_uris`
        writes them. Reads the stored header up to the pixel data (by one byte range)."""
        tags, items = _parse_path(path)
        entry = self.retrieve.metadata(version)
        header_end = entry.get("pixel_data_offset")
        if header_end and version.transfer_syntax_uid != "1.2.840.10008.1.2.1.99":  # not deflated
            try:
                data = self.retrieve.store.read_range(version.object_key, 0, int(header_end))
            except ObjectNotFound:
                raise NotFound(
                    f"object {version.object_key} of {version.sop_instance_uid} is missing"
                ) from None
            except StorageError as exc:
                raise ResourceUnavailable(f"cannot read {version.sop_instance_uid}: {exc}") from exc
            try:
                ds: Dataset = dcmread(io.BytesIO(data), stop_before_pixels=True)
            except Exception as exc:
                raise ResourceUnavailable(f"cannot read stored {version.sop_instance_uid}: {exc}") from exc
        else:
            ds = self._read_whole(version, stop_before_pixels=True)
        where: Dataset = ds
        for depth, tag in enumerate(tags):
            element = where.get(int(tag, 16))
            if element is None:
                raise NotFound(f"{version.sop_instance_uid} has no element {'/'.join(path)}")
            if depth == len(tags) - 1:
                value = element.value
                if element.VR == "SQ" or not isinstance(value, bytes | bytearray):
                    raise NotFound(f"{'/'.join(path)} of {version.sop_instance_uid} is not bulk data")
                return str(element.VR), bytes(value)
            number = items[depth]
            if element.VR != "SQ" or not 1 <= number <= len(element.value):
                raise NotFound(f"{version.sop_instance_uid} has no item {number} in {tag}")
            where = element.value[number - 1]
        raise NotFound(f"{version.sop_instance_uid} has no element {'/'.join(path)}")


def with_bulk_uris(model: dict[str, Any], base: str, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """A copy of the DICOM JSON ``model`` whose BulkDataURIs are full URLs under ``base``
    (the instance's ``.../bulkdata``): ``base/7FE00010`` for a top-level element, and
    ``base/00540016/1/00181072`` for one inside item 1 of a sequence (PS3.18 F.2.6)."""
    out: dict[str, Any] = {}
    for tag, element in model.items():
        if not isinstance(element, dict):
            out[tag] = element
            continue
        if "BulkDataURI" in element:
            element = {**element, "BulkDataURI": "/".join((base, *path, tag))}
        elif element.get("vr") == "SQ" and element.get("Value"):
            element = {
                **element,
                "Value": [
                    with_bulk_uris(item, base, (*path, tag, str(number))) if isinstance(item, dict) else item
                    for number, item in enumerate(element["Value"], start=1)
                ],
            }
        out[tag] = element
    return out


def parse_frame_list(text: str) -> list[int]:
    """``"1,3,5"`` as frame numbers; :class:`InvalidQuery` for anything but positive integers."""
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise InvalidQuery(f"frame list {text!r}: {item!r} is not a frame number (1, 2, ...)")
        numbers.append(int(item))
    return numbers


def _parse_path(path: Sequence[str]) -> tuple[list[str], list[int]]:
    parts = [p for p in path if p]
    if not parts or len(parts) % 2 == 0:
        raise InvalidQuery(f"bulk data path {'/'.join(path)!r} is not tag[/item/tag]...")
    tags, items = parts[0::2], parts[1::2]
    for tag in tags:
        if len(tag) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag):
            raise InvalidQuery(f"bulk data path {'/'.join(path)!r}: {tag!r} is not a tag in 8 hex digits")
    numbers = []
    for item in items:
        if not item.isdigit() or int(item) < 1:
            raise InvalidQuery(f"bulk data path {'/'.join(path)!r}: {item!r} is not an item number")
        numbers.append(int(item))
    return [t.upper() for t in tags], numbers


def _decode(data: bytes, frames: Frames) -> bytes:
    """One encapsulated frame decoded to native little endian pixels (colour as RGB, interleaved,
    as pydicom's ``decompress`` writes it)."""
    syntax = frames.version.transfer_syntax_uid
    pixel = frames.pixel
    options: dict[str, Any] = {**pixel, "number_of_frames": 1}
    try:
        # A buffer source is read as encapsulated pixel data: wrap the frame's bitstream.
        array, _ = get_decoder(UID(syntax)).as_array(encapsulate([data]), **options)
    except Exception as exc:
        raise TranscodeError(
            f"cannot decode a frame of {frames.version.sop_instance_uid} ({_name(syntax)}): {exc}"
        ) from exc
    array = np.asarray(array)
    if array.dtype.itemsize > 1 and array.dtype.byteorder == ">":
        array = array.byteswap().view(array.dtype.newbyteorder("<"))
    return array.tobytes()


def _little_endian(data: bytes, bits_allocated: int) -> bytes:
    if bits_allocated in (16, 32, 64):
        return (
            np.frombuffer(data, dtype=f">u{bits_allocated // 8}").astype(f"<u{bits_allocated // 8}").tobytes()
        )
    return data


def _can_decode(syntax: str) -> bool:
    try:
        return bool(get_decoder(UID(syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def _same_type(wanted: str, own: str) -> bool:
    """``image/jp2`` matches ``image/jp2`` and ``image/*``; ``image/x-jls`` matches ``image/jls``."""
    if wanted == own:
        return True
    major, _, minor = wanted.partition("/")
    own_major, _, own_minor = own.partition("/")
    return major == own_major and (minor == "*" or minor.removeprefix("x-") == own_minor)


def _int(model: dict[str, Any], tag: str, default: int = 0) -> int:
    values = (model.get(tag) or {}).get("Value") or []
    try:
        return int(values[0])
    except (IndexError, TypeError, ValueError):
        return default


def _str(model: dict[str, Any], tag: str) -> str:
    values = (model.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else ""


def _name(uid: str) -> str:
    return UID(uid).keyword or str(uid)
