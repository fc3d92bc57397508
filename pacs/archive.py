"""The archive's core objects built from the settings: index, object store and services.

Both faces and every command get one :class:`Archive` per process, built here; nothing is created
at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from pacs.audit import AuditTrail
from pacs.config import Settings
from pacs.decisions import DecisionRepository
from pacs.errors import ResourceUnavailable
from pacs.index import migrate
from pacs.index.database import create_index_engine, redact_url
from pacs.index.login_failures import LoginFailureRepository
from pacs.index.nodes import NodeRepository
from pacs.index.repository import IndexRepository
from pacs.index.users import UserRepository
from pacs.peers import DicomPeers
from pacs.retention import RetentionService
from pacs.services.fsck import FsckService
from pacs.services.importer import ImportService
from pacs.services.ingest import IngestService
from pacs.services.retrieve import RetrieveService
from pacs.services.search import SearchService
from storage import ObjectStore, StorageError, StoreURLError, open_store


@dataclass
class Archive:
    settings: Settings
    engine: Engine
    index: IndexRepository
    store: ObjectStore
    ingest: IngestService
    retrieve: RetrieveService
    nodes: NodeRepository
    search: SearchService
    users: UserRepository
    login_failures: LoginFailureRepository
    audit: AuditTrail
    decisions: DecisionRepository
    retention: RetentionService
    #: C-ECHO / C-STORE to other nodes; set by the composition root where the DIMSE face runs.
    peers: DicomPeers | None = None

    def importer(self) -> ImportService:
        return ImportService(self.ingest)

    def fsck(self) -> FsckService:
        return FsckService(self.index, self.store)

    def describe(self) -> str:
        return f"index {redact_url(str(self.settings.database_url))}, objects {self.store.location}"

    def close(self) -> None:
        self.audit.close()
        self.ingest.close()
        self.store.close()
        self.engine.dispose()


def open_archive(settings: Settings, *, upgrade_schema: bool = True) -> Archive:
    """Connect index and object store; with ``upgrade_schema`` bring the schema to the current head."""
    assert settings.database_url is not None and settings.object_store is not None
    if not upgrade_schema:
        _require_existing_index(settings.database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_index_engine(settings.database_url)
    try:
        if upgrade_schema:
            migrate.upgrade(engine)
        store = open_store(settings.object_store, staging_dir=settings.incoming_dir)
    except (StorageError, StoreURLError) as exc:
        engine.dispose()
        raise ResourceUnavailable(f"object store: {exc}") from exc
    except Exception as exc:
        engine.dispose()
        if isinstance(exc, ResourceUnavailable):
            raise
        raise ResourceUnavailable(f"index {redact_url(settings.database_url)}: {exc}") from exc
    index = IndexRepository(engine)
    audit = AuditTrail(engine)
    return Archive(
        settings=settings,
        engine=engine,
        index=index,
        store=store,
        ingest=IngestService(index, store),
        retrieve=RetrieveService(index, store),
        nodes=NodeRepository(engine),
        search=SearchService(engine),
        users=UserRepository(engine),
        login_failures=LoginFailureRepository(engine),
        audit=audit,
        decisions=DecisionRepository(engine, audit),
        retention=RetentionService(engine, store, audit, settings.retention_rules, settings.purge_grace_days),
    )


def _require_existing_index(url: str) -> None:
    """Maintenance commands act on an existing archive; they must not create an empty one."""
    parsed = make_url(url)
    path = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if path and path != ":memory:" and not Path(path).exists():
        raise ResourceUnavailable(
            f"no archive index at {path}: check --data-dir / --database-url, "
            "or create it with `pacs db upgrade`"
        )
