"""Storage commitment (PS3.4 J.3) with pynetdicom as the device, on both backend pairs.

The device stores, asks for commitment (N-ACTION), gets Success at once and the verdict later in an
N-EVENT-REPORT: on the same association while it stays open, otherwise on a new association that the
archive opens to the node registered under the device's AE title, proposing the SCP role for itself.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
    Verification,
)
from sqlalchemy import text

from dicom_nodes.server import SERVICES
from dicom_nodes.transport import tune
from pacs.archive import Archive
from pacs.index.database import create_index_engine
from pacs.index.nodes import Node
from storage.filesystem import FilesystemStore
from storage.s3 import S3Store
from tests.conftest import RunningNode, start_dicom_node
from tests.support.factories import diconde_dx, write
from tests.support.net import free_port

DEVICE = "NDT_DEVICE"
DX = str(DigitalXRayImageStorageForPresentation)
SCPM = str(StorageCommitmentPushModel)
REPORT_WAIT = 60.0  # seconds; a report normally comes within a fraction of one
RELEASE_WAIT = 30.0  # seconds a device waits for the A-RELEASE-RP before it aborts

SUCCESS = 0x0000
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_ACTION = 0x0123


@dataclass
class Report:
    event_type: int
    info: Dataset
    assoc: Association
    acceptor_roles: tuple[bool | None, bool | None]  # (as SCU, as SCP) of the side receiving it
    handler: threading.Thread  # pynetdicom answers the report from a thread of its own


class Reports:
    """What a device's EVT_N_EVENT_REPORT handler received, in order."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Report] = queue.Queue()

    def handle(self, event: Any) -> tuple[int, None]:
        context = next(
            cx for cx in event.assoc.accepted_contexts if cx.context_id == event.context.context_id
        )
        self._queue.put(
            Report(
                event.event_type,
                event.event_information,
                event.assoc,
                (context.as_scu, context.as_scp),
                threading.current_thread(),
            )
        )
        return SUCCESS, None  # status, no Event Reply

    def next(self, timeout: float = REPORT_WAIT) -> Report:
        try:
            report = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no N-EVENT-REPORT within {timeout} s") from None
        # pynetdicom sends the response from the handler's thread, unsynchronised with the device's
        # own sends: a C-STORE sent before it is queued would interleave with it on the wire.
        report.handler.join(timeout)
        return report

    def empty(self) -> bool:
        return self._queue.empty()


@pytest.fixture
def node(archive: Archive) -> Iterator[RunningNode]:
    running = start_dicom_node(archive, services=SERVICES)
    yield running
    running.node.stop(grace=5)  # type: ignore[attr-defined]


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
def device(node: RunningNode, reports: Reports) -> Iterator[Callable[[], Association]]:
    """Opens associations from the device: DX storage, storage commitment and verification."""
    opened: list[Association] = []

    def associate() -> Association:
        ae = AE(DEVICE)
        ae.add_requested_context(DX)
        ae.add_requested_context(SCPM)
        ae.add_requested_context(Verification)
        assoc = ae.associate(
            node.host,
            node.port,
            ae_title=node.ae_title,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)],
        )
        assert assoc.is_established
        # pynetdicom's own race (its reactor can take the response a send_* waits for under load)
        # is a client bug, not the archive's: the device gets the archive's guard against it.
        tune(assoc)
        opened.append(assoc)
        return assoc

    yield associate
    for assoc in opened:
        # pynetdicom's release() waits forever for a reactor thread that has already ended, and the
        # reactor can end between the check and the call: release with a bound, abort past it.
        if assoc.is_established and assoc.is_alive():
            releasing = threading.Thread(target=assoc.release, name="device-release", daemon=True)
            releasing.start()
            releasing.join(RELEASE_WAIT)
            if releasing.is_alive():
                assoc.abort()
        elif assoc.is_established:
            assoc.abort()


def store(assoc: Association, tmp_path: Path, count: int) -> list[str]:
    uids = []
    for i in range(count):
        ds = diconde_dx(part_id=f"PART-{i}", rows=32, columns=32, seed=i)
        status = assoc.send_c_store(write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"))
        assert status.Status == SUCCESS
        uids.append(str(ds.SOPInstanceUID))
    return uids


def action_information(transaction: str, pairs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    ds.ReferencedSOPSequence = [item(sop_class, uid) for sop_class, uid in pairs]
    return ds


def transaction_only(transaction: str) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    return ds


def item(sop_class: str, uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = uid
    return ref


def request_commitment(
    assoc: Association,
    info: Dataset | None,
    *,
    action_type: int = 1,
    instance: str = StorageCommitmentPushModelInstance,
) -> Dataset:
    status, _reply = assoc.send_n_action(info, action_type, SCPM, instance)
    return status


def committed(report: Report) -> list[tuple[str, str]]:
    return [
        (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
        for i in report.info.get("ReferencedSOPSequence", [])
    ]


def failed(report: Report) -> dict[str, tuple[str, int]]:
    return {
        str(i.ReferencedSOPInstanceUID): (str(i.ReferencedSOPClassUID), int(i.FailureReason))
        for i in report.info.get("FailedSOPSequence", [])
    }


def overwrite(archive: Archive, request: pytest.FixtureRequest, uid: str, data: bytes) -> None:
    """Put other bytes under a stored object's key, behind the archive's back."""
    key = archive.retrieve.current(uid).object_key
    store = archive.store
    if isinstance(store, FilesystemStore):
        store.path_for(key).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        client = request.getfixturevalue("s3_server").client()
        client.put_object(store.bucket, key, io.BytesIO(data), len(data))


@contextmanager
def verification_held(archive: Archive, uid: str) -> Iterator[None]:
    """Verification of ``uid`` cannot finish before this block ends, as with slow storage.

    Filesystem: its object becomes a FIFO, and the original bytes are written into it on exit (the
    verifier blocks opening it until then). PostgreSQL: the instance table is locked exclusively, so
    the verifier's first index read waits for the lock. Either way the archive takes and answers
    requests meanwhile: the N-ACTION does not wait for verification.
    """
    store = archive.store
    if isinstance(store, FilesystemStore):
        path = store.path_for(archive.retrieve.current(uid).object_key)
        data = path.read_bytes()
        path.unlink()
        os.mkfifo(path)
        try:
            yield
        finally:
            fd = wait_until(lambda: _open_writer(path), "the verifier to open the object")
            os.set_blocking(fd, True)
            with os.fdopen(fd, "wb") as writer:
                writer.write(data)
        return
    engine = create_index_engine(str(archive.settings.database_url))
    try:
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE instance IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                conn.rollback()
    finally:
        engine.dispose()


def _open_writer(path: Path) -> int | None:
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader yet
            return None
        raise


def wait_until(condition: Callable[[], Any], what: str, timeout: float = REPORT_WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while (value := condition()) in (None, False):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.02)
    return value


def closed(node: RunningNode) -> bool:
    return not node.node.active_associations()  # type: ignore[attr-defined]


def test_report_on_the_open_association_commits_what_was_stored(
    device: Callable[[], Association], reports: Reports, archive: Archive, tmp_path: Path
) -> None:
    assoc = device()
    uids = store(assoc, tmp_path, 3)
    transaction = generate_uid()

    status = request_commitment(assoc, action_information(transaction, [(DX, uid) for uid in uids]))

    assert status.Status == SUCCESS
    report = reports.next()
    assert report.assoc is assoc  # the requesting association, still open
    assert report.event_type == 1  # all committed
    assert report.info.TransactionUID == transaction
    assert committed(report) == [(DX, uid) for uid in uids]
    assert "FailedSOPSequence" not in report.info
    assert report.info.RetrieveAETitle == archive.settings.ae_title
    assert assoc.is_established  # the association goes on after the report
    assert device().send_c_echo().Status == SUCCESS  # and so does the node


def test_failures_are_listed_with_their_reasons(
    device: Callable[[], Association],
    reports: Reports,
    archive: Archive,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    assoc = device()
    good, corrupted, misnamed = store(assoc, tmp_path, 3)
    unknown = generate_uid()
    data = bytearray(archive.store.open(archive.retrieve.current(corrupted).object_key).read())
    data[-1] ^= 0xFF  # one pixel byte: same size, other SHA-256
    overwrite(archive, request, corrupted, bytes(data))
    transaction = generate_uid()
    pairs = [(DX, good), (DX, unknown), (DX, corrupted), (str(CTImageStorage), misnamed)]

    status = request_commitment(assoc, action_information(transaction, pairs))

    assert status.Status == SUCCESS  # the request was received; the verdict comes in the report
    report = reports.next()
    assert report.event_type == 2  # failures exist
    assert report.info.TransactionUID == transaction
    assert committed(report) == [(DX, good)]
    assert failed(report) == {
        unknown: (DX, 0x0112),  # no such object instance
        corrupted: (DX, 0x0110),  # processing failure: stored bytes changed
        misnamed: (str(CTImageStorage), 0x0119),  # class / instance conflict
    }


def test_resending_a_failed_instance_lets_it_be_committed(
    device: Callable[[], Association],
    reports: Reports,
    archive: Archive,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The recovery PS3.4 J.3.3.1.3 (note) describes: re-send what failed, then ask again.

    Evidence for a product gap (see the report): an identical re-send is a duplicate for the ingest
    path even when the stored object no longer verifies, so the damaged object stays and the
    instance can never be committed again.
    """
    assoc = device()
    ds = diconde_dx(part_id="PART-R", rows=32, columns=32, seed=7)
    path = write(ds, tmp_path / "resend.dcm")
    uid = str(ds.SOPInstanceUID)
    assert assoc.send_c_store(path).Status == SUCCESS
    overwrite(archive, request, uid, b"damaged on disk")
    assert request_commitment(assoc, action_information(generate_uid(), [(DX, uid)])).Status == SUCCESS
    assert failed(reports.next()) == {uid: (DX, 0x0110)}

    assert assoc.send_c_store(path).Status == SUCCESS  # the device re-sends the same instance
    assert request_commitment(assoc, action_information(generate_uid(), [(DX, uid)])).Status == SUCCESS

    report = reports.next()
    assert failed(report) == {}
    assert committed(report) == [(DX, uid)]


def test_report_comes_on_a_new_association_after_release(
    device: Callable[[], Association], reports: Reports, archive: Archive, node: RunningNode, tmp_path: Path
) -> None:
    """The device releases right after the N-ACTION response; the archive calls it back.

    The response comes while verification is held: the archive answers before it verifies.
    """
    listener = Reports()
    ae = AE(DEVICE)
    ae.add_supported_context(SCPM, scu_role=False, scp_role=True)  # accept the archive as SCP
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, listener.handle)]
    )
    assert server is not None
    try:
        archive.nodes.add(Node(DEVICE, "127.0.0.1", port, description="test device"))
        assoc = device()
        uids = store(assoc, tmp_path, 3)
        transaction = generate_uid()

        with verification_held(archive, uids[0]):
            status = request_commitment(assoc, action_information(transaction, [(DX, uid) for uid in uids]))
            assoc.release()
            wait_until(lambda: closed(node), "the archive to see the release")

        assert status.Status == SUCCESS
        report = listener.next()
        assert report.event_type == 1
        assert report.info.TransactionUID == transaction
        assert committed(report) == [(DX, uid) for uid in uids]
        assert report.assoc.requestor.ae_title == archive.settings.ae_title  # the archive called
        assert report.acceptor_roles == (True, False)  # role selection: the device is the SCU
        assert reports.empty()  # nothing came on the released association
    finally:
        server.shutdown()


def test_a_device_leaving_before_it_answers_the_report_is_called_back_at_once(
    reports: Reports, archive: Archive, node: RunningNode, tmp_path: Path
) -> None:
    """The report goes out on the open association; the device asks to release instead of answering
    it (what a pynetdicom device does when the report crosses its A-RELEASE-RQ). The archive calls
    the device back within seconds, not after its DIMSE timeout (60 s)."""
    listener = Reports()
    ae = AE(DEVICE)
    ae.add_supported_context(SCPM, scu_role=False, scp_role=True)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, listener.handle)]
    )
    entered, proceed = threading.Event(), threading.Event()

    def never_answers(event: Any) -> tuple[int, None]:
        entered.set()
        proceed.wait(REPORT_WAIT)  # blocks the device's reactor: the report stays unanswered
        return SUCCESS, None

    requester = AE(DEVICE)
    requester.add_requested_context(DX)
    requester.add_requested_context(SCPM)
    assoc = requester.associate(
        node.host, node.port, ae_title=node.ae_title, evt_handlers=[(evt.EVT_N_EVENT_REPORT, never_answers)]
    )
    assert assoc.is_established
    tune(assoc)
    try:
        archive.nodes.add(Node(DEVICE, "127.0.0.1", port, description="test device"))
        uids = store(assoc, tmp_path, 2)
        transaction = generate_uid()
        status = request_commitment(assoc, action_information(transaction, [(DX, uid) for uid in uids]))
        assert status.Status == SUCCESS
        assert entered.wait(REPORT_WAIT), "no report on the open association"
        asked = time.monotonic()
        assoc.acse.send_release(is_response=False)  # A-RELEASE-RQ, the report still unanswered

        report = listener.next(timeout=20)
        assert time.monotonic() - asked < 20  # well inside the archive's 60 s DIMSE timeout
        assert report.info.TransactionUID == transaction
        assert committed(report) == [(DX, uid) for uid in uids]
        assert report.assoc.requestor.ae_title == archive.settings.ae_title  # a new association
        wait_until(lambda: closed(node), "the archive to answer the release")
    finally:
        proceed.set()
        if assoc.is_established:
            assoc.abort()
        server.shutdown()


@pytest.mark.parametrize(
    ("registered", "reason"),
    [
        pytest.param(None, "no node is registered under AE title 'NDT_DEVICE'", id="no-node"),
        pytest.param(False, "NDT_DEVICE@127.0.0.1", id="nothing-listening"),
        pytest.param(True, "(TLS) not established", id="tls-node-down"),
    ],
)
def test_an_undeliverable_report_is_logged_with_its_transaction(
    device: Callable[[], Association],
    archive: Archive,
    node: RunningNode,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    registered: bool | None,
    reason: str,
) -> None:
    """The device released the association and cannot be called back: an error names the transaction."""
    caplog.set_level(logging.INFO, logger="dicom_nodes.commitment")
    if registered is not None:
        archive.nodes.add(Node(DEVICE, "127.0.0.1", free_port(), tls=registered))
    assoc = device()
    uids = store(assoc, tmp_path, 2)
    transaction = generate_uid()

    with verification_held(archive, uids[0]):
        status = request_commitment(assoc, action_information(transaction, [(DX, uid) for uid in uids]))
        assoc.release()
        wait_until(lambda: closed(node), "the archive to see the release")

    assert status.Status == SUCCESS
    record = wait_for_log(caplog, lambda r: r.levelno == logging.ERROR and transaction in r.getMessage())
    assert "report not delivered" in record.getMessage()
    assert reason in record.getMessage()


def wait_for_log(
    caplog: pytest.LogCaptureFixture, match: Callable[[logging.LogRecord], bool]
) -> logging.LogRecord:
    return wait_until(lambda: next((r for r in caplog.records if match(r)), None), "the log record")


@pytest.mark.parametrize(
    ("info", "status", "comment"),
    [
        pytest.param(None, INVALID_ARGUMENT_VALUE, "(0008,1195)", id="no-action-information"),
        pytest.param(
            action_information("", [(DX, "1.2.3")]),
            INVALID_ARGUMENT_VALUE,
            "(0008,1195)",
            id="no-transaction",
        ),
        pytest.param(
            action_information("1.2.3.abc", [(DX, "1.2.3")]),
            INVALID_ARGUMENT_VALUE,
            "(0008,1195)",
            id="transaction-not-a-uid",
        ),
        pytest.param(
            transaction_only("1.2.3"),
            INVALID_ARGUMENT_VALUE,
            "(0008,1199)",
            id="no-referenced-sequence",
        ),
        pytest.param(
            action_information("1.2.3", []), INVALID_ARGUMENT_VALUE, "(0008,1199)", id="empty-sequence"
        ),
        pytest.param(
            action_information("1.2.3", [(DX, "1.2.3"), (DX, "")]),
            INVALID_ARGUMENT_VALUE,
            "(0008,1155)",
            id="item-without-instance",
        ),
        pytest.param(
            action_information("1.2.3", [("", "1.2.3")]),
            INVALID_ARGUMENT_VALUE,
            "(0008,1150)",
            id="item-without-class",
        ),
    ],
)
def test_malformed_requests_are_refused_and_the_node_keeps_serving(
    device: Callable[[], Association],
    reports: Reports,
    tmp_path: Path,
    info: Dataset | None,
    status: int,
    comment: str,
) -> None:
    assoc = device()

    refused = request_commitment(assoc, info)

    assert refused.Status == status
    assert comment in refused.ErrorComment
    # Same association: a good request is still served, and only it gets a report.
    [uid] = store(assoc, tmp_path, 1)
    assert request_commitment(assoc, action_information("1.2.4", [(DX, uid)])).Status == SUCCESS
    report = reports.next()
    assert (report.event_type, report.info.TransactionUID) == (1, "1.2.4")
    assert reports.empty()


def test_unknown_action_type_and_wrong_instance_are_refused(
    device: Callable[[], Association], reports: Reports, tmp_path: Path
) -> None:
    assoc = device()
    [uid] = store(assoc, tmp_path, 1)
    info = action_information(generate_uid(), [(DX, uid)])

    wrong_action = request_commitment(assoc, info, action_type=2)
    wrong_instance = request_commitment(assoc, info, instance="1.2.840.10008.1.20.1.2")

    assert wrong_action.Status == NO_SUCH_ACTION
    assert wrong_instance.Status == NO_SUCH_SOP_INSTANCE
    assert "1.2.840.10008.1.20.1.1" in wrong_instance.ErrorComment
    assert request_commitment(assoc, info).Status == SUCCESS
    assert reports.next().event_type == 1
    assert reports.empty()


def test_undecodable_action_information_is_refused(
    device: Callable[[], Association], archive: Archive, tmp_path: Path
) -> None:
    """Bytes that are no dataset at all, sent below pynetdicom's encoder."""
    assoc = device()
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == SCPM)
    req = N_ACTION()
    req.MessageID = 7
    req.RequestedSOPClassUID = SCPM
    req.RequestedSOPInstanceUID = StorageCommitmentPushModelInstance
    req.ActionTypeID = 1
    # (0008,1199) of undefined length, then bytes that are no item
    req.ActionInformation = io.BytesIO(b"\x08\x00\x99\x11\xff\xff\xff\xffnot an item")

    rsp = send_raw(assoc, req, int(context.context_id or 0))

    assert rsp.Status == INVALID_ARGUMENT_VALUE
    assert "cannot be decoded" in (rsp.ErrorComment or "")
    assert assoc.is_established
    assert device().send_c_echo().Status == SUCCESS  # the node goes on serving


def send_raw(assoc: Association, primitive: Any, context_id: int) -> Any:
    """Send a DIMSE request as built and wait for its response (what ``send_n_action`` does inside)."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(primitive, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert rsp is not None, "no response"
    return rsp
