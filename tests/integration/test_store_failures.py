"""C-STORE of data the archive must refuse, of re-sends, and of transfers cut short.

The rule under test (docs/architecture.md, "Storing an instance"): Success only for data that is
durable and indexed; anything refused gets a failure status whose Error Comment says why and a
warning in the log that names the instance, the peer and the reason, and leaves neither an index row
nor an object behind; one bad instance never stops the node from serving. The node runs in this
process (``dicom_node``), so its log lines are read with ``caplog``.
pynetdicom's chunked send (``_config.STORE_SEND_CHUNKED_DATASET``) puts the dataset bytes of a file on
the wire exactly as they are, so malformed datasets can be sent.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPIPHTJ2KReferenced,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import create_file_meta, encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.archive import Archive
from tests.conftest import RunningNode
from tests.support.factories import diconde_dx, large_multiframe_file
from tests.support.stores import contents

SUCCESS = 0x0000
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNKNOWN_ABSTRACT_SYNTAX = "1.2.3.4.5.6"
ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03  # presentation context results, PS3.8 9.3.3.2
TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04
JPIP = JPIPHTJ2KReferenced  # pixel data on another server: a syntax the archive never stores


@pytest.fixture(autouse=True)
def send_exact_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def dataset_of(ds: Dataset) -> bytes:
    encoded = encode(ds, False, True)  # explicit VR little endian
    assert encoded is not None
    return encoded


def crafted(
    path: Path,
    dataset: bytes,
    *,
    sop_instance: str,
    sop_class: str = DigitalXRayImageStorageForPresentation,
) -> Path:
    """A Part 10 file whose meta names the C-STORE's SOP class and instance and whose dataset is
    ``dataset`` verbatim, whatever it holds."""
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop_instance),
        transfer_syntax=ExplicitVRLittleEndian,
    )
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    path.write_bytes(out.getvalue() + dataset)
    return path


def good_file(tmp_path: Path, name: str = "good.dcm", **kwargs: object) -> tuple[Path, Dataset]:
    ds = diconde_dx(rows=32, columns=32, **kwargs)  # type: ignore[arg-type]
    return crafted(tmp_path / name, dataset_of(ds), sop_instance=ds.SOPInstanceUID), ds


@pytest.fixture
def scu(dicom_node: RunningNode) -> Iterator[Association]:
    ae = AE(ae_title="FAILING_SCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
    assert assoc.is_established
    yield assoc
    if assoc.is_established:
        assoc.release()


def objects(archive: Archive) -> list[str]:
    """Stored object keys and staged files (tests.support.stores): a refused store leaves neither."""
    return sorted(contents(archive.store))


def assert_nothing_kept(archive: Archive) -> None:
    assert set(archive.index.counts().values()) == {0}, archive.index.counts()
    assert objects(archive) == []


# -- refused datasets ------------------------------------------------------------------------------
def _truncated_in_pixels(ds: Dataset) -> tuple[bytes, str]:
    data = dataset_of(ds)
    return data[:-100], ds.SOPInstanceUID


def _truncated_in_header(ds: Dataset) -> tuple[bytes, str]:
    data = dataset_of(ds)
    return data[: data.index(b"Turbine^Blade") + 5], ds.SOPInstanceUID  # inside Patient's Name


def _garbage_after(ds: Dataset) -> tuple[bytes, str]:
    return dataset_of(ds) + b"\x00\x01garbage\xff\xfe" * 3, ds.SOPInstanceUID


def _without_sop_instance_uid(ds: Dataset) -> tuple[bytes, str]:
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    return dataset_of(ds), uid


def _uid_too_long(ds: Dataset) -> tuple[bytes, str]:
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498." + "1" * 50  # 76 characters
    return dataset_of(ds), ds.SOPInstanceUID


class Refusal(NamedTuple):
    make: Callable[[Dataset], tuple[bytes, str]]  # dataset bytes and the C-STORE's SOP Instance UID
    sop_class: str  # the C-STORE's SOP class (its presentation context)
    status: int | None  # None: the 0xCxxx "cannot understand" family (PS3.4 Table B.2-1)
    words: tuple[str, ...]  # what the Error Comment must say


DX = DigitalXRayImageStorageForPresentation
REFUSED = {
    "truncated-in-pixel-data": Refusal(_truncated_in_pixels, DX, None, ("(7FE0,0010)", "claims")),
    "truncated-in-header": Refusal(_truncated_in_header, DX, None, ("(0010,0010)", "claims")),
    "garbage-after-dataset": Refusal(_garbage_after, DX, None, ("invalid VR",)),
    "no-sop-instance-uid": Refusal(
        _without_sop_instance_uid, DX, DATA_SET_DOES_NOT_MATCH_SOP_CLASS, ("SOPInstanceUID", "missing")
    ),
    "sop-class-differs-from-context": Refusal(
        lambda ds: (dataset_of(ds), ds.SOPInstanceUID),
        CTImageStorage,
        DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        ("SOP Class UID", "differs"),
    ),
    "uid-longer-than-64": Refusal(
        _uid_too_long, DX, DATA_SET_DOES_NOT_MATCH_SOP_CLASS, ("StudyInstanceUID", "longer than 64")
    ),
}


def warnings_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_dataset_leaves_nothing_and_node_keeps_storing(
    archive: Archive, scu: Association, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    make, sop_class, expected, words = REFUSED[case]
    dataset, uid = make(diconde_dx(rows=32, columns=32, part_id="BAD-1"))
    path = crafted(tmp_path / "bad.dcm", dataset, sop_instance=uid, sop_class=sop_class)
    caplog.set_level(logging.WARNING, logger="dicom_nodes.store")

    rsp = scu.send_c_store(path)

    status, comment = int(rsp.Status), str(rsp.get("ErrorComment", ""))
    if expected is None:
        assert status & 0xF000 == 0xC000, f"0x{status:04X} {comment}"
    else:
        assert status == expected, f"0x{status:04X} {comment}"
    for word in words:
        assert word in comment, f"Error Comment {comment!r} does not name the problem ({word!r})"
    # The handler logs before it answers: the line is there once the response is.
    [line] = [m for m in warnings_of(caplog, "dicom_nodes.store") if uid in m]
    assert "FAILING_SCU@127.0.0.1" in line, line
    assert f"(0x{status:04X})" in line, line
    for word in words:
        assert word in line, f"log line {line!r} does not name the problem ({word!r})"
    assert_nothing_kept(archive)

    # The same association goes on storing.
    good, ds = good_file(tmp_path, part_id="GOOD-1")
    assert scu.send_c_store(good).Status == SUCCESS
    assert archive.retrieve.current(ds.SOPInstanceUID).dataset_sha256
    assert archive.index.counts()["instances"] == 1
    assert len(objects(archive)) == 1


def test_unknown_sop_class_context_is_rejected_and_known_one_accepted(
    archive: Archive, dicom_node: RunningNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_nodes.negotiation")
    ae = AE(ae_title="MIXED_SCU")
    ae.add_requested_context(UNKNOWN_ABSTRACT_SYNTAX, [ExplicitVRLittleEndian])
    ae.add_requested_context(UNKNOWN_ABSTRACT_SYNTAX, [ImplicitVRLittleEndian])
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, [JPIP])
    assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
    try:
        assert assoc.is_established
        assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [
            DigitalXRayImageStorageForPresentation
        ]
        results = {(str(cx.abstract_syntax), cx.result) for cx in assoc.rejected_contexts}
        assert results == {
            (UNKNOWN_ABSTRACT_SYNTAX, ABSTRACT_SYNTAX_NOT_SUPPORTED),
            (CTImageStorage, TRANSFER_SYNTAXES_NOT_SUPPORTED),
        }
        good, _ = good_file(tmp_path)
        # Negotiation runs, and its log line is written, before the association serves a request.
        assert assoc.send_c_store(good).Status == SUCCESS
    finally:
        assoc.release()

    # One line for the association, not one per refused context, naming who and what and why.
    [line] = warnings_of(caplog, "dicom_nodes.negotiation")
    assert "MIXED_SCU@127.0.0.1" in line, line
    assert "3 of 4 presentation contexts refused" in line, line
    assert f"{UNKNOWN_ABSTRACT_SYNTAX}: abstract syntax not supported" in line, line
    assert line.count(UNKNOWN_ABSTRACT_SYNTAX) == 1, line
    wrong_syntax = f"{CTImageStorage} (CT Image Storage): no acceptable transfer syntax among {JPIP}"
    assert f"{wrong_syntax} (JPIP HTJ2K Referenced)" in line, line
    assert DigitalXRayImageStorageForPresentation not in line, line


def test_fully_accepted_association_logs_no_refused_context(
    dicom_node: RunningNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_nodes.negotiation")
    ae = AE(ae_title="GOOD_SCU")
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
    assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
    try:
        assert assoc.is_established
        assert not assoc.rejected_contexts
        assert assoc.send_c_echo().Status == SUCCESS  # negotiation is over on the archive's side
    finally:
        assoc.release()

    assert warnings_of(caplog, "dicom_nodes.negotiation") == []


def test_a_refused_context_of_a_class_accepted_in_another_is_logged_at_info(
    archive: Archive, dicom_node: RunningNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Senders offer one SOP class in several contexts, one per encoding; one accepted is enough,
    so the refusal of another is no warning."""
    caplog.set_level(logging.INFO, logger="dicom_nodes.negotiation")
    ae = AE(ae_title="MULTI_TS_SCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [JPIP])
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
    assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
    try:
        assert assoc.is_established
        assert [cx.result for cx in assoc.rejected_contexts] == [TRANSFER_SYNTAXES_NOT_SUPPORTED]
        good, _ = good_file(tmp_path)
        # Negotiation runs, and its log line is written, before the association serves a request.
        assert assoc.send_c_store(good).Status == SUCCESS
    finally:
        assoc.release()

    assert warnings_of(caplog, "dicom_nodes.negotiation") == []
    [line] = [r.getMessage() for r in caplog.records if r.name == "dicom_nodes.negotiation"]
    assert "MULTI_TS_SCU@127.0.0.1" in line and "1 of 2 presentation contexts refused" in line, line


# -- re-sends --------------------------------------------------------------------------------------
def test_identical_resend_is_success_without_a_second_version(
    archive: Archive, scu: Association, tmp_path: Path
) -> None:
    path, ds = good_file(tmp_path)
    assert scu.send_c_store(path).Status == SUCCESS
    first = archive.retrieve.current(ds.SOPInstanceUID)

    assert scu.send_c_store(path).Status == SUCCESS

    assert archive.retrieve.versions(ds.SOPInstanceUID) == [first]
    assert archive.index.counts()["versions"] == 1
    assert objects(archive) == [first.object_key]


def test_different_object_under_same_uid_becomes_current_and_keeps_the_old(
    archive: Archive, scu: Association, tmp_path: Path
) -> None:
    path, ds = good_file(tmp_path, seed=1)
    assert scu.send_c_store(path).Status == SUCCESS
    old = archive.retrieve.current(ds.SOPInstanceUID)
    changed, _ = good_file(tmp_path, "changed.dcm", seed=2, sop_uid=ds.SOPInstanceUID)
    assert changed.read_bytes() != path.read_bytes()

    assert scu.send_c_store(changed).Status == SUCCESS

    versions = archive.retrieve.versions(ds.SOPInstanceUID)
    assert [v.id for v in versions] == [old.id, archive.retrieve.current(ds.SOPInstanceUID).id]
    assert versions[1].is_current and not versions[0].is_current
    assert versions[1].dataset_sha256 != old.dataset_sha256
    for version, sent in ((versions[0], path), (versions[1], changed)):
        with archive.retrieve.open(version) as f:
            assert dataset_after_meta(f.read()) == dataset_after_meta(sent.read_bytes())
    assert len(objects(archive)) == 2


def dataset_after_meta(part10: bytes) -> bytes:
    """The dataset bytes of a Part 10 file: what follows (0002,0000) and the group it measures."""
    assert part10[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    return part10[144 + int.from_bytes(part10[140:144], "little") :]


# -- an association aborted mid-transfer -----------------------------------------------------------
A_ABORT_PDU = bytes.fromhex("07000000000400000000")  # PS3.8 9.3.8: source 0 (service user), reason 0


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Bounded wait for a state the server reaches on its own (no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def without_cyclic_gc() -> Iterator[None]:
    """Cleanup after an abort must not wait for Python's cyclic garbage collector, which a busy
    server runs at unpredictable times: keep it off so the test sees what the code itself does."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("without_cyclic_gc")
def test_abort_mid_transfer_leaves_no_object_and_node_keeps_serving(
    archive: Archive, dicom_node: RunningNode, tmp_path: Path
) -> None:
    big = large_multiframe_file(tmp_path / "big.dcm", 32 * 1024 * 1024, rows=256, columns=256)
    ae = AE(ae_title="ABORTING_SCU")
    ae.add_requested_context(MultiFrameGrayscaleWordSecondaryCaptureImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
    assert assoc.is_established

    # pynetdicom queues an A-ABORT behind every P-DATA already queued, so the abort is written
    # straight to the socket from the SCU's DUL thread (the only writer) between two P-DATA PDUs,
    # once the archive has received part of the dataset; then the connection is dropped.
    pdata_sent = 0
    aborted = threading.Event()

    def after_pdu(event: evt.Event) -> None:
        nonlocal pdata_sent
        if type(event.pdu).__name__ != "P_DATA_TF" or aborted.is_set():
            return
        pdata_sent += 1
        if pdata_sent == 6:  # the command, then 5 of the dataset's ~32 PDUs
            sock = event.assoc.dul.socket.socket  # type: ignore[union-attr]
            assert sock is not None
            sock.sendall(A_ABORT_PDU)
            sock.shutdown(socket.SHUT_RDWR)
            aborted.set()

    assoc.bind(evt.EVT_PDU_SENT, after_pdu)
    sender = threading.Thread(target=assoc.send_c_store, args=(big,), daemon=True)
    sender.start()
    assert aborted.wait(30), "the transfer never started"
    sender.join(30)
    node = dicom_node.node
    assert wait_until(lambda: not node.active_associations()), "the aborted association lingers"  # type: ignore[attr-defined]

    # The node goes on serving.
    good, ds = good_file(tmp_path)
    ae = AE(ae_title="NEXT_SCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
    assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
    try:
        assert assoc.send_c_store(good).Status == SUCCESS
    finally:
        assoc.release()
    kept = archive.retrieve.current(ds.SOPInstanceUID).object_key

    # Nothing of the aborted instance is kept: no index row, no object, no partial local copy (an
    # S3 store spools to the incoming folder before the upload).
    assert archive.index.counts()["instances"] == 1
    assert wait_until(lambda: objects(archive) == [kept]), f"partial object left: {objects(archive)}"
    incoming = archive.settings.incoming_dir
    assert wait_until(lambda: not any(p.is_file() for p in incoming.rglob("*"))), (
        f"partial data left in {incoming}: {[p.name for p in incoming.rglob('*')]}"
    )
