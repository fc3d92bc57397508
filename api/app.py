"""The FastAPI application, built per process around one :class:`pacs.archive.Archive`."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

import pacs
from api import metrics
from api.audit import AuditMiddleware
from api.dicomweb import qido, rendered, stow, uri, wado
from api.rest import audit, decisions, evidence, nodes, parts, retention, session, system
from pacs.archive import Archive

DICOMWEB = "/dicom-web"
REST = "/api"
VIEWER = "/viewer"


def create_app(archive: Archive) -> FastAPI:
    app = FastAPI(
        title="NDT archive",
        version=pacs.__version__,
        description="Archive for industrial NDT images (DICONDE): DICOM and DICOMweb.",
    )
    app.state.archive = archive
    metrics.instrument(app)  # request latencies by route; which face a query or retrieve came through
    app.add_middleware(AuditMiddleware)  # every authenticated request into the audit trail
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

    @app.get("/health", tags=["operations"], summary="Is the archive able to store and serve?")
    def health() -> JSONResponse:
        """200 when the index answers and the object store is reachable, 503 with the reason otherwise."""
        checks: dict[str, Any] = {}
        healthy = True
        for name, check in (("index", archive.index.ping), ("objects", archive.store.check)):
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
