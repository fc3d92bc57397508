"""Indexes for C-FIND / QIDO: prefix wildcards on part IDs and component names on PostgreSQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

``pacs.query.sql`` matches DICOM wildcards with ``LIKE`` on PostgreSQL and ``GLOB`` on SQLite.
PostgreSQL uses an ordinary B-tree index for ``LIKE 'BLADE%'`` only when the database collation is
``C``; production databases are usually created with a language collation (``en_US.utf8``), where
only an index with the ``varchar_pattern_ops`` operator class serves a prefix. Such an index also
serves equality, so it replaces the plain index on ``component_name_key``. SQLite ignores the
operator class: there both are plain indexes, which ``GLOB`` with a literal prefix uses.

The date index a study-level date range needs (``ix_inspection_study_date``) exists since 0001.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Wildcard component names ("BLADE*", case-insensitive: on the case-folded key).
    op.drop_index(op.f("ix_component_component_name_key"), table_name="component")
    op.create_index(
        op.f("ix_component_component_name_key"),
        "component",
        ["component_name_key"],
        postgresql_ops={"component_name_key": "varchar_pattern_ops"},
    )
    # Wildcard part IDs ("BLADE-00*"); exact part IDs use the unique constraint's index.
    op.create_index(
        op.f("ix_component_part_id"),
        "component",
        ["part_id"],
        postgresql_ops={"part_id": "varchar_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_component_part_id"), table_name="component")
    op.drop_index(op.f("ix_component_component_name_key"), table_name="component")
    op.create_index(op.f("ix_component_component_name_key"), "component", ["component_name_key"])
