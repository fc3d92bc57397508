"""Viewer benchmark (issue point 7): how soon a 3000x3000 16-bit radiograph is on screen in the
browser, and how fast a window/level change redraws it; client-side rendering from the raw frame
beside the server's /rendered images.

`pacs serve` (SQLite + files, one worker) holds one 18 MB DX of 3000x3000 16-bit pixels
(tests/support/factories.py, cached in bench/results/corpus/). Debian's chromium, driven by
Playwright (headless, software rendering, as in the tests), opens the viewer straight on the image,
in a new browser context each round (empty cache, as a first visit). Timed in the page:

* first image: from navigation start to the viewer's `viewer:first-image` mark, set at the first
  animation frame after the full-resolution image was drawn (sign-in done beforehand: the token
  is put in sessionStorage);
* window/level: new values typed into the toolbar (a `change` event, the real UI path), the
  synchronous redraw (table, pixels, canvas) and the time until the next frame after it; and the
  redraws of a mouse drag with the window/level tool;
* the server's alternative: `/rendered?window=C,W` as PNG and JPEG, full size and fitted to the
  viewport, fetched and decoded (createImageBitmap) and drawn in the page: what every window
  change would cost if the server rendered it.

See docs/benchmarks.md and bench/README.md.

    python bench/viewer.py            # the run whose figures go into docs/benchmarks.md
    python bench/viewer.py --quick    # a smoke run, under a minute after the corpus exists
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts bench/ first on the path, where this file would stand in for the
# `viewer` package it measures (with the repository on PYTHONPATH, that package came second).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:  # `python bench/viewer.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.ingest import disk_of, machine  # noqa: E402
from bench.report import write_section  # noqa: E402
from bench.web import PIDS_FILE, RecordedProcesses, Server, start_ours, sweep_leftovers  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
SIDE = 3000
DEFAULT_REPEAT, QUICK_REPEAT = 9, 3
WL_CHANGES, QUICK_WL_CHANGES = 40, 10
VIEWPORT = {"width": 1600, "height": 1000}
FIRST_IMAGE_TARGET_MS = 1000.0
REDRAW_TARGET_MS = 50.0


@dataclass(frozen=True)
class Radiograph:
    path: Path
    study: str
    series: str
    sop: str
    center: float
    width: float

    @property
    def files(self) -> list[Path]:  # what bench.web.start_ours imports
        return [self.path]

    @property
    def key(self) -> str:
        return f"{self.study}/{self.series}/{self.sop}"


def radiograph() -> Radiograph:
    """The 3000x3000 DX, generated once and cached in bench/results/corpus/viewer/."""
    folder = RESULTS / "corpus" / "viewer"
    path = folder / "dx.dcm"
    if not path.exists():
        from tests.support import factories

        folder.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} ...", flush=True)
        factories.write(factories.diconde_dx(rows=SIDE, columns=SIDE, part_id="VIEWER-DX-0001", seed=7), path)
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True)
    return Radiograph(
        path,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        float(ds.WindowCenter),
        float(ds.WindowWidth),
    )


# -- measurements in the browser ------------------------------------------------------------------
FIRST_IMAGE_JS = """async () => {
  const deadline = performance.now() + 30000;
  for (;;) {
    const [mark] = performance.getEntriesByName('viewer:first-image');
    if (mark) {
      const [paint] = performance.getEntriesByName('viewer:first-paint');
      return {ms: mark.startTime, paintMs: paint ? paint.startTime : null, ...mark.detail};
    }
    const vp = document.querySelector('[data-testid=viewport-0]');
    if (vp && vp.dataset.state === 'error') throw new Error('viewer: ' + vp.textContent);
    if (performance.now() > deadline) throw new Error('no image after 30 s');
    await new Promise(r => setTimeout(r, 5));
  }
}"""

NUMERIC_WL_JS = """async ([n, center, width]) => {
  const c = document.querySelector('[data-testid=wl-center]');
  const w = document.querySelector('[data-testid=wl-width]');
  const out = [];
  for (let i = 0; i < n; i++) {
    c.value = String(center + ((i % 5) - 2) * width / 20);
    w.value = String(width * (0.5 + (i % 7) / 10));
    const t0 = performance.now();
    w.dispatchEvent(new Event('change'));
    const t1 = performance.now();
    await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
    out.push([t1 - t0, performance.now() - t0]);
  }
  return out;
}"""

CANVAS_GREY_JS = """() => { const c = document.querySelector('[data-testid=canvas-0]');
  const d = c.getContext('2d').getImageData(c.width >> 1, c.height >> 1, 1, 1).data; return d[0]; }"""

SERVER_RENDER_JS = """async ([url, token, accept]) => {
  const t0 = performance.now();
  const headers = {Authorization: 'Bearer ' + token, Accept: accept};
  const r = await fetch(url, {headers, cache: 'no-store'});
  if (!r.ok) throw new Error(url + ': ' + r.status);
  const blob = await r.blob();
  const t1 = performance.now();
  const bitmap = await createImageBitmap(blob);
  const c = document.createElement('canvas');
  c.width = Math.min(bitmap.width, 1600); c.height = Math.min(bitmap.height, 1000);
  c.getContext('2d').drawImage(bitmap, 0, 0, c.width, c.height);
  c.getContext('2d').getImageData(0, 0, 1, 1);
  return {total: performance.now() - t0, fetch: t1 - t0, bytes: blob.size, width: bitmap.width};
}"""


@dataclass
class Figures:
    first: list[dict[str, float]] = field(default_factory=list)
    first_raw: list[dict[str, float]] = field(default_factory=list)
    numeric: list[tuple[float, float]] = field(default_factory=list)
    drag: list[float] = field(default_factory=list)
    server: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)


def measure(server: Server, dx: Radiograph, repeat: int, changes: int) -> Figures:
    from playwright.sync_api import sync_playwright

    from tests.support.browser import launch

    base = server.base.removesuffix("/dicom-web")
    token = server.headers["Authorization"].split()[1]
    import httpx

    me = httpx.get(f"{base}/api/me", headers=server.headers, timeout=30).json()
    init = (
        f"sessionStorage.setItem('ndt-viewer.token', {json.dumps(token)});"
        f"sessionStorage.setItem('ndt-viewer.user', {json.dumps(json.dumps(me))});"
    )
    url = f"{base}/viewer/#/view?a={dx.key}&part=VIEWER-DX-0001"
    rendered = f"{server.base}/studies/{dx.study}/series/{dx.series}/instances/{dx.sop}/rendered"
    figures = Figures()
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for round_index in range(repeat):
                # The same image opened both ways, in a fresh context each, the order rotating from
                # round to round: with the server's preview first, and without it (`preview=0`: the
                # raw frame asked for at once).
                variants = [("preview", url), ("raw", url + "&preview=0")]
                for variant, address in variants if round_index % 2 == 0 else variants[::-1]:
                    context = browser.new_context(viewport=VIEWPORT)
                    context.add_init_script(init)
                    page = context.new_page()
                    page.goto(address)
                    first = page.evaluate(FIRST_IMAGE_JS)
                    (figures.first if variant == "preview" else figures.first_raw).append(first)
                    print(
                        f"round {round_index + 1}/{repeat} {variant}: first image"
                        f" {first.get('paintMs') or first['ms']:.0f} ms, "
                        f"raw frame drawn {first['ms']:.0f} ms (load started at {first['startedAt']:.0f}"
                        " ms, metadata "
                        f"+{first['metadataMs']:.0f}, frame +{first['frameMs']:.0f}, drawn"
                        f" +{first['totalMs']:.0f})",
                        flush=True,
                    )
                    if variant != "preview":
                        context.close()
                        continue
                    preview_context = context
                    preview_page = page
                context, page = preview_context, preview_page  # the window changes are timed on this one
                grey = page.evaluate(CANVAS_GREY_JS)
                if not 0 < grey < 255:  # the factory's radiograph is mid-grey in its own window
                    figures.wrong.append(
                        f"round {round_index + 1}: centre pixel grey {grey} after the first image"
                    )
                before = page.evaluate(CANVAS_GREY_JS)
                figures.numeric += [
                    tuple(x) for x in page.evaluate(NUMERIC_WL_JS, [changes, dx.center, dx.width])
                ]
                if page.evaluate(CANVAS_GREY_JS) == before and changes > 3:
                    figures.wrong.append(
                        f"round {round_index + 1}: the window changes left the canvas as it was"
                    )
                figures.drag += drag_redraws(page)
                for name, accept, viewport in (
                    ("png-full", "image/png", None),
                    ("jpeg-full", "image/jpeg", None),
                    ("png-fit", "image/png", "1000,1000"),
                    ("jpeg-fit", "image/jpeg", "1000,1000"),
                ):
                    window = f"{dx.center + round_index * 10:g},{dx.width:g},linear"
                    query = f"?window={window}" + (f"&viewport={viewport}" if viewport else "")
                    answer = page.evaluate(SERVER_RENDER_JS, [rendered + query, token, accept])
                    if answer["width"] != (SIDE if viewport is None else 1000):
                        figures.wrong.append(f"{name}: {answer['width']} pixels wide")
                    figures.server.setdefault(name, []).append(answer)
                context.close()
        finally:
            browser.close()
    return figures


def drag_redraws(page: Any) -> list[float]:
    """Durations of the redraws a window/level drag caused (the viewer's `viewer:render` measures)."""
    page.evaluate("performance.clearMeasures('viewer:render')")
    page.get_by_test_id("tool-wl").click()
    box = page.get_by_test_id("canvas-0").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(x - 6 * i, y + 3 * i)
    page.mouse.up()
    page.wait_for_timeout(50)
    return [
        float(d) for d in page.evaluate("performance.getEntriesByName('viewer:render').map(e => e.duration)")
    ]


# -- the doc section ------------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _p90(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def render(run: dict[str, Any], args: argparse.Namespace) -> str:
    f: Figures = run["figures"]
    first = [x["ms"] for x in f.first]
    # The server's preview loses the race when the raw frame is quicker: then the raw image is the first.
    paint = [x["paintMs"] if x.get("paintMs") is not None else x["ms"] for x in f.first]
    previews = sum(1 for x in f.first if x.get("paintMs") is not None)
    raw_first = [x["ms"] for x in f.first_raw]
    frame = [x["frameMs"] for x in f.first]
    meta = [x["metadataMs"] for x in f.first]
    started = [x["startedAt"] for x in f.first]
    drawn = [x["renderMs"] for x in f.first]
    sync = [x[0] for x in f.numeric]
    painted = [x[1] for x in f.numeric]
    paint_ok = _median(paint) <= FIRST_IMAGE_TARGET_MS
    first_ok = _median(first) <= FIRST_IMAGE_TARGET_MS
    redraw_ok = _median(painted) <= REDRAW_TARGET_MS
    lines = [
        "## Viewer",
        "",
        "Re-run: `python bench/viewer.py` (the venv's python, from the repository root; `--help` lists the "
        "options). It rewrites this section.",
        "",
        f"Last run: {run['date']}, `{run['command']}`, took {run['minutes']:.1f} min.",
    ]
    if args.quick:
        lines += ["", "**This was a `--quick` smoke run: too few repeats to mean much.**"]
    if args.note:
        lines += ["", f"Note: {args.note}"]
    lines += [
        "",
        f"- Machine: {run['machine']}; work folder on {run['disk']}.",
        f"- Load average (1 / 5 / 15 min) at the start: {_load(run['load'][0])}; at the end:"
        f" {_load(run['load'][-1])}.",
        f"- Versions: {'; '.join(run['versions'])}.",
        "",
        "### Method",
        "",
        f"- One DX (For Presentation) of {SIDE}x{SIDE} 16-bit pixels, 18 MB, uncompressed (`diconde_dx`), "
        "in a fresh embedded archive (`pacs import`), served by `pacs serve --workers 1` on loopback.",
        f"- Debian chromium, headless, `--disable-gpu` (software canvas, as in CI), a {VIEWPORT['width']}x"
        f"{VIEWPORT['height']} window, driven by Playwright; a new browser context per round (empty cache:"
        " the "
        "viewer's files, the metadata and the frame are all fetched). The token is put in sessionStorage "
        "before the page loads, so sign-in is not timed.",
        "- First image: navigation start to the `viewer:first-image` mark, set in the first animation frame "
        "after the viewer drew the full-resolution image: index.html asks for the WADO-RS metadata and the "
        'raw frame as `multipart/related; type="application/octet-stream"` (18 MB) before the modules load '
        "(`/api` not needed); the frame is read into one buffer as it arrives and reduced 2 x 2 meanwhile; "
        "once the modules are in, the reduced frame (the fitted view's resolution) is windowed into the "
        "canvas. The server's rendering goes first only when the raw frame would take over 0.5 s more.",
        f"- Window/level: {args.changes} new centre/width pairs per round typed into the toolbar (a `change` "
        "event, the UI's own path): the synchronous redraw (65,536-entry table, one look-up per pixel into "
        "an ImageData, putImageData, the scaled draw on the visible canvas) and the time until the next "
        "frame after it; plus every redraw of a 20-step mouse drag with the window/level tool.",
        "- Server rendering for comparison: `/rendered?window=C,W,linear` as PNG and JPEG, at full size and "
        "`viewport=1000,1000`, fetched by the page with the token, decoded (`createImageBitmap`) and drawn "
        "on a canvas: what each window change costs when the server renders it.",
        f"- {run['repeat']} rounds; medians (and 90th percentiles) over all rounds.",
        "",
        "### Results",
        "",
        "| Measure | Median ms | p90 ms | Samples |",
        "|---|---:|---:|---:|",
        "| First image on screen: the server's rendering at the viewport's size when the raw frame is slow"
        f" to come (shown in {previews} of {len(first)} rounds; otherwise the raw image came first) |"
        f" {_ms(_median(paint))} | {_ms(_p90(paint))} | {len(paint)} |",
        "| Full-resolution 16-bit frame windowed on the client and on screen (navigation to painted) |"
        f" {_ms(_median(first))} | {_ms(_p90(first))} | {len(first)} |",
        "| Without the preview (`preview=0`): the raw frame windowed on the client and on screen |"
        f" {_ms(_median(raw_first))} | {_ms(_p90(raw_first))} | {len(raw_first)} |",
        "| of which (with the preview): navigation to the start of loading (the modules in, the view built)"
        f" | {_ms(_median(started))} | {_ms(_p90(started))} | {len(started)} |",
        "| of which (with the preview): WADO-RS metadata in, from the start of loading"
        f" | {_ms(_median(meta))} | {_ms(_p90(meta))} | {len(meta)} |",
        "| of which (with the preview): the 18 MB raw frame in, from the start of loading (asked for"
        " before it)"
        f" | {_ms(_median(frame))} | {_ms(_p90(frame))} | {len(frame)} |",
        "| of which (with the preview): the first draw (window, paint, scaled draw)"
        f" | {_ms(_median(drawn))} | {_ms(_p90(drawn))} | {len(drawn)} |",
        f"| Window/level by numbers: redraw | {_ms(_median(sync))} | {_ms(_p90(sync))} | {len(sync)} |",
        f"| Window/level by numbers: to the next frame | {_ms(_median(painted))} | {_ms(_p90(painted))} |"
        f" {len(painted)} |",
        f"| Window/level by mouse drag: redraw | {_ms(_median(f.drag))} | {_ms(_p90(f.drag))} |"
        f" {len(f.drag)} |",
    ]
    titles = {
        "png-full": "Server-rendered PNG, 3000x3000, fetched + decoded + drawn",
        "jpeg-full": "Server-rendered JPEG, 3000x3000, fetched + decoded + drawn",
        "png-fit": "Server-rendered PNG, viewport 1000x1000, fetched + decoded + drawn",
        "jpeg-fit": "Server-rendered JPEG, viewport 1000x1000, fetched + decoded + drawn",
    }
    for key, title in titles.items():
        totals = [x["total"] for x in f.server.get(key, [])]
        size = statistics.median([x["bytes"] for x in f.server.get(key, [])] or [0])
        lines.append(
            f"| {title} ({size / 1e6:.2f} MB) | {_ms(_median(totals))} | {_ms(_p90(totals))} |"
            f" {len(totals)} |"
        )
    lines += [
        "",
        "### The project's targets",
        "",
        "| Target | Ours (median) | Verdict |",
        "|---|---:|---|",
        f"| a 3000x3000 16-bit radiograph on screen within {FIRST_IMAGE_TARGET_MS:.0f} ms (first image, at"
        " screen resolution) | "
        f"{_ms(_median(paint))} ms | {'PASS' if paint_ok else 'FAIL'} |",
        "| the same with the raw 16-bit frame windowed on the client (every tool ready) within"
        f" {FIRST_IMAGE_TARGET_MS:.0f} ms | "
        f"{_ms(_median(first))} ms | {'PASS' if first_ok else 'FAIL'} |",
        f"| window/level change redrawn within {REDRAW_TARGET_MS:.0f} ms (to the next frame) |"
        f" {_ms(_median(painted))} ms | "
        f"{'PASS' if redraw_ok else 'FAIL'} |",
        "",
        "Choice: a mix. The viewer renders on the client from the raw frame: one 18 MB transfer, then every "
        "window change is a local redraw of the pixels in view; a server-rendered image would cost the "
        "server's rendering, the transfer and the browser's decode on every change (the last rows), and an "
        "8-bit PNG or JPEG cannot give back the stored or modality value under the cursor, nor ROI "
        "statistics. For frames above 4 MB that would take more than 0.5 s more to come (by the pace of "
        "their bytes so far) the server's PNG at the viewport's size goes on screen first, while the raw "
        "frame travels; on loopback the raw frame comes sooner, and a preview would only compete with it for "
        "the server and the CPU.",
    ]
    if f.wrong:
        lines += ["", "### Wrong answers", "", *(f"- {w}" for w in f.wrong)]
    return "\n".join(lines) + "\n"


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def write_doc(section: str) -> None:
    write_section("viewer", section)


def versions() -> list[str]:
    import subprocess

    import pacs
    from bench.web import _commit

    chromium = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True, check=False)
    from importlib.metadata import version

    return [
        f"pacs {pacs.__version__}{_commit()}",
        f"Python {sys.version.split()[0]}",
        (chromium.stdout.strip() or "chromium ?").replace("  ", " "),
        f"Playwright {version('playwright')}",
    ]


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few rounds")
    parser.add_argument(
        "--repeat", type=int, default=None, help=f"rounds ({DEFAULT_REPEAT}; {QUICK_REPEAT} if --quick)"
    )
    parser.add_argument(
        "--changes",
        type=int,
        default=None,
        help=f"window changes per round ({WL_CHANGES}; {QUICK_WL_CHANGES} if --quick)",
    )
    parser.add_argument("--workdir", type=Path, default=RESULTS / "viewer", help="logs and the server's data")
    parser.add_argument("--keep", action="store_true", help="keep the server's data")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--note", default="", help="a remark for the doc (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    args.changes = args.changes or (QUICK_WL_CHANGES if args.quick else WL_CHANGES)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    workdir: Path = args.workdir.resolve()
    sweep_leftovers(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    procs = RecordedProcesses(workdir / PIDS_FILE)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    run: dict[str, Any] = {"repeat": args.repeat, "load": [os.getloadavg()]}
    server: Server | None = None
    try:
        run["machine"], run["disk"] = machine(), disk_of(workdir)
        dx = radiograph()
        print("loading the archive (pacs import) ...", flush=True)
        server = start_ours(procs, workdir / "ours", dx)  # type: ignore[arg-type]  # needs only .files
        run["versions"] = versions()
        run["figures"] = measure(server, dx, args.repeat, args.changes)
        run["load"].append(os.getloadavg())
        run["date"] = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        given = list(sys.argv[1:] if argv is None else argv)
        run["command"] = shlex.join(["python", "bench/viewer.py", *given])
        run["minutes"] = (time.monotonic() - started) / 60
        section = render(run, args)
        print()
        print(section)
        if not args.no_doc:
            write_doc(section)
            print(f"wrote the viewer section of {DOC}")
        return 1 if run["figures"].wrong else 0
    except KeyboardInterrupt:
        print("interrupted: stopping every process this run started", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None:
            procs.stop(server.process, timeout=30)
        procs.kill_all()
        (workdir / PIDS_FILE).unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(workdir / "ours" / "pacs-data", ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _raise_interrupt(signo: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
