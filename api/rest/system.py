"""REST: version, listeners, index and storage statistics, uptime (admins and auditors)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

import pacs
from api.auth import require
from api.deps import archive_of
from api.rest.errors import http_error
from pacs.context import CallerContext
from pacs.errors import PacsError
from pacs.security import Permission
from pacs.services.stats import StatsService

router = APIRouter(tags=["system"])

# When the server started: this module is imported by `pacs serve` before it forks its workers, so
# a restarted worker still reports the server's uptime.
_STARTED = time.time()


class IndexInfo(BaseModel):
    backend: str = Field(description="sqlite or postgresql")
    location: str = Field(description="database URL, password hidden")
    components: int
    inspections: int
    series: int
    instances: int
    versions: int = Field(description="instance versions: every distinct object received, evidence kept")


class StorageInfo(BaseModel):
    location: str = Field(description="object store, without credentials")
    objects: int = Field(description="objects the index references (every version)")
    bytes: int
    current_objects: int = Field(description="the current version of each instance")
    current_bytes: int


class SystemInfo(BaseModel):
    version: str
    ae_title: str
    host: str
    dicom_port: int = Field(description="configured DICOM port (0: chosen at start)")
    dicom_tls_port: int | None = Field(
        description="configured DICOM TLS port (0: chosen at start; null: no TLS listener)"
    )
    http_port: int = Field(description="configured HTTP port (0: chosen at start)")
    workers: int
    started_at: dt.datetime
    uptime_seconds: float
    index: IndexInfo
    storage: StorageInfo


@router.get(
    "/system",
    summary="Version, listeners, index and storage statistics, uptime",
    response_model=SystemInfo,
    responses={503: {"description": "index unavailable"}},
)
def system_info(
    request: Request, caller: Annotated[CallerContext, Depends(require(Permission.AUDIT))]
) -> SystemInfo:
    """For admins and auditors (the audit permission). Counts and sizes come from the index."""
    archive = archive_of(request)
    settings = archive.settings
    assert settings.database_url is not None  # filled in by Settings
    stats = StatsService(archive.engine, settings.database_url, archive.store.location)
    try:
        index, storage = stats.index(), stats.storage()
    except PacsError as exc:
        raise http_error(exc) from exc
    now = time.time()
    return SystemInfo(
        version=pacs.__version__,
        ae_title=settings.ae_title,
        host=settings.host,
        dicom_port=settings.dicom_port,
        dicom_tls_port=settings.dicom_tls_port,
        http_port=settings.http_port,
        workers=settings.worker_count,
        started_at=dt.datetime.fromtimestamp(_STARTED, dt.UTC),
        uptime_seconds=round(now - _STARTED, 3),
        index=IndexInfo(**vars(index)),
        storage=StorageInfo(**vars(storage)),
    )
