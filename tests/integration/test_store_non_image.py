"""Storage SOP classes without pixel data: Raw Data (unprocessed ultrasonic A-scans, a vendor's
private payload) and Encapsulated PDF (an inspection report). A device sends them by C-STORE like
any image; the archive must index them as what they are (their SOP class, no frames, no pixel
data), keep their bytes exactly, and give back the payload a user came for. On both backend pairs,
sent with dcmtk's storescu.
"""

from __future__ import annotations

import base64
import os
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, RawDataStorage
from sqlalchemy import select

from pacs.archive import Archive
from pacs.index.schema import instance, instance_version, series
from tests.conftest import RunningNode
from tests.support.factories import RAW_DATA_CREATOR, dciodvfy_errors, encapsulated_pdf, raw_data, write
from tests.support.web import RunningWeb

STORESCU = "/usr/bin/storescu"
AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
OCTETS = {"Accept": "application/octet-stream"}
FRAMES = {"Accept": 'multipart/related; type="application/octet-stream"'}


@dataclass(frozen=True)
class Kind:
    make: Callable[[], Dataset]
    sop_class_uid: str
    modality: str
    payload_tag: str  # the element a user retrieves: the A-scans, the PDF

    def payload(self, ds: Dataset) -> bytes:
        return bytes(ds[int(self.payload_tag, 16)].value)


def _raw() -> Dataset:
    ds = raw_data(part_id="NONIMG-RAW", scans=8, samples=256)
    assert ds.private_block(0x0009, RAW_DATA_CREATOR)[0x10].tag == 0x00091010
    return ds


KINDS = {
    "raw-data": Kind(_raw, RawDataStorage, "US", "00091010"),
    "encapsulated-pdf": Kind(
        lambda: encapsulated_pdf(part_id="NONIMG-PDF"), EncapsulatedPDFStorage, "DOC", "00420011"
    ),
}


def dataset_bytes(part10: bytes) -> bytes:
    """Everything after the File Meta Information group of a Part 10 file (PS3.10 7.1)."""
    assert part10[128:132] == b"DICM", "not a Part 10 file"
    assert part10[132:140] == b"\x02\x00\x00\x00UL\x04\x00", "no File Meta Information Group Length first"
    (group_length,) = struct.unpack_from("<L", part10, 140)
    return part10[144 + group_length :]


def storescu(node: RunningNode, path: Path) -> subprocess.CompletedProcess[str]:
    """storescu proposing only the file's SOP class (-R), explicit VR little endian first (-xe)."""
    return subprocess.run(
        [STORESCU, "-xe", "-R", "-aet", "NDT_DEVICE", "-aec", node.ae_title, node.host, str(node.port)]
        + [str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def multipart_bodies(content_type: str, body: bytes) -> list[bytes]:
    message = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert message.is_multipart(), content_type
    return [part.get_payload(decode=True) for part in message.get_payload()]  # type: ignore[misc,union-attr]


@pytest.fixture(params=list(KINDS))
def kind(request: pytest.FixtureRequest) -> Kind:
    return KINDS[str(request.param)]


def test_non_image_object_is_indexed_without_frames_and_kept_byte_for_byte(
    archive: Archive, dicom_node: RunningNode, kind: Kind, tmp_path: Path
) -> None:
    ds = kind.make()
    sent = write(ds, tmp_path / "sent.dcm")
    assert dciodvfy_errors(sent) == []

    result = storescu(dicom_node, sent)
    assert result.returncode == 0, result.stdout + result.stderr

    uid = str(ds.SOPInstanceUID)
    query = (
        select(
            instance.c.sop_class_uid,
            instance.c.number_of_frames,
            instance.c.rows,
            instance.c.columns,
            series.c.modality,
            instance_version.c.transfer_syntax_uid,
            instance_version.c.pixel_data_offset,
            instance_version.c.frames,
            instance_version.c.dicom_json,
        )
        .join(series, series.c.id == instance.c.series_id)
        .join(instance_version, instance_version.c.id == instance.c.current_version_id)
        .where(instance.c.sop_instance_uid == uid)
    )
    with archive.engine.connect() as conn:
        (row,) = conn.execute(query).all()
    assert row.sop_class_uid == kind.sop_class_uid
    assert row.modality == kind.modality
    assert row.transfer_syntax_uid == ExplicitVRLittleEndian
    assert (row.number_of_frames, row.rows, row.columns) == (None, None, None)
    assert (row.pixel_data_offset, row.frames) == (None, None)
    assert "7FE00010" not in row.dicom_json
    assert row.dicom_json["00080016"]["Value"] == [kind.sop_class_uid]
    assert kind.payload_tag in row.dicom_json  # inline or as a bulk data reference, but not lost

    # The stored object: a valid Part 10 file whose dataset is the one sent, byte for byte.
    (version,) = archive.retrieve.versions(uid)
    with archive.retrieve.open(version) as f:
        stored = f.read()
    assert dataset_bytes(stored) == dataset_bytes(sent.read_bytes())
    kept = tmp_path / "stored.dcm"
    kept.write_bytes(stored)
    assert dciodvfy_errors(kept) == []


def test_non_image_object_and_its_payload_are_retrieved_over_dicomweb(
    archive: Archive, dicom_node: RunningNode, web: RunningWeb, kind: Kind, tmp_path: Path
) -> None:
    ds = kind.make()
    sent = write(ds, tmp_path / "sent.dcm")
    result = storescu(dicom_node, sent)
    assert result.returncode == 0, result.stdout + result.stderr
    study, series_uid, uid = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    url = f"/dicom-web/studies/{study}/series/{series_uid}/instances/{uid}"

    with web.client("inspector") as http:
        whole = http.get(url, headers=AS_STORED)
        payload = http.get(f"{url}/bulkdata/{kind.payload_tag}", headers=OCTETS)
        metadata = http.get(f"{url}/metadata")
        frames = http.get(f"{url}/frames/1", headers=FRAMES)

    assert whole.status_code == 200, whole.text
    (part,) = multipart_bodies(whole.headers["content-type"], whole.content)
    assert dataset_bytes(part) == dataset_bytes(sent.read_bytes())

    assert payload.status_code == 200, payload.text
    assert payload.content == kind.payload(ds)

    assert metadata.status_code == 200, metadata.text
    (model,) = metadata.json()
    assert model["00080016"]["Value"] == [kind.sop_class_uid]
    assert "7FE00010" not in model
    element = model[kind.payload_tag]
    if "InlineBinary" in element:
        assert base64.b64decode(element["InlineBinary"]) == kind.payload(ds)
    else:
        assert element["BulkDataURI"].endswith(f"/bulkdata/{kind.payload_tag}")

    # No pixel data, so no frames: a client error that says so, not a server error.
    assert 400 <= frames.status_code < 500, (frames.status_code, frames.text)
