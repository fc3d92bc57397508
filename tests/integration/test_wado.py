"""WADO-RS and WADO-URI as workstations reach them: httpx and the real dicomweb-client, on both
backend pairs; and a large instance downloaded from ``pacs serve`` in bounded server memory."""

from __future__ import annotations

import io
import threading
import time
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from pacs.archive import Archive
from pacs.context import CallerContext
from tests.support.factories import diconde_dx, enhanced_ct, large_multiframe_file, write
from tests.support.web import RunningWeb

IMPORT = CallerContext(via="import")
ELE = str(ExplicitVRLittleEndian)
J2K = str(JPEG2000Lossless)
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"  # lossy


def _ingest(archive: Archive, ds: Dataset, folder: Path, transfer_syntax: str | None = None) -> Path:
    path = write(ds, folder / f"{ds.SOPInstanceUID}.dcm", transfer_syntax)
    archive.ingest.ingest_file(path, IMPORT)
    return path


def _uids(ds: Dataset) -> tuple[str, str, str]:
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response, parsed by the stdlib."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message: Message = message_from_bytes(head + response.content)
    assert message.is_multipart(), response.headers["content-type"]
    return [
        (part.get("Content-Type", ""), part.get_payload(decode=True))  # type: ignore[misc]
        for part in message.get_payload()  # type: ignore[union-attr]
    ]


def _client(web: RunningWeb) -> DICOMwebClient:
    return DICOMwebClient(web.dicomweb, headers=web.headers("inspector"))


@pytest.fixture
def dx(archive: Archive, tmp_path: Path) -> tuple[Dataset, Path]:
    ds = diconde_dx(rows=128, columns=96)
    return ds, _ingest(archive, ds, tmp_path)


# -- instances ---------------------------------------------------------------------------------------
def test_instance_with_any_transfer_syntax_is_the_stored_file_byte_for_byte(web: RunningWeb, dx: Any) -> None:
    ds, path = dx
    study, series, sop = _uids(ds)
    with web.client("inspector") as http:
        response = http.get(
            f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    ((content_type, body),) = _parts(response)
    assert content_type == f"application/dicom; transfer-syntax={ELE}"
    assert body == path.read_bytes()
    assert int(response.headers["content-length"]) == len(response.content)


def test_study_and_series_with_dicomweb_client_are_the_stored_files(
    web: RunningWeb, archive: Archive, tmp_path: Path
) -> None:
    first = diconde_dx(rows=64, columns=64, seed=1)
    study, series, _ = _uids(first)
    second = diconde_dx(rows=64, columns=64, seed=2, study_uid=study, series_uid=series)
    other_series = diconde_dx(rows=64, columns=64, seed=3, study_uid=study)
    stored = {
        str(ds.SOPInstanceUID): _ingest(archive, ds, tmp_path, transfer_syntax).read_bytes()
        for ds, transfer_syntax in (
            (first, None),
            (second, str(ImplicitVRLittleEndian)),
            (other_series, None),
        )
    }
    client = _client(web)
    wildcard = (("application/dicom", "*"),)
    got = client.retrieve_study(study, media_types=wildcard)
    assert {str(d.SOPInstanceUID) for d in got} == set(stored)
    for ds in got:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert pydicom.dcmread(io.BytesIO(stored[str(ds.SOPInstanceUID)])).PixelData == ds.PixelData
    in_series = client.retrieve_series(study, series, media_types=wildcard)
    assert {str(d.SOPInstanceUID) for d in in_series} == {
        str(first.SOPInstanceUID),
        str(second.SOPInstanceUID),
    }
    implicit = next(d for d in in_series if d.SOPInstanceUID == second.SOPInstanceUID)
    assert implicit.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian  # untouched

    # Without a transfer-syntax parameter, the PS3.18 default: Explicit VR Little Endian.
    with web.client("inspector") as http:
        response = http.get(
            f"/dicom-web/studies/{study}/series/{series}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
    assert response.status_code == 200
    parts = _parts(response)
    assert [c for c, _ in parts] == [f"application/dicom; transfer-syntax={ELE}"] * 2
    converted = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(io.BytesIO(b)) for _, b in parts)}
    assert converted[str(second.SOPInstanceUID)].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(converted[str(second.SOPInstanceUID)].pixel_array, second.pixel_array)
    assert (
        parts[0][1] == stored[str(first.SOPInstanceUID)] or parts[1][1] == stored[str(first.SOPInstanceUID)]
    )


def test_jpeg2000_instance_as_explicit_little_endian_has_the_same_pixels(
    web: RunningWeb, archive: Archive, tmp_path: Path
) -> None:
    ds = diconde_dx(rows=64, columns=64, seed=5)
    path = _ingest(archive, ds, tmp_path, J2K)
    study, series, sop = _uids(ds)
    client = _client(web)
    got = client.retrieve_instance(study, series, sop, media_types=(("application/dicom", ELE),))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    stored = client.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
    assert stored.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert stored.PixelData == pydicom.dcmread(path).PixelData

    with web.client("inspector") as http:
        url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
        # The stored syntax by name: untouched.
        named = http.get(
            url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={J2K}'}
        )
        assert _parts(named)[0][1] == path.read_bytes()
        # A lossy syntax cannot be made from the archive's evidence: 406 with the reason.
        lossy = http.get(
            url,
            headers={
                "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'
            },
        )
        assert lossy.status_code == 406
        assert "lossless" in lossy.json()["detail"]
        # Single part application/dicom for one instance.
        single = http.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert single.status_code == 200
        assert single.headers["content-type"] == f"application/dicom; transfer-syntax={J2K}"
        assert single.content == path.read_bytes()


def test_retrieve_errors_have_reasons(web: RunningWeb, dx: Any) -> None:
    ds, _ = dx
    study, series, sop = _uids(ds)
    with web.client("inspector") as http:
        missing = http.get(f"/dicom-web/studies/{study}/series/{series}/instances/1.2.3.4")
        assert missing.status_code == 404 and "1.2.3.4" in missing.json()["detail"]
        elsewhere = http.get(f"/dicom-web/studies/1.2.3/series/{series}/instances/{sop}")
        assert elsewhere.status_code == 404
        assert http.get("/dicom-web/studies/1.2.3").status_code == 404
        wrong = http.get(f"/dicom-web/studies/{study}", headers={"Accept": "image/png"})
        assert wrong.status_code == 406 and "multipart/related" in wrong.json()["detail"]
        single_study = http.get(f"/dicom-web/studies/{study}", headers={"Accept": "application/dicom"})
        assert single_study.status_code == 406
        bad = http.get(f"/dicom-web/studies/{study}", headers={"Accept": "nonsense"})
        assert bad.status_code == 400


# -- metadata ----------------------------------------------------------------------------------------
def test_metadata_equals_what_pydicom_reads_less_bulk_data(
    web: RunningWeb, archive: Archive, tmp_path: Path
) -> None:
    ds = enhanced_ct(frames=4, rows=32, columns=32)
    path = _ingest(archive, ds, tmp_path)
    study, series, sop = _uids(ds)
    client = _client(web)
    model = client.retrieve_instance_metadata(study, series, sop)
    expected = pydicom.dcmread(path, stop_before_pixels=True).to_json_dict(bulk_data_threshold=1024)
    pixel = model.pop("7FE00010")
    # Absolute, from the request's Host header (dicomweb-client sends one without the port).
    bulk_path = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010"
    assert urlsplit(pixel["BulkDataURI"]).path == bulk_path
    assert set(model) == set(expected)
    for tag, element in expected.items():
        if "InlineBinary" in element or "BulkDataURI" in element:
            continue
        assert model[tag] == element, tag
    series_models = client.retrieve_series_metadata(study, series)
    assert [m["00080018"]["Value"][0] for m in series_models] == [sop]
    with web.client("inspector") as http:
        study_models = http.get(f"/dicom-web/studies/{study}/metadata")
        assert study_models.status_code == 200
        assert study_models.headers["content-type"] == "application/dicom+json"
        assert len(study_models.json()) == 1
        # The pixel data BulkDataURI serves the pixel data by byte ranges.
        bulk = http.get(bulk_path, headers={"Accept": "application/octet-stream"})
        assert study_models.json()[0]["7FE00010"]["BulkDataURI"] == f"{web.base_url}{bulk_path}"
        assert bulk.status_code == 200
        assert bulk.content == pydicom.dcmread(path).PixelData
        assert http.get(f"/dicom-web/studies/{study}/series/1.2.3/metadata").status_code == 404


def test_metadata_never_opens_the_stored_object(web: RunningWeb, archive: Archive, dx: Any) -> None:
    ds, _ = dx
    study, series, sop = _uids(ds)
    version = archive.retrieve.current(sop)
    archive.store.delete(version.object_key)  # metadata comes from the index alone
    with web.client("inspector") as http:
        response = http.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata")
        assert response.status_code == 200
        assert response.json()[0]["00080018"]["Value"] == [sop]
        gone = http.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}")
        assert gone.status_code == 404 and "fsck" in gone.json()["detail"]


# -- frames ------------------------------------------------------------------------------------------
def test_frames_of_an_enhanced_ct_equal_pydicoms_frames(
    web: RunningWeb, archive: Archive, tmp_path: Path
) -> None:
    ds = enhanced_ct(frames=6, rows=32, columns=32)
    _ingest(archive, ds, tmp_path)
    study, series, sop = _uids(ds)
    frames = _client(web).retrieve_instance_frames(study, series, sop, frame_numbers=[1, 3, 6])
    pixels = ds.pixel_array
    assert [bytes(f) for f in frames] == [pixels[i].astype("<u2").tobytes() for i in (0, 2, 5)]
    with web.client("inspector") as http:
        base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames"
        response = http.get(
            f"{base}/2", headers={"Accept": 'multipart/related; type="application/octet-stream"'}
        )
        ((content_type, body),) = _parts(response)
        assert content_type == f"application/octet-stream; transfer-syntax={ELE}"
        assert body == pixels[1].astype("<u2").tobytes()
        assert http.get(f"{base}/7").status_code == 404
        assert http.get(f"{base}/0").status_code == 400
        assert http.get(f"{base}/1,x").status_code == 400
        assert (
            http.get(f"{base}/1", headers={"Accept": 'multipart/related; type="image/jp2"'}).status_code
            == 406
        )


def test_frames_of_a_jpeg2000_object_as_stored_or_decoded(
    web: RunningWeb, archive: Archive, tmp_path: Path
) -> None:
    ds = enhanced_ct(frames=3, rows=32, columns=32)
    path = _ingest(archive, ds, tmp_path, J2K)
    study, series, sop = _uids(ds)
    stored = pydicom.dcmread(path)
    from pydicom.encaps import generate_frames

    bitstreams = list(generate_frames(stored.PixelData, number_of_frames=3))
    client = _client(web)
    as_stored = client.retrieve_instance_frames(study, series, sop, frame_numbers=[2])
    assert [bytes(f) for f in as_stored] == [bitstreams[1]]
    decoded = client.retrieve_instance_frames(
        study, series, sop, frame_numbers=[1, 3], media_types=(("application/octet-stream", ELE),)
    )
    assert [bytes(f) for f in decoded] == [ds.pixel_array[i].astype("<u2").tobytes() for i in (0, 2)]
    with web.client("inspector") as http:
        response = http.get(
            f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1",
            headers={"Accept": 'multipart/related; type="image/jp2"'},
        )
        assert _parts(response) == [(f"image/jp2; transfer-syntax={J2K}", bitstreams[0])]
        rle = http.get(
            f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1",
            headers={"Accept": f'multipart/related; type="image/dicom-rle"; transfer-syntax={RLELossless}'},
        )
        assert rle.status_code == 406


# -- WADO-URI ----------------------------------------------------------------------------------------
def test_wado_uri_sends_the_object_and_renders_jpeg(
    web: RunningWeb, archive: Archive, tmp_path: Path
) -> None:
    ds = diconde_dx(rows=64, columns=64, seed=9)
    path = _ingest(archive, ds, tmp_path, J2K)
    study, series, sop = _uids(ds)
    query = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    with web.client("inspector") as http:
        stored = http.get(
            "/dicom-web/wado", params={**query, "contentType": "application/dicom", "transferSyntax": J2K}
        )
        assert stored.status_code == 200
        assert stored.content == path.read_bytes()
        default = http.get("/dicom-web/wado", params={**query, "contentType": "application/dicom"})
        converted = pydicom.dcmread(io.BytesIO(default.content))
        assert converted.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(converted.pixel_array, ds.pixel_array)
        jpeg = http.get("/dicom-web/wado", params={**query, "contentType": "image/jpeg", "columns": "32"})
        assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
        assert jpeg.content[:2] == b"\xff\xd8"
        from PIL import Image

        assert Image.open(io.BytesIO(jpeg.content)).size == (32, 32)
        assert http.get("/dicom-web/wado", params={**query, "requestType": "X"}).status_code == 400
        assert http.get("/dicom-web/wado", params={**query, "objectUID": "1.2.3"}).status_code == 404
        assert http.get("/dicom-web/wado", params={**query, "contentType": "text/html"}).status_code == 406
        missing = http.get("/dicom-web/wado", params={"requestType": "WADO", "studyUID": study})
        assert missing.status_code in (400, 422)


# -- memory ------------------------------------------------------------------------------------------
LARGE = 400 * 1024**2
MAX_GROWTH_MB = 100


def test_a_large_instance_streams_out_of_pacs_serve_in_bounded_memory(tmp_path: Path) -> None:
    from pacs.archive import open_archive
    from pacs.config import load_settings
    from tests.support.serve import PacsServer, proc_status_kib

    data = tmp_path / "archive"
    big = large_multiframe_file(tmp_path / "big.dcm", LARGE, part_id="BIG-WADO")
    header = pydicom.dcmread(big, stop_before_pixels=True)
    study, series, sop = _uids(header)
    archive = open_archive(load_settings({"data_dir": data}))
    try:
        archive.ingest.ingest_file(big, IMPORT)
        token = archive.users.add("wado-memory", "inspector")  # the last line `pacs users add` prints
    finally:
        archive.close()
    size = big.stat().st_size

    with PacsServer(["--data-dir", data], workers=1, log_path=tmp_path / "serve.log") as server:
        (worker,) = server.worker_pids()
        rss_before = proc_status_kib(worker, "VmRSS")
        peak = [rss_before]
        done = threading.Event()

        def sample() -> None:  # VmHWM may already be high from start-up; sample the RSS instead
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], proc_status_kib(worker, "VmRSS"))
                except (KeyError, OSError):  # the worker is exiting
                    return
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        received = 0
        head = b""
        t0 = time.monotonic()
        url = f"{server.http_url}/dicom-web/studies/{study}/series/{series}/instances/{sop}"
        headers = {
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
            "Authorization": f"Bearer {token}",
        }
        with httpx.stream("GET", url, headers=headers, timeout=300) as response:
            assert response.status_code == 200, response.read()
            for chunk in response.iter_raw(1 << 20):
                if len(head) < 4096:
                    head += chunk[:4096]
                received += len(chunk)
        elapsed = time.monotonic() - t0
        done.set()
        sampler.join()
        assert server.worker_pids() == [worker], "the worker was replaced during the download"
    growth_mb = (peak[0] - rss_before) / 1024
    figures = (
        f"worker VmRSS before {rss_before / 1024:.0f} MB, peak {peak[0] / 1024:.0f} MB, growth "
        f"{growth_mb:.0f} MB (limit {MAX_GROWTH_MB} MB); {size / 1e6:.0f} MB in {elapsed:.1f} s"
    )
    print(f"\n{figures}")
    assert received > size and b"DICM" in head
    assert growth_mb < MAX_GROWTH_MB, figures


def test_bulk_data_uris_of_other_elements_serve_their_values(
    web: RunningWeb, archive: Archive, tmp_path: Path
) -> None:
    ds = diconde_dx(rows=64, columns=64, seed=11)
    lut = bytes(range(256)) * 8  # 2048 bytes: over the index's 1024-byte inline limit
    ds.add_new(0x00281201, "OW", lut)  # Red Palette Color Lookup Table Data
    icon = Dataset()
    icon.Rows = icon.Columns = 32
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(range(256)) * 5
    ds.IconImageSequence = [icon]
    _ingest(archive, ds, tmp_path)
    study, series, sop = _uids(ds)
    with web.client("inspector") as http:
        (model,) = http.get(f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata").json()
        top = urlsplit(model["00281201"]["BulkDataURI"]).path
        nested = urlsplit(model["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]).path
        assert top.endswith("/bulkdata/00281201")
        assert nested.endswith("/bulkdata/00880200/1/7FE00010")
        ((content_type, body),) = _parts(http.get(top))
        assert content_type == "application/octet-stream" and body == lut
        single = http.get(nested, headers={"Accept": "application/octet-stream"})
        assert single.content == bytes(icon.PixelData)
        base = top.rsplit("/", 1)[0]
        assert http.get(f"{base}/00281202").status_code == 404
        assert http.get(f"{base}/00880200/2/7FE00010").status_code == 404
        assert http.get(f"{base}/nothex").status_code == 400
