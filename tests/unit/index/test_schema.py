"""Migrations and models describe the same schema, on both databases.

``pacs.index.schema`` is what the code queries; the Alembic migrations are what a real database
gets. A column added to ``attributes.csv`` without a migration would pass every test that builds
tables from the models and fail on the first production upgrade; this comparison catches it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Engine, Integer, MetaData, Table, insert, inspect, select, text

from pacs.index import migrate
from pacs.index.database import create_index_engine
from pacs.index.schema import Timestamp, metadata

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(params=DATABASES)
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a database with no tables at all."""
    if request.param == "sqlite":
        engine = create_index_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
        yield engine
        engine.dispose()
    else:
        postgres = request.getfixturevalue("postgres")
        url = postgres.fresh(migrated=False)
        engine = create_index_engine(url)
        yield engine
        engine.dispose()
        postgres.drop(url)


def differences(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_upgrade_of_an_empty_database_matches_the_models(empty_engine: Engine) -> None:
    assert table_names(empty_engine) == set()
    assert migrate.current_revision(empty_engine) is None

    migrate.upgrade(empty_engine)

    assert set(metadata.tables) <= table_names(empty_engine)
    assert differences(empty_engine) == []


def test_upgrade_reaches_the_head_revision(empty_engine: Engine) -> None:
    head = migrate.head_revision()
    assert head is not None
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == head


def test_upgrade_twice_is_a_no_op(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("INSERT INTO component (part_id, created_at) VALUES ('PART-1', CURRENT_TIMESTAMP)"))
    migrate.upgrade(empty_engine)

    assert migrate.current_revision(empty_engine) == migrate.head_revision()
    assert differences(empty_engine) == []
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT part_id FROM component")).scalars().all() == ["PART-1"]
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [migrate.head_revision()]


def test_upgrade_from_0001_fills_counts_names_and_modalities(empty_engine: Engine) -> None:
    """An archive created at revision 0001 gets correct query columns when upgraded."""
    migrate.upgrade(empty_engine, "0001")
    now = "2026-01-01 00:00:00+00:00"
    with empty_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO component (id, part_id, component_name, created_at) "
                "VALUES (1, 'P-1', 'MÜLLER^Hans', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO inspection (id, component_id, study_instance_uid, created_at) "
                "VALUES (1, 1, '1.1', :now)"
            ),
            {"now": now},
        )
        for sid, modality in ((1, "DX"), (2, "CT")):
            conn.execute(
                text(
                    "INSERT INTO series (id, inspection_id, series_instance_uid, modality, created_at) "
                    "VALUES (:id, 1, :uid, :m, :now)"
                ),
                {"id": sid, "uid": f"1.1.{sid}", "m": modality, "now": now},
            )
        for iid, sid in ((1, 1), (2, 1), (3, 2)):
            conn.execute(
                text(
                    "INSERT INTO instance (id, series_id, sop_instance_uid, created_at, updated_at) "
                    "VALUES (:id, :sid, :uid, :now, :now)"
                ),
                {"id": iid, "sid": sid, "uid": f"1.1.1.{iid}", "now": now},
            )

    migrate.upgrade(empty_engine)

    with empty_engine.connect() as conn:
        assert conn.execute(
            text(
                "SELECT component_name_key, number_of_studies, number_of_series, number_of_instances "
                "FROM component"
            )
        ).one() == ("müller^hans", 1, 2, 3)
        assert conn.execute(
            text("SELECT number_of_series, number_of_instances, modalities_in_study FROM inspection")
        ).one() == (2, 3, "CT\\DX")
        assert sorted(conn.execute(text("SELECT id, number_of_instances FROM series")).all()) == [
            (1, 2),
            (2, 1),
        ]


def test_timestamps_come_back_aware_in_utc_on_both_databases(empty_engine: Engine) -> None:
    """SQLite keeps no time zone, PostgreSQL answers in the session's; ``Timestamp`` gives every
    database's values back the same way: the same instant, aware, in UTC, whatever zone it was
    written in (a naive value counts as UTC), whatever the PostgreSQL server's time zone."""
    table = Table("moments", MetaData(), Column("id", Integer, primary_key=True), Column("at", Timestamp))
    table.create(empty_engine)
    berlin = empty_engine.dialect.name == "postgresql"
    written = dt.datetime(2026, 11, 26, 23, 30, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    naive_utc = dt.datetime(2026, 11, 26, 12, 0, 0)
    with empty_engine.begin() as conn:
        if berlin:  # as a server configured for its site's zone would answer
            conn.execute(text("SET TIME ZONE 'Europe/Berlin'"))
        values = [{"id": 1, "at": written}, {"id": 2, "at": naive_utc}, {"id": 3, "at": None}]
        conn.execute(insert(table), values)
        rows = {row.id: row.at for row in conn.execute(select(table.c.id, table.c.at))}
        # Comparisons in queries see the instant too.
        later = conn.execute(select(table.c.id).where(table.c.at > naive_utc)).all()
    assert rows[1] == written and rows[1].utcoffset() == dt.timedelta(0)
    assert rows[2] == naive_utc.replace(tzinfo=dt.UTC) and rows[2].utcoffset() == dt.timedelta(0)
    assert rows[3] is None
    assert [row.id for row in later] == [1]
