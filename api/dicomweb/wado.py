"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, streamed.

Instances go out as ``multipart/related; type="application/dicom"`` (one Part 10 object a part);
the Accept header's ``transfer-syntax`` picks the encoding: ``*`` or the stored syntax sends the
stored bytes untouched, another syntax a lossless conversion, none Explicit VR Little Endian
(PS3.18 8.7.3.5.2 default). A single instance may also be asked for as plain ``application/dicom``
(the single-part form Supplement 183 allowed and dicomweb-client still accepts).

Errors: :class:`~pacs.errors.NotFound` 404, :class:`~pacs.errors.InvalidQuery` 400,
:class:`~pacs.errors.ResourceUnavailable` 503, nothing acceptable 406, each with a reason in
``detail``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.auth import require
from api.deps import archive_dependency
from api.dicomweb import multipart
from api.dicomweb.multipart import MediaRange, Part
from api.dicomweb.streaming import prefetched
from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.dicom.transcode import TranscodeError
from pacs.errors import InvalidObject, InvalidQuery, NotFound, PacsError, ResourceUnavailable
from pacs.security import Permission
from pacs.services.retrieve import RetrieveItem
from pacs.services.wado import (
    EXPLICIT_LE,
    FrameForm,
    Frames,
    NotAcceptable,
    WadoService,
    parse_frame_list,
)

log = logging.getLogger(__name__)

router = APIRouter()

Caller = Annotated[CallerContext, Depends(require(Permission.RETRIEVE))]
ArchiveDep = Annotated[Archive, Depends(archive_dependency)]

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"


def http_error(exc: PacsError) -> NoReturn:
    """Raise the HTTP error of an archive error, with its message as the reason."""
    if isinstance(exc, NotFound):
        status = 404
    elif isinstance(exc, NotAcceptable | TranscodeError):
        status = 406
    elif isinstance(exc, InvalidQuery | InvalidObject):
        status = 400
    elif isinstance(exc, ResourceUnavailable):
        status = 503
    else:
        status = 500
    raise HTTPException(status_code=status, detail=str(exc)) from exc


def check_uids(*uids: str | None) -> None:
    """UIDs taken from a URL: a NUL or another control character is in no stored UID, and
    PostgreSQL cannot even compare a text with a NUL (it would fail as an index error)."""
    for uid in uids:
        if uid is not None and any(ord(char) < 0x20 for char in uid):
            raise HTTPException(status_code=400, detail=f"a control character in the UID {uid[:80]!r}")


def accepted_ranges(request: Request) -> list[MediaRange]:
    """The Accept header's media ranges; the ``accept`` query parameter (PS3.18 8.3.3.1) wins."""
    header = request.query_params.get("accept") or request.headers.get("accept")
    try:
        return multipart.parse_accept(header)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


def _instance_accept(ranges: list[MediaRange], single_allowed: bool) -> tuple[bool, list[str]]:
    """(single part?, accepted transfer syntaxes) for an instance retrieval; 406 if nothing fits."""
    multipart_syntaxes: list[str] = []
    single_syntaxes: list[str] = []
    for r in ranges:
        if r.multipart and r.type in (None, DICOM, "*/*", "application/*"):
            multipart_syntaxes.append(r.transfer_syntax or EXPLICIT_LE)
        elif r.media_type in ("*/*", "multipart/*"):
            multipart_syntaxes.append(EXPLICIT_LE)
        elif r.media_type == DICOM and single_allowed:
            single_syntaxes.append(r.transfer_syntax or EXPLICIT_LE)
    if multipart_syntaxes:
        return False, multipart_syntaxes
    if single_syntaxes:
        return True, single_syntaxes
    raise HTTPException(
        status_code=406,
        detail=f'instances are sent as multipart/related; type="{DICOM}"'
        + (f" or {DICOM}" if single_allowed else "")
        + f", not as {', '.join(str(r) for r in ranges)}",
    )


# -- instances ---------------------------------------------------------------------------------------
def _retrieve(
    request: Request, archive: Archive, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    check_uids(study, series, instance)
    single, accepted = _instance_accept(accepted_ranges(request), single_allowed=instance is not None)
    wado = WadoService(archive.retrieve)
    try:
        items = wado.items(study, series, instance)
        plan = [(item, wado.instance_syntax(item.transfer_syntax_uid, accepted)) for item in items]
        # The first object is opened now, so a missing one is a 404/503 rather than a cut response.
        first_item, first_syntax = plan[0]
        opened = wado.open(first_item.version) if first_syntax == first_item.transfer_syntax_uid else None
        first_body = None if opened is not None else wado.transcoded(first_item, first_syntax)
    except PacsError as exc:
        http_error(exc)
    parts = []
    for index, (item, syntax) in enumerate(plan):
        if index == 0 and first_body is not None:
            parts.append(Part(_part_type(syntax), [first_body], length=len(first_body)))
        elif syntax == item.transfer_syntax_uid:
            body = wado.stored_chunks(item.version, opened if index == 0 else None)
            parts.append(Part(_part_type(syntax), body, length=item.version.size))
        else:
            parts.append(Part(_part_type(syntax), _transcoding(wado, item, syntax)))
    if single:
        part = parts[0]
        headers = {"Content-Length": str(part.length)} if part.length is not None else {}
        return StreamingResponse(_body(part.body), media_type=part.content_type, headers=headers)
    return _multipart_response(parts, DICOM)


def _part_type(syntax: str) -> str:
    return f"{DICOM}; transfer-syntax={syntax}"


def _transcoding(wado: WadoService, item: RetrieveItem, syntax: str) -> Iterator[bytes]:
    data = memoryview(wado.transcoded(item, syntax))
    for start in range(0, len(data), multipart_chunk()):
        yield bytes(data[start : start + multipart_chunk()])


def multipart_chunk() -> int:
    return 1 << 20


def _body(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    """A response body of ``chunks`` read from the store: one chunk read ahead on a reader thread
    while the previous one is sent (:mod:`api.dicomweb.streaming`)."""
    return prefetched(_guarded(chunks))


def _guarded(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Chunks of a response already started: an error now can only cut the body short (the
    client sees a short Content-Length or an unterminated multipart), and is logged."""
    try:
        yield from chunks
    except PacsError as exc:
        log.error("response cut short: %s", exc)
        raise


def _multipart_response(parts: list[Part], part_type: str) -> StreamingResponse:
    boundary = multipart.new_boundary()
    total = multipart.length(boundary, parts)
    headers = {"Content-Length": str(total)} if total is not None else {}
    return StreamingResponse(
        _body(multipart.stream(boundary, parts)),
        media_type=multipart.content_type(boundary, part_type),
        headers=headers,
    )


@router.get(
    "/studies/{study}",
    summary="Retrieve a study (WADO-RS)",
    response_class=StreamingResponse,
    responses={200: {"content": {'multipart/related; type="application/dicom"': {}}}},
)
def retrieve_study(request: Request, study: str, caller: Caller, archive: ArchiveDep) -> Response:
    """Every current instance of the study, one Part 10 object a part."""
    return _retrieve(request, archive, study)


@router.get(
    "/studies/{study}/series/{series}",
    summary="Retrieve a series (WADO-RS)",
    response_class=StreamingResponse,
    responses={200: {"content": {'multipart/related; type="application/dicom"': {}}}},
)
def retrieve_series(
    request: Request, study: str, series: str, caller: Caller, archive: ArchiveDep
) -> Response:
    return _retrieve(request, archive, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="Retrieve an instance (WADO-RS)",
    response_class=StreamingResponse,
    responses={200: {"content": {'multipart/related; type="application/dicom"': {}, DICOM: {}}}},
)
def retrieve_instance(
    request: Request, study: str, series: str, instance: str, caller: Caller, archive: ArchiveDep
) -> Response:
    return _retrieve(request, archive, study, series, instance)


# -- metadata ----------------------------------------------------------------------------------------
def _metadata(
    request: Request, archive: Archive, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    check_uids(study, series, instance)
    ranges = accepted_ranges(request)
    if not any(r.media_type in (DICOM_JSON, "application/json", "application/*", "*/*") for r in ranges):
        raise HTTPException(
            status_code=406,
            detail=f"metadata is sent as {DICOM_JSON}, not as {', '.join(str(r) for r in ranges)}",
        )
    root = _dicomweb_root(request)
    wado = WadoService(archive.retrieve)

    def bulk_base(model: dict[str, Any]) -> str:
        return (
            f"{root}/studies/{_value(model, '0020000D', study)}/series/{_value(model, '0020000E', series)}"
            f"/instances/{_value(model, '00080018', instance)}/bulkdata"
        )

    try:
        models = wado.metadata(wado.items(study, series, instance), bulk_base)
    except PacsError as exc:
        http_error(exc)
    return JSONResponse(models, media_type=DICOM_JSON)


def _dicomweb_root(request: Request) -> str:
    """The absolute URL of the DICOMweb root this request came through (``.../dicom-web``)."""
    path = request.url.path
    prefix = path[: path.index("/studies/")] if "/studies/" in path else path.rsplit("/", 1)[0]
    return f"{request.url.scheme}://{request.url.netloc}{prefix}"


def _value(model: dict[str, Any], tag: str, fallback: str | None) -> str:
    values = (model.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else str(fallback or "")


@router.get("/studies/{study}/metadata", summary="Study metadata (WADO-RS), from the index")
def study_metadata(request: Request, study: str, caller: Caller, archive: ArchiveDep) -> Response:
    return _metadata(request, archive, study)


@router.get("/studies/{study}/series/{series}/metadata", summary="Series metadata (WADO-RS), from the index")
def series_metadata(
    request: Request, study: str, series: str, caller: Caller, archive: ArchiveDep
) -> Response:
    return _metadata(request, archive, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="Instance metadata (WADO-RS), from the index",
)
def instance_metadata(
    request: Request, study: str, series: str, instance: str, caller: Caller, archive: ArchiveDep
) -> Response:
    return _metadata(request, archive, study, series, instance)


# -- frames and bulk data ----------------------------------------------------------------------------
def _frame_wants(ranges: list[MediaRange]) -> list[tuple[str | None, str | None]]:
    """(part media type or None for any, transfer syntax) of each acceptable multipart range."""
    wants: list[tuple[str | None, str | None]] = []
    for r in ranges:
        if r.multipart:
            wants.append((r.type, r.transfer_syntax))
        elif r.media_type in ("*/*", "multipart/*"):
            wants.append((None, r.transfer_syntax))
    return wants


def _frames_of(wado: WadoService, study: str, series: str, instance: str) -> Frames:
    (item,) = wado.items(study, series, instance)
    return wado.frames(item.version)


def _frame_part(wado: WadoService, frames: Frames, number: int, form: FrameForm) -> Part:
    data = wado.frame(frames, number, form)
    return Part(f"{form.media_type}; transfer-syntax={form.transfer_syntax}", [data], length=len(data))


def _lazy_frames(wado: WadoService, frames: Frames, numbers: list[int], form: FrameForm) -> Iterator[Part]:
    for number in numbers:
        yield _frame_part(wado, frames, number, form)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}",
    summary="Frames of an instance (WADO-RS), by byte ranges of the stored object",
    response_class=StreamingResponse,
)
def retrieve_frames(
    request: Request,
    study: str,
    series: str,
    instance: str,
    frame_list: str,
    caller: Caller,
    archive: ArchiveDep,
) -> Response:
    """``frames/1,3``: one part a frame, in the order asked. Native pixels as
    ``application/octet-stream``; an encapsulated object's frames in their own media type
    (``image/jp2``, ``image/jpeg``, ``image/jls``, ...), or decoded when the Accept header asks
    for ``application/octet-stream`` (Explicit VR Little Endian)."""
    check_uids(study, series, instance)
    ranges = accepted_ranges(request)
    wado = WadoService(archive.retrieve)
    try:
        numbers = parse_frame_list(frame_list)
        frames = _frames_of(wado, study, series, instance)
        form = wado.frame_form(frames, _frame_wants(ranges))
        bad = [n for n in numbers if n > frames.count]
        if bad:
            raise NotFound(
                f"{instance} has {frames.count} frame(s): no frame {', '.join(str(n) for n in bad)}"
            )
        first = _frame_part(wado, frames, numbers[0], form)  # errors before the response starts
    except PacsError as exc:
        http_error(exc)
    boundary = multipart.new_boundary()
    parts = [first]

    def body() -> Iterator[bytes]:
        yield from multipart.stream(boundary, _chain(parts, _lazy_frames(wado, frames, numbers[1:], form)))

    return StreamingResponse(_body(body()), media_type=multipart.content_type(boundary, form.media_type))


def _chain(first: list[Part], rest: Iterator[Part]) -> Iterator[Part]:
    yield from first
    yield from rest


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}",
    summary="A bulk data element of an instance (WADO-RS), as the metadata's BulkDataURI names it",
    response_class=StreamingResponse,
)
def retrieve_bulkdata(
    request: Request,
    study: str,
    series: str,
    instance: str,
    path: str,
    caller: Caller,
    archive: ArchiveDep,
) -> Response:
    """``bulkdata/7FE00010``: the pixel data, read by byte ranges frame by frame (native: one
    ``application/octet-stream`` part; encapsulated: one part a frame in its own media type).
    Any other path (``bulkdata/00282000``, ``bulkdata/00540016/1/00181072``) is read from the
    stored header. ``Accept: application/octet-stream`` gets a single-part body."""
    check_uids(study, series, instance)
    ranges = accepted_ranges(request)
    wants = _frame_wants(ranges)
    single = not wants and any(r.media_type == OCTET_STREAM for r in ranges)
    if not wants and not single:
        raise HTTPException(
            status_code=406,
            detail="bulk data is sent as multipart/related or application/octet-stream, "
            f"not as {', '.join(str(r) for r in ranges)}",
        )
    wado = WadoService(archive.retrieve)
    segments = [p for p in path.split("/") if p]
    try:
        (item,) = wado.items(study, series, instance)
        if len(segments) == 1 and segments[0].upper() in ("7FE00010", "7FE00008", "7FE00009"):
            frames = wado.frames(item.version)
            if frames.encapsulated:
                if single:
                    raise NotAcceptable(
                        "encapsulated pixel data is sent as multipart/related, one part a frame"
                    )
                form = wado.frame_form(frames, wants)
                numbers = list(range(1, frames.count + 1))
                first = _frame_part(wado, frames, 1, form)
                boundary = multipart.new_boundary()
                stream = multipart.stream(
                    boundary, _chain([first], _lazy_frames(wado, frames, numbers[1:], form))
                )
                return StreamingResponse(
                    _body(stream), media_type=multipart.content_type(boundary, form.media_type)
                )
            form = FrameForm(OCTET_STREAM, EXPLICIT_LE, False)
            first_frame = wado.frame(frames, 1, form)
            chunks = _chain_bytes(
                first_frame, (wado.frame(frames, n, form) for n in range(2, frames.count + 1))
            )
            size = len(first_frame) * frames.count
            content_type = f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_LE}"
            if single:
                return StreamingResponse(
                    _body(chunks), media_type=content_type, headers={"Content-Length": str(size)}
                )
            return _multipart_response([Part(content_type, chunks, length=size)], OCTET_STREAM)
        _, value = wado.bulk_element(item.version, segments)
    except PacsError as exc:
        http_error(exc)
    if single:
        return Response(value, media_type=OCTET_STREAM)
    return _multipart_response([Part(OCTET_STREAM, [value], length=len(value))], OCTET_STREAM)


def _chain_bytes(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
