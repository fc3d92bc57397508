"""Association policy: who may associate, what they may do, and how many at once.

Who: checked when the A-ASSOCIATE-RQ arrives (``EVT_REQUESTED``), before any presentation context
is negotiated, so a refused peer gets an A-ASSOCIATE-RJ (PS3.8 7.1.1.9) and nothing else.

What: each ``allowed_peers`` entry (``AE``, ``AE@host``, either with ``=role``) gives the AE one of
the archive's roles (:mod:`pacs.security`), the same as for HTTP users; the role is kept on the
association when it is accepted. An entry without a role, and any AE when the list is empty, gets
``admin``: every DIMSE service, as before roles existed. A request the role does not grant is
answered with the general status 0x0124 Refused: Not Authorized (PS3.7 C.5.25) and an Error
Comment naming the role: C-STORE and storage commitment need ``store``, C-FIND ``query``, C-MOVE
and C-GET ``retrieve``; C-ECHO is open to every accepted AE. :func:`guard` puts the check in front
of the C-STORE, C-FIND and N-ACTION handlers; C-MOVE and C-GET are checked by the retrieve
precheck (:mod:`dicom_nodes.move`) through :func:`refusal`, because their handlers' generator
protocol cannot answer with a status of its own.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Iterator, MutableSequence, Sequence
from typing import Any, Protocol, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE

from dicom_nodes.spool import Spooler
from pacs.audit import Action, AuditEvent, AuditTrail, Outcome
from pacs.config import peer_role, split_peer
from pacs.context import CallerContext, host_port
from pacs.security import Permission, Role, allows

log = logging.getLogger(__name__)

#: PS3.7 C.5.25 (general status, every DIMSE service): the request is not authorised.
NOT_AUTHORIZED = 0x0124

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognised
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded
REJECT_NO_REASON = (0x01, 0x01, 0x01)  # permanent, service user, no reason given


class SharedSlots(Protocol):
    """Per-worker association counts shared by all server processes (``multiprocessing.Array('i')``)."""

    def get_lock(self) -> Any: ...

    def __getitem__(self, index: int) -> int: ...

    def __setitem__(self, index: int, value: int) -> None: ...

    def __len__(self) -> int: ...


class AssociationLimiter:
    """At most ``limit`` associations at once across every process sharing ``slots``.

    Each worker counts in its own slot, so when a worker dies the supervisor can give its
    associations back (:meth:`reset`) instead of the limit shrinking for good.
    """

    def __init__(self, limit: int, slots: SharedSlots, worker: int = 0) -> None:
        self.limit = limit
        self._slots = slots
        self._worker = worker

    def try_acquire(self) -> bool:
        with self._slots.get_lock():
            if sum(self._slots[i] for i in range(len(self._slots))) >= self.limit:
                return False
            self._slots[self._worker] += 1
            return True

    def release(self) -> None:
        with self._slots.get_lock():
            self._slots[self._worker] = max(0, self._slots[self._worker] - 1)

    @property
    def active(self) -> int:
        with self._slots.get_lock():
            return sum(self._slots[i] for i in range(len(self._slots)))

    @staticmethod
    def reset(slots: MutableSequence[int] | SharedSlots, worker: int) -> None:
        """Forget the associations of a worker that is gone."""
        with slots.get_lock():  # type: ignore[union-attr]
            slots[worker] = 0


class AssociationPolicy:
    def __init__(self, allowed_peers: Iterable[str], limiter: AssociationLimiter) -> None:
        """``allowed_peers``: the entries of the setting (``AE``, ``AE@host``, optionally ``=role``)."""
        self._allowed: list[tuple[str, frozenset[str] | None, Role]] = []
        for entry in allowed_peers:
            title, host = split_peer(entry)
            self._allowed.append((title, _resolve(host) if host else None, peer_role(entry)))
        self._limiter = limiter

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_CONN_CLOSE, self.on_closed)]

    def on_requested(self, event: Event) -> None:
        assoc = event.assoc
        request = cast(A_ASSOCIATE, assoc.requestor.primitive)
        calling = (request.calling_ae_title or "").strip()
        address = assoc.requestor.address
        missing = _missing_items(request)
        if missing:
            # pynetdicom would accept it: an association that can do nothing, held until the
            # network timeout. PS3.8 9.3.2 makes both items mandatory.
            log.warning("association from %s@%s rejected: the request has no %s", calling, address, missing)
            self._reject(assoc, REJECT_NO_REASON)
            return
        role = self.role_of(calling, address)
        if role is None:
            log.warning("association from %s@%s rejected: calling AE title not allowed", calling, address)
            self._reject(assoc, REJECT_CALLING_AE)
            return
        if not self._limiter.try_acquire():
            log.warning(
                "association from %s@%s rejected: %d associations already active",
                calling,
                address,
                self._limiter.limit,
            )
            self._reject(assoc, REJECT_LOCAL_LIMIT)
            return
        assoc._pacs_counted = True  # type: ignore[attr-defined]
        assoc._pacs_role = role  # type: ignore[attr-defined]  # read by refusal()

    def on_closed(self, event: Event) -> None:
        if getattr(event.assoc, "_pacs_counted", False):
            event.assoc._pacs_counted = False  # type: ignore[attr-defined]
            self._limiter.release()

    def is_allowed(self, calling_ae: str, address: str) -> bool:
        return self.role_of(calling_ae, address) is not None

    def role_of(self, calling_ae: str, address: str) -> Role | None:
        """The role of a calling AE at ``address``; None when it may not associate at all.

        An ``AE@host`` entry that matches wins over a plain ``AE`` entry of the same title, so
        ``WS1=device`` with ``WS1@10.0.0.5=inspector`` lets only that host's WS1 query.
        """
        if not self._allowed:
            return Role.ADMIN
        anywhere: Role | None = None
        for title, hosts, role in self._allowed:
            if title != calling_ae:
                continue
            if hosts is None:
                anywhere = anywhere or role
            elif _same_host(address, hosts):
                return role
        return anywhere

    @staticmethod
    def _reject(assoc: Any, reason: tuple[int, int, int]) -> None:
        assoc.acse.send_reject(*reason)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()


def _missing_items(request: A_ASSOCIATE) -> str:
    """What a request lacks of the items every A-ASSOCIATE-RQ carries: a presentation context, and
    the user information item with its maximum length (PS3.8 9.3.2, PS3.8 D.1); "" if nothing."""
    if not request.presentation_context_definition_list:
        return "presentation context"
    if request.maximum_length_received is None:
        return "user information (maximum length)"
    return ""


def _resolve(host: str) -> frozenset[str]:
    """Every address ``host`` stands for (it may be a name or an address)."""
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except socket.gaierror:
        log.warning("allowed peer host %r does not resolve; it matches only literally", host)
        return frozenset({host})


def _same_host(address: str, allowed: frozenset[str]) -> bool:
    if address in allowed:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped is not None and str(mapped) in allowed


# -- what an accepted AE may do --------------------------------------------------------------------
def refusal(assoc: Any, permission: Permission) -> str | None:
    """Why the peer of ``assoc`` may not do what ``permission`` covers; None when it may.

    An association that did not pass an :class:`AssociationPolicy` (none is installed) carries no
    role and is not restricted.
    """
    role: Role | None = getattr(assoc, "_pacs_role", None)
    if role is None or allows(role, permission):
        return None
    calling = (assoc.requestor.ae_title or "").strip()
    return f"{calling} has role {role}, which does not grant {permission}"


_PERMISSIONS = {
    evt.EVT_C_STORE: Permission.STORE,
    evt.EVT_C_FIND: Permission.QUERY,
    evt.EVT_N_ACTION: Permission.STORE,  # storage commitment: a sender asks for its stored instances
}


def guard(
    handlers: Sequence[tuple[Any, ...]], spooler: Spooler | None = None, audit: AuditTrail | None = None
) -> list[tuple[Any, ...]]:
    """``handlers`` with the role check in front of the C-STORE, C-FIND and N-ACTION ones.

    A refused C-STORE's dataset has been received already (pynetdicom calls the handler after the
    last fragment); ``spooler`` discards the object it was streamed into. With ``audit``, every
    C-STORE's outcome goes into the audit trail (queued; the trail finds the instance's part).
    """
    guarded: list[tuple[Any, ...]] = []
    for binding in handlers:
        event, handler, *args = binding
        permission = _PERMISSIONS.get(event)
        if permission is None:
            guarded.append(binding)
            continue
        if event is evt.EVT_C_FIND:
            wrapped = _guard_find(handler, permission, audit)
        elif event is evt.EVT_C_STORE:
            wrapped = _guard_store(handler, permission, spooler, audit)
        else:
            wrapped = _guard_n_action(handler, permission)
        guarded.append((event, wrapped, *args))
    return guarded


def _refused(event: Event, service: str, reason: str) -> Dataset:
    requestor = event.assoc.requestor
    log.warning(
        "%s from %s@%s refused (0x%04X): %s",
        service,
        (requestor.ae_title or "").strip(),
        requestor.address,
        NOT_AUTHORIZED,
        reason,
    )
    ds = Dataset()
    ds.Status = NOT_AUTHORIZED
    ds.ErrorComment = reason.replace("\\", "/")[:64]  # LO: at most 64 characters
    return ds


Handler = Callable[..., Any]


def _guard_store(
    handler: Handler, permission: Permission, spooler: Spooler | None, audit: AuditTrail | None
) -> Handler:
    def guarded(event: Event, *args: Any) -> Any:
        reason = refusal(event.assoc, permission)
        if reason is None:
            status = handler(event, *args)
        else:
            if spooler is not None:
                spool = spooler.claim(event.dataset_path)
                if spool is not None:
                    spool.discard()
            status = _refused(event, "C-STORE", reason)
        if audit is not None:
            _audit_store(audit, event, status)
        return status

    return guarded


def _audit_store(audit: AuditTrail, event: Event, status: Any) -> None:
    code = int(status.Status if isinstance(status, Dataset) else status)
    if code == 0x0000 or code & 0xF000 == 0xB000:  # success, or a warning: stored
        outcome = Outcome.SUCCESS
    elif code & 0xFF00 == 0xA700 or code == 0x0110:  # out of resources, processing failure
        outcome = Outcome.FAILURE
    else:  # not authorised, cannot understand, SOP class not supported
        outcome = Outcome.REFUSED
    storer = caller(event, "c-store")
    request = cast(C_STORE, event.request)
    detail: dict[str, Any] = {"status": code, "sop_class_uid": str(request.AffectedSOPClassUID or "")}
    if outcome is not Outcome.SUCCESS and isinstance(status, Dataset) and "ErrorComment" in status:
        detail["reason"] = str(status.ErrorComment)
    audit.record_later(
        AuditEvent(
            Action.STORE,
            storer,
            outcome,
            detail=detail,
            instances=[str(request.AffectedSOPInstanceUID or "")],
        )
    )


def _guard_find(handler: Handler, permission: Permission, audit: AuditTrail | None) -> Handler:
    def guarded(event: Event, *args: Any) -> Iterator[Any]:
        reason = refusal(event.assoc, permission)
        if reason is not None:
            if audit is not None:
                audit.record_later(
                    AuditEvent(
                        Action.QUERY, caller(event, "c-find"), Outcome.REFUSED, detail={"reason": reason}
                    )
                )
            yield _refused(event, "C-FIND", reason), None
            return
        yield from handler(event, *args)

    return guarded


def caller(event: Event, via: str) -> CallerContext:
    """Who asks, on ``event``'s association: the calling AE title and the peer's ``host:port``,
    for the services, their log lines and the audit trail."""
    requestor = event.assoc.requestor
    return CallerContext(
        via=via,
        ae_title=(requestor.ae_title or "").strip(),
        address=host_port(requestor.address, requestor.port),
    )


def _guard_n_action(handler: Handler, permission: Permission) -> Handler:
    def guarded(event: Event, *args: Any) -> Any:
        reason = refusal(event.assoc, permission)
        if reason is None:
            return handler(event, *args)
        return _refused(event, "storage commitment (N-ACTION)", reason), None

    return guarded
