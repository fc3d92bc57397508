"""Retention, legal holds and two-phase deletion of inspections.

* **Retention rules** (``retention_rules`` in the configuration): an inspection of a matching NDE
  method and/or part pattern is kept ``years`` after its inspection date (StudyDate; the day it
  arrived when it has none). Several matching rules: the longest wins. No matching rule: no
  retention constraint.
* **Legal hold** per part: while active, no inspection of the part may be deleted, whatever its age.
* **Deletion** is two-phase. :meth:`RetentionService.request_delete` checks hold and retention and
  marks the inspection (who, when, why); it stays findable and retrievable, and the request can be
  withdrawn. :meth:`RetentionService.purge` carries out requests older than ``purge_grace_days``,
  checking hold and retention again: it deletes the inspection's index rows in one transaction,
  with its audit entry, then the objects (one that fails to go is left for ``pacs fsck --repair``,
  which finds it unreferenced: never the other way round, an index row without its object).

Every request, withdrawal, hold, release and purge is in the audit trail.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from pacs.audit import Action, AuditEvent, AuditTrail
from pacs.config import RetentionRule
from pacs.context import CallerContext
from pacs.errors import InvalidQuery, NotFound, PacsError, ResourceUnavailable
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import (
    component,
    decision,
    inspection,
    instance,
    instance_version,
    legal_hold,
    series,
)
from storage import ObjectStore, StorageError

log = logging.getLogger(__name__)


class DeletionRefused(PacsError):
    """Deletion is not allowed now (legal hold, retention); the message says why and until when."""


@dataclass(frozen=True)
class Hold:
    part_id: str
    reason: str
    placed_by: str
    placed_at: dt.datetime
    released_by: str | None = None
    released_at: dt.datetime | None = None

    @property
    def active(self) -> bool:
        return self.released_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "part_id": self.part_id,
            "reason": self.reason,
            "placed_by": self.placed_by,
            "placed_at": self.placed_at.isoformat(),
            "released_by": self.released_by,
            "released_at": self.released_at.isoformat() if self.released_at else None,
            "active": self.active,
        }


@dataclass(frozen=True)
class InspectionState:
    """One inspection as retention sees it."""

    study_instance_uid: str
    part_id: str
    date: dt.date
    methods: tuple[str, ...]
    keep_until: dt.date | None  # None: no retention rule applies
    rule: str | None
    hold: Hold | None
    delete_requested_at: dt.datetime | None
    delete_requested_by: str | None
    delete_reason: str | None
    objects: int
    bytes: int

    def why_not_deletable(self, today: dt.date) -> str | None:
        if self.hold is not None:
            return (
                f"part {self.part_id} is under legal hold since {self.hold.placed_at:%Y-%m-%d} "
                f"({self.hold.reason}; placed by {self.hold.placed_by})"
            )
        if self.keep_until is not None and today < self.keep_until:
            return f"kept until {self.keep_until.isoformat()} by the retention rule {self.rule}"
        return None

    def purgeable(self, now: dt.datetime, grace: dt.timedelta) -> bool:
        return (
            self.delete_requested_at is not None
            and self.delete_requested_at + grace <= now
            and self.why_not_deletable(now.date()) is None
        )


@dataclass(frozen=True)
class PurgeResult:
    inspections: list[str]
    objects_deleted: int
    objects_left: list[str]  # keys the store would not delete (fsck --repair removes them later)
    bytes: int


def _describe(rule: RetentionRule) -> str:
    scope = [f"method={rule.method}" if rule.method else "", f"part={rule.part}" if rule.part else ""]
    return f"{' '.join(s for s in scope if s) or 'every inspection'}: {rule.years} years"


def _add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


class RetentionService:
    def __init__(
        self,
        engine: Engine,
        store: ObjectStore,
        audit: AuditTrail,
        rules: Sequence[RetentionRule],
        grace_days: float,
    ) -> None:
        self.engine = engine
        self.store = store
        self.audit = audit
        self.rules = list(rules)
        self.grace = dt.timedelta(days=grace_days)

    # -- rules --------------------------------------------------------------------------------------
    def keep_until(
        self, part_id: str, methods: Sequence[str], date: dt.date
    ) -> tuple[dt.date | None, str | None]:
        """The day an inspection may be deleted from, and the rule that says so (None: no rule)."""
        best: tuple[dt.date | None, str | None] = (None, None)
        for rule in self.rules:
            if rule.method and rule.method not in methods:
                continue
            if rule.part and not fnmatch.fnmatchcase(part_id, rule.part):
                continue
            until = _add_years(date, rule.years)
            if best[0] is None or until > best[0]:
                best = (until, _describe(rule))
        return best

    # -- legal holds --------------------------------------------------------------------------------
    def place_hold(self, part_id: str, reason: str, caller: CallerContext) -> Hold:
        reason = reason.strip()
        if not reason:
            raise InvalidQuery("a legal hold needs a reason (a case, an order, a claim)")
        who = caller.user or caller.ae_title or "unknown"
        now = dt.datetime.now(dt.UTC)
        with self._writing() as conn:
            if conn.execute(select(component.c.id).where(component.c.part_id == part_id)).first() is None:
                raise NotFound(f"no component with part ID {part_id!r}")
            if self._active_hold(conn, part_id) is not None:
                raise InvalidQuery(f"part {part_id} is under legal hold already")
            conn.execute(
                legal_hold.insert().values(part_id=part_id, reason=reason, placed_by=who, placed_at=now)
            )
            self.audit.append(
                conn,
                [
                    AuditEvent(
                        Action.CONFIG_CHANGE,
                        caller,
                        part_id=part_id,
                        detail={"hold": "placed", "reason": reason},
                    )
                ],
            )
        return Hold(part_id, reason, who, now)

    def release_hold(self, part_id: str, caller: CallerContext) -> Hold:
        who = caller.user or caller.ae_title or "unknown"
        now = dt.datetime.now(dt.UTC)
        with self._writing() as conn:
            hold = self._active_hold(conn, part_id)
            if hold is None:
                raise NotFound(f"part {part_id} has no active legal hold")
            conn.execute(
                update(legal_hold)
                .where(legal_hold.c.part_id == part_id, legal_hold.c.released_at.is_(None))
                .values(released_by=who, released_at=now)
            )
            self.audit.append(
                conn,
                [
                    AuditEvent(
                        Action.CONFIG_CHANGE,
                        caller,
                        part_id=part_id,
                        detail={"hold": "released", "reason": hold.reason},
                    )
                ],
            )
        return Hold(part_id, hold.reason, hold.placed_by, hold.placed_at, who, now)

    def holds(self, *, include_released: bool = False) -> list[Hold]:
        with read_transaction(self.engine) as conn:
            query = select(legal_hold).order_by(legal_hold.c.id)
            if not include_released:
                query = query.where(legal_hold.c.released_at.is_(None))
            return [_hold(row) for row in conn.execute(query)]

    def _active_hold(self, conn: Any, part_id: str) -> Hold | None:
        row = conn.execute(
            select(legal_hold).where(legal_hold.c.part_id == part_id, legal_hold.c.released_at.is_(None))
        ).first()
        return None if row is None else _hold(row)

    # -- deletion -------------------------------------------------------------------------------------
    def request_delete(self, study_uid: str, reason: str, caller: CallerContext) -> InspectionState:
        """Mark the inspection for deletion, or :class:`DeletionRefused` saying why not."""
        reason = reason.strip()
        if not reason:
            raise InvalidQuery("a deletion needs a reason")
        with self._writing() as conn:
            state = self._state(conn, study_uid)
            refusal = state.why_not_deletable(dt.datetime.now(dt.UTC).date())
            if refusal is not None:
                raise DeletionRefused(f"{study_uid} cannot be deleted: {refusal}")
            if state.delete_requested_at is not None:
                raise InvalidQuery(
                    f"deletion of {study_uid} was requested already, on {state.delete_requested_at:%Y-%m-%d}"
                )
            now = dt.datetime.now(dt.UTC)
            who = caller.user or caller.ae_title or "unknown"
            self._mark(
                conn,
                state,
                caller,
                {"delete_requested_at": now, "delete_requested_by": who, "delete_reason": reason},
                {"phase": "requested", "reason": reason, "purge_after": (now + self.grace).isoformat()},
            )
            return self._state(conn, study_uid)

    def withdraw_delete(self, study_uid: str, caller: CallerContext) -> None:
        with self._writing() as conn:
            state = self._state(conn, study_uid)
            if state.delete_requested_at is None:
                raise NotFound(f"no deletion of {study_uid} is pending")
            cleared = {"delete_requested_at": None, "delete_requested_by": None, "delete_reason": None}
            self._mark(conn, state, caller, cleared, {"phase": "withdrawn"})

    def _mark(
        self,
        conn: Any,
        state: InspectionState,
        caller: CallerContext,
        values: dict[str, Any],
        detail: dict[str, Any],
    ) -> None:
        """Set or clear an inspection's deletion request, with its audit entry, in ``conn``'s transaction."""
        conn.execute(
            update(inspection)
            .where(inspection.c.study_instance_uid == state.study_instance_uid)
            .values(**values)
        )
        event = AuditEvent(
            Action.DELETE, caller, part_id=state.part_id, uids=[state.study_instance_uid], detail=detail
        )
        self.audit.append(conn, [event])

    def report(self, now: dt.datetime | None = None) -> list[InspectionState]:
        """Every inspection that has a deletion pending or has outlived its retention, oldest first."""
        now = now or dt.datetime.now(dt.UTC)
        with read_transaction(self.engine) as conn:
            uids = (
                conn.execute(select(inspection.c.study_instance_uid).order_by(inspection.c.id))
                .scalars()
                .all()
            )
            states = [self._state(conn, uid) for uid in uids]
        return [
            s
            for s in states
            if s.delete_requested_at is not None or (s.keep_until is not None and s.keep_until <= now.date())
        ]

    def purge(
        self,
        now: dt.datetime | None = None,
        caller: CallerContext | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> PurgeResult:
        """Carry out the deletions whose grace has passed and that are still allowed."""
        now = now or dt.datetime.now(dt.UTC)
        caller = caller or CallerContext(via="purge")
        done: list[str] = []
        deleted, left, size = 0, [], 0
        for state in self.report(now):
            if not state.purgeable(now, self.grace):
                continue
            keys = self._delete_rows(state, caller, now)
            for key in keys:
                try:
                    self.store.delete(key)
                    deleted += 1
                except (StorageError, OSError) as exc:
                    log.error(
                        "purge: object %s of %s not deleted (pacs fsck --repair will): %s",
                        key,
                        state.study_instance_uid,
                        exc,
                    )
                    left.append(key)
            done.append(state.study_instance_uid)
            size += state.bytes
            if progress:
                progress(state.study_instance_uid)
        return PurgeResult(done, deleted, left, size)

    def _delete_rows(self, state: InspectionState, caller: CallerContext, now: dt.datetime) -> list[str]:
        with self._writing() as conn:
            fresh = self._state(conn, state.study_instance_uid)  # held or withdrawn meanwhile?
            if not fresh.purgeable(now, self.grace):
                return []
            study_id, component_id, n_series, n_instances = conn.execute(
                select(
                    inspection.c.id,
                    inspection.c.component_id,
                    inspection.c.number_of_series,
                    inspection.c.number_of_instances,
                ).where(inspection.c.study_instance_uid == state.study_instance_uid)
            ).one()
            series_ids = select(series.c.id).where(series.c.inspection_id == study_id).scalar_subquery()
            instance_ids = select(instance.c.id).where(instance.c.series_id.in_(series_ids)).scalar_subquery()
            keys = list(
                conn.execute(
                    select(instance_version.c.object_key).where(
                        instance_version.c.instance_id.in_(instance_ids)
                    )
                ).scalars()
            )
            conn.execute(delete(instance_version).where(instance_version.c.instance_id.in_(instance_ids)))
            conn.execute(delete(instance).where(instance.c.series_id.in_(series_ids)))
            conn.execute(delete(series).where(series.c.inspection_id == study_id))
            conn.execute(delete(decision).where(decision.c.inspection_id == study_id))
            conn.execute(delete(inspection).where(inspection.c.id == study_id))
            conn.execute(
                update(component)
                .where(component.c.id == component_id)
                .values(
                    number_of_studies=component.c.number_of_studies - 1,
                    number_of_series=component.c.number_of_series - n_series,
                    number_of_instances=component.c.number_of_instances - n_instances,
                )
            )
            self.audit.append(
                conn,
                [
                    AuditEvent(
                        Action.DELETE,
                        caller,
                        part_id=state.part_id,
                        uids=[state.study_instance_uid],
                        detail={
                            "phase": "purged",
                            "requested_by": fresh.delete_requested_by,
                            "reason": fresh.delete_reason,
                            "objects": len(keys),
                            "bytes": fresh.bytes,
                        },
                    )
                ],
            )
        return keys

    # -- reading --------------------------------------------------------------------------------------
    def state(self, study_uid: str) -> InspectionState:
        with read_transaction(self.engine) as conn:
            return self._state(conn, study_uid)

    def _state(self, conn: Any, study_uid: str) -> InspectionState:
        row = conn.execute(
            select(
                inspection.c.id,
                inspection.c.study_date,
                inspection.c.created_at,
                inspection.c.modalities_in_study,
                inspection.c.delete_requested_at,
                inspection.c.delete_requested_by,
                inspection.c.delete_reason,
                component.c.part_id,
            )
            .select_from(inspection.join(component))
            .where(inspection.c.study_instance_uid == study_uid)
        ).first()
        if row is None:
            raise NotFound(f"no inspection with Study Instance UID {study_uid}")
        date = _study_date(row.study_date) or row.created_at.date()
        methods = tuple(m for m in (row.modalities_in_study or "").split("\\") if m)
        keep_until, rule = self.keep_until(row.part_id, methods, date)
        objects, size = conn.execute(
            select(func.count(), func.coalesce(func.sum(instance_version.c.size), 0))
            .select_from(instance_version.join(instance).join(series))
            .where(series.c.inspection_id == row.id)
        ).one()
        return InspectionState(
            study_uid,
            row.part_id,
            date,
            methods,
            keep_until,
            rule,
            self._active_hold(conn, row.part_id),
            row.delete_requested_at,
            row.delete_requested_by,
            row.delete_reason,
            int(objects),
            int(size),
        )

    def _writing(self) -> Any:
        return _Writing(self.engine)


class _Writing:
    """``write_transaction`` with index errors as ResourceUnavailable."""

    def __init__(self, engine: Engine) -> None:
        self._context = write_transaction(engine)

    def __enter__(self) -> Any:
        try:
            return self._context.__enter__()
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self._context.__exit__(*exc_info)
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc


def _study_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and len(value) >= 8 and value[:8].isdigit():
        try:
            return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        except ValueError:
            return None
    return None


def _hold(row: Any) -> Hold:
    return Hold(
        row.part_id,
        row.reason,
        row.placed_by,
        row.placed_at,
        row.released_by,
        row.released_at,
    )
