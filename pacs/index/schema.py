"""Tables of the metadata index.

Four DICOM levels read the NDE way (component = patient, inspection = study, series, instance) and
the instance *versions*: every distinct object ever received under a SOP Instance UID, with where its
bytes are, their SHA-256 from the moment they arrived, who sent them, and its metadata as DICOM JSON.
The indexed attribute columns come from ``pacs/diconde/attributes.csv``; a change there needs an
Alembic migration (``tests/unit/index/test_schema.py`` compares models and migrations).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB

from pacs.diconde import IndexedAttribute, indexed_attributes

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
Id = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


class UtcTimestamp(TypeDecorator[dt.datetime]):
    """A point in time, read back aware and in UTC on every backend, once here instead of at every
    place that reads one.

    PostgreSQL's ``timestamptz`` keeps the instant and hands it back in the session's time zone
    (the server's setting): it is turned into UTC. SQLite keeps no time zone: a value is stored as
    its UTC wall time and comes back naive, and is given UTC again. A naive value written is taken
    to be UTC, as the archive writes, not the database session's local time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.astimezone(dt.UTC) if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.astimezone(dt.UTC) if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


Timestamp = UtcTimestamp()


def _attribute_columns(level: str, skip: set[str]) -> list[Column[Any]]:
    columns: list[Column[Any]] = []
    for attr in indexed_attributes()[level]:  # type: ignore[index]
        if attr.column in skip:
            continue
        columns.append(Column(attr.column, _column_type(attr), nullable=True))
    return columns


def _column_type(attr: IndexedAttribute) -> Any:
    kind = attr.python_type
    if kind is int:
        return Integer()
    if kind is float:
        return Float()
    return String()


def _counter(name: str) -> Column[Any]:
    """A count kept up to date by the repository in the ingest transaction, for query responses
    (Number of ... Related ..., PS3.4 C.3) that must not count rows at query time."""
    return Column(name, Integer(), nullable=False, server_default="0")


component = Table(
    "component",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("part_id", String(), nullable=False),  # PatientID; may be empty, never NULL
    *_attribute_columns("component", {"part_id"}),
    # The component name case-folded, for the case-insensitive person name matching of queries.
    Column("component_name_key", String(), nullable=True),
    _counter("number_of_studies"),
    _counter("number_of_series"),
    _counter("number_of_instances"),
    Column("created_at", Timestamp, nullable=False),
    UniqueConstraint("part_id"),
    Index(None, "component_name"),
    # Queries: prefix wildcards ("BLADE*") on PostgreSQL with a language collation need the pattern
    # operator class (it serves equality too); SQLite ignores it (migration 0003).
    Index(None, "component_name_key", postgresql_ops={"component_name_key": "varchar_pattern_ops"}),
    Index(None, "part_id", postgresql_ops={"part_id": "varchar_pattern_ops"}),
)

inspection = Table(
    "inspection",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("component_id", Id, ForeignKey("component.id"), nullable=False, index=True),
    Column("study_instance_uid", String(64), nullable=False),
    *_attribute_columns("inspection", {"study_instance_uid"}),
    Column("modalities_in_study", String(), nullable=True),  # the series' modalities, sorted, "\\"-joined
    _counter("number_of_series"),
    _counter("number_of_instances"),
    Column("created_at", Timestamp, nullable=False),
    # Two-phase deletion (pacs/retention.py): asked for here, carried out by `pacs purge` later.
    Column("delete_requested_at", Timestamp, nullable=True),
    Column("delete_requested_by", String(64), nullable=True),
    Column("delete_reason", String(), nullable=True),
    UniqueConstraint("study_instance_uid"),
    Index(None, "study_date"),
    Index(None, "accession_number"),
)

series = Table(
    "series",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("inspection_id", Id, ForeignKey("inspection.id"), nullable=False, index=True),
    Column("series_instance_uid", String(64), nullable=False),
    *_attribute_columns("series", {"series_instance_uid"}),
    _counter("number_of_instances"),
    Column("created_at", Timestamp, nullable=False),
    UniqueConstraint("series_instance_uid"),
    Index(None, "modality"),
)

instance = Table(
    "instance",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("series_id", Id, ForeignKey("series.id"), nullable=False, index=True),
    Column("sop_instance_uid", String(64), nullable=False),
    *_attribute_columns("instance", {"sop_instance_uid"}),
    # The version every reader gets; older versions stay in instance_version. No foreign key: the
    # two tables point at each other, and the repository sets this in the transaction that inserts
    # the version it names.
    Column("current_version_id", Id, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("sop_instance_uid"),
)

instance_version = Table(
    "instance_version",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("instance_id", Id, ForeignKey("instance.id"), nullable=False),
    Column("object_key", String(200), nullable=False),
    # SHA-256 of the dataset as the sender sent it (the bytes after the file meta group): the
    # content's identity. The file meta's own hash makes the whole stored object verifiable.
    Column("dataset_sha256", String(64), nullable=False),
    Column("file_meta_sha256", String(64), nullable=False),
    Column("dataset_offset", Integer(), nullable=False),
    Column("size", BigInteger(), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    # Pixel data layout: per frame, a list of [offset, length] segments in the stored object.
    Column("pixel_data_offset", BigInteger(), nullable=True),
    Column("frames", Json, nullable=True),
    Column("dicom_json", Json, nullable=False),
    Column("received_at", Timestamp, nullable=False),
    Column("received_via", String(16), nullable=False),  # c-store, import, stow
    Column("source_ae", String(16), nullable=True),
    Column("source_address", String(100), nullable=True),
    Column("received_by", String(64), nullable=True),  # the user behind an import or upload
    UniqueConstraint("object_key"),
    # An identical re-send (same dataset bytes for the same instance) never makes a second version.
    UniqueConstraint("instance_id", "dataset_sha256"),
)

# DICOM application entities the archive sends to (C-MOVE destinations, storage commitment reports,
# `pacs send`) and queries (`pacs query` / `pacs retrieve`).
node = Table(
    "node",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("ae_title", String(16), nullable=False),
    Column("host", String(), nullable=False),
    Column("port", Integer(), nullable=False),
    Column("tls", Boolean(), nullable=False, server_default=false()),
    Column("description", String(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    UniqueConstraint("ae_title"),
)

# Users of the HTTP API (``pacs users``). Only the SHA-256 of a user's API token is kept
# (pacs.security); a revoked user keeps its row, so the name stays taken and its actions in the
# logs keep meaning.
users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("token_sha256", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("revoked_at", Timestamp, nullable=True),
    Column("expires_at", Timestamp, nullable=True),  # NULL: the token does not expire
    UniqueConstraint("name"),
    UniqueConstraint("token_sha256"),
)

# The audit trail (pacs/audit.py): append-only, hash-chained. ``seq`` is given under the lock of
# ``audit_head`` (one row: the last seq and hash), so it has no gaps, and each entry's ``hash`` is
# the SHA-256 of its fields and the previous entry's hash: an edited, inserted or deleted entry
# breaks the chain, a deleted tail disagrees with the head.
audit_entry = Table(
    "audit_entry",
    metadata,
    Column("seq", Id, primary_key=True, autoincrement=False),
    Column("at", Timestamp, nullable=False, index=True),
    Column("action", String(32), nullable=False, index=True),
    Column("outcome", String(16), nullable=False),
    Column("via", String(16), nullable=True),
    Column("user_name", String(64), nullable=True, index=True),
    Column("ae_title", String(16), nullable=True),
    Column("address", String(64), nullable=True),
    Column("part_id", String(64), nullable=True, index=True),
    Column("uids", String(), nullable=False),  # JSON list
    Column("detail", String(), nullable=False),  # JSON object
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Id, nullable=False),
    Column("hash", String(64), nullable=False),
)

# Inspection decisions (pacs/decisions.py): never updated or deleted; a later one supersedes.
decision = Table(
    "decision",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("inspection_id", Id, ForeignKey("inspection.id"), nullable=False, index=True),
    Column("disposition", String(16), nullable=False),
    Column("comment", String(), nullable=False),
    Column("user_name", String(64), nullable=False),
    Column("decided_at", Timestamp, nullable=False),
    Column("supersedes_id", Id, ForeignKey("decision.id"), nullable=True),
    UniqueConstraint("supersedes_id"),  # a decision is superseded once: no two branches
)

# Legal holds (pacs/retention.py): while a part has an active hold (released_at NULL), none of its
# inspections may be deleted. Rows are kept when released.
legal_hold = Table(
    "legal_hold",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("part_id", String(64), nullable=False, index=True),
    Column("reason", String(), nullable=False),
    Column("placed_by", String(64), nullable=False),
    Column("placed_at", Timestamp, nullable=False),
    Column("released_by", String(64), nullable=True),
    Column("released_at", Timestamp, nullable=True),
)

# Failed logins (pacs/index/login_failures.py): one row per failure, so that the limit of
# pacs.security.FailedLogins holds across the processes and nodes sharing the index. Rows older
# than the window are deleted as new failures arrive.
login_failure = Table(
    "login_failure",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("address", String(64), nullable=False),  # the client address (IPv6 needs up to 45)
    Column("at", Timestamp, nullable=False),  # wall-clock UTC, the same on every node
    Index(None, "address", "at"),
    Index(None, "at"),
)
