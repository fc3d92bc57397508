"""Database engines for the index: SQLite (embedded) and PostgreSQL (production).

One engine per process, created by the composition root and handed down. Write transactions are
explicit (:func:`write_transaction`): on SQLite they start with ``BEGIN IMMEDIATE`` so that two
writers queue on the database lock instead of failing with "database is locked" when a read
transaction tries to become a write one; on PostgreSQL unique constraints and ``ON CONFLICT`` keep
concurrent first arrivals safe.

A pooled PostgreSQL connection that sat idle for :data:`PING_AFTER_IDLE` seconds, or whose
socket has something to read while idle (the server said goodbye: a restart, a failover), is
pinged before use and replaced if the server went away: a busy archive pays no round trip for
it, an idle one never hands out a dead connection, and after a restart no store fails on a
connection the server closed while it sat in the pool. What was in flight when the server went
away fails (the store answers "out of resources", nothing is kept). Connecting gives up after
:data:`CONNECT_TIMEOUT` seconds and TCP keepalives find a server that vanished without closing
its connections, so no request waits forever on an unreachable index. Each connection plans
cursors for all their rows (``cursor_tuple_fraction = 1``, see :func:`pacs.query.sql.plan`):
queries read every row they select.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

#: Seconds a pooled connection may sit idle before it is pinged on checkout.
PING_AFTER_IDLE = 2.0
#: Seconds to wait for a new PostgreSQL connection before the operation fails.
CONNECT_TIMEOUT = 10
#: TCP keepalive (libpq): probe an idle connection after 30 s, every 10 s, give up after 3 misses.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
#: Below this much free space beside a SQLite index, :func:`space_problem` reports it.
LOW_SPACE = 1 << 20


def create_index_engine(url: str, *, pool_size: int = 8) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, pool_size)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_recycle=1800,
        # Planned for every row: a cursor planned for its first 10% (PostgreSQL's default) turns
        # a date range into a walk of the whole table in id order.
        connect_args={
            "options": "-c cursor_tuple_fraction=1.0",
            "connect_timeout": CONNECT_TIMEOUT,
            **KEEPALIVES,
        },
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for connections idle longer than PING_AFTER_IDLE or
    that the server has written to while idle."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("checked_in")
        if idle_since is None:
            return
        if time.monotonic() - idle_since < PING_AFTER_IDLE and not _has_input(dbapi_connection):
            return
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            dbapi_connection.rollback()
        except Exception as error:
            # The pool drops this connection and checks out another (a new one if need be).
            raise exc.DisconnectionError(f"pooled connection is dead: {error}") from error


def _has_input(dbapi_connection: Any) -> bool:
    """Whether an idle connection's socket has something to read: the server sent an error (a
    shutdown's "terminating connection") or closed it. No round trip, one poll."""
    try:
        fd = dbapi_connection.fileno()
        readable, _, _ = select.select([fd], [], [], 0)
    except Exception:  # no socket (closed, or a driver without fileno): ping to be sure
        return True
    return bool(readable)


def space_problem(engine: Engine) -> str | None:
    """What is wrong with the disk under a SQLite index (None when it has room, or for PostgreSQL,
    whose disk the server watches): a full disk refuses every write transaction."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    folder = Path(database).parent
    try:
        st = os.statvfs(folder)
    except OSError as exc:
        return f"{exc.strerror or exc}: checking the index folder {folder}"
    free = st.f_bavail * st.f_frsize
    if free < LOW_SPACE:
        return f"no space left: {free} bytes free for the index in {folder}"
    return None


def _sqlite_engine(url: str, pool_size: int) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 60},
        pool_size=pool_size,
        max_overflow=pool_size * 2,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, so writes can say IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns (NORMAL may lose the last commits on power loss,
        # and the archive answers "stored" right after the commit).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":  # read_batches: no transaction
            return
        immediate = options.get("pacs_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write; committed when the block ends without an exception."""
    with engine.connect() as conn:
        conn = conn.execution_options(pacs_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def read_batches(engine: Engine) -> Iterator[Connection]:
    """A connection whose statements each run on their own, outside any transaction (autocommit):
    for reads that need no snapshot across statements, and so pay no BEGIN and COMMIT."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def redact_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
