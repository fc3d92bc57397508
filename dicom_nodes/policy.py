"""Association policy: who may associate, and how many at once.

Checked when the A-ASSOCIATE-RQ arrives (``EVT_REQUESTED``), before any presentation context is
negotiated, so a refused peer gets an A-ASSOCIATE-RJ (PS3.8 7.1.1.9) and nothing else.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, MutableSequence
from typing import Any, Protocol, cast

from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognised
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded


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
    def __init__(self, allowed_peers: Iterable[tuple[str, str | None]], limiter: AssociationLimiter) -> None:
        self._allowed = [(title, _resolve(host) if host else None) for title, host in allowed_peers]
        self._limiter = limiter

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
