"""Where one C-STORE's time goes: the phases on the path the sender waits on, instance by instance.

A sender such as storescu sends the next object only once the previous one is answered, so over one
association every phase below lies on one path, one after the other, and shortening any of them
shortens the time per instance. The script starts ``pacs serve`` (embedded pair, one worker) with
probes wrapped around the functions that begin and end each phase, sends the 2 MB (or 18 MB) corpus
of ``bench/ingest.py`` with dcmtk's ``storescu -xe`` (``TCP_NODELAY=1``), and prints, for each phase,
its mean and median over the instances; ``--doc`` also writes the table into ``docs/benchmarks.md``
(a section per size).

A probe appends (clock, name) to a list in the worker, written to a file once per response, after it
is queued; the same run without probes is timed too, to show what they cost.

Run: ``python bench/timeline.py [--size 2MB|18MB] [--count N] [--doc]`` (the venv's python, from the
repository root).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.ingest import DEFAULT_COUNTS, STORESCU, corpus, listening, wait_until, warm  # noqa: E402
from bench.report import write_section  # noqa: E402
from tests.support.net import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "timeline"
SKIP = 10  # first instances left out (connections, caches and the index warming up)

# -- in the server: the probes -----------------------------------------------------------------

_marks: list[tuple[int, str]] = []
_marks_lock = threading.Lock()
_out: dict[int, int] = {}  # pid -> file descriptor (workers are forked after the probes go in)


def _mark(name: str) -> None:
    _marks.append((time.perf_counter_ns(), name))  # list.append is atomic under the GIL


def _flush() -> None:
    pid = os.getpid()
    if pid not in _out:
        _out[pid] = os.open(os.environ["PACS_TIMELINE_OUT"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with _marks_lock:
        taken = _marks[:]
        del _marks[: len(taken)]
    os.write(_out[pid], "".join(f"{t} {name}\n" for t, name in taken).encode())


def _probe(owner: Any, attribute: str, name: str, *, flush: bool = False) -> None:
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def probed(*args: Any, **kwargs: Any) -> Any:
        _mark(f"{name}>")
        try:
            return original(*args, **kwargs)
        finally:
            _mark(f"{name}<")
            if flush:
                _flush()

    setattr(owner, attribute, probed)


def _probed_event(original: Callable[..., Any]) -> Callable[..., Any]:
    """pynetdicom's state machine: which event (Evt10 a P-DATA PDU received, Evt9 one to send)."""

    @functools.wraps(original)
    def do_action(self: Any, event: str) -> Any:
        _mark(f"{event}>")
        try:
            return original(self, event)
        finally:
            _mark(f"{event}<")

    return do_action


def install_probes() -> None:
    from pynetdicom.fsm import StateMachine

    from dicom_nodes import pdata, spool, store_service
    from pacs.index.repository import IndexRepository
    from pacs.services import ingest

    StateMachine.do_action = _probed_event(StateMachine.do_action)  # type: ignore[method-assign]
    _probe(pdata, "_shortcut", "pdu")
    _probe(spool.Spooler, "create", "create")
    _probe(store_service, "_serve_store", "serve")
    _probe(store_service, "_respond", "respond", flush=True)
    _probe(ingest.IngestService, "ingest_incoming", "ingest")
    _probe(ingest.Incoming, "digests", "hash")
    _probe(ingest, "parse_part10", "parse")
    _probe(ingest.Incoming, "commit", "commit")
    _probe(ingest.IngestService, "_new_version", "describe")
    _probe(IndexRepository, "record", "record")


def probed_serve(argv: Sequence[str]) -> None:
    install_probes()
    from pacs.cli import main

    sys.exit(main(list(argv)))


# -- the analysis ------------------------------------------------------------------------------

#: (phase, the mark it ends at); each phase starts where the one before ended, so their means add up
#: to the time per instance. "*" picks the mark's last occurrence in the instance, else its first.
#: An instance runs from one response being made to the next: the start of making it is the one
#: mark no mark of the next instance can precede (the end of queueing it can, when the association
#: thread is held up after the response has already gone out).
PHASES = [
    ("response encoded and sent; the sender's turnaround to the next command", "Evt10>"),
    ("command PDU: pynetdicom decodes the C-STORE-RQ, the object is created", "Evt10<"),
    ("first data set PDU read", "pdu<"),
    ("the other data set PDUs, written and queued for hashing", "pdu<*"),
    ("last PDU: pynetdicom completes the message", "Evt10<*"),
    ("handed to the association thread", "serve>"),
    ("handler called (context, spool claimed)", "ingest>"),
    ("fdatasync started, waiting for the hash to catch up", "hash<"),
    ("parse and checks", "parse<"),
    ("object made durable (commit)", "commit<"),
    ("index values and DICOM JSON", "describe<"),
    ("index transaction", "record<"),
    ("log line, metrics, audit, status", "respond>*"),
]
#: Parts of a phase above, shown indented: (label, start mark, end mark).
PARTS = {
    "command PDU: pynetdicom decodes the C-STORE-RQ, the object is created": (
        "creating the object in the store",
        "create>",
        "create<",
    )
}


def cycles(lines: Sequence[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """The marks from one response to the next: one instance each."""
    ends = [i for i, (_, name) in enumerate(lines) if name == "respond>"]
    return [list(lines[a : b + 1]) for a, b in zip(ends, ends[1:], strict=False)]


def phase_times(cycle: list[tuple[int, str]]) -> dict[str, float] | None:
    """Milliseconds of each phase (and part) in one instance's cycle; None when a mark is missing."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for t, name in cycle[1:]:
        first.setdefault(name, t)
        last[name] = t

    def at(mark: str) -> int | None:
        return (last if mark.endswith("*") else first).get(mark.rstrip("*"))

    times: dict[str, float] = {}
    begin = cycle[0][0]  # the previous response being made
    for label, mark in PHASES:
        end = at(mark)
        if end is None or end < begin:
            return None
        times[label] = (end - begin) / 1e6
        begin = end
    for label, start, stop in PARTS.values():
        a, b = at(start), at(stop)
        if a is None or b is None or b < a:
            return None
        times[label] = (b - a) / 1e6
    times["total"] = (cycle[-1][0] - cycle[0][0]) / 1e6
    return times


def analyse(path: Path) -> tuple[dict[str, float], dict[str, float], int]:
    """Mean and median of each phase over the instances, and how many instances were complete."""
    lines = []
    for row in path.read_text().splitlines():
        t, name = row.split(" ", 1)
        lines.append((int(t), name))
    # Threads append their marks as they go: two marks made at nearly the same time by two threads
    # may be written in either order.
    lines.sort()
    per_instance = [p for p in (phase_times(c) for c in cycles(lines)[SKIP:]) if p is not None]
    if not per_instance:
        raise RuntimeError(f"no complete instance in {path}")
    means = {key: statistics.fmean(p[key] for p in per_instance) for key in per_instance[0]}
    medians = {key: statistics.median(p[key] for p in per_instance) for key in per_instance[0]}
    return means, medians, len(per_instance)


# -- the run -----------------------------------------------------------------------------------


def run(files: Sequence[Path], folder: Path, probed: bool) -> float:
    """Seconds for storescu to send ``files`` to a fresh ``pacs serve``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    dicom_port, http_port = free_port(), free_port()
    args = ["serve", "--data-dir", str(folder / "data"), "--dicom-port", str(dicom_port)]
    args += ["--http-port", str(http_port), "--workers", "1"]
    command = [sys.executable, str(Path(__file__).resolve())]
    command += ["--probed-serve", *args] if probed else ["--plain-serve", *args]
    env = dict(os.environ, PACS_TIMELINE_OUT=str(folder / "marks.txt"))
    with open(folder / "serve.log", "wb") as log:
        server = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: listening(dicom_port) and listening(http_port), 60, "pacs serve", server)
            with open(folder / "storescu.log", "wb") as sender_log:
                started = time.perf_counter()
                code = subprocess.call(
                    [STORESCU, "-xe", "-aec", "NDT_PACS", "127.0.0.1", str(dicom_port), *map(str, files)],
                    stdout=sender_log,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ, TCP_NODELAY="1"),
                )
                seconds = time.perf_counter() - started
            if code != 0:
                raise RuntimeError(f"storescu exited with {code}: see {folder / 'storescu.log'}")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return seconds


def render(
    means: dict[str, float],
    medians: dict[str, float],
    counted: int,
    plain: float,
    probed: float,
    count: int,
    size: str = "2 MB",
) -> str:
    total = means["total"]
    option = "" if size == "2 MB" else f" --size {size.replace(' ', '')}"
    rows = [
        f"## One C-STORE, phase by phase ({size})",
        "",
        f"Re-run: `python bench/timeline.py{option} --doc` (it rewrites this section).",
        f"Last run: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {count} x {size} over one association "
        f"(`storescu -xe`, `TCP_NODELAY=1`), embedded pair, one worker; {counted} instances (the "
        f"first {SKIP} left out).",
        "",
        "The sender waits for each response before it sends the next object, so these phases follow "
        "one another on the path it waits on, each starting where the one before ended: their means "
        "add up to the time per instance. An indented row is part of the row above. Probes around "
        "the functions that begin and end the phases mark the times (`bench/timeline.py`); without "
        f"them the same run took {1000 * plain / count:.2f} ms per instance, with them "
        f"{1000 * probed / count:.2f} ms.",
        "",
        "| phase | mean ms | median ms | share |",
        "|---|---:|---:|---:|",
    ]
    for label, _ in PHASES:
        rows.append(
            f"| {label} | {means[label]:.3f} | {medians[label]:.3f} | {100 * means[label] / total:.0f}% |"
        )
        if label in PARTS:
            part = PARTS[label][0]
            rows.append(f"| &nbsp;&nbsp;{part} | {means[part]:.3f} | {medians[part]:.3f} | |")
    rows.append(f"| **per instance** | **{total:.3f}** | **{medians['total']:.3f}** | |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--probed-serve":
        probed_serve(argv[1:])
    if argv and argv[0] == "--plain-serve":
        from pacs.cli import main as pacs_main

        return int(pacs_main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", choices=["2MB", "18MB"], default="2MB", help="image size (2MB)")
    parser.add_argument("--count", type=int, help="instances (320 of 2 MB, 40 of 18 MB)")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    size = {"2MB": "2 MB", "18MB": "18 MB"}[args.size]
    files = corpus(size, args.count or DEFAULT_COUNTS[size])
    warm(files)
    print(f"sending {len(files)} x {size} to pacs serve without probes, then with ...", flush=True)
    plain = run(files, RESULTS / "plain", probed=False)
    probed = run(files, RESULTS / "probed", probed=True)
    means, medians, counted = analyse(RESULTS / "probed" / "marks.txt")
    section = render(means, medians, counted, plain, probed, len(files), size)
    print(section)
    if args.doc:
        write_section("timeline" if size == "2 MB" else "timeline-18mb", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
