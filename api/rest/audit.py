"""REST: the audit trail (``pacs.audit``), for auditors and admins: filtered, as JSON, JSON lines or
DICOM audit messages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.auth import require
from api.deps import archive_of
from api.rest.errors import http_error
from pacs.audit import Action, AuditEntry, dicom_audit_message, json_lines
from pacs.context import CallerContext
from pacs.errors import PacsError
from pacs.security import Permission

router = APIRouter(tags=["audit"])

MAX_LIMIT = 10_000


class Entry(BaseModel):
    seq: int = Field(description="position in the chain, from 1, without gaps")
    at: str = Field(description="when, UTC, ISO 8601 with microseconds")
    action: str
    outcome: str = Field(description="success, refused (not allowed or not understood) or failure")
    via: str | None = Field(description="the path in: c-store, c-find, http, cli, ...")
    user: str | None
    ae_title: str | None
    address: str | None
    part_id: str | None
    uids: list[str] = Field(description="Study Instance UIDs concerned")
    detail: dict[str, Any]
    prev_hash: str
    hash: str = Field(description="SHA-256 of the other fields as canonical JSON (sorted keys, no spaces)")


@router.get(
    "/audit",
    summary="The audit trail, filtered by part, user, action and time",
    response_model=list[Entry],
    responses={
        200: {
            "content": {"application/x-ndjson": {}, "application/xml": {}},
            "description": "JSON (default), JSON lines (format=jsonl) or DICOM audit messages (format=dicom)",
        },
        503: {"description": "index unavailable"},
    },
)
def audit_trail(
    request: Request,
    caller: Annotated[CallerContext, Depends(require(Permission.AUDIT))],
    part_id: Annotated[str | None, Query(max_length=64, description="the part ID (PatientID)")] = None,
    user: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[Action | None, Query()] = None,
    since: Annotated[dt.datetime | None, Query(description="from this time on (ISO 8601)")] = None,
    until: Annotated[dt.datetime | None, Query(description="before this time (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
    format: Annotated[Literal["json", "jsonl", "dicom"], Query()] = "json",
) -> Any:
    """Oldest first. ``format=jsonl`` streams one entry per line with every field its hash covers, so
    a copy can be checked offline; ``format=dicom`` streams PS3.15 A.5 audit messages (RFC 3881 XML),
    one per line, for an audit record repository."""
    archive = archive_of(request)
    filters: dict[str, Any] = {
        "part_id": part_id,
        "user": user,
        "action": str(action) if action else None,
        "since": _aware(since),
        "until": _aware(until),
        "limit": limit,
        "offset": offset,
    }
    try:
        if format == "json":
            return [entry.to_json() for entry in archive.audit.entries(**filters)]
        entries = archive.audit.iterate(**filters)
        first = next(entries, None)  # errors before the response starts
    except PacsError as exc:
        raise http_error(exc) from exc
    source = archive.settings.ae_title

    def body() -> Iterator[str]:
        rest = _chain(first, entries)
        if format == "jsonl":
            yield from json_lines(rest)
        else:
            yield '<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessages>\n'
            for entry in rest:
                yield dicom_audit_message(entry, source) + "\n"
            yield "</AuditMessages>\n"

    media = "application/x-ndjson" if format == "jsonl" else "application/xml"
    return StreamingResponse(body(), media_type=media)


def _chain(first: AuditEntry | None, rest: Iterator[AuditEntry]) -> Iterator[AuditEntry]:
    if first is not None:
        yield first
        yield from rest


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)
