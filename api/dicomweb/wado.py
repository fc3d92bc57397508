"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, streamed."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
