"""Dependency faults under load: the S3 server stopped, PostgreSQL restarted or stopped, the disk full,
again and again while devices and workstations keep storing into a running ``pacs serve``.

Three scenarios, each on a server of its own, each given an equal share of ``--minutes``:

* ``s3``: PostgreSQL (a private cluster) + S3 (a private SeaweedFS); SeaweedFS is stopped (SIGTERM and
  SIGKILL in turn) for ``--down`` seconds, then started again on the same ports and data.
* ``postgresql``: the same pair; PostgreSQL is restarted (``pg_ctl restart -m fast``, then ``-m
  immediate``: a crash) or stopped for ``--down`` seconds (fast, then immediate) in turn.
* ``disk``: SQLite + filesystem in a tmpfs (``--disk-size``); a filler file takes the free space for
  ``--down`` seconds, then is deleted.

Between faults the dependency stays up for ``--up`` seconds. ``--senders`` C-STORE clients (pynetdicom;
an association per 20 instances) and ``--stowers`` STOW-RS clients store new radiographs without pause.
For each fault, from the moment it starts until both faces stored again: stores answered, failures
answered (C-STORE 0xA7xx, STOW-RS 503), Successes, Successes lost (a Success whose instance is not in
the index with its object intact afterwards: must be 0), stores without an answer and other statuses
(both must be 0), and the seconds from the dependency's return to the first Success of each face.
After each scenario the server is stopped and the archive checked offline: every Success indexed,
no failure indexed, ``fsck`` clean (no missing, corrupt or unreferenced object), no spooled file left.

    python bench/faults.py                       # 10 minutes; rewrites its section of docs/reliability.md
    python bench/faults.py --minutes 2 --only s3
    python bench/faults.py --json out.json --markdown out.md

Runs as root (tmpfs mount, ``runuser`` for PostgreSQL); traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
if str(ROOT) not in sys.path:  # `python bench/faults.py` from anywhere
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pynetdicom import AE  # noqa: E402

from bench.report import write_section  # noqa: E402
from pacs.archive import open_archive  # noqa: E402
from pacs.config import load_settings  # noqa: E402
from tests.support.factories import diconde_dx, part10_bytes  # noqa: E402
from tests.support.pgcluster import PostgresCluster  # noqa: E402
from tests.support.seaweed import SeaweedS3  # noqa: E402
from tests.support.serve import PacsServer, pacs_command  # noqa: E402

DX = "1.2.840.10008.5.1.4.1.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
BOUNDARY = "faults-bench-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
PER_ASSOCIATION = 20
RECOVERY_LIMIT = 120.0  # seconds after the dependency is back within which both faces must store again


@dataclass
class Options:
    minutes: float = 10.0
    up: float = 15.0
    down: float = 8.0
    senders: int = 3
    stowers: int = 2
    image_side: int = 128  # 32 KiB of pixels per instance
    workers: int = 2
    disk_size: str = "1g"
    only: tuple[str, ...] = ("s3", "postgresql", "disk")
    workdir: Path | None = None


# -- what each client saw ----------------------------------------------------------------------------
@dataclass
class Answer:
    face: str  # c-store, stow
    uid: str
    sent: float
    done: float
    kind: str  # stored, refused, unanswered, wrong
    status: int | None


class Answers:
    def __init__(self) -> None:
        self.items: list[Answer] = []
        self._lock = threading.Lock()

    def add(self, answer: Answer) -> None:
        with self._lock:
            self.items.append(answer)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.items)

    def first_success(self, face: str, after: float) -> float | None:
        with self._lock:
            times = [a.done for a in self.items if a.face == face and a.kind == "stored" and a.sent >= after]
        return min(times) if times else None


class Load:
    """C-STORE and STOW-RS clients storing new instances without pause until :meth:`stop`."""

    def __init__(self, options: Options, server: PacsServer, token: str, answers: Answers) -> None:
        self.options = options
        self.server = server
        self.token = token
        self.answers = answers
        self._stop = threading.Event()
        self._threads = [
            *(threading.Thread(target=self._sender, args=(n,), daemon=True) for n in range(options.senders)),
            *(threading.Thread(target=self._stower, args=(n,), daemon=True) for n in range(options.stowers)),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _instance(self, n: int) -> Dataset:
        side = self.options.image_side
        return diconde_dx(part_id=f"FAULTS-{n % 4}", rows=side, columns=side)

    def _sender(self, n: int) -> None:
        ae = AE(ae_title=f"FAULTS_{n}")
        ae.add_requested_context(DX, [EXPLICIT_LE])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        while not self._stop.is_set():
            assoc = ae.associate(self.server.host, self.server.dicom_port, ae_title=self.server.ae_title)
            if not assoc.is_established:
                time.sleep(0.2)
                continue
            try:
                for _ in range(PER_ASSOCIATION):
                    if self._stop.is_set() or not assoc.is_established:
                        break
                    ds = self._instance(n)
                    sent = time.monotonic()
                    response = assoc.send_c_store(ds)
                    done = time.monotonic()
                    status = int(response.Status) if "Status" in response else None
                    if status is None:
                        kind = "unanswered"
                    elif status == 0:
                        kind = "stored"
                    elif status & 0xFF00 == 0xA700:
                        kind = "refused"
                    else:
                        kind = "wrong"
                    self.answers.add(Answer("c-store", ds.SOPInstanceUID, sent, done, kind, status))
            finally:
                if assoc.is_established:
                    assoc.release()

    def _stower(self, n: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": STOW_TYPE}
        with httpx.Client(base_url=self.server.http_url, headers=headers, timeout=60) as http:
            while not self._stop.is_set():
                ds = self._instance(n)
                body = (
                    f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + part10_bytes(ds)
                    + f"\r\n--{BOUNDARY}--\r\n".encode()
                )
                sent = time.monotonic()
                try:
                    response = http.post("/dicom-web/studies", content=body)
                except httpx.HTTPError:
                    self.answers.add(
                        Answer("stow", ds.SOPInstanceUID, sent, time.monotonic(), "unanswered", None)
                    )
                    time.sleep(0.2)
                    continue
                done = time.monotonic()
                code = response.status_code
                kind = "stored" if code == 200 else "refused" if code == 503 else "wrong"
                self.answers.add(Answer("stow", ds.SOPInstanceUID, sent, done, kind, code))
                if kind == "refused":
                    time.sleep(0.05)  # a client that honours nothing but does not spin either


# -- faults ------------------------------------------------------------------------------------------
@dataclass
class Fault:
    scenario: str
    name: str
    started: float = 0.0  # monotonic, when the fault began
    back: float = 0.0  # when the dependency was back
    recovered: float | None = None  # when both faces had stored again
    recovery_seconds: dict[str, float | None] = field(default_factory=dict)
    health_during: int | None = None  # /health status code while the dependency was away
    counts: dict[str, int] = field(default_factory=dict)
    lost: int = 0  # Successes in the window not found intact afterwards
    failed_but_indexed: int = 0


def wait_recovered(answers: Answers, fault: Fault, limit: float = RECOVERY_LIMIT) -> None:
    deadline = fault.back + limit
    while time.monotonic() < deadline:
        firsts = {face: answers.first_success(face, fault.back) for face in ("c-store", "stow")}
        if all(t is not None for t in firsts.values()):
            fault.recovery_seconds = {face: round(t - fault.back, 2) for face, t in firsts.items() if t}
            fault.recovered = max(t for t in firsts.values() if t is not None)
            return
        time.sleep(0.1)
    fault.recovery_seconds = {
        face: (round(t - fault.back, 2) if (t := answers.first_success(face, fault.back)) else None)
        for face in ("c-store", "stow")
    }


def health_code(server: PacsServer) -> int | None:
    try:
        return httpx.get(f"{server.http_url}/health", timeout=30).status_code
    except httpx.HTTPError:
        return None


def count_window(answers: list[Answer], fault: Fault) -> None:
    end = fault.recovered or (fault.back + RECOVERY_LIMIT)
    window = [a for a in answers if fault.started <= a.done <= end]
    fault.counts = {
        "attempted": len(window),
        "stored": sum(a.kind == "stored" for a in window),
        "refused": sum(a.kind == "refused" for a in window),
        "unanswered": sum(a.kind == "unanswered" for a in window),
        "wrong": sum(a.kind == "wrong" for a in window),
    }


# -- scenarios ---------------------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    config: list[str]  # pacs serve flags
    settings: dict[str, Any]  # the same, for open_archive afterwards
    faults: Iterator[tuple[str, Callable[[], None], Callable[[], None]]]  # (name, break, restore)


def admin_token(config: list[str]) -> str:
    made = subprocess.run(
        [*pacs_command(), "users", "add", f"faults-{uuid.uuid4().hex[:6]}", "--role", "admin", *config],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if made.returncode != 0 or not made.stdout.strip():
        raise RuntimeError(f"pacs users add failed: {made.stderr.strip()[-800:]}")
    return made.stdout.strip().splitlines()[-1].strip()


def cycle(*faults: tuple[str, Callable[[], None], Callable[[], None]]) -> Iterator[tuple[str, Any, Any]]:
    while True:
        yield from faults


@contextmanager
def s3_and_postgres(
    workdir: Path, name: str
) -> Iterator[tuple[SeaweedS3, PostgresCluster, list[str], dict[str, Any]]]:
    cluster = PostgresCluster()
    s3 = SeaweedS3(workdir / f"seaweed-{name}")
    try:
        cluster.init()
        cluster.start()
        url = cluster.create_database("pacs")
        s3.start()
        data = workdir / f"data-{name}"
        config = ["--data-dir", str(data), "--database-url", url, "--object-store", s3.url("pacs-faults")]
        settings = {"data_dir": data, "database_url": url, "object_store": s3.url("pacs-faults")}
        yield s3, cluster, config, settings
    finally:
        s3.stop(kill=True)
        cluster.destroy()


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        while True:
            st = os.statvfs(folder)
            free = st.f_bavail * st.f_frsize
            if free <= 0:
                break
            try:
                f.write(b"\0" * min(8 << 20, free))
            except OSError:
                break
    return filler


def run_scenario(options: Options, name: str, seconds: float, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if name in ("s3", "postgresql"):
            s3, cluster, config, settings = stack.enter_context(s3_and_postgres(workdir, name))
            if name == "s3":
                faults = cycle(
                    ("S3 stopped (SIGTERM)", lambda: s3.stop(), s3.start),
                    ("S3 killed (SIGKILL)", lambda: s3.stop(kill=True), s3.start),
                )
            else:
                faults = cycle(
                    ("PostgreSQL restart -m fast", lambda: cluster.restart("fast"), lambda: None),
                    ("PostgreSQL stopped -m fast", lambda: cluster.stop("fast"), cluster.start),
                    ("PostgreSQL restart -m immediate", lambda: cluster.restart("immediate"), lambda: None),
                    ("PostgreSQL stopped -m immediate", lambda: cluster.stop("immediate"), cluster.start),
                )
        else:
            data = stack.enter_context(tmpfs(workdir / "disk", options.disk_size))
            config = ["--data-dir", str(data)]
            settings = {"data_dir": data}
            fillers: list[Path] = []
            faults = cycle(
                ("disk full", lambda: fillers.append(fill(data)), lambda: fillers.pop().unlink()),
            )
        return drive(options, name, seconds, workdir, config, settings, faults)
    raise AssertionError("unreachable")


def drive(
    options: Options,
    name: str,
    seconds: float,
    workdir: Path,
    config: list[str],
    settings: dict[str, Any],
    faults: Iterator[tuple[str, Callable[[], None], Callable[[], None]]],
) -> dict[str, Any]:
    token = admin_token(config)
    answers = Answers()
    log = workdir / f"serve-{name}.log"
    done: list[Fault] = []
    server = PacsServer(config, workers=options.workers, log_path=log)
    with server:
        load = Load(options, server, token, answers)
        load.start()
        end = time.monotonic() + seconds
        try:
            while time.monotonic() + options.up + options.down < end:
                time.sleep(options.up)
                label, break_it, restore = next(faults)
                fault = Fault(name, label, started=time.monotonic())
                progress(f"{name}: {label}")
                break_it()
                if "restart" not in label:  # away until restored (a restart is over when it returns)
                    time.sleep(options.down / 2)
                    fault.health_during = health_code(server)
                    time.sleep(options.down / 2)
                restore()
                fault.back = time.monotonic()
                wait_recovered(answers, fault)
                progress(f"{name}: {label}: stores again after {fault.recovery_seconds}")
                done.append(fault)
            time.sleep(2)
        finally:
            load.stop()
        server.stop()
    return verify(name, settings, answers.snapshot(), done, log)


def verify(
    name: str, settings: dict[str, Any], answers: list[Answer], faults: list[Fault], log: Path
) -> dict[str, Any]:
    """Open the archive offline: every Success indexed and intact, no failure indexed, fsck clean."""
    archive = open_archive(load_settings(settings))
    try:
        missing: set[str] = set()
        for answer in answers:
            if answer.kind == "stored" and archive.index.current_version(answer.uid) is None:
                missing.add(answer.uid)
        failed_indexed = {
            a.uid for a in answers if a.kind == "refused" and archive.index.current_version(a.uid) is not None
        }
        report = archive.fsck().run(grace=dt.timedelta(0))
        problems = [asdict(p) for p in report.problems]
        broken = {p["detail"].split(" ", 1)[0] for p in problems if p["kind"] != "unreferenced"}
        incoming = archive.settings.incoming_dir
        spooled = [str(p) for p in incoming.rglob("*") if p.is_file()] if incoming.exists() else []
    finally:
        archive.close()
    for fault in faults:
        count_window(answers, fault)
        end = fault.recovered or (fault.back + RECOVERY_LIMIT)
        window = [a for a in answers if fault.started <= a.done <= end]
        fault.lost = sum(a.kind == "stored" and (a.uid in missing or a.uid in broken) for a in window)
        fault.failed_but_indexed = sum(a.uid in failed_indexed for a in window)
    totals = {
        "stores": len(answers),
        "stored": sum(a.kind == "stored" for a in answers),
        "refused": sum(a.kind == "refused" for a in answers),
        "unanswered": sum(a.kind == "unanswered" for a in answers),
        "wrong": sum(a.kind == "wrong" for a in answers),
        "wrong_statuses": sorted({a.status for a in answers if a.kind == "wrong" and a.status is not None}),
        "successes_lost": len(missing) + len(broken),
        "failures_indexed": len(failed_indexed),
        "fsck_problems": problems[:20],
        "fsck_problem_count": len(problems),
        "spool_left": spooled[:20],
    }
    return {"scenario": name, "faults": [asdict(f) for f in faults], "totals": totals, "log": str(log)}


# -- report ------------------------------------------------------------------------------------------
def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def markdown(options: Options, results: list[dict[str, Any]], started: str) -> str:
    lines = [
        f"Run {started} on {platform.node()} ({os.cpu_count()} CPUs), "
        f"`pacs serve --workers {options.workers}`, "
        f"{options.senders} C-STORE + {options.stowers} STOW-RS clients storing {options.image_side}x"
        f"{options.image_side} 16-bit radiographs without pause; each fault {options.down:g} s "
        f"(restarts: as long as they take), {options.up:g} s between faults.",
        "",
        "| fault | answered | failures (0xA7xx / 503) | successes | successes lost | unanswered | other "
        "| health during | C-STORE back after | STOW-RS back after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for fault in result["faults"]:
            c = fault["counts"]
            back = fault["recovery_seconds"]
            lines.append(
                f"| {fault['name']} | {c['attempted']} | {c['refused']} | {c['stored']} | {fault['lost']} "
                f"| {c['unanswered']} | {c['wrong']} | {fault['health_during'] or '-'} "
                f"| {_seconds(back.get('c-store'))} | {_seconds(back.get('stow'))} |"
            )
    lines += [
        "",
        "| scenario | stores | successes | failures | lost | failed but indexed | unanswered | other "
        "| fsck |",
    ]
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for result in results:
        t = result["totals"]
        fsck = (
            "clean"
            if not t["fsck_problem_count"] and not t["spool_left"]
            else f"{t['fsck_problem_count']} problems"
        )
        lines.append(
            f"| {result['scenario']} | {t['stores']} | {t['stored']} | {t['refused']} "
            f"| {t['successes_lost']} | {t['failures_indexed']} | {t['unanswered']} | {t['wrong']} | {fsck} |"
        )
    recoveries = [
        s for r in results for f in r["faults"] for s in f["recovery_seconds"].values() if s is not None
    ]
    if recoveries:
        lines += [
            "",
            "Time from the dependency's return to the first Success: "
            f"median {statistics.median(recoveries):.2f} s, max {max(recoveries):.2f} s "
            f"over {len(recoveries)} face recoveries.",
        ]
    return "\n".join(lines) + "\n"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def passed(results: list[dict[str, Any]]) -> bool:
    for result in results:
        t = result["totals"]
        if t["successes_lost"] or t["failures_indexed"] or t["unanswered"] or t["wrong"]:
            return False
        if t["fsck_problem_count"] or t["spool_left"]:
            return False
        if any(f["recovered"] is None for f in result["faults"]):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes", type=float, default=Options.minutes, help="whole run, shared by scenarios"
    )
    parser.add_argument("--up", type=float, default=Options.up, help="seconds between faults")
    parser.add_argument("--down", type=float, default=Options.down, help="seconds a dependency stays away")
    parser.add_argument("--senders", type=int, default=Options.senders)
    parser.add_argument("--stowers", type=int, default=Options.stowers)
    parser.add_argument("--image-side", type=int, default=Options.image_side)
    parser.add_argument("--workers", type=int, default=Options.workers)
    parser.add_argument("--disk-size", default=Options.disk_size, help="tmpfs size of the disk scenario")
    parser.add_argument("--only", action="append", choices=["s3", "postgresql", "disk"])
    parser.add_argument("--workdir", type=Path, help="kept after the run (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/reliability.md alone")
    args = parser.parse_args(argv)
    options = Options(
        minutes=args.minutes,
        up=args.up,
        down=args.down,
        senders=args.senders,
        stowers=args.stowers,
        image_side=args.image_side,
        workers=args.workers,
        disk_size=args.disk_size,
        only=tuple(args.only or Options.only),
        workdir=args.workdir,
    )
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    seconds = options.minutes * 60 / len(options.only)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="pacs-faults-"))
    results = []
    for name in options.only:
        progress(f"{name}: {seconds:.0f} s")
        results.append(run_scenario(options, name, seconds, workdir / name))
    text = markdown(options, results, started)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.markdown:
        args.markdown.write_text(text)
    ok = passed(results)
    if not args.no_doc and options.only == Options.only:
        write_section(
            "faults",
            "## Dependency faults (S3 stopped, PostgreSQL restarted, disk full)\n\n"
            f"Re-run: `python bench/faults.py` (as root). {text}\n\nVerdict: {'PASS' if ok else 'FAIL'}.\n",
            doc=DOC,
        )
    print(
        "PASS: no Success lost, every failure 0xA7xx or 503, each dependency's return stored again"
        if ok
        else "FAIL"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
