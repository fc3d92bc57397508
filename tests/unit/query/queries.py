"""Helpers of the query tests: identifiers as the C-FIND SCP receives them, and running them."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from pacs.archive import Archive
from pacs.query.identifier import query_from_identifier
from pacs.query.model import InformationModel
from pacs.query.response import response_identifier

PATIENT_ROOT = InformationModel.PATIENT_ROOT
STUDY_ROOT = InformationModel.STUDY_ROOT


def received(ds: Dataset, *, implicit: bool = False) -> Dataset:
    """``ds`` as pynetdicom hands it to the C-FIND handler: encoded on the wire, decoded again."""
    data = encode(ds, implicit, True)
    assert data is not None
    return decode(BytesIO(data), implicit, True)


def identifier(level: str | None = "STUDY", **keys: Any) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def find(
    archive: Archive, ds: Dataset, model: InformationModel = STUDY_ROOT, ae_title: str = "NDT_PACS"
) -> list[Dataset]:
    """The response identifiers of a C-FIND of ``ds``, as they would be encoded and sent."""
    query = query_from_identifier(received(ds), model)
    return [received(response_identifier(query, found, ae_title)) for found in archive.search.find(query)]


def values(responses: list[Dataset], keyword: str) -> list[Any]:
    """One attribute of every response, as a plain value (multi-valued ones as lists of str)."""
    out = []
    for ds in responses:
        value = ds[keyword].value if keyword in ds else None
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            value = [str(v) for v in value]
        elif value is not None and not isinstance(value, int | float):
            value = str(value)
        out.append(value)
    return out
