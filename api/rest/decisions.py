"""REST: inspection decisions (``pacs.decisions``): an inspector records a disposition, confirmed by
re-entering their API token; everybody who may query reads them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from api.auth import failed_logins, require
from api.deps import archive_of
from api.rest.errors import http_error
from pacs.audit import Action, AuditEvent, Outcome
from pacs.context import CallerContext
from pacs.decisions import MAX_COMMENT, DecisionConflict, Disposition
from pacs.errors import PacsError
from pacs.security import Permission

router = APIRouter(tags=["decisions"])


class NewDecision(BaseModel):
    disposition: Disposition
    comment: str = Field("", max_length=MAX_COMMENT, description="why; required unless accepted")
    credential: str = Field(
        min_length=1, max_length=200, description="the inspector's own API token, entered again to confirm"
    )


class DecisionOut(BaseModel):
    id: int
    study_instance_uid: str
    part_id: str
    disposition: Disposition
    comment: str
    user: str
    decided_at: dt.datetime
    supersedes: int | None = Field(description="the decision this one replaces")
    superseded_by: int | None = Field(description="the decision that replaced this one")
    current: bool


@router.post(
    "/inspections/{study}/decisions",
    summary="Record a decision on an inspection (it supersedes the current one)",
    response_model=DecisionOut,
    status_code=201,
    responses={
        400: {"description": "a disposition other than accepted without a comment"},
        403: {"description": "the credential is not the caller's token, or the role may not decide"},
        404: {"description": "no such inspection"},
        409: {"description": "decisions arriving at the same moment; try again"},
    },
)
def decide(
    request: Request,
    study: str,
    body: NewDecision,
    caller: Annotated[CallerContext, Depends(require(Permission.DECIDE))],
) -> dict[str, Any]:
    archive = archive_of(request)
    confirmed = archive.users.authenticate(body.credential)
    if confirmed is None or confirmed.name != caller.user or confirmed.expired():
        host = request.client.host if request.client else "unknown"
        failed_logins(request.app).failed(host)
        archive.audit.record_later(
            AuditEvent(
                Action.DECISION,
                caller,
                Outcome.REFUSED,
                uids=[study],
                detail={"disposition": str(body.disposition), "reason": "credential not confirmed"},
            )
        )
        raise HTTPException(403, f"the credential entered does not confirm the user {caller.user}")
    try:
        made = archive.decisions.record(study, body.disposition, body.comment, caller)
    except DecisionConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    except PacsError as exc:
        raise http_error(exc) from exc
    return made.to_json()


@router.get(
    "/inspections/{study}/decisions",
    summary="Every decision on an inspection, oldest first",
    response_model=list[DecisionOut],
    responses={404: {"description": "no such inspection"}},
)
def inspection_decisions(
    request: Request, study: str, caller: Annotated[CallerContext, Depends(require(Permission.QUERY))]
) -> list[dict[str, Any]]:
    try:
        return [d.to_json() for d in archive_of(request).decisions.for_inspection(study)]
    except PacsError as exc:
        raise http_error(exc) from exc


@router.get(
    "/parts/{part_id:path}/decisions",
    summary="Every decision on every inspection of a part, oldest first",
    response_model=list[DecisionOut],
)
def part_decisions(
    request: Request, part_id: str, caller: Annotated[CallerContext, Depends(require(Permission.QUERY))]
) -> list[dict[str, Any]]:
    try:
        return [d.to_json() for d in archive_of(request).decisions.for_part(part_id)]
    except PacsError as exc:
        raise http_error(exc) from exc
