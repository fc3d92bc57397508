"""Prometheus metrics at ``/metrics`` (open, like ``/health``), and the HTTP request timing behind them.

:func:`instrument` wraps the application in :class:`RequestMetrics`, which times every request until
its response is complete and counts it by method, route template (``/api/parts/{part_id}``, never
the raw path, so the number of series stays bounded) and status; it also tells the services which
face their queries and retrieves come through (:func:`pacs.metrics.via_http`).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs import metrics

router = APIRouter()


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format 0.0.4), summed over the server's worker processes",
    response_class=Response,
    responses={200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "the metrics"}},
)
def prometheus_metrics() -> Response:
    """Stores (by path in and outcome, bytes), queries (C-FIND, QIDO-RS, REST: count and latency),
    retrieves (count and bytes), HTTP request latencies by route template and status, errors."""
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)


def instrument(app: FastAPI) -> None:
    """Time and count every request of ``app`` (call once, when the application is built)."""
    app.add_middleware(RequestMetrics)


def _interface(path: str) -> str:
    if path.startswith("/dicom-web"):
        return "dicomweb"
    if path.startswith("/api"):
        return "rest"
    return "http"


class RequestMetrics:
    """Pure ASGI middleware (no buffering of the response, so streamed bodies stay streamed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the application fails before answering

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            with metrics.via_http(_interface(str(scope.get("path", "")))):
                await self.app(scope, receive, send_and_watch)
        except Exception as exc:
            metrics.error("http", exc)
            raise
        finally:
            metrics.http_request(
                str(scope.get("method", "?")), _route(scope), status, time.perf_counter() - started
            )


def _route(scope: Scope) -> str:
    """The matched route's template with its router prefix (``/api/parts/{part_id}``)."""
    # FastAPI keeps the route as included (prefix applied) beside Starlette's original route.
    effective: Any = (scope.get("fastapi") or {}).get("effective_route_context")
    for route in (effective, scope.get("route")):
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        if path:
            return str(path)
    return "unmatched"
