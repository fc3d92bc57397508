"""Ingest benchmark (C-STORE): the archive against Orthanc, dcmtk's storescp and a bare pynetdicom SCP.

Everything runs in one invocation, side by side: the same corpus, the same sender (dcmtk storescu), on
loopback, every target started fresh for every measurement, in interleaved rounds so that the drift of
a shared VM hits all targets alike. The figures that matter are the ratios between targets measured
in the same run; absolute times are shown for scale only. See docs/benchmarks.md and bench/README.md.

    python bench/ingest.py --repeat 5     # the full run (docs/benchmarks.md is rewritten)
    python bench/ingest.py --quick        # a smoke run of a minute or two
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/ingest.py` from anywhere
    sys.path.insert(0, str(ROOT))

from tests.support.net import free_port  # noqa: E402
from tests.support.seaweed import SeaweedS3  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
STORESCU, STORESCP = "/usr/bin/storescu", "/usr/bin/storescp"
BARE_SCP = ROOT / "bench" / "bare_scp.py"
POSTGRES_URL = os.environ.get("PACS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DCMTK_MAX_PDU = 131072  # the largest PDU dcmtk (storescp, Orthanc) accepts
READY_TIMEOUT = 120.0
SEND_TIMEOUT = 900.0
PART_ID = "BENCH-PART-0001"

# (label, side of the square 16-bit image)
SIZES: dict[str, int] = {"2 MB": 1024, "18 MB": 3072}
DEFAULT_COUNTS = {"2 MB": 320, "18 MB": 40}  # about 7 minutes for 3 rounds on 2 cores
QUICK_COUNTS = {"2 MB": 24, "18 MB": 4}
ASSOCIATIONS = (1, 4)
TARGET_NAMES = ("ours-embedded", "ours-production", "orthanc", "storescp", "bare", "bare-stock")


# -- processes ------------------------------------------------------------------------------------
class Processes:
    """Every process group this run starts, so that an exception or Ctrl-C still ends them all."""

    def __init__(self) -> None:
        self._live: dict[int, subprocess.Popen[Any]] = {}

    def start(
        self, command: Sequence[str | os.PathLike[str]], log: IO[bytes], *, stdout: Any = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
        env.update(kw.pop("env", {}))
        process = subprocess.Popen(
            [str(c) for c in command],
            stdin=subprocess.DEVNULL,
            stdout=log if stdout is None else stdout,
            stderr=log,
            env=env,
            start_new_session=True,  # its own process group: killed as a whole, spared our Ctrl-C
            **kw,
        )
        self._live[process.pid] = process
        return process

    def stop(self, process: subprocess.Popen[Any], timeout: float = 60.0) -> int | None:
        """SIGTERM to the leader (servers stop their own children), SIGKILL to the group if it lingers."""
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group(process)
        self._live.pop(process.pid, None)
        return process.returncode

    def kill_all(self) -> None:
        for process in list(self._live.values()):
            self._kill_group(process)
        self._live.clear()

    @staticmethod
    def _kill_group(process: subprocess.Popen[Any]) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # leftovers: workers, forked storescp children
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pass


class LineReader:
    """Reads a child's stdout in a thread, so a readiness line can be awaited with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._process = process
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float, what: str, log: Path) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{what} printed no readiness line in {timeout:.0f} s; see {log}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{what} exited before it was ready; see {log}")
            match = pattern.search(line)
            if match:
                return match


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[Any]
) -> None:
    """Bounded wait for a server that has no readiness signal of its own (Orthanc, storescp)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.05)


def listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port``, read from /proc (a probe connection would be an
    association attempt that a single-association server like storescp must then deal with)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(p) for p in f.read().split())
            except FileNotFoundError:
                continue
    return found


def peak_rss_kib(pid: int) -> int:
    """Sum of VmHWM (peak resident set) of a server and all its descendants."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a server and all its descendants have used so far, with their
    threads that ended and their children that ended and were waited for."""
    ticks = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


# -- corpus ---------------------------------------------------------------------------------------
def corpus(label: str, count: int) -> list[Path]:
    """``count`` distinct 16-bit DX instances of one part, cached under bench/results/corpus."""
    side = SIZES[label]
    folder = RESULTS / "corpus" / f"dx{side}-n{count}"
    marker = folder / ".complete"
    if not marker.exists():
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        started = time.monotonic()
        print(f"generating corpus: {count} x {side}x{side} DX into {folder} ...", flush=True)
        _generate(folder, side, count)
        marker.write_text(f"{count} instances\n")
        print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
    files = sorted(folder.glob("*.dcm"))
    if len(files) != count:
        raise RuntimeError(f"corpus {folder} holds {len(files)} files, not {count}: delete it")
    return files


def _generate(folder: Path, side: int, count: int) -> None:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(side * 1000 + count)
    base = rng.integers(0, 4096, size=(side, side), dtype=np.uint16)
    study, series = generate_uid(), generate_uid()
    for index in range(count):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(DX_FOR_PRESENTATION)
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = DX_FOR_PRESENTATION
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName = PART_ID, "BENCH^PART"
        ds.StudyDate, ds.StudyTime = "20240101", "120000"
        ds.StudyID, ds.AccessionNumber = "1", ""
        ds.Modality, ds.Manufacturer = "DX", "bench"
        ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = side
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        pixels = base.copy()
        pixels[0, :] = index  # distinct pixel data too, not just distinct UIDs
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        ds.save_as(folder / f"{index:05d}.dcm", enforce_file_format=True)


def warm(files: Sequence[Path]) -> None:
    """Read the corpus once so every target is fed from the page cache, not the first from disk."""
    for path in files:
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass


# -- shared infrastructure of the production pair -----------------------------------------------
class Postgres:
    """Fresh databases on the machine's PostgreSQL server, one per measurement, dropped after."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.url = make_url(admin_url)
        self.engine = create_engine(
            self.url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
        )
        self._created: list[str] = []

    def execute(self, sql: str) -> None:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            conn.execute(text(sql))

    def version(self) -> str:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar())

    def create(self) -> str:
        name = f"pacs_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._created.append(name)  # first: close() drops it even if CREATE fails half-way
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._created:
            self._created.remove(name)

    def close(self) -> None:
        for name in list(self._created):
            try:
                self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)
        self.engine.dispose()


class Infrastructure:
    """PostgreSQL and SeaweedFS S3, started on first use and shared by all production-pair runs."""

    def __init__(self, workdir: Path, postgres_url: str) -> None:
        self.workdir = workdir
        self.postgres_url = postgres_url
        self._postgres: Postgres | None = None
        self._s3: SeaweedS3 | None = None

    @property
    def postgres(self) -> Postgres:
        if self._postgres is None:
            postgres = Postgres(self.postgres_url)
            try:
                postgres.execute("SELECT 1")
            except Exception as exc:
                raise SystemExit(
                    f"PostgreSQL at {self.postgres_url} is not reachable ({exc}); start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
                    "or leave out the ours-production target (--targets)"
                ) from None
            self._postgres = postgres
        return self._postgres

    @property
    def s3(self) -> SeaweedS3:
        if self._s3 is None:
            folder = self.workdir / "seaweedfs"
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            s3 = SeaweedS3(folder)
            self._s3 = s3  # stop() must run even if start() fails half-way
            s3.start()
        return self._s3

    def remove_bucket(self, bucket: str) -> None:
        """Best effort: keeps SeaweedFS's volumes from growing over a long run."""
        if self._s3 is None:
            return
        from minio.deleteobjects import DeleteObject

        client = self._s3.client()
        try:
            doomed = [DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True)]
            for error in client.remove_objects(bucket, doomed):
                print(f"warning: S3 delete: {error}", file=sys.stderr)
            client.remove_bucket(bucket)
        except Exception as exc:
            print(f"warning: could not remove bucket {bucket}: {exc}", file=sys.stderr)

    def close(self, keep: bool = False) -> None:
        if self._s3 is not None:
            self._s3.stop()
            if not keep:
                shutil.rmtree(self._s3.workdir, ignore_errors=True)
        if self._postgres is not None:
            self._postgres.close()


# -- targets --------------------------------------------------------------------------------------
@dataclass
class Server:
    process: subprocess.Popen[Any]
    port: int
    called_ae: str
    folder: Path
    log: Path
    processes: str  # how the server runs, for the report ("1 worker", "4 threads", ...)
    extra: dict[str, str] = field(default_factory=dict)


class Target:
    name = ""
    title = ""

    def __init__(self, procs: Processes) -> None:
        self.procs = procs

    def start(self, folder: Path, associations: int) -> Server:
        raise NotImplementedError

    def stop_and_count(self, server: Server) -> int:
        """Stop the server; return how many instances it really stored."""
        raise NotImplementedError

    def cleanup(self, server: Server) -> None:
        """Release what the run used outside its folder (databases, buckets)."""


PACS_READY = re.compile(r"^NDT archive ready: DICOM (\S+) on (\S+):(\d+), ")


class Ours(Target):
    def __init__(self, procs: Processes, infra: Infrastructure, production: bool) -> None:
        super().__init__(procs)
        self.infra = infra
        self.production = production
        self.name = "ours-production" if production else "ours-embedded"
        self.title = "ours, PostgreSQL + S3" if production else "ours, embedded (SQLite + files)"

    def start(self, folder: Path, associations: int) -> Server:
        workers = 1 if associations == 1 else (os.cpu_count() or 1)
        data_dir = folder / "pacs-data"
        args = ["serve", "--data-dir", str(data_dir), "--host", "127.0.0.1"]
        args += ["--dicom-port", str(free_port()), "--http-port", str(free_port()), "--workers", str(workers)]
        extra: dict[str, str] = {"data_dir": str(data_dir)}
        if self.production:
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            extra["bucket"] = bucket
            extra["database_url"] = self.infra.postgres.create()
            extra["object_store"] = self.infra.s3.url(bucket)
            args += ["--database-url", extra["database_url"], "--object-store", extra["object_store"]]
        log = folder / "server.log"
        with open(log, "wb") as log_file:
            process = self.procs.start(
                [*pacs_command(), *args], log_file, stdout=subprocess.PIPE, text=True, bufsize=1
            )
        server = Server(process, 0, "", folder, log, f"{workers} worker{'s' * (workers > 1)}", extra)
        match = LineReader(process).wait_for(PACS_READY, READY_TIMEOUT, "pacs serve", log)
        server.called_ae, server.port = match[1], int(match[3])
        return server

    def stop_and_count(self, server: Server) -> int:
        code = self.procs.stop(server.process)
        if code != 0:
            raise RuntimeError(f"pacs serve exited with code {code}; see {server.log}")
        from pacs.archive import open_archive
        from pacs.config import load_settings

        values = {k: v for k, v in server.extra.items() if k in ("data_dir", "database_url", "object_store")}
        archive = open_archive(load_settings(values), upgrade_schema=False)
        try:
            return archive.index.counts()["instances"]
        finally:
            archive.close()

    def cleanup(self, server: Server) -> None:
        if "database_url" in server.extra:
            self.infra.postgres.drop(server.extra["database_url"])
        if "bucket" in server.extra:
            self.infra.remove_bucket(server.extra["bucket"])


class Orthanc(Target):
    name, title = "orthanc", "Orthanc"

    def start(self, folder: Path, associations: int) -> Server:
        dicom_port, http_port = free_port(), free_port()
        config = {
            "Name": "bench",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "Plugins": [],
            "SyncStorageArea": True,
            "StorageCompression": False,
            "DicomCheckCalledAet": False,
            "AuthenticationEnabled": False,
            "RemoteAccessAllowed": False,
            # Orthanc's default is 16 KiB; the largest it allows makes the comparison harder for us.
            "MaximumPduLength": DCMTK_MAX_PDU,
        }
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = folder / "server.log"
        with open(log, "wb") as log_file:
            process = self.procs.start(
                [orthanc_binary(), str(config_path)], log_file, env={"TCP_NODELAY": "1"}
            )
        server = Server(process, dicom_port, "ORTHANC", folder, log, "4 DICOM threads (default)")
        server.extra["http"] = f"http://127.0.0.1:{http_port}"
        wait_until(lambda: listening(dicom_port), READY_TIMEOUT, "Orthanc DICOM port", process)
        wait_until(lambda: _http_ok(server.extra["http"] + "/system"), READY_TIMEOUT, "Orthanc HTTP", process)
        return server

    def stop_and_count(self, server: Server) -> int:
        with urllib.request.urlopen(server.extra["http"] + "/statistics", timeout=30) as response:
            count = int(json.load(response)["CountInstances"])
        code = self.procs.stop(server.process)
        if code != 0:
            raise RuntimeError(f"Orthanc exited with code {code}; see {server.log}")
        return count


class StoreSCP(Target):
    name, title = "storescp", "dcmtk storescp"

    def start(self, folder: Path, associations: int) -> Server:
        port = free_port()
        output = folder / "out"
        output.mkdir(parents=True)
        # +B writes the dataset as received (no re-encoding), like the others; --fork lets
        # associations run side by side (one at a time otherwise).
        command = [STORESCP, "-od", str(output), "+B", "-pdu", str(DCMTK_MAX_PDU), "-aet", "STORESCP"]
        processes = "1 process"
        if associations > 1:
            command.append("--fork")
            processes = "a process per association"
        log = folder / "server.log"
        with open(log, "wb") as log_file:
            process = self.procs.start([*command, str(port)], log_file, env={"TCP_NODELAY": "1"})
        server = Server(process, port, "STORESCP", folder, log, processes)
        wait_until(lambda: listening(port), READY_TIMEOUT, "storescp", process)
        return server

    def stop_and_count(self, server: Server) -> int:
        self.procs.stop(server.process)  # storescp exits on SIGTERM with a non-zero code: ignore it
        return sum(1 for p in (server.folder / "out").iterdir() if p.is_file())


BARE_READY = re.compile(r"^bare SCP ready on (\S+):(\d+)$")


class Bare(Target):
    name, title = "bare", "bare pynetdicom SCP"
    extra_args: tuple[str, ...] = ()

    def start(self, folder: Path, associations: int) -> Server:
        output = folder / "out"
        log = folder / "server.log"
        command = [
            sys.executable,
            str(BARE_SCP),
            "--output-dir",
            str(output),
            "--port",
            "0",
            *self.extra_args,
        ]
        with open(log, "wb") as log_file:
            process = self.procs.start(command, log_file, stdout=subprocess.PIPE, text=True, bufsize=1)
        server = Server(process, 0, "BARE_SCP", folder, log, "1 process")
        server.port = int(LineReader(process).wait_for(BARE_READY, READY_TIMEOUT, "bare SCP", log)[2])
        return server

    def stop_and_count(self, server: Server) -> int:
        code = self.procs.stop(server.process)
        if code != 0:
            raise RuntimeError(f"bare SCP exited with code {code}; see {server.log}")
        return sum(1 for _ in (server.folder / "out").glob("*.dcm"))


class BareStock(Bare):
    """The bare SCP on pynetdicom's own socket reads: what the stock library gives."""

    name, title = "bare-stock", "bare pynetdicom SCP, stock transport"
    extra_args = ("--stock-transport",)


def pacs_command() -> list[str]:
    script = Path(sys.executable).with_name("pacs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pacs.cli"]


def orthanc_binary() -> str:
    return shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# -- one measurement ------------------------------------------------------------------------------
@dataclass
class Measurement:
    seconds: float = 0.0
    rss_kib: int = 0
    cpu_seconds: float = 0.0  # the server's, while the files were sent
    processes: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def send(
    server: Server, files: Sequence[Path], associations: int, procs: Processes
) -> tuple[float, list[int]]:
    """storescu, one process per association, each with its share of the files; wall time from the
    first start to the last exit."""
    shares = [list(files[i::associations]) for i in range(associations)]
    log_path = server.folder / "storescu.log"
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        senders = [
            procs.start(
                [
                    STORESCU,
                    "-xe",
                    "-aet",
                    "BENCH_SCU",
                    "-aec",
                    server.called_ae,
                    "127.0.0.1",
                    str(server.port),
                ]
                + [str(p) for p in share],
                log,
                env={"TCP_NODELAY": "1"},
            )
            for share in shares
        ]
        codes = []
        for sender in senders:
            try:
                codes.append(sender.wait(SEND_TIMEOUT))
            except subprocess.TimeoutExpired:
                codes.append(-1)
        seconds = time.perf_counter() - started
    for sender in senders:
        procs.stop(sender, timeout=1)
    return seconds, codes


def measure(
    target: Target, files: Sequence[Path], associations: int, folder: Path, procs: Processes
) -> Measurement:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    result = Measurement()
    server: Server | None = None
    try:
        server = target.start(folder, associations)
        result.processes = server.processes
        cpu_before = cpu_seconds(server.process.pid)
        result.seconds, codes = send(server, files, associations, procs)
        result.cpu_seconds = cpu_seconds(server.process.pid) - cpu_before
        result.rss_kib = peak_rss_kib(server.process.pid)
        stored = target.stop_and_count(server)
        if any(codes):
            result.error = f"storescu exit codes {codes}; see {folder / 'storescu.log'}"
        elif stored != len(files):
            result.error = f"stored {stored} of {len(files)} instances; see {server.log}"
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if server is not None:
            procs.stop(server.process, timeout=10)
            try:
                target.cleanup(server)
            except Exception as exc:
                print(f"warning: cleanup of {target.name}: {exc}", file=sys.stderr)
    return result


# -- report ---------------------------------------------------------------------------------------
@dataclass
class Cell:
    target: Target
    size: str
    associations: int
    files: list[Path]
    runs: list[Measurement] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    @property
    def good(self) -> list[Measurement]:
        return [m for m in self.runs if m.ok]

    @property
    def failed(self) -> bool:
        return not self.runs or len(self.good) < len(self.runs)

    @property
    def seconds(self) -> float | None:
        good = self.good
        return statistics.median(m.seconds for m in good) if good else None

    @property
    def rate(self) -> float | None:
        """Instances per second of the median successful run (check ``failed`` before trusting it)."""
        seconds = self.seconds
        return len(self.files) / seconds if seconds else None

    @property
    def mb_per_s(self) -> float | None:
        seconds = self.seconds
        return self.bytes / 1e6 / seconds if seconds else None

    @property
    def rss_mb(self) -> float | None:
        good = self.good
        return statistics.median(m.rss_kib for m in good) / 1024 if good else None

    @property
    def cpu_ms(self) -> float | None:
        """The server's CPU time per instance, median over the successful runs."""
        good = self.good
        return statistics.median(m.cpu_seconds for m in good) * 1000 / len(self.files) if good else None


@dataclass(frozen=True)
class Goal:
    text: str
    size: str
    associations: int
    target: str
    reference: str
    minimum: float


GOALS = (
    Goal(
        "one association, 2 MB: ours (embedded) >= 1.8 x Orthanc", "2 MB", 1, "ours-embedded", "orthanc", 1.8
    ),
    Goal("one association, 2 MB: ours (embedded) >= 0.85 x bare", "2 MB", 1, "ours-embedded", "bare", 0.85),
    Goal(
        "four associations, 2 MB: ours (embedded) >= 1.2 x Orthanc",
        "2 MB",
        4,
        "ours-embedded",
        "orthanc",
        1.2,
    ),
    Goal("one association, 18 MB: ours (embedded) >= 0.90 x bare", "18 MB", 1, "ours-embedded", "bare", 0.90),
)
RATIOS = (
    ("ours-embedded", "orthanc"),
    ("ours-embedded", "bare"),
    ("ours-embedded", "bare-stock"),
    ("ours-production", "orthanc"),
    ("ours-production", "bare"),
)


class Report:
    def __init__(self, cells: list[Cell], sizes: list[str], associations: Sequence[int]) -> None:
        self.cells = cells
        self.sizes = sizes
        self.associations = associations
        self._by_key = {(c.target.name, c.size, c.associations): c for c in cells}

    def cell(self, target: str, size: str, associations: int) -> Cell | None:
        return self._by_key.get((target, size, associations))

    def ratio(self, target: str, reference: str, size: str, associations: int) -> tuple[float | None, bool]:
        """The ratio of the medians, and whether every run behind it succeeded."""
        ours, theirs = self.cell(target, size, associations), self.cell(reference, size, associations)
        if ours is None or theirs is None or ours.rate is None or theirs.rate is None:
            return None, False
        return ours.rate / theirs.rate, not (ours.failed or theirs.failed)

    def table(self) -> list[str]:
        lines = [
            "| Target | Image | Assoc. | Server processes | Instances/s | MB/s | Server CPU (ms/instance) "
            "| Peak RSS (MB) | Runs ok |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for size in self.sizes:
            for associations in self.associations:
                for cell in (c for c in self.cells if c.size == size and c.associations == associations):
                    processes = next((m.processes for m in cell.runs if m.processes), "?")
                    lines.append(
                        f"| {cell.target.title} | {size} | {associations} | {processes} | "
                        f"{_fmt(cell.rate, 1, cell.failed)} | {_fmt(cell.mb_per_s, 0, cell.failed)} | "
                        f"{_fmt(cell.cpu_ms, 1, cell.failed)} | {_fmt(cell.rss_mb, 0, cell.failed)} | "
                        f"{len(cell.good)}/{len(cell.runs)} |"
                    )
        return lines

    def ratio_table(self) -> list[str]:
        header = " | ".join(f"{_short(a)} / {_short(b)}" for a, b in RATIOS)
        lines = [f"| Image | Assoc. | {header} |", "|---|---:|" + "---:|" * len(RATIOS)]
        for size in self.sizes:
            for associations in self.associations:
                values = " | ".join(self._ratio_text(a, b, size, associations) for a, b in RATIOS)
                lines.append(f"| {size} | {associations} | {values} |")
        return lines

    def _ratio_text(self, target: str, reference: str, size: str, associations: int) -> str:
        if self.cell(target, size, associations) is None or self.cell(reference, size, associations) is None:
            return "-"  # a target left out of this run
        value, complete = self.ratio(target, reference, size, associations)
        return _fmt(value, 2, not complete)

    def goals(self) -> list[str]:
        lines = []
        for goal in GOALS:
            if self.cell(goal.target, goal.size, goal.associations) is None or (
                self.cell(goal.reference, goal.size, goal.associations) is None
            ):
                lines.append(f"- NOT MEASURED: {goal.text} (target left out of this run)")
                continue
            value, complete = self.ratio(goal.target, goal.reference, goal.size, goal.associations)
            if value is None:
                lines.append(f"- FAIL: {goal.text}: no figure (every run failed)")
            elif not complete:
                lines.append(f"- FAIL: {goal.text}: measured {value:.2f}, but a run failed")
            else:
                mark = "PASS" if value >= goal.minimum else "FAIL"
                lines.append(f"- {mark}: {goal.text}: measured {value:.2f}")
        return lines

    def failures(self) -> list[str]:
        lines = []
        for cell in self.cells:
            for index, run in enumerate(cell.runs):
                if not run.ok:
                    where = f"{cell.target.title}, {cell.size}, {cell.associations} assoc., run {index + 1}"
                    lines.append(f"- {where}: {run.error}")
        return lines


def _short(name: str) -> str:
    return {"ours-embedded": "embedded", "ours-production": "production", "orthanc": "Orthanc"}.get(
        name, name
    )


def _fmt(value: float | None, digits: int, incomplete: bool = False) -> str:
    """A figure; ``*`` marks one from fewer runs than asked for (the others failed)."""
    return "failed" if value is None else f"{value:.{digits}f}{'*' * incomplete}"


# -- machine and versions -------------------------------------------------------------------------
def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    return f"{model}, {os.cpu_count()} cores, {ram_kib / 1024 / 1024:.0f} GiB RAM, Linux {platform.release()}"


def versions(infra: Infrastructure, targets: Sequence[Target]) -> list[str]:
    import pydicom
    import pynetdicom

    import pacs

    def first_line(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False).stdout
            return out.strip().splitlines()[0].strip("$ ").strip() if out.strip() else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"

    names = {t.name for t in targets}
    found = [
        f"pacs {pacs.__version__}{_commit()}",
        f"Python {platform.python_version()}",
        f"pynetdicom {pynetdicom.__version__}",
        f"pydicom {pydicom.__version__}",
        "Orthanc " + first_line([orthanc_binary(), "--version"]).split()[-1],
        first_line([STORESCU, "--version"]).replace("dcmtk: ", "dcmtk "),
    ]
    if "ours-production" in names:
        found.append(f"PostgreSQL {infra.postgres.version()}")
        weed = first_line([str(Path(sys.executable).with_name("weed")), "version"]).split()
        found.append(f"SeaweedFS {weed[2] if len(weed) > 2 else '?'}")
    return found


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return ""
    return f" (commit {out.stdout.strip()})" if out.returncode == 0 and out.stdout.strip() else ""


def disk_of(path: Path) -> str:
    path = path.resolve()
    best = ("?", "/", "?")
    with open("/proc/mounts") as f:
        for line in f:
            device, mount, kind = line.split()[:3]
            if (str(path) + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[1]):
                best = (device, mount, kind)
    return f"{best[0]} ({best[2]}) mounted on {best[1]}"


# -- docs/benchmarks.md -------------------------------------------------------------------------
DOC_INTRO = """# Benchmarks

How fast the archive is, measured against reference implementations on the same machine, in the same
run. Every figure here comes from a script under `bench/` (see `bench/README.md`) that starts every
target itself on loopback and rewrites only its own section of this file, between
`<!-- NAME:begin -->` and `<!-- NAME:end -->` markers. Speed is measured here, never by timed tests.

Why ratios, not absolute times: the development and CI machines are shared 2-core VMs whose absolute
speed drifts from hour to hour and with whatever else runs beside them. So each script measures the
archive and the references side by side, in interleaved rounds (every target once per round, so a
slow spell hits all of them alike), and reports the median of several repeats. The ratios between
targets of one run are what the project's targets are set on and what is compared between runs;
absolute figures are there for scale only.
"""


def write_doc(section: str) -> None:
    from bench.report import write_section

    write_section("ingest", section, intro=DOC_INTRO)


def render(report: Report, args: argparse.Namespace, counts: dict[str, int], meta: dict[str, Any]) -> str:
    sizes = ", ".join(
        f"{counts[s]} x {s} ({SIZES[s]}x{SIZES[s]}, {meta['file_mb'][s]:.1f} MB each)" for s in report.sizes
    )
    lines = [
        "## Ingest (C-STORE)",
        "",
        "Re-run: `python bench/ingest.py --repeat 5` (the venv's python, from the repository root; "
        "`--help` lists the options). It rewrites this section.",
        "",
        f"Last run: {meta['date']}, `{meta['command']}`, took {meta['minutes']:.1f} min.",
    ]
    if args.quick:
        lines += ["", "**This was a `--quick` smoke run: too few instances and repeats to mean anything.**"]
    if args.note:
        lines += ["", f"Note: {args.note}"]
    lines += [
        "",
        f"- Machine: {meta['machine']}; work folder on {meta['disk']}.",
        f"- Versions: {'; '.join(meta['versions'])}.",
        "",
        "### Method",
        "",
        f"- Corpus: {sizes}; 16-bit DX (For Presentation), explicit VR little endian, distinct SOP "
        f"instances (and pixel data) of one part, one series; generated with pydicom/numpy and cached in "
        "`bench/results/corpus/`, read once before measuring so every target is fed from the page cache.",
        "- Sender: dcmtk `storescu -xe` (explicit VR little endian proposed first), `TCP_NODELAY=1`, on "
        "loopback. One association: one storescu with all files. Four associations: four storescu "
        "started together, each with a quarter of the files; the time is from the first start to the "
        "last exit (every C-STORE answered).",
        "- Targets, each started fresh for every measurement, writing into its own folder of the work "
        "folder:",
        "  - ours, embedded: `pacs serve --data-dir X --workers N` (SQLite index, filesystem objects); "
        "N = 1 for one association, N = cores for four. Default log level (INFO).",
        "  - ours, production pair: the same with `--database-url` (the local PostgreSQL, a fresh "
        "database per measurement) and `--object-store` (SeaweedFS S3 on loopback, a fresh bucket).",
        "  - Orthanc: own configuration, no plugins, `SyncStorageArea: true` (fsync, like ours), "
        "`StorageCompression: false`, `MaximumPduLength: 131072` (its largest; the default 16 KiB would "
        "slow it down), default 4 DICOM threads, `TCP_NODELAY=1`.",
        "  - dcmtk storescp (reference): `storescp +B -pdu 131072 -od DIR` (writes as received, no "
        "fsync), `--fork` for four associations, `TCP_NODELAY=1`.",
        "  - bare pynetdicom SCP (`bench/bare_scp.py`, the Python ceiling): the archive's pynetdicom "
        "settings (1 MiB maximum PDU, same presentation contexts, chunked receive into a file, the "
        "archive's whole-PDU socket reads, event-driven loops and one-pass C-STORE responses "
        "(`dicom_nodes/transport.py`, `reactor.py`, `store_service.py`), pynetdicom's per-PDU log "
        "handlers off) and a handler that only "
        "renames the received file into place: no hash, no parse, no index, no fsync. One process. "
        "Its data set PDUs go through pynetdicom's decoding, which the archive's shortcut "
        "(`dicom_nodes/pdata.py`) skips. "
        "The targets' ratios to it measure what the archive's own work costs.",
        "  - bare-stock: the same on pynetdicom's own 4 KiB socket reads, polling loops, responses and "
        "log handlers, i.e. what stock pynetdicom gives.",
        "- Every run is checked: the target must have stored every instance (index rows for ours, "
        "`/statistics` for Orthanc, files for the others), else the run counts as failed.",
        f"- {meta['repeat']} round{'s' * (meta['repeat'] > 1)}; in each, every (image size, associations) "
        "is measured on every target, "
        "the target order rotating from round to round. Figures are medians over the rounds. MB = 10^6 "
        "bytes of Part 10 files sent. Peak RSS: the sum of VmHWM of the server process and its children "
        "(supervisor plus workers for ours; PostgreSQL and SeaweedFS are not counted; storescp's forked "
        "children have exited by then), read before stopping. Server CPU: user and system time of the "
        "same processes (with their ended threads and waited-for children) from just before the first "
        "storescu starts to the last one's exit, per instance: what the server's work costs the machine, "
        "less sensitive than wall time to what else runs on it (PostgreSQL and SeaweedFS not counted).",
        "- The page cache is flushed (`sync`) between measurements, so one target's written-back data does "
        "not slow the next.",
        "",
        "### Results",
        "",
        *report.table(),
        "",
        "### Ratios (instances/s over instances/s, same run)",
        "",
        *report.ratio_table(),
        "",
        "### The project's targets",
        "",
        *report.goals(),
    ]
    failures = report.failures()
    if failures:
        lines += [
            "",
            "### Failed runs",
            "",
            "A figure marked `*` is the median of the successful runs only.",
            "",
            *failures,
        ]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few instances, one round")
    parser.add_argument(
        "--repeat", type=int, default=None, help="rounds; the median is reported (3; 1 if --quick)"
    )
    parser.add_argument(
        "--count-2mb", type=int, default=None, help=f"2 MB instances ({DEFAULT_COUNTS['2 MB']})"
    )
    parser.add_argument(
        "--count-18mb", type=int, default=None, help=f"18 MB instances ({DEFAULT_COUNTS['18 MB']})"
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGET_NAMES),
        help=f"comma-separated subset of {', '.join(TARGET_NAMES)}",
    )
    parser.add_argument("--sizes", default="2MB,18MB", help="comma-separated subset of 2MB, 18MB")
    parser.add_argument(
        "--workdir", type=Path, default=RESULTS / "work", help="where targets write (bench/results/work)"
    )
    parser.add_argument(
        "--postgres-url", default=POSTGRES_URL, help="server for the production pair's databases"
    )
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (logs, stored data)")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--note", default="", help="a remark for the doc (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    defaults = QUICK_COUNTS if args.quick else DEFAULT_COUNTS
    counts = {"2 MB": args.count_2mb or defaults["2 MB"], "18 MB": args.count_18mb or defaults["18 MB"]}
    sizes = [s for s in SIZES if s.replace(" ", "") in {x.strip().upper() for x in args.sizes.split(",")}]
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(wanted) - set(TARGET_NAMES)
    if unknown or not sizes:
        print(f"unknown targets {sorted(unknown)} or no sizes", file=sys.stderr)
        return 2
    for tool in [STORESCU] + ([STORESCP] if "storescp" in wanted else []):
        if not Path(tool).exists():
            print(f"{tool} is missing: apt-get install dcmtk", file=sys.stderr)
            return 2

    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes()
    infra = Infrastructure(workdir, args.postgres_url)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        all_targets: dict[str, Target] = {
            "ours-embedded": Ours(procs, infra, production=False),
            "ours-production": Ours(procs, infra, production=True),
            "orthanc": Orthanc(procs),
            "storescp": StoreSCP(procs),
            "bare": Bare(procs),
            "bare-stock": BareStock(procs),
        }
        targets = [all_targets[n] for n in TARGET_NAMES if n in wanted]
        corpora = {size: corpus(size, counts[size]) for size in sizes}
        for files in corpora.values():
            warm(files)
        meta: dict[str, Any] = {
            "machine": machine(),
            "disk": disk_of(workdir),
            "versions": versions(infra, targets),
            "repeat": args.repeat,
            "file_mb": {s: statistics.mean(p.stat().st_size for p in corpora[s]) / 1e6 for s in sizes},
        }
        if "ours-production" in wanted:
            print("starting SeaweedFS ...", flush=True)
            infra.s3  # noqa: B018 - started before timing anything, not inside the first run
        cells = [Cell(t, s, a, corpora[s]) for s in sizes for a in ASSOCIATIONS for t in targets]
        for round_index in range(args.repeat):
            order = targets[round_index % len(targets) :] + targets[: round_index % len(targets)]
            for size in sizes:
                for associations in ASSOCIATIONS:
                    for target in order:
                        cell = next(
                            c
                            for c in cells
                            if c.target is target and c.size == size and c.associations == associations
                        )
                        folder = (
                            workdir
                            / f"{target.name}-{size.replace(' ', '')}-{associations}a-r{round_index + 1}"
                        )
                        run = measure(target, cell.files, associations, folder, procs)
                        cell.runs.append(run)
                        _progress(round_index, args.repeat, cell, run)
                        if run.ok and not args.keep:
                            shutil.rmtree(folder, ignore_errors=True)
                        os.sync()
        report = Report(cells, sizes, ASSOCIATIONS)
        meta["date"] = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        given = list(sys.argv[1:] if argv is None else argv)
        meta["command"] = shlex.join(["python", "bench/ingest.py", *given])
        meta["minutes"] = (time.monotonic() - started) / 60
        section = render(report, args, counts, meta)
        print()
        print(section)
        if not args.no_doc:
            write_doc(section)
            print(f"wrote the ingest section of {DOC}")
        return 0 if not report.failures() else 1
    except KeyboardInterrupt:
        print("interrupted: stopping every process this run started", file=sys.stderr)
        return 130
    finally:
        procs.kill_all()
        infra.close(keep=args.keep)
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signo: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _progress(round_index: int, repeat: int, cell: Cell, run: Measurement) -> None:
    if run.ok:
        rate = len(cell.files) / run.seconds
        mb = cell.bytes / 1e6 / run.seconds
        status = (
            f"{run.seconds:6.2f} s  {rate:7.1f} inst/s  {mb:6.0f} MB/s  "
            f"CPU {run.cpu_seconds * 1000 / len(cell.files):5.1f} ms/inst  RSS {run.rss_kib / 1024:5.0f} MB"
        )
    else:
        status = f"FAILED: {run.error}"
    print(
        f"[round {round_index + 1}/{repeat}] {cell.size:>5}, {cell.associations} assoc., "
        f"{cell.target.name:<15} {status}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
