"""Initial schema: component, inspection, series, instance, instance_version.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "component",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("part_id", sa.String(), nullable=False),
        sa.Column("part_id_issuer", sa.String(), nullable=True),
        sa.Column("component_name", sa.String(), nullable=True),
        sa.Column("serial_numbers", sa.String(), nullable=True),
        sa.Column("manufacturing_date", sa.String(), nullable=True),
        sa.Column("component_manufacturer", sa.String(), nullable=True),
        sa.Column("material_grade", sa.String(), nullable=True),
        sa.Column("component_shape", sa.String(), nullable=True),
        sa.Column("material_thickness", sa.Float(), nullable=True),
        sa.Column("material_pipe_diameter", sa.Float(), nullable=True),
        sa.Column("manufacturing_procedure", sa.String(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_component")),
        sa.UniqueConstraint("part_id", name=op.f("uq_component_part_id")),
    )
    op.create_index(op.f("ix_component_component_name"), "component", ["component_name"])

    op.create_table(
        "inspection",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("component_id", Id, nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(), nullable=True),
        sa.Column("study_time", sa.String(), nullable=True),
        sa.Column("study_id", sa.String(), nullable=True),
        sa.Column("accession_number", sa.String(), nullable=True),
        sa.Column("study_description", sa.String(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["component_id"], ["component.id"], name=op.f("fk_inspection_component_id_component")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inspection")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_inspection_study_instance_uid")),
    )
    op.create_index(op.f("ix_inspection_component_id"), "inspection", ["component_id"])
    op.create_index(op.f("ix_inspection_study_date"), "inspection", ["study_date"])
    op.create_index(op.f("ix_inspection_accession_number"), "inspection", ["accession_number"])

    op.create_table(
        "series",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("inspection_id", Id, nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(), nullable=True),
        sa.Column("series_date", sa.String(), nullable=True),
        sa.Column("series_time", sa.String(), nullable=True),
        sa.Column("manufacturer", sa.String(), nullable=True),
        sa.Column("station_name", sa.String(), nullable=True),
        sa.Column("protocol_name", sa.String(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["inspection_id"], ["inspection.id"], name=op.f("fk_series_inspection_id_inspection")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("series_instance_uid", name=op.f("uq_series_series_instance_uid")),
    )
    op.create_index(op.f("ix_series_inspection_id"), "series", ["inspection_id"])
    op.create_index(op.f("ix_series_modality"), "series", ["modality"])

    op.create_table(
        "instance",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("series_id", Id, nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(), nullable=True),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("content_date", sa.String(), nullable=True),
        sa.Column("content_time", sa.String(), nullable=True),
        sa.Column("number_of_frames", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("bits_allocated", sa.Integer(), nullable=True),
        sa.Column("current_version_id", Id, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"], name=op.f("fk_instance_series_id_series")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instance_sop_instance_uid")),
    )
    op.create_index(op.f("ix_instance_series_id"), "instance", ["series_id"])

    op.create_table(
        "instance_version",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("instance_id", Id, nullable=False),
        sa.Column("object_key", sa.String(length=200), nullable=False),
        sa.Column("dataset_sha256", sa.String(length=64), nullable=False),
        sa.Column("file_meta_sha256", sa.String(length=64), nullable=False),
        sa.Column("dataset_offset", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("pixel_data_offset", sa.BigInteger(), nullable=True),
        sa.Column("frames", Json, nullable=True),
        sa.Column("dicom_json", Json, nullable=False),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("received_via", sa.String(length=16), nullable=False),
        sa.Column("source_ae", sa.String(length=16), nullable=True),
        sa.Column("source_address", sa.String(length=100), nullable=True),
        sa.Column("received_by", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["instance.id"], name=op.f("fk_instance_version_instance_id_instance")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instance_version")),
        sa.UniqueConstraint("object_key", name=op.f("uq_instance_version_object_key")),
        sa.UniqueConstraint(
            "instance_id", "dataset_sha256", name=op.f("uq_instance_version_instance_id_dataset_sha256")
        ),
    )


def downgrade() -> None:
    op.drop_table("instance_version")
    op.drop_table("instance")
    op.drop_table("series")
    op.drop_table("inspection")
    op.drop_table("component")
