"""REST: a part's evidence package (a signed ZIP, streamed) and the public key that verifies it
(``pacs.services.evidence``, ``pacs.signing``).

The router must be included before ``api.rest.parts``: that one's ``/parts/{part_id:path}`` would
otherwise take ``/parts/X/evidence`` for the part ``X/evidence``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from api.auth import require
from api.deps import archive_of
from api.rest.errors import http_error
from pacs.context import CallerContext
from pacs.errors import PacsError
from pacs.security import Permission
from pacs.services.evidence import EvidenceService
from pacs.signing import EvidenceKey

router = APIRouter(tags=["evidence"])


@router.get(
    "/parts/{part_id:path}/evidence",
    summary="A part's evidence package: signed ZIP with DICOMDIR, objects, manifest",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the package, streamed"},
        404: {"description": "no component with this part ID"},
        503: {"description": "index, object store or signing key unavailable"},
    },
)
def part_evidence(
    request: Request,
    part_id: str,
    caller: Annotated[CallerContext, Depends(require(Permission.AUDIT))],
    versions: Annotated[
        Literal["current", "all"],
        Query(description="current: the current version of each instance; all: superseded ones too"),
    ] = "current",
) -> StreamingResponse:
    """Every current instance of every inspection of the part (and superseded versions with
    ``versions=all``), a DICOMDIR, ``manifest.json``, ``decisions.json``, ``audit.jsonl``,
    ``evidence-key.pem`` and ``manifest.sig`` (Ed25519). Errors found before the first byte are
    answered as such; a store failure later cuts the connection, leaving a ZIP that
    ``pacs evidence verify`` reports as incomplete."""
    service = EvidenceService.for_archive(archive_of(request))
    try:
        plan = service.plan(part_id, include_superseded=versions == "all")
    except PacsError as exc:
        raise http_error(exc) from exc
    return StreamingResponse(
        service.stream(plan),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{plan.file_name()}"',
            "X-Evidence-Key-SHA256": plan.key.fingerprint(),
        },
    )


@router.get(
    "/system/evidence-key",
    summary="The public key (PEM) that verifies evidence packages",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"application/x-pem-file": {}}, "description": "SubjectPublicKeyInfo PEM"},
        503: {"description": "the key cannot be read or made"},
    },
)
def evidence_key(
    request: Request, caller: Annotated[CallerContext, Depends(require(None))]
) -> PlainTextResponse:
    """For any authenticated user: what ``pacs evidence verify --key`` takes."""
    path = archive_of(request).settings.evidence_key
    assert path is not None  # filled in by Settings
    try:
        key = EvidenceKey.load_or_create(path)
    except PacsError as exc:
        raise http_error(exc) from exc
    return PlainTextResponse(
        key.public_pem().decode("ascii"),
        media_type="application/x-pem-file",
        headers={"X-Evidence-Key-SHA256": key.fingerprint()},
    )
