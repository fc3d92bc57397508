"""The archive's exceptions as HTTP errors for the REST routes (the tree is in ``pacs/errors.py``)."""

from __future__ import annotations

from fastapi import HTTPException

from pacs.errors import InvalidObject, InvalidQuery, NotFound, ObjectMismatch, PacsError, ResourceUnavailable

#: What a 503 asks the client to wait before trying again: dependencies come back in seconds to minutes.
RETRY_AFTER_SECONDS = 10


def http_error(exc: PacsError) -> HTTPException:
    """404 for NotFound, 400 for bad input, 409 for a mismatching object, 503 when storage or index fail."""
    if isinstance(exc, NotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, ObjectMismatch):
        return HTTPException(409, str(exc))
    if isinstance(exc, InvalidObject | InvalidQuery):
        return HTTPException(400, str(exc))
    if isinstance(exc, ResourceUnavailable):
        return HTTPException(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    return HTTPException(500, str(exc))
