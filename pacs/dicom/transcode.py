"""Send a stored instance in a transfer syntax the peer accepted: untouched when it takes the stored
one, otherwise transcoded losslessly on the fly (ARCHITECTURE.md: "transcoding happens only on
retrieve, only when the caller cannot take the stored transfer syntax").

Rules, in order:

1. The stored syntax is accepted: the dataset is read with pydicom and left alone. pydicom keeps
   every element it has not been asked to decode as the raw bytes it read, and writes raw elements
   back byte for byte, so the peer receives the stored dataset unchanged (the tests check every
   stored syntax). Known exceptions, all of pydicom's writer: group length elements (gggg,0000) of
   groups above 0006 are dropped (PS3.5 7.2 retires them); a deflated dataset is inflated on read and
   deflated again by pynetdicom (zlib, default level), so the inflated dataset is identical but the
   deflate stream is identical only when the sender used the same level; the SOP Class and SOP
   Instance UIDs, which pynetdicom reads to choose the context, are re-encoded (NUL-padded), which
   changes them only if the sender padded them with a space.
2. Otherwise the first of :data:`NATIVE_TARGETS` the peer accepted: compressed pixel data is decoded
   (pydicom with the pylibjpeg, openjpeg and libjpeg plugins; the SOP Instance UID is kept, as for
   any lossless conversion), then the dataset is written with the target's VR encoding and byte
   order (big endian in or out: OW/OF/OL/OD/OV values are byte-swapped; UN values cannot be and
   are left as they are).
3. Otherwise the first of :data:`LOSSLESS_TARGETS` pydicom can encode (RLE, JPEG 2000 lossless).
4. Otherwise :class:`TranscodeError`: the archive never makes a lossy copy (a lossy-only peer gets
   nothing rather than degraded evidence), and cannot decode what has no installed decoder (video,
   JPEG 2000 Part 2).

Memory: :func:`prepare` reads the whole instance, and pynetdicom encodes each C-STORE data set in
memory before sending it, so a sub-operation peaks at about three times the instance's size (a 2 GB
CT volume needs some 6 GB). Transcoding adds the decoded pixels and, when re-encoding, the new
encoding; :func:`prepare` refuses to decode more than ``max_decoded_bytes`` (default 1 GiB) so one
retrieve of a huge compressed volume cannot exhaust the node. Untouched sends have no such limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from pacs.errors import PacsError

#: Native (uncompressed) targets, most preferred first: no CPU for deflate, little endian first.
NATIVE_TARGETS: tuple[str, ...] = (
    str(ExplicitVRLittleEndian),
    str(ImplicitVRLittleEndian),
    str(DeflatedExplicitVRLittleEndian),
    str(ExplicitVRBigEndian),
)
#: Lossless compressed targets, for peers that take no native syntax.
LOSSLESS_TARGETS: tuple[str, ...] = (str(RLELossless), str(JPEG2000Lossless))
DEFAULT_MAX_DECODED_BYTES = 1 << 30

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float / Double Float Pixel Data
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class TranscodeError(PacsError):
    """The stored instance cannot be turned into any transfer syntax the peer accepted."""


def choose_transfer_syntax(stored: str, accepted: Iterable[str]) -> str:
    """The transfer syntax to send an instance stored in ``stored`` to a peer that accepted
    ``accepted`` (for its SOP class); :class:`TranscodeError` when none can be produced."""
    offered = {str(ts) for ts in accepted}
    if not offered:
        raise TranscodeError("the peer accepted no presentation context for this SOP class")
    if stored in offered:
        return stored
    source = UID(stored)
    if source.is_encapsulated and not _can_decode(source):
        raise TranscodeError(
            f"stored as {_name(stored)}, which has no decoder here; the peer accepts only {_names(offered)}"
        )
    for target in NATIVE_TARGETS:
        if target in offered:
            return target
    for target in LOSSLESS_TARGETS:
        if target in offered and _can_encode(UID(target)):
            return target
    raise TranscodeError(
        f"the peer accepts only {_names(offered)}: no lossless syntax the archive can encode"
    )


def prepare(path: Path, target: str, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> Dataset:
    """The dataset of the Part 10 file at ``path``, ready for pynetdicom to send in ``target``.

    Its ``file_meta.TransferSyntaxUID`` and encoding are ``target``'s, which is what pynetdicom's
    ``send_c_store`` uses to pick the accepted context. The file is read completely: it may be
    removed as soon as this returns.
    """
    try:
        ds = dcmread(path)
    except Exception as exc:
        raise TranscodeError(f"cannot read stored object: {exc}") from exc
    source = UID(ds.file_meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian)
    wanted = UID(target)
    if source == wanted:
        return ds
    try:
        if source.is_encapsulated:
            if any(tag in ds for tag in _PIXEL_TAGS):
                _decompress(ds, source, max_decoded_bytes)
            # An encapsulated syntax is explicit VR little endian for everything but pixel data.
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            source = UID(ExplicitVRLittleEndian)
        if wanted.is_encapsulated:
            _to_native(ds, source, UID(ExplicitVRLittleEndian))
            _check_size(ds, max_decoded_bytes, "encoding")
            ds.compress(wanted, generate_instance_uid=False)
        else:
            _to_native(ds, source, wanted)
    except PacsError:
        raise
    except Exception as exc:  # pydicom and its plugins raise all sorts: name the step and the cause
        raise TranscodeError(f"cannot transcode {_name(source)} to {_name(wanted)}: {exc}") from exc
    return ds


def _decompress(ds: Dataset, source: UID, limit: int) -> None:
    if not _can_decode(source):
        raise TranscodeError(f"no decoder for {_name(source)}")
    _check_size(ds, limit, "decoding")
    ds.decompress(generate_instance_uid=False)


def _check_size(ds: Dataset, limit: int, what: str) -> None:
    size = (
        int(ds.get("Rows") or 0)
        * int(ds.get("Columns") or 0)
        * int(ds.get("NumberOfFrames") or 1)
        * int(ds.get("SamplesPerPixel") or 1)
        * ((int(ds.get("BitsAllocated") or 8) + 7) // 8)
    )
    if size > limit:
        raise TranscodeError(
            f"{what} needs {size / 2**20:.0f} MiB of pixels in memory, over the {limit / 2**20:.0f} MiB limit"
        )


def _to_native(ds: Dataset, source: UID, target: UID) -> None:
    """Re-encode a native dataset from ``source``'s encoding to ``target``'s."""
    before = (source.is_implicit_VR, source.is_little_endian)
    after = (target.is_implicit_VR, target.is_little_endian)
    if before != after:
        # Decode every raw element in its own encoding, so none is written back in the old one, and
        # settle the VRs an implicit VR source leaves open ("US or SS", "OB or OW") in its byte order.
        for _ in ds.iterall():
            pass
        correct_ambiguous_vr(ds, before[1])
        if before[1] != after[1]:
            bits = int(ds.get("BitsAllocated") or 8)
            for element in ds.iterall():
                _swap_bytes(element, bits)
        ds.set_original_encoding(after[0], after[1], ds.original_character_set)
    ds.file_meta.TransferSyntaxUID = target


def _swap_bytes(element: DataElement, bits_allocated: int) -> None:
    """Byte-swap the words of an OW/OF/OL/OD/OV value (numbers of other VRs are decoded values,
    which pydicom writes in the target byte order by itself)."""
    size = _WORD_SIZES.get(str(element.VR))
    value = element.value
    if size is None or not isinstance(value, bytes | bytearray) or not value:
        return
    if element.tag == 0x7FE00010 and bits_allocated in (16, 32, 64):
        size = bits_allocated // 8  # pixel samples are swapped whole (as pydicom reads them)
    if len(value) % size:
        raise TranscodeError(f"{element.tag} has {len(value)} bytes, not a multiple of its {size}-byte words")
    element.value = np.frombuffer(value, dtype=f"u{size}").byteswap().tobytes()


def _can_decode(syntax: UID) -> bool:
    try:
        return bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def _can_encode(syntax: UID) -> bool:
    try:
        return bool(get_encoder(syntax).is_available)
    except (NotImplementedError, ValueError):
        return False


def _name(uid: str) -> str:
    return UID(uid).keyword or str(uid)


def _names(uids: Iterable[str]) -> str:
    return ", ".join(sorted(_name(u) for u in uids))
