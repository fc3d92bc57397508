"""REST: parts (components) with their inspections, from the index (``pacs.services.parts``)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from api.auth import require
from api.deps import archive_of
from api.rest.errors import http_error
from pacs.context import CallerContext
from pacs.errors import PacsError
from pacs.security import Permission
from pacs.services.parts import DEFAULT_LIMIT, MAX_LIMIT, InspectionSummary, PartService, PartSummary

router = APIRouter(tags=["parts"])


class Part(BaseModel):
    part_id: str = Field(description="PatientID: the component's part ID")
    name: str | None = Field(description="PatientName: the component name")
    inspection_count: int = Field(description="number of inspections (studies)")
    series_count: int
    instance_count: int
    last_inspection_date: dt.date | None = Field(description="StudyDate of the latest inspection")
    methods: list[str] = Field(description="NDE methods (Modality) of its series, sorted")


class Inspection(BaseModel):
    study_instance_uid: str
    date: dt.date | None = Field(description="StudyDate")
    time: str | None = Field(description="StudyTime as recorded (HHMMSS.FFFFFF)")
    study_id: str | None
    accession_number: str | None = Field(description="AccessionNumber: the work order")
    description: str | None
    methods: list[str] = Field(description="ModalitiesInStudy: the NDE methods")
    series_count: int
    instance_count: int


class PartDetail(Part):
    attributes: dict[str, Any] = Field(
        description="other indexed component attributes that have a value: part_id_issuer, serial_numbers, "
        "manufacturing_date, component_manufacturer, material_grade, component_shape, material_thickness, "
        "material_pipe_diameter, manufacturing_procedure"
    )
    inspections: list[Inspection] = Field(description="every inspection, oldest first")


def _parts(request: Request) -> PartService:
    return PartService(archive_of(request).engine)


def _part(summary: PartSummary) -> dict[str, Any]:
    return {
        "part_id": summary.part_id,
        "name": summary.name,
        "inspection_count": summary.inspections,
        "series_count": summary.series,
        "instance_count": summary.instances,
        "last_inspection_date": summary.last_inspection_date,
        "methods": summary.methods,
    }


def _inspection(found: InspectionSummary) -> dict[str, Any]:
    values = vars(found).copy()
    values["series_count"] = values.pop("series")
    values["instance_count"] = values.pop("instances")
    return values


@router.get(
    "/parts",
    summary="Search components by part ID or name",
    response_model=list[Part],
    responses={400: {"description": "bad q, limit or offset"}, 503: {"description": "index unavailable"}},
)
def search_parts(
    request: Request,
    response: Response,
    caller: Annotated[CallerContext, Depends(require(Permission.QUERY))],
    q: Annotated[
        str | None,
        Query(
            max_length=64,
            description="part ID or component name: a prefix, or a pattern with * and ? over the whole "
            "value; names ignore case, part IDs do not; empty = every component",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=0, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """Components ordered by part ID; ``X-Total-Count`` gives the number of matches without paging."""
    try:
        page = _parts(request).search(q, limit=limit, offset=offset)
    except PacsError as exc:
        raise http_error(exc) from exc
    response.headers["X-Total-Count"] = str(page.total)
    return [_part(p) for p in page.parts]


@router.get(
    "/parts/{part_id:path}",
    summary="One component with all its inspections",
    response_model=PartDetail,
    responses={
        404: {"description": "no component with this part ID"},
        503: {"description": "index unavailable"},
    },
)
def get_part(
    request: Request,
    part_id: str,
    caller: Annotated[CallerContext, Depends(require(Permission.QUERY))],
) -> dict[str, Any]:
    """Inspections with their UID, date, work order, NDE methods and series and instance counts."""
    try:
        detail = _parts(request).get(part_id)
    except PacsError as exc:
        raise http_error(exc) from exc
    return {
        **_part(detail.summary),
        "attributes": detail.attributes,
        "inspections": [_inspection(i) for i in detail.inspections],
    }
