"""Association policy: who may associate, how many at once, and which transfer syntax is accepted.

Checked when the A-ASSOCIATE-RQ arrives (``EVT_REQUESTED``), before any presentation context is
negotiated, so a refused peer gets an A-ASSOCIATE-RJ (PS3.8 7.1.1.9) and nothing else.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any, Protocol, cast

from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognised
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded


class Counter(Protocol):
    """A counter shared by all server processes (``multiprocessing.Value('i')``)."""

    value: int

    def get_lock(self) -> Any: ...


class AssociationLimiter:
    """At most ``limit`` associations at once across every process sharing ``counter``."""

    def __init__(self, limit: int, counter: Counter) -> None:
        self.limit = limit
        self._counter = counter

    def try_acquire(self) -> bool:
        with self._counter.get_lock():
            if self._counter.value >= self.limit:
                return False
            self._counter.value += 1
            return True

    def release(self) -> None:
        with self._counter.get_lock():
            self._counter.value = max(0, self._counter.value - 1)

    @property
    def active(self) -> int:
        return int(self._counter.value)


class AssociationPolicy:
    def __init__(
        self,
        allowed_peers: Iterable[tuple[str, str | None]],
        limiter: AssociationLimiter,
        transfer_syntaxes: Iterable[str],
    ) -> None:
        self._allowed = [(title, _resolve(host) if host else None) for title, host in allowed_peers]
        self._limiter = limiter
        self._transfer_syntaxes = frozenset(transfer_syntaxes)

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_CONN_CLOSE, self.on_closed)]

    def on_requested(self, event: Event) -> None:
        assoc = event.assoc
        request = cast(A_ASSOCIATE, assoc.requestor.primitive)
        calling = (request.calling_ae_title or "").strip()
        address = assoc.requestor.address
        if not self.is_allowed(calling, address):
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
        assoc.acceptor.supported_contexts = self.contexts_for(
            request.presentation_context_definition_list, assoc.acceptor.supported_contexts
        )

    def on_closed(self, event: Event) -> None:
        if getattr(event.assoc, "_pacs_counted", False):
            event.assoc._pacs_counted = False  # type: ignore[attr-defined]
            self._limiter.release()

    def is_allowed(self, calling_ae: str, address: str) -> bool:
        if not self._allowed:
            return True
        for title, hosts in self._allowed:
            if title == calling_ae and (hosts is None or _same_host(address, hosts)):
                return True
        return False

    def contexts_for(
        self, requested: list[PresentationContext], supported: list[PresentationContext]
    ) -> list[PresentationContext]:
        """The acceptor's contexts for this association, keeping the sender's encoding.

        pynetdicom accepts, per context, the first of *the acceptor's* transfer syntaxes that the
        requestor proposed. Listing ours in the order the sender proposed them makes that the
        sender's first supported choice, so a compressed original is never converted in flight.
        When a sender proposes one SOP class in several contexts, the order is that of first
        appearance across them, which is the sender's order in every context unless two of its
        contexts rank the same syntaxes differently.
        """
        supported_by_uid = {str(cx.abstract_syntax): cx for cx in supported}
        order: dict[str, list[str]] = {}
        for rq in requested:
            uid = str(rq.abstract_syntax)
            if uid not in supported_by_uid:
                continue
            ranked = order.setdefault(uid, [])
            for ts in map(str, rq.transfer_syntax):
                if ts in self._transfer_syntaxes and ts not in ranked:
                    ranked.append(ts)
        contexts = []
        for uid, ranked in order.items():
            if not ranked:
                continue
            base = supported_by_uid[uid]
            cx = PresentationContext()
            cx.abstract_syntax = uid
            cx.transfer_syntax = list(ranked)
            cx.scu_role, cx.scp_role = base.scu_role, base.scp_role
            contexts.append(cx)
        return contexts

    @staticmethod
    def _reject(assoc: Any, reason: tuple[int, int, int]) -> None:
        assoc.acse.send_reject(*reason)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()


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
