"""Run the ``pacs`` command as a user does: a subprocess, configured by flags, environment or file.

:class:`PacsServer` starts ``pacs serve`` on ports the kernel picks (``--dicom-port 0 --http-port 0``)
and learns them from the one readiness line the server prints on stdout, so no test guesses when
the server is up nor races another test for a port. Its stderr (the log) goes to a file a test can
read while the server runs.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

READY = re.compile(
    r"^NDT archive ready: DICOM (?P<ae>\S+) on (?P<dicom_host>\S+):(?P<dicom_port>\d+), "
    r"HTTP on http://(?P<http_host>\S+):(?P<http_port>\d+) \((?P<details>.*)\)$"
)
#: In the details of the readiness line when the archive also listens for DICOM over TLS.
READY_TLS = re.compile(r"(?:^|; )DICOM TLS on (?P<host>\S+):(?P<port>\d+)(?:;|$)")


def pacs_command() -> list[str]:
    """The installed ``pacs`` script of this interpreter's environment (``python -m pacs.cli`` without it)."""
    script = Path(sys.executable).with_name("pacs")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pacs.cli"]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``PACS_*`` (so only what a test sets configures the archive)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(extra or {})
    return env


def run_pacs(
    *args: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run one ``pacs`` subcommand to completion; stdout and stderr are captured as text."""
    return subprocess.run(
        [*pacs_command(), *map(str, args)],
        env=clean_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Wait, at most ``timeout`` seconds, for a condition that has no signal of its own."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (the supervisor's workers), from /proc."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            continue
    return sorted(set(children))


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


class PacsServer:
    """``pacs serve`` in a subprocess; a context manager that starts it and stops it with SIGTERM.

    ``config_args`` are the archive's configuration flags (``--data-dir D``, ``--database-url U``,
    ...); the listeners always bind 127.0.0.1 on kernel-chosen ports unless the arguments say
    otherwise.
    """

    def __init__(
        self,
        config_args: Sequence[str | os.PathLike[str]],
        *,
        workers: int | None = 1,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        args = [str(a) for a in config_args]
        for flag, value in (("--host", "127.0.0.1"), ("--dicom-port", "0"), ("--http-port", "0")):
            if flag not in args:
                args += [flag, value]
        if workers is not None and "--workers" not in args:
            args += ["--workers", str(workers)]
        self.args = args
        self.env = clean_env(env)
        self.cwd = cwd
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[str] | None = None
        self.stdout_lines: list[str] = []
        self.ready_line = ""
        self.ae_title = ""
        self.host = ""
        self.dicom_port = 0
        self.dicom_tls_port: int | None = None  # when started with a dicom_tls_port
        self.http_port = 0
        self.returncode: int | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._log_file: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> PacsServer:
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="pacs-serve-")) / "serve.log"
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*pacs_command(), "serve", *self.args],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_stdout, name="pacs-stdout", daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop(timeout=10)
            raise
        return self

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)  # end of stdout: the process exited (or closed it)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"pacs serve printed no readiness line in {self.ready_timeout} s\n{self.log()}"
                )
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.process.wait(10) if self.process else None
                raise RuntimeError(f"pacs serve exited with code {code} before it was ready\n{self.log()}")
            match = READY.match(line)
            if match:
                self.ready_line = line
                self.ae_title = match["ae"]
                self.host = match["dicom_host"]
                self.dicom_port = int(match["dicom_port"])
                self.http_port = int(match["http_port"])
                tls = READY_TLS.search(match["details"])
                self.dicom_tls_port = int(tls["port"]) if tls else None
                return

    def signal(self, signo: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signo)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; returns its exit code."""
        assert self.process is not None
        self.returncode = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.returncode

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit (SIGKILL only if it never comes); returns the exit code."""
        if self.process is None:
            raise RuntimeError("the server was never started")
        if self.returncode is not None:
            return self.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_tree()
            self.wait(30)
            raise

    def _kill_tree(self) -> None:
        assert self.process is not None
        for pid in child_pids(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.kill()

    def __enter__(self) -> PacsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None and self.returncode is None:
            self.stop()

    # -- what a test looks at ----------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def worker_pids(self) -> list[int]:
        return child_pids(self.pid)

    def log(self) -> str:
        """The server's stderr so far."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


# -- dcmtk clients, as a device or a technician would use them ------------------------------------
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu_command(
    server: PacsServer, *files: str | os.PathLike[str], aet: str = "STORESCU", options: Sequence[str] = ()
) -> list[str]:
    return [
        STORESCU,
        "-v",
        "-aet",
        aet,
        "-aec",
        server.ae_title,
        *options,
        server.host,
        str(server.dicom_port),
    ] + [str(f) for f in files]


def storescu(
    server: PacsServer,
    *files: str | os.PathLike[str],
    aet: str = "STORESCU",
    options: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk's storescu (uncompressed syntaxes proposed); output merged into stdout."""
    return subprocess.run(
        storescu_command(server, *files, aet=aet, options=options),
        env=dcmtk_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def store_successes(output: str) -> int:
    """How many C-STORE responses with status Success storescu reported in its verbose output."""
    return output.count("Received Store Response (Success)")


def echoscu(server: PacsServer, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, "-v", "-aec", server.ae_title, server.host, str(server.dicom_port)],
        env=dcmtk_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- comparing what was sent with what was stored -------------------------------------------------
def dataset_offset(path: Path) -> int:
    """Where the dataset starts in a Part 10 file: after preamble, ``DICM`` and the file meta group.

    A C-STORE carries only the dataset; the receiver writes its own file meta in front of it, so a
    sent file and the stored object match from this offset on, not byte for byte.
    """
    with open(path, "rb") as f:
        head = f.read(144)
    if head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00" or head[136:138] != b"UL":
        raise ValueError(f"{path}: no File Meta Information Group Length (0002,0000) at byte 132")
    return 144 + int.from_bytes(head[140:144], "little")


def sha256_of(path: Path, offset: int = 0) -> str:
    """SHA-256 of a file from ``offset`` on, streamed (the files may be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_sha256(path: Path) -> str:
    return sha256_of(path, dataset_offset(path))


def object_path(objects: Path, key: str) -> Path:
    """Where the filesystem store keeps ``key`` (``ROOT/ab/cd/abcd...``)."""
    return objects / key[0:2] / key[2:4] / key


# -- crashing the server, and what its senders were told ------------------------------------------
# A crash test needs to know exactly which instances the archive acknowledged: only a C-STORE
# response with status Success (0x0000) promises that an instance is kept. StoreLoad sends from
# parallel associations and records that per instance; kill_server ends the whole server at once;
# verify_stored and fsck_summary check afterwards what the archive still has.

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
FSCK_SUMMARY = re.compile(
    r"^fsck: (?P<checked>\d+) indexed objects checked, (?P<missing>\d+) missing, (?P<corrupt>\d+) corrupt, "
    r"(?P<unreadable>\d+) unreadable, (?P<unreferenced>\d+) unreferenced",
    re.M,
)


def archive_flags(values: Mapping[str, object]) -> list[str]:
    """Settings (``data_dir``, ``database_url``, ...) as ``pacs`` command-line flags."""
    return [arg for key, value in values.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def restart_on_ports(
    config_args: Sequence[str | os.PathLike[str]], *, within: float = 10.0, **kwargs: Any
) -> PacsServer:
    """Start ``pacs serve`` on the ports a killed one listened on (``--dicom-port P --http-port Q``
    among ``config_args``). Those ports came from the kernel's ephemeral range, and once the
    listener is gone the kernel may hand one to another process's outgoing connection, which
    makes the bind fail until that connection closes: retried for ``within`` seconds, as a service
    manager restarting the archive would."""
    deadline = time.monotonic() + within
    while True:
        try:
            return PacsServer(config_args, **kwargs).start()
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped by its parent has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def kill_server(server: PacsServer, *, supervisor_only: bool = False, timeout: float = 30.0) -> list[int]:
    """SIGKILL the supervisor and every worker of ``server`` at the same moment, as ``kill -9`` of the
    process group would; returns their pids once none of them runs any more.

    ``supervisor_only``: SIGKILL the supervisor alone (the OOM killer's or an operator's ``kill -9
    PID``); its workers must then die with it: TimeoutError if one is still running after
    ``timeout`` (it is killed then, so that nothing outlives the test)."""
    pids = [server.pid, *server.worker_pids()]
    for pid in pids[:1] if supervisor_only else pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        wait_until(
            lambda: all(process_gone(p) for p in pids), timeout, f"the killed processes {pids} to exit"
        )
    except TimeoutError:
        survivors = [p for p in pids if not process_gone(p)]
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        raise TimeoutError(f"processes {survivors} outlived the killed supervisor {pids[0]}") from None
    finally:
        server.wait(timeout)
    return pids


@dataclass(frozen=True)
class SentInstance:
    """One generated instance on disk, and the SHA-256 of its dataset (the bytes a C-STORE carries)."""

    path: Path
    sop_instance_uid: str
    part_id: str
    study_uid: str
    series_uid: str
    sha256: str


def instance_corpus(
    folder: Path,
    count: int,
    *,
    tag: str,
    parts: int = 2,
    inspections: int = 2,
    series: int = 2,
    large_every: int = 0,
    large_side: int = 1024,
) -> list[SentInstance]:
    """``count`` distinct DICONDE radiographs spread over ``parts`` new parts (part IDs ``TAG-P1``...),
    each with ``inspections`` inspections of ``series`` series, in turn: consecutive instances belong
    to different series, so parallel associations fill the same series at the same time. Every
    ``large_every``-th instance is ``large_side`` pixels square (2 MB at 1024), the rest 128 (33 kB)."""
    import copy

    from pydicom.uid import generate_uid

    from tests.support.factories import diconde_dx, write

    folder.mkdir(parents=True, exist_ok=True)
    small = diconde_dx(rows=128, columns=128, seed=1)
    large = diconde_dx(rows=large_side, columns=large_side, seed=2) if large_every else small
    chains = [
        (f"{tag}-P{p + 1}", study, generate_uid(), s + 1, i + 1)
        for p in range(parts)
        for i, study in enumerate(generate_uid() for _ in range(inspections))
        for s in range(series)
    ]
    instances = []
    for index in range(count):
        part_id, study_uid, series_uid, series_number, study_number = chains[index % len(chains)]
        base = large if large_every and index % large_every == large_every - 1 else small
        ds = copy.deepcopy(base)  # shares the pixel bytes (immutable), copies the rest
        uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.PatientID, ds.PatientName = part_id, f"Crash^{part_id}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = str(study_number), series_number, index + 1
        pixels = bytearray(base.PixelData)
        pixels[:16] = hashlib.sha256(uid.encode()).digest()[:16]  # distinct pixel data too
        ds.PixelData = bytes(pixels)
        path = write(ds, folder / f"{tag}-{index:05d}.dcm")
        instances.append(SentInstance(path, uid, part_id, study_uid, series_uid, dataset_sha256(path)))
    return instances


class _ChunkedSend:
    """pynetdicom's chunked send (a file goes out as it is on disk, not decoded and encoded again)
    while any :class:`StoreLoad` sends. The setting is process-wide: the last load to finish puts
    back what it was, so other tests in the process see pynetdicom's default."""

    _lock = threading.Lock()
    _users = 0
    _saved = False

    @classmethod
    def acquire(cls) -> None:
        from pynetdicom import _config

        with cls._lock:
            if cls._users == 0:
                cls._saved = _config.STORE_SEND_CHUNKED_DATASET
                _config.STORE_SEND_CHUNKED_DATASET = True
            cls._users += 1

    @classmethod
    def release(cls) -> None:
        from pynetdicom import _config

        with cls._lock:
            cls._users -= 1
            if cls._users == 0:
                _config.STORE_SEND_CHUNKED_DATASET = cls._saved


class StoreLoad:
    """C-STORE from parallel associations, one pynetdicom SCU thread each, every thread sending its
    share in order; records per instance what the archive answered.

    ``acknowledged`` holds the instances answered Success (0x0000), ``refused`` the other statuses,
    ``unanswered`` what was never answered (the association ended first: the instance in flight
    and the rest of the share). Files are sent as they are on disk (pynetdicom's chunked send), so
    the bytes on the wire are exactly those :attr:`SentInstance.sha256` covers.
    """

    def __init__(
        self,
        host: str,
        port: int,
        called_ae: str,
        shares: Sequence[Sequence[SentInstance]],
        *,
        calling_ae: str = "LOAD_SCU",
        timeout: float = 60.0,
    ) -> None:
        self.host, self.port, self.called_ae, self.calling_ae = host, port, called_ae, calling_ae
        self.shares = [list(share) for share in shares]
        self.timeout = timeout
        self.acknowledged: list[SentInstance] = []
        self.refused: dict[str, int] = {}
        self.unanswered: list[SentInstance] = []
        self.errors: list[str] = []
        self.started_at = 0.0
        self._changed = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._sending = 0  # senders not finished yet

    @classmethod
    def to(cls, server: PacsServer, instances: Sequence[SentInstance], associations: int) -> StoreLoad:
        """``instances`` dealt over ``associations`` associations to ``server``, like cards."""
        shares = [instances[i::associations] for i in range(associations)]
        return cls(server.host, server.dicom_port, server.ae_title, [s for s in shares if s])

    def start(self) -> StoreLoad:
        self.started_at = time.monotonic()
        self._sending = len(self.shares)
        if self._sending:
            _ChunkedSend.acquire()  # released by the last sender to finish
        for number, share in enumerate(self.shares, 1):
            thread = threading.Thread(
                target=self._send, args=(share,), name=f"store-load-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def wait_for_acknowledged(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` instances are acknowledged (False: the load ended or time ran out first)."""
        with self._changed:
            return (
                self._changed.wait_for(lambda: len(self.acknowledged) >= count or not self._sending, timeout)
                and len(self.acknowledged) >= count
            )

    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float = 120.0) -> StoreLoad:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.running():
            raise TimeoutError(f"C-STORE senders still running after {timeout} s")
        return self

    def run(self, timeout: float = 300.0) -> StoreLoad:
        return self.start().join(timeout)

    @property
    def complete(self) -> bool:
        """Every instance acknowledged."""
        return len(self.acknowledged) == sum(len(s) for s in self.shares)

    def _send(self, share: list[SentInstance]) -> None:
        from pynetdicom import AE

        from dicom_nodes.transport import tune

        pending = list(share)
        try:
            ae = AE(ae_title=self.calling_ae)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
            ae.add_requested_context(DX_FOR_PRESENTATION, ["1.2.840.10008.1.2.1"])  # explicit VR LE
            assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
            if not assoc.is_established:
                self._error("association not established")
                return
            tune(assoc)  # keeps pynetdicom's reactor thread off the C-STORE responses
            try:
                while pending and assoc.is_established:
                    status = assoc.send_c_store(pending[0].path)
                    if "Status" not in status:
                        break  # no response: the association ended (aborted, timed out)
                    self._answered(pending.pop(0), int(status.Status))
            finally:
                if assoc.is_established:
                    assoc.release()
        except Exception as exc:  # the peer vanished mid-call: what is pending stays unanswered
            self._error(f"{type(exc).__name__}: {exc}")
        finally:
            with self._changed:
                self.unanswered.extend(pending)
                self._sending -= 1
                if not self._sending:
                    _ChunkedSend.release()
                self._changed.notify_all()

    def _answered(self, item: SentInstance, status: int) -> None:
        with self._changed:
            if status == 0x0000:
                self.acknowledged.append(item)
            else:
                self.refused[item.sop_instance_uid] = status
            self._changed.notify_all()

    def _error(self, message: str) -> None:
        with self._changed:
            self.errors.append(message)


def stream_dataset_sha256(f: IO[bytes]) -> str:
    """SHA-256 of the dataset of a Part 10 stream (after its own file meta group), read to its end."""
    head = f.read(144)
    if head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00" or head[136:138] != b"UL":
        raise ValueError("no File Meta Information Group Length (0002,0000) at byte 132")
    f.read(int.from_bytes(head[140:144], "little"))
    digest = hashlib.sha256()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def verify_stored(settings: Mapping[str, object], instances: Sequence[SentInstance]) -> dict[str, str]:
    """What is wrong with each of ``instances`` in the archive, by SOP Instance UID (empty: nothing).

    Each must be retrievable through the archive's retrieve service, and the dataset of the bytes it
    returns must have the SHA-256 of the file sent."""
    from pacs.archive import open_archive
    from pacs.config import load_settings
    from pacs.errors import PacsError

    problems: dict[str, str] = {}
    archive = open_archive(load_settings(dict(settings)), upgrade_schema=False)
    try:
        for item in instances:
            try:
                version = archive.retrieve.current(item.sop_instance_uid)
                with archive.retrieve.open(version) as f:
                    got = stream_dataset_sha256(f)
            except (PacsError, ValueError) as exc:
                problems[item.sop_instance_uid] = f"{type(exc).__name__}: {exc}"
                continue
            if got != item.sha256:
                problems[item.sop_instance_uid] = f"dataset SHA-256 {got}, sent {item.sha256}"
    finally:
        archive.close()
    return problems


def index_counts(settings: Mapping[str, object]) -> dict[str, int]:
    """Rows per index table (components, inspections, series, instances, versions)."""
    from pacs.archive import open_archive
    from pacs.config import load_settings

    archive = open_archive(load_settings(dict(settings)), upgrade_schema=False)
    try:
        return archive.index.counts()
    finally:
        archive.close()


@dataclass(frozen=True)
class FsckSummary:
    returncode: int
    checked: int
    missing: int
    corrupt: int
    unreadable: int
    unreferenced: int
    output: str

    @property
    def no_entry_without_object(self) -> bool:
        """Every index entry has its object, whole: what a crash must never break."""
        return self.missing == self.corrupt == self.unreadable == 0


def fsck_summary(settings: Mapping[str, object], *options: str) -> FsckSummary:
    """Run ``pacs fsck`` on the archive and read its summary line."""
    done = run_pacs("fsck", *archive_flags(settings), *options, timeout=600)
    output = done.stdout + done.stderr
    found = FSCK_SUMMARY.search(done.stdout)
    if found is None:
        raise RuntimeError(f"pacs fsck printed no summary (exit code {done.returncode}):\n{output}")
    counts = {k: int(v) for k, v in found.groupdict().items()}
    return FsckSummary(done.returncode, output=output, **counts)
