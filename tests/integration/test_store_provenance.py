"""Every instance version the index keeps says where it came from: received by C-STORE, from which
calling AE title and peer address, and when. That is the evidence an auditor asks for ("which device
sent this radiograph, and when"), so it is checked after real C-STOREs over TCP, from pynetdicom and
from dcmtk's storescu, on both backend pairs.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from pacs.archive import Archive
from pacs.index.schema import instance, instance_version
from tests.conftest import RunningNode, start_dicom_node
from tests.support.factories import diconde_dx, write

STORESCU = "/usr/bin/storescu"


@dataclass(frozen=True)
class Provenance:
    received_via: str
    source_ae: str | None
    source_address: str | None
    received_at: dt.datetime


def provenance(archive: Archive, sop_instance_uid: str) -> list[Provenance]:
    """What the index records about the origin of each version of an instance, oldest first."""
    query = (
        select(
            instance_version.c.received_via,
            instance_version.c.source_ae,
            instance_version.c.source_address,
            instance_version.c.received_at,
        )
        .join(instance, instance.c.id == instance_version.c.instance_id)
        .where(instance.c.sop_instance_uid == sop_instance_uid)
        .order_by(instance_version.c.id)
    )
    with archive.engine.connect() as conn:
        rows = conn.execute(query).all()
    # Aware, in UTC, on both databases (pacs.index.schema.Timestamp).
    return [Provenance(row.received_via, row.source_ae, row.source_address, row.received_at) for row in rows]


def c_store(node: RunningNode, path: Path, calling_ae: str) -> tuple[int, tuple[str, int]]:
    """C-STORE one file from ``calling_ae``; returns the status and the SCU's own (address, port)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        local = assoc.dul.socket.socket.getsockname()  # type: ignore[union-attr]
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status), (str(local[0]), int(local[1]))


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_c_store_records_calling_ae_peer_address_and_time(
    archive: Archive, dicom_node: RunningNode, tmp_path: Path
) -> None:
    ds = diconde_dx(part_id="PROV-1", rows=32, columns=32)
    path = write(ds, tmp_path / "dx.dcm")

    before = now()
    status, (local_host, local_port) = c_store(dicom_node, path, "XRAY_BAY_7")
    after = now()

    assert status == 0x0000
    (version,) = provenance(archive, ds.SOPInstanceUID)
    assert version.received_via == "c-store"
    assert version.source_ae == "XRAY_BAY_7"
    assert version.source_address is not None
    host, _, port = version.source_address.rpartition(":")
    assert (host, int(port)) == ("127.0.0.1", local_port) and local_host == "127.0.0.1"
    assert before <= version.received_at <= after, (before, version.received_at, after)


def test_each_version_keeps_its_own_sender(archive: Archive, dicom_node: RunningNode, tmp_path: Path) -> None:
    """A corrected object under the same SOP Instance UID from another device is a new version with
    that device's AE title and time; the first version's provenance is not overwritten."""
    first = diconde_dx(part_id="PROV-2", rows=32, columns=32, seed=1)
    second = diconde_dx(part_id="PROV-2", rows=32, columns=32, seed=2, sop_uid=first.SOPInstanceUID)
    second.StudyInstanceUID, second.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID

    status, (_, first_port) = c_store(dicom_node, write(first, tmp_path / "first.dcm"), "DEVICE_A")
    assert status == 0x0000
    between = now()
    status, (_, second_port) = c_store(dicom_node, write(second, tmp_path / "second.dcm"), "DEVICE_B")
    assert status == 0x0000

    versions = provenance(archive, first.SOPInstanceUID)
    assert [(v.source_ae, v.source_address) for v in versions] == [
        ("DEVICE_A", f"127.0.0.1:{first_port}"),
        ("DEVICE_B", f"127.0.0.1:{second_port}"),
    ]
    assert versions[0].received_at <= between <= versions[1].received_at


def test_storescu_sender_is_recorded(archive: Archive, dicom_node: RunningNode, tmp_path: Path) -> None:
    ds = diconde_dx(part_id="PROV-3", rows=32, columns=32)
    path = write(ds, tmp_path / "dx.dcm")

    before = now()
    result = subprocess.run(
        [STORESCU, "-aet", "DCMTK_DEVICE", "-aec", dicom_node.ae_title, dicom_node.host, str(dicom_node.port)]
        + [str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    after = now()

    assert result.returncode == 0, result.stdout + result.stderr
    (version,) = provenance(archive, ds.SOPInstanceUID)
    assert (version.received_via, version.source_ae) == ("c-store", "DCMTK_DEVICE")
    assert version.source_address is not None
    host, _, port = version.source_address.rpartition(":")
    assert host == "127.0.0.1" and port.isdigit() and int(port) != dicom_node.port
    assert before <= version.received_at <= after, (before, version.received_at, after)


def test_an_ipv6_peer_is_recorded_with_its_host_in_brackets(archive: Archive, tmp_path: Path) -> None:
    """``[::1]:40000``, not ``::1:40000``, in the version and in the audit trail: host and port
    stay apart (pacs.context.host_port)."""
    node = start_dicom_node(archive, host="::1")
    try:
        ds = diconde_dx(part_id="PROV-V6", rows=32, columns=32)
        status, (local_host, local_port) = c_store(node, write(ds, tmp_path / "dx.dcm"), "V6_DEVICE")
    finally:
        node.node.stop(grace=5)  # type: ignore[attr-defined]
    assert status == 0x0000 and local_host == "::1"
    (version,) = provenance(archive, ds.SOPInstanceUID)
    assert version.source_address == f"[::1]:{local_port}"
    assert archive.audit.flush()
    [entry] = archive.audit.entries(part_id="PROV-V6", action="store")
    assert entry.address == f"[::1]:{local_port}"
