"""Request-scoped access to the process's archive."""

from __future__ import annotations

from fastapi import Request

from pacs.archive import Archive


def archive_of(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


async def archive_dependency(request: Request) -> Archive:
    """:func:`archive_of` as a route dependency. A coroutine so that FastAPI calls it on the event
    loop: a plain function dependency costs a hop to a worker thread and back on every request, for
    what is only an attribute read."""
    return archive_of(request)
