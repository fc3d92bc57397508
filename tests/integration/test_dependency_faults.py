"""The archive while a dependency fails: the S3 server stops, PostgreSQL restarts, the disk fills up.

What must hold (docs/architecture.md, "Storing an instance"): every store answered while the
dependency is away is a failure, C-STORE 0xA7xx (Refused: Out of Resources, PS3.4 B.2.3) or STOW-RS
503 (PS3.18 8.5) with Failure Reason 0xA700 for the part, never Success; nothing partial is left
(no index row for a failed store, no unreferenced object in the store, no file in the spool); reads
answer 503, not 500 and not a hang; ``/health`` says 503 and why. When the dependency is back, the
same running archive stores again, without a restart.

Real dependencies, each made to fail for real: a SeaweedFS of this module's own, killed and started
again on its ports and data; a private PostgreSQL cluster (the machine's server is shared) restarted
and stopped with ``pg_ctl``; small tmpfs mounts filled up with a filler file. A C-STORE client and a
STOW-RS client store without pause while the dependency fails and comes back; probes between them
check each answer.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy import text

from pacs.archive import Archive, open_archive
from pacs.config import Settings, load_settings
from pacs.context import CallerContext
from pacs.errors import ResourceUnavailable
from tests.conftest import RunningNode, start_dicom_node
from tests.support.factories import diconde_dx, part10_bytes, write
from tests.support.pgcluster import PostgresCluster
from tests.support.seaweed import SeaweedS3
from tests.support.serve import PacsServer
from tests.support.web import RunningWeb, running_web

SUCCESS = 0x0000
BOUNDARY = "dependency-faults-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
REFERENCED_SOP_SEQUENCE = "00081199"
TIMEOUT = 30.0  # every answer during an outage must come well within this


def new_instance(part_id: str, *, size: int = 32) -> Dataset:
    return diconde_dx(part_id=part_id, rows=size, columns=size)


def out_of_resources(status: int) -> bool:
    return status & 0xFF00 == 0xA700


# -- clients that record every answer -------------------------------------------------------------
@dataclass
class Outcomes:
    """Every store a client made and how it was answered."""

    stored: list[str] = field(default_factory=list)  # SOP Instance UIDs answered Success
    refused: list[str] = field(default_factory=list)  # answered with a failure
    unanswered: list[str] = field(default_factory=list)  # no answer at all
    cstore_failures: list[int] = field(default_factory=list)  # DIMSE status of each refused C-STORE
    stow_failures: list[int] = field(default_factory=list)  # HTTP status of each refused STOW-RS
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __str__(self) -> str:
        return f"{len(self.stored)} stored, {len(self.refused)} refused, {len(self.unanswered)} unanswered"

    def add(self, uid: str, ok: bool | None, failures: list[int] | None = None, status: int = 0) -> None:
        with self._lock:
            if ok is None:
                self.unanswered.append(uid)
            elif ok:
                self.stored.append(uid)
            else:
                self.refused.append(uid)
                assert failures is not None
                failures.append(status)

    def merge(self, other: Outcomes) -> None:
        with self._lock:
            self.stored += other.stored
            self.refused += other.refused
            self.unanswered += other.unanswered
            self.cstore_failures += other.cstore_failures
            self.stow_failures += other.stow_failures


class Clients:
    """A C-STORE SCU (one association, opened again when lost) and a STOW-RS client of one archive."""

    def __init__(self, node: RunningNode, web: RunningWeb, outcomes: Outcomes | None = None) -> None:
        self.node = node
        self.http = web.client()  # its token is made now, while the index is up
        self.outcomes = outcomes or Outcomes()
        self.ae = AE(ae_title="FAULT_SCU")
        self.ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = TIMEOUT
        self.assoc: Association | None = None

    def cstore(self, ds: Dataset) -> int | None:
        """The C-STORE response status, or None when none came."""
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate(self.node.host, self.node.port, ae_title=self.node.ae_title)
        response = self.assoc.send_c_store(ds) if self.assoc.is_established else Dataset()
        status = int(response.Status) if "Status" in response else None
        if status is None:
            self.assoc = None
        ok = None if status is None else status == SUCCESS
        self.outcomes.add(ds.SOPInstanceUID, ok, self.outcomes.cstore_failures, status or 0)
        return status

    def stow(self, ds: Dataset) -> httpx.Response | None:
        body = (
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + part10_bytes(ds)
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        try:
            response = self.http.post(
                "/dicom-web/studies",
                content=body,
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
                },
                timeout=TIMEOUT,
            )
        except httpx.TransportError:
            self.outcomes.add(ds.SOPInstanceUID, None)
            return None
        ok = response.status_code == 200
        self.outcomes.add(ds.SOPInstanceUID, ok, self.outcomes.stow_failures, response.status_code)
        return response

    def retrieve(self, ds: Dataset) -> httpx.Response:
        return self.http.get(
            f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
            timeout=TIMEOUT,
        )

    def search(self, part: str) -> httpx.Response:
        return self.http.get("/dicom-web/instances", params={"PatientID": part}, timeout=TIMEOUT)

    def health(self) -> httpx.Response:
        return self.http.get("/health", timeout=TIMEOUT)

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.http.close()


def assert_stored(clients: Clients, part: str, size: int = 32) -> None:
    """A C-STORE and a STOW-RS, each answered Success."""
    assert clients.cstore(new_instance(part, size=size)) == SUCCESS
    response = clients.stow(new_instance(part, size=size))
    assert response is not None and response.status_code == 200, response and response.text


def assert_refused(clients: Clients, part: str, size: int = 32, *, stow_body: bool = True) -> None:
    """A C-STORE answered 0xA7xx and a STOW-RS answered 503 (PS3.18 8.5: the server cannot store for
    now) with a Retry-After and, with ``stow_body``, a response naming Failure Reason 0xA700 for its
    part (without the index the caller's token cannot be checked: the request is refused before)."""
    status = clients.cstore(new_instance(part, size=size))
    assert status is not None and out_of_resources(status), f"C-STORE answered 0x{status or 0:04X}"
    assert_stow_refused(clients.stow(new_instance(part, size=size)), body=stow_body)


def assert_stow_refused(response: httpx.Response | None, *, body: bool = True) -> None:
    assert response is not None and response.status_code == 503, response and response.text
    assert response.headers.get("Retry-After")
    if body:
        answer = response.json()
        failed = answer.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
        assert [int(item[FAILURE_REASON]["Value"][0]) for item in failed] == [0xA700], answer
        assert REFERENCED_SOP_SEQUENCE not in answer


@contextmanager
def background_stores(node: RunningNode, web: RunningWeb, part: str) -> Iterator[Outcomes]:
    """A C-STORE client and a STOW-RS client storing new instances without pause until the block ends."""
    outcomes = Outcomes()
    stop = threading.Event()

    def run(send: Callable[[Clients, Dataset], object]) -> None:
        clients = Clients(node, web, outcomes)
        try:
            while not stop.is_set():
                send(clients, new_instance(part))
        finally:
            clients.close()

    threads = [threading.Thread(target=run, args=(f,), daemon=True) for f in (Clients.cstore, Clients.stow)]
    for thread in threads:
        thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def more_answers(outcomes: Outcomes, kind: str, what: str) -> None:
    """Wait until the background clients got at least one more answer of ``kind`` (stored, refused)."""
    seen = len(getattr(outcomes, kind))
    until(lambda: len(getattr(outcomes, kind)) >= seen + 2, what)


# -- what must hold afterwards ---------------------------------------------------------------------
def assert_nothing_partial(archive: Archive, outcomes: Outcomes) -> None:
    """Every Success is indexed with an intact object; no failure left a row; every refused C-STORE
    was 0xA7xx and every refused STOW-RS 503; no object is unreferenced; no spooled file is left."""
    assert outcomes.unanswered == [], "stores left without an answer"
    assert all(out_of_resources(s) for s in outcomes.cstore_failures), [
        hex(s) for s in outcomes.cstore_failures
    ]
    assert set(outcomes.stow_failures) <= {503}, outcomes.stow_failures
    indexed = {uid for uid in outcomes.stored + outcomes.refused if archive.index.current_version(uid)}
    assert set(outcomes.stored) - indexed == set(), "a store answered Success is not in the index"
    assert indexed & set(outcomes.refused) == set(), "a store answered with a failure left an index row"
    assert archive.ingest.held_objects() == 0, "objects of failed stores not removed"
    report = archive.fsck().run(grace=dt.timedelta(0))
    assert report.problems == [], report.summary()
    incoming = archive.settings.incoming_dir
    left = [p for p in incoming.rglob("*") if p.is_file()] if incoming.exists() else []
    assert left == [], f"files left in the spool: {left}"


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[Archive, RunningNode, RunningWeb]]:
    archive = open_archive(settings)
    node = start_dicom_node(archive)
    try:
        with running_web(archive) as web:
            yield archive, node, web
    finally:
        node.node.stop(grace=5)  # type: ignore[attr-defined]
        archive.close()


# -- S3 ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS of this module's own: the suite's shared one is never stopped."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed-faults"))
    server.start()
    yield server
    server.stop(kill=True)


def test_s3_stopped_mid_run_refuses_stores_and_recovers_when_it_returns(
    seaweed: SeaweedS3, postgres_url: str, tmp_path: Path
) -> None:
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    settings = load_settings(
        {"data_dir": tmp_path / "data", "database_url": postgres_url, "object_store": seaweed.url(bucket)}
    )
    part = "S3-OUTAGE-1"
    with serving(settings) as (archive, node, web):
        probe = Clients(node, web)
        kept = new_instance(part)
        assert probe.cstore(kept) == SUCCESS
        with background_stores(node, web, part) as load:
            more_answers(load, "stored", "stores before the outage")

            seaweed.stop(kill=True)
            assert_refused(probe, part)
            assert probe.retrieve(kept).status_code == 503  # not 500, not a hang
            assert probe.search(part).status_code == 200  # search reads the index only
            health = probe.health()
            assert health.status_code == 503
            assert health.json()["objects"].startswith("unavailable: S3 unreachable"), health.json()
            more_answers(load, "refused", "stores refused during the outage")

            seaweed.start()
            assert_stored(probe, part)  # the same running archive, no restart
            assert probe.retrieve(kept).status_code == 200
            assert probe.health().status_code == 200
            more_answers(load, "stored", "stores after S3 came back")
        probe.close()
        load.merge(probe.outcomes)
        assert_nothing_partial(archive, load)
    seaweed.remove_bucket(bucket)


# -- PostgreSQL ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL: restarting the machine's would break everything else using it."""
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def test_a_store_right_after_a_postgresql_restart_gets_a_live_connection(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """The pooled connections died with the restart but were idle too short a time to be pinged; the
    closed socket tells them apart, so the first store after the restart does not fail on one."""
    url = pg_cluster.create_database(f"faults_{uuid.uuid4().hex[:8]}")
    archive = open_archive(load_settings({"data_dir": tmp_path / "data", "database_url": url}))
    ctx = CallerContext(via="import")
    try:
        for _ in range(2):
            archive.ingest.ingest_file(write(new_instance("PG-QUICK-1"), tmp_path / "a.dcm"), ctx)
            pg_cluster.restart("fast")
        archive.ingest.ingest_file(write(new_instance("PG-QUICK-1"), tmp_path / "b.dcm"), ctx)
    finally:
        archive.close()


def test_a_store_cut_off_by_a_postgresql_shutdown_leaves_no_object(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """The index transaction dies with its connection: it may have committed for all the archive
    knows, and the index is gone, so the object is held, not removed at once; the first store after
    the index came back removes it once the index says no version refers to it."""
    url = pg_cluster.create_database(f"faults_{uuid.uuid4().hex[:8]}")
    archive = open_archive(load_settings({"data_dir": tmp_path / "data", "database_url": url}))
    ctx = CallerContext(via="import")
    try:
        with archive.engine.begin() as conn:  # every version insert takes a second
            conn.execute(
                text(
                    "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql"
                    " AS $$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER slow BEFORE INSERT ON instance_version"
                    " FOR EACH ROW EXECUTE FUNCTION slow()"
                )
            )

        def stop_during_the_version_insert() -> None:
            # Not after a fixed delay: on a loaded machine the steps before the insert (parse, the
            # duplicate lookup, the copy and its fsync) can outlast any delay, and the shutdown would
            # cut the lookup instead.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with archive.engine.connect() as conn:
                    inserting = conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                            " AND query LIKE 'INSERT INTO instance_version%'"
                        )
                    ).scalar_one()
                if inserting:
                    break
                time.sleep(0.02)
            pg_cluster.stop()

        shutdown = threading.Thread(target=stop_during_the_version_insert)
        shutdown.start()
        with pytest.raises(ResourceUnavailable, match="terminating connection"):
            archive.ingest.ingest_file(write(new_instance("PG-CUT-1"), tmp_path / "a.dcm"), ctx)
        shutdown.join()
        assert archive.ingest.held_objects() == 1
        assert len(list(archive.store.iter_objects())) == 1

        pg_cluster.start()
        with archive.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER slow ON instance_version"))
        result = archive.ingest.ingest_file(write(new_instance("PG-CUT-1"), tmp_path / "b.dcm"), ctx)
        assert archive.ingest.held_objects() == 0
        kept = archive.index.version(result.version_id)
        assert kept is not None
        assert [o.key for o in archive.store.iter_objects()] == [kept.object_key]
    finally:
        if not pg_cluster.running:
            pg_cluster.start()
        archive.close()


def test_postgresql_restart_refuses_stores_while_down_and_the_pool_recovers(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    url = pg_cluster.create_database(f"faults_{uuid.uuid4().hex[:8]}")
    settings = load_settings({"data_dir": tmp_path / "data", "database_url": url})
    part = "PG-RESTART-1"
    with serving(settings) as (archive, node, web):
        probe = Clients(node, web)
        assert_stored(probe, part)
        # A quick restart between two stores: the pooled connections are dead but were idle too short
        # a time to be pinged; none of them is handed to the next store.
        pg_cluster.restart("fast")
        assert_stored(probe, part)

        with background_stores(node, web, part) as load:
            more_answers(load, "stored", "stores before the restart")

            # A restart under load: what was in flight fails, what comes after is stored.
            pg_cluster.restart("fast")
            assert_stored(probe, part)
            more_answers(load, "stored", "stores after the restart")

            # Down for a while: stores and reads refused, health says why.
            pg_cluster.stop("fast")
            assert_refused(probe, part, stow_body=False)
            assert probe.search(part).status_code == 503
            health = probe.health()
            assert health.status_code == 503
            assert health.json()["index"].startswith("unavailable"), health.json()
            more_answers(load, "refused", "stores refused while PostgreSQL is down")

            pg_cluster.start()
            assert_stored(probe, part)
            assert probe.health().status_code == 200
            more_answers(load, "stored", "stores after PostgreSQL came back")
        probe.close()
        load.merge(probe.outcomes)
        assert load.refused, "no store was refused: the outage was not seen"
        assert_nothing_partial(archive, load)


# -- a full disk ------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mounts small tmpfs file systems: ``mount(name, size)``; all unmounted after the test."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"cannot mount a {size} tmpfs on {path} ({result.stderr.strip()}): the full-disk tests "
                "need root or CAP_SYS_ADMIN, as the test machines and CI have",
                pytrace=False,
            )
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def fill(folder: Path, leave: int = 0) -> Path:
    """A filler file taking the free space of ``folder``'s file system but ``leave`` bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        while (free := free_bytes(folder)) > leave:
            try:
                f.write(b"\0" * min(1 << 20, free - leave))
            except OSError:  # ENOSPC: full
                break
    return filler


def store_until_refused(clients: Clients, part: str, size: int, limit: int = 200) -> None:
    """C-STORE and STOW-RS in turn until four stores in a row were refused, each one as it must be."""
    in_a_row = 0
    for n in range(limit):
        ds = new_instance(part, size=size)
        if n % 2 == 0:
            status = clients.cstore(ds)
            assert status is not None, "the C-STORE got no answer"
            ok = status == SUCCESS
            assert ok or out_of_resources(status), f"C-STORE answered 0x{status:04X}"
        else:
            response = clients.stow(ds)
            assert response is not None, "the STOW-RS got no answer"
            ok = response.status_code == 200
            if not ok:
                assert_stow_refused(response)
        in_a_row = 0 if ok else in_a_row + 1
        if in_a_row == 4:
            return
    raise AssertionError(f"{limit} stores and the disk is still not full")


def test_full_disk_refuses_stores_leaves_nothing_and_stores_again_once_freed(
    small_disk: Callable[[str, str], Path],
) -> None:
    data = small_disk("data", "8m")
    settings = load_settings({"data_dir": data})  # SQLite index and filesystem objects, one disk
    part = "DISK-FULL-1"
    with serving(settings) as (archive, node, web):
        clients = Clients(node, web)
        filler = fill(data, leave=2 * 1024 * 1024)
        store_until_refused(clients, part, size=256)  # 128 KiB of pixel data each
        assert clients.outcomes.stored, "the disk was full before the first store"
        health = clients.health()
        assert health.status_code == 503
        assert health.json()["objects"].startswith("unavailable: no space left"), health.json()

        filler.unlink()
        assert_stored(clients, part, size=256)
        assert clients.health().status_code == 200
        clients.close()
        assert_nothing_partial(archive, clients.outcomes)
        assert list((data / "objects" / ".staging").iterdir()) == []


def test_full_disk_under_the_sqlite_index_refuses_stores_and_discards_their_objects(
    small_disk: Callable[[str, str], Path], tmp_path: Path
) -> None:
    index_disk = small_disk("index", "4m")
    settings = load_settings(
        {"data_dir": tmp_path / "data", "database_url": f"sqlite:///{index_disk / 'index.sqlite'}"}
    )
    part = "INDEX-FULL-1"
    with serving(settings) as (archive, node, web):
        clients = Clients(node, web)
        assert_stored(clients, part)
        filler = fill(index_disk)
        store_until_refused(clients, part, size=64)  # the objects fit, the index rows do not
        health = clients.health()
        assert health.status_code == 503
        assert health.json()["index"].startswith("unavailable: no space left"), health.json()

        filler.unlink()
        assert_stored(clients, part)
        assert clients.health().status_code == 200
        clients.close()
        assert_nothing_partial(archive, clients.outcomes)


def test_full_spool_disk_of_an_s3_store_refuses_stores_and_stores_again_once_freed(
    small_disk: Callable[[str, str], Path], seaweed: SeaweedS3, tmp_path: Path
) -> None:
    """With S3 objects a received instance is spooled to the data folder before its upload."""
    data = small_disk("spool", "4m")
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    settings = load_settings(
        {
            "data_dir": data,
            "database_url": f"sqlite:///{tmp_path / 'index.sqlite'}",
            "object_store": seaweed.url(bucket),
        }
    )
    part = "SPOOL-FULL-1"
    with serving(settings) as (archive, node, web):
        clients = Clients(node, web)
        assert_stored(clients, part, size=256)
        filler = fill(data)
        assert_refused(clients, part, size=256)
        filler.unlink()
        assert_stored(clients, part, size=256)
        clients.close()
        assert_nothing_partial(archive, clients.outcomes)
    seaweed.remove_bucket(bucket)


def test_a_full_data_disk_refuses_stores_without_killing_the_server(
    small_disk: Callable[[str, str], Path], tmp_path: Path
) -> None:
    """`pacs serve` as it runs: nothing a worker writes on the data disk may take it down when the
    disk is full (the workers' metrics files, memory-mapped, would: SIGBUS on the first new page)."""
    data = small_disk("serve-data", "16m")
    with PacsServer(["--data-dir", data], workers=1, log_path=tmp_path / "serve.log") as server:
        ae = AE(ae_title="FAULT_SCU")
        ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        filler = fill(data)  # before the first store: no metric exists yet in the worker
        assoc = ae.associate(server.host, server.dicom_port, ae_title=server.ae_title)
        assert assoc.is_established
        for _ in range(3):
            response = assoc.send_c_store(new_instance("SERVE-FULL-1", size=64))
            assert "Status" in response, f"no answer: the worker died?\n{server.log()[-3000:]}"
            assert out_of_resources(int(response.Status)), f"0x{int(response.Status):04X}"
        assoc.release()
        filler.unlink()
        assoc = ae.associate(server.host, server.dicom_port, ae_title=server.ae_title)
        assert int(assoc.send_c_store(new_instance("SERVE-FULL-1", size=64)).Status) == SUCCESS
        assoc.release()
        assert "exited unexpectedly" not in server.log()
