"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.7).

An instance or frame is rendered to ``image/jpeg`` (the default) or ``image/png``; the media type
comes from the ``accept`` query parameter, else the Accept header, and anything else is 406.
Query parameters (PS3.18 8.3.5): ``window=center,width[,linear|linear-exact|sigmoid]``,
``viewport=vw,vh`` or ``vw,vh,sx,sy,sw,sh``, ``quality=1..100`` (JPEG). A malformed one is 400
with the reason.

Rendered instance of a multi-frame object: its first frame; a frame list: its first frame (one
single-frame image per response). Thumbnails: fitted into 128x128 unless ``viewport`` says
otherwise; of a multi-frame instance the middle frame; of a series or a study, a representative
instance: the first in retrieve order (series number, instance number) that has pixel data.
Series and study ``rendered`` (a multipart of every rendered instance) is not offered: 400.

Only the frame's byte ranges are read from the stored object, never the whole object.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.responses import Response

from api.auth import require
from api.deps import archive_dependency
from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.dicom import render
from pacs.dicom.retrieve_keys import InformationModel, RetrieveRequest
from pacs.errors import InvalidObject, InvalidQuery, NotFound, PacsError, ResourceUnavailable
from pacs.index.repository import VersionRow
from pacs.security import Permission

router = APIRouter()

THUMBNAIL_SIZE = 128
_REPRESENTATIVE_CANDIDATES = 50  # instances tried for a series/study thumbnail before giving up

Caller = Annotated[CallerContext, Depends(require(Permission.RETRIEVE))]
ArchiveDep = Annotated[Archive, Depends(archive_dependency)]
WindowParam = Annotated[
    str | None,
    Query(description="center,width[,function]; function linear (default), linear-exact or sigmoid"),
]
ViewportParam = Annotated[
    str | None, Query(description="vw,vh (fit, keeping aspect) or vw,vh,sx,sy,sw,sh (source region)")
]
QualityParam = Annotated[str | None, Query(description="JPEG quality 1..100 (default 90)")]
AcceptParam = Annotated[str | None, Query(alias="accept", description="image/jpeg or image/png")]
AcceptHeader = Annotated[str | None, Header(alias="accept")]

_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {render.JPEG: {}, render.PNG: {}}, "description": "The rendered image"},
    400: {"description": "A malformed parameter, or pixel data that cannot be rendered"},
    404: {"description": "No such study, series, instance or frame"},
    406: {"description": "Neither image/jpeg nor image/png is acceptable"},
}


# -- instance and frames ------------------------------------------------------------------------
@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/rendered",
    summary="An instance rendered as JPEG or PNG (first frame of a multi-frame instance)",
    responses=_RESPONSES,
)
def rendered_instance(
    study: str,
    series: str,
    instance: str,
    caller: Caller,
    archive: ArchiveDep,
    window: WindowParam = None,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
    accept_header: AcceptHeader = None,
) -> Response:
    return _render(archive, study, series, instance, None, window, viewport, quality, accept, accept_header)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
    summary="A frame rendered as JPEG or PNG (the first of the frame list)",
    responses=_RESPONSES,
)
def rendered_frames(
    study: str,
    series: str,
    instance: str,
    frames: str,
    caller: Caller,
    archive: ArchiveDep,
    window: WindowParam = None,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
    accept_header: AcceptHeader = None,
) -> Response:
    number = _frame_list(frames)[0]
    return _render(archive, study, series, instance, number, window, viewport, quality, accept, accept_header)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
    summary="A thumbnail of an instance (the middle frame of a multi-frame instance)",
    responses=_RESPONSES,
)
def thumbnail_instance(
    study: str,
    series: str,
    instance: str,
    caller: Caller,
    archive: ArchiveDep,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
    accept_header: AcceptHeader = None,
) -> Response:
    return _render(
        archive, study, series, instance, None, None, viewport, quality, accept, accept_header, thumbnail=True
    )


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
    summary="A thumbnail of a frame (the first of the frame list)",
    responses=_RESPONSES,
)
def thumbnail_frames(
    study: str,
    series: str,
    instance: str,
    frames: str,
    caller: Caller,
    archive: ArchiveDep,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
    accept_header: AcceptHeader = None,
) -> Response:
    number = _frame_list(frames)[0]
    return _render(
        archive,
        study,
        series,
        instance,
        number,
        None,
        viewport,
        quality,
        accept,
        accept_header,
        thumbnail=True,
    )


# -- series and study ---------------------------------------------------------------------------
@router.get(
    "/studies/{study}/series/{series}/thumbnail",
    summary="A thumbnail of a series: its first instance with pixel data",
    responses=_RESPONSES,
)
def thumbnail_series(
    study: str,
    series: str,
    caller: Caller,
    archive: ArchiveDep,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
    accept_header: AcceptHeader = None,
) -> Response:
    return _representative(archive, (study,), (series,), viewport, quality, accept, accept_header)


@router.get(
    "/studies/{study}/thumbnail",
    summary="A thumbnail of a study (inspection): its first instance with pixel data",
    responses=_RESPONSES,
)
def thumbnail_study(
    study: str,
    caller: Caller,
    archive: ArchiveDep,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
    accept_header: AcceptHeader = None,
) -> Response:
    return _representative(archive, (study,), (), viewport, quality, accept, accept_header)


@router.get(
    "/studies/{study}/series/{series}/rendered",
    summary="Not offered: render an instance or a frame instead",
    responses={400: {"description": "Always"}},
)
def rendered_series(study: str, series: str, caller: Caller) -> Response:
    raise HTTPException(400, "rendered series are not offered: request .../instances/{uid}/rendered")


@router.get(
    "/studies/{study}/rendered",
    summary="Not offered: render an instance or a frame instead",
    responses={400: {"description": "Always"}},
)
def rendered_study(study: str, caller: Caller) -> Response:
    raise HTTPException(400, "rendered studies are not offered: request .../instances/{uid}/rendered")


# -- the work -----------------------------------------------------------------------------------
def _render(
    archive: Archive,
    study: str,
    series: str,
    instance: str,
    frame_number: int | None,
    window: str | None,
    viewport: str | None,
    quality: str | None,
    accept: str | None,
    accept_header: str | None,
    *,
    thumbnail: bool = False,
) -> Response:
    media_type = negotiate(accept, accept_header)
    try:
        options = _Options.parse(window, viewport, quality)
        request = RetrieveRequest(
            InformationModel.STUDY_ROOT,
            "IMAGE",
            study_uids=(study,),
            series_uids=(series,),
            sop_instance_uids=(instance,),
        )
        items = archive.retrieve.resolve(request)
        if not items:
            raise NotFound(f"no instance {instance} in series {series} of study {study}")
        body = _render_version(archive, items[0].version, frame_number, options, media_type, thumbnail)
    except PacsError as exc:
        raise _http_error(exc) from exc
    return Response(body, media_type=media_type)


def _representative(
    archive: Archive,
    studies: tuple[str, ...],
    series: tuple[str, ...],
    viewport: str | None,
    quality: str | None,
    accept: str | None,
    accept_header: str | None,
) -> Response:
    media_type = negotiate(accept, accept_header)
    try:
        options = _Options.parse(None, viewport, quality)
        level = "SERIES" if series else "STUDY"
        request = RetrieveRequest(InformationModel.STUDY_ROOT, level, study_uids=studies, series_uids=series)
        items = archive.retrieve.resolve(request)
        if not items:
            raise NotFound(f"no instances in {level.lower()} {(series or studies)[0]}")
        for item in items[:_REPRESENTATIVE_CANDIDATES]:
            if archive.retrieve.metadata(item.version).get("frames"):
                body = _render_version(archive, item.version, None, options, media_type, True)
                return Response(body, media_type=media_type)
        raise NotFound(f"no instance with renderable pixel data in {level.lower()} {(series or studies)[0]}")
    except PacsError as exc:
        raise _http_error(exc) from exc


class _Options:
    def __init__(self, window: render.Window | None, viewport: render.Viewport | None, quality: int) -> None:
        self.window, self.viewport, self.quality = window, viewport, quality

    @classmethod
    def parse(cls, window: str | None, viewport: str | None, quality: str | None) -> _Options:
        return cls(
            render.parse_window(window) if window else None,
            render.parse_viewport(viewport) if viewport else None,
            render.parse_quality(quality) if quality else 90,
        )


def _render_version(
    archive: Archive,
    version: VersionRow,
    frame_number: int | None,
    options: _Options,
    media_type: str,
    thumbnail: bool,
) -> bytes:
    metadata = archive.retrieve.metadata(version)
    dicom_json = metadata["dicom_json"]
    layout = metadata.get("frames")
    if not layout:
        if "7FE00010" not in dicom_json and "7FE00008" not in dicom_json and "7FE00009" not in dicom_json:
            raise NotFound(f"{version.sop_instance_uid} has no pixel data to render")
        raise InvalidObject(
            f"the frames of {version.sop_instance_uid} cannot be located in its stored bytes "
            f"(transfer syntax {version.transfer_syntax_uid}); retrieve the instance instead"
        )
    if frame_number is None:
        frame_number = render.representative_frame(len(layout)) if thumbnail else 1
    viewport = options.viewport
    if viewport is None and thumbnail:
        viewport = _thumbnail_viewport(dicom_json)
    frame = archive.retrieve.frame(version, frame_number, layout)
    return render.render_frame(
        frame,
        dicom_json,
        version.transfer_syntax_uid,
        frame_number,
        window=options.window,
        viewport=viewport,
        media_type=media_type,
        quality=options.quality,
    )


def _thumbnail_viewport(dicom_json: dict[str, object]) -> render.Viewport | None:
    """Fit into THUMBNAIL_SIZE squared; never enlarge a smaller image."""
    pixels = render.PixelModule.of(dicom_json)
    if max(pixels.rows, pixels.columns) <= THUMBNAIL_SIZE:
        return None
    return render.Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)


def _frame_list(text: str) -> list[int]:
    """``1,3,5`` (PS3.18 10.4.1.1.2): positive frame numbers."""
    numbers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise HTTPException(400, f"frame list {text!r}: frame numbers are integers from 1")
        numbers.append(int(part))
    return numbers


def negotiate(accept: str | None, accept_header: str | None) -> str:
    """The media type to answer with: the ``accept`` query parameter wins over the Accept header
    (PS3.18 8.3.3.1); image/jpeg when either allows it equally; 406 when neither type is acceptable."""
    text = accept if accept else accept_header
    if not text or not text.strip():
        return render.JPEG
    best: tuple[float, int, str] | None = None
    for preference, candidate in enumerate((render.JPEG, render.PNG)):
        quality = _acceptability(text, candidate)
        if quality > 0 and (best is None or (quality, -preference) > best[:2]):
            best = (quality, -preference, candidate)
    if best is None:
        raise HTTPException(406, f"cannot render as {text!r}: image/jpeg or image/png only")
    return best[2]


def _acceptability(accept: str, media_type: str) -> float:
    """The q-value ``accept`` gives ``media_type``: the most specific matching range decides."""
    kind = media_type.split("/")[0]
    found: tuple[int, float] | None = None
    for media_range in accept.split(","):
        fields = [f.strip() for f in media_range.split(";")]
        name = fields[0].lower()
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        specificity = {media_type: 3, f"{kind}/*": 2, "*/*": 1, "*": 1}.get(name)
        if specificity is not None and (found is None or specificity > found[0]):
            found = (specificity, q)
    return found[1] if found else 0.0


def _http_error(exc: PacsError) -> HTTPException:
    if isinstance(exc, NotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, InvalidQuery | InvalidObject):
        return HTTPException(400, str(exc))
    if isinstance(exc, ResourceUnavailable):
        return HTTPException(503, str(exc))
    return HTTPException(500, str(exc))
