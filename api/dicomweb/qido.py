"""QIDO-RS (PS3.18 10.6): search for studies (inspections), series and instances.

A thin translation: :mod:`pacs.query.qido` turns the query string into the archive's query model,
:class:`pacs.services.search.SearchService` answers it from the index (no stored object is opened),
and each match is written as DICOM JSON. Results are ``200`` with a JSON array, an empty one when
nothing matched; a request the archive cannot answer is ``400`` with the reason, an ``Accept`` it
cannot satisfy ``406``, an index failure ``503``.
"""

from __future__ import annotations

import json
from contextlib import closing
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from api.auth import require
from api.deps import archive_of
from pacs.context import CallerContext
from pacs.errors import InvalidQuery, ResourceUnavailable
from pacs.query.model import Level
from pacs.query.qido import DEFAULT_LIMIT, MAX_LIMIT, qido_search
from pacs.security import Permission

router = APIRouter()

Caller = Annotated[CallerContext, Depends(require(Permission.QUERY))]

DICOM_JSON = "application/dicom+json"
_MEDIA_TYPES = (DICOM_JSON, "application/json")
# Parameters of the HTTP exchange rather than of the query (PS3.18 8.3.3.1, 8.3.3.2).
_ACCEPT_PARAMETER = "accept"
_CHARSET_PARAMETER = "charset"

_PARAMETERS_DOC = [
    {
        "name": "{attribute}",
        "in": "query",
        "required": False,
        "description": "Match an attribute, by keyword (PatientID) or tag (00100020), or a path into a "
        "sequence (IndicationSequence.IndicationType): a value, * and ? wildcards, a date range "
        "20240101-20240131, a comma-separated list of UIDs. Repeated or backslash-separated values "
        "match when any does.",
        "schema": {"type": "string"},
    },
    {
        "name": "includefield",
        "in": "query",
        "required": False,
        "description": "Attributes to return beside the defaults: keywords, tags, or all; repeated or "
        "comma-separated.",
        "schema": {"type": "array", "items": {"type": "string"}},
        "style": "form",
        "explode": True,
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"Results per response, default {DEFAULT_LIMIT}, at most {MAX_LIMIT}.",
        "schema": {"type": "integer", "minimum": 1},
    },
    {
        "name": "offset",
        "in": "query",
        "required": False,
        "description": "Results to skip (in arrival order).",
        "schema": {"type": "integer", "minimum": 0},
    },
    {
        "name": "fuzzymatching",
        "in": "query",
        "required": False,
        "description": "false only: matching is literal (person names regardless of case).",
        "schema": {"type": "string", "enum": ["false"]},
    },
]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The matches as a DICOM JSON array (empty when nothing matched); a Warning "
        "header when the results were cut at the limit or the limit was lowered.",
        "content": {DICOM_JSON: {"schema": {"type": "array", "items": {"type": "object"}}}},
    },
    400: {"description": "A parameter or value the archive cannot use; the reason is in detail."},
    406: {"description": "Neither application/dicom+json nor application/json is acceptable."},
    503: {"description": "The index is unavailable."},
}
_OPENAPI = {"parameters": _PARAMETERS_DOC}


def _route(path: str, name: str, summary: str) -> Any:
    return router.get(
        path,
        name=name,
        summary=summary,
        response_class=Response,
        responses=_RESPONSES,
        openapi_extra=_OPENAPI,
    )


@_route("/studies", "qido_studies", "Search for inspections (studies)")
def search_studies(request: Request, caller: Caller) -> Response:
    return _search(request, Level.STUDY)


@_route("/series", "qido_series", "Search for series")
def search_series(request: Request, caller: Caller) -> Response:
    return _search(request, Level.SERIES)


@_route("/instances", "qido_instances", "Search for instances")
def search_instances(request: Request, caller: Caller) -> Response:
    return _search(request, Level.IMAGE)


@_route("/studies/{study}/series", "qido_study_series", "Search for the series of an inspection")
def search_study_series(request: Request, study: str, caller: Caller) -> Response:
    return _search(request, Level.SERIES, study_uid=study)


@_route("/studies/{study}/instances", "qido_study_instances", "Search for the instances of an inspection")
def search_study_instances(request: Request, study: str, caller: Caller) -> Response:
    return _search(request, Level.IMAGE, study_uid=study)


@_route(
    "/studies/{study}/series/{series}/instances",
    "qido_series_instances",
    "Search for the instances of a series",
)
def search_series_instances(request: Request, study: str, series: str, caller: Caller) -> Response:
    return _search(request, Level.IMAGE, study_uid=study, series_uid=series)


def _search(
    request: Request, level: Level, *, study_uid: str | None = None, series_uid: str | None = None
) -> Response:
    parameters = list(request.query_params.multi_items())
    accept = [value for name, value in parameters if name == _ACCEPT_PARAMETER]
    media_type = _negotiate(accept or request.headers.getlist("accept"))
    for name, value in parameters:
        if name == _CHARSET_PARAMETER and value.strip().lower() not in ("utf-8", "utf8"):
            raise HTTPException(406, f"results are UTF-8 only, not charset={value!r}")
    parameters = [(n, v) for n, v in parameters if n not in (_ACCEPT_PARAMETER, _CHARSET_PARAMETER)]
    try:
        search = qido_search(level, parameters, study_uid=study_uid, series_uid=series_uid)
        with closing(archive_of(request).search.find(search.query)) as matches:
            page, more = search.page(matches)
    except InvalidQuery as exc:
        raise HTTPException(400, str(exc)) from exc
    except ResourceUnavailable as exc:
        raise HTTPException(503, str(exc)) from exc
    base_url = str(request.url_for("qido_studies")).removesuffix("/studies")
    body = json.dumps([search.result(found, base_url) for found in page], ensure_ascii=False)
    response = Response(body.encode("utf-8"), media_type=media_type)
    warnings = list(search.warnings)
    if more:
        warnings.append(
            f"The number of results exceeded the limit of {search.limit}. Additional results can be "
            f"requested with offset={search.offset + search.limit}."
        )
    for text in warnings:
        # RFC 7234 5.5: 299 = miscellaneous persistent warning (PS3.18 10.6.3.2).
        response.headers.append("Warning", f'299 {request.url.netloc} "{text}"')
    return response


def _negotiate(accept: list[str]) -> str:
    """The media type of the results for the ``Accept`` values (header or ``accept`` parameter)."""
    ranges = [part.strip() for value in accept for part in value.split(",") if part.strip()]
    if not ranges:
        return DICOM_JSON
    best: tuple[float, int, str] | None = None
    for position, text in enumerate(ranges):
        media_range, _, params = text.partition(";")
        media_range = media_range.strip().lower()
        quality = _quality(params)
        if quality <= 0:
            continue
        for media_type in _MEDIA_TYPES:
            if _covers(media_range, media_type):
                candidate = (quality, -position, media_type)
                if best is None or candidate > best:
                    best = candidate
                break
    if best is None:
        raise HTTPException(
            406, f"search results are {' or '.join(_MEDIA_TYPES)}; not acceptable: {', '.join(ranges)}"
        )
    return best[2]


def _covers(media_range: str, media_type: str) -> bool:
    if media_range in ("*/*", "*"):
        return True
    if media_range.endswith("/*"):
        return media_type.startswith(media_range[:-1])
    return media_range == media_type


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0
