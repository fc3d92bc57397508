"""Database engines for the index: SQLite (embedded) and PostgreSQL (production).

One engine per process, created by the composition root and handed down. Write transactions are
explicit (:func:`write_transaction`): on SQLite they start with ``BEGIN IMMEDIATE`` so that two
writers queue on the database lock instead of failing with "database is locked" when a read
transaction tries to become a write one; on PostgreSQL unique constraints and ``ON CONFLICT`` keep
concurrent first arrivals safe.

A pooled PostgreSQL connection that sat idle for :data:`PING_AFTER_IDLE` seconds is pinged before
use and replaced if the server went away (a restart, a failover): a busy archive pays no round
trip for it, and an idle one still never hands out a dead connection. Each connection plans
cursors for all their rows (``cursor_tuple_fraction = 1``, see :func:`pacs.query.sql.plan`):
queries read every row they select.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

#: Seconds a pooled connection may sit idle before it is pinged on checkout.
PING_AFTER_IDLE = 2.0


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
        connect_args={"options": "-c cursor_tuple_fraction=1.0"},
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for connections idle longer than PING_AFTER_IDLE."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("checked_in")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            dbapi_connection.rollback()
        except Exception as error:
            # The pool drops this connection and checks out another (a new one if need be).
            raise exc.DisconnectionError(f"pooled connection is dead: {error}") from error


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
