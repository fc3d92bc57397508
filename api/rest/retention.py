"""REST: legal holds (auditors, admins) and deletion requests (admins), ``pacs.retention``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from api.auth import require
from api.deps import archive_of
from api.rest.errors import http_error
from pacs.context import CallerContext
from pacs.errors import PacsError
from pacs.retention import DeletionRefused, InspectionState
from pacs.security import Permission

router = APIRouter(tags=["retention"])


class HoldRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="the case, order or claim the hold is for")


@router.get("/holds", summary="Legal holds, active ones (or all)")
def list_holds(
    request: Request,
    caller: Annotated[CallerContext, Depends(require(Permission.AUDIT))],
    include_released: bool = False,
) -> list[dict[str, Any]]:
    try:
        return [h.to_json() for h in archive_of(request).retention.holds(include_released=include_released)]
    except PacsError as exc:
        raise http_error(exc) from exc


@router.post(
    "/parts/{part_id:path}/hold",
    summary="Place a legal hold on a part: none of its inspections may be deleted",
    status_code=201,
    responses={400: {"description": "held already"}, 404: {"description": "no such part"}},
)
def place_hold(
    request: Request,
    part_id: str,
    body: HoldRequest,
    caller: Annotated[CallerContext, Depends(require(Permission.AUDIT))],
) -> dict[str, Any]:
    try:
        return archive_of(request).retention.place_hold(part_id, body.reason, caller).to_json()
    except PacsError as exc:
        raise http_error(exc) from exc


@router.delete(
    "/parts/{part_id:path}/hold",
    summary="Release a part's legal hold",
    responses={404: {"description": "no active hold"}},
)
def release_hold(
    request: Request, part_id: str, caller: Annotated[CallerContext, Depends(require(Permission.AUDIT))]
) -> dict[str, Any]:
    try:
        return archive_of(request).retention.release_hold(part_id, caller).to_json()
    except PacsError as exc:
        raise http_error(exc) from exc


@router.delete(
    "/inspections/{study}",
    summary="Request the deletion of an inspection (carried out by `pacs purge` after the grace period)",
    status_code=202,
    responses={
        404: {"description": "no such inspection"},
        409: {"description": "refused: legal hold, or retention not expired (the detail says until when)"},
    },
)
def request_delete(
    request: Request,
    study: str,
    reason: Annotated[str, Query(min_length=1, max_length=2000)],
    caller: Annotated[CallerContext, Depends(require(Permission.ADMIN))],
) -> dict[str, Any]:
    try:
        state = archive_of(request).retention.request_delete(study, reason, caller)
    except DeletionRefused as exc:
        raise HTTPException(409, str(exc)) from exc
    except PacsError as exc:
        raise http_error(exc) from exc
    return _state(state)


def _state(state: InspectionState) -> dict[str, Any]:
    return {
        "study_instance_uid": state.study_instance_uid,
        "part_id": state.part_id,
        "date": state.date.isoformat(),
        "keep_until": state.keep_until.isoformat() if state.keep_until else None,
        "rule": state.rule,
        "delete_requested_at": state.delete_requested_at.isoformat() if state.delete_requested_at else None,
        "delete_requested_by": state.delete_requested_by,
        "delete_reason": state.delete_reason,
    }
