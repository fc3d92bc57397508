"""Web benchmark (DICOMweb): QIDO-RS, WADO-RS, frames, rendered images and metadata, side by side with
Orthanc's DICOMweb plugin.

Both servers hold the same files: a modest QIDO corpus (one small DX inspection per part), an 18 MB
single-frame 16-bit radiograph (3000x3000, uncompressed) and a 500 MB object of 1000 frames of 512x512
16 bits. Every request is timed by curl (`-w %{time_total}`, new loopback connection each time), the
servers alternating request by request, in rounds whose server order rotates, so that a slow spell of
the shared machine hits both alike. Every kind of answer is checked once in full (bytes, image
sizes, decodable images, the right UIDs) and every timed answer by its status, media type and size.
See docs/benchmarks.md and bench/README.md.

    python bench/web.py            # the run whose figures go into docs/benchmarks.md
    python bench/web.py --quick    # a smoke run of a couple of minutes
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/web.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    READY_TIMEOUT,
    LineReader,
    Processes,
    disk_of,
    listening,
    machine,
    orthanc_binary,
    pacs_command,
    wait_until,
)
from bench.report import write_section  # noqa: E402
from tests.support.net import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
CURL = "/usr/bin/curl"
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
)
BENCH_USER = "bench"

DX_SIDE = 3000  # 18 MB of 16-bit pixels
MF_ROWS = MF_COLUMNS = 512
DEFAULT_FRAMES, QUICK_FRAMES = 1000, 200  # 500 MB; 100 MB for the smoke run
DEFAULT_STUDIES, QUICK_STUDIES = 1000, 50  # the QIDO corpus: one small DX inspection per part
DEFAULT_REPEAT, QUICK_REPEAT = 9, 2
QIDO_SIDE = 64

DICOM_PART = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTET_PART = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DICOM_JSON = "application/dicom+json"


# -- processes ------------------------------------------------------------------------------------
class RecordedProcesses(Processes):
    """Processes whose ids are also written to a file, so that a later run can stop what a killed
    run (SIGKILL, a lost terminal) left behind."""

    def __init__(self, record: Path) -> None:
        super().__init__()
        self.record = record

    def start(self, *args: Any, **kw: Any) -> subprocess.Popen[Any]:
        process = super().start(*args, **kw)
        with open(self.record, "a") as f:
            f.write(f"{process.pid}\n")
        return process


PIDS_FILE = "pids"


def sweep_leftovers(workdir: Path) -> None:
    """Stop the servers an earlier run recorded in ``workdir`` and could not stop itself (those
    still running with ``workdir`` on their command line)."""
    record = workdir / PIDS_FILE
    for line in record.read_text().split() if record.exists() else []:
        pid = int(line)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(workdir) in command:
            print(f"stopping process group {pid} left by an earlier run: {command[:100]}", flush=True)
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# -- corpus ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instance:
    path: Path
    part_id: str
    study: str
    series: str
    sop: str

    def url(self, base: str) -> str:
        return f"{base}/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@dataclass
class Corpus:
    dx: Instance
    multiframe: Instance
    frames: int
    qido: list[Instance]

    @property
    def files(self) -> list[Path]:
        return [self.dx.path, self.multiframe.path, *(i.path for i in self.qido)]


def corpus(frames: int, studies: int) -> Corpus:
    """Generated once with tests/support/factories.py and cached in bench/results/corpus/."""
    folder = RESULTS / "corpus" / f"web-f{frames}-s{studies}"
    manifest = folder / "manifest.json"
    if not manifest.exists():
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "qido").mkdir(parents=True)
        started = time.monotonic()
        print(f"generating the corpus into {folder} ...", flush=True)
        manifest.write_text(json.dumps(_generate(folder, frames, studies), indent=1))
        print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
    data = json.loads(manifest.read_text())

    def instance(entry: dict[str, str]) -> Instance:
        return Instance(folder / entry["file"], entry["part"], entry["study"], entry["series"], entry["sop"])

    found = Corpus(instance(data["dx"]), instance(data["multiframe"]), data["frames"], [])
    found.qido = [instance(e) for e in data["qido"]]
    missing = [p for p in found.files if not p.exists()]
    if missing:
        raise RuntimeError(f"corpus {folder} lacks {missing[0]} (and {len(missing) - 1} more): delete it")
    return found


def _generate(folder: Path, frames: int, studies: int) -> dict[str, Any]:
    from pydicom import dcmread

    from tests.support import factories

    def entry(path: Path) -> dict[str, str]:
        ds = dcmread(path, stop_before_pixels=True)
        return {
            "file": str(path.relative_to(folder)),
            "part": str(ds.PatientID),
            "study": str(ds.StudyInstanceUID),
            "series": str(ds.SeriesInstanceUID),
            "sop": str(ds.SOPInstanceUID),
        }

    dx = factories.write(
        factories.diconde_dx(rows=DX_SIDE, columns=DX_SIDE, part_id="WEB-DX-0001", seed=1), folder / "dx.dcm"
    )
    multiframe = factories.large_multiframe_file(
        folder / "multiframe.dcm",
        frames * MF_ROWS * MF_COLUMNS * 2,
        rows=MF_ROWS,
        columns=MF_COLUMNS,
        part_id="WEB-MF-0001",
    )
    qido = []
    for index in range(studies):
        ds = factories.diconde_dx(
            rows=QIDO_SIDE,
            columns=QIDO_SIDE,
            part_id=f"WEB-Q-{index:06d}",
            seed=index,
            AccessionNumber=f"WO-{index:06d}",
        )
        qido.append(entry(factories.write(ds, folder / "qido" / f"{index:06d}.dcm")))
    return {"dx": entry(dx), "multiframe": entry(multiframe), "frames": frames, "qido": qido}


def warm(files: Sequence[Path]) -> None:
    """Read the corpus once so both servers load it from the page cache."""
    for path in files:
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass


# -- servers --------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    title: str
    process: subprocess.Popen[Any]
    base: str  # .../dicom-web
    log: Path
    data: Path  # what is removed at the end
    headers: dict[str, str] = field(default_factory=dict)
    load_seconds: float = 0.0


HTTP_READY = re.compile(r"^NDT archive ready: .* HTTP on (http://\S+) ")


def start_ours(procs: Processes, folder: Path, data: Corpus) -> Server:
    """`pacs import` of the corpus into a fresh embedded archive (SQLite + filesystem), an admin
    token from `pacs users add`, then `pacs serve --workers 1` on loopback."""
    folder.mkdir(parents=True, exist_ok=True)
    data_dir = folder / "pacs-data"
    log = folder / "server.log"
    began = time.monotonic()
    with open(folder / "import.log", "wb") as import_log:
        imported = procs.start(
            [*pacs_command(), "import", "--data-dir", str(data_dir), "--jobs", "2", *data.files], import_log
        )
        code = imported.wait(3600)
    if code != 0:
        raise RuntimeError(f"pacs import exited with code {code}; see {folder / 'import.log'}")
    load_seconds = time.monotonic() - began
    users = subprocess.run(
        [*pacs_command(), "users", "add", BENCH_USER, "--role", "admin", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PACS_")},
    )
    if users.returncode != 0 or not users.stdout.strip():
        raise RuntimeError(f"pacs users add failed: {users.stderr.strip()[-500:]}")
    token = users.stdout.strip().splitlines()[-1].strip()
    args = ["serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--workers", "1"]
    args += ["--dicom-port", str(free_port()), "--http-port", str(free_port())]
    with open(log, "wb") as log_file:
        process = procs.start(
            [*pacs_command(), *args], log_file, stdout=subprocess.PIPE, text=True, bufsize=1
        )
    match = LineReader(process).wait_for(HTTP_READY, READY_TIMEOUT, "pacs serve", log)
    return Server(
        "ours",
        "ours (`pacs serve`, SQLite + files, 1 worker)",
        process,
        match[1].rstrip("/") + "/dicom-web",
        log,
        data_dir,
        {"Authorization": f"Bearer {token}"},
        load_seconds,
    )


def plugin_path() -> str | None:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def start_orthanc(procs: Processes, folder: Path, data: Corpus, plugin: str) -> Server:
    """Orthanc with its DICOMweb plugin and default settings otherwise (SQLite index, files, its
    storage cache), loaded through its REST API (POST /instances, one file at a time)."""
    import httpx

    folder.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": free_port(),
        "HttpPort": http_port,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StorageCompression": False,
        "SyncStorageArea": False,  # loading speed only; the benchmark reads
        "AuthenticationEnabled": False,
        "RemoteAccessAllowed": False,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = folder / "server.log"
    with open(log, "wb") as log_file:
        process = procs.start([orthanc_binary(), str(config_path)], log_file, env={"TCP_NODELAY": "1"})
    root = f"http://127.0.0.1:{http_port}"
    wait_until(lambda: listening(http_port), READY_TIMEOUT, "Orthanc HTTP port", process)
    wait_until(
        lambda: _http_ok(root + "/plugins/dicom-web"), READY_TIMEOUT, "Orthanc DICOMweb plugin", process
    )
    server = Server("orthanc", "Orthanc + DICOMweb plugin", process, root + "/dicom-web", log, folder)
    began = time.monotonic()
    with httpx.Client(timeout=600) as client:
        for path in data.files:
            with open(path, "rb") as body:
                response = client.post(root + "/instances", content=body)
            if response.status_code != 200:
                raise RuntimeError(
                    f"Orthanc refused {path.name}: {response.status_code} {response.text[:200]}"
                )
        count = int(client.get(root + "/statistics").json()["CountInstances"])
    if count != len(data.files):
        raise RuntimeError(f"Orthanc holds {count} instances, not {len(data.files)}")
    server.load_seconds = time.monotonic() - began
    return server


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- requests -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    key: str
    title: str
    accept: str
    media: str  # the media type the answer must have (its start, lower case)
    target_ms: float
    issue_orthanc_ms: float | None  # Orthanc 1.10 as measured when the targets were set
    path: Callable[[Corpus, str, int], str]  # (corpus, base, round) -> URL
    check: Callable[
        [Corpus, bytes, str, int], str
    ]  # (corpus, body, content type, round) -> "" or what is wrong


def _qido_url(data: Corpus, base: str, index: int) -> str:
    return f"{base}/studies?PatientID={data.qido[_qido_pick(data, index)].part_id}"


def _qido_pick(data: Corpus, index: int) -> int:
    """A different part each round, spread over the corpus (reproducible)."""
    return (index * 7919 + 17) % len(data.qido)


def check_qido(data: Corpus, body: bytes, content_type: str, index: int) -> str:
    wanted = data.qido[_qido_pick(data, index)]
    try:
        answer = json.loads(body)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if not isinstance(answer, list) or len(answer) != 1:
        return f"{len(answer) if isinstance(answer, list) else 'no'} studies, not 1"
    study = _json_value(answer[0], "0020000D")
    if study != wanted.study:
        return f"StudyInstanceUID {study}, not {wanted.study}"
    if _json_value(answer[0], "00100020") != wanted.part_id:
        return f"PatientID {_json_value(answer[0], '00100020')}, not {wanted.part_id}"
    return ""


def _json_value(dataset: dict[str, Any], tag: str) -> Any:
    values = dataset.get(tag, {}).get("Value") or [None]
    return values[0]


def multipart_parts(body: bytes, content_type: str) -> list[bytes] | str:
    """The bodies of a multipart/related answer (its part headers dropped), or what is wrong."""
    found = re.search(r'boundary="?([^";,\s]+)"?', content_type)
    if not content_type.lower().startswith("multipart/related") or not found:
        return f"not multipart/related with a boundary: {content_type!r}"
    delimiter = b"--" + found[1].encode()
    pieces = body.split(b"\r\n" + delimiter)
    if not pieces[0].startswith(delimiter):
        return "does not start with the boundary"
    pieces[0] = pieces[0][len(delimiter) :]
    if not pieces[-1].startswith(b"--"):
        return "no closing boundary"
    parts = []
    for piece in pieces[:-1]:
        head, separator, content = piece.partition(b"\r\n\r\n")
        if not separator:
            return "a part without headers"
        parts.append(content)
    return parts


def check_instance(data: Corpus, body: bytes, content_type: str, index: int) -> str:
    parts = multipart_parts(body, content_type)
    if isinstance(parts, str):
        return parts
    if len(parts) != 1:
        return f"{len(parts)} parts, not 1"
    if parts[0] != data.dx.path.read_bytes():
        return f"the part ({len(parts[0]):,} bytes) differs from the stored file"
    return ""


def check_frame(data: Corpus, body: bytes, content_type: str, index: int) -> str:
    import numpy as np

    parts = multipart_parts(body, content_type)
    if isinstance(parts, str):
        return parts
    if len(parts) != 1:
        return f"{len(parts)} parts, not 1"
    frame = frame_number(data) - 1
    rows, columns = np.arange(MF_ROWS, dtype="<u2"), np.arange(MF_COLUMNS, dtype="<u2")
    wanted = (rows[:, None] + columns[None, :] + np.uint16(frame % 65536)).astype("<u2").tobytes()
    if parts[0] != wanted:
        return f"frame bytes ({len(parts[0]):,}) differ from frame {frame + 1} of the file"
    return ""


def frame_number(data: Corpus) -> int:
    return data.frames // 2  # frame 500 of 1000: the middle, far from both ends of the file


def check_image(kind: str, side: tuple[int, int]) -> Callable[[Corpus, bytes, str, int], str]:
    def check(data: Corpus, body: bytes, content_type: str, index: int) -> str:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(body)) as image:
                image.load()
                size, form = image.size, image.format
        except Exception as exc:
            return f"not a decodable image: {exc}"
        if form != kind:
            return f"{form}, not {kind}"
        if size != side:
            return f"{size[0]}x{size[1]}, not {side[0]}x{side[1]}"
        return ""

    return check


def check_metadata(data: Corpus, body: bytes, content_type: str, index: int) -> str:
    try:
        answer = json.loads(body)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if not isinstance(answer, list) or len(answer) != 1:
        return "not a list of one dataset"
    if _json_value(answer[0], "00080018") != data.multiframe.sop:
        return f"SOPInstanceUID {_json_value(answer[0], '00080018')}"
    frames = _json_value(answer[0], "00280008")
    if frames is None or int(frames) != data.frames:
        return f"NumberOfFrames {frames}, not {data.frames}"
    return ""


def cases(data: Corpus) -> list[Case]:
    frame = frame_number(data)
    dx, mf = data.dx, data.multiframe
    mf_label = f"{data.frames} x {MF_ROWS}x{MF_COLUMNS} object"
    return [
        Case("qido", "QIDO-RS studies?PatientID=", DICOM_JSON, DICOM_JSON, 20, None, _qido_url, check_qido),
        Case(
            "dx-instance",
            "18 MB instance, transfer-syntax=*",
            DICOM_PART,
            "multipart/related",
            20,
            30,
            lambda d, b, i: dx.url(b),
            check_instance,
        ),
        Case(
            "dx-png",
            "18 MB instance rendered, PNG",
            "image/png",
            "image/png",
            130,
            263,
            lambda d, b, i: dx.url(b) + "/rendered",
            check_image("PNG", (DX_SIDE, DX_SIDE)),
        ),
        Case(
            "dx-jpeg",
            "18 MB instance rendered, JPEG",
            "image/jpeg",
            "image/jpeg",
            50,
            67,
            lambda d, b, i: dx.url(b) + "/rendered",
            check_image("JPEG", (DX_SIDE, DX_SIDE)),
        ),
        Case(
            "mf-frame",
            f"{mf_label}: frame {frame}, transfer-syntax=*",
            OCTET_PART,
            "multipart/related",
            20,
            1700,
            lambda d, b, i: mf.url(b) + f"/frames/{frame}",
            check_frame,
        ),
        Case(
            "mf-png",
            f"{mf_label}: frame {frame} rendered, PNG",
            "image/png",
            "image/png",
            60,
            1500,
            lambda d, b, i: mf.url(b) + f"/frames/{frame}/rendered",
            check_image("PNG", (MF_COLUMNS, MF_ROWS)),
        ),
        Case(
            "mf-jpeg",
            f"{mf_label}: frame {frame} rendered, JPEG",
            "image/jpeg",
            "image/jpeg",
            60,
            None,
            lambda d, b, i: mf.url(b) + f"/frames/{frame}/rendered",
            check_image("JPEG", (MF_COLUMNS, MF_ROWS)),
        ),
        Case(
            "mf-metadata",
            f"{mf_label}: instance metadata",
            DICOM_JSON,
            DICOM_JSON,
            10,
            1400,
            lambda d, b, i: mf.url(b) + "/metadata",
            check_metadata,
        ),
    ]


@dataclass
class Answer:
    status: int = 0
    size: int = 0
    first_byte: float = 0.0  # seconds
    total: float = 0.0
    content_type: str = ""
    error: str = ""


def curl(server: Server, url: str, accept: str, output: Path | None) -> Answer:
    """One GET on a new connection, timed by curl itself (process start-up is not in the figure)."""
    command = [CURL, "-s", "-S", "--max-time", "600", "-o", str(output) if output else "/dev/null"]
    command += ["-w", "%{http_code} %{size_download} %{time_starttransfer} %{time_total} %{content_type}"]
    command += ["-H", f"Accept: {accept}"]
    for name, value in server.headers.items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False)
    fields = done.stdout.split(" ", 4)
    if done.returncode != 0 or len(fields) < 4:
        return Answer(error=f"curl exit {done.returncode}: {done.stderr.strip()[:200]}")
    return Answer(
        int(fields[0]),
        int(fields[1]),
        float(fields[2]),
        float(fields[3]),
        fields[4].strip() if len(fields) > 4 else "",
    )


@dataclass
class Series:
    answers: list[Answer] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    size: int = 0  # of the fully checked answer

    def ms(self) -> list[float]:
        return [a.total * 1000 for a in self.answers if not a.error]

    def median(self) -> float | None:
        values = self.ms()
        return statistics.median(values) if values else None

    def first_byte_median(self) -> float | None:
        values = [a.first_byte * 1000 for a in self.answers if not a.error]
        return statistics.median(values) if values else None

    def spread(self) -> tuple[float, float] | None:
        values = self.ms()
        return (min(values), max(values)) if values else None


Results = dict[tuple[str, str], Series]  # (case key, server name)


def full_check(case: Case, server: Server, data: Corpus, index: int, scratch: Path) -> tuple[Answer, str]:
    """One answer saved and checked in full (not timed)."""
    output = scratch / f"{server.name}-{case.key}.out"
    answer = curl(server, case.path(data, server.base, index), case.accept, output)
    problem = _answer_problem(case, answer)
    if not problem:
        problem = case.check(data, output.read_bytes(), answer.content_type, index)
    output.unlink(missing_ok=True)
    return answer, problem


def _answer_problem(case: Case, answer: Answer) -> str:
    if answer.error:
        return answer.error
    if answer.status != 200:
        return f"HTTP {answer.status}"
    if not answer.content_type.lower().startswith(case.media):
        return f"media type {answer.content_type!r}, not {case.media}"
    return ""


def measure(servers: list[Server], data: Corpus, repeat: int, scratch: Path) -> Results:
    results: Results = {(c.key, s.name): Series() for c in cases(data) for s in servers}
    for case in cases(data):
        for server in servers:  # warm-up, checked in full
            answer, problem = full_check(case, server, data, -1, scratch)
            series = results[case.key, server.name]
            series.size = answer.size
            if problem:
                series.wrong.append(f"first answer: {problem}")
            print(
                f"[check] {case.key:<12} {server.name:<8} {answer.total * 1000:9.1f} ms "
                f"{answer.size:>11,} B  {problem or 'ok'}",
                flush=True,
            )
    for index in range(repeat):
        order = servers[index % len(servers) :] + servers[: index % len(servers)]
        for case in cases(data):
            line = []
            for server in order:
                series = results[case.key, server.name]
                if case.key == "qido":  # a different part each round: every answer checked in full
                    answer, problem = full_check(case, server, data, index, scratch)
                else:
                    answer = curl(server, case.path(data, server.base, index), case.accept, None)
                    problem = _answer_problem(case, answer)
                    if not problem and answer.size != series.size:
                        problem = f"{answer.size:,} bytes, not {series.size:,} as the checked answer"
                series.answers.append(answer)
                if problem:
                    series.wrong.append(f"round {index + 1}: {problem}")
                line.append(f"{server.name} {answer.total * 1000:8.1f} ms{' WRONG' if problem else ''}")
            print(f"[round {index + 1}/{repeat}] {case.key:<12} " + "  ".join(line), flush=True)
    return results


# -- report ---------------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def result_table(results: Results, data: Corpus, servers: list[Server]) -> list[str]:
    names = [s.name for s in servers]
    lines = [
        "| Request | Answer (bytes) | Ours: median (min-max) ms | Ours: first byte ms | "
        "Orthanc: median (min-max) ms | Orthanc: first byte ms | Ours / Orthanc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases(data):
        cells = [case.title, f"{results[case.key, names[0]].size:,}"]
        for name in ("ours", "orthanc"):
            series = results.get((case.key, name))
            if series is None:
                cells += ["-", "-"]
                continue
            spread = series.spread()
            extent = f" ({_ms(spread[0])}-{_ms(spread[1])})" if spread else ""
            cells += [f"{_ms(series.median())}{extent}", _ms(series.first_byte_median())]
        ours, theirs = results.get((case.key, "ours")), results.get((case.key, "orthanc"))
        cells.append(_ratio(ours.median() if ours else None, theirs.median() if theirs else None))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def target_table(results: Results, data: Corpus) -> list[str]:
    lines = [
        "| Request | Target | Ours (median) | Verdict | Orthanc 1.10 when the targets were set | "
        "That x ours / Orthanc today |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for case in cases(data):
        ours, theirs = results[case.key, "ours"], results.get((case.key, "orthanc"))
        median = ours.median()
        verdict = (
            "FAIL (wrong answers)"
            if ours.wrong
            else ("PASS" if median is not None and median <= case.target_ms else "FAIL")
        )
        scaled = "-"
        # Only where both servers do the same work (reading a file of the same size, encoding the
        # same image); the large object costs Orthanc a whole-file read that ours does not make.
        same_work = case.key.startswith("dx-")
        reference = theirs.median() if theirs else None
        if same_work and case.issue_orthanc_ms and reference and median is not None:
            scaled = f"{case.issue_orthanc_ms * median / reference:,.0f} ms"
        issue = f"{case.issue_orthanc_ms:,.0f} ms" if case.issue_orthanc_ms else "-"
        lines.append(
            f"| {case.title} | {'<' if case.key == 'qido' else '<='} {case.target_ms:.0f} ms | "
            f"{_ms(median)} ms | {verdict} | {issue} | {scaled} |"
        )
    return lines


def wrong_lines(results: Results) -> list[str]:
    return [f"- {key} on {name}: {w}" for (key, name), series in results.items() for w in series.wrong]


def versions(servers: list[Server], plugin: str | None) -> list[str]:
    import httpx

    import pacs

    found = [f"pacs {pacs.__version__}{_commit()}", f"Python {platform.python_version()}", _http_stack()]
    for server in servers:
        if server.name == "orthanc":
            root = server.base.rsplit("/dicom-web", 1)[0]
            try:
                orthanc = httpx.get(root + "/system", timeout=10).json()["Version"]
                web = httpx.get(root + "/plugins/dicom-web", timeout=10).json()["Version"]
                found += [f"Orthanc {orthanc}", f"DICOMweb plugin {web} ({plugin})"]
            except (httpx.HTTPError, KeyError, ValueError):
                found.append("Orthanc ?")
    curl_version = subprocess.run([CURL, "--version"], capture_output=True, text=True, check=False).stdout
    found.append(" ".join(curl_version.split()[:2]))
    return found


def _http_stack() -> str:
    """uvicorn and what it runs on: uvloop and httptools when installed (its "auto" choice), else
    asyncio and h11."""
    from importlib.metadata import PackageNotFoundError, version

    def found(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    loop, parser = found("uvloop"), found("httptools")
    return (
        f"uvicorn {found('uvicorn')} on "
        + (f"uvloop {loop}" if loop else "asyncio")
        + " and "
        + (f"httptools {parser}" if parser else f"h11 {found('h11')}")
    )


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


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def render(run: dict[str, Any], args: argparse.Namespace) -> str:
    data: Corpus = run["corpus"]
    servers: list[Server] = run["servers"]
    results: Results = run["results"]
    mf_mb = data.multiframe.path.stat().st_size / 1e6
    lines = [
        "## Web (DICOMweb)",
        "",
        "Re-run: `python bench/web.py` (the venv's python, from the repository root; `--help` lists the "
        "options). It rewrites this section.",
        "",
        f"Last run: {run['date']}, `{run['command']}`, took {run['minutes']:.1f} min.",
    ]
    if args.quick:
        lines += [
            "",
            "**This was a `--quick` smoke run: a smaller object and too few repeats to mean anything.**",
        ]
    if args.note:
        lines += ["", f"Note: {args.note}"]
    lines += [
        "",
        f"- Machine: {run['machine']}; work folder on {run['disk']}.",
        f"- Load average (1 / 5 / 15 min) at the start: {_load(run['load'][0])}; at the end: "
        f"{_load(run['load'][-1])}. The machine is shared: with a load above its core count, absolute "
        "times are inflated, the ratio to Orthanc (measured in the same rounds) much less.",
        f"- Versions: {'; '.join(run['versions'])}.",
        "",
        "### Method",
        "",
        f"- Corpus (tests/support/factories.py, cached in `bench/results/corpus/`): an 18 MB DX "
        f"(For Presentation) of {DX_SIDE}x{DX_SIDE} 16-bit pixels, explicit VR little endian, "
        f"uncompressed (`diconde_dx`); a {mf_mb:,.0f} MB Multi-frame Grayscale Word Secondary Capture of "
        f"{data.frames} frames of {MF_ROWS}x{MF_COLUMNS} 16-bit pixels (`large_multiframe_file`); and "
        f"{len(data.qido):,} small DX inspections ({QIDO_SIDE}x{QIDO_SIDE}), one per part, for QIDO.",
        f"- Ours: `pacs import` of every file into a fresh embedded archive (SQLite index, filesystem "
        f"objects; {run['load_seconds']['ours']:.0f} s), a token from `pacs users add bench --role admin`, "
        "then `pacs serve --workers 1` on loopback, default settings otherwise. Each request carries "
        "`Authorization: Bearer` (authentication is on, as by default).",
        "- Orthanc with the DICOMweb plugin (Debian `orthanc-dicomweb`), `TCP_NODELAY=1`, SQLite index and "
        "files, no compression, default settings otherwise (its storage cache among them), loaded with "
        f"the same files through `POST /instances` ({run['load_seconds']['orthanc']:.0f} s).",
        "- QIDO runs here at a modest scale, on SQLite, on both servers side by side; the query issue's "
        "scale on PostgreSQL is measured by `bench/query.py` (C-FIND through the same query model).",
        "- Requests, the same on both: `GET /studies?PatientID=P` (a different part every round, "
        "`Accept: application/dicom+json`); the instance with "
        f"`Accept: {DICOM_PART}` (stored bytes, no transcoding); `/rendered` with `Accept: image/png` or "
        f"`image/jpeg` (defaults otherwise: full size, the file's window); `/frames/{frame_number(data)}` "
        f"with `Accept: {OCTET_PART}`; `/frames/{frame_number(data)}/rendered`; the instance `/metadata`.",
        "- Timing: curl's own `time_total` (from before connecting to the last byte; curl's process "
        "start is not counted), a new loopback connection per request, the body discarded. Python "
        "clients were not used to time: `requests` adds hundreds of ms reading an 18 MB body. "
        '"First byte" is curl\'s `time_starttransfer`.',
        f"- Rounds: first one untimed request per kind and server whose answer is saved and checked in "
        f"full; then {run['repeat']} rounds, in each every kind of request once on each server, one "
        "server right after the other, the order rotating from round to round. Medians over the rounds.",
        "- Checks: the instance is byte-identical to the file loaded; the frame equals the file's pixel "
        "values of that frame; rendered answers decode (Pillow) as PNG or JPEG of the image's size; "
        "metadata is one dataset with the right SOP Instance UID and Number of Frames; each QIDO answer "
        "is exactly the part's one study. Timed answers (other than QIDO, checked every time) must have "
        "status 200, the media type asked for and the size of the checked answer.",
        "",
        "### Results",
        "",
        *result_table(results, data, servers),
        "",
        "### The project's targets",
        "",
        "Verdicts on ours' absolute medians in this run. The Orthanc figures in the fifth column were "
        "measured on a quieter machine when the targets were set (the large object: 500 MB, 1000 "
        "frames). For the 18 MB instance, where both servers do the same work, the last column puts "
        "today's ratio to Orthanc on that figure: an estimate of what ours would take on that machine.",
        "",
        *target_table(results, data),
    ]
    wrong = wrong_lines(results)
    if wrong:
        lines += ["", "### Wrong answers", "", *wrong]
    return "\n".join(lines) + "\n"


def write_doc(section: str) -> None:
    write_section("web", section)


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a smaller object, few rounds")
    parser.add_argument(
        "--repeat", type=int, default=None, help=f"rounds ({DEFAULT_REPEAT}; {QUICK_REPEAT} if --quick)"
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help=f"frames of 512x512 in the large object ({DEFAULT_FRAMES}; {QUICK_FRAMES} if --quick)",
    )
    parser.add_argument(
        "--studies",
        type=int,
        default=None,
        help=f"inspections in the QIDO corpus ({DEFAULT_STUDIES}; {QUICK_STUDIES} if --quick)",
    )
    parser.add_argument("--no-orthanc", action="store_true", help="measure ours alone")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=RESULTS / "web",
        help="logs and both servers' data (bench/results/web)",
    )
    parser.add_argument("--keep", action="store_true", help="keep both servers' data")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--note", default="", help="a remark for the doc (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    args.frames = args.frames or (QUICK_FRAMES if args.quick else DEFAULT_FRAMES)
    args.studies = args.studies or (QUICK_STUDIES if args.quick else DEFAULT_STUDIES)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    plugin = None if args.no_orthanc else plugin_path()
    if not args.no_orthanc and plugin is None:
        print("Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb", file=sys.stderr)
        return 2
    if not Path(CURL).exists():
        print(f"{CURL} is missing: apt-get install curl", file=sys.stderr)
        return 2
    workdir: Path = args.workdir.resolve()
    sweep_leftovers(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    procs = RecordedProcesses(workdir / PIDS_FILE)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    run: dict[str, Any] = {"repeat": args.repeat, "load": [os.getloadavg()], "load_seconds": {}}
    servers: list[Server] = []
    try:
        run["machine"], run["disk"] = machine(), disk_of(workdir)
        data = run["corpus"] = corpus(args.frames, args.studies)
        warm(data.files)
        print("loading ours (pacs import) ...", flush=True)
        servers.append(start_ours(procs, workdir / "ours", data))
        run["load_seconds"]["ours"] = servers[-1].load_seconds
        if plugin is not None:
            print("loading Orthanc (POST /instances) ...", flush=True)
            servers.append(start_orthanc(procs, workdir / "orthanc", data, plugin))
            run["load_seconds"]["orthanc"] = servers[-1].load_seconds
        else:
            run["load_seconds"]["orthanc"] = 0.0
        run["versions"] = versions(servers, plugin)
        run["servers"] = servers
        warm([data.multiframe.path])  # back into the page cache after loading both
        run["results"] = measure(servers, data, args.repeat, workdir)
        run["load"].append(os.getloadavg())
        run["date"] = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        given = list(sys.argv[1:] if argv is None else argv)
        run["command"] = shlex.join(["python", "bench/web.py", *given])
        run["minutes"] = (time.monotonic() - started) / 60
        section = render(run, args)
        print()
        print(section)
        if not args.no_doc:
            write_doc(section)
            print(f"wrote the web section of {DOC}")
        return 1 if wrong_lines(run["results"]) else 0
    except KeyboardInterrupt:
        print("interrupted: stopping every process this run started", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in servers:
            procs.stop(server.process, timeout=30)
        procs.kill_all()
        (workdir / PIDS_FILE).unlink(missing_ok=True)
        if not args.keep:  # the logs stay
            for folder in (
                workdir / "ours" / "pacs-data",
                workdir / "orthanc" / "storage",
                workdir / "orthanc" / "index",
            ):
                shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _raise_interrupt(signo: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
