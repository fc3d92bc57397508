"""A private PostgreSQL cluster for tests that stop or restart the server.

The machine's PostgreSQL serves the rest of the suite (and other test sessions), so it is never
stopped: a test that needs the index to go away runs its own cluster, made with ``initdb`` in a
temporary folder and started with ``pg_ctl`` on a free loopback port, its Unix socket in that folder.
PostgreSQL refuses to run as root; as root (the test machines and CI) every command runs as the
``postgres`` system user (``runuser``), which owns the folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.support.net import free_port


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program (``initdb``, ``pg_ctl``) of the newest installed version."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version)
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise RuntimeError(f"PostgreSQL's {name} is missing: apt-get install postgresql")


def _version(path: str) -> tuple[int, ...]:
    part = Path(path).parent.parent.name
    return tuple(int(p) for p in part.split(".") if p.isdigit())


class PostgresCluster:
    """``initdb`` once, then :meth:`start`, :meth:`stop`, :meth:`restart` as often as a test likes;
    the port and the data survive each of them."""

    def __init__(self, *, user: str = "postgres") -> None:
        self._run_as = user if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="pacs-pgcluster-"))
        if self._run_as is not None:
            account = pwd.getpwnam(self._run_as)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "server.log"

    # -- lifecycle -------------------------------------------------------------------------------
    def init(self) -> None:
        self._run(
            postgres_bin("initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: roll back open transactions and disconnect every client; ``immediate``: a crash."""
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._pg_ctl("restart", "-m", mode)

    def _pg_ctl(self, action: str, *args: str) -> None:
        # The log file each time: a server started without one would write to our pipe and keep it
        # open, and waiting for pg_ctl's output would never end.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(
            postgres_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            *args,
            "-w",
            action,
        )

    @property
    def running(self) -> bool:
        result = subprocess.run(
            self._command(postgres_bin("pg_ctl"), "-D", str(self.data), "status"),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running:
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -------------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        engine = create_engine(
            self.url().replace("postgresql:", "postgresql+psycopg:"), isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    # -- helpers ---------------------------------------------------------------------------------
    def _command(self, *args: str) -> list[str]:
        if self._run_as is None:
            return list(args)
        return ["runuser", "-u", self._run_as, "--", *args]

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            self._command(*args), capture_output=True, text=True, check=False, cwd=self.root, timeout=120
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            output = f"{result.stdout}{result.stderr}"
            raise RuntimeError(
                f"{Path(args[0]).name} {args[-1]} failed ({result.returncode}):\n{output}\n{log}"
            )
