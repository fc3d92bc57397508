"""Every authenticated HTTP request goes into the audit trail (``pacs.audit``), from one ASGI middleware.

The route's permission says what kind of act it was: query, retrieve (view for rendered images and
thumbnails), store, export (evidence packages, sending to a node), a change of the node registry; the
status says the outcome (below 400 success, 4xx refused, 5xx failure). The inspection comes from the
path's ``{study}``, the part from ``{part_id}`` or a ``PatientID`` / ``part_id`` query parameter; a
route can add more with :func:`note`. Requests without a valid token never reach a route: the failed
login itself is recorded by ``api.auth``. Entries are queued and written in batches
(:meth:`pacs.audit.AuditTrail.record_later`), so a request does not wait for the audit commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import LOGIN, required_permission
from pacs.audit import Action, AuditEvent, Outcome
from pacs.security import Permission

log = logging.getLogger(__name__)

_VIEWS = ("/rendered", "/thumbnail")
_UNKNOWN: Any = object()


def note(
    request: Request, *, part_id: str | None = None, uids: Sequence[str] = (), instances: Sequence[str] = ()
) -> None:
    """What a route knows beyond its path: the part, inspections and instances it acted on."""
    request.state.audit_part_id = part_id
    request.state.audit_uids = list(uids)
    request.state.audit_instances = list(instances)


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                try:
                    _record(scope, int(message["status"]))
                except Exception:  # auditing must never break the answer; say so loudly
                    log.exception(
                        "cannot queue the audit entry of %s %s", scope.get("method"), scope.get("path")
                    )
            await send(message)

        await self.app(scope, receive, sending)


def _record(scope: Scope, status: int) -> None:
    state: dict[str, Any] = scope.get("state") or {}
    caller = state.get("caller")
    route = scope.get("route")
    if caller is None or route is None or not hasattr(route, "dependant"):
        return
    permission = getattr(route, "_audit_permission", _UNKNOWN)  # found once per route
    if permission is _UNKNOWN:
        permission = route._audit_permission = required_permission(route)
    method = scope.get("method", "GET")
    path: str = scope.get("path", "")
    action = _action(permission, method, path)
    if action is None:
        return
    params: dict[str, Any] = scope.get("path_params") or {}
    query = _query(scope)
    part_id = (
        state.get("audit_part_id") or params.get("part_id") or query.get("PatientID") or query.get("part_id")
    )
    uids = list(state.get("audit_uids") or ([params["study"]] if "study" in params else []))
    detail = {"method": method, "path": path, "status": status}
    if scope.get("query_string"):
        detail["query"] = scope["query_string"].decode("latin-1")[:500]
    outcome = Outcome.SUCCESS if status < 400 else Outcome.REFUSED if status < 500 else Outcome.FAILURE
    archive = scope["app"].state.archive
    archive.audit.record_later(
        AuditEvent(
            action,
            caller,
            outcome,
            part_id=part_id,
            uids=uids,
            detail=detail,
            instances=state.get("audit_instances") or (),
        )
    )


def _action(permission: Permission | str | None, method: str, path: str) -> Action | None:
    if permission == Permission.QUERY:
        return Action.QUERY
    if permission == Permission.RETRIEVE:
        return Action.VIEW if any(v in path for v in _VIEWS) else Action.RETRIEVE
    if permission == Permission.STORE:
        return Action.STORE
    if permission == Permission.AUDIT:
        if path.endswith("/evidence"):
            return Action.EXPORT
        return Action.QUERY if method == "GET" else None  # holds: recorded by pacs.retention itself
    if permission == Permission.ADMIN:
        if path.startswith("/api/inspections"):
            return None  # deletion requests: recorded by pacs.retention in their own transaction
        if path.startswith("/api/nodes"):
            if path.endswith("/send"):
                return Action.EXPORT
            if path.endswith("/echo"):
                return None
            return Action.QUERY if method == "GET" else Action.NODE_CHANGE
        return Action.QUERY if method == "GET" else Action.CONFIG_CHANGE
    if permission == LOGIN:
        return None
    return None


def _query(scope: Scope) -> dict[str, str]:
    from urllib.parse import parse_qsl

    raw = scope.get("query_string") or b""
    return dict(parse_qsl(raw.decode("latin-1"))) if raw else {}
