"""QIDO-RS (PS3.18 10.6): search for studies, series and instances."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
