"""Rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.7) as a viewer reaches them, on both
backend pairs: the PNG carries the windowed pixels, JPEG has the right size, parameters are checked."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless

from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.dicom.render import Window, window_values
from tests.support.factories import diconde_dx, enhanced_ct, write
from tests.support.web import RunningWeb

IMPORT = CallerContext(via="import")


def _ingest(archive: Archive, ds: Dataset, folder: Path, transfer_syntax: str | None = None) -> None:
    archive.ingest.ingest_file(write(ds, folder / f"{ds.SOPInstanceUID}.dcm", transfer_syntax), IMPORT)


def _instance_url(web: RunningWeb, ds: Dataset) -> str:
    return (
        f"{web.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _image(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    return image


def _windowed(pixels: np.ndarray, window: Window, intercept: float = 0.0) -> np.ndarray:
    return np.clip(np.rint(window_values(pixels + intercept, window)), 0, 255).astype(np.uint8)


@pytest.fixture
def dx(archive: Archive, tmp_path: Path) -> Dataset:
    ds = diconde_dx(rows=48, columns=64)
    _ingest(archive, ds, tmp_path)
    return ds


def test_rendered_png_holds_the_windowed_pixels(web: RunningWeb, dx: Dataset) -> None:
    with web.client("inspector") as client:
        stored = client.get(f"{_instance_url(web, dx)}/rendered", headers={"Accept": "image/png"})
        explicit = client.get(
            f"{_instance_url(web, dx)}/rendered",
            params={"window": "30000,8000,linear"},
            headers={"Accept": "image/png"},
        )
    assert stored.status_code == 200, stored.text
    assert stored.headers["content-type"] == "image/png"
    own = Window(float(dx.WindowCenter), float(dx.WindowWidth))
    assert np.array_equal(np.asarray(_image(stored.content)), _windowed(dx.pixel_array, own))
    assert np.array_equal(
        np.asarray(_image(explicit.content)), _windowed(dx.pixel_array, Window(30000, 8000))
    )


def test_rendered_defaults_to_jpeg_with_quality_and_viewport(web: RunningWeb, dx: Dataset) -> None:
    url = f"{_instance_url(web, dx)}/rendered"
    with web.client("inspector") as client:
        default = client.get(url)
        small = client.get(url, params={"quality": "10"}, headers={"Accept": "image/*"})
        fitted = client.get(url, params={"viewport": "32,32"})
        region = client.get(url, params={"viewport": "10,10,0,0,10,10", "accept": "image/png"})
    assert default.status_code == 200, default.text
    assert default.headers["content-type"] == "image/jpeg"
    assert _image(default.content).size == (64, 48)
    assert small.headers["content-type"] == "image/jpeg"
    assert len(small.content) < len(default.content)
    assert _image(fitted.content).size == (32, 24)
    assert region.headers["content-type"] == "image/png"
    own = _windowed(dx.pixel_array, Window(float(dx.WindowCenter), float(dx.WindowWidth)))
    assert np.array_equal(np.asarray(_image(region.content)), own[:10, :10])


def test_unacceptable_media_types_and_bad_parameters_are_refused(web: RunningWeb, dx: Dataset) -> None:
    url = f"{_instance_url(web, dx)}/rendered"
    with web.client("inspector") as client:
        not_acceptable = client.get(url, headers={"Accept": "application/dicom"})
        gif = client.get(url, params={"accept": "image/gif"})
        png_refused = client.get(url, headers={"Accept": "image/png;q=0, image/jpeg;q=0"})
        bad_window = client.get(url, params={"window": "100,zero,linear"})
        bad_function = client.get(url, params={"window": "100,10,cubic"})
        bad_viewport = client.get(url, params={"viewport": "0,10"})
        bad_quality = client.get(url, params={"quality": "101"})
        bad_frames = client.get(f"{_instance_url(web, dx)}/frames/0/rendered")
    assert not_acceptable.status_code == 406
    assert gif.status_code == 406
    assert png_refused.status_code == 406
    assert bad_window.status_code == 400 and "window" in bad_window.json()["detail"]
    assert bad_function.status_code == 400 and "sigmoid" in bad_function.json()["detail"]
    assert bad_viewport.status_code == 400 and "viewport" in bad_viewport.json()["detail"]
    assert bad_quality.status_code == 400 and "quality" in bad_quality.json()["detail"]
    assert bad_frames.status_code == 400


def test_unknown_instances_and_frames_are_404(web: RunningWeb, dx: Dataset) -> None:
    with web.client("inspector") as client:
        missing = client.get(f"{web.dicomweb}/studies/1.2.3/series/4.5.6/instances/7.8.9/rendered")
        wrong_study = client.get(
            f"{web.dicomweb}/studies/1.2.3/series/{dx.SeriesInstanceUID}/instances/{dx.SOPInstanceUID}/rendered"
        )
        beyond = client.get(f"{_instance_url(web, dx)}/frames/2/rendered")
        no_series = client.get(f"{web.dicomweb}/studies/{dx.StudyInstanceUID}/series/4.5.6/thumbnail")
    assert missing.status_code == 404
    assert wrong_study.status_code == 404
    assert beyond.status_code == 404 and "frame" in beyond.json()["detail"]
    assert no_series.status_code == 404


def test_frames_of_an_enhanced_ct_use_their_functional_groups(
    web: RunningWeb, archive: Archive, tmp_path: Path
) -> None:
    ds = enhanced_ct(frames=5, rows=32, columns=32)
    _ingest(archive, ds, tmp_path, RLELossless)
    shared = ds.SharedFunctionalGroupsSequence[0]
    window = Window(
        float(shared.FrameVOILUTSequence[0].WindowCenter), float(shared.FrameVOILUTSequence[0].WindowWidth)
    )
    intercept = float(shared.PixelValueTransformationSequence[0].RescaleIntercept)
    with web.client("inspector") as client:
        third = client.get(f"{_instance_url(web, ds)}/frames/3,4/rendered", headers={"Accept": "image/png"})
        sigmoid = client.get(
            f"{_instance_url(web, ds)}/frames/2/rendered",
            params={"window": "500,1000,sigmoid"},
            headers={"Accept": "image/png"},
        )
    assert third.status_code == 200, third.text
    assert np.array_equal(np.asarray(_image(third.content)), _windowed(ds.pixel_array[2], window, intercept))
    expected = _windowed(ds.pixel_array[1], Window(500, 1000, "sigmoid"), intercept)
    assert np.array_equal(np.asarray(_image(sigmoid.content)), expected)


def test_a_jpeg_2000_instance_renders_like_its_native_twin(
    web: RunningWeb, archive: Archive, tmp_path: Path
) -> None:
    native = diconde_dx(rows=64, columns=64, seed=3)
    j2k = diconde_dx(
        rows=64, columns=64, seed=3, study_uid=native.StudyInstanceUID, series_uid=native.SeriesInstanceUID
    )
    _ingest(archive, native, tmp_path)
    _ingest(archive, j2k, tmp_path, JPEG2000Lossless)
    with web.client("inspector") as client:
        renders = [
            client.get(f"{_instance_url(web, ds)}/rendered", headers={"Accept": "image/png"})
            for ds in (native, j2k)
        ]
    assert [r.status_code for r in renders] == [200, 200]
    assert np.array_equal(np.asarray(_image(renders[0].content)), np.asarray(_image(renders[1].content)))


def test_thumbnails_of_instance_frame_series_and_study(
    web: RunningWeb, archive: Archive, tmp_path: Path
) -> None:
    ds = diconde_dx(rows=300, columns=200)
    _ingest(archive, ds, tmp_path)
    url = _instance_url(web, ds)
    with web.client("inspector") as client:
        responses = {
            "instance": client.get(f"{url}/thumbnail"),
            "frame": client.get(f"{url}/frames/1/thumbnail", headers={"Accept": "image/png"}),
            "series": client.get(
                f"{web.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail"
            ),
            "study": client.get(f"{web.dicomweb}/studies/{ds.StudyInstanceUID}/thumbnail"),
            "viewport": client.get(f"{url}/thumbnail", params={"viewport": "50,50"}),
        }
        study_rendered = client.get(f"{web.dicomweb}/studies/{ds.StudyInstanceUID}/rendered")
    for name, response in responses.items():
        assert response.status_code == 200, (name, response.text)
    assert _image(responses["instance"].content).size == (85, 128)
    assert responses["frame"].headers["content-type"] == "image/png"
    assert _image(responses["series"].content).size == (85, 128)
    assert _image(responses["study"].content).size == (85, 128)
    assert _image(responses["viewport"].content).size == (33, 50)
    assert study_rendered.status_code == 400


def test_dicomweb_client_retrieves_rendered_instances_and_frames(web: RunningWeb, dx: Dataset) -> None:
    client = DICOMwebClient(web.dicomweb, headers=web.headers("inspector"))
    uids = (str(dx.StudyInstanceUID), str(dx.SeriesInstanceUID), str(dx.SOPInstanceUID))
    png = client.retrieve_instance_rendered(*uids, media_types=("image/png",))
    assert _image(png).size == (64, 48)
    jpeg = client.retrieve_instance_frames_rendered(*uids, frame_numbers=[1], media_types=("image/jpeg",))
    assert _image(jpeg).format == "JPEG"


def test_a_device_cannot_view_rendered_images(web: RunningWeb, dx: Dataset) -> None:
    with web.client("device") as client:
        response = client.get(f"{_instance_url(web, dx)}/rendered")
    assert response.status_code == 403
