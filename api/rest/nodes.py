"""REST: DICOM nodes: list, add, remove, echo, send."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
