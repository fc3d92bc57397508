"""REST: parts (components) with their inspections."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
