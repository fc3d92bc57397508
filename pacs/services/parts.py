"""Components (parts) and their inspections, summarised from the index for the REST API.

A search matches a part ID or a component name: with ``*`` or ``?`` the value is a DICOM wildcard
pattern over the whole value, without them a prefix. Part IDs match case-sensitively (they are
identifiers, as in C-FIND); component names ignore case, on the case-folded name the index keeps
for C-FIND. No stored object is opened; the counts are the ones the ingest keeps up to date.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Engine, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from pacs import metrics
from pacs.diconde import person_name_key
from pacs.errors import InvalidQuery, NotFound, ResourceUnavailable
from pacs.index.database import read_transaction
from pacs.index.schema import component, inspection, series

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


@dataclass(frozen=True)
class PartSummary:
    part_id: str
    name: str | None
    inspections: int
    series: int
    instances: int
    last_inspection_date: dt.date | None
    methods: list[str]


@dataclass(frozen=True)
class InspectionSummary:
    study_instance_uid: str
    date: dt.date | None
    time: str | None
    study_id: str | None
    accession_number: str | None
    description: str | None
    methods: list[str]
    series: int
    instances: int


@dataclass(frozen=True)
class PartDetail:
    summary: PartSummary
    attributes: dict[str, Any] = field(default_factory=dict)
    inspections: list[InspectionSummary] = field(default_factory=list)


@dataclass(frozen=True)
class PartPage:
    total: int
    parts: list[PartSummary]


# Component columns a caller sees beside the summary (DICONDE names, docs: DICONDE.md).
_ATTRIBUTES = (
    "part_id_issuer",
    "serial_numbers",
    "manufacturing_date",
    "component_manufacturer",
    "material_grade",
    "component_shape",
    "material_thickness",
    "material_pipe_diameter",
    "manufacturing_procedure",
)


class PartService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def search(self, q: str | None = None, *, limit: int = DEFAULT_LIMIT, offset: int = 0) -> PartPage:
        """Components whose part ID or name matches ``q`` (all when empty), by part ID."""
        if not 0 <= limit <= MAX_LIMIT:
            raise InvalidQuery(f"limit must be between 0 and {MAX_LIMIT}, not {limit}")
        if offset < 0:
            raise InvalidQuery(f"offset must not be negative, not {offset}")
        started = time.perf_counter()
        condition = self._condition(q)
        listing = select(component).order_by(component.c.part_id).limit(limit).offset(offset)
        counting = select(func.count()).select_from(component)
        if condition is not None:
            listing, counting = listing.where(condition), counting.where(condition)
        try:
            with read_transaction(self.engine) as conn:
                total = int(conn.execute(counting).scalar_one())
                rows = conn.execute(listing).all()
                extra = _inspection_facts(conn, [row.id for row in rows])
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc
        metrics.count_query(metrics.current_interface(), "component", time.perf_counter() - started)
        return PartPage(total, [_summary(row, *extra.get(row.id, (None, []))) for row in rows])

    def get(self, part_id: str) -> PartDetail:
        """The component with every inspection, oldest first; :class:`NotFound` for an unknown part ID."""
        started = time.perf_counter()
        try:
            with read_transaction(self.engine) as conn:
                row = conn.execute(select(component).where(component.c.part_id == part_id)).first()
                if row is None:
                    raise NotFound(f"no component with part ID {part_id!r}")
                studies = conn.execute(
                    select(inspection)
                    .where(inspection.c.component_id == row.id)
                    .order_by(inspection.c.study_date, inspection.c.study_time, inspection.c.id)
                ).all()
                last, methods = _inspection_facts(conn, [row.id]).get(row.id, (None, []))
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc
        metrics.count_query(metrics.current_interface(), "inspection", time.perf_counter() - started)
        return PartDetail(
            summary=_summary(row, last, methods),
            attributes={name: row._mapping[name] for name in _ATTRIBUTES if row._mapping[name] is not None},
            inspections=[
                InspectionSummary(
                    study_instance_uid=s.study_instance_uid,
                    date=_date(s.study_date),
                    time=s.study_time,
                    study_id=s.study_id,
                    accession_number=s.accession_number,
                    description=s.study_description,
                    methods=_methods([s.modalities_in_study]),
                    series=int(s.number_of_series),
                    instances=int(s.number_of_instances),
                )
                for s in studies
            ],
        )

    def _condition(self, q: str | None) -> ColumnElement[bool] | None:
        text = (q or "").strip()
        if not text:
            return None
        if len(text) > 64:
            raise InvalidQuery("q: at most 64 characters (a part ID is at most 64)")
        if any(ord(c) < 0x20 for c in text):
            raise InvalidQuery("q: control characters are not allowed")
        pattern = text if ("*" in text or "?" in text) else text + "*"
        name_pattern = person_name_key(pattern) or pattern
        return or_(
            self._like(component.c.part_id, pattern), self._like(component.c.component_name_key, name_pattern)
        )

    def _like(self, column: Any, pattern: str) -> ColumnElement[bool]:
        """A DICOM wildcard pattern (``*``, ``?``) as a case-sensitive match an index can serve."""
        if self.engine.dialect.name == "sqlite":
            return column.op("GLOB")(pattern.replace("[", "[[]"))  # type: ignore[no-any-return]
        escaped = "".join(
            "%" if c == "*" else "_" if c == "?" else "\\" + c if c in "\\%_" else c for c in pattern
        )
        return column.like(escaped)  # type: ignore[no-any-return]


def _inspection_facts(conn: Any, component_ids: list[int]) -> dict[int, tuple[dt.date | None, list[str]]]:
    """Per component: the date of its latest inspection and its NDE methods (the series' modalities)."""
    if not component_ids:
        return {}
    rows = conn.execute(
        select(inspection.c.component_id, func.max(inspection.c.study_date), series.c.modality)
        .select_from(inspection.outerjoin(series, series.c.inspection_id == inspection.c.id))
        .where(inspection.c.component_id.in_(component_ids))
        .group_by(inspection.c.component_id, series.c.modality)
    ).all()
    last: dict[int, str] = {}
    methods: dict[int, set[str]] = {}
    for component_id, date, modality in rows:
        if date and (component_id not in last or date > last[component_id]):
            last[component_id] = date
        if modality:
            methods.setdefault(component_id, set()).add(modality)
    return {cid: (_date(last.get(cid)), sorted(methods.get(cid, ()))) for cid in component_ids}


def _summary(row: Any, last: dt.date | None, methods: list[str]) -> PartSummary:
    return PartSummary(
        part_id=row.part_id,
        name=row.component_name,
        inspections=int(row.number_of_studies),
        series=int(row.number_of_series),
        instances=int(row.number_of_instances),
        last_inspection_date=last,
        methods=methods,
    )


def _methods(joined: Iterable[str | None]) -> list[str]:
    found: set[str] = set()
    for value in joined:
        found.update(m for m in (value or "").split("\\") if m)
    return sorted(found)


def _date(value: str | None) -> dt.date | None:
    """A DICOM DA (``YYYYMMDD``) as a date; ``None`` when absent or not a valid date."""
    if not value:
        return None
    try:
        return dt.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None
