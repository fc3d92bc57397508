"""REST: health, version, storage and index statistics."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
