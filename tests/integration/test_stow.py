"""STOW-RS (PS3.18 10.5) against the archive's HTTP face, on both backend pairs.

Real clients: dicomweb-client's ``store_instances`` and httpx with hand-made multipart/related
bodies. What is asserted is what a client and the archive show afterwards: the response data set
and status, the index (current version, versions) and the stored bytes, which must equal the
part that was sent, byte for byte; and that a part that fails leaves no object in the store.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from sqlalchemy import text

from pacs.archive import Archive
from pacs.errors import NotFound
from tests.support.factories import diconde_dx, large_multiframe_file, part10_bytes
from tests.support.stores import contents
from tests.support.web import RunningWeb

BOUNDARY = "stow-test-boundary-7f3a"
DICOM_RELATED = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'

REFERENCED = "00081199"
FAILED = "00081198"
RETRIEVE_URL = "00081190"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"


def body_of(parts: list[tuple[str | None, bytes]], *, close: bool = True) -> bytes:
    """A multipart/related body; each part is (Content-Type or None for no header, bytes)."""
    out = io.BytesIO()
    for content_type, data in parts:
        out.write(f"--{BOUNDARY}\r\n".encode())
        if content_type is not None:
            out.write(f"Content-Type: {content_type}\r\n".encode())
        out.write(b"\r\n")
        out.write(data)
        out.write(b"\r\n")
    if close:
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def stow(web: RunningWeb, parts: list[tuple[str | None, bytes]], study: str | None = None) -> httpx.Response:
    path = "/dicom-web/studies" + (f"/{study}" if study else "")
    with web.client() as client:
        return client.post(path, content=body_of(parts), headers={"Content-Type": DICOM_RELATED})


def stored_bytes(archive: Archive, uid: str) -> bytes:
    with archive.retrieve.open(archive.retrieve.current(uid)) as f:
        return f.read()


def object_count(archive: Archive) -> int:
    """Stored objects and staged files (tests.support.stores): a failed part leaves neither."""
    return len(contents(archive.store))


def items(body: dict, tag: str) -> list[dict]:
    return list(body.get(tag, {}).get("Value", []))


def value(item: dict, tag: str) -> object:
    return item[tag].get("Value", [None])[0]


def dx(study: str | None = None, **kwargs: object) -> Dataset:
    return diconde_dx(study_uid=study, rows=64, columns=64, **kwargs)  # type: ignore[arg-type]


# -- dicomweb-client ------------------------------------------------------------------------------
def test_dicomweb_client_stores_instances_byte_exact(web: RunningWeb, archive: Archive) -> None:
    study = generate_uid()
    datasets = [dx(study, seed=1), dx(study, seed=2, part_id="BLADE-0002")]
    client = DICOMwebClient(url=web.dicomweb, headers=web.headers())

    response = client.store_instances(datasets)

    referenced = response.ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in referenced] == [d.SOPInstanceUID for d in datasets]
    assert all(r.ReferencedSOPClassUID == d.SOPClassUID for r, d in zip(referenced, datasets, strict=True))
    assert "FailedSOPSequence" not in response
    # URLs follow the request's Host header, which dicomweb-client sends without the port.
    assert response.RetrieveURL.endswith(f"/dicom-web/studies/{study}")
    d = datasets[0]
    assert referenced[0].RetrieveURL.endswith(
        f"/dicom-web/studies/{study}/series/{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}"
    )
    for ds in datasets:
        # dicomweb-client sends pydicom's dcmwrite of the dataset: file meta and data set without
        # the Part 10 preamble, which the archive puts in front; every sent byte is kept as sent.
        sent = io.BytesIO()
        pydicom.dcmwrite(sent, ds)
        assert stored_bytes(archive, ds.SOPInstanceUID) == bytes(128) + b"DICM" + sent.getvalue()
        version = archive.retrieve.current(ds.SOPInstanceUID)
        with archive.engine.connect() as conn:
            via = conn.execute(
                text("SELECT received_via FROM instance_version WHERE id = :id"), {"id": version.id}
            ).scalar_one()
        assert via == "stow"


def test_dicomweb_client_stores_into_a_named_study(web: RunningWeb, archive: Archive) -> None:
    study = generate_uid()
    ds = dx(study)
    # Small chunks: dicomweb-client then sends the body with chunked transfer encoding.
    client = DICOMwebClient(url=web.dicomweb, headers=web.headers(), chunk_size=4096)

    response = client.store_instances([ds], study_instance_uid=study)

    assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert response.RetrieveURL == f"{web.dicomweb}/studies/{study}"
    assert archive.retrieve.current(ds.SOPInstanceUID).sop_instance_uid == ds.SOPInstanceUID


# -- hand-made bodies -----------------------------------------------------------------------------
def test_good_and_bad_parts_202_good_ones_stored_byte_exact(web: RunningWeb, archive: Archive) -> None:
    study = generate_uid()
    good1, good2 = dx(study, seed=3), dx(study, seed=4)
    bytes1, bytes2 = part10_bytes(good1), part10_bytes(good2)
    cut = part10_bytes(dx(study, seed=5))[:-1000]  # a DICOM part missing its last kilobyte

    response = stow(
        web,
        [
            ("application/dicom", bytes1),
            ("text/plain", b"not an instance"),
            ("application/dicom", b"\x00" * 200 + b"not DICOM"),
            ("application/dicom", cut),
            (None, bytes2),  # no part Content-Type: the body's type, application/dicom
        ],
    )

    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert [value(i, SOP_INSTANCE) for i in items(body, REFERENCED)] == [
        good1.SOPInstanceUID,
        good2.SOPInstanceUID,
    ]
    failed = items(body, FAILED)
    assert [value(i, FAILURE_REASON) for i in failed] == [0xC000, 0xC000, 0xC000]
    assert value(failed[2], SOP_INSTANCE) is not None  # the cut part's header was readable
    warnings = response.headers.get_list("warning")
    assert len(warnings) == 3 and "part 2" in warnings[0] and "text/plain" in warnings[0]
    assert stored_bytes(archive, good1.SOPInstanceUID) == bytes1
    assert stored_bytes(archive, good2.SOPInstanceUID) == bytes2
    assert object_count(archive) == 2  # nothing of the failed parts was kept


def test_instance_of_another_study_fails_and_is_not_stored(web: RunningWeb, archive: Archive) -> None:
    study, other = generate_uid(), generate_uid()
    mine, foreign = dx(study, seed=6), dx(other, seed=7)

    response = stow(
        web, [("application/dicom", part10_bytes(mine)), ("application/dicom", part10_bytes(foreign))], study
    )

    assert response.status_code == 202, response.text
    body = response.json()
    (failed,) = items(body, FAILED)
    assert value(failed, FAILURE_REASON) == 0xA900
    assert value(failed, SOP_INSTANCE) == foreign.SOPInstanceUID
    assert value(failed, SOP_CLASS) == foreign.SOPClassUID
    assert other in response.headers["warning"]
    assert value(body, RETRIEVE_URL) == f"{web.dicomweb}/studies/{study}"
    with pytest.raises(NotFound):
        archive.retrieve.current(foreign.SOPInstanceUID)
    assert object_count(archive) == 1


def test_all_parts_failing_is_409(web: RunningWeb, archive: Archive) -> None:
    study = generate_uid()
    response = stow(
        web,
        [("application/dicom", part10_bytes(dx(generate_uid()))), ("application/octet-stream", b"xyz")],
        study,
    )
    assert response.status_code == 409, response.text
    assert [value(i, FAILURE_REASON) for i in items(response.json(), FAILED)] == [0xA900, 0xC000]
    assert REFERENCED not in response.json()
    assert object_count(archive) == 0


@pytest.mark.parametrize(
    "sop_class",
    [
        pytest.param("1.2.840.10008.1.1", id="verification"),
        pytest.param("1.2.840.10008.5.1.4.1.2.2.1", id="a-query-model"),
        pytest.param("1.2.826.0.1.3680043.8.498.1", id="unknown"),
    ],
)
def test_a_sop_class_the_archive_does_not_store_is_0122(
    web: RunningWeb, archive: Archive, sop_class: str
) -> None:
    """As on the DICOM port, where such a presentation context is refused: PS3.4 B.2.3 0x0122."""
    good, odd = dx(seed=11), dx(seed=12)
    odd.SOPClassUID = sop_class
    odd.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    parts: list[tuple[str | None, bytes]] = [("application/dicom", part10_bytes(x)) for x in (good, odd)]
    response = stow(web, parts)
    assert response.status_code == 202, response.text
    (failed,) = items(response.json(), FAILED)
    assert value(failed, FAILURE_REASON) == 0x0122
    assert value(failed, SOP_CLASS) == sop_class
    assert value(failed, SOP_INSTANCE) == odd.SOPInstanceUID
    assert f"SOP Class {sop_class} is not a storage SOP class" in response.headers["warning"]
    with pytest.raises(NotFound):
        archive.retrieve.current(odd.SOPInstanceUID)
    assert object_count(archive) == 1  # the good part only


def test_instance_without_series_uid_is_a_mismatch(web: RunningWeb, archive: Archive) -> None:
    ds = dx(SeriesInstanceUID=None)
    response = stow(web, [("application/dicom", part10_bytes(ds))])
    assert response.status_code == 409
    (failed,) = items(response.json(), FAILED)
    assert value(failed, FAILURE_REASON) == 0xA900
    assert value(failed, SOP_INSTANCE) == ds.SOPInstanceUID
    assert "SeriesInstanceUID (0020,000E) is missing" in response.headers["warning"]
    assert object_count(archive) == 0


def test_identical_resend_is_success_and_keeps_one_version(web: RunningWeb, archive: Archive) -> None:
    ds = dx()
    data = part10_bytes(ds)
    first = stow(web, [("application/dicom", data)])
    again = stow(web, [("application/dicom", data), ("application/dicom", data)])
    assert first.status_code == again.status_code == 200, again.text
    assert len(items(again.json(), REFERENCED)) == 2
    assert len(archive.retrieve.versions(ds.SOPInstanceUID)) == 1
    assert object_count(archive) == 1
    assert stored_bytes(archive, ds.SOPInstanceUID) == data


def test_changed_resend_becomes_a_new_version(web: RunningWeb, archive: Archive) -> None:
    ds = dx()
    first = part10_bytes(ds)
    ds.SeriesDescription = "re-read"
    second = part10_bytes(ds)
    assert stow(web, [("application/dicom", first)]).status_code == 200
    assert stow(web, [("application/dicom", second)]).status_code == 200
    assert len(archive.retrieve.versions(ds.SOPInstanceUID)) == 2
    assert stored_bytes(archive, ds.SOPInstanceUID) == second


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ("application/json", 415),
        (f'multipart/related; type="application/dicom+json"; boundary="{BOUNDARY}"', 415),
        (f"multipart/form-data; boundary={BOUNDARY}", 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_request_media_type_is_checked(
    web: RunningWeb, archive: Archive, content_type: str, status: int
) -> None:
    with web.client() as client:
        response = client.post(
            "/dicom-web/studies",
            content=body_of([("application/dicom", part10_bytes(dx()))]),
            headers={"Content-Type": content_type},
        )
    assert response.status_code == status
    assert response.json()["detail"]
    assert object_count(archive) == 0


def test_body_without_parts_is_400(web: RunningWeb) -> None:
    with web.client() as client:
        for content in (b"", b"just some text, no delimiter"):
            response = client.post(
                "/dicom-web/studies", content=content, headers={"Content-Type": DICOM_RELATED}
            )
            assert response.status_code == 400
            assert "no part" in response.json()["detail"]


def test_body_missing_its_closing_delimiter(web: RunningWeb, archive: Archive) -> None:
    """Parts are independent: the complete one is stored, the cut-off last one fails."""
    whole, last = dx(seed=8), dx(seed=9)
    content = body_of([("application/dicom", part10_bytes(whole))])[: -len(f"--{BOUNDARY}--\r\n")]
    content += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part10_bytes(last)[:5000]
    with web.client() as client:
        response = client.post("/dicom-web/studies", content=content, headers={"Content-Type": DICOM_RELATED})
    assert response.status_code == 202, response.text
    (failed,) = items(response.json(), FAILED)
    assert value(failed, FAILURE_REASON) == 0xC000
    assert "closing boundary" in response.headers["warning"]
    assert archive.retrieve.current(whole.SOPInstanceUID)
    with pytest.raises(NotFound):
        archive.retrieve.current(last.SOPInstanceUID)
    assert object_count(archive) == 1


def test_only_a_cut_off_part_is_400(web: RunningWeb, archive: Archive) -> None:
    content = f"--{BOUNDARY}\r\n\r\n".encode() + part10_bytes(dx())[:3000]
    with web.client() as client:
        response = client.post("/dicom-web/studies", content=content, headers={"Content-Type": DICOM_RELATED})
    assert response.status_code == 400
    assert value(items(response.json(), FAILED)[0], FAILURE_REASON) == 0xC000
    assert object_count(archive) == 0


def test_preamble_before_the_first_delimiter_is_ignored(web: RunningWeb, archive: Archive) -> None:
    ds = dx()
    content = b"This is a multipart message.\r\n" + body_of([("application/dicom", part10_bytes(ds))])
    with web.client() as client:
        response = client.post("/dicom-web/studies", content=content, headers={"Content-Type": DICOM_RELATED})
    assert response.status_code == 200, response.text
    assert stored_bytes(archive, ds.SOPInstanceUID) == part10_bytes(ds)


def test_client_going_away_keeps_complete_parts_only(web: RunningWeb, archive: Archive) -> None:
    whole, cut = dx(seed=10), dx(seed=11)
    head = body_of([("application/dicom", part10_bytes(whole))], close=False)
    head += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part10_bytes(cut)[:4000]
    host, port = web.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        request = (
            f"POST /dicom-web/studies HTTP/1.1\r\nHost: {host}\r\nContent-Type: {DICOM_RELATED}\r\n"
            f"Content-Length: {len(head) + 100_000}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in web.headers().items())
            + "\r\n"
        )
        sock.sendall(request.encode() + head)
        _wait_for(lambda: _is_stored(archive, whole.SOPInstanceUID))
    # The server notices the closed connection and discards the open part.
    _wait_for(lambda: object_count(archive) == 1)
    with pytest.raises(NotFound):
        archive.retrieve.current(cut.SOPInstanceUID)


def _is_stored(archive: Archive, uid: str) -> bool:
    try:
        archive.retrieve.current(uid)
    except NotFound:
        return False
    return True


def _wait_for(condition: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# -- memory -----------------------------------------------------------------------------------------
BIG = 300 * 1024**2
# The bound for a 2 GB retrieve. Measured: about 10 MB on a filesystem store; about 65 MB
# on S3, whose commit uploads the object in 16 MiB parts, two at once (storage/s3.py), whatever
# its size.
MAX_GROWTH_MB = 100


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise KeyError("VmRSS")


def test_a_300mb_part_streams_in_bounded_memory(web: RunningWeb, archive: Archive, tmp_path: Path) -> None:
    """The server runs in this process: its resident memory may grow by a few chunks, not a part."""
    path = large_multiframe_file(tmp_path / "big.dcm", BIG, part_id="BIG-STOW", sop_uid=generate_uid())
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with path.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                sent.update(chunk)
                yield chunk
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    before = _rss_kib()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_kib())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    try:
        with httpx.Client(base_url=web.base_url, headers=web.headers(), timeout=600) as client:
            response = client.post(
                "/dicom-web/studies", content=body(), headers={"Content-Type": DICOM_RELATED}
            )
    finally:
        done.set()
        sampler.join()
    elapsed = time.monotonic() - t0
    assert response.status_code == 200, response.text
    growth_mb = (peak - before) / 1024
    print(f"STOW {os.path.getsize(path) / 1e6:.0f} MB in {elapsed:.1f} s, RSS growth {growth_mb:.1f} MB")
    assert growth_mb < MAX_GROWTH_MB
    version = archive.retrieve.current(uid)
    assert version.size == path.stat().st_size
    stored = hashlib.sha256()
    with archive.retrieve.open(version) as f:
        while chunk := f.read(1024 * 1024):
            stored.update(chunk)
    assert stored.hexdigest() == sent.hexdigest()


def test_unique_boundary_in_pixel_data_is_not_confused(web: RunningWeb, archive: Archive) -> None:
    """Bytes that look like a delimiter without the leading CRLF stay part of the data."""
    ds = dx()
    ds.ImageComments = f"--{BOUNDARY} inside a value"
    data = part10_bytes(ds)
    assert stow(web, [("application/dicom", data)]).status_code == 200
    assert stored_bytes(archive, ds.SOPInstanceUID) == data


# -- roles --------------------------------------------------------------------------------------------
def test_a_device_token_stores_and_is_recorded(web: RunningWeb, archive: Archive) -> None:
    ds = dx()
    with web.client("device") as client:
        response = client.post(
            "/dicom-web/studies",
            content=body_of([("application/dicom", part10_bytes(ds))]),
            headers={"Content-Type": DICOM_RELATED},
        )
    assert response.status_code == 200, response.text
    version = archive.retrieve.current(ds.SOPInstanceUID)
    with archive.engine.connect() as conn:
        by = conn.execute(
            text("SELECT received_by FROM instance_version WHERE id = :id"), {"id": version.id}
        ).scalar_one()
    assert by is not None and by.startswith("test-device-")


@pytest.mark.parametrize("role", ["inspector", "auditor", None])
def test_roles_without_store_cannot_stow(web: RunningWeb, archive: Archive, role: str | None) -> None:
    with web.client(role) as client:
        response = client.post(
            "/dicom-web/studies/1.2.3",
            content=body_of([("application/dicom", part10_bytes(dx()))]),
            headers={"Content-Type": DICOM_RELATED},
        )
    assert response.status_code == (401 if role is None else 403)
    assert object_count(archive) == 0


def test_malformed_part_header_ends_the_body_after_stored_parts(web: RunningWeb, archive: Archive) -> None:
    first, later = dx(seed=12), dx(seed=13)
    content = body_of([("application/dicom", part10_bytes(first))], close=False)
    content += f"--{BOUNDARY}\r\nX-Long: {'x' * 10_000}\r\n\r\nbroken\r\n".encode()
    content += body_of([("application/dicom", part10_bytes(later))])
    with web.client() as client:
        response = client.post("/dicom-web/studies", content=content, headers={"Content-Type": DICOM_RELATED})
    assert response.status_code == 202, response.text
    (failed,) = items(response.json(), FAILED)
    assert value(failed, FAILURE_REASON) == 0xC000
    assert "malformed multipart body" in response.headers["warning"]
    assert _is_stored(archive, first.SOPInstanceUID)
    assert not _is_stored(archive, later.SOPInstanceUID)  # nothing after a framing error is read
    assert object_count(archive) == 1
