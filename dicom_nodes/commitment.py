"""Storage Commitment Push Model SCP (PS3.4 J.3): N-ACTION in, N-EVENT-REPORT out.

The N-ACTION (Action Type 1, Request Storage Commitment) is checked and answered at once: Success
means "request received" (PS3.4 J.3.2.1.3). The referenced instances are then verified on a thread
of this process (:class:`pacs.services.commitment.CommitmentService` reads every object, which takes
as long as its size), and the result goes back as an N-EVENT-REPORT (PS3.4 J.3.3.1.2):

* on the requesting association while it is still open (sent between two messages of the device,
  never while a request of the device waits for its answer);
* otherwise on a new association to the node registered (``pacs nodes add``) under the requester's
  calling AE title, on which the archive proposes the SCP role for the Storage Commitment SOP Class
  through SCP/SCU Role Selection (PS3.4 J.2.1, J.3.3.1.3; PS3.7 D.3.3.4): the association requestor
  is otherwise the SCU, and only the SCP sends N-EVENT-REPORT.

Nodes marked TLS are not called back yet (as for the archive's other outgoing associations).
A report that cannot be delivered is logged as an error naming the transaction; it is not kept. The
device, which must say how long it waits for a report (PS3.4 J.3.6.1.1), asks again with a new
Transaction UID, and verification is repeated from the stored bytes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from dicom_nodes import store, tls
from dicom_nodes.policy import caller
from dicom_nodes.transport import reactor_idle, tune

if TYPE_CHECKING:
    from dicom_nodes.server import Registry
from pacs.config import Settings
from pacs.context import CallerContext
from pacs.index.nodes import Node, NodeRepository
from pacs.services.commitment import (
    CommitmentRequest,
    CommitmentResult,
    CommitmentService,
    Failure,
    FailureReason,
    InvalidRequest,
    Reference,
    check_uid,
)

log = logging.getLogger(__name__)

SOP_CLASS = str(StorageCommitmentPushModel)  # 1.2.840.10008.1.20.1
WELL_KNOWN_INSTANCE = str(StorageCommitmentPushModelInstance)  # 1.2.840.10008.1.20.1.1, PS3.4 J.3.5
TRANSFER_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID, PS3.4 Table J.3-1
ALL_COMMITTED = 1  # Event Type ID "Storage Commitment Request Successful", PS3.4 Table J.3-2
FAILURES_EXIST = 2  # Event Type ID "Storage Commitment Request Complete - Failures Exist"
VERIFICATIONS_AT_ONCE = 4  # per process: verification reads whole objects; more would only queue on I/O
QUIET_ATTEMPTS = 20  # tries to find the requesting association between two messages of the device
QUIET_WAIT = 0.25  # seconds between those tries
PAUSE_WAIT = 5.0  # seconds to wait for the association's reactor to finish its current message
#: Once the device has asked to release, how long the report's response is still awaited on its
#: association. PS3.8 (Sta7) lets the device answer, dcmtk does, pynetdicom cannot (its state
#: machine refuses to send in Sta7): without a bound the archive would wait the whole DIMSE
#: timeout before calling the device back.
LEAVING_GRACE = 2.0
LOGGED_FAILURES = 20  # failed instances logged one by one per transaction; the rest are counted

# N-ACTION statuses, PS3.7 10.1.4.1.10 and Annex C.
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115  # the Action Information (the "argument") is missing or malformed
NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_ACTION = 0x0123


def register(registry: Registry) -> None:
    """Storage Commitment Push Model SCP; reports go back on the same or a new association."""
    archive = registry.archive
    service = CommitmentService(archive.index, archive.store, store.storage_sop_classes())
    reporter = Reporter(service, archive.nodes, registry.settings, registry.ae)
    registry.add_context(SOP_CLASS, TRANSFER_SYNTAXES)
    registry.bind(evt.EVT_N_ACTION, handle_n_action, [reporter])


def handle_n_action(event: Event, reporter: Reporter) -> tuple[Dataset, Dataset | None]:
    """Accept or refuse a storage commitment request; the verdict per instance comes later."""
    request = cast(N_ACTION, event.request)
    assoc = event.assoc
    ctx = caller(event, "n-action")
    if str(request.RequestedSOPClassUID) != SOP_CLASS:
        return _refuse(NO_SUCH_SOP_CLASS, f"N-ACTION for SOP class {request.RequestedSOPClassUID}", ctx)
    if str(request.RequestedSOPInstanceUID) != WELL_KNOWN_INSTANCE:
        return _refuse(NO_SUCH_SOP_INSTANCE, f"Requested SOP Instance UID must be {WELL_KNOWN_INSTANCE}", ctx)
    if request.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
        return _refuse(NO_SUCH_ACTION, f"Action Type ID {request.ActionTypeID} (only 1 exists)", ctx)
    try:
        commitment = parse_request(_action_information(event))
    except InvalidRequest as exc:
        return _refuse(INVALID_ARGUMENT_VALUE, str(exc), ctx)
    log.info(
        "storage commitment %s requested by %s for %d instance(s)",
        commitment.transaction_uid,
        ctx.describe(),
        len(commitment.references),
    )
    try:
        reporter.submit(commitment, assoc, ctx)
    except Exception as exc:  # cannot start a thread: say so now, not never
        log.exception("storage commitment %s from %s not started", commitment.transaction_uid, ctx.describe())
        return _refuse(PROCESSING_FAILURE, f"cannot start verification: {type(exc).__name__}", ctx)
    return _status(SUCCESS), None


def _action_information(event: Event) -> Dataset:
    try:
        return event.action_information
    except Exception as exc:
        raise InvalidRequest(f"Action Information cannot be decoded: {exc}") from exc


def parse_request(info: Dataset) -> CommitmentRequest:
    """The Action Information of Table J.3-1 as a request; :class:`InvalidRequest` names what is wrong."""
    try:
        transaction = _text(info.get("TransactionUID"))
        check_uid(transaction, "(0008,1195) Transaction UID")  # first in Table J.3-1, first reported
        if "ReferencedSOPSequence" not in info:
            raise InvalidRequest("(0008,1199) Referenced SOP Sequence missing")
        references = tuple(
            Reference(_text(item.get("ReferencedSOPClassUID")), _text(item.get("ReferencedSOPInstanceUID")))
            for item in info.ReferencedSOPSequence
        )
    except InvalidRequest:
        raise
    except Exception as exc:  # pydicom decodes lazily: a broken encoding surfaces on access
        raise InvalidRequest(f"Action Information cannot be decoded: {exc}") from exc
    return CommitmentRequest(transaction, references)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip("\0 ")


def event_information(result: CommitmentResult, retrieve_ae_title: str) -> Dataset:
    """The Event Information of PS3.4 Table J.3-2 for ``result``."""
    ds = Dataset()
    ds.TransactionUID = result.transaction_uid
    ds.RetrieveAETitle = retrieve_ae_title  # where the committed instances can be retrieved (Type 3)
    if result.committed:  # Type 1 for Event Type 1, 1C (at least one committed) for Event Type 2
        ds.ReferencedSOPSequence = [_item(ref) for ref in result.committed]
    if result.failed:
        ds.FailedSOPSequence = [_item(f.reference, f.reason) for f in result.failed]
    return ds


def _item(ref: Reference, reason: FailureReason | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if reason is not None:
        item.FailureReason = int(reason)
    return item


@dataclass
class _Channel:
    """Per requesting association: one report on the wire at a time, each with its own Message ID."""

    lock: threading.Lock
    last_message_id: int = 0

    def next_message_id(self) -> int:
        self.last_message_id = self.last_message_id % 0xFFFF + 1
        return self.last_message_id


class Reporter:
    """Verifies requests on background threads and delivers their N-EVENT-REPORT."""

    def __init__(
        self,
        service: CommitmentService,
        nodes: NodeRepository,
        settings: Settings,
        local: AE,
        concurrency: int = VERIFICATIONS_AT_ONCE,
    ) -> None:
        self.service = service
        self.nodes = nodes
        self.settings = settings
        self.ae_title = settings.ae_title
        self._implementation = (local.implementation_class_uid, local.implementation_version_name)
        self._slots = threading.BoundedSemaphore(concurrency)
        self._channels: weakref.WeakKeyDictionary[Association, _Channel] = weakref.WeakKeyDictionary()
        self._channels_lock = threading.Lock()

    def submit(self, request: CommitmentRequest, assoc: Association, ctx: CallerContext) -> threading.Thread:
        """Verify and report on a thread of its own; returns at once.

        A daemon thread: stopping the process drops a verification in progress, which the device
        sees as a report that never came (it asks again).
        """
        thread = threading.Thread(
            target=self._run,
            args=(request, assoc, ctx),
            name=f"commitment-{request.transaction_uid[-12:]}",
            daemon=True,
        )
        thread.start()
        return thread

    def _run(self, request: CommitmentRequest, assoc: Association, ctx: CallerContext) -> None:
        uid = request.transaction_uid
        try:
            with self._slots:
                try:
                    result = self.service.verify(request)
                except Exception:  # a bug of ours: still answer, and commit to nothing
                    log.exception("storage commitment %s: verification failed", uid)
                    result = CommitmentResult(
                        uid,
                        failed=[
                            Failure(ref, FailureReason.PROCESSING_FAILURE, "internal error")
                            for ref in request.references
                        ],
                    )
            log.info("storage commitment for %s, %s", ctx.describe(), result.summary())
            for failure in result.failed[:LOGGED_FAILURES]:
                log.warning("storage commitment %s: failed (0x%04X): %s", uid, failure.reason, failure.detail)
            if len(result.failed) > LOGGED_FAILURES:
                log.warning(
                    "storage commitment %s: %d more failed", uid, len(result.failed) - LOGGED_FAILURES
                )
            self.deliver(result, assoc, ctx.ae_title or "")
        except Exception:
            log.exception("storage commitment %s: report not delivered", uid)

    def deliver(self, result: CommitmentResult, assoc: Association | None, calling_ae: str) -> bool:
        """Send the report on ``assoc`` if it is still open, else to the node registered as
        ``calling_ae``; ``False`` (and an error in the log) when neither took it."""
        info = event_information(result, self.ae_title)
        event_type = ALL_COMMITTED if result.all_committed else FAILURES_EXIST
        uid = result.transaction_uid
        if assoc is not None and self._send_on_requesting(assoc, info, event_type, uid):
            return True
        try:
            node = self.nodes.get(calling_ae)
        except Exception as exc:
            log.error(
                "storage commitment %s: report not delivered: cannot look up node %r: %s",
                uid,
                calling_ae,
                exc,
            )
            return False
        if node is None:
            log.error(
                "storage commitment %s: report not delivered: the requesting association is closed and "
                "no node is registered under AE title %r (pacs nodes add)",
                uid,
                calling_ae,
            )
            return False
        return self._send_to_node(node, info, event_type, uid)

    def _send_on_requesting(self, assoc: Association, info: Dataset, event_type: int, uid: str) -> bool:
        """Report on the requesting association if it is open and quiet; ``False`` to try elsewhere.

        The association's reactor is paused first (as pynetdicom's own ``send_*`` methods do), so
        that what the device sent last stays visible: a release or abort means the association is
        going (a report sent now would be ignored, PS3.8 7.2.2, and its response awaited in vain);
        a request of the device must be answered before anything is sent, or ``send_n_event_report``
        would take it for the report's response. A busy association is retried a few times.
        """
        channel = self._channel(assoc)
        with channel.lock:
            for attempt in range(QUIET_ATTEMPTS):
                if attempt:
                    time.sleep(QUIET_WAIT)  # the reactor runs meanwhile and answers the device
                with _reactor_paused(assoc) as paused:
                    if not paused or _closing(assoc):
                        return False
                    if assoc.dimse.peek_msg()[1] is not None:
                        continue
                    try:
                        with _response_awaited_while_staying(assoc):
                            status, _ = assoc.send_n_event_report(
                                info,
                                event_type,
                                SOP_CLASS,
                                WELL_KNOWN_INSTANCE,
                                msg_id=channel.next_message_id(),
                            )
                    except Exception as exc:  # closed in between (RuntimeError) or no usable context
                        log.info(
                            "storage commitment %s: not reported on the requesting association: %s", uid, exc
                        )
                        return False
                    return _answered(status, uid, "on the requesting association")
        log.info("storage commitment %s: the requesting association stayed busy", uid)
        return False

    def _send_to_node(self, node: Node, info: Dataset, event_type: int, uid: str) -> bool:
        where = f"to {node.describe()}"
        ae = AE(self.ae_title)
        ae.implementation_class_uid, ae.implementation_version_name = self._implementation
        ae.acse_timeout = self.settings.acse_timeout
        ae.dimse_timeout = self.settings.dimse_timeout
        ae.network_timeout = self.settings.network_timeout
        ae.maximum_pdu_size = self.settings.max_pdu_size
        ae.add_requested_context(SOP_CLASS, list(TRANSFER_SYNTAXES))
        # We request the association but act as the SCP of the SOP class: propose that role.
        role = build_role(SOP_CLASS, scu_role=False, scp_role=True)
        try:
            assoc = ae.associate(
                node.host,
                node.port,
                ae_title=node.ae_title,
                ext_neg=[role],
                tls_args=tls.client_tls_args(self.settings, node),  # None: plain TCP
            )
        except Exception as exc:  # ConfigError of a TLS file gone since the start too
            log.error("storage commitment %s: report not delivered %s: %s", uid, where, exc)
            return False
        if not assoc.is_established:
            outcome = "rejected" if assoc.is_rejected else "not established (no connection, or aborted)"
            log.error("storage commitment %s: report not delivered: association %s %s", uid, where, outcome)
            return False
        tune(assoc)
        try:
            context = next((cx for cx in assoc.accepted_contexts if cx.abstract_syntax == SOP_CLASS), None)
            if context is None:
                log.error(
                    "storage commitment %s: report not delivered: %s refused the Storage Commitment "
                    "presentation context",
                    uid,
                    node.describe(),
                )
                return False
            if not context.as_scp:
                # PS3.4 J.3.3.1.3 asks the SCU to accept this role; a device that ignores role
                # selection usually still takes the report, so send it and say so.
                log.warning("storage commitment %s: %s did not accept our SCP role", uid, node.describe())
            status, _ = assoc.send_n_event_report(info, event_type, SOP_CLASS, WELL_KNOWN_INSTANCE, msg_id=1)
            return _answered(status, uid, where)
        finally:
            if assoc.is_established:
                assoc.release()

    def _channel(self, assoc: Association) -> _Channel:
        with self._channels_lock:
            channel = self._channels.get(assoc)
            if channel is None:
                channel = self._channels[assoc] = _Channel(threading.Lock())
            return channel


@contextmanager
def _reactor_paused(assoc: Association) -> Iterator[bool]:
    """Hold the association's reactor loop between two messages; yields ``False`` if the
    association ended first. Private attributes of pynetdicom (pinned), used the way its
    ``send_*`` methods use them; bounded, since a reactor that has exited never pauses."""
    assoc._reactor_checkpoint.clear()
    try:
        deadline = time.monotonic() + PAUSE_WAIT
        while not reactor_idle(assoc) and assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.0005)
            # A send_* the reactor makes while serving (C-GET's C-STOREs) sets it again on return.
            assoc._reactor_checkpoint.clear()
        yield bool(reactor_idle(assoc) and assoc.is_established)
    finally:
        assoc._reactor_checkpoint.set()


@contextmanager
def _response_awaited_while_staying(assoc: Association) -> Iterator[None]:
    """While in the block, a blocking wait for a DIMSE message on ``assoc`` (pynetdicom's
    ``send_*`` waiting for its response) gives up ``LEAVING_GRACE`` seconds after the peer asked to
    release or abort, rather than at the end of the DIMSE timeout. The reactor is paused meanwhile,
    so nothing else reads the queue. Given up that way, the association is not aborted (what
    pynetdicom does when a response does not come): the reactor answers the release once the block
    is left."""
    dimse = assoc.dimse
    guarded = dimse.get_msg
    no_response = assoc._handle_no_response
    left: list[bool] = []

    def handle_no_response() -> None:
        if not left:
            no_response()

    def get_msg(block: bool = False) -> Any:
        if not block:
            return guarded(block)
        timeout = dimse.dimse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        leaving_since: float | None = None
        while True:
            try:
                return dimse.msg_queue.get(timeout=0.05)
            except queue.Empty:
                pass
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None, None
            if _closing(assoc):
                leaving_since = now if leaving_since is None else leaving_since
                if now - leaving_since >= LEAVING_GRACE:
                    left.append(True)
                    return None, None

    dimse.get_msg = get_msg  # type: ignore[method-assign]
    assoc._handle_no_response = handle_no_response  # type: ignore[method-assign]
    try:
        yield
    finally:
        dimse.get_msg = guarded  # type: ignore[method-assign]
        assoc._handle_no_response = no_response  # type: ignore[method-assign]


def _closing(assoc: Association) -> bool:
    """A release or abort from the peer is waiting to be handled (only peeked at: taking the
    A-RELEASE off the queue would keep the reactor from answering it)."""
    return not assoc.is_established or isinstance(assoc.dul.peek_next_pdu(), (A_RELEASE, A_ABORT, A_P_ABORT))


def _answered(status: Dataset, uid: str, where: str) -> bool:
    """Whether the peer answered the report at all (any status: it has the report)."""
    code = status.get("Status") if status is not None else None
    if code is None:
        log.warning("storage commitment %s: no answer to the report %s", uid, where)
        return False
    if code == SUCCESS:
        log.info("storage commitment %s: report delivered %s", uid, where)
    else:
        log.warning("storage commitment %s: report delivered %s, peer answered 0x%04X", uid, where, code)
    return True


def _refuse(status: int, reason: str, ctx: CallerContext) -> tuple[Dataset, None]:
    log.warning("storage commitment request from %s refused (0x%04X): %s", ctx.describe(), status, reason)
    return _status(status, reason), None


def _status(status: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment.replace("\\", "/")[:64]  # LO: 64 characters, no backslash
    return ds
