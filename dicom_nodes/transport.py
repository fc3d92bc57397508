"""Socket settings and reads sized for the archive's large PDUs, for every association it takes part in.

* pynetdicom's ``AssociationSocket.recv`` assembles a PDU from ``recv(4096)`` calls in a Python loop.
  With the megabyte PDUs the archive negotiates (``max_pdu_size``) that loop, not the data copy,
  dominates the receive cost: 256 iterations per MiB. :class:`BulkReceiveSocket` reads the PDU with
  one ``recv`` when it has all arrived (the usual case), else into one buffer with ``recv_into``,
  and otherwise behaves the same (it returns what arrived before the peer closed the connection).
* pynetdicom writes a DIMSE message as separate PDUs (command, then data set). With Nagle's
  algorithm on, the second small write waits for the acknowledgement of the first, which the peer
  delays by up to 40 ms on Linux: a C-FIND or C-STORE response took ~40 ms instead of ~1 ms.
  :func:`tune` sets TCP_NODELAY.
* pynetdicom queues every outgoing P-DATA PDU of a message without bound, so sending a large file
  piles it up in memory when the network is slower than the disk. :class:`_SendWindow` bounds it.
* pynetdicom narrates every PDU and DIMSE message and formats every C-FIND/C-MOVE/C-GET
  identifier for its debug log, whatever its logger's level: about a millisecond a message.
  :func:`quiet_logging` turns that work off unless its logger is at DEBUG.
* pynetdicom 3.0 pauses an association's reactor thread before a ``send_*`` call by clearing an
  event and spinning until the reactor says it is paused; a reactor that has just passed that event
  is taken for paused, and under CPU load it can take the response ``send_*`` waits for ("Received
  unexpected ... service message"), which then fails after the DIMSE timeout. :func:`tune` makes
  the reactor's non-blocking reads see nothing while the event is cleared.
* pynetdicom's two threads per association poll every millisecond; :class:`RequestHandler` gives
  every accepted association the event-driven loops of :mod:`dicom_nodes.reactor` instead.

:class:`RequestHandler` tunes every accepted association; the archive's SCUs (``dicom_nodes.scu``,
the C-MOVE sub-association) call :func:`tune` on theirs.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pynetdicom import _config, transport
from pynetdicom.pdu_primitives import P_DATA

from dicom_nodes import reactor, store_service

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

#: P-DATA PDUs (each at most the peer's maximum PDU size) queued for sending at once.
SEND_WINDOW = 8


def quiet_logging() -> None:
    """Off: pynetdicom's standard event log handlers and its logging of identifiers, unless the
    ``pynetdicom`` logger is at DEBUG (``pacs serve --log-level DEBUG``). Process-wide; read when
    an association starts."""
    debug = logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG)
    _config.LOG_HANDLER_LEVEL = "standard" if debug else "none"
    _config.LOG_REQUEST_IDENTIFIERS = debug
    _config.LOG_RESPONSE_IDENTIFIERS = debug


class BulkReceiveSocket(transport.AssociationSocket):
    def recv(self, nr_bytes: int) -> bytearray:
        limit = _largest_pdu(self.assoc)
        if nr_bytes > limit:
            # A 6-byte PDU header may claim up to 4 GiB: a peer that ignores the maximum length
            # negotiated (PS3.8 D.1) is dropped, nothing is allocated for it. pynetdicom takes
            # the short read for a closed connection (Evt17).
            peer = self.assoc.acceptor if self.assoc.is_requestor else self.assoc.requestor
            log.warning(
                "dropping the connection of %s:%s: a PDU of %d bytes, the largest accepted is %d",
                peer.address,
                peer.port,
                nr_bytes,
                limit,
            )
            return bytearray()
        sock = self.socket
        assert sock is not None
        first = b""
        if nr_bytes <= _FIRST_READ:
            # Usually all there already: one read, into a buffer nobody zeroes first. Bytes, not a
            # bytearray: every caller only reads it (pynetdicom copies it into its own).
            first = sock.recv(nr_bytes)
            if len(first) == nr_bytes:
                return first  # type: ignore[return-value]
            if not first:  # the peer closed the connection
                return bytearray()
        # Room grows with what arrives (doubling), never ahead of it by more than _FIRST_READ.
        buffer = bytearray(min(nr_bytes, _FIRST_READ))
        buffer[: len(first)] = first
        read = len(first)
        while read < nr_bytes:
            if read == len(buffer):
                buffer.extend(bytes(min(len(buffer), nr_bytes - read)))
            n = sock.recv_into(memoryview(buffer)[read:], len(buffer) - read)
            if not n:  # the peer closed the connection: what arrived so far, as pynetdicom does
                return buffer[:read]
            read += n
        return buffer


#: Bytes allocated for a PDU before any of it has arrived (the archive's PDUs are ~1 MiB).
_FIRST_READ = 4 << 20
#: Beyond the negotiated maximum: room for the PDUs it does not cover (association requests).
_PDU_SLACK = 64 << 10


def _largest_pdu(assoc: Association) -> int:
    """The largest PDU taken from the peer: our maximum length plus slack; no limit when the
    archive is configured without one (``max_pdu_size = 0``)."""
    maximum = int(assoc.ae.maximum_pdu_size or 0)
    return maximum + _PDU_SLACK if maximum else 1 << 32


class _SendWindow(queue.Queue):  # type: ignore[type-arg]
    """pynetdicom's queue of PDUs for the DUL thread to send, with room for ``limit`` P-DATA PDUs.

    A P-DATA waits for room (the DUL thread notifies on every get); anything else (release, abort)
    goes in at once, and nothing waits once the DUL has stopped.
    """

    def __init__(self, limit: int, alive: Callable[[], bool], signal: Callable[[], None]) -> None:
        super().__init__()
        self.limit = limit
        self.alive = alive
        self.signal = signal  # wakes an event-driven DUL thread (dicom_nodes.reactor)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, P_DATA):
            with self.not_full:
                while self._qsize() >= self.limit and self.alive():
                    self.not_full.wait(0.5)
        super().put(item, block, timeout)
        self.signal()


def tune(assoc: Association, send_window: int = SEND_WINDOW) -> None:
    """TCP_NODELAY, bulk PDU reads and a bounded send queue for ``assoc`` (before or once established)."""
    holder = assoc.dul.socket
    if holder is not None:
        # Same object, same state, one method faster: BulkReceiveSocket adds no attributes.
        holder.__class__ = BulkReceiveSocket
        if holder.socket is not None:
            try:
                holder.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # pynetdicom reads a whole PDU once its first bytes arrive, blocking; an accepted
                # socket has no timeout, so a peer that stops inside a PDU would hold the
                # association (and its thread) forever, out of reach of the ARTIM and idle timers.
                if assoc.network_timeout is not None and holder.socket.gettimeout() is None:
                    holder.socket.settimeout(assoc.network_timeout)
            except OSError:  # already closed by the peer: nothing left to send on it
                pass
    keep_reactor_off_responses(assoc)
    dul = assoc.dul
    if not isinstance(dul.to_provider_queue, _SendWindow):
        alive = lambda: dul.is_alive() and not dul._kill_thread  # noqa: E731
        window = _SendWindow(send_window, alive, reactor.wake_on_put(dul))
        window.queue.extend(dul.to_provider_queue.queue)
        dul.to_provider_queue = window


def keep_reactor_off_responses(assoc: Association) -> None:
    """pynetdicom's reactor thread checks its checkpoint, then reads the next DIMSE message; a
    ``send_*`` call that clears the checkpoint in between may lose its response to the reactor
    (logged as "Received unexpected ... service message"). Here the reactor's non-blocking read
    finds nothing while the checkpoint is cleared. Part of :func:`tune`; idempotent."""
    dimse = assoc.dimse
    if getattr(dimse, "_reactor_guard", False):
        return
    read = dimse.get_msg
    checkpoint = assoc._reactor_checkpoint

    def get_msg(block: bool = False) -> Any:
        if not block and not checkpoint.is_set():  # a send_* call has paused the reactor
            return None, None
        return read(block)

    dimse.get_msg = get_msg  # type: ignore[method-assign]
    dimse._reactor_guard = True  # type: ignore[attr-defined]

    # pynetdicom marks the reactor paused while it serves a request too (a handler may call
    # send_*), so "paused" alone does not tell another thread that the reactor is idle: the
    # response to the request is still to be sent.
    serve = assoc._serve_request
    serving: set[int] = set()

    def serve_request(msg: Any, context_id: int) -> None:
        serving.add(threading.get_ident())
        try:
            serve(msg, context_id)
        finally:
            serving.discard(threading.get_ident())

    assoc._serve_request = serve_request  # type: ignore[method-assign]
    assoc._serving = serving  # type: ignore[attr-defined]


def reactor_idle(assoc: Association) -> bool:
    """Whether ``assoc``'s reactor is held between two messages: its checkpoint cleared (a
    ``send_*`` of the reactor's own thread sets it again when it ends), the reactor marked paused
    and not serving a request. Only then may another thread send on it."""
    return (
        not assoc._reactor_checkpoint.is_set()
        and bool(assoc._is_paused)
        and not getattr(assoc, "_serving", None)
    )


class RequestHandler(transport.RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        reactor.install(assoc)  # before its threads start; tune() keeps what it installs
        store_service.install(assoc)  # before tune(), which wraps the request server it finds
        tune(assoc)
        return assoc
