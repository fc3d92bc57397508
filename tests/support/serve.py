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
from pathlib import Path
from types import TracebackType
from typing import IO

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
