"""Failed logins in the index, so that their limit holds across processes and nodes.

:class:`pacs.security.FailedLogins` decides; this records. Each failed login is one row (client
address, wall-clock UTC time). Recording it and counting the address's failures within the window
happen in one transaction, so every process sees the failures of all of them. Nothing here is read
on the path of a request with a valid token.

The table cannot grow without bound under a flood of addresses: each failure deletes the expired
rows of its own address and up to :data:`CLEANUP_BATCH` expired rows of any address, more than the
one row it adds, so what stays is the failures of the last window. On PostgreSQL the deletions
skip rows another transaction is deleting at that moment (``SKIP LOCKED``): concurrent failures
never wait for each other's clean-up, nor deadlock over it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, Select, delete, select
from sqlalchemy.exc import SQLAlchemyError

from pacs.errors import ResourceUnavailable
from pacs.index.database import write_transaction
from pacs.index.schema import login_failure

#: Expired rows of any address that recording one failure deletes at most.
CLEANUP_BATCH = 100
#: Longest address kept (the column's width; an IPv6 address has at most 45 characters).
ADDRESS_LENGTH = 64


class LoginFailureRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, address: str, window: float, limit: int, now: dt.datetime | None = None) -> float:
        """Record a failed login of ``address`` at ``now`` (default: the current UTC time); the
        seconds until fewer than ``limit`` of its failures are within ``window`` seconds, counting
        every process's (0: fewer are already). :class:`pacs.security.SharedFailures`."""
        now = now or dt.datetime.now(dt.UTC)
        address = address[:ADDRESS_LENGTH]
        cutoff = now - dt.timedelta(seconds=window)
        table = login_failure
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(delete(table).where(table.c.id.in_(_expired(cutoff, address))))
                conn.execute(delete(table).where(table.c.id.in_(_expired(cutoff).limit(CLEANUP_BATCH))))
                conn.execute(table.insert().values(address=address, at=now))
                # The limit-th most recent failure: once it leaves the window, fewer remain.
                row = conn.execute(
                    select(table.c.at)
                    .where(table.c.address == address, table.c.at > cutoff)
                    .order_by(table.c.at.desc())
                    .offset(limit - 1)
                    .limit(1)
                ).first()
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {exc}") from exc
        if row is None:
            return 0.0
        free_at = row.at + dt.timedelta(seconds=window)
        return max(0.0, (free_at - now).total_seconds())


def _expired(cutoff: dt.datetime, address: str | None = None) -> Select[tuple[int]]:
    """Ids of rows no window reaches any more (of ``address``, or of any address)."""
    query = select(login_failure.c.id).where(login_failure.c.at <= cutoff)
    if address is not None:
        query = query.where(login_failure.c.address == address)
    # PostgreSQL: rows another transaction is deleting are left to it. SQLite has no FOR UPDATE
    # (SQLAlchemy leaves it out) and needs none: its writers take turns.
    return query.order_by(login_failure.c.at).with_for_update(skip_locked=True)
