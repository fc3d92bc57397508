"""The DICOM JSON model (PS3.18 F) of an instance's non-bulk metadata, as kept in the index.

Binary values longer than :data:`BULK_THRESHOLD` bytes and the pixel data are not copied into the
index; they appear as ``{"vr": ..., "BulkDataURI": "<tag>"}`` where ``<tag>`` is the element's tag in
8 hex digits. The HTTP face turns that reference into a full URL under the instance (PS3.18 F.2.6).
"""

from __future__ import annotations

from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from pacs.dicom.parse import PixelDataInfo
from pacs.diconde import without_nul

BULK_THRESHOLD = 1024


def _bulk_reference(elem: DataElement) -> str:
    return f"{elem.tag:08X}"


def to_dicom_json(ds: Dataset, pixel: PixelDataInfo | None = None) -> dict[str, Any]:
    """``ds`` (without pixel data) as DICOM JSON; values pydicom cannot convert are left out, and
    NUL characters are dropped from strings (JSON in PostgreSQL cannot hold them; the stored object
    keeps the original bytes)."""
    model: dict[str, Any] = ds.to_json_dict(
        bulk_data_threshold=BULK_THRESHOLD,
        bulk_data_element_handler=_bulk_reference,
        suppress_invalid_tags=True,
    )
    if pixel is not None:
        model[f"{pixel.tag:08X}"] = {"vr": pixel.vr, "BulkDataURI": f"{pixel.tag:08X}"}
    return _without_nul(model)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return without_nul(value)
    if isinstance(value, dict):
        return {key: _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value
