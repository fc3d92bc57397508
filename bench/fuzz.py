"""Hostile input, the long run: the ingest parser fuzzed, then the network-level hostile cases
repeated against a ``pacs serve`` process for minutes.

Two parts (the CI versions are ``tests/unit/dicom/test_parse_fuzz.py`` and
``tests/integration/test_hostile_input.py``; the inputs come from ``tests/support/hostile.py``):

* ``parser``: ``--examples`` inputs made by random mutations (bytes set, length fields that lie,
  bytes inserted and deleted, cuts) of valid Part 10 files in every stored encoding, of their data
  sets alone, of raw data sets deflated after the mutation (so the mutations reach the inflated
  stream), and random bytes after a valid file meta. Each goes through ``parse_part10`` (and, when
  accepted, the index's DICOM JSON) and STOW-RS's ``read_header``: it must parse or raise
  ``InvalidObject``; any other exception, or more than ``--deadline`` seconds, is a crash, and the
  input is saved for reproduction.
* ``network``: rounds against ``pacs serve --workers 1`` (SQLite + files) for ``--minutes``. Each
  round sends every malformed PDU, a PDU header claiming 4 GiB, a C-STORE cut by a reset, a FIN or
  an A-ABORT, every malformed data set over C-STORE and STOW-RS, every broken STOW-RS body, a STOW-RS
  body cut by a reset, and random samples of hostile QIDO-RS values, C-FIND identifiers and URL
  segments; every ``--bomb-every`` rounds deflate bombs (16 MiB inflating to 16 GiB, over C-STORE
  and STOW-RS) and a stalled PDU and STOW-RS body (each waits the network timeout). Then it proves
  the server still serves: C-ECHO, a valid C-STORE and a QIDO-RS search that finds every valid
  instance stored so far. A crash is an answer the archive must never give: a 5xx or an
  internal-failure status, a connection left hanging past the timeouts, a match a value should not
  have, a worker replaced, a valid request failing. The worker's resident memory is sampled all
  along. At the end the server is stopped and the archive checked offline: exactly the valid
  instances indexed, one object each, ``pacs fsck`` clean.

    python bench/fuzz.py                        # 200,000 parser inputs and 10 minutes of rounds
    python bench/fuzz.py --examples 20000 --minutes 2
    python bench/fuzz.py --only parser --examples 1000000 --jobs 2
    python bench/fuzz.py --no-doc --markdown out.md --json out.json

Rewrites its section of docs/reliability.md unless ``--no-doc`` (or ``--only``) is given. Traffic
stays on loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing
import os
import platform
import random
import resource
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/fuzz.py` from anywhere
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from bench.report import write_section  # noqa: E402
from tests.support.factories import diconde_dx, part10_bytes  # noqa: E402
from tests.support.hostile import (  # noqa: E402
    ABORT,
    HOSTILE_SEGMENTS,
    HOSTILE_STRINGS,
    VERIFICATION,
    RawPeer,
    body_of,
    broken_stow_bodies,
    c_store_rq,
    dataset_of,
    deflate,
    deflate_bomb,
    encode,
    fuzz_datasets,
    fuzz_image,
    fuzz_seeds,
    identifier,
    malformed_datasets,
    malformed_pdus,
    mutate,
    p_data,
    part10,
    pdu,
    random_mutations,
)
from tests.support.serve import PacsServer, proc_status_kib, run_pacs  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
DX = DigitalXRayImageStorageForPresentation
FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
BOUNDARY = "fuzz-boundary-5d1c"
RELATED = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
SUCCESS, PENDING = 0x0000, 0xFF00
INTERNAL = {0x0110, 0xA700, 0xA701, 0xA702}  # "the archive failed": never the answer to bad input
UNIVERSAL = {"*", "\\"}
TIMEOUT = 5.0  # the served archive's network and ACSE timeouts, seconds
LATE = 20.0  # what a loaded machine may add to a timeout before a wait counts as a hang
GOOD_PART = "FUZZ-GOOD"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# == the parser ===================================================================================
@dataclass
class ParserResult:
    examples: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    signatures: dict[str, int] = field(default_factory=dict)  # crash type and place -> count
    saved: list[str] = field(default_factory=list)  # crashing inputs, for reproduction
    slowest_ms: float = 0.0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def merge(self, other: ParserResult) -> None:
        self.examples += other.examples
        self.accepted += other.accepted
        self.refused += other.refused
        self.crashes += other.crashes
        for mine, theirs in ((self.by_kind, other.by_kind), (self.signatures, other.signatures)):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count
        self.saved += other.saved
        self.slowest_ms = max(self.slowest_ms, other.slowest_ms)
        self.peak_rss_mb = max(self.peak_rss_mb, other.peak_rss_mb)


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Hang


def _signature(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if str(ROOT) in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}: {str(exc)[:100]}"


def _input(rng: random.Random) -> tuple[str, bytes]:
    seeds = fuzz_seeds()
    draw = rng.random()
    if draw < 0.35:
        return "mutated file", mutate(rng.choice(seeds), random_mutations(rng))
    if draw < 0.65:
        seed = rng.choice(seeds)
        meta_end = len(seed) - len(dataset_of(seed))
        return "mutated data set", mutate(seed, random_mutations(rng, 4), keep=meta_end)
    if draw < 0.95:
        ds, dataset, syntax = rng.choice(fuzz_datasets())
        mutated = mutate(dataset, random_mutations(rng, 4))
        if syntax == DeflatedExplicitVRLittleEndian:
            return "mutated, then deflated", part10(deflate(mutated), ds, syntax)
        return "mutated raw data set", part10(mutated, ds, syntax)
    syntax = rng.choice([ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return "random bytes", part10(rng.randbytes(rng.randint(0, 4096)), fuzz_image(), syntax)


def fuzz_parser(examples: int, seed: int, deadline: float, crash_dir: Path) -> ParserResult:
    """``examples`` inputs drawn from ``seed``, each through the parser as ingest runs it."""
    import io

    from pacs.dicom.json import to_dicom_json
    from pacs.dicom.parse import parse_part10, read_header
    from pacs.errors import InvalidObject

    warnings.simplefilter("ignore")  # pydicom warns about every odd value it reads
    import logging

    logging.disable(logging.CRITICAL)
    rng = random.Random(seed)
    result = ParserResult()
    kinds: Counter[str] = Counter()
    signatures: Counter[str] = Counter()
    signal.signal(signal.SIGALRM, _alarm)
    started = time.monotonic()
    for number in range(examples):
        kind, data = _input(rng)
        kinds[kind] += 1
        began = time.perf_counter()
        signal.alarm(max(1, int(deadline)))
        try:
            try:
                parsed = parse_part10(io.BytesIO(data), name="fuzzed")
                to_dicom_json(parsed.dataset, parsed.pixel_data)
                result.accepted += 1
            except InvalidObject:
                result.refused += 1
            try:
                read_header(io.BytesIO(data), name="fuzzed", last_tag=0x0020000E)
            except InvalidObject:
                pass
            signal.alarm(0)
            elapsed = time.perf_counter() - began
            if elapsed > deadline:
                raise _Hang
        except Exception as exc:  # everything but InvalidObject is a crash; a hang too
            signal.alarm(0)
            result.crashes += 1
            label = "hang" if isinstance(exc, _Hang) else _signature(exc)
            signatures[label] += 1
            if signatures[label] <= 3:
                crash_dir.mkdir(parents=True, exist_ok=True)
                path = crash_dir / f"seed{seed}-{number}.dcm"
                path.write_bytes(data)
                result.saved.append(str(path))
        result.slowest_ms = max(result.slowest_ms, (time.perf_counter() - began) * 1000)
        result.examples += 1
    result.seconds = time.monotonic() - started
    result.by_kind, result.signatures = dict(kinds), dict(signatures)
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _parser_job(args: tuple[int, int, float, str]) -> ParserResult:
    examples, seed, deadline, crash_dir = args
    return fuzz_parser(examples, seed, deadline, Path(crash_dir))


def run_parser(examples: int, jobs: int, seed: int, deadline: float, crash_dir: Path) -> ParserResult:
    shares = [examples // jobs + (1 if i < examples % jobs else 0) for i in range(jobs)]
    tasks = [(share, seed + i, deadline, str(crash_dir)) for i, share in enumerate(shares)]
    started = time.monotonic()
    if jobs == 1:
        parts = [_parser_job(tasks[0])]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.map(_parser_job, tasks)
    total = ParserResult()
    for part in parts:
        total.merge(part)
    total.seconds = time.monotonic() - started
    return total


# == the network ==================================================================================
class Crash(Exception):
    """An answer the archive must never give to bad input."""


@dataclass
class NetworkResult:
    rounds: int = 0
    seconds: float = 0.0
    tried: dict[str, int] = field(default_factory=dict)  # case -> bad inputs sent
    crashes: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # the first crashes, described
    good_stored: int = 0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_peak_mb: float = 0.0  # sampled VmRSS
    hwm_mb: float = 0.0  # the kernel's peak (VmHWM) at the end
    worker_replaced: bool = False
    offline: dict[str, Any] = field(default_factory=dict)


class Session:
    """A running server and what a round needs to talk to it."""

    def __init__(self, server: PacsServer, token: str, rng: random.Random) -> None:
        self.server = server
        self.rng = rng
        self.http = httpx.Client(
            base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        )
        self.headers = {"Authorization": f"Bearer {token}"}
        self.good: list[Dataset] = []
        self.routes = self._routes()

    def _routes(self) -> list[str]:
        document = self.http.get("/openapi.json").json()
        return sorted(p for p, ops in document["paths"].items() if "get" in ops and "{" in p)

    def peer(self, timeout: float = TIMEOUT + LATE) -> RawPeer:
        return RawPeer(self.server.host, self.server.dicom_port, timeout=timeout)

    def close(self) -> None:
        self.http.close()


def store_contexts() -> list[tuple[int, str, list[str]]]:
    return [
        (1, DX, [ExplicitVRLittleEndian]),
        (3, DX, [ImplicitVRLittleEndian]),
        (5, DX, [DeflatedExplicitVRLittleEndian]),
        (7, VERIFICATION, [ImplicitVRLittleEndian]),
    ]


SYNTAX_CONTEXT: dict[str, int] = {
    ExplicitVRLittleEndian: 1,
    ImplicitVRLittleEndian: 3,
    DeflatedExplicitVRLittleEndian: 5,
}


def _fresh(part: str) -> Dataset:
    return diconde_dx(rows=16, columns=16, part_id=part, seed=random.randrange(1 << 30))


# -- the cases: each returns how many bad inputs it sent, raises Crash on a wrong answer ----------
def case_pdus(s: Session) -> int:
    for name, data in malformed_pdus(s.server.ae_title).items():
        with s.peer() as peer:
            peer.send(data)
            started = time.monotonic()
            try:
                while True:
                    kind, _ = peer.receive()
                    if kind in (0x03, 0x07):
                        break
            except TimeoutError:
                raise Crash(
                    f"{name}: no answer and the connection kept open for {LATE + TIMEOUT:.0f} s"
                ) from None
            except (ConnectionError, OSError):
                pass
            if time.monotonic() - started > TIMEOUT + LATE:
                raise Crash(f"{name}: answered after {time.monotonic() - started:.0f} s")
    return len(malformed_pdus(""))


def case_huge_pdu(s: Session) -> int:
    with s.peer() as peer:
        peer.send(pdu(0x04, b"", length=0xFFFFFFF0) + bytes(1 << 20))
        peer.reset()
    return 1


def case_dropped_store(s: Session) -> int:
    ds = _fresh("FUZZ-DROPPED")
    data = encode(ds)
    with s.peer() as peer:
        peer.associate(s.server.ae_title, store_contexts())
        peer.send(p_data(1, c_store_rq(DX, ds.SOPInstanceUID), command=True, last=True))
        peer.send_dataset(1, data[: s.rng.randint(1, len(data) - 1)], last=False)
        ending = s.rng.choice(("reset", "close", "abort"))
        if ending == "reset":
            peer.reset()
        elif ending == "abort":
            peer.send(ABORT)
    return 1


def case_malformed_datasets(s: Session) -> int:
    ds = _fresh("FUZZ-MALFORMED")
    cases = malformed_datasets(ds)
    with s.peer() as peer:
        peer.associate(s.server.ae_title, store_contexts())
        for name, (data, syntax) in cases.items():
            status = int(peer.store(SYNTAX_CONTEXT[syntax], DX, ds.SOPInstanceUID, data).Status)
            if status not in (0xC000, 0xA900):
                raise Crash(f"C-STORE of {name}: status 0x{status:04X}")
        peer.release()
    response = s.http.post(
        "/dicom-web/studies",
        content=body_of([part10(data, ds, syntax) for data, syntax in cases.values()], boundary=BOUNDARY),
        headers={"Content-Type": RELATED},
    )
    if response.status_code != 409:
        raise Crash(f"STOW-RS of the malformed data sets: {response.status_code} {response.text[:200]}")
    return 2 * len(cases)


def case_stow_framing(s: Session) -> int:
    cases = broken_stow_bodies(part10_bytes(_fresh("FUZZ-FRAMING")), BOUNDARY)
    for name, (content, content_type) in cases.items():
        response = s.http.post("/dicom-web/studies", content=content, headers={"Content-Type": content_type})
        if not 400 <= response.status_code < 500:
            raise Crash(f"STOW-RS {name}: {response.status_code} {response.text[:200]}")
    return len(cases)


def _raw_post(s: Session, declared: int, begun: bytes, timeout: float) -> socket.socket:
    auth = "".join(f"{k}: {v}\r\n" for k, v in s.headers.items())
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: archive\r\nContent-Type: {RELATED}\r\n"
        f"Content-Length: {declared}\r\n{auth}\r\n"
    ).encode()
    sock = socket.create_connection((s.server.host, s.server.http_port), timeout=timeout)
    sock.sendall(head + begun)
    return sock


def case_stow_reset(s: Session) -> int:
    begun = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    begun += part10_bytes(_fresh("FUZZ-RESET"))[: s.rng.randint(10, 3000)]
    sock = _raw_post(s, s.rng.choice([10**12, 2**63 - 1, 1 << 20]), begun, 30)
    time.sleep(0.05)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return 1


def case_stalls(s: Session) -> int:
    """A PDU and a STOW-RS body that stop coming: each must be dropped at the network timeout."""
    with s.peer() as peer:
        peer.send(pdu(0x01, b"\x00\x01\x00\x00" + b"A" * 16, length=1000))
        if not peer.closed_by_peer():
            raise Crash("a PDU cut short, then silence: the connection was kept open")
    begun = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + b"\0" * 500
    sock = _raw_post(s, 10**12, begun, TIMEOUT + LATE)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except TimeoutError:
        raise Crash("a STOW-RS body that stopped coming: the request was kept open") from None
    finally:
        sock.close()
    if not answer.startswith(b"HTTP/1.1 408"):
        raise Crash(f"a STOW-RS body that stopped coming: {answer[:80]!r}")
    return 2


def case_bombs(s: Session) -> int:
    ds = _fresh("FUZZ-BOMB")
    bombs = [deflate_bomb(ds, 16 << 30), deflate_bomb(ds, 16 << 30, where="header")]
    for bomb in bombs:
        with s.peer(timeout=600) as peer:
            peer.associate(s.server.ae_title, store_contexts())
            status = int(peer.store(5, DX, ds.SOPInstanceUID, dataset_of(bomb)).Status)
            if status != 0xC000:
                raise Crash(f"C-STORE of a deflate bomb: status 0x{status:04X}")
    response = s.http.post(
        "/dicom-web/studies", content=body_of(bombs, boundary=BOUNDARY), headers={"Content-Type": RELATED}
    )
    if response.status_code != 409:
        raise Crash(f"STOW-RS of deflate bombs: {response.status_code} {response.text[:200]}")
    return 4


QIDO_KEYS = (
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "StudyDate",
    "ModalitiesInStudy",
    "Rows",
    "SOPClassesInStudy",
    "InstitutionName",
    "AccessionNumber",
    "SeriesNumber",
    "Modality",
)


def case_qido(s: Session, count: int = 60) -> int:
    from pacs.query.attributes import query_attributes

    keys = [a.keyword for a in query_attributes().values() if a.keyword and a.vr != "SQ"]
    for _ in range(count):
        key = s.rng.choice(keys if s.rng.random() < 0.5 else QIDO_KEYS)
        value = s.rng.choice(HOSTILE_STRINGS)
        response = s.http.get("/dicom-web/instances", params={key: value, "includefield": "PatientID"})
        if response.status_code == 200:
            found = [m for m in response.json() if m.get("00100020", {}).get("Value")]
            if found and value not in UNIVERSAL:
                raise Crash(f"QIDO-RS {key}={value[:40]!r} matched {len(found)} instance(s)")
        elif response.status_code != 400:
            raise Crash(f"QIDO-RS {key}={value[:40]!r}: {response.status_code} {response.text[:200]}")
    return count


FIND_KEYS = [
    (0x00100020, "LO"),
    (0x00100010, "PN"),
    (0x0020000D, "UI"),
    (0x00080050, "SH"),
    (0x00080020, "DA"),
    (0x00080030, "TM"),
    (0x00080061, "CS"),
    (0x00081030, "LO"),
]


def case_find(s: Session, count: int = 40) -> int:
    with s.peer() as peer:
        peer.associate(s.server.ae_title, [(1, FIND, [ExplicitVRLittleEndian])])
        for _ in range(count):
            tag, vr = s.rng.choice(FIND_KEYS)
            value = s.rng.choice(HOSTILE_STRINGS)
            elements = {0x00080052: ("CS", "STUDY"), 0x00100020: ("LO", ""), tag: (vr, value)}
            statuses = peer.find(1, FIND, identifier(elements))
            if statuses[-1] in INTERNAL or statuses[-1] not in (SUCCESS, 0xC000, 0xA900):
                raise Crash(f"C-FIND ({tag:08X})={value[:40]!r}: statuses {statuses}")
            if len(statuses) > 1 and value not in UNIVERSAL | {"\x00"}:
                raise Crash(f"C-FIND ({tag:08X})={value[:40]!r}: {len(statuses) - 1} match(es)")
        peer.release()
    return count


def case_urls(s: Session, count: int = 60) -> int:
    real = {"frame_list": "1", "path": "7FE00010"}
    if s.good:
        d = s.good[0]
        real |= {
            "study": d.StudyInstanceUID,
            "series": d.SeriesInstanceUID,
            "instance": d.SOPInstanceUID,
            "part_id": d.PatientID,
        }
    secrets = {d.SOPInstanceUID.encode() for d in s.good}
    conn = http.client.HTTPConnection(s.server.host, s.server.http_port, timeout=120)
    try:
        for _ in range(count):
            route = s.rng.choice(s.routes)
            names = [seg[1:-1].split(":")[0] for seg in route.split("/") if seg.startswith("{")]
            hostile = set(s.rng.sample(names, s.rng.randint(1, len(names))))
            path = route
            for name in names:
                value = (
                    s.rng.choice(HOSTILE_SEGMENTS)
                    if name in hostile
                    else urllib.parse.quote(real.get(name, "x"), safe="")
                )
                path = path.replace("{" + name + "}", value).replace("{" + name + ":path}", value)
            conn.request("GET", path, headers=s.headers)
            response = conn.getresponse()
            body = response.read()
            if response.status >= 500:
                raise Crash(f"GET {path[:120]}: {response.status} {body[:200]!r}")
            if response.status < 300 and any(secret in body for secret in secrets):
                raise Crash(f"GET {path[:120]}: {response.status} with a stored instance's data")
            if response.getheader("connection") == "close":
                conn.close()
                conn = http.client.HTTPConnection(s.server.host, s.server.http_port, timeout=120)
    finally:
        conn.close()
    return count


def still_serves(s: Session) -> None:
    """C-ECHO, a valid C-STORE, and a QIDO-RS search that finds every valid instance so far."""
    ds = _fresh(GOOD_PART)
    with s.peer() as peer:
        peer.associate(s.server.ae_title, store_contexts())
        if peer.echo(7).Status != SUCCESS:
            raise Crash("C-ECHO failed after hostile input")
        status = int(peer.store(1, DX, ds.SOPInstanceUID, encode(ds)).Status)
        if status != SUCCESS:
            raise Crash(f"a valid C-STORE failed after hostile input: 0x{status:04X}")
        peer.release()
    s.good.append(ds)
    response = s.http.get("/dicom-web/instances", params={"PatientID": GOOD_PART, "limit": "1000"})
    if response.status_code != 200 or len(response.json()) != min(len(s.good), 1000):
        raise Crash(
            f"QIDO-RS after hostile input: {response.status_code}, {len(response.json())} of {len(s.good)}"
        )


CASES: dict[str, Callable[[Session], int]] = {
    "malformed PDUs": case_pdus,
    "PDU header claiming 4 GiB": case_huge_pdu,
    "C-STORE cut by reset, FIN or A-ABORT": case_dropped_store,
    "malformed data sets (C-STORE, STOW-RS)": case_malformed_datasets,
    "broken STOW-RS bodies": case_stow_framing,
    "STOW-RS body cut by a reset": case_stow_reset,
    "hostile QIDO-RS values": case_qido,
    "hostile C-FIND identifiers": case_find,
    "hostile URL segments": case_urls,
}
EVERY_FEW = {
    "deflate bombs (C-STORE, STOW-RS)": case_bombs,
    "stalled PDU and STOW-RS body": case_stalls,
}


@contextmanager
def sampling(pid: int, into: list[float]) -> Iterator[None]:
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                into.append(proc_status_kib(pid, "VmRSS") / 1024)
            except (FileNotFoundError, KeyError, ProcessLookupError):
                return
            done.wait(0.25)

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(2)


def _token(server: PacsServer) -> str:
    lines = server.stdout_lines
    notice = next(i for i, line in enumerate(lines) if line.startswith("no users yet"))
    return lines[notice + 1].strip()


def run_network(minutes: float, bomb_every: int, seed: int, workdir: Path) -> NetworkResult:
    result = NetworkResult()
    tried: Counter[str] = Counter()
    crashes: Counter[str] = Counter()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "archive"
    env = {
        "PACS_NETWORK_TIMEOUT": str(TIMEOUT),
        "PACS_ACSE_TIMEOUT": str(TIMEOUT),
        "PACS_SHUTDOWN_GRACE": "5",
    }
    samples: list[float] = []
    started = time.monotonic()
    with PacsServer(["--data-dir", data], workers=1, env=env, log_path=workdir / "serve.log") as server:
        (worker,) = server.worker_pids()
        result.rss_start_mb = proc_status_kib(worker, "VmRSS") / 1024
        session = Session(server, _token(server), random.Random(seed))
        deadline = started + minutes * 60
        with sampling(worker, samples):
            while time.monotonic() < deadline:
                result.rounds += 1
                cases = dict(CASES)
                if bomb_every and result.rounds % bomb_every == 0:
                    cases |= EVERY_FEW
                for name, case in cases.items():
                    try:
                        tried[name] += case(session)
                    except Crash as exc:
                        crashes[name] += 1
                        tried[name] += 1
                        if len(result.examples) < 20:
                            result.examples.append(f"round {result.rounds}, {name}: {exc}")
                        progress(f"CRASH in round {result.rounds}, {name}: {exc}")
                    except Exception as exc:  # the server stopped answering as it must
                        crashes[name] += 1
                        tried[name] += 1
                        if len(result.examples) < 20:
                            result.examples.append(
                                f"round {result.rounds}, {name}: {type(exc).__name__}: {exc}"
                            )
                        progress(f"CRASH in round {result.rounds}, {name}: {type(exc).__name__}: {exc}")
                try:
                    still_serves(session)
                except Exception as exc:
                    crashes["serving afterwards"] += 1
                    result.examples.append(f"round {result.rounds}, serving afterwards: {exc}")
                    progress(f"CRASH in round {result.rounds}: the server no longer serves: {exc}")
                if server.worker_pids() != [worker]:
                    result.worker_replaced = True
                    crashes["worker replaced"] += 1
                    progress("CRASH: the worker process was replaced")
                    break
                progress(
                    f"round {result.rounds}: {sum(tried.values())} bad inputs, "
                    f"{sum(crashes.values())} crashes, worker RSS {samples[-1] if samples else 0:.0f} MB, "
                    f"{proc_status_kib(worker, 'Threads')} threads"
                )
        result.rss_end_mb = proc_status_kib(worker, "VmRSS") / 1024
        result.hwm_mb = proc_status_kib(worker, "VmHWM") / 1024
        result.good_stored = len(session.good)
        session.close()
    result.seconds = time.monotonic() - started
    result.rss_peak_mb = max(samples, default=result.rss_end_mb)
    result.tried, result.crashes = dict(tried), dict(crashes)
    result.offline = check_offline(data, result.good_stored)
    return result


def check_offline(data: Path, good: int) -> dict[str, Any]:
    """The stopped archive: exactly the valid instances indexed, one object each, fsck clean."""
    from pacs.archive import open_archive
    from pacs.config import load_settings

    archive = open_archive(load_settings({"data_dir": data}))
    try:
        counts = archive.index.counts()
        objects = sum(1 for _ in archive.store.iter_objects())
    finally:
        archive.close()
    fsck = run_pacs("fsck", "--data-dir", data, timeout=1800)
    return {
        "instances": counts["instances"],
        "versions": counts["versions"],
        "objects": objects,
        "expected": good,
        "fsck_exit": fsck.returncode,
        "fsck": (fsck.stdout.strip().splitlines() or [""])[-1],
        "ok": counts["instances"] == counts["versions"] == objects == good and fsck.returncode == 0,
    }


# == report =======================================================================================
def markdown(
    parser: ParserResult | None, network: NetworkResult | None, args: argparse.Namespace, started: str
) -> str:
    lines = [
        f"Run {started} on {platform.node()} ({os.cpu_count()} CPUs), `python bench/fuzz.py "
        f"--examples {args.examples} --minutes {args.minutes:g} --seed {args.seed}`.",
        "",
    ]
    if parser is not None:
        lines += [
            f"**Parser** (`parse_part10`, the index's DICOM JSON of what it accepts, STOW-RS's "
            f"`read_header`): {parser.examples:,} inputs in {parser.seconds:.0f} s "
            f"({parser.examples / max(parser.seconds, 1e-9):,.0f}/s), {parser.accepted:,} accepted, "
            f"{parser.refused:,} refused with InvalidObject, **{parser.crashes} crashes** (any other "
            f"exception, or more than {args.deadline:g} s); slowest input {parser.slowest_ms:.0f} ms, "
            f"peak RSS of a fuzzing process {parser.peak_rss_mb:.0f} MB.",
            "",
            "| input | tried |",
            "|---|---:|",
            *(f"| {kind} | {count:,} |" for kind, count in sorted(parser.by_kind.items())),
            "",
        ]
        if parser.signatures:
            lines += ["Crashes:", "", *(f"- {sig}: {n}" for sig, n in parser.signatures.items()), ""]
    if network is not None:
        total = sum(network.tried.values())
        crashes = sum(network.crashes.values())
        lines += [
            f"**Network** (`pacs serve --workers 1`, SQLite + files, network and ACSE timeouts "
            f"{TIMEOUT:g} s): {network.rounds} rounds in {network.seconds / 60:.1f} min, {total:,} bad "
            f"inputs, **{crashes} crashes**; after each round C-ECHO, a valid C-STORE and a QIDO-RS "
            f"search for every valid instance so far ({network.good_stored} in all) succeeded "
            f"{'every time' if not network.crashes.get('serving afterwards') else 'NOT every time'}. "
            f"Worker RSS {network.rss_start_mb:.0f} MB at the start, {network.rss_end_mb:.0f} MB at the end, "
            f"{network.rss_peak_mb:.0f} MB at most (sampled every 0.25 s; VmHWM {network.hwm_mb:.0f} MB; "
            f"the run fails from {MAX_GROWTH_MB} MB above the start); "
            f"worker {'replaced' if network.worker_replaced else 'never replaced'}.",
            "",
            "| case | bad inputs | crashes |",
            "|---|---:|---:|",
            *(
                f"| {name} | {network.tried.get(name, 0):,} | {network.crashes.get(name, 0)} |"
                for name in [*CASES, *EVERY_FEW]
            ),
            "",
            f"Afterwards, offline: {network.offline.get('instances')} instances and "
            f"{network.offline.get('objects')} objects for {network.offline.get('expected')} valid stores; "
            f"`pacs fsck` exit {network.offline.get('fsck_exit')} ({network.offline.get('fsck')}).",
            "",
        ]
        if network.examples:
            lines += ["Crashes:", "", *(f"- {e}" for e in network.examples), ""]
    return "\n".join(lines)


#: Growth of the worker's peak resident memory over its size at the start that fails the run.
MAX_GROWTH_MB = 300


def passed(parser: ParserResult | None, network: NetworkResult | None) -> bool:
    ok = parser is None or parser.crashes == 0
    if network is not None:
        ok = ok and not network.crashes and not network.worker_replaced and bool(network.offline.get("ok"))
        ok = ok and max(network.rss_peak_mb, network.hwm_mb) - network.rss_start_mb < MAX_GROWTH_MB
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=200_000, help="parser inputs (default 200,000)")
    parser.add_argument("--jobs", type=int, default=1, help="parser processes")
    parser.add_argument(
        "--deadline", type=float, default=5.0, help="seconds an input may take before it counts as a hang"
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="network rounds for this long")
    parser.add_argument("--bomb-every", type=int, default=5, help="deflate bombs and stalls every N rounds")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--only", choices=["parser", "network"])
    parser.add_argument("--workdir", type=Path, help="kept after the run (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the section here")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/reliability.md alone")
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pacs-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    progress(f"seed {args.seed}, work folder {workdir}")

    parser_result = network_result = None
    if args.only in (None, "parser"):
        progress(f"parser: {args.examples:,} inputs, {args.jobs} process(es)")
        parser_result = run_parser(args.examples, args.jobs, args.seed, args.deadline, workdir / "crashes")
        progress(f"parser: {parser_result.crashes} crashes in {parser_result.seconds:.0f} s")
    if args.only in (None, "network"):
        progress(f"network: {args.minutes:g} min of rounds against pacs serve")
        network_result = run_network(args.minutes, args.bomb_every, args.seed, workdir / "network")

    text = markdown(parser_result, network_result, args, started)
    ok = passed(parser_result, network_result)
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "parser": asdict(parser_result) if parser_result else None,
                    "network": asdict(network_result) if network_result else None,
                },
                indent=2,
            )
        )
    if args.markdown:
        args.markdown.write_text(text)
    if not args.no_doc and args.only is None:
        write_section(
            "hostile",
            "## Hostile input (malformed PDUs, bad data sets and bodies, injection strings, parser fuzz)\n\n"
            f"Re-run: `python bench/fuzz.py`. {text}\n\nVerdict: {'PASS' if ok else 'FAIL'}.\n",
            doc=DOC,
        )
    print("PASS: no crash, the server kept serving, the archive clean" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
