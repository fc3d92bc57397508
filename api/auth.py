"""Authentication of HTTP requests: ``Authorization: Bearer <token>`` to a user and role.

Every route declares what it needs with ``Depends(require(Permission.X))`` and gets the caller as
a :class:`pacs.context.CallerContext`:

* no token, or a token that is unknown, revoked or expired: 401 with ``WWW-Authenticate: Bearer``
  (an expired token's detail starts "the API token expired", so a client can say so);
* a valid token whose role lacks the permission: 403 naming the role and the permission;
* a client address with too many failed logins (:class:`pacs.security.FailedLogins`): 429 with
  ``Retry-After``, whatever token it sends, until its failures leave the window. Failures are
  counted in the index, over every process and node; checking an address reads only the
  process's memory, so a request with a valid token costs no extra index query.

Each failed login is logged with the client address (never the token). A request without any token
is not counted as a failed login: a browser's first request has none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute, RouteContext
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.applications import Starlette

from api.deps import archive_of
from pacs.audit import Action, AuditEvent, Outcome
from pacs.context import CallerContext, host_port
from pacs.security import FailedLogins, Permission, allows

log = logging.getLogger(__name__)

# auto_error=False: the answers (401 with WWW-Authenticate, 429) are ours. It also puts the bearer
# scheme in the OpenAPI document, so /docs has an "Authorize" button.
_bearer = HTTPBearer(auto_error=False, description="an API token from `pacs users add NAME --role ROLE`")
_limiter_lock = threading.Lock()


def require(permission: Permission | None) -> Callable[..., CallerContext]:
    """A FastAPI dependency: the authenticated caller, if their role grants ``permission``
    (``None``: any authenticated caller, whatever the role)."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> CallerContext:
        client = request.client
        host = client.host if client else "unknown"
        address = host_port(client.host, client.port) if client else None
        limiter = failed_logins(request.app)
        wait = limiter.retry_after(host)
        if wait:
            raise HTTPException(
                429,
                f"too many failed logins from {host}; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        if credentials is None or not credentials.credentials:
            raise _unauthorized("an API token is required (Authorization: Bearer TOKEN)", error=None)
        try:
            user = archive_of(request).users.authenticate(credentials.credentials)
        except Exception as exc:  # the index is down: not the caller's fault, and not a failed login
            log.error("cannot check an API token from %s: %s", host, exc)
            raise HTTPException(503, "cannot check the API token: the index is unavailable") from None
        if user is None:
            limiter.failed(host)
            archive_of(request).audit.record_later(
                AuditEvent(
                    Action.LOGIN_FAILED,
                    CallerContext(via="http", address=address),
                    Outcome.REFUSED,
                    detail={
                        "method": request.method,
                        "path": request.url.path,
                        "reason": "unknown or revoked token",
                    },
                )
            )
            log.warning(
                "failed login from %s: unknown or revoked API token (%s %s)",
                host,
                request.method,
                request.url.path,
            )
            raise _unauthorized("the API token is unknown or revoked", error="invalid_token")
        if user.expired():
            # Not counted as a failed login: the holder had a valid token and only needs a new one.
            assert user.expires_at is not None
            log.info(
                "%s from %s: API token expired at %s",
                user.name,
                host,
                f"{user.expires_at:%Y-%m-%d %H:%M:%S}Z",
            )
            raise _unauthorized(
                f"the API token expired at {user.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
                f"an admin can issue a new one (pacs users renew {user.name})",
                error="invalid_token",
            )
        caller = CallerContext(via="http", user=user.name, address=address)
        request.state.caller = caller  # for the audit trail (api.audit), refusals included
        if permission is not None and not allows(user.role, permission):
            log.info(
                "%s (%s) from %s refused %s %s: needs %s",
                user.name,
                user.role,
                host,
                request.method,
                request.url.path,
                permission,
            )
            raise HTTPException(403, f"role {user.role} does not grant the {permission} permission")
        return caller

    dependency.__name__ = f"require_{permission.value if permission else 'login'}"
    dependency.permission = permission or LOGIN  # type: ignore[attr-defined]  # read by required_permission
    return dependency


#: What :func:`required_permission` reports for a route open to every authenticated caller.
LOGIN = "login"


def _unauthorized(detail: str, error: str | None) -> HTTPException:
    challenge = f'Bearer realm="pacs", error="{error}"' if error else 'Bearer realm="pacs"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def failed_logins(app: Starlette) -> FailedLogins:
    """The app's failed-login limit (one per application, made on first use), counted in the
    archive's index so that it holds across processes and nodes."""
    limiter: FailedLogins | None = getattr(app.state, "failed_logins", None)
    if limiter is None:
        with _limiter_lock:
            limiter = getattr(app.state, "failed_logins", None)
            if limiter is None:
                archive = getattr(app.state, "archive", None)
                shared = archive.login_failures if archive is not None else None
                limiter = app.state.failed_logins = FailedLogins(shared=shared)
    return limiter


def required_permission(route: APIRoute | RouteContext) -> Permission | str | None:
    """The permission a route declares with ``Depends(require(...))``, found in its dependencies
    (``dependencies=`` of the route or its router included: pass the route's
    :class:`fastapi.routing.RouteContext` from ``iter_route_contexts(app.routes)``); :data:`LOGIN`
    for a route any authenticated caller may use; None for an open route."""
    pending: list[Any] = [route.dependant]
    while pending:
        dependant = pending.pop()
        permission = getattr(dependant.call, "permission", None)
        if isinstance(permission, Permission) or permission == LOGIN:
            return permission
        pending.extend(dependant.dependencies)
    return None
