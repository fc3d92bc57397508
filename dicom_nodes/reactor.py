"""Event-driven reactor loops for pynetdicom associations the archive accepts.

pynetdicom (3.0) runs two threads per association, and both poll: the DUL thread sleeps 1 ms
between looks at its socket and its queue of primitives to send, the association thread sleeps
1 ms between looks at the queue of decoded DIMSE messages. That is 2,000 wake-ups a second per
association, each taking the GIL. With sixteen associations on a worker, py-spy found 57 % of
the worker's samples in these two loops, and C-STORE throughput fell to a third of what four
associations reached.

:func:`install` gives an association, before its threads start, the same two loops with the sleep
replaced by a wait for something to do:

* the DUL thread waits in ``poll`` on its socket and on a pipe written whenever a primitive is
  queued for it or another thread queues a state machine event (and, for a TLS socket, not while
  decrypted bytes are buffered);
* the association thread waits on an event set whenever the DUL queues a DIMSE message or an
  ACSE primitive (release, abort) for it.

Both still wake every ``IDLE_WAKE`` seconds to see their timers (ARTIM, network idle), which keep
their meaning with that resolution; a kill wakes the loop it ends at once. Everything else is
pynetdicom's loop as it is: the state machine, the order of checks, the handling of an exception
in the DUL (the socket is closed too), and the pause protocol of the ``send_*`` methods (the
reactor is marked paused while it waits, and never reads a message while the checkpoint is
cleared; see :func:`dicom_nodes.transport.keep_reactor_off_responses`).
"""

from __future__ import annotations

import logging
import os
import queue
import select
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import evt
from pynetdicom.fsm import InvalidEventError
from pynetdicom.pdu import A_ABORT_RQ

from dicom_nodes import pdata

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

LOGGER = logging.getLogger("pynetdicom.dul")  # pynetdicom's own logger names, for the same messages
ASSOC_LOGGER = logging.getLogger("pynetdicom.association")

#: State machine events made from a primitive the local user queued (PS3.8 Table 9-10).
_LOCAL_EVENTS = frozenset({"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})

#: Seconds a loop sleeps at most with nothing to do: the resolution of the ARTIM and idle timers.
IDLE_WAKE = 0.2


class _Signalling(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``signal`` after every put (whatever class it replaces keeps its items)."""

    def __init__(self, signal: Any, items: Any = ()) -> None:
        super().__init__()
        self.signal = signal
        self.queue.extend(items)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.signal()


class _Wake:
    """A pipe the DUL thread selects on beside its socket; any thread may write to it."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.closed = False
        # A write after close would go to whatever file reuses the descriptor's number.
        self.lock = threading.Lock()

    def set(self) -> None:
        with self.lock:
            if self.closed:
                return
            try:
                os.write(self.write_fd, b"\0")
            except BlockingIOError:  # the pipe is full: a wake-up is pending anyway
                pass

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                os.close(self.read_fd)
                os.close(self.write_fd)


def install(assoc: Association) -> None:
    """Give ``assoc`` (not yet started) the event-driven loops; the send queue of the DUL is wrapped
    by whatever replaces it later too (:func:`wake_on_put`)."""
    if getattr(assoc, "_evented", False) or assoc.dul.is_alive():
        return
    dul = assoc.dul
    wake = _Wake()
    dul._wake = wake  # type: ignore[attr-defined]
    dul.to_provider_queue = _Signalling(wake.set, dul.to_provider_queue.queue)
    news = threading.Event()
    assoc._news = news  # type: ignore[attr-defined]
    assoc.dimse.msg_queue = _Signalling(news.set, assoc.dimse.msg_queue.queue)
    dul.to_user_queue = _Signalling(news.set, dul.to_user_queue.queue)

    # Events come from the DUL thread itself (every PDU read) but also from others (a socket
    # closed elsewhere: Evt17); only those need the wake-up, the DUL looks at its queue anyway.
    def wake_from_elsewhere() -> None:
        if threading.current_thread() is not dul:
            wake.set()

    dul.event_queue = _Signalling(wake_from_elsewhere, dul.event_queue.queue)
    dul._target = lambda: _run_dul(dul, wake)  # type: ignore[attr-defined]
    assoc._run_reactor = lambda: _run_association(assoc, news)  # type: ignore[method-assign]

    # A kill from any thread wakes the loop it ends, rather than waiting for its next look.
    def kill_dul() -> None:
        dul._kill_thread = True
        wake.set()

    def stop_dul() -> bool:  # pynetdicom's, with the wake-up
        if dul.state_machine.current_state != "Sta1":
            return False
        kill_dul()
        while dul.is_alive():
            time.sleep(0.001)
        return True

    kill = assoc.kill

    def kill_association() -> None:
        news.set()
        kill()

    dul.kill_dul = kill_dul  # type: ignore[method-assign]
    dul.stop_dul = stop_dul  # type: ignore[method-assign]
    assoc.kill = kill_association  # type: ignore[method-assign]
    assoc._evented = True  # type: ignore[attr-defined]


def wake_on_put(dul: DULServiceProvider) -> Any:
    """What a replacement of ``dul.to_provider_queue`` must call after each put (a no-op for a
    DUL running pynetdicom's own loop)."""
    wake = getattr(dul, "_wake", None)
    return wake.set if wake is not None else (lambda: None)


def _wait_for_socket(dul: DULServiceProvider, wake: _Wake, timeout: float) -> None:
    """Until the socket is readable (data, end of stream), the wake-up pipe is written, or
    ``timeout`` seconds. ``poll``, not ``select``: a busy process has descriptors above 1024."""
    holder = dul.socket
    sock = holder.socket if holder is not None and holder._is_connected else None
    fd = sock.fileno() if sock is not None else -1
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return  # decrypted bytes wait in the TLS layer: poll would not see them
    poller = select.poll()
    poller.register(wake.read_fd, select.POLLIN)
    if fd >= 0:  # else closed (Sta13, Sta1): only a primitive or an event can wake it
        poller.register(fd, select.POLLIN)
    try:
        poller.poll(timeout * 1000)
    except OSError:  # interrupted: the loop looks again
        pass
    wake.drain()


def _run_dul(dul: DULServiceProvider, wake: _Wake) -> None:
    """pynetdicom's ``DULServiceProvider.run_reactor`` with its 1 ms sleep replaced by a wait."""
    dul._idle_timer.start()
    busy = True
    try:
        while True:
            if not dul.assoc._dul_ready.is_set():
                dul.assoc._dul_ready.set()
            if not busy:
                _wait_for_socket(dul, wake, IDLE_WAKE)
            if dul._kill_thread:
                break
            if dul.artim_timer.expired:
                dul.event_queue.put("Evt18")
            try:
                if dul._process_recv_primitive():
                    pass
                elif pdata.transport_event(dul):
                    dul._idle_timer.restart()
            except Exception as exc:
                _abort(dul, exc)
                return
            try:
                event = dul.event_queue.get(block=False)
            except queue.Empty:
                busy = False
                continue
            try:
                dul.state_machine.do_action(event)
            except InvalidEventError as exc:
                if event not in _LOCAL_EVENTS:
                    _abort(dul, exc)
                    return
                # A primitive of ours the state no longer takes (a release response after the
                # association was aborted): pynetdicom's loop would die on it with the primitive
                # still queued. Dropped; the state machine goes on.
                try:
                    dropped = dul.to_provider_queue.get(block=False)
                except queue.Empty:
                    continue
                LOGGER.warning(
                    "dropping %s: not valid in state %s",
                    type(dropped).__name__,
                    dul.state_machine.current_state,
                )
            except Exception as exc:  # a PDU pynetdicom decoded but cannot act on (a PDV without header)
                _abort(dul, exc)
                return
            busy = True
    finally:
        holder = dul.socket
        if holder is not None and holder._is_connected:  # ended by an exception: let the peer know
            try:
                holder.close()
            except Exception:
                pass
            # The state machine, which would act on the close (AA-4), has stopped: tell those
            # waiting for the connection to end (the spooler discards what it was receiving).
            assoc = dul.assoc
            remote = assoc.acceptor if assoc.is_requestor else assoc.requestor
            address = remote.address_info.as_tuple if remote.address_info is not None else None
            evt.trigger(assoc, evt.EVT_CONN_CLOSE, {"address": address})
        _wake_association(dul.assoc)
        wake.close()


def _abort(dul: DULServiceProvider, exc: Exception) -> None:
    """What pynetdicom's loop does when reading fails: an A-ABORT to the peer, the association and
    the loop ended. Here also when acting on what was read fails, which pynetdicom's loop leaves to
    end the thread with the connection open and the peer unanswered."""
    LOGGER.error("Exception in DUL.run(), aborting association")
    LOGGER.exception(exc)
    abort_pdu = A_ABORT_RQ()
    abort_pdu.source = 0x02
    abort_pdu.reason_diagnostic = 0x00
    try:
        dul.socket.send(abort_pdu.encode())  # type: ignore[union-attr]
    except Exception:  # the connection is gone already
        pass
    dul.assoc.is_aborted = True
    dul.assoc.is_established = False
    dul.assoc._kill = True
    dul._kill_thread = True


def _wake_association(assoc: Association) -> None:
    news = getattr(assoc, "_news", None)
    if news is not None:
        news.set()


def _run_association(assoc: Association, news: threading.Event) -> None:
    """pynetdicom's ``Association._run_reactor`` with its 1 ms sleep replaced by a wait for news.

    The wait happens marked paused, so a ``send_*`` call never waits for it; after it, the loop
    goes through the checkpoint as pynetdicom's does.
    """
    assoc._is_paused = False
    busy = False
    while not assoc._kill:
        assoc._is_paused = True
        if not busy:
            news.wait(IDLE_WAKE)
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        news.clear()  # what arrives from here on wakes the next wait

        context_id, msg = assoc.dimse.get_msg(block=False)
        # A message hidden by a pause (another thread's send_*) must not cost the next wait its
        # wake-up: with one queued the loop goes round again (and waits at the checkpoint).
        busy = msg is not None or not assoc.dimse.msg_queue.empty()
        if msg:
            assoc._serve_request(msg, cast(int, context_id))

        if assoc.is_established and assoc.acse.is_release_requested():
            assoc.acse.send_release(is_response=True)
            ASSOC_LOGGER.info("Association Released")
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.kill()
            return

        if assoc.acse.is_aborted():
            log_msg = "Association Aborted"
            if assoc.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            ASSOC_LOGGER.info(log_msg)
            assoc.dul.receive_pdu(wait=False)
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return

        if not assoc.dul.is_alive():
            assoc.kill()
            return

        if assoc.dul.idle_timer_expired():
            ASSOC_LOGGER.error("Network timeout reached")
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return
