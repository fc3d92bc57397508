"""How much the archive holds: index counts and storage usage, from the index alone.

Storage usage is what the index records (the size of every version's object), not a listing of
the object store: listing a bucket of millions of objects is an fsck's job, not a status page's.
Objects nobody references (a crash between store and index) are therefore not counted here;
``pacs fsck`` reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from pacs.errors import ResourceUnavailable
from pacs.index.database import read_transaction, redact_url
from pacs.index.schema import component, inspection, instance, instance_version, series


@dataclass(frozen=True)
class IndexStats:
    backend: str  # sqlite or postgresql
    location: str  # the database URL without its password
    components: int
    inspections: int
    series: int
    instances: int
    versions: int


@dataclass(frozen=True)
class StorageStats:
    location: str  # the object store, without credentials
    objects: int  # every version's object, earlier versions kept as evidence included
    bytes: int
    current_objects: int  # the current version of each instance: what a retrieve serves
    current_bytes: int


class StatsService:
    def __init__(self, engine: Engine, database_url: str, store_location: str) -> None:
        self.engine = engine
        self.database_url = database_url
        self.store_location = store_location

    def index(self) -> IndexStats:
        counts = {}
        try:
            with read_transaction(self.engine) as conn:
                for name, table in (
                    ("components", component),
                    ("inspections", inspection),
                    ("series", series),
                    ("instances", instance),
                    ("versions", instance_version),
                ):
                    counts[name] = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc
        return IndexStats(self.engine.dialect.name, redact_url(self.database_url), **counts)

    def storage(self) -> StorageStats:
        size = func.coalesce(func.sum(instance_version.c.size), 0)
        try:
            with read_transaction(self.engine) as conn:
                objects, total = conn.execute(select(func.count(), size).select_from(instance_version)).one()
                current, current_total = conn.execute(
                    select(func.count(), size).select_from(
                        instance_version.join(
                            instance, instance.c.current_version_id == instance_version.c.id
                        )
                    )
                ).one()
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc
        return StorageStats(self.store_location, int(objects), int(total), int(current), int(current_total))
