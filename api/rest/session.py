"""Who the caller is: ``GET /api/me``, for clients (the viewer) that sign in with a token."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from api.auth import require
from api.deps import archive_of
from pacs.context import CallerContext
from pacs.security import ROLE_PERMISSIONS, Permission

router = APIRouter(tags=["session"])


class Me(BaseModel):
    name: str
    role: str
    permissions: list[Permission] = Field(description="what the role grants, in a fixed order")
    token_expires_at: dt.datetime | None = Field(description="when the API token stops working; null: never")


@router.get(
    "/me",
    summary="The user the API token belongs to, its role and permissions",
    response_model=Me,
    responses={401: {"description": "no token, or an unknown, revoked or expired one"}},
)
def me(request: Request, caller: Annotated[CallerContext, Depends(require(None))]) -> Me:
    """Any valid token may ask; a client uses the answer to sign in and to show what the role allows."""
    assert caller.user is not None  # require() authenticated a user
    user = archive_of(request).users.get(caller.user)
    if user is None:  # removed between the two reads: cannot happen, users are never deleted
        raise HTTPException(401, "the API token is unknown or revoked")
    granted = ROLE_PERMISSIONS[user.role]
    return Me(
        name=user.name,
        role=user.role.value,
        permissions=[p for p in Permission if p in granted],
        token_expires_at=user.expires_at,
    )
