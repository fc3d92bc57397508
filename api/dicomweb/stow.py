"""STOW-RS (PS3.18 10.5): store instances through the ingest service, one part at a time.

Each part of a ``multipart/related; type="application/dicom"`` body is written into a new store
object while it streams in (hashed on the way, :class:`pacs.services.ingest.Incoming`, as a
C-STORE is), then checked, committed and indexed by ``IngestService.ingest_incoming``: the same
write rule, so a part that fails leaves nothing behind and an identical re-send is a no-op.
Parts are independent: a bad part fails alone, parts before a cut-off one stay stored.

Response (PS3.18 10.5.3): an ``application/dicom+json`` data set with Retrieve URL (0008,1190),
Referenced SOP Sequence (0008,1199) and Failed SOP Sequence (0008,1198, with Failure Reason
(0008,1197) from PS3.4 Annex B.2.3 / PS3.18 Table 10.5.3-3); each failure's reason also in a
``Warning: 299`` header (PS3.18 8.3.2). Status 200 when every part was stored, 202 when some
were, 409 when none was, 400 when none was and the body itself was malformed or cut off, 415
for another media type. A body that stops arriving for ``network_timeout`` seconds ends the request
(408, the part it stopped in discarded, the connection closed), as a silent association ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from api.audit import note
from api.auth import require
from api.deps import archive_of
from api.dicomweb.multipart_in import (
    MultipartError,
    MultipartReader,
    Part,
    PartSink,
    UnsupportedMediaType,
    related_boundary,
)
from api.rest.errors import RETRY_AFTER_SECONDS
from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.dicom.parse import read_header
from pacs.diconde.encodings import STORED_TRANSFER_SYNTAXES, storage_sop_classes
from pacs.errors import InvalidObject, ObjectMismatch, ResourceUnavailable
from pacs.security import Permission
from pacs.services.ingest import Incoming

log = logging.getLogger(__name__)

router = APIRouter()
Caller = Annotated[CallerContext, Depends(require(Permission.STORE))]

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"

# Failure Reason (0008,1197) values, PS3.18 Table 10.5.3-3 and PS3.4 Table B.2-1.
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

_MAX_WARNINGS = 20  # Warning headers per response; every failure is in the body regardless
_LAST_UID_TAG = 0x0020000E  # Series Instance UID: the last of the UIDs a part is named by


@dataclass(frozen=True)
class _Header:
    """The identifying UIDs of a received part, read from its header (never the pixel data)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    transfer_syntax_uid: str | None


@dataclass(frozen=True)
class _PartResult:
    number: int
    header: _Header | None
    failure: int | None = None  # Failure Reason; None: stored (or an identical copy was kept)
    reason: str | None = None


_STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "every instance stored (an identical re-send counts as stored)"},
    202: {"description": "some instances stored, the others listed in Failed SOP Sequence"},
    400: {"description": "malformed request: no boundary, no part, or a malformed body and nothing stored"},
    408: {"description": "no body data for network_timeout seconds; the open part is discarded"},
    409: {"description": "no instance stored; reasons in Failed SOP Sequence and Warning headers"},
    503: {"description": "nothing stored: storage or index unavailable, disk full (each part 0xA700)"},
    415: {"description": 'not multipart/related; type="application/dicom"'},
}


@router.post(
    "/studies",
    summary="STOW-RS: store instances",
    responses=_STOW_RESPONSES,
    response_class=JSONResponse,
)
async def store_instances(request: Request, caller: Caller) -> Response:
    return await _stow(request, caller, None)


@router.post(
    "/studies/{study}",
    summary="STOW-RS: store instances of one study",
    responses=_STOW_RESPONSES,
    response_class=JSONResponse,
)
async def store_study_instances(study: str, request: Request, caller: Caller) -> Response:
    """An instance of another study fails with 0xA900 and is not stored."""
    return await _stow(request, caller, study)


async def _stow(request: Request, caller: CallerContext, study: str | None) -> Response:
    try:
        boundary = related_boundary(request.headers.get("content-type"), DICOM)
    except UnsupportedMediaType as exc:
        raise HTTPException(415, str(exc)) from None
    except MultipartError as exc:
        raise HTTPException(400, str(exc)) from None
    archive = archive_of(request)
    ctx = replace(caller, via="stow")
    reader = MultipartReader(boundary, lambda part: _open_part(archive, part))
    results: list[_PartResult] = []
    pending: list[Part] = []
    idle = archive.settings.network_timeout
    chunks = request.stream().__aiter__()
    try:
        while True:
            try:
                # A body that stops coming (a Content-Length never sent) holds a new store object
                # open: give up on it as DIMSE gives up on a silent association.
                with anyio.fail_after(idle):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            pending.extend(reader.feed(chunk))
            while pending:
                part = pending.pop(0)
                results.append(await anyio.to_thread.run_sync(_store_part, archive, part, study, ctx))
            if reader.error is not None:
                break  # a framing error: the rest of the body cannot be told apart
        cut = reader.close()
        if cut is not None:
            results.append(await anyio.to_thread.run_sync(_store_part, archive, cut, study, ctx))
    except ClientDisconnect:
        stored = sum(1 for r in results if r.failure is None)
        log.warning(
            "STOW-RS from %s: the client went away inside part %d; %d part(s) stored before",
            ctx.describe(),
            reader.parts_seen,
            stored,
        )
        return Response(status_code=400)  # nobody reads it
    except TimeoutError:
        stored = sum(1 for r in results if r.failure is None)
        log.warning(
            "STOW-RS from %s: no data for %.0f s inside part %d; %d part(s) stored before",
            ctx.describe(),
            idle,
            reader.parts_seen,
            stored,
        )
        return JSONResponse(
            {"detail": f"no data for {idle:.0f} s: the request body stopped inside part {reader.parts_seen}"},
            status_code=408,
            headers={"Connection": "close"},
        )
    finally:
        for left in [*pending, reader.close()]:
            if left is not None:
                _abort(left.sink)
    if reader.parts_seen == 0:
        raise HTTPException(400, f"the body has no part delimited by boundary {boundary.decode('latin-1')!r}")
    kept = [r.header for r in results if r.failure is None and r.header is not None]
    note(  # the audit entry (api.audit): what was stored, the trail finds the parts
        request,
        uids=sorted({h.study_instance_uid for h in kept if h.study_instance_uid}),
        instances=[h.sop_instance_uid for h in kept if h.sop_instance_uid],
    )
    return _response(request, study, results, malformed=reader.error is not None)


def _open_part(archive: Archive, part: Part) -> PartSink | None:
    """Where a part's bytes go: a new store object for a DICOM part, nowhere for anything else."""
    content_type = part.content_type
    # A part without Content-Type is taken as the body's root type, application/dicom.
    if content_type not in (None, DICOM):
        part.refused = f"part {part.number}: Content-Type {content_type!r} is not {DICOM}"
        return None
    try:
        return _Part10Writer(archive.ingest.receive())
    except ResourceUnavailable as exc:
        part.refused = f"part {part.number}: {exc}"
        return None


def _store_part(archive: Archive, part: Part, study: str | None, ctx: CallerContext) -> _PartResult:
    """Check, commit and index one received part (runs on a worker thread: parsing, fsync and the
    index transaction block)."""
    writer = part.sink if isinstance(part.sink, _Part10Writer) else None
    if writer is None:  # refused by _open_part, or broken before its headers ended
        if part.refused is not None and part.content_type in (None, DICOM):
            return _failed(part, None, OUT_OF_RESOURCES, part.refused, ctx)
        return _failed(part, None, CANNOT_UNDERSTAND, part.refused or part.error or "unreadable", ctx)
    incoming = writer.finish()
    header = _read_header(incoming.path)
    if part.error is not None:
        incoming.abort()
        return _failed(part, header, CANNOT_UNDERSTAND, part.error, ctx)
    if header is not None:
        ts = header.transfer_syntax_uid
        if ts and ts not in STORED_TRANSFER_SYNTAXES:
            incoming.abort()
            return _failed(
                part, header, TRANSFER_SYNTAX_NOT_SUPPORTED, f"transfer syntax {ts} is not stored", ctx
            )
        sop_class = header.sop_class_uid
        if sop_class and sop_class not in storage_sop_classes():
            incoming.abort()
            return _failed(
                part,
                header,
                SOP_CLASS_NOT_SUPPORTED,
                f"SOP Class {sop_class} is not a storage SOP class the archive stores",
                ctx,
            )
        if study is not None and header.study_instance_uid != study:
            incoming.abort()
            return _failed(
                part,
                header,
                DATA_SET_DOES_NOT_MATCH,
                f"Study Instance UID {header.study_instance_uid} is not the study of the request, {study}",
                ctx,
            )
    try:
        archive.ingest.ingest_incoming(incoming, ctx)  # commits or discards the object
    except ObjectMismatch as exc:
        return _failed(part, header, DATA_SET_DOES_NOT_MATCH, str(exc), ctx)
    except InvalidObject as exc:
        return _failed(part, header, CANNOT_UNDERSTAND, str(exc), ctx)
    except ResourceUnavailable as exc:
        return _failed(part, header, OUT_OF_RESOURCES, str(exc), ctx)
    except Exception as exc:  # a bug of ours: fail this part, keep serving
        log.exception("STOW-RS part %d from %s failed unexpectedly", part.number, ctx.describe())
        return _failed(part, header, PROCESSING_FAILURE, f"internal error: {type(exc).__name__}", ctx)
    return _PartResult(part.number, header)


def _failed(part: Part, header: _Header | None, status: int, reason: str, ctx: CallerContext) -> _PartResult:
    # Ingest messages name the object by its store key; the part number means more to the client.
    if isinstance(part.sink, _Part10Writer):
        reason = reason.replace(part.sink.incoming.key, f"part {part.number}")
    if not reason.startswith("part "):
        reason = f"part {part.number}: {reason}"
    log.warning("STOW-RS %s from %s refused (0x%04X)", reason, ctx.describe(), status)
    return _PartResult(part.number, header, status, reason)


def _abort(sink: PartSink | None) -> None:
    if isinstance(sink, _Part10Writer):
        sink.incoming.abort()  # nothing happens once committed


class _Part10Writer:
    """Writes a part into a new store object as a Part 10 file.

    PS3.18 8.6.1.2 wants application/dicom parts in the PS3.10 format, but common clients
    (dicomweb-client, through pydicom's ``dcmwrite`` of a dataset read without a preamble) send
    the File Meta Information without the 128-byte preamble and ``DICM`` prefix. Such a part is
    stored with a zero preamble and the prefix in front; its data set bytes, which are the
    instance's identity (:mod:`pacs.dicom.digest`), are kept exactly as sent.
    """

    _HEAD = 132  # preamble + DICM

    def __init__(self, incoming: Incoming) -> None:
        self.incoming = incoming
        self._head: bytearray | None = bytearray()
        self.added_preamble = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._head is None:
            return self.incoming.write(data)
        self._head += data
        if len(self._head) >= self._HEAD:
            self._flush_head()
        return len(data)

    def finish(self) -> Incoming:
        """The part has ended: its object, with every byte written."""
        if self._head is not None:
            self._flush_head()
        return self.incoming

    def _flush_head(self) -> None:
        assert self._head is not None
        head, self._head = bytes(self._head), None
        if head[128:132] != b"DICM" and head[:2] == b"\x02\x00":  # starts with a group 0002 element
            self.incoming.write(bytes(128) + b"DICM")
            self.added_preamble = True
        self.incoming.write(head)


def _read_header(path: Path) -> _Header | None:
    """The part's UIDs, for the response and the study check; None when it is not Part 10 DICOM
    (the ingest then says why). Read only as far as the UIDs, in bounded memory whatever the part
    holds (a deflated data set is inflated only that far)."""
    try:
        with path.open("rb") as f:
            ds = read_header(f, name=path.name, last_tag=_LAST_UID_TAG)
    except (InvalidObject, OSError):
        return None
    meta = getattr(ds, "file_meta", None)

    def text(value: object) -> str | None:
        return (str(value).strip() or None) if value else None

    try:
        return _Header(
            sop_class_uid=text(ds.get("SOPClassUID") or (meta and meta.get("MediaStorageSOPClassUID"))),
            sop_instance_uid=text(
                ds.get("SOPInstanceUID") or (meta and meta.get("MediaStorageSOPInstanceUID"))
            ),
            study_instance_uid=text(ds.get("StudyInstanceUID")),
            series_instance_uid=text(ds.get("SeriesInstanceUID")),
            transfer_syntax_uid=text(meta.get("TransferSyntaxUID")) if meta is not None else None,
        )
    except Exception:  # a value pydicom cannot convert: the ingest says why the part is refused
        return None


# -- the response ---------------------------------------------------------------------------------
def _response(
    request: Request, study: str | None, results: list[_PartResult], *, malformed: bool
) -> Response:
    base = _dicomweb_base(request)
    stored = [r for r in results if r.failure is None]
    failed = [r for r in results if r.failure is not None]
    body: dict[str, Any] = {}
    studies = {r.header.study_instance_uid for r in stored if r.header is not None}
    retrieve_study = study or (studies.pop() if len(studies) == 1 else None)
    if retrieve_study:
        body["00081190"] = _element("UR", f"{base}/studies/{retrieve_study}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed_item(r) for r in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_referenced_item(r, base) for r in stored]}
    headers: dict[str, str] = {}
    if not failed:
        status = 200
    elif stored:
        status = 202
    elif malformed:
        status = 400
    elif all(r.failure is not None and r.failure & 0xFF00 == OUT_OF_RESOURCES for r in failed):
        # Storage or index unavailable, or the disk full: nothing is wrong with the request, so not
        # 409 (a conflict in the request, PS3.18 10.5.3) but 503 (PS3.18 8.5): send it again later.
        status = 503
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    else:
        status = 409
    warnings = [f'299 NDT-archive "{_header_text(r.reason or "")}"' for r in failed[:_MAX_WARNINGS]]
    response = JSONResponse(body, status_code=status, media_type=DICOM_JSON, headers=headers)
    for warning in warnings:
        response.headers.append("Warning", warning)
    return response


def _dicomweb_base(request: Request) -> str:
    """The absolute URL of the DICOMweb root this request came in under (…/dicom-web)."""
    url = str(request.url.replace(query=""))
    return url[: url.rindex("/studies")]


def _element(vr: str, value: str | int | None) -> dict[str, Any]:
    return {"vr": vr} if value is None else {"vr": vr, "Value": [value]}


def _referenced_item(result: _PartResult, base: str) -> dict[str, Any]:
    header = result.header
    assert header is not None  # stored, so it was readable
    return {
        "00081150": _element("UI", header.sop_class_uid),
        "00081155": _element("UI", header.sop_instance_uid),
        "00081190": _element(
            "UR",
            f"{base}/studies/{header.study_instance_uid}/series/{header.series_instance_uid}"
            f"/instances/{header.sop_instance_uid}",
        ),
    }


def _failed_item(result: _PartResult) -> dict[str, Any]:
    header = result.header
    return {
        "00081150": _element("UI", header.sop_class_uid if header else None),
        "00081155": _element("UI", header.sop_instance_uid if header else None),
        "00081197": _element("US", result.failure),
    }


def _header_text(text: str) -> str:
    """A Warning header's quoted text: one latin-1 line without quotes or backslashes, kept short."""
    clean = " ".join(text.split()).replace('"', "'").replace("\\", "/")
    return clean.encode("latin-1", "replace").decode("latin-1")[:300]
