"""The inspector's web viewer end to end: Debian's chromium, driven by Playwright, against the served
archive (SQLite + files; the viewer only speaks DICOMweb and /api, so one backend pair is enough).

The archive holds generated phantoms whose answers are known: a radiograph with two markers 400
pixels apart at 0.1 mm per pixel (40.0 mm), a vertical step edge (20000 to 40000) and noise of SD
100; last year's scan of the same part; an uncalibrated radiograph; a multi-frame CT and an
ultrasound cine. Each test leaves a screenshot in tests/artifacts/viewer/.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pydicom.dataset import Dataset

from pacs.archive import Archive, open_archive
from pacs.config import load_settings
from pacs.context import CallerContext
from pacs.dicom.render import Window, window_values
from tests.support.browser import launch, screenshot
from tests.support.factories import diconde_dx, enhanced_ct, us_multiframe, write
from tests.support.web import RunningWeb, running_web

IMPORT = CallerContext(via="import")
ROWS, COLUMNS = 500, 600
MARKERS = ((100, 100), (500, 100))  # (column, row) of the two marker pixels: 400 px apart
EDGE = 300  # first column of the bright half
SPACING = 0.1  # mm per pixel
LOW, HIGH, NOISE = 20000, 40000, 100.0


def phantom(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((ROWS, COLUMNS), float(LOW))
    img[:, EDGE:] = HIGH
    img += rng.normal(0.0, NOISE, size=img.shape)
    for x, y in MARKERS:
        img[y - 1 : y + 2, x - 1 : x + 2] = 65000
    return np.clip(np.rint(img), 0, 65535).astype(np.uint16)


def with_pixels(ds: Dataset, pixels: np.ndarray) -> Dataset:
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.WindowCenter, ds.WindowWidth = "30000", "30000"
    return ds


@dataclass(frozen=True)
class Ref:
    study: str
    series: str
    instance: str
    part: str

    @property
    def key(self) -> str:
        return f"{self.study}/{self.series}/{self.instance}"

    @classmethod
    def of(cls, ds: Dataset) -> Ref:
        return cls(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.PatientID)


@dataclass
class Served:
    web: RunningWeb
    refs: dict[str, Ref]
    pixels: dict[str, np.ndarray]


def populate(archive: Archive, folder: Path) -> tuple[dict[str, Ref], dict[str, np.ndarray]]:
    """The phantoms and a few more parts for the worklist, ingested as `pacs import` would."""
    refs: dict[str, Ref] = {}
    pixels: dict[str, np.ndarray] = {}

    def ingest(name: str, ds: Dataset) -> None:
        archive.ingest.ingest_file(write(ds, folder / f"{name}.dcm"), IMPORT)
        refs[name] = Ref.of(ds)

    spacing, imager = [str(SPACING)] * 2, ["0.125", "0.125"]  # 0.125 / magnification 1.25 = 0.1
    for name, date, seed in (("blade-2023", "20230315", 1), ("blade-2024", "20240315", 2)):
        ds = diconde_dx(
            rows=ROWS,
            columns=COLUMNS,
            StudyDate=date,
            AccessionNumber=f"WO-{date[:4]}",
            PixelSpacing=spacing,
            ImagerPixelSpacing=imager,
        )
        pixels[name] = phantom(seed)
        ingest(name, with_pixels(ds, pixels[name]))
    vane = diconde_dx(
        part_id="VANE-0002", component_name="Turbine^Vane", rows=64, columns=64, StudyDate="20240601"
    )
    ingest("vane", vane)
    bracket = diconde_dx(
        part_id="BRACKET-9",
        component_name="Mounting^Bracket",
        rows=ROWS,
        columns=COLUMNS,
        StudyDate="20240701",
        PixelSpacing=None,
        ImagerPixelSpacing=None,
        EstimatedRadiographicMagnificationFactor=None,
        PixelSpacingCalibrationType=None,
        PixelSpacingCalibrationDescription=None,
    )
    pixels["bracket"] = phantom(3)
    ingest("bracket", with_pixels(bracket, pixels["bracket"]))
    # A frame above the viewer's 4 MiB preview threshold (1000 x 2400 x 2 bytes), over twice the
    # viewport's width (drawn at fit from a 2 x 2 reduction, made while it arrives), beside the bracket.
    large = diconde_dx(
        part_id="BRACKET-9",
        component_name="Mounting^Bracket",
        rows=1000,
        columns=2400,
        study_uid=bracket.StudyInstanceUID,
        series_uid=bracket.SeriesInstanceUID,
        StudyDate="20240701",
        InstanceNumber="2",
        seed=4,
    )
    pixels["large"] = large.pixel_array
    ingest("large", large)
    ingest("ct", enhanced_ct(frames=8, rows=96, columns=96, StudyDate="20240801"))
    ingest("us", us_multiframe(frames=6, StudyDate="20240901"))
    return refs, pixels


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("viewer-archive")
    archive = open_archive(load_settings({"data_dir": folder / "pacs-data"}))
    try:
        refs, pixels = populate(archive, folder)
        with running_web(archive) as web:
            yield Served(web, refs, pixels)
    finally:
        archive.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    screenshot(opened, request.node.name)
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def sign_in(page: Page, served: Served, role: str = "inspector", hash_: str = "") -> None:
    page.goto(f"{served.web.base_url}/viewer/{hash_}")
    page.get_by_test_id("token-input").fill(served.web.token(role) or "")
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("user-role")).to_have_text(role)


def open_image(page: Page, served: Served, *names: str, role: str = "inspector") -> None:
    keys = {"a": served.refs[names[0]].key}
    if len(names) > 1:
        keys["b"] = served.refs[names[1]].key
    query = "&".join(f"{k}={v}" for k, v in keys.items())
    sign_in(page, served, role, f"#/view?{query}&part={served.refs[names[0]].part}")
    for i in range(len(names)):
        expect(page.get_by_test_id(f"viewport-{i}")).to_have_attribute("data-state", "ready")


def transform(page: Page, index: int = 0) -> tuple[float, float, float, dict[str, float]]:
    """The viewport's image-to-screen transform and its canvas' place on the page."""
    data = page.get_by_test_id(f"viewport-{index}").evaluate(
        "el => ({scale: +el.dataset.scale, x: +el.dataset.tx, y: +el.dataset.ty,"
        " box: el.querySelector('canvas').getBoundingClientRect().toJSON()})"
    )
    return data["scale"], data["x"], data["y"], data["box"]


def screen(page: Page, ix: float, iy: float, index: int = 0) -> tuple[float, float]:
    """Page coordinates of the image point (ix, iy) (pixel centres at i + 0.5)."""
    scale, tx, ty, box = transform(page, index)
    return box["x"] + tx + ix * scale, box["y"] + ty + iy * scale


def drag(page: Page, start: tuple[float, float], end: tuple[float, float], button: str = "left") -> None:
    page.mouse.move(*start)
    page.mouse.down(button=button)  # type: ignore[arg-type]
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=3)
    page.mouse.move(*end, steps=3)
    page.mouse.up(button=button)  # type: ignore[arg-type]


def canvas_pixels(page: Page, index: int = 0) -> list[int]:
    """The grey levels of a 64 x 64 block in the middle of the visible canvas."""
    return page.get_by_test_id(f"canvas-{index}").evaluate(
        "c => { const x = c.getContext('2d'); const d = x.getImageData((c.width >> 1) - 32, (c.height >> 1)"
        " - 32, 64, 64).data;"
        " const g = []; for (let i = 0; i < d.length; i += 4) g.push(d[i]); return g; }"
    )


def canvas_grey_at(page: Page, ix: float, iy: float, index: int = 0) -> int:
    scale, tx, ty, box = transform(page, index)
    return int(
        page.get_by_test_id(f"canvas-{index}").evaluate(
            "(c, p) => c.getContext('2d').getImageData(Math.floor(p[0] * devicePixelRatio), Math.floor(p[1]"
            " * devicePixelRatio), 1, 1).data[0]",
            [tx + ix * scale, ty + iy * scale],
        )
    )


def number_in(text: str) -> float:
    found = re.search(r"-?\d+(?:\.\d+)?", text)
    assert found, text
    return float(found[0])


# -- sign-in and roles ------------------------------------------------------------------------------
def test_the_archive_root_opens_the_viewer_and_asks_for_a_token(page: Page, served: Served) -> None:
    page.goto(served.web.base_url + "/")
    assert page.url.startswith(f"{served.web.base_url}/viewer/")
    expect(page.get_by_test_id("signin-form")).to_be_visible()
    page.get_by_test_id("token-input").fill("not-a-token")
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text("This token is not valid")
    assert page.evaluate("sessionStorage.getItem('ndt-viewer.token')") is None

    sign_in(page, served, "inspector")
    expect(page.get_by_test_id("worklist")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('ndt-viewer.token')") == served.web.token("inspector")
    page.reload()  # the session lasts as long as the tab
    expect(page.get_by_test_id("worklist")).to_be_visible()
    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("signin-form")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('ndt-viewer.token')") is None


def test_a_device_token_cannot_view_and_an_expired_one_is_told_so(page: Page, served: Served) -> None:
    page.goto(f"{served.web.base_url}/viewer/")
    page.get_by_test_id("token-input").fill(served.web.token("device") or "")
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text("role (device) cannot")

    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    expired = served.web.archive.users.add("viewer-expired", "inspector", expires_at=past)
    page.get_by_test_id("token-input").fill(expired)
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text("token expired")
    expect(page.get_by_test_id("signin-error")).to_contain_text("administrator")


def test_a_token_that_expires_during_the_session_sends_the_user_back_to_sign_in(
    page: Page, served: Served
) -> None:
    # A session that signed in earlier with a token that has expired since.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    token = served.web.archive.users.add("viewer-lapsed", "inspector", expires_at=past)
    me = {
        "name": "viewer-lapsed",
        "role": "inspector",
        "permissions": ["query", "retrieve"],
        "token_expires_at": None,
    }
    page.goto(f"{served.web.base_url}/viewer/")
    page.evaluate(
        "([t, u]) => { sessionStorage.setItem('ndt-viewer.token', t);"
        " sessionStorage.setItem('ndt-viewer.user', u); }",
        [token, json.dumps(me)],
    )
    page.goto(f"{served.web.base_url}/viewer/#/worklist?part=BLADE-0001")
    expect(page.get_by_test_id("signin-message")).to_contain_text("Your token expired")
    expect(page.get_by_test_id("signin-message")).to_contain_text("administrator")
    # After signing in again the user is back where they were.
    page.get_by_test_id("token-input").fill(served.web.token("inspector") or "")
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("result-row")).to_have_count(2)


def test_an_image_address_opened_with_a_lapsed_token_goes_back_to_sign_in_and_then_to_the_image(
    page: Page, served: Served
) -> None:
    # index.html asks for the image before the modules load: its 401 is handed over, not asked again.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    token = served.web.archive.users.add("viewer-lapsed-image", "inspector", expires_at=past)
    me = {"name": "viewer-lapsed-image", "role": "inspector", "permissions": ["query", "retrieve"]}
    page.goto(f"{served.web.base_url}/viewer/")
    page.evaluate(
        "([t, u]) => { sessionStorage.setItem('ndt-viewer.token', t);"
        " sessionStorage.setItem('ndt-viewer.user', u); }",
        [token, json.dumps(me)],
    )
    answers: list[tuple[int, str]] = []
    page.on("response", lambda response: answers.append((response.status, response.url)))
    ref = served.refs["blade-2024"]
    page.goto("about:blank")  # so that the address below loads the page (sessionStorage stays)
    page.goto(f"{served.web.base_url}/viewer/#/view?a={ref.key}&part={ref.part}")
    expect(page.get_by_test_id("signin-message")).to_contain_text("Your token expired")
    refused = [url for status, url in answers if status == 401]
    assert len(refused) <= 2, refused  # the metadata and the frame, each once
    page.get_by_test_id("token-input").fill(served.web.token("inspector") or "")
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("viewport-0")).to_have_attribute("data-state", "ready")


def test_only_roles_with_the_audit_permission_see_the_evidence_button(
    page: Page, served: Served, tmp_path: Path
) -> None:
    from pacs.services.evidence import verify_package

    sign_in(page, served, "inspector", "#/part/BLADE-0001")
    expect(page.get_by_test_id("part-id")).to_have_text("BLADE-0001")
    expect(page.get_by_test_id("evidence")).to_be_hidden()
    page.get_by_test_id("sign-out").click()
    sign_in(page, served, "auditor", "#/part/BLADE-0001")
    expect(page.get_by_test_id("evidence")).to_be_visible()
    with page.expect_download() as download:
        page.get_by_test_id("evidence").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.startswith("evidence-BLADE-0001") and saved.suffix == ".zip"
    assert verify_package(saved).ok
    expect(page.get_by_test_id("evidence-status")).to_contain_text("Evidence downloaded")


def test_the_part_page_shows_decisions_newest_first_and_marks_superseded_ones(
    page: Page, served: Served
) -> None:
    study = served.refs["blade-2023"].study
    decisions = served.web.archive.decisions
    decisions.record(study, "rework", "undercut at 120 mm", CallerContext(via="http", user="ws-anna"))
    decisions.record(study, "accepted", "", CallerContext(via="http", user="ws-ben"))
    sign_in(page, served, "inspector", "#/part/BLADE-0001")
    card = page.locator(f'[data-testid="inspection"][data-study="{study}"]')
    items = card.get_by_test_id("decision")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_have_attribute("data-current", "true")
    expect(items.nth(0)).to_contain_text("accepted")
    expect(items.nth(0)).to_contain_text("ws-ben")
    expect(items.nth(1)).to_have_attribute("data-current", "false")
    expect(items.nth(1)).to_contain_text("undercut at 120 mm")
    expect(items.nth(1)).to_contain_text("(superseded)")
    other = page.locator(f'[data-testid="inspection"][data-study="{served.refs["blade-2024"].study}"]')
    expect(other.get_by_test_id("decisions")).to_have_text("No decision recorded.")


# -- worklist ---------------------------------------------------------------------------------------
def test_search_by_part_id_is_in_the_url_and_opens_the_part(page: Page, served: Served) -> None:
    sign_in(page, served)
    page.get_by_test_id("search-part").fill("BLADE-0001")
    page.get_by_test_id("search-submit").click()
    expect(page.get_by_test_id("result-row")).to_have_count(2)
    assert "part=BLADE-0001" in page.url
    rows = page.get_by_test_id("result-row")
    # Newest first by default; sorting by date ascending puts 2023 first.
    expect(rows.nth(0).locator('[data-col="date"]')).to_have_text("2024-03-15")
    page.get_by_test_id("sort-date").click()
    expect(rows.nth(0).locator('[data-col="date"]')).to_have_text("2023-03-15")
    assert "sort=date" in page.url and "dir=asc" in page.url
    expect(rows.nth(0).locator('[data-col="images"]')).to_have_text("1")
    expect(rows.nth(0).locator('[data-col="method"]')).to_have_text("DX")
    expect(rows.nth(0).locator('[data-col="order"]')).to_have_text("WO-2023")

    # The URL alone reproduces the search (bookmark, shared link).
    bookmarked = page.url
    page.goto("about:blank")
    page.goto(bookmarked)
    expect(page.get_by_test_id("result-row")).to_have_count(2)
    expect(page.get_by_test_id("search-part")).to_have_value("BLADE-0001")

    rows.nth(0).get_by_test_id("result-part").click()
    expect(page.get_by_test_id("part-id")).to_have_text("BLADE-0001")
    expect(page.get_by_test_id("inspection")).to_have_count(2)
    expect(page.get_by_test_id("timeline-point")).to_have_count(2)
    expect(page.locator(".inspection.current")).to_have_attribute(
        "data-study", served.refs["blade-2023"].study
    )
    expect(page.get_by_test_id("instance-thumb").first).to_have_attribute("src", re.compile("^blob:"))


def test_search_by_wildcard_component_name_method_and_dates(page: Page, served: Served) -> None:
    sign_in(page, served)
    page.get_by_test_id("search-name").fill("turb*")  # names ignore case
    page.get_by_test_id("search-submit").click()
    expect(page.get_by_test_id("result-row")).to_have_count(3)
    parts = page.locator('[data-testid="result-row"] [data-col="part"]').all_inner_texts()
    assert sorted(parts) == ["BLADE-0001", "BLADE-0001", "VANE-0002"]
    assert all(c.startswith("Turbine") for c in page.locator('[data-col="component"]').all_inner_texts())

    page.get_by_test_id("search-from").fill("2024-01-01")
    page.get_by_test_id("search-to").fill("2024-12-31")
    page.get_by_test_id("search-submit").click()
    expect(page.get_by_test_id("result-row")).to_have_count(2)
    assert "from=2024-01-01" in page.url

    page.get_by_test_id("search-clear").click()
    page.get_by_test_id("search-method").select_option("CT")
    page.get_by_test_id("search-submit").click()
    expect(page.get_by_test_id("result-row")).to_have_count(1)
    expect(page.locator('[data-col="part"]')).to_have_text("CASTING-7")


def test_a_server_that_does_not_answer_gets_a_banner_with_retry(page: Page, served: Served) -> None:
    sign_in(page, served)
    page.route("**/dicom-web/**", lambda route: route.abort())
    page.get_by_test_id("search-part").fill("VANE")
    page.get_by_test_id("search-submit").click()
    expect(page.get_by_test_id("banner")).to_be_visible()
    expect(page.get_by_test_id("banner-text")).to_contain_text("The archive does not answer")
    page.unroute("**/dicom-web/**")
    page.get_by_test_id("banner-retry").click()
    expect(page.get_by_test_id("banner")).to_be_hidden()
    expect(page.get_by_test_id("result-row")).to_have_count(1)


# -- the image view ---------------------------------------------------------------------------------
def test_window_level_by_drag_and_numbers_redraws_from_the_16_bit_data(page: Page, served: Served) -> None:
    open_image(page, served, "blade-2024")
    expect(page.get_by_test_id("wl-center")).to_have_value("30000")
    before = canvas_pixels(page)
    page.get_by_test_id("tool-wl").click()
    box = page.get_by_test_id("canvas-0").bounding_box()
    assert box
    middle = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    drag(page, middle, (middle[0] - 150, middle[1] + 40))
    expect(page.get_by_test_id("wl-width")).not_to_have_value("30000")
    assert canvas_pixels(page) != before

    # Numeric entry: a narrow window around the dark half. At 1:1 each canvas pixel is one image
    # pixel: compare it with the server's own PS3.3 windowing of the stored value.
    page.get_by_test_id("wl-center").fill("20000")
    page.get_by_test_id("wl-width").fill("800")
    page.get_by_test_id("wl-width").press("Enter")
    expect(page.get_by_test_id("status-wl")).to_have_text("C 20000 / W 800")
    page.get_by_test_id("one-to-one").click()
    pixels = served.pixels["blade-2024"]
    for ix, iy in ((200, 250), (201, 250), (150, 300), (260, 333)):
        expected = np.clip(
            np.rint(window_values(np.array([float(pixels[iy, ix])]), Window(20000, 800))), 0, 255
        )
        assert canvas_grey_at(page, ix + 0.5, iy + 0.5) == int(expected[0]), (ix, iy)

    # The pixel under the cursor: stored and rescaled value, position.
    page.mouse.move(*screen(page, 210.5, 220.5))
    expect(page.get_by_test_id("status-pos")).to_have_text("x 210, y 220")
    expect(page.get_by_test_id("status-stored")).to_have_text(f"stored {pixels[220, 210]}")
    expect(page.get_by_test_id("status-value")).to_have_text(re.compile(rf"^value {pixels[220, 210]}\b"))

    page.get_by_test_id("invert").click()
    expect(page.get_by_test_id("invert")).to_have_attribute("aria-pressed", "true")
    grey = canvas_grey_at(page, 200.5, 250.5)
    expected = np.clip(
        np.rint(window_values(np.array([float(pixels[250, 200])]), Window(20000, 800))), 0, 255
    )
    assert grey == 255 - int(expected[0])


def test_measuring_the_phantom_gives_the_known_distance_in_mm(page: Page, served: Served) -> None:
    open_image(page, served, "blade-2024")
    expect(page.get_by_test_id("status-cal")).to_have_text("mm (Pixel Spacing)")
    page.keyboard.press("m")
    expect(page.get_by_test_id("tool-measure")).to_have_attribute("aria-pressed", "true")
    (x0, y0), (x1, y1) = MARKERS
    drag(page, screen(page, x0 + 0.5, y0 + 0.5), screen(page, x1 + 0.5, y1 + 0.5))
    expect(page.get_by_test_id("measure-unit")).to_have_text("mm")
    shown = float(page.get_by_test_id("measure-length").inner_text())
    known = (x1 - x0) * SPACING
    assert abs(shown - known) <= 0.01 * known, shown

    # Zoomed in the same distance measures the same (the transform is the view's, not the image's).
    page.get_by_test_id("zoom-in").click()
    page.get_by_test_id("zoom-in").click()
    page.get_by_test_id("fit").click()
    drag(page, screen(page, x0 + 0.5, y0 + 0.5), screen(page, x0 + 0.5, y0 + 300.5))
    assert abs(float(page.get_by_test_id("measure-length").inner_text()) - 30.0) <= 0.3


def test_an_image_without_spacing_measures_in_pixels_and_says_so(page: Page, served: Served) -> None:
    open_image(page, served, "bracket")
    expect(page.get_by_test_id("calibration-label")).to_contain_text("Uncalibrated, px")
    expect(page.get_by_test_id("status-cal")).to_have_text("uncalibrated, px")
    expect(page.get_by_test_id("viewport-calibration-0")).to_have_text("uncalibrated, px")
    page.get_by_test_id("tool-measure").click()
    (x0, y0), (x1, y1) = MARKERS
    drag(page, screen(page, x0 + 0.5, y0 + 0.5), screen(page, x1 + 0.5, y1 + 0.5))
    expect(page.get_by_test_id("measure-unit")).to_have_text("px")
    assert abs(float(page.get_by_test_id("measure-length").inner_text()) - 400) <= 4


def test_a_line_profile_over_the_step_edge_and_roi_statistics(page: Page, served: Served) -> None:
    open_image(page, served, "blade-2024")
    page.get_by_test_id("tool-profile").click()
    start, end = (EDGE - 50 + 0.5, 400.5), (EDGE + 50 + 0.5, 400.5)
    drag(page, screen(page, *start), screen(page, *end))
    expect(page.get_by_test_id("profile-plot")).to_be_visible()
    values = json.loads(page.get_by_test_id("profile-panel").get_attribute("data-values") or "[]")
    assert len(values) >= 90
    assert abs(np.mean(values[:20]) - LOW) < 300 and abs(np.mean(values[-20:]) - HIGH) < 300
    length = float(page.get_by_test_id("profile-length").inner_text().split()[0])
    assert abs(length - 100 * SPACING) <= 0.1
    crossing = next(i for i, v in enumerate(values) if v > (LOW + HIGH) / 2) / (len(values) - 1) * length
    assert abs(crossing - 50 * SPACING) <= 0.3, crossing  # the edge is 5 mm from A
    assert number_in(page.get_by_test_id("profile-max").inner_text()) > HIGH

    page.keyboard.press("r")
    drag(page, screen(page, 20, 200), screen(page, 120, 300))
    rect = page.get_by_test_id("roi-panel").evaluate("el => el.dataset.rect")
    x0, y0, x1, y1 = (int(v) for v in rect.split(","))
    region = served.pixels["blade-2024"][y0:y1, x0:x1].astype(float)
    mean, sd = region.mean(), region.std(ddof=1)
    assert abs(float(page.get_by_test_id("roi-mean").inner_text()) - mean) <= 0.006
    assert abs(float(page.get_by_test_id("roi-sd").inner_text()) - sd) <= 0.006
    assert abs(float(page.get_by_test_id("roi-snr").inner_text()) - mean / sd) <= 0.006
    expect(page.get_by_test_id("roi-snrn")).to_have_text("enter SRb")
    page.get_by_test_id("srb-input").fill("100")
    assert abs(float(page.get_by_test_id("roi-snrn").inner_text()) - mean / sd * 88.6 / 100) <= 0.006


def test_header_view_shows_nde_names(page: Page, served: Served) -> None:
    open_image(page, served, "blade-2024")
    page.keyboard.press("h")
    expect(page.get_by_test_id("header-panel")).to_be_visible()
    part_id = page.locator('[data-testid="header-row"][data-tag="00100020"]')
    expect(part_id).to_contain_text("Part ID")
    expect(part_id).to_contain_text("BLADE-0001")
    expect(page.locator('[data-testid="header-row"][data-tag="00100010"]')).to_contain_text("Component name")
    expect(page.locator('[data-testid="header-row"][data-tag="00140030"]')).to_contain_text(
        "Material thickness"
    )
    page.get_by_test_id("header-filter").fill("work order")
    expect(page.get_by_test_id("header-row")).to_have_count(1)
    expect(page.get_by_test_id("header-row")).to_contain_text("WO-2024")


def test_multi_frame_navigation_by_keys_slider_and_cine(page: Page, served: Served) -> None:
    open_image(page, served, "ct")
    expect(page.get_by_test_id("frame-controls")).to_be_visible()
    expect(page.get_by_test_id("frame-readout")).to_have_text("1 / 8")
    first = canvas_pixels(page)
    page.keyboard.press("ArrowRight")
    expect(page.get_by_test_id("frame-readout")).to_have_text("2 / 8")
    page.keyboard.press("End")
    expect(page.get_by_test_id("frame-readout")).to_have_text("8 / 8")
    page.get_by_test_id("frame-slider").fill("4")
    expect(page.get_by_test_id("frame-readout")).to_have_text("4 / 8")
    expect(page.get_by_test_id("viewport-0")).to_have_attribute("data-frame", "4")
    assert canvas_pixels(page) != first  # the pore is in the middle slices
    # Enhanced CT: modality values are HU (Rescale Intercept -1024 in the functional groups).
    page.mouse.move(*screen(page, 48.5, 48.5))
    stored = int(page.get_by_test_id("status-stored").inner_text().split()[1])
    expect(page.get_by_test_id("status-value")).to_have_text(f"value {stored - 1024} HU")

    page.get_by_test_id("cine-play").click()
    expect(page.get_by_test_id("frame-readout")).not_to_have_text("4 / 8")
    page.keyboard.press(" ")
    expect(page.get_by_test_id("cine-play")).to_have_attribute("aria-pressed", "false")


def test_ultrasound_cine_frames_8_bit(page: Page, served: Served) -> None:
    open_image(page, served, "us")
    expect(page.get_by_test_id("frame-readout")).to_have_text("1 / 6")
    first = canvas_pixels(page)
    page.get_by_test_id("frame-next").click()
    expect(page.get_by_test_id("frame-readout")).to_have_text("2 / 6")
    assert canvas_pixels(page) != first


def test_side_by_side_from_the_part_page_with_synchronised_zoom_and_pan(page: Page, served: Served) -> None:
    sign_in(page, served, "inspector", "#/part/BLADE-0001")
    ticks = page.get_by_test_id("compare-tick")
    expect(ticks).to_have_count(2)
    ticks.nth(0).check()
    expect(page.get_by_test_id("compare-open")).to_be_disabled()
    ticks.nth(1).check()
    page.get_by_test_id("compare-open").click()
    for i in (0, 1):
        expect(page.get_by_test_id(f"viewport-{i}")).to_have_attribute("data-state", "ready")
    expect(page.get_by_test_id("viewport-title-0")).to_contain_text("2024-03-15")
    expect(page.get_by_test_id("viewport-title-1")).to_contain_text("2023-03-15")

    fitted = transform(page, 0)[0]
    page.mouse.move(*screen(page, 300, 250, 0))
    page.mouse.wheel(0, -400)
    page.get_by_test_id("tool-pan").click()
    drag(page, screen(page, 300, 250, 0), screen(page, 260, 230, 0))
    a, b = transform(page, 0), transform(page, 1)
    assert a[0] > fitted * 1.5
    assert a[:3] == b[:3]  # same scale and offset: the same part of both images is on screen

    page.get_by_test_id("sync").uncheck()
    page.mouse.move(*screen(page, 300, 250, 1))
    page.mouse.wheel(0, 300)
    assert transform(page, 0)[0] != transform(page, 1)[0]


def test_a_missing_image_says_so_in_the_viewport(page: Page, served: Served) -> None:
    sign_in(page, served, "inspector", "#/view?a=1.2.3/4.5.6/7.8.9")
    expect(page.get_by_test_id("viewport-0")).to_have_attribute("data-state", "error")
    expect(page.get_by_test_id("viewport-message-0")).to_contain_text("not in the archive")
    # Opened by its address in a signed-in session: asked for before the modules load, the same answer.
    page.reload()
    expect(page.get_by_test_id("viewport-0")).to_have_attribute("data-state", "error")
    expect(page.get_by_test_id("viewport-message-0")).to_contain_text("not in the archive")


def test_an_image_opened_by_its_address_is_asked_for_once_before_the_modules_load(
    page: Page, served: Served
) -> None:
    open_image(page, served, "blade-2024")
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.reload()  # a signed-in session opening the address: index.html asks for the image at once
    expect(page.get_by_test_id("viewport-0")).to_have_attribute("data-state", "ready")
    page.wait_for_function("performance.getEntriesByName('viewer:first-image').length > 0")
    frames = [url for url in asked if url.endswith("/frames/1")]
    metadata = [url for url in asked if url.endswith("/metadata")]
    assert len(frames) == 1 and len(metadata) == 1, asked
    started = page.evaluate(
        "url => ({frame: performance.getEntriesByName(url)[0].startTime,"
        " load: performance.getEntriesByName('viewer:first-image')[0].detail.startedAt})",
        frames[0],
    )
    assert started["frame"] < started["load"]
    # The frame read on the way in is the stored one: the value under the cursor, and the window.
    pixels = served.pixels["blade-2024"]
    page.get_by_test_id("one-to-one").click()
    page.mouse.move(*screen(page, 210.5, 220.5))
    expect(page.get_by_test_id("status-stored")).to_have_text(f"stored {pixels[220, 210]}")
    expect(page.get_by_test_id("wl-center")).to_have_value("30000")


def test_a_large_frame_that_is_slow_to_come_shows_the_servers_rendering_first(
    page: Page, served: Served
) -> None:
    open_image(page, served, "large")  # on loopback: the raw frame, without a preview
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    cdp = page.context.new_cdp_session(page)
    # 4.8 MB at 1.5 MB/s: three seconds for the raw frame, a preview is worth asking for.
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": 1_500_000, "uploadThroughput": -1},
    )
    page.reload()
    expect(page.get_by_test_id("viewport-0")).to_have_attribute("data-state", "preview")
    expect(page.get_by_test_id("viewport-frame-0")).to_have_text("loading the 16-bit data…")
    assert [url for url in asked if "/rendered?viewport=" in url]
    expect(page.get_by_test_id("viewport-0")).to_have_attribute("data-state", "ready", timeout=20_000)
    expect(page.get_by_test_id("viewport-0")).to_have_attribute("data-level", "1")
    # Reduced and windowed while it arrived: the same image as windowing the whole frame again.
    drawn = canvas_pixels(page)
    page.get_by_test_id("wl-width").dispatch_event("change")  # the same window, redrawn
    assert canvas_pixels(page) == drawn
    pixels = served.pixels["large"]
    page.mouse.move(*screen(page, 1700.5, 800.5))
    expect(page.get_by_test_id("status-stored")).to_have_text(f"stored {pixels[800, 1700]}")


def test_keyboard_tools_and_zoom(page: Page, served: Served) -> None:
    open_image(page, served, "blade-2023")
    fitted = transform(page)[0]
    page.keyboard.press("1")
    expect(page.get_by_test_id("status-zoom")).to_have_text("100 %")
    page.keyboard.press("f")
    assert abs(transform(page)[0] - fitted) < 1e-9
    page.keyboard.press("p")
    expect(page.get_by_test_id("tool-pan")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("?")
    expect(page.get_by_test_id("shortcuts")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("shortcuts")).to_be_hidden()
    page.keyboard.press("a")  # automatic window from the histogram
    assert page.get_by_test_id("wl-width").input_value() != "30000"
