"""Reads and writes of the metadata index; the only module that speaks SQL to it."""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from pacs.errors import ResourceUnavailable
from pacs.index.database import read_transaction, write_transaction
from pacs.index.schema import component, inspection, instance, instance_version, series

log = logging.getLogger(__name__)

_RACE_RETRIES = 5
_NATURAL_KEYS = ((component, "part_id"), (inspection, "study_instance_uid"), (series, "series_instance_uid"))


class Outcome(enum.StrEnum):
    STORED = "stored"  # a new instance
    NEW_VERSION = "new version"  # different bytes under a known SOP Instance UID; now current
    DUPLICATE = "already present"  # this exact dataset is already a version of the instance
    REPAIRED = "repaired"  # ... but its stored object was damaged or gone: the new copy replaces it


@dataclass(frozen=True)
class NewVersion:
    """Everything the index records for one received object."""

    sop_instance_uid: str
    component: Mapping[str, Any]
    inspection: Mapping[str, Any]
    series: Mapping[str, Any]
    instance: Mapping[str, Any]
    object_key: str
    dataset_sha256: str
    file_meta_sha256: str
    dataset_offset: int
    size: int
    transfer_syntax_uid: str
    pixel_data_offset: int | None
    frames: list[list[tuple[int, int]]] | None
    dicom_json: dict[str, Any]
    received_at: dt.datetime
    received_via: str
    source_ae: str | None
    source_address: str | None
    received_by: str | None


@dataclass(frozen=True)
class Recorded:
    outcome: Outcome
    instance_id: int
    version_id: int


@dataclass(frozen=True)
class VersionRow:
    id: int
    instance_id: int
    sop_instance_uid: str
    object_key: str
    dataset_sha256: str
    file_meta_sha256: str
    dataset_offset: int
    size: int
    transfer_syntax_uid: str
    received_at: dt.datetime
    is_current: bool


class IndexRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # The ingest path runs these for every instance: build them once, bind values per call.
        self._find_id = {
            t.name: select(t.c.id).where(t.c[key] == bindparam("key")) for t, key in _NATURAL_KEYS
        }
        self._insert_new = {
            t.name: insert(t).on_conflict_do_nothing(index_elements=[key]).returning(t.c.id)
            for t, key in _NATURAL_KEYS
        }
        self._find_instance = select(instance.c.id, instance.c.series_id).where(
            instance.c.sop_instance_uid == bindparam("uid")
        )
        self._find_series_chain = (
            select(series.c.id, series.c.inspection_id, inspection.c.component_id)
            .join(inspection, inspection.c.id == series.c.inspection_id)
            .where(series.c.series_instance_uid == bindparam("uid"))
        )
        self._series_parents = (
            select(series.c.inspection_id, inspection.c.component_id)
            .join(inspection, inspection.c.id == series.c.inspection_id)
            .where(series.c.id == bindparam("id"))
        )
        self._inspection_component = select(inspection.c.component_id).where(
            inspection.c.id == bindparam("id")
        )
        self._inspection_of = select(inspection.c.id, inspection.c.component_id).where(
            inspection.c.study_instance_uid == bindparam("uid")
        )
        self._modalities = select(inspection.c.modalities_in_study).where(inspection.c.id == bindparam("id"))
        self._set_modalities = inspection.update().where(inspection.c.id == bindparam("_id"))
        self._add_to = {
            f"{table.name}.{column}": table.update()
            .where(table.c.id == bindparam("_id"))
            .values({column: table.c[column] + bindparam("_delta")})
            for table, columns in (
                (component, ("number_of_studies", "number_of_series", "number_of_instances")),
                (inspection, ("number_of_series", "number_of_instances")),
                (series, ("number_of_instances",)),
            )
            for column in columns
        }
        self._find_same_bytes = select(instance_version.c.id).where(
            instance_version.c.instance_id == bindparam("instance_id"),
            instance_version.c.dataset_sha256 == bindparam("sha256"),
        )
        self._find_version_by_uid = (
            select(instance_version.c.id)
            .join(instance, instance.c.id == instance_version.c.instance_id)
            .where(
                instance.c.sop_instance_uid == bindparam("uid"),
                instance_version.c.dataset_sha256 == bindparam("sha256"),
            )
        )
        self._insert_new_instance = (
            insert(instance)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(instance.c.id)
        )
        self._insert_version = instance_version.insert().returning(instance_version.c.id)
        self._update_instance = instance.update().where(instance.c.id == bindparam("_instance_id"))

    # -- writing ------------------------------------------------------------------------------
    def record(self, new: NewVersion) -> Recorded:
        """Record ``new`` in one transaction: upsert component, inspection, series and instance,
        insert the version and make it current. Concurrent first arrivals of one component,
        inspection or series are safe (unique constraints + ON CONFLICT, retried on a lost race)."""
        for attempt in range(_RACE_RETRIES):
            try:
                with write_transaction(self.engine) as conn:
                    return self._record(conn, new)
            except IntegrityError as exc:
                # Another transaction inserted the same row between our check and our insert;
                # the retry sees it.
                if attempt == _RACE_RETRIES - 1:
                    raise ResourceUnavailable(
                        f"index refused recording {new.sop_instance_uid}: {exc.orig}"
                    ) from exc
                log.debug("retrying index write for %s after a concurrent insert", new.sop_instance_uid)
            except OperationalError as exc:
                raise ResourceUnavailable(
                    f"index unavailable while recording {new.sop_instance_uid}: {exc.orig}"
                ) from exc
            except SQLAlchemyError as exc:
                raise ResourceUnavailable(
                    f"index error while recording {new.sop_instance_uid}: {exc}"
                ) from exc
        raise AssertionError("unreachable")

    def _record(self, conn: Connection, new: NewVersion) -> Recorded:
        now = new.received_at
        # Usually the series is known: one lookup replaces the component/inspection/series chain.
        # A series keeps the inspection and component it first arrived with.
        chain = conn.execute(self._find_series_chain, {"uid": new.series["series_instance_uid"]}).first()
        if chain is not None:
            series_id, inspection_id, component_id = int(chain[0]), int(chain[1]), int(chain[2])
        else:
            series_id, inspection_id, component_id = self._create_chain(conn, new, now)
        instance_values = {**new.instance, "series_id": series_id}
        inserted = conn.execute(
            self._insert_new_instance, {**instance_values, "created_at": now, "updated_at": now}
        ).first()
        if inserted is not None:
            instance_id = int(inserted.id)
            outcome = Outcome.STORED
            self._count_instances(conn, series_id, inspection_id, component_id, +1)
        else:
            existing = conn.execute(self._find_instance, {"uid": new.sop_instance_uid}).one()
            instance_id = int(existing.id)
            same = conn.execute(
                self._find_same_bytes, {"instance_id": instance_id, "sha256": new.dataset_sha256}
            ).first()
            if same is not None:
                return Recorded(Outcome.DUPLICATE, instance_id, same.id)
            outcome = Outcome.NEW_VERSION
            if int(existing.series_id) != series_id:  # the new version belongs to another series
                old = conn.execute(self._series_parents, {"id": existing.series_id}).one()
                self._count_instances(conn, int(existing.series_id), int(old[0]), int(old[1]), -1)
                self._count_instances(conn, series_id, inspection_id, component_id, +1)

        version_id = conn.execute(
            self._insert_version,
            {
                "instance_id": instance_id,
                "object_key": new.object_key,
                "dataset_sha256": new.dataset_sha256,
                "file_meta_sha256": new.file_meta_sha256,
                "dataset_offset": new.dataset_offset,
                "size": new.size,
                "transfer_syntax_uid": new.transfer_syntax_uid,
                "pixel_data_offset": new.pixel_data_offset,
                "frames": new.frames,
                "dicom_json": new.dicom_json,
                "received_at": now,
                "received_via": new.received_via,
                "source_ae": new.source_ae,
                "source_address": new.source_address,
                "received_by": new.received_by,
            },
        ).scalar_one()
        # The instance row describes its current version (which may have moved to another series).
        conn.execute(
            self._update_instance,
            {
                **instance_values,
                "current_version_id": version_id,
                "updated_at": now,
                "_instance_id": instance_id,
            },
        )
        return Recorded(outcome, instance_id, version_id)

    def _create_chain(self, conn: Connection, new: NewVersion, now: dt.datetime) -> tuple[int, int, int]:
        """Series (and, if new too, inspection and component) of a series seen for the first time,
        with their counts. An inspection keeps the component it first arrived with, a series the
        inspection: an instance that names others is filed under what its study already is."""
        known = conn.execute(self._inspection_of, {"uid": new.inspection["study_instance_uid"]}).first()
        if known is not None:
            inspection_id, component_id = int(known[0]), int(known[1])
        else:
            component_id, _ = self._get_or_create(
                conn, component, "part_id", {**new.component, "created_at": now}
            )
            inspection_id, created = self._get_or_create(
                conn,
                inspection,
                "study_instance_uid",
                {**new.inspection, "component_id": component_id, "created_at": now},
            )
            if created:
                conn.execute(self._add_to["component.number_of_studies"], {"_id": component_id, "_delta": 1})
            else:  # a concurrent first arrival created it
                component_id = int(
                    conn.execute(self._inspection_component, {"id": inspection_id}).scalar_one()
                )
        series_id, created = self._get_or_create(
            conn,
            series,
            "series_instance_uid",
            {**new.series, "inspection_id": inspection_id, "created_at": now},
        )
        if not created:  # a concurrent first arrival created it
            inspection_id, component_id = (
                int(v) for v in conn.execute(self._series_parents, {"id": series_id}).one()
            )
            return series_id, inspection_id, component_id
        conn.execute(self._add_to["inspection.number_of_series"], {"_id": inspection_id, "_delta": 1})
        conn.execute(self._add_to["component.number_of_series"], {"_id": component_id, "_delta": 1})
        modality = new.series.get("modality")
        if modality:
            current = conn.execute(self._modalities, {"id": inspection_id}).scalar_one()
            found = set(current.split("\\")) if current else set()
            if modality not in found:
                conn.execute(
                    self._set_modalities,
                    {"_id": inspection_id, "modalities_in_study": "\\".join(sorted(found | {modality}))},
                )
        return series_id, inspection_id, component_id

    def _count_instances(
        self, conn: Connection, series_id: int, inspection_id: int, component_id: int, delta: int
    ) -> None:
        for counter, row_id in (
            ("series.number_of_instances", series_id),
            ("inspection.number_of_instances", inspection_id),
            ("component.number_of_instances", component_id),
        ):
            conn.execute(self._add_to[counter], {"_id": row_id, "_delta": delta})

    def _get_or_create(
        self, conn: Connection, table: Table, key: str, values: Mapping[str, Any]
    ) -> tuple[int, bool]:
        """The id of the row whose ``key`` equals ``values[key]``, inserting ``values`` if none; and
        whether this call inserted it.

        The first arrival's attributes are kept: later instances of the same component, inspection
        or series do not rewrite them (their own values stay in their DICOM JSON).
        """
        find = self._find_id[table.name]
        row = conn.execute(find, {"key": values[key]}).first()
        if row is not None:
            return int(row.id), False
        inserted = conn.execute(self._insert_new[table.name], dict(values)).first()
        if inserted is not None:
            return int(inserted.id), True
        # Lost the race to a concurrent insert that has committed by now.
        return int(conn.execute(find, {"key": values[key]}).scalar_one()), False

    # -- reading ------------------------------------------------------------------------------
    def find_version(self, sop_instance_uid: str, dataset_sha256: str) -> int | None:
        """The id of the version of this instance with exactly this dataset, if there is one."""
        with self._read() as conn:
            row = conn.execute(
                self._find_version_by_uid, {"uid": sop_instance_uid, "sha256": dataset_sha256}
            ).first()
        return None if row is None else int(row.id)

    def versions(self, sop_instance_uid: str) -> list[VersionRow]:
        """Every version of the instance, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                _version_select()
                .where(instance.c.sop_instance_uid == sop_instance_uid)
                .order_by(instance_version.c.id)
            ).all()
        return [version_row(r) for r in rows]

    def current_version(self, sop_instance_uid: str) -> VersionRow | None:
        with self._read() as conn:
            row = conn.execute(
                _version_select().where(
                    instance.c.sop_instance_uid == sop_instance_uid,
                    instance_version.c.id == instance.c.current_version_id,
                )
            ).first()
        return None if row is None else version_row(row)

    def version(self, version_id: int) -> VersionRow | None:
        with self._read() as conn:
            row = conn.execute(_version_select().where(instance_version.c.id == version_id)).first()
        return None if row is None else version_row(row)

    def replace_object(
        self,
        version_id: int,
        damaged_key: str,
        key: str,
        file_meta_sha256: str,
        dataset_offset: int,
        size: int,
    ) -> bool:
        """Point a version whose object is damaged at an intact copy of the same dataset (same
        dataset SHA-256; its file meta may differ). False if another repair got there first."""
        try:
            with write_transaction(self.engine) as conn:
                changed = conn.execute(
                    instance_version.update()
                    .where(instance_version.c.id == version_id, instance_version.c.object_key == damaged_key)
                    .values(
                        object_key=key,
                        file_meta_sha256=file_meta_sha256,
                        dataset_offset=dataset_offset,
                        size=size,
                    )
                ).rowcount
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(
                f"index unavailable while repairing version {version_id}: {exc}"
            ) from exc
        return bool(changed)

    def version_metadata(self, version_id: int) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(
                select(
                    instance_version.c.dicom_json,
                    instance_version.c.frames,
                    instance_version.c.pixel_data_offset,
                ).where(instance_version.c.id == version_id)
            ).first()
        if row is None:
            return None
        return {
            "dicom_json": row.dicom_json,
            "frames": row.frames,
            "pixel_data_offset": row.pixel_data_offset,
        }

    def iter_versions(self, batch: int = 1000) -> Iterator[VersionRow]:
        """Every version in the index, in id order, read in batches (for consistency checks)."""
        last = 0
        while True:
            with self._read() as conn:
                rows = conn.execute(
                    _version_select()
                    .where(instance_version.c.id > last)
                    .order_by(instance_version.c.id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            for row in rows:
                yield version_row(row)
            last = rows[-1].id

    def known_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` an instance version refers to."""
        keys = list(keys)
        found: set[str] = set()
        with self._read() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                found.update(
                    conn.execute(
                        select(instance_version.c.object_key).where(instance_version.c.object_key.in_(chunk))
                    ).scalars()
                )
        return found

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {
                name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                for name, table in (
                    ("components", component),
                    ("inspections", inspection),
                    ("series", series),
                    ("instances", instance),
                    ("versions", instance_version),
                )
            }

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(text("SELECT 1"))

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with read_transaction(self.engine) as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc


#: The columns :func:`version_row` reads, but ``is_current`` (instance_version joined with instance).
VERSION_COLUMNS = (
    instance_version.c.id,
    instance_version.c.instance_id,
    instance.c.sop_instance_uid,
    instance_version.c.object_key,
    instance_version.c.dataset_sha256,
    instance_version.c.file_meta_sha256,
    instance_version.c.dataset_offset,
    instance_version.c.size,
    instance_version.c.transfer_syntax_uid,
    instance_version.c.received_at,
)


def _version_select() -> Any:
    return select(
        *VERSION_COLUMNS,
        (instance.c.current_version_id == instance_version.c.id).label("is_current"),
    ).join(instance, instance.c.id == instance_version.c.instance_id)


def version_row(row: Any) -> VersionRow:
    """A :class:`VersionRow` from a result row with the version's columns and ``is_current``."""
    return VersionRow(
        id=int(row.id),
        instance_id=int(row.instance_id),
        sop_instance_uid=row.sop_instance_uid,
        object_key=row.object_key,
        dataset_sha256=row.dataset_sha256,
        file_meta_sha256=row.file_meta_sha256,
        dataset_offset=int(row.dataset_offset),
        size=int(row.size),
        transfer_syntax_uid=row.transfer_syntax_uid,
        received_at=row.received_at,
        is_current=bool(row.is_current),
    )
