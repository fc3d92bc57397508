"""Transfer syntaxes the archive stores as received (no transcoding at ingest), and the SOP classes
it stores.

Everything pydicom knows of that carries pixel data inside the object: native (implicit and explicit
VR little endian, explicit big endian, deflated), JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000
(lossless and lossy, parts 1 and 2), HTJ2K, RLE and the MPEG/H.264/HEVC video syntaxes used by
ultrasound. Left out: the JPIP "referenced" syntaxes (pixel data lives on another server) and the
SMPTE ST 2110 real-time streaming syntaxes.
"""

from __future__ import annotations

from functools import cache

from pydicom import uid

_EXCLUDED = {
    uid.JPIPHTJ2KReferenced,
    uid.JPIPHTJ2KReferencedDeflate,
    uid.SMPTEST211020UncompressedProgressiveActiveVideo,
    uid.SMPTEST211020UncompressedInterlacedActiveVideo,
    uid.SMPTEST211030PCMDigitalAudio,
}

#: In order of preference where the archive chooses (uncompressed first, as PS3.5 10.1 requires
#: Implicit VR Little Endian be supported by all).
STORED_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(
    str(ts) for ts in uid.AllTransferSyntaxes if ts not in _EXCLUDED
)

_JPEG_FAMILY = {str(ts) for ts in uid.JPEGTransferSyntaxes} | {str(ts) for ts in uid.JPEGLSTransferSyntaxes}
_J2K_FAMILY = {str(ts) for ts in uid.JPEG2000TransferSyntaxes} | {
    str(uid.HTJ2KLossless),
    str(uid.HTJ2KLosslessRPCL),
    str(uid.HTJ2K),
}
_VIDEO = {str(ts) for ts in uid.MPEGTransferSyntaxes}


def codestream_start_marker(transfer_syntax: str) -> bytes | None:
    """The bytes every frame's codestream starts with, used to find frame boundaries when the
    offset tables are empty (PS3.5 A.4): JPEG/JPEG-LS SOI, JPEG 2000/HTJ2K SOC."""
    if transfer_syntax in _JPEG_FAMILY:
        return b"\xff\xd8"
    if transfer_syntax in _J2K_FAMILY:
        return b"\xff\x4f"
    return None


def is_video(transfer_syntax: str) -> bool:
    """Video streams have no per-frame byte ranges; a frame exists only once decoded."""
    return transfer_syntax in _VIDEO


@cache
def storage_sop_classes() -> tuple[str, ...]:
    """Every storage SOP class pynetdicom knows (DX, CR, CT, Enhanced CT, US, SC, Raw Data, PDF, ...):
    what the C-STORE SCP accepts and STOW-RS takes. Imported when first asked (pynetdicom is not
    light, and most commands never need it)."""
    from pynetdicom.presentation import AllStoragePresentationContexts

    return tuple(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
