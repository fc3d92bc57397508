"""The index serves the three queries inspectors make most, on both databases.

A study-level C-FIND by part ID, by a component name prefix ("BLADE*", case-insensitive) and by a
date range must be answered from indexes, not by reading every inspection: this is what keeps them
fast at 100,000 inspections (bench/query.py measures it). PostgreSQL is checked in a database with
a language collation (en-US), as production databases usually are: there an ordinary B-tree
index cannot serve ``LIKE 'blade%'``; the pattern index of migration 0003 must.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from pacs.index import migrate
from pacs.index.database import create_index_engine
from pacs.query import sql
from pacs.query.identifier import query_from_identifier
from tests.unit.query.queries import PATIENT_ROOT, STUDY_ROOT, identifier, received

ROWS = 20_000


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An index with many components and inspections, bulk-inserted, statistics gathered."""
    if request.param == "sqlite":
        engine = create_index_engine(f"sqlite:///{tmp_path_factory.mktemp('indexes') / 'index.sqlite'}")
        migrate.upgrade(engine)
        _fill(engine, "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :rows) ")
        yield engine
        engine.dispose()
        return
    postgres = request.getfixturevalue("postgres")
    name = f"{postgres.prefix}_enus_{uuid.uuid4().hex[:8]}"
    with postgres.admin.connect() as conn:
        # A language collation (ICU's en-US, as a libc locale may not be installed for the server).
        conn.execute(
            text(
                f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' "
                "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
            )
        )
    url = postgres.url(name)
    engine = create_index_engine(url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            locale = "SELECT daticulocale FROM pg_database WHERE datname = current_database()"
            assert conn.execute(text(locale)).scalar_one() == "en-US"
        _fill(engine, "WITH g(n) AS (SELECT generate_series(1, :rows)) ")
        yield engine
    finally:
        engine.dispose()
        postgres.drop(url)


def _fill(engine: Engine, series: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO component (id, part_id, component_name, component_name_key, created_at) "
                + series
                + "SELECT n, 'PART-' || n, 'Blade^' || n, 'blade^' || n, CURRENT_TIMESTAMP FROM g"
            ),
            {"rows": ROWS},
        )
        conn.execute(
            text(
                "INSERT INTO inspection (id, component_id, study_instance_uid, study_date, created_at) "
                + series
                + "SELECT n, n, '1.2.' || n, CAST(20000101 + (n % 28) + 100 * (n % 12) + 10000 * (n % 20) "
                "AS VARCHAR), CURRENT_TIMESTAMP FROM g"
            ),
            {"rows": ROWS},
        )
        conn.execute(text("ANALYZE"))


def explain(engine: Engine, **keys: object) -> str:
    model = PATIENT_ROOT if "PatientID" in keys and "*" not in str(keys["PatientID"]) else STUDY_ROOT
    query = query_from_identifier(received(identifier("STUDY", StudyInstanceUID="", **keys)), model)
    compiled = sql.plan(query, engine.dialect.name).statement.compile(dialect=engine.dialect)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            params = tuple(compiled.params[name] for name in compiled.positiontup or ())
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
            return "\n".join(str(row[-1]) for row in rows)
        rows = conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).all()
        return "\n".join(str(row[0]) for row in rows)


def test_inspections_by_part_id_use_the_part_id_index(filled: Engine) -> None:
    plan = explain(filled, PatientID="PART-4711")
    assert "part_id" in plan and ("uq_component_part_id" in plan or "ix_component_part_id" in plan), plan
    assert "ix_inspection_component_id" in plan, plan


def test_inspections_by_component_name_prefix_use_the_pattern_index(filled: Engine) -> None:
    plan = explain(filled, PatientName="BLADE^471*")
    assert "ix_component_component_name_key" in plan, plan
    if filled.dialect.name == "postgresql":  # the prefix became an index range, not a filter
        assert "~>=~ 'blade^471'" in plan, plan
    assert "ix_inspection_component_id" in plan, plan


def test_inspections_by_part_id_prefix_use_the_pattern_index(filled: Engine) -> None:
    plan = explain(filled, PatientID="PART-471*")
    assert "ix_component_part_id" in plan or "uq_component_part_id" in plan, plan
    if filled.dialect.name == "postgresql":
        assert "~>=~ 'PART-471'" in plan, plan


def test_inspections_by_date_range_use_the_date_index(filled: Engine) -> None:
    plan = explain(filled, StudyDate="20050301-20050305")
    assert "ix_inspection_study_date" in plan, plan


def test_pattern_indexes_exist_on_postgresql(postgres_url: str) -> None:
    engine = create_index_engine(postgres_url)
    try:
        with engine.connect() as conn:
            definitions = dict(
                conn.execute(
                    text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'component'")
                ).all()
            )
    finally:
        engine.dispose()
    assert "varchar_pattern_ops" in definitions["ix_component_component_name_key"]
    assert "varchar_pattern_ops" in definitions["ix_component_part_id"]
