"""Request-scoped access to the process's archive."""

from __future__ import annotations

from fastapi import Request

from pacs.archive import Archive


def archive_of(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive
