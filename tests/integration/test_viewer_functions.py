"""The viewer's pure JavaScript functions (viewer/js/imaging.js, dicom.js, plot.js), run in Debian's
chromium through Playwright so that pytest stays the one test command.

The page imports the modules from the package's own files, served under a made-up origin by
Playwright's request interception (no server needed). Expected values come from the archive's own
Python: the server's windowing (pacs.dicom.render.window_values), its DICOM JSON model
(pacs.dicom.json) and numpy statistics. Also here: viewer/data/attributes.json must match
pacs/diconde's attribute table, so the NDE names the viewer shows cannot drift from the archive's.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Page, Route, sync_playwright
from pydicom.dataset import Dataset

from pacs.dicom.json import to_dicom_json
from pacs.dicom.render import Window, window_values
from tests.support.browser import ATTRIBUTES_JSON, attribute_names, launch
from tests.support.factories import diconde_dx, enhanced_ct

VIEWER = ATTRIBUTES_JSON.parents[1]
ORIGIN = "http://viewer.test"


def _serve(route: Route) -> None:
    path = route.request.url.removeprefix(ORIGIN).split("?")[0].lstrip("/") or "index.html"
    file = (VIEWER / path).resolve()
    if not file.is_relative_to(VIEWER) or not file.is_file():
        route.fulfill(status=404, body="not found")
        return
    kind = "text/javascript" if file.suffix == ".js" else mimetypes.guess_type(file.name)[0] or "text/plain"
    route.fulfill(status=200, body=file.read_bytes(), headers={"Content-Type": kind})


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        opened = browser.new_page()
        opened.route(f"{ORIGIN}/**", _serve)
        opened.goto(f"{ORIGIN}/blank.html")  # any page of the origin: module imports resolve against it
        yield opened
        browser.close()


def js(page: Page, body: str, arg: Any = None) -> Any:
    """Run `body` (an async function body with `im`, `dc`, `plot` and `arg` in scope)."""
    return page.evaluate(
        "async (arg) => { const im = await import('/js/imaging.js'); const dc = await import('/js/dicom.js');"
        " const plot = await import('/js/plot.js');" + body + "}",
        arg,
    )


def server_grey(values: np.ndarray, center: float, width: float, function: str = "linear") -> list[int]:
    y = window_values(values.astype(np.float64), Window(center, width, function))
    return [int(v) for v in np.clip(np.rint(y), 0, 255)]


# -- windowing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("center", "width", "function"),
    [
        (30000, 20000, "linear"),
        (1000.5, 1, "linear"),
        (-500, 3000, "linear_exact"),
        (2048, 400, "sigmoid"),
        (40, 80, "linear"),
    ],
)
def test_the_lookup_table_gives_the_servers_grey_levels(
    page: Page, center: float, width: float, function: str
) -> None:
    """16 bits, slope 0.5 intercept -1024: every one of the 65,536 stored values, as the server renders it."""
    slope, intercept = 0.5, -1024.0
    grey = js(
        page,
        "const lut = im.buildLut({bitsAllocated: 16, bitsStored: 16, signed: false, slope: arg.slope,"
        " intercept: arg.intercept},"
        " {center: arg.center, width: arg.width, fn: arg.fn}); return Array.from(lut);",
        {"slope": slope, "intercept": intercept, "center": center, "width": width, "fn": function.upper()},
    )
    stored = np.arange(65536, dtype=np.float64)
    assert grey == server_grey(stored * slope + intercept, center, width, function)


def test_bits_stored_are_masked_signed_values_extended_and_monochrome1_inverted(page: Page) -> None:
    result = js(
        page,
        "const img = {bitsAllocated: 16, bitsStored: 12, signed: true, slope: 1, intercept: 0};"
        " const lut = im.buildLut(img, {center: 0, width: 4096}, false);"
        " const inv = im.buildLut(img, {center: 0, width: 4096}, true);"
        " return {stored: [0x0fff, 0xf7ff, 0x0800, 0x07ff, 0xf001].map(r => im.storedValue(r, 12, true)),"
        " lut: [lut[0x0800], lut[0x07ff], lut[0xf800], lut[0]], inv: [inv[0x0800], inv[0x07ff]],"
        " unsigned: im.storedValue(0xf123, 12, false)};",
    )
    assert result["stored"] == [-1, 2047, -2048, 2047, 1]
    assert result["unsigned"] == 0x123
    # -2048 is the darkest, 2047 the brightest; bits above the 12 stored are ignored (0xf800 == 0x800).
    assert result["lut"][0] == 0 and result["lut"][1] == 255 and result["lut"][2] == 0
    assert result["lut"][3] == server_grey(np.array([0.0]), 0, 4096)[0]
    assert result["inv"] == [255, 0]


def test_applying_the_table_writes_opaque_grey_pixels(page: Page) -> None:
    words = js(
        page,
        "const lut = im.rgbaLut(Uint8Array.from([0, 128, 255, 7]));"
        " const out = new Uint32Array(6); im.applyLutRegion(Uint8Array.from([0, 1, 2, 3, 2, 1]), 3, lut,"
        " out, 1, 0, 3, 2);"
        " return Array.from(new Uint8Array(out.buffer));",
    )
    pixels = np.array(words, dtype=np.uint8).reshape(2, 3, 4)
    assert pixels[:, 0].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]  # outside the region: untouched
    assert pixels[0, 1].tolist() == [128, 128, 128, 255] and pixels[0, 2].tolist() == [255, 255, 255, 255]
    assert pixels[1, 1].tolist() == [255, 255, 255, 255] and pixels[1, 2].tolist() == [128, 128, 128, 255]


def test_default_and_automatic_windows_and_the_drag(page: Page) -> None:
    r = js(
        page,
        "const px = new Uint16Array(1000); for (let i = 0; i < 1000; i++) px[i] = 1000 + i;"
        " const img = {bitsAllocated: 16, bitsStored: 16, signed: false, slope: 2, intercept: -100};"
        " return {range: im.valueRange(px, img), full: im.fullRangeWindow(im.valueRange(px, img)),"
        " auto: im.percentileWindow(px, img, 0.1, 0.9), drag:"
        " im.dragWindow({center: 100, width: 50, fn: 'LINEAR'}, 10, -4, 2),"
        " narrow: im.dragWindow({center: 100, width: 5}, -100, 0, 1)};",
    )
    assert r["range"] == {"min": 1900, "max": 3898}
    assert r["full"]["center"] == 2899 and r["full"]["width"] == 1998
    assert r["auto"]["center"] == pytest.approx(2899, abs=4) and r["auto"]["width"] == pytest.approx(
        1600, abs=6
    )
    assert r["drag"] == {"center": 92, "width": 70, "fn": "LINEAR"}
    assert r["narrow"]["width"] == 1  # never below one


def test_downsampling_averages_stored_values_for_the_reduced_view(page: Page) -> None:
    r = js(
        page,
        "const plain = im.downsample(Uint16Array.from([0, 4, 8, 12, 1, 3, 9, 11]), 4, 2,"
        " {bitsStored: 16, signed: false});"
        " const signed = im.downsample(Uint16Array.from([0xfffe, 0xfffe, 0x0002, 0x0004, 0xfffe, 0xfffe,"
        " 0x0002, 0x0004]), 4, 2,"
        " {bitsStored: 16, signed: true});"
        " return {plain: Array.from(plain.pixels), size: [plain.width, plain.height],"
        " signed: Array.from(signed.pixels).map(v => im.storedValue(v, 16, true))};",
    )
    assert r["size"] == [2, 1]
    assert r["plain"] == [2, 10]
    assert r["signed"] == [-2, 3]


def test_a_frame_reduced_while_it_arrives_equals_the_frame_reduced_at_once(page: Page) -> None:
    # The viewer averages the rows of a large first frame as they come (rows 2 y0 .. 2 y1 for output
    # rows y0 .. y1); pieces of any size give what one pass over the whole frame gives.
    r = js(
        page,
        "const w = 37, h = 23; const out = [];"
        " for (const image of [{bitsStored: 16, signed: false}, {bitsStored: 12, signed: true}]) {"
        "  const px = new Uint16Array(w * h);"
        "  for (let i = 0; i < px.length; i++) px[i] = (i * 7919) & 0xffff;"
        "  const whole = im.downsample(px, w, h, image);"
        "  const pieces = new Uint16Array(whole.pixels.length);"
        "  for (const [y0, y1] of [[0, 1], [1, 4], [4, 4], [4, 11]])"
        "   im.downsampleRows(px.subarray(0, 2 * y1 * w), w, image, pieces, y0, y1);"
        "  out.push(whole.height === 11 && whole.pixels.every((v, i) => v === pieces[i])); }"
        " return out;",
    )
    assert r == [True, True]


# -- calibration, measurement, profile, ROI, SNR -----------------------------------------------------
def test_calibration_from_pixel_spacing_imager_spacing_and_magnification_or_none(page: Page) -> None:
    r = js(
        page,
        "return [im.calibration({pixelSpacing: [0.1, 0.05], imagerPixelSpacing: [0.2, 0.2], magnification:"
        " 2}),"
        " im.calibration({imagerPixelSpacing: [0.125, 0.125], magnification: 1.25}),"
        " im.calibration({imagerPixelSpacing: [0.1, 0.1]}),"
        " im.calibration({pixelSpacing: [0, 0.1]}), im.calibration({}),"
        " im.distance({x: 0, y: 0}, {x: 30, y: 40}, im.calibration({pixelSpacing: [0.1, 0.05]})),"
        " im.distance({x: 0, y: 0}, {x: 3, y: 4}, im.calibration({}))];",
    )
    assert (r[0]["rowSpacing"], r[0]["columnSpacing"], r[0]["source"]) == (0.1, 0.05, "PixelSpacing")
    assert (
        r[1]["rowSpacing"] == pytest.approx(0.1)
        and r[1]["unit"] == "mm"
        and "magnification 1.25" in r[1]["label"]
    )
    assert r[2]["rowSpacing"] == 0.1 and "at the detector" in r[2]["label"]
    assert r[3]["unit"] == "px" and r[3]["label"] == "uncalibrated, px"  # a zero spacing is no calibration
    assert r[4]["unit"] == "px" and r[4]["label"] == "uncalibrated, px"
    assert r[5] == pytest.approx(np.hypot(30 * 0.05, 40 * 0.1))  # columns along x, rows along y
    assert r[6] == 5


def test_a_line_profile_samples_a_step_edge(page: Page) -> None:
    r = js(
        page,
        "const w = 20, h = 5; const px = new Uint16Array(w * h);"
        " for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) px[y * w + x] = x < 10 ? 100 : 300;"
        " const read = im.valueReader({bitsStored: 16, signed: false, slope: 1, intercept: 0});"
        " const p = im.lineProfile(px, w, h, {x: 4.5, y: 2.5}, {x: 14.5, y: 2.5}, read,"
        " im.calibration({pixelSpacing: [0.2, 0.2]}));"
        " return {values: Array.from(p.values), positions: Array.from(p.positions), length: p.length, unit:"
        " p.unit};",
    )
    assert r["length"] == pytest.approx(2.0) and r["unit"] == "mm"
    assert len(r["values"]) == 11
    # Sample i is at x = 4.5 + i: the centre of pixel 4 + i; pixel 10 is the first bright one.
    assert r["values"][:6] == [100] * 6 and r["values"][6:] == [300] * 5
    assert r["positions"][5] == pytest.approx(1.0)


def test_roi_statistics_snr_and_normalised_snr(page: Page) -> None:
    rng = np.random.default_rng(5)
    pixels = rng.normal(20000, 150, size=(40, 50)).round().astype(np.uint16)
    r = js(
        page,
        "const px = Uint16Array.from(arg.px); const read ="
        " im.valueReader({bitsStored: 16, signed: false, slope: 1, intercept: -1000});"
        " const rect = im.roiRect({x: 10.7, y: 5.2}, {x: 3.1, y: 30.9}, 50, 40);"
        " const s = im.roiStats(px, 50, rect, read);"
        " return {rect, ...s, snrn: im.normalisedSnr(s.snr, 100), none: im.normalisedSnr(s.snr, ''), empty:"
        " im.roiStats(px, 50, {x0: 3, y0: 3, x1: 3, y1: 9}, read).n};",
        {"px": pixels.ravel().tolist()},
    )
    assert r["rect"] == {"x0": 3, "y0": 5, "x1": 11, "y1": 31}
    region = pixels[5:31, 3:11].astype(np.float64) - 1000
    assert r["n"] == region.size
    assert r["mean"] == pytest.approx(region.mean(), rel=1e-12)
    assert r["sd"] == pytest.approx(region.std(ddof=1), rel=1e-12)
    assert r["snr"] == pytest.approx(region.mean() / region.std(ddof=1), rel=1e-12)
    assert r["snrn"] == pytest.approx(r["snr"] * 88.6 / 100)
    assert r["none"] is None or np.isnan(r["none"])  # NaN comes back as None
    assert r["min"] == region.min() and r["max"] == region.max()
    assert r["empty"] == 0


def test_view_transforms_keep_the_point_under_the_cursor(page: Page) -> None:
    r = js(
        page,
        "const t = im.fitTransform(3000, 2000, 1200, 900); const z = im.zoomAt(t, 3, 400, 300);"
        " return {t, before: im.toImage(t, 400, 300), after: im.toImage(z, 400, 300), back: im.toScreen(z,"
        " 10, 20),"
        " ticks: plot.ticks(0, 10, 5), ticks2: plot.ticks(19766, 40340, 4)};",
    )
    assert r["t"] == {"scale": 0.4, "x": 0, "y": 50}
    assert r["after"]["x"] == pytest.approx(r["before"]["x"]) and r["after"]["y"] == pytest.approx(
        r["before"]["y"]
    )
    assert r["ticks"] == [0, 2, 4, 6, 8, 10]
    assert r["ticks2"] == [20000, 30000, 40000]


# -- DICOM JSON and multipart ------------------------------------------------------------------------
def _json(ds: Dataset) -> dict[str, Any]:
    return json.loads(json.dumps(to_dicom_json(ds)))


def test_image_info_of_a_radiograph_and_of_an_enhanced_ct_frame(page: Page) -> None:
    dx = diconde_dx(rows=16, columns=24, photometric="MONOCHROME1")
    ct = enhanced_ct(frames=3, rows=8, columns=8)
    r = js(page, "return [dc.imageInfo(arg[0]), dc.imageInfo(arg[1], 2)];", [_json(dx), _json(ct)])
    info = r[0]
    assert (info["rows"], info["columns"], info["frames"], info["bitsStored"], info["signed"]) == (
        16,
        24,
        1,
        16,
        False,
    )
    assert info["photometric"] == "MONOCHROME1"
    assert info["pixelSpacing"] == [0.08, 0.08] and info["imagerPixelSpacing"] == [0.1, 0.1]
    assert info["magnification"] == 1.25
    assert info["windows"][0]["center"] == float(dx.WindowCenter)
    ct_info = r[1]
    assert ct_info["frames"] == 3 and ct_info["intercept"] == -1024 and ct_info["rescaleType"] == "HU"
    assert ct_info["pixelSpacing"] == [0.25, 0.25]  # from the shared functional groups
    assert ct_info["windows"][0]["width"] == 3500


def test_multipart_frames_are_parsed_with_and_without_content_length(page: Page) -> None:
    first = np.arange(6, dtype="<u2").tobytes()
    second = b"\r\n--notit\r\n" + bytes(range(250, 256))  # bytes that look like a delimiter
    body = (
        b"--b0\r\nContent-Type: application/octet-stream\r\nContent-Length: 12\r\n\r\n"
        + first
        + b"\r\n--b0\r\nContent-Type: application/octet-stream\r\n\r\n"
        + second
        + b"\r\n--b0--\r\n"
    )
    r = js(
        page,
        "const bytes = new Uint8Array(arg.body); const parts = dc.parseMultipart(bytes, 'multipart/related;"
        ' type="application/octet-stream"; boundary=b0\');'
        " const px = dc.framePixels(parts[0].body,"
        " {rows: 2, columns: 3, samplesPerPixel: 1, bitsAllocated: 16});"
        " return {n: parts.length, type: parts[0].headers['content-type'], first: Array.from(px), odd:"
        " parts[0].body.byteOffset % 2,"
        " second: Array.from(parts[1].body), boundary: dc.boundaryOf('multipart/related; boundary=\"a"
        " b\"')};",
        {"body": list(body)},
    )
    assert r["n"] == 2 and r["type"] == "application/octet-stream"
    assert r["first"] == list(range(6))
    assert r["second"] == list(second)
    assert r["boundary"] == "a b"


def test_multipart_frames_read_as_they_arrive_in_chunks_of_any_size(page: Page) -> None:
    first = np.arange(7, dtype="<u2").tobytes()  # 14 bytes after a head of odd length
    second = np.arange(100, 103, dtype="<u2").tobytes()
    third = b"\r\n--notit\r\n" + bytes(range(250, 256))  # bytes that look like a delimiter
    body = (
        b"preamble\r\n--b0\r\nContent-Type: application/octet-stream\r\nContent-Length: 14\r\n\r\n"
        + first
        + b"\r\n--b0\r\nContent-Length: 6\r\n\r\n"
        + second
        + b"\r\n--b0\r\nContent-Type: application/octet-stream\r\n\r\n"
        + third
        + b"\r\n--b0--\r\nepilogue"
    )
    r = js(
        page,
        "const all = new Uint8Array(arg.body); const out = [];"
        " for (const size of [1, 2, 3, 5, 7, 64, all.length]) {"
        "  const reader = new dc.MultipartReader('multipart/related; boundary=b0'); const expected = [];"
        "  for (let at = 0; at < all.length; at += size) {"
        "   reader.push(all.slice(at, at + size)); expected.push(reader.expected); }"
        "  const parts = reader.finish();"
        "  out.push({size, n: parts.length, type: parts[0].headers['content-type'],"
        "   own: parts.every((p) => p.body.byteOffset === 0"
        " && p.body.byteLength === p.body.buffer.byteLength),"
        "   first: Array.from(dc.framePixels(parts[0].body, {rows: 1, columns: 7, samplesPerPixel: 1,"
        " bitsAllocated: 16})), second: Array.from(new Uint16Array(parts[1].body.buffer)),"
        "   third: Array.from(parts[2].body), expected: Math.max(...expected)}); }"
        " const cut = new dc.MultipartReader('multipart/related; boundary=b0');"
        " cut.push(all.slice(0, 60)); let error = '';"
        " try { cut.finish(); } catch (e) { error = e.message; }"
        " return {out, error};",
        {"body": list(body)},
    )
    head_of_second = body.index(b"\r\n--b0\r\nContent-Length: 6")
    for one in r["out"]:
        assert one["n"] == 3 and one["type"] == "application/octet-stream", one["size"]
        assert one["own"], one["size"]  # each body in its own buffer: aligned, transferable
        assert one["first"] == list(range(7)) and one["second"] == [100, 101, 102], one["size"]
        assert one["third"] == list(third), one["size"]
        # known from each part's headers on: the bytes up to the end of the part with a length
        assert one["expected"] == head_of_second + len(b"\r\n--b0\r\nContent-Length: 6\r\n\r\n") + 6
    assert "cut short" in r["error"]


def test_dates_names_and_values_of_dicom_json(page: Page) -> None:
    r = js(
        page,
        "const ds = {'00100010': {vr: 'PN', Value: [{Alphabetic: 'Turbine^Blade'}]}, '00280030': {vr: 'DS',"
        " Value: ['0.1', '0.2']}};"
        " return [dc.personName(dc.value(ds, '00100010')), dc.numbers(ds, '00280030'), dc.number(ds,"
        " '00280030', 1),"
        " dc.value(ds, '00080020'), dc.isoDate('20240315'), dc.isoDate('2024'), dc.dateRange('2024-01-01',"
        " '2024-12-31'),"
        " dc.dateRange('2024-01-01', ''), dc.dateRange('', '2024-12-31'), dc.dateRange('2024-03-15',"
        " '2024-03-15'), dc.dateRange('', '')];",
    )
    assert r == [
        "Turbine Blade",
        [0.1, 0.2],
        0.2,
        None,
        "2024-03-15",
        "",
        "20240101-20241231",
        "20240101-",
        "-20241231",
        "20240315",
        "",
    ]


# -- the NDE names the viewer ships ------------------------------------------------------------------
def test_the_shipped_attribute_names_match_the_archives_table() -> None:
    shipped = json.loads(ATTRIBUTES_JSON.read_text(encoding="utf-8"))
    expected = attribute_names()
    assert shipped["nde"] == expected["nde"], (
        "viewer/data/attributes.json is stale: python -m tests.support.browser names"
    )
    assert shipped["nde"]["00100020"]["name"] == "Part ID"
    assert shipped["nde"]["00100010"]["name"] == "Component name"
    # Keywords: the file may predate a newer pydicom, but every entry it has must still be right.
    wrong = {tag: kw for tag, kw in shipped["keywords"].items() if expected["keywords"].get(tag, kw) != kw}
    assert not wrong
    assert shipped["keywords"]["00140030"] == "MaterialThickness"


def test_the_viewer_labels_tags_with_nde_names_first(page: Page) -> None:
    r = js(
        page,
        "const names = await (await import('/js/names.js')).ndeNames();"
        " return [names.label('00100020'), names.label('00080050'), names.label('00142002'),"
        " names.label('00090010'),"
        " names.keyword('00100020'), names.byColumn.material_thickness];",
    )
    assert r == [
        "Part ID",
        "Work order",
        "Evaluator Sequence",
        "Private",
        "PatientID",
        "Material thickness (mm)",
    ]


def test_every_viewer_file_is_shipped_in_the_package() -> None:
    """index.html names its modules; each must exist (the package ships the folder as it is)."""
    html = (VIEWER / "index.html").read_text(encoding="utf-8")
    import re

    for ref in re.findall(r'(?:href|src)="([^":#]+)"', html):
        assert (VIEWER / ref).is_file(), ref
    for module in Path(VIEWER / "js").rglob("*.js"):
        for imported in re.findall(r'from "(\.[^"]+)"', module.read_text(encoding="utf-8")):
            assert (module.parent / imported).resolve().is_file(), f"{module.name} imports {imported}"
    # The modules index.html preloads (from its first script, after the first image's requests) are
    # the ones main.js needs, directly or not: a module missing from the list would load late.
    listed = re.search(r"for \(const name of \[([^\]]*)\]\)", html)
    assert listed, "index.html preloads the modules"
    preloaded = {(VIEWER / "js" / f"{name}.js").resolve() for name in re.findall(r'"([^"]+)"', listed[1])}
    needed: set[Path] = set()
    todo = [VIEWER / "js" / "main.js"]
    while todo:
        module = todo.pop()
        for imported in re.findall(r'from "(\.[^"]+)"', module.read_text(encoding="utf-8")):
            found = (module.parent / imported).resolve()
            if found not in needed:
                needed.add(found)
                todo.append(found)
    assert preloaded == needed
