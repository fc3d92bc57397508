"""WADO-URI (PS3.18 9) for legacy viewers."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
