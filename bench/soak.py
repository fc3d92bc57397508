"""Soak: many devices storing and many workstations querying and retrieving, for a long time.

A ``pacs serve`` (its default worker count) on the production pair (PostgreSQL + S3, SeaweedFS on
loopback) or the embedded one (SQLite + filesystem) takes, at the same time:

* ``--associations`` (16) DICOM senders, each storing new 16-bit radiographs over an association that it
  releases after ``--per-association`` instances and opens again (a device's session);
* ``--http-clients`` (8) workstations looping over QIDO (studies of a part, series of a study), WADO-RS
  (a random acknowledged instance, checked byte for byte against what was sent, and its metadata) and
  a rendered PNG.

Every answer is checked; anything else than a Success C-STORE or a 2xx with the right content is an
error (there must be none). The server's resident memory (the supervisor and its workers) is sampled
all along: after the warm-up it must show no growth trend. At the end, every acknowledged instance must
be in the index (series instance counts over QIDO).

    python bench/soak.py                    # 10 minutes, production pair; rewrites docs/reliability.md
    python bench/soak.py --minutes 1 --no-doc
    python bench/soak.py --backend sqlite+file

tests/integration/test_soak.py runs one minute of it in CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/soak.py` from anywhere
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.dsutils import encode  # noqa: E402

from bench.report import write_section  # noqa: E402
from dicom_nodes.transport import tune  # noqa: E402
from tests.support.factories import diconde_dx  # noqa: E402
from tests.support.seaweed import SeaweedS3  # noqa: E402
from tests.support.serve import PacsServer, child_pids, pacs_command, proc_status_kib  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
PARTS = 4  # the senders share these parts, so they race to create the same rows
JSON = "application/dicom+json"
PART10 = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Options:
    minutes: float = 10.0
    associations: int = 16
    http_clients: int = 8
    per_association: int = 20
    image_side: int = 256  # 128 KiB of pixels per instance
    backend: str = "postgresql+s3"
    postgres_url: str = POSTGRES_URL
    workers: int | None = None  # None: the server's default (one per CPU)
    sample_seconds: float = 2.0
    warmup_fraction: float = 0.25
    progress: bool = True


@dataclass
class Sent:
    study: str
    series: str
    sop: str
    sha256: str


@dataclass
class Result:
    options: Options
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    stored_bytes: int = 0
    memory: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    acknowledged: int = 0
    missing: int = 0  # acknowledged but not in the index at the end

    # -- figures ---------------------------------------------------------------------------
    def count(self, op: str) -> int:
        return len(self.latencies.get(op, []))

    def percentile(self, op: str, q: float) -> float:
        values = sorted(self.latencies.get(op, []))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def measured_memory(self) -> list[tuple[float, float]]:
        start = self.seconds * self.options.warmup_fraction
        return [(t, mib) for t, mib in self.memory if t >= start]

    @property
    def memory_slope(self) -> float:
        """Least-squares growth of the server's RSS after the warm-up, MiB per minute."""
        points = self.measured_memory
        if len(points) < 3:
            return 0.0
        slope = statistics.linear_regression([t for t, _ in points], [m for _, m in points]).slope
        return slope * 60.0

    @property
    def memory_growth(self) -> float:
        """The trend over the measured window: slope x duration, in MiB."""
        points = self.measured_memory
        if len(points) < 3:
            return 0.0
        return self.memory_slope * (points[-1][0] - points[0][0]) / 60.0

    @property
    def memory_growth_limit(self) -> float:
        """What counts as a growth trend: more than 10 % of the post-warm-up start, at least 32 MiB."""
        points = self.measured_memory
        base = points[0][1] if points else 0.0
        return max(32.0, 0.10 * base)

    @property
    def passed(self) -> bool:
        return not self.errors and not self.missing and self.memory_growth <= self.memory_growth_limit


# -- the server ------------------------------------------------------------------------------------
@contextmanager
def production_pair(workdir: Path, postgres_url: str) -> Iterator[list[str]]:
    """A fresh PostgreSQL database and a SeaweedFS S3 bucket; yields the archive's config flags."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(postgres_url).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"pacs_soak_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    s3 = SeaweedS3(workdir / "seaweedfs")
    try:
        s3.start()
        database_url = admin_url.set(drivername="postgresql", database=name).render_as_string(False)
        yield ["--database-url", database_url, "--object-store", s3.url("pacs-soak")]
    finally:
        s3.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def admin_token(config: list[str]) -> str:
    made = subprocess.run(
        [*pacs_command(), "users", "add", "soak", "--role", "admin", *config],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if made.returncode != 0 or not made.stdout.strip():
        raise RuntimeError(f"pacs users add failed: {made.stderr.strip()[-800:]}")
    return made.stdout.strip().splitlines()[-1].strip()


def server_rss_mib(pid: int) -> float:
    total = 0
    for p in [pid, *child_pids(pid)]:
        try:
            total += proc_status_kib(p, "VmRSS")
        except (FileNotFoundError, KeyError, ProcessLookupError):
            continue
    return total / 1024.0


# -- the load --------------------------------------------------------------------------------------
class Load:
    """Shared state of one run: what was acknowledged, what went wrong, when to stop."""

    def __init__(self, options: Options, server: PacsServer, token: str, result: Result) -> None:
        self.options = options
        self.server = server
        self.token = token
        self.result = result
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent: list[Sent] = []
        self.per_series: dict[str, int] = defaultdict(int)
        self.studies: list[str] = [str(generate_uid()) for _ in range(PARTS)]

    def record(self, op: str, seconds: float) -> None:
        with self.lock:
            self.result.latencies[op].append(seconds * 1000.0)

    def error(self, what: str) -> None:
        with self.lock:
            self.result.errors.append(what)
        if self.options.progress:
            print(f"  ERROR {what}", flush=True)

    # -- a device ------------------------------------------------------------------------------
    def sender(self, number: int) -> None:
        part = number % PARTS
        template = diconde_dx(
            part_id=f"SOAK-{part:04d}",
            component_name=f"Soak^Component{part}",
            rows=self.options.image_side,
            columns=self.options.image_side,
            study_uid=self.studies[part],
            seed=number,
        )
        ae = AE(ae_title=f"SOAK{number:02d}")
        ae.add_requested_context(DX, EXPLICIT_LE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        while not self.stop.is_set():
            series = generate_uid()
            started = time.perf_counter()
            assoc = ae.associate(self.server.host, self.server.dicom_port, ae_title=self.server.ae_title)
            if not assoc.is_established:
                self.error(f"sender {number}: association refused or failed")
                self.stop.wait(1.0)
                continue
            # pynetdicom's reactor thread can take a response meant for send_c_store (the
            # requestor then waits out its DIMSE timeout): the archive's own SCU guard closes that.
            tune(assoc)
            self.record("associate", time.perf_counter() - started)
            try:
                for i in range(self.options.per_association):
                    if self.stop.is_set():
                        break
                    ds = template.copy()
                    ds.SeriesInstanceUID = series
                    ds.SOPInstanceUID = generate_uid()
                    ds.InstanceNumber = i + 1
                    encoded = encode(ds, False, True)
                    if encoded is None:
                        raise RuntimeError(f"sender {number}: cannot encode {ds.SOPInstanceUID}")
                    digest = hashlib.sha256(encoded).hexdigest()
                    started = time.perf_counter()
                    status = assoc.send_c_store(ds)
                    elapsed = time.perf_counter() - started
                    code = getattr(status, "Status", None)
                    if code != 0x0000:
                        self.error(f"sender {number}: C-STORE {ds.SOPInstanceUID} answered {code!r}")
                        break
                    self.record("c-store", elapsed)
                    with self.lock:
                        self.sent.append(Sent(self.studies[part], series, ds.SOPInstanceUID, digest))
                        self.per_series[series] += 1
                        self.result.stored_bytes += len(ds.PixelData)
            finally:
                assoc.release()

    # -- a workstation -------------------------------------------------------------------------
    def client(self, number: int) -> None:
        rng = random.Random(number)
        base = f"{self.server.http_url}/dicom-web"
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(headers=headers, timeout=60) as http:
            while not self.stop.is_set():
                with self.lock:
                    pick = rng.choice(self.sent) if self.sent else None
                if pick is None:
                    self.stop.wait(0.2)
                    continue
                op = rng.choice(("qido-studies", "qido-series", "wado-instance", "wado-metadata", "rendered"))
                part = self.studies.index(pick.study)
                instance = f"{base}/studies/{pick.study}/series/{pick.series}/instances/{pick.sop}"
                url, accept = {
                    "qido-studies": (f"{base}/studies?PatientID=SOAK-{part:04d}", JSON),
                    "qido-series": (f"{base}/studies/{pick.study}/series?limit=100", JSON),
                    "wado-instance": (instance, PART10),
                    "wado-metadata": (f"{instance}/metadata", JSON),
                    "rendered": (f"{instance}/rendered", "image/png"),
                }[op]
                started = time.perf_counter()
                try:
                    answer = http.get(url, headers={"Accept": accept})
                except httpx.HTTPError as exc:
                    self.error(f"client {number}: {op} {url}: {exc!r}")
                    continue
                elapsed = time.perf_counter() - started
                problem = check(op, answer, pick)
                if problem:
                    self.error(f"client {number}: {op} {url}: {problem}")
                else:
                    self.record(op, elapsed)

    # -- the end ---------------------------------------------------------------------------------
    def missing_instances(self) -> int:
        """Acknowledged instances the index does not count (series by series, over QIDO)."""
        indexed: dict[str, int] = {}
        with httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=120) as http:
            for study in self.studies:
                offset = 0
                while True:
                    answer = http.get(
                        f"{self.server.http_url}/dicom-web/studies/{study}/series",
                        params={"includefield": "00201209", "limit": 1000, "offset": offset},
                        headers={"Accept": "application/dicom+json"},
                    )
                    if answer.status_code == 204:
                        break
                    answer.raise_for_status()
                    page = answer.json()
                    for series in page:
                        uid = series["0020000E"]["Value"][0]
                        indexed[uid] = int(series.get("00201209", {}).get("Value", [0])[0])
                    if len(page) < 1000:
                        break
                    offset += len(page)
        return sum(max(0, count - indexed.get(uid, 0)) for uid, count in self.per_series.items())


def check(op: str, answer: httpx.Response, pick: Sent) -> str:
    """What is wrong with an answer ('' when nothing)."""
    if answer.status_code != 200:
        return f"HTTP {answer.status_code}: {answer.text[:200]}"
    content_type = answer.headers.get("content-type", "")
    if op.startswith("qido") or op == "wado-metadata":
        body = answer.json()
        if not isinstance(body, list) or not body:
            return "an empty or non-list JSON answer"
        if op == "wado-metadata" and body[0].get("00080018", {}).get("Value", [None])[0] != pick.sop:
            return "metadata of another instance"
        return ""
    if op == "rendered":
        return "" if answer.content.startswith(b"\x89PNG") else f"not a PNG ({content_type})"
    from bench.web import multipart_parts

    parts = multipart_parts(answer.content, content_type)
    if isinstance(parts, str):
        return parts
    if len(parts) != 1:
        return f"{len(parts)} parts, not 1"
    body = parts[0]
    if body[128:132] != b"DICM":
        return "not a Part 10 object"
    meta_end = 144 + int.from_bytes(body[140:144], "little")
    if hashlib.sha256(body[meta_end:]).hexdigest() != pick.sha256:
        return "dataset bytes differ from what was sent"
    return ""


# -- a run -----------------------------------------------------------------------------------------
def run(options: Options, workdir: Path) -> Result:
    result = Result(options)
    with ExitStack() as stack:
        config = ["--data-dir", str(workdir / "pacs-data")]
        if options.backend == "postgresql+s3":
            config += stack.enter_context(production_pair(workdir, options.postgres_url))
        elif options.backend != "sqlite+file":
            raise ValueError(f"unknown backend {options.backend!r} (postgresql+s3 or sqlite+file)")
        token = admin_token(config)
        server = PacsServer(
            [*config, "--log-level", "WARNING"],
            workers=options.workers,
            log_path=workdir / "serve.log",
        )
        stack.enter_context(server)
        load = Load(options, server, token, result)
        threads = [
            threading.Thread(target=load.sender, args=(n,), name=f"sender-{n}", daemon=True)
            for n in range(options.associations)
        ] + [
            threading.Thread(target=load.client, args=(n,), name=f"client-{n}", daemon=True)
            for n in range(options.http_clients)
        ]
        duration = options.minutes * 60.0
        started = time.monotonic()
        for thread in threads:
            thread.start()
        next_report = started + 30.0
        while (now := time.monotonic()) - started < duration:
            result.memory.append((now - started, server_rss_mib(server.pid)))
            if options.progress and now >= next_report:
                next_report += 30.0
                print(
                    f"  {now - started:5.0f} s  stored {result.count('c-store'):6d}  "
                    f"http {sum(result.count(op) for op in HTTP_OPS):6d}  "
                    f"errors {len(result.errors)}  server RSS {result.memory[-1][1]:.0f} MiB",
                    flush=True,
                )
            load.stop.wait(min(options.sample_seconds, max(0.0, duration - (now - started))))
        load.stop.set()
        for thread in threads:
            thread.join(120)
        result.seconds = time.monotonic() - started
        result.memory.append((result.seconds, server_rss_mib(server.pid)))
        result.acknowledged = len(load.sent)
        result.missing = load.missing_instances()
        if server.process is not None and server.process.poll() is not None:
            result.errors.append(f"the server exited with code {server.process.returncode}")
    return result


HTTP_OPS = ("qido-studies", "qido-series", "wado-instance", "wado-metadata", "rendered")
ALL_OPS = ("associate", "c-store", *HTTP_OPS)


def table(result: Result) -> str:
    o = result.options
    lines = [
        f"{o.associations} storing associations ({o.per_association} instances each, then a new one), "
        f"{o.http_clients} HTTP clients, {result.seconds / 60:.1f} min, {o.backend}, "
        f"{o.image_side}x{o.image_side} 16-bit images.",
        "",
        "| operation | count | per second | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for op in ALL_OPS:
        n = result.count(op)
        if not n:
            continue
        lines.append(
            f"| {op} | {n} | {n / result.seconds:.1f} | {result.percentile(op, 0.50):.1f} "
            f"| {result.percentile(op, 0.99):.1f} |"
        )
    memory = result.measured_memory
    lines += [
        "",
        f"Stored {result.acknowledged} instances "
        f"({result.stored_bytes / 2**20 / result.seconds:.1f} MiB/s of pixel data); "
        f"missing from the index at the end: {result.missing}; errors: {len(result.errors)}.",
        f"Server RSS (supervisor and workers): {result.memory[0][1]:.0f} MiB at start, "
        f"{memory[0][1] if memory else float('nan'):.0f} MiB after the warm-up, "
        f"{result.memory[-1][1]:.0f} MiB at the end, at most {max(m for _, m in result.memory):.0f} MiB; "
        "trend after the warm-up "
        f"{result.memory_slope:+.1f} MiB/min ({result.memory_growth:+.0f} MiB over the window, limit "
        f"{result.memory_growth_limit:.0f}).",
        f"Verdict: {'PASS' if result.passed else 'FAIL'}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--associations", type=int, default=16)
    parser.add_argument("--http-clients", type=int, default=8)
    parser.add_argument("--backend", default="postgresql+s3", choices=("postgresql+s3", "sqlite+file"))
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--workers", type=int, default=None, help="server processes (default: one per CPU)")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (server log, data)")
    args = parser.parse_args()
    options = Options(
        minutes=args.minutes,
        associations=args.associations,
        http_clients=args.http_clients,
        backend=args.backend,
        postgres_url=args.postgres_url,
        workers=args.workers,
    )
    workdir = Path(tempfile.mkdtemp(prefix="pacs-soak-"))
    print(f"soak: {options.minutes} min on {options.backend}, work folder {workdir}", flush=True)
    try:
        result = run(options, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = table(result)
    print(text)
    for error in result.errors[:20]:
        print(f"  {error}")
    if not args.no_doc:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        write_section(
            "soak",
            f"## Soak (16 devices storing, 8 workstations reading)\n\nRe-run: `python bench/soak.py`. "
            f"Last run {stamp}, {platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} CPUs.\n\n{text}\n",
            doc=DOC,
        )
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
