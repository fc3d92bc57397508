"""The FastAPI application, built per process around one :class:`pacs.archive.Archive`."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import pacs
from api import metrics
from api.audit import AuditMiddleware
from api.dicomweb import qido, rendered, stow, uri, wado
from api.rest import audit, decisions, evidence, nodes, parts, retention, session, system
from api.rest.errors import RETRY_AFTER_SECONDS, http_error
from pacs.archive import Archive
from pacs.errors import PacsError, ResourceUnavailable
from pacs.index.database import space_problem

DICOMWEB = "/dicom-web"
REST = "/api"
VIEWER = "/viewer"


class RefuseNul:
    """No URL the archive serves takes a NUL character: no UID, part ID or query value holds one
    (ingest drops them from the index), and PostgreSQL cannot even compare a text with one, which
    would come back as a 503. Refused before any route, 400."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")):
            response = JSONResponse({"detail": "a NUL character (%00) in the URL"}, status_code=400)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(archive: Archive) -> FastAPI:
    app = FastAPI(
        title="NDT archive",
        version=pacs.__version__,
        description="Archive for industrial NDT images (DICONDE): DICOM and DICOMweb.",
    )
    app.state.archive = archive
    metrics.instrument(app)  # request latencies by route; which face a query or retrieve came through
    app.add_middleware(AuditMiddleware)  # every authenticated request into the audit trail
    app.add_middleware(RefuseNul)
    if archive.settings.cors_allowed_origins:
        # A viewer served elsewhere (OHIF, say) calls DICOMweb with a bearer token: no cookies.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(archive.settings.cors_allowed_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Content-Type", "Content-Length", "Warning", "X-Total-Count"],
            allow_credentials=False,
            max_age=600,
        )
    for module in (qido, wado, rendered, stow, uri):
        app.include_router(module.router, prefix=DICOMWEB, tags=["DICOMweb"])
    # decisions, evidence and holds before parts, whose /parts/{part_id:path} would take /parts/X/evidence
    for module in (decisions, evidence, retention, parts, nodes, system, session, audit):
        app.include_router(module.router, prefix=REST)
    app.include_router(metrics.router, tags=["operations"])

    @app.exception_handler(PacsError)
    async def archive_error(_request: Request, exc: PacsError) -> JSONResponse:
        """An archive error a route did not turn into a response itself: the same status it would
        have chosen (ResourceUnavailable: 503, a dependency is down), never a bare 500."""
        error = http_error(exc)
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_exception(request: Request, exc: HTTPException) -> Response:
        """Every 503 (the index, the object store or the disk unavailable) says when to try again."""
        if exc.status_code == 503 and "retry-after" not in {k.lower() for k in exc.headers or {}}:
            exc.headers = {**(exc.headers or {}), "Retry-After": str(RETRY_AFTER_SECONDS)}
        return await http_exception_handler(request, exc)

    def index_check() -> None:
        archive.index.ping()
        problem = space_problem(archive.engine)
        if problem is not None:
            raise ResourceUnavailable(problem)

    @app.get("/health", tags=["operations"], summary="Is the archive able to store and serve?")
    def health() -> JSONResponse:
        """200 when the index answers and the object store is reachable, both with room to write;
        503 with the reason otherwise."""
        checks: dict[str, Any] = {}
        healthy = True
        for name, check in (("index", index_check), ("objects", archive.store.check)):
            try:
                check()
                checks[name] = "ok"
            except Exception as exc:  # a health check reports, it never raises
                checks[name] = f"unavailable: {exc}"
                healthy = False
        body = {
            "status": "ok" if healthy else "unavailable",
            "version": pacs.__version__,
            "ae_title": archive.settings.ae_title,
            **checks,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    # The viewer's files are public (they hold no data); everything they fetch needs a token.
    app.mount(VIEWER, StaticFiles(directory=str(resources.files("viewer")), html=True), name="viewer")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{VIEWER}/", status_code=307)

    return app
