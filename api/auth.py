"""Authentication of HTTP requests: ``Authorization: Bearer <token>`` to a user and role.

Every route declares what it needs with ``Depends(require(Permission.X))`` and gets the caller as
a :class:`pacs.context.CallerContext`.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from pacs.context import CallerContext
from pacs.security import Permission


def require(permission: Permission) -> Callable[[Request], CallerContext]:
    """A FastAPI dependency: the authenticated caller, if their role grants ``permission``."""

    def dependency(request: Request) -> CallerContext:
        # Placeholder until token authentication lands: every caller is let through.
        client = request.client
        return CallerContext(via="http", address=f"{client.host}:{client.port}" if client else None)

    dependency.__name__ = f"require_{permission.value}"
    return dependency
