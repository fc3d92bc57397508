"""Inspection decisions: an inspector's disposition of an inspection - accepted, rejected, rework or
repeat - with a comment and the inspector's identity.

A decision is never edited or deleted: a later one supersedes it (``supersedes_id``, unique, so the
decisions of an inspection form one line, never two branches). Each is written in the same
transaction as its audit trail entry, so neither exists without the other.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pacs.audit import Action, AuditEvent, AuditTrail
from pacs.context import CallerContext
from pacs.errors import InvalidQuery, NotFound, PacsError, ResourceUnavailable
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import component, decision, inspection

MAX_COMMENT = 4000


class Disposition(enum.StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    REWORK = "rework"
    REPEAT = "repeat"


class DecisionConflict(PacsError):
    """Another decision on the same inspection came in at the same moment; ask again."""


@dataclass(frozen=True)
class Decision:
    id: int
    study_instance_uid: str
    part_id: str
    disposition: Disposition
    comment: str
    user: str
    decided_at: dt.datetime
    supersedes: int | None
    superseded_by: int | None = None

    @property
    def current(self) -> bool:
        return self.superseded_by is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "study_instance_uid": self.study_instance_uid,
            "part_id": self.part_id,
            "disposition": str(self.disposition),
            "comment": self.comment,
            "user": self.user,
            "decided_at": self.decided_at.isoformat(),
            "supersedes": self.supersedes,
            "superseded_by": self.superseded_by,
            "current": self.current,
        }


class DecisionRepository:
    def __init__(self, engine: Engine, audit: AuditTrail) -> None:
        self.engine = engine
        self.audit = audit

    def record(
        self, study_uid: str, disposition: Disposition | str, comment: str, caller: CallerContext
    ) -> Decision:
        """A new decision on the inspection, superseding its current one; recorded in the audit trail."""
        try:
            disposition = Disposition(disposition)
        except ValueError:
            choices = ", ".join(d.value for d in Disposition)
            raise InvalidQuery(f"disposition {disposition!r}: one of {choices}") from None
        comment = comment.strip()
        if disposition is not Disposition.ACCEPTED and not comment:
            raise InvalidQuery(f"a {disposition} decision needs a comment saying why")
        if len(comment) > MAX_COMMENT:
            raise InvalidQuery(f"the comment has {len(comment)} characters; at most {MAX_COMMENT}")
        if not caller.user:
            raise InvalidQuery("a decision needs an authenticated user")
        for _attempt in range(3):
            try:
                return self._record(study_uid, disposition, comment, caller)
            except IntegrityError:  # another decision superseded the same one first: read again
                continue
            except SQLAlchemyError as exc:
                raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc
        raise DecisionConflict(f"decisions on {study_uid} keep arriving at the same moment; try again")

    def _record(
        self, study_uid: str, disposition: Disposition, comment: str, caller: CallerContext
    ) -> Decision:
        with write_transaction(self.engine) as conn:
            lookup = (
                select(inspection.c.id, component.c.part_id)
                .select_from(inspection.join(component))
                .where(inspection.c.study_instance_uid == study_uid)
            )
            if conn.dialect.name == "postgresql":  # decisions on one inspection queue here
                lookup = lookup.with_for_update(of=inspection)
            found = conn.execute(lookup).first()
            if found is None:
                raise NotFound(f"no inspection with Study Instance UID {study_uid}")
            inspection_id, part_id = found
            superseded = conn.execute(
                select(decision.c.id)
                .where(
                    decision.c.inspection_id == inspection_id,
                    decision.c.id.not_in(
                        select(decision.c.supersedes_id).where(decision.c.supersedes_id.is_not(None))
                    ),
                )
                .order_by(decision.c.id.desc())
                .limit(1)
            ).scalar()
            now = dt.datetime.now(dt.UTC)
            new_id = conn.execute(
                decision.insert()
                .values(
                    inspection_id=inspection_id,
                    disposition=str(disposition),
                    comment=comment,
                    user_name=caller.user,
                    decided_at=now,
                    supersedes_id=superseded,
                )
                .returning(decision.c.id)
            ).scalar_one()
            self.audit.append(
                conn,
                [
                    AuditEvent(
                        Action.DECISION,
                        caller,
                        part_id=part_id,
                        uids=[study_uid],
                        detail={
                            "decision": new_id,
                            "disposition": str(disposition),
                            "comment": comment,
                            "supersedes": superseded,
                        },
                    )
                ],
            )
        return Decision(new_id, study_uid, part_id, disposition, comment, caller.user or "", now, superseded)

    def for_inspection(self, study_uid: str) -> list[Decision]:
        """Every decision on the inspection, oldest first; NotFound for an unknown inspection."""
        return self._decisions(
            inspection.c.study_instance_uid == study_uid, f"no inspection with Study Instance UID {study_uid}"
        )

    def for_part(self, part_id: str) -> list[Decision]:
        """Every decision on every inspection of the part, oldest first (empty when none)."""
        return self._decisions(component.c.part_id == part_id, None)

    def _decisions(self, where: Any, missing: str | None) -> list[Decision]:
        try:
            with read_transaction(self.engine) as conn:
                if missing is not None:
                    exists = conn.execute(
                        select(inspection.c.id).select_from(inspection.join(component)).where(where)
                    ).first()
                    if exists is None:
                        raise NotFound(missing)
                rows = conn.execute(
                    select(
                        decision.c.id,
                        inspection.c.study_instance_uid,
                        component.c.part_id,
                        decision.c.disposition,
                        decision.c.comment,
                        decision.c.user_name,
                        decision.c.decided_at,
                        decision.c.supersedes_id,
                    )
                    .select_from(decision.join(inspection).join(component))
                    .where(where)
                    .order_by(decision.c.id)
                ).all()
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc
        superseded_by = {row.supersedes_id: row.id for row in rows if row.supersedes_id is not None}
        return [
            Decision(
                row.id,
                row.study_instance_uid,
                row.part_id,
                Disposition(row.disposition),
                row.comment,
                row.user_name,
                row.decided_at,
                row.supersedes_id,
                superseded_by.get(row.id),
            )
            for row in rows
        ]
