"""The FastAPI application, built per process around one :class:`pacs.archive.Archive`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

import pacs
from pacs.archive import Archive


def create_app(archive: Archive) -> FastAPI:
    app = FastAPI(
        title="NDT archive",
        version=pacs.__version__,
        description="Archive for industrial NDT images (DICONDE): DICOM and DICOMweb.",
    )
    app.state.archive = archive

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

    return app
