"""The audit trail (``audit_entry``: hash-chained entries, ``audit_head``: the last seq and hash) and
inspection decisions (``decision``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_entry",
        sa.Column("seq", Id, autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=True),
        sa.Column("user_name", sa.String(length=64), nullable=True),
        sa.Column("ae_title", sa.String(length=16), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("part_id", sa.String(length=64), nullable=True),
        sa.Column("uids", sa.String(), nullable=False),
        sa.Column("detail", sa.String(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_entry")),
    )
    for column in ("at", "action", "user_name", "part_id"):
        op.create_index(op.f(f"ix_audit_entry_{column}"), "audit_entry", [column])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", Id, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])
    op.create_table(
        "decision",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("inspection_id", Id, nullable=False),
        sa.Column("disposition", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.String(), nullable=False),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("supersedes_id", Id, nullable=True),
        sa.ForeignKeyConstraint(
            ["inspection_id"], ["inspection.id"], name=op.f("fk_decision_inspection_id_inspection")
        ),
        sa.ForeignKeyConstraint(
            ["supersedes_id"], ["decision.id"], name=op.f("fk_decision_supersedes_id_decision")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decision")),
        sa.UniqueConstraint("supersedes_id", name=op.f("uq_decision_supersedes_id")),
    )
    op.create_index(op.f("ix_decision_inspection_id"), "decision", ["inspection_id"])


def downgrade() -> None:
    op.drop_table("decision")
    op.drop_table("audit_head")
    op.drop_table("audit_entry")
