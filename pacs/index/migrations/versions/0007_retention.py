"""Retention: legal holds (``legal_hold``) and two-phase deletion marks on ``inspection``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("inspection") as batch:
        batch.add_column(sa.Column("delete_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("delete_requested_by", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("delete_reason", sa.String(), nullable=True))
    op.create_table(
        "legal_hold",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("part_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("placed_by", sa.String(length=64), nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_by", sa.String(length=64), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_hold")),
    )
    op.create_index(op.f("ix_legal_hold_part_id"), "legal_hold", ["part_id"])


def downgrade() -> None:
    op.drop_table("legal_hold")
    with op.batch_alter_table("inspection") as batch:
        batch.drop_column("delete_reason")
        batch.drop_column("delete_requested_by")
        batch.drop_column("delete_requested_at")
