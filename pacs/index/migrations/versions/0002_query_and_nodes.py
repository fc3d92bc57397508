"""Query support (case-folded component names, related counts, modalities in study) and DICOM nodes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _counter(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.Integer(), nullable=False, server_default="0")


def upgrade() -> None:
    op.add_column("component", sa.Column("component_name_key", sa.String(), nullable=True))
    for name in ("number_of_studies", "number_of_series", "number_of_instances"):
        op.add_column("component", _counter(name))
    op.create_index(op.f("ix_component_component_name_key"), "component", ["component_name_key"])
    op.add_column("inspection", sa.Column("modalities_in_study", sa.String(), nullable=True))
    for name in ("number_of_series", "number_of_instances"):
        op.add_column("inspection", _counter(name))
    op.add_column("series", _counter("number_of_instances"))

    op.create_table(
        "node",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("tls", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("description", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node")),
        sa.UniqueConstraint("ae_title", name=op.f("uq_node_ae_title")),
    )
    _backfill()


def _backfill() -> None:
    """Fill the new columns for what archives of revision 0001 already hold."""
    conn = op.get_bind()
    for row in conn.execute(
        sa.text("SELECT id, component_name FROM component WHERE component_name IS NOT NULL")
    ):
        conn.execute(
            sa.text("UPDATE component SET component_name_key = :key WHERE id = :id"),
            {"key": row.component_name.casefold(), "id": row.id},
        )
    conn.execute(
        sa.text(
            "UPDATE series SET number_of_instances = "
            "(SELECT count(*) FROM instance WHERE instance.series_id = series.id)"
        )
    )
    conn.execute(
        sa.text(
            "UPDATE inspection SET "
            "number_of_series = (SELECT count(*) FROM series WHERE series.inspection_id = inspection.id), "
            "number_of_instances = (SELECT coalesce(sum(series.number_of_instances), 0) FROM series "
            "WHERE series.inspection_id = inspection.id)"
        )
    )
    conn.execute(
        sa.text(
            "UPDATE component SET "
            "number_of_studies = "
            "(SELECT count(*) FROM inspection WHERE inspection.component_id = component.id), "
            "number_of_series = (SELECT coalesce(sum(inspection.number_of_series), 0) FROM inspection "
            "WHERE inspection.component_id = component.id), "
            "number_of_instances = (SELECT coalesce(sum(inspection.number_of_instances), 0) FROM inspection "
            "WHERE inspection.component_id = component.id)"
        )
    )
    modalities: dict[int, set[str]] = {}
    for row in conn.execute(sa.text("SELECT inspection_id, modality FROM series WHERE modality IS NOT NULL")):
        modalities.setdefault(row.inspection_id, set()).add(row.modality)
    for inspection_id, found in modalities.items():
        conn.execute(
            sa.text("UPDATE inspection SET modalities_in_study = :m WHERE id = :id"),
            {"m": "\\".join(sorted(found)), "id": inspection_id},
        )


def downgrade() -> None:
    op.drop_table("node")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("number_of_instances")
    with op.batch_alter_table("inspection") as batch:
        batch.drop_column("number_of_instances")
        batch.drop_column("number_of_series")
        batch.drop_column("modalities_in_study")
    op.drop_index(op.f("ix_component_component_name_key"), table_name="component")
    with op.batch_alter_table("component") as batch:
        for name in ("number_of_instances", "number_of_series", "number_of_studies", "component_name_key"):
            batch.drop_column(name)
