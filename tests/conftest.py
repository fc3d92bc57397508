"""Fixtures shared by the whole suite: real backends, never mocks.

* ``backend`` runs a test once per backend pair: SQLite + filesystem (the embedded default) and
  PostgreSQL (the machine's server, a fresh database per test) + S3 (SeaweedFS on loopback).
* ``archive`` is an :class:`pacs.archive.Archive` on that pair; ``dicom_node`` the archive's DIMSE
  face started in this process on a free port.

PostgreSQL is reached at ``PACS_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pacs.archive import Archive, open_archive
from pacs.config import Settings, load_settings
from pacs.index import migrate
from pacs.index.database import create_index_engine
from pacs.supervisor import limit_malloc_arenas
from tests.support.seaweed import SeaweedS3
from tests.support.web import RunningWeb, running_web

POSTGRES_URL = os.environ.get("PACS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite+file", "postgresql+s3"]

# The in-process servers (running_web, dicom_node) run with a worker's malloc arenas, as `pacs serve`
# does: the memory tests measure this process, and with glibc's default arenas the memory freed by
# the S3 upload threads stayed with each thread's own arena (a 300 MB STOW grew this process by 70 to
# 119 MB from run to run; 78 to 81 MB with two arenas).
limit_malloc_arenas()


# -- PostgreSQL ---------------------------------------------------------------------------------
class PostgresDatabases:
    """Creates throw-away databases on the test server, from a migrated template."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url).set(drivername="postgresql+psycopg")
        self.admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self.prefix = f"pacs_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.template = f"{self.prefix}_template"
        self._created: list[str] = []

    def url(self, name: str) -> str:
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def _create(self, name: str, template: str = "template0") -> str:
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        self._created.append(name)
        return self.url(name)

    def prepare_template(self) -> None:
        url = self._create(self.template)
        engine = create_index_engine(url)
        migrate.upgrade(engine)
        engine.dispose()

    def fresh(self, migrated: bool = True) -> str:
        name = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        return self._create(name, self.template if migrated else "template0")

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self._created:
            self._created.remove(name)

    def drop_all(self) -> None:
        for name in list(reversed(self._created)):
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._created.clear()
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases(POSTGRES_URL)
    try:
        with databases.admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # the suite requires the server; say how to start it
        pytest.fail(
            f"PostgreSQL at {POSTGRES_URL} is not reachable ({exc}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`",
            pytrace=False,
        )
    databases.prepare_template()
    yield databases
    databases.drop_all()


@pytest.fixture
def postgres_url(postgres: PostgresDatabases) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    url = postgres.fresh()
    yield url
    postgres.drop(url)


# -- S3 -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_url(s3_server: SeaweedS3) -> Iterator[str]:
    """An S3 object store URL on a bucket of its own, removed after the test."""
    bucket = f"pacs-{uuid.uuid4().hex[:12]}"
    yield s3_server.url(bucket)
    s3_server.remove_bucket(bucket)


# -- backend pairs ----------------------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings of an empty archive on the backend pair under test."""
    values: dict[str, object] = {"data_dir": tmp_path / "pacs-data", "log_level": "DEBUG"}
    if backend == "postgresql+s3":
        values["database_url"] = request.getfixturevalue("postgres_url")
        values["object_store"] = request.getfixturevalue("s3_url")
    return load_settings(values)


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    archive = open_archive(settings)
    yield archive
    archive.close()


# -- the DIMSE face in this process -----------------------------------------------------------
@dataclass
class RunningNode:
    host: str
    port: int
    ae_title: str
    node: object

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


def start_dicom_node(
    archive: Archive,
    settings: Settings | None = None,
    services: Sequence[Any] | None = None,
    host: str = "127.0.0.1",
) -> RunningNode:
    """The node as ``pacs serve`` runs it (``services``: the DIMSE service modules' ``register``
    functions, default all of ``dicom_nodes.server.SERVICES``), listening on ``host`` (an IPv6
    address too)."""
    from dicom_nodes.policy import AssociationLimiter
    from dicom_nodes.server import SERVICES, DicomNode
    from dicom_nodes.spool import Spooler

    settings = settings or archive.settings
    listening = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    slots = multiprocessing.get_context("fork").Array("i", 1)
    node = DicomNode(
        settings,
        archive,
        listening,
        AssociationLimiter(settings.max_associations, slots),
        Spooler(archive.ingest.receive, settings.incoming_dir),
        SERVICES if services is None else services,
    )
    node.start()
    host, port = node.address
    return RunningNode(host, port, settings.ae_title, node)


@pytest.fixture
def dicom_node(archive: Archive) -> Iterator[RunningNode]:
    running = start_dicom_node(archive)
    yield running
    running.node.stop(grace=5)  # type: ignore[attr-defined]


@pytest.fixture
def web(archive: Archive) -> Iterator[RunningWeb]:
    """The archive's HTTP face (DICOMweb, REST) on a free loopback port."""
    with running_web(archive) as running:
        yield running


@pytest.fixture(autouse=True, scope="session")
def _client_associations_guarded() -> Iterator[None]:
    """Every association the tests' own code opens with pynetdicom's ``AE.associate`` gets the guard
    the archive gives its own (``dicom_nodes.transport.keep_reactor_off_responses``): stock
    pynetdicom's reactor thread can take the response a ``send_c_find`` or ``send_c_store`` waits
    for when the machine is loaded, and the test then fails for a client bug, not for anything the
    archive did. Associations the archive opens (C-MOVE sub-associations, ``pacs send``, storage
    commitment reports) are left as the archive makes them: their guard is the archive's to give."""
    from pynetdicom import AE

    from dicom_nodes.transport import keep_reactor_off_responses

    associate = AE.associate

    def guarded(self: AE, *args: Any, **kwargs: Any) -> Any:
        assoc = associate(self, *args, **kwargs)
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller == "tests" or caller.startswith("tests."):
            keep_reactor_off_responses(assoc)
        return assoc

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AE, "associate", guarded)
        yield


@pytest.fixture(autouse=True)
def _pydicom_validation_modes_restored() -> Iterator[None]:
    """dicomweb-client's file client sets pydicom's process-wide validation modes to RAISE and does
    not restore them when the call raises; a later test would then see pydicom refuse values that
    the archive accepts. Every test starts and ends with the modes it found."""
    from pydicom import config

    reading, writing = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    yield
    config.settings.reading_validation_mode = reading
    config.settings.writing_validation_mode = writing
