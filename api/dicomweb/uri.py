"""WADO-URI (PS3.18 9) for legacy viewers: ``GET /dicom-web/wado?requestType=WADO&studyUID=...
&seriesUID=...&objectUID=...``.

``contentType=application/dicom`` sends the Part 10 object in ``transferSyntax`` (default
Explicit VR Little Endian, PS3.18 9.1.2.4.3): the stored bytes untouched when they are in that
syntax or when ``transferSyntax=*``, otherwise a lossless conversion (406 when none exists).
``contentType=image/jpeg`` (the standard's default) or ``image/png`` renders one frame
(``frameNumber``, default 1) with ``windowCenter``/``windowWidth``, ``rows``/``columns`` (fit
into, keeping the aspect) and ``imageQuality``. ``anonymize`` and ``region`` are not offered (400).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response, StreamingResponse

from api.auth import require
from api.deps import archive_dependency
from api.dicomweb.streaming import prefetched
from api.dicomweb.wado import DICOM, check_uids, http_error
from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.dicom import render
from pacs.errors import InvalidQuery, PacsError
from pacs.security import Permission
from pacs.services.retrieve import RetrieveItem
from pacs.services.wado import EXPLICIT_LE, FrameForm, WadoService

router = APIRouter()

Caller = Annotated[CallerContext, Depends(require(Permission.RETRIEVE))]
ArchiveDep = Annotated[Archive, Depends(archive_dependency)]
_OPTIONAL = Annotated[str | None, Query()]


@router.get(
    "/wado",
    summary="WADO-URI (PS3.18 9): an object as application/dicom, or a frame as image/jpeg or image/png",
    responses={
        200: {"content": {DICOM: {}, render.JPEG: {}, render.PNG: {}}},
        400: {"description": "A missing or malformed parameter"},
        404: {"description": "No such object"},
        406: {"description": "No content type in contentType can be produced"},
    },
)
def wado_uri(
    caller: Caller,
    archive: ArchiveDep,
    request_type: Annotated[str, Query(alias="requestType", description="WADO")],
    study_uid: Annotated[str, Query(alias="studyUID")],
    series_uid: Annotated[str, Query(alias="seriesUID")],
    object_uid: Annotated[str, Query(alias="objectUID")],
    content_type: Annotated[
        str | None,
        Query(alias="contentType", description="application/dicom, image/jpeg (default), image/png"),
    ] = None,
    transfer_syntax: Annotated[str | None, Query(alias="transferSyntax")] = None,
    frame_number: Annotated[int | None, Query(alias="frameNumber", ge=1)] = None,
    window_center: Annotated[float | None, Query(alias="windowCenter")] = None,
    window_width: Annotated[float | None, Query(alias="windowWidth")] = None,
    rows: Annotated[int | None, Query(ge=1, le=16384)] = None,
    columns: Annotated[int | None, Query(ge=1, le=16384)] = None,
    image_quality: Annotated[int | None, Query(alias="imageQuality", ge=1, le=100)] = None,
    anonymize: Annotated[str | None, Query()] = None,
    region: Annotated[str | None, Query()] = None,
) -> Response:
    if request_type != "WADO":
        raise HTTPException(400, f"requestType must be WADO, not {request_type!r}")
    check_uids(study_uid, series_uid, object_uid)
    for name, value in (("anonymize", anonymize), ("region", region)):
        if value is not None:
            raise HTTPException(400, f"{name} is not offered by this archive")
    wanted = [t.split(";")[0].strip().lower() for t in (content_type or render.JPEG).split(",") if t.strip()]
    wado = WadoService(archive.retrieve)
    try:
        (item,) = wado.items(study_uid, series_uid, object_uid)
        for media_type in wanted:
            if media_type in (DICOM, "application/*", "*/*"):
                return _object(wado, item, transfer_syntax or EXPLICIT_LE)
            if media_type in (render.JPEG, render.PNG, "image/*"):
                if (window_center is None) != (window_width is None):
                    raise InvalidQuery("windowCenter and windowWidth go together")
                window = (
                    render.Window(window_center, window_width)
                    if window_center is not None and window_width is not None
                    else None
                )
                viewport = render.Viewport(columns, rows) if rows or columns else None
                frames = wado.frames(item.version)
                number = frame_number or 1
                form = FrameForm("", frames.version.transfer_syntax_uid, False)
                frame = wado.frame(frames, number, form)
                body = render.render_frame(
                    frame,
                    wado.retrieve.metadata(item.version)["dicom_json"],
                    item.version.transfer_syntax_uid,
                    number,
                    window=window,
                    viewport=viewport,
                    media_type=render.PNG if media_type == render.PNG else render.JPEG,
                    quality=image_quality or 90,
                )
                return Response(body, media_type=render.PNG if media_type == render.PNG else render.JPEG)
    except PacsError as exc:
        http_error(exc)
    raise HTTPException(
        406, f"contentType {content_type!r}: this archive sends application/dicom, image/jpeg or image/png"
    )


def _object(wado: WadoService, item: RetrieveItem, syntax: str) -> Response:
    target = wado.instance_syntax(item.transfer_syntax_uid, [syntax])
    content_type = f"{DICOM}; transfer-syntax={target}"
    if target == item.transfer_syntax_uid:
        opened = wado.open(item.version)
        return StreamingResponse(
            prefetched(wado.stored_chunks(item.version, opened)),
            media_type=content_type,
            headers={"Content-Length": str(item.version.size), "Content-Disposition": _disposition(item)},
        )
    data = wado.transcoded(item, target)
    return Response(data, media_type=content_type, headers={"Content-Disposition": _disposition(item)})


def _disposition(item: RetrieveItem) -> str:
    return f'attachment; filename="{item.sop_instance_uid}.dcm"'
