"""C-MOVE SCP (PS3.4 C.4.2) for the Patient Root and Study Root models: send the instances a retrieve
names to a node registered in the archive (``pacs nodes add``), over a new association.

The handler follows pynetdicom's generator protocol: it yields the destination ``(host, port,
kwargs)``, then the number of C-STORE sub-operations, then ``(0xFF00, dataset)`` per instance;
pynetdicom opens the sub-association, sends each dataset, and answers the mover with pending
responses (remaining / completed / failed / warning counts) and the final status: Success, Warning
0xB000 or Failure 0xA702 with the Failed SOP Instance UID List (PS3.4 C.4.2.1.4.2), or Cancel
0xFE00 after a C-CANCEL (checked before every sub-operation).

What this module adds to that protocol:

* **Checks before anything is sent.** The generator protocol can answer a bad request only with
  0xA801 (by yielding no destination) and carries no Error Comment. A thin subclass of
  pynetdicom's Query/Retrieve service class (:func:`install_precheck`, for this node's AE and the
  Q/R SOP classes registered here only) first runs the module's check, which parses the identifier
  (0xA900 Identifier Does Not Match SOP Class, with Offending Element and Error Comment naming the
  tag) and looks the destination up (0xA801 with the reason: unknown AE title).
* **The sub-association** goes over TLS to a node marked ``tls`` (:mod:`dicom_nodes.tls`).
* **Contexts for the sub-association**: per SOP class, each stored transfer syntax alone (so the
  destination's answer says exactly which stored syntaxes it takes), then Explicit and Implicit VR
  Little Endian as the fallback the archive transcodes to (:func:`propose_contexts`).
* **Per instance**, the stored bytes when the destination accepted the stored syntax, else a
  lossless transcoding (:mod:`pacs.dicom.transcode`). An instance that cannot be read or
  transcoded fails its sub-operation and is listed in the Failed SOP Instance UID List.
* **A guard on the sub-association** (:class:`ResponseGuard`) against a pynetdicom 3.0 race in
  which the association's reactor thread takes the C-STORE response ``send_c_store`` waits for.

The C-GET SCP (:mod:`dicom_nodes.get`) shares the precheck and the per-instance sending.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pynetdicom.association
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import QueryRetrieveServiceClass
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_nodes import tls
from dicom_nodes.policy import NOT_AUTHORIZED, caller, refusal
from dicom_nodes.transport import tune

if TYPE_CHECKING:
    from dicom_nodes.server import Registry
from pacs.archive import Archive
from pacs.audit import Action, AuditEvent, Outcome
from pacs.context import CallerContext
from pacs.dicom import transcode
from pacs.dicom.retrieve_keys import (
    InformationModel,
    InvalidIdentifier,
    RetrieveRequest,
    parse_retrieve_identifier,
)
from pacs.errors import PacsError
from pacs.security import Permission
from pacs.services.retrieve import RetrieveItem

log = logging.getLogger(__name__)

MOVE_MODELS: dict[str, InformationModel] = {
    str(PatientRootQueryRetrieveInformationModelMove): InformationModel.PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelMove): InformationModel.STUDY_ROOT,
}
#: Transfer syntaxes for the Q/R contexts themselves (the identifiers): the uncompressed ones.
QR_TRANSFER_SYNTAXES = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian))
#: What the sub-association offers besides the stored syntaxes; the archive can always make these.
FALLBACK_TRANSFER_SYNTAXES = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd presentation context IDs 1..255

# Statuses, PS3.4 Table C.4-2 (C-MOVE) and C.4-3 (C-GET); PS3.7 C.
PENDING = 0xFF00
CANCEL = 0xFE00
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000


def register(registry: Registry) -> None:
    """Move SCP for the Patient Root and Study Root models."""
    for uid in MOVE_MODELS:
        registry.add_context(uid, QR_TRANSFER_SYNTAXES)
    archive = registry.archive
    install_precheck(registry.ae, {uid: _move_precheck(archive) for uid in MOVE_MODELS})
    registry.bind(evt.EVT_C_MOVE, handle_move, [archive, registry.settings.incoming_dir])


# -- the handler ----------------------------------------------------------------------------------
def handle_move(event: Event, archive: Archive, scratch_dir: Path) -> Iterator[Any]:
    request = cast(C_MOVE, event.request)
    ctx = caller(event, "c-move")
    destination_ae = _text(request.MoveDestination)
    keys = parse_identifier(event, MOVE_MODELS)  # checked already: raising here is a bug (0xC514)
    node = archive.nodes.get(destination_ae)
    if node is None:  # checked already; the node may have gone since
        log.error("C-MOVE from %s refused: %s", ctx.describe(), _destination_problem(destination_ae))
        yield None, None
        return
    items = archive.retrieve.resolve(keys)
    log.info(
        "C-MOVE from %s to %s: %s -> %d instance(s)",
        ctx.describe(),
        node.describe(),
        keys.describe(),
        len(items),
    )
    sub_association: list[Any] = []
    guard = ResponseGuard()

    def on_accepted(accepted_event: Event) -> None:
        sub_association.append(accepted_event.assoc)
        tune(accepted_event.assoc)  # TCP_NODELAY, bulk reads, bounded send queue
        guard.install(accepted_event.assoc)

    kwargs = {
        "ae_title": node.ae_title,
        "contexts": propose_contexts(items),
        # pynetdicom opens the sub-association after the next yield; keep it to see what it accepted.
        "evt_handlers": [(evt.EVT_ACCEPTED, on_accepted)],
        "tls_args": tls.client_tls_args(archive.settings, node),  # None: plain TCP
    }
    yield node.host, node.port, kwargs
    try:
        yield len(items)
    except GeneratorExit:
        # pynetdicom gave up before the first sub-operation: it answers 0xA801 without a comment
        # when the destination cannot be reached or refuses the association; say which and why here.
        if items and not sub_association:
            log.error(
                "C-MOVE from %s: destination %s did not accept an association (down, or refused us); "
                "answered 0xA801",
                ctx.describe(),
                node.describe(),
            )
        raise

    def accepted(sop_class_uid: str) -> list[str]:
        return accepted_transfer_syntaxes(sub_association[0], sop_class_uid) if sub_association else []

    for response in send_instances(event, archive, items, accepted, scratch_dir, ctx, node.describe()):
        guard.in_flight = response[0] == PENDING  # pynetdicom sends it as soon as we yield
        yield response
        guard.in_flight = False


class ResponseGuard:
    """Keeps the sub-association's reactor away from the C-STORE response pynetdicom waits for.

    pynetdicom 3.0 pauses an association's reactor thread before ``send_c_store`` by clearing an
    event and spinning until the reactor says it is paused; a reactor that has just passed that
    event (but not yet flagged itself running) is taken for paused. If it is then starved of the
    GIL until the destination's C-STORE response has arrived, it takes the response from the DIMSE
    queue ("Received unexpected C-STORE service message"), and ``send_c_store`` waits for the DIMSE
    timeout, fails the sub-operation and the association ends. It happens under CPU load. While
    one of our sub-operations is in flight, the reactor's non-blocking reads see no message; the
    blocking read of ``send_c_store`` gets it. (Only the C-MOVE sub-association needs this: a C-GET
    sends from the reactor thread itself.)
    """

    def __init__(self) -> None:
        self.in_flight = False

    def install(self, assoc: Any) -> None:
        dimse = assoc.dimse
        read = dimse.get_msg

        def get_msg(block: bool = False) -> Any:
            if not block and self.in_flight:
                return None, None
            return read(block)

        dimse.get_msg = get_msg


def _destination_problem(ae_title: str) -> str:
    return f"unknown move destination {ae_title!r}"


def _move_precheck(archive: Archive) -> Precheck:
    def check(request: Any, identifier: Dataset, model: InformationModel) -> Failure | None:
        parse_retrieve_identifier(identifier, model)  # InvalidIdentifier: 0xA900
        destination = _text(cast(C_MOVE, request).MoveDestination)
        node = archive.nodes.get(destination)
        if node is None:
            return Failure(MOVE_DESTINATION_UNKNOWN, _destination_problem(destination))
        return None

    return check


# -- sub-association contexts -------------------------------------------------------------------
def propose_contexts(items: Sequence[RetrieveItem]) -> list[PresentationContext]:
    """Per SOP class: one context per stored transfer syntax, then the fallback context.

    At most :data:`MAX_CONTEXTS`: every SOP class first gets its fallback (the archive can send
    any instance that way), then the stored syntaxes get contexts by how many instances use them;
    an instance whose stored syntax found no room is transcoded. A retrieve of more than 128 SOP
    classes sends the classes beyond that none (their sub-operations fail; logged).
    """
    usage: dict[str, Counter[str]] = {}
    for item in items:
        usage.setdefault(item.sop_class_uid, Counter())[item.transfer_syntax_uid] += 1
    classes = list(usage)
    if len(classes) > MAX_CONTEXTS:
        log.warning(
            "a retrieve of %d SOP classes: only %d fit one association; the rest fail",
            len(classes),
            MAX_CONTEXTS,
        )
        classes = sorted(classes, key=lambda uid: -sum(usage[uid].values()))[:MAX_CONTEXTS]
    room = MAX_CONTEXTS - len(classes)
    ranked = sorted(
        ((count, sop_class, syntax) for sop_class in classes for syntax, count in usage[sop_class].items()),
        key=lambda entry: (-entry[0], classes.index(entry[1]), entry[2]),
    )
    chosen = {(sop_class, syntax) for _, sop_class, syntax in ranked[:room]}
    contexts = []
    for sop_class in classes:
        for syntax in usage[sop_class]:
            if (sop_class, syntax) in chosen:
                contexts.append(build_context(sop_class, [syntax]))
        contexts.append(build_context(sop_class, list(FALLBACK_TRANSFER_SYNTAXES)))
    return contexts


def accepted_transfer_syntaxes(assoc: Any, sop_class_uid: str) -> list[str]:
    """The transfer syntaxes ``assoc`` accepted for ``sop_class_uid`` in which we may send C-STOREs."""
    return [
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if str(cx.abstract_syntax) == sop_class_uid and cx.as_scu
    ]


# -- sending ------------------------------------------------------------------------------------
def send_instances(
    event: Event,
    archive: Archive,
    items: Sequence[RetrieveItem],
    accepted: Callable[[str], list[str]],
    scratch_dir: Path,
    ctx: CallerContext,
    peer: str,
) -> Iterator[tuple[int, Dataset | None]]:
    """``(0xFF00, dataset)`` per instance for pynetdicom to send, or ``(0xFE00, None)`` once the
    requester cancelled (PS3.4 C.4.2.3.1 / C.4.3.3.1). The dataset is read completely before it is
    yielded, so the temporary copy of an S3 object is gone while it is sent."""
    verb = ctx.via.upper()
    failed = 0
    for done, item in enumerate(items):
        if event.is_cancelled:
            log.info(
                "%s from %s cancelled after %d of %d instance(s)", verb, ctx.describe(), done, len(items)
            )
            _audit(archive, ctx, peer, items[:done], failed, cancelled=True)
            yield CANCEL, None
            return
        dataset: Dataset | None = None
        try:
            target = transcode.choose_transfer_syntax(item.transfer_syntax_uid, accepted(item.sop_class_uid))
            with archive.retrieve.local_file(item, scratch_dir) as path:
                dataset = transcode.prepare(path, target)
            if target != item.transfer_syntax_uid:
                log.info(
                    "%s: sending %s to %s transcoded from %s to %s",
                    verb,
                    item.sop_instance_uid,
                    peer,
                    item.transfer_syntax_uid,
                    target,
                )
        except PacsError as exc:
            log.warning("%s: %s not sent to %s: %s", verb, item.sop_instance_uid, peer, exc)
        except Exception:  # a bug of ours: fail this sub-operation, keep going
            log.exception("%s: %s not sent to %s", verb, item.sop_instance_uid, peer)
        if dataset is None:
            failed += 1
            dataset = unsendable(item)
        yield PENDING, dataset
    if failed:
        log.warning("%s from %s: %d instance(s) could not be sent", verb, ctx.describe(), failed)
    _audit(archive, ctx, peer, items, failed, cancelled=False)


def _audit(
    archive: Archive,
    ctx: CallerContext,
    peer: str,
    items: Sequence[RetrieveItem],
    failed: int,
    *,
    cancelled: bool,
) -> None:
    """Queue the audit entry of a C-MOVE / C-GET: the instances offered to ``peer`` (the trail finds
    their parts and inspections)."""
    archive.audit.record_later(
        AuditEvent(
            Action.RETRIEVE,
            ctx,
            Outcome.FAILURE if failed else Outcome.SUCCESS,
            detail={
                "destination": peer,
                "sent": len(items) - failed,
                "failed": failed,
                "cancelled": cancelled,
            },
            instances=[item.sop_instance_uid for item in items],
        )
    )


def unsendable(item: RetrieveItem) -> Dataset:
    """A stand-in for an instance we cannot send. pynetdicom's generator protocol has no "this
    sub-operation failed" value; its ``send_c_store`` refuses a dataset without file meta (no
    transfer syntax), and pynetdicom then counts a failed sub-operation and adds the dataset's SOP
    Instance UID to the Failed SOP Instance UID List, which is what PS3.4 C.4.2.1.4.2 asks for."""
    ds = Dataset()
    ds.SOPClassUID = item.sop_class_uid
    ds.SOPInstanceUID = item.sop_instance_uid
    return ds


# -- shared helpers -------------------------------------------------------------------------------
def parse_identifier(event: Event, models: dict[str, InformationModel]) -> RetrieveRequest:
    return parse_retrieve_identifier(event.identifier, models[str(event.context.abstract_syntax)])


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip()


# -- checks before pynetdicom's C-MOVE / C-GET service runs -------------------------------------
@dataclass(frozen=True)
class Failure:
    status: int
    comment: str
    offending: int | None = None


#: (request primitive, decoded identifier, model) -> a failure to answer, or None to go on.
Precheck = Callable[[Any, Dataset, InformationModel], "Failure | None"]

_MODELS: dict[str, InformationModel] = {}
_PRECHECKS: weakref.WeakKeyDictionary[AE, dict[str, Precheck]] = weakref.WeakKeyDictionary()
_pynetdicom_lookup: Callable[[str], type] | None = None


def install_precheck(ae: AE, checks: dict[str, Precheck]) -> None:
    """Run ``checks`` (by Q/R SOP class UID) before pynetdicom's C-MOVE / C-GET service, on ``ae``'s
    associations only.

    pynetdicom 3.0 picks a service class per request with ``pynetdicom.association.
    uid_to_service_class``; that name is replaced, once per process, by a function returning
    :class:`_CheckedRetrieve` for the Q/R SOP classes and deferring to the previous function for
    everything else (the dependency is pinned; ``tests/integration/test_move_get.py`` checks the
    statuses). AEs without checks get pynetdicom's behaviour unchanged.
    """
    global _pynetdicom_lookup
    from dicom_nodes.get import GET_MODELS

    _MODELS.update(MOVE_MODELS)
    _MODELS.update(GET_MODELS)
    _PRECHECKS.setdefault(ae, {}).update(checks)
    if _pynetdicom_lookup is None:
        _pynetdicom_lookup = pynetdicom.association.uid_to_service_class
        pynetdicom.association.uid_to_service_class = _service_class  # type: ignore[assignment]


def _service_class(uid: str) -> type:
    assert _pynetdicom_lookup is not None
    if str(uid) in _MODELS:
        return _CheckedRetrieve
    return _pynetdicom_lookup(uid)


class _CheckedRetrieve(QueryRetrieveServiceClass):
    """pynetdicom's Q/R service class, answering a request its AE's precheck refuses by itself."""

    def SCP(self, req: Any, context: PresentationContext) -> None:  # noqa: N802 (pynetdicom's name)
        checks = _PRECHECKS.get(self.assoc.ae, {})
        check = checks.get(str(context.abstract_syntax))
        if check is not None and isinstance(req, C_MOVE | C_GET):
            reason = refusal(self.assoc, Permission.RETRIEVE)  # the AE's role (dicom_nodes.policy)
            failure = Failure(NOT_AUTHORIZED, reason) if reason else _run_check(check, req, context)
            if failure is not None:
                self._refuse(req, context, failure)
                return
        super().SCP(req, context)

    def _refuse(self, req: Any, context: PresentationContext, failure: Failure) -> None:
        rsp: Any = C_MOVE() if isinstance(req, C_MOVE) else C_GET()
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        rsp.Status = failure.status
        # Error Comment (0000,0902) is LO: at most 64 characters, no backslash.
        rsp.ErrorComment = failure.comment.replace("\\", "/")[:64]
        if failure.offending is not None:
            rsp.OffendingElement = [failure.offending]
        requestor = self.assoc.requestor
        log.warning(
            "%s from %s@%s:%s refused (0x%04X): %s",
            "C-MOVE" if isinstance(req, C_MOVE) else "C-GET",
            (requestor.ae_title or "").strip(),
            requestor.address,
            requestor.port,
            failure.status,
            failure.comment,
        )
        self.dimse.send_msg(rsp, cast(int, context.context_id))


def _run_check(check: Precheck, req: Any, context: PresentationContext) -> Failure | None:
    syntax = context.transfer_syntax[0]
    model = _MODELS[str(context.abstract_syntax)]
    try:
        identifier = decode(
            req.Identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
        )
    except Exception as exc:
        return Failure(UNABLE_TO_PROCESS, f"cannot decode the identifier: {exc}")
    try:
        return check(req, identifier, model)
    except InvalidIdentifier as exc:
        return Failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc), exc.tag)
    except PacsError as exc:  # the index is unreachable, say
        return Failure(UNABLE_TO_PROCESS, str(exc))
    except Exception as exc:  # a bug of ours: refuse this request, keep serving
        log.exception("checking a retrieve request failed")
        return Failure(UNABLE_TO_PROCESS, f"internal error: {type(exc).__name__}")
