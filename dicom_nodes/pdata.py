"""C-STORE data set fragments written straight to their object, without pynetdicom's per-PDU work.

Senders cut a data set into P-DATA-TF PDUs of their own size, whatever the archive's maximum:
dcmtk sends at most 128 KiB a PDU, so a 2 MB radiograph arrives in 16 of them and an 18 MB one in
144. For each, pynetdicom copies the PDU three times (``bytes()`` for ``EVT_DATA_RECV``, a slice
per PDV item when decoding, another without the control header when writing it to the data set
file), builds a PDU object, a P-DATA primitive and a state machine event, and triggers two
notification events. Measured with py-spy on one association of 2 MB images, that was about half
of the receiving thread's time holding the GIL (the thread the C-STORE handler takes turns with).

:func:`transport_event` is what the event-driven DUL loop (:mod:`dicom_nodes.reactor`) calls in
place of ``DULServiceProvider._is_transport_event``. It takes the shortcut only for a PDU that
does nothing but continue the data set of the C-STORE request being received into a
:class:`dicom_nodes.spool.SpoolFile`:

* the association is established (Sta6, where a P-DATA-TF PDU changes no state), on a plain
  socket (a TLS socket cannot be peeked), and every PDU read before has been acted on;
* the PDU is a well-formed P-DATA-TF whose every PDV is a data set fragment, not the last one,
  under the presentation context of the request's command;
* nothing is bound to ``EVT_DATA_RECV`` or ``EVT_PDU_RECV`` (pynetdicom's standard handlers are,
  when the ``pynetdicom`` logger is at DEBUG: then every PDU goes pynetdicom's way and is logged).

Then each PDV's value goes to the spool file as a view of the one buffer the PDU was read into
(which nothing else holds: the spool file may queue it for hashing as it is) and the idle timer is
restarted, as for any PDU. Everything else, including the last fragment of each data set (which
completes the DIMSE message), any PDU not understood and any read that fails, goes through
pynetdicom's own ``_read_pdu_data`` or the same steps it takes after reading, so the state
machine sees those exactly as before.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

from pynetdicom import evt

from dicom_nodes.spool import SpoolFile

if TYPE_CHECKING:
    from pynetdicom.dul import DULServiceProvider

LOGGER = logging.getLogger("pynetdicom.dul")  # pynetdicom's logger, for its own messages

_PDU_HEADER = struct.Struct(">BBL")  # PDU type, reserved, length (PS3.8 9.3.1)
_PDV_HEADER = struct.Struct(">LBB")  # item length, presentation context ID, message control header
P_DATA_TF = 0x04
#: PDUs taken at most per call while more are waiting (dcmtk's 128 KiB PDUs: 4 MiB).
BURST = 32


def transport_event(dul: DULServiceProvider) -> bool:
    """``dul._is_transport_event()``: whether a PDU was read (or the connection found closed)."""
    holder = dul.socket
    if dul.state_machine.current_state != "Sta6" or holder is None:
        return bool(dul._is_transport_event())
    spool, context_id = _receiving(dul)
    sock = holder.socket
    # A PDU read earlier but not yet acted on (its event still queued) goes first: a fragment
    # written now would overtake it.
    backlog = not dul.event_queue.empty() or not dul._recv_pdu.empty()
    if spool is None or type(sock) is not socket.socket or backlog:
        return bool(dul._is_transport_event())
    if not holder.ready:  # as _is_transport_event (which also puts Evt17 if the socket failed)
        return False
    # PDUs already waiting are taken in one go, without going round the reactor's loop for each.
    for _ in range(BURST):
        if not _shortcut(dul, holder, sock, spool, context_id) or not holder.ready:
            break
    return True


def _shortcut(
    dul: DULServiceProvider, holder: Any, sock: socket.socket, spool: SpoolFile, context_id: int
) -> bool:
    """Read the next PDU; whether it went straight to ``spool`` (else pynetdicom has it)."""
    try:
        header = sock.recv(_PDU_HEADER.size, socket.MSG_PEEK)
    except OSError:  # the connection is gone: pynetdicom's read tells the state machine (Evt17)
        header = b""
    if len(header) != _PDU_HEADER.size or header[0] != P_DATA_TF:
        dul._read_pdu_data()
        return False
    length = _PDU_HEADER.unpack(header)[2]
    # The whole PDU: BulkReceiveSocket drops one longer than negotiated (returns nothing), and
    # reads what arrived before a close; either comes out short of 6 + length bytes.
    try:
        pdu = holder.recv(_PDU_HEADER.size + length)
    except (OSError, TimeoutError) as exc:
        LOGGER.error("Connection closed before the entire PDU was received")
        LOGGER.exception(exc)
        dul.event_queue.put("Evt17")
        return False
    if len(pdu) != _PDU_HEADER.size + length:
        LOGGER.error(
            f"The received PDU is shorter than expected ({len(pdu)} of {_PDU_HEADER.size + length} "
            "bytes received)"
        )
        dul.event_queue.put("Evt17")
        return False
    fragments = _fragments(pdu, context_id)
    if fragments is None or _observed(dul):
        _deliver(dul, pdu)
        return False
    view = memoryview(pdu)
    for start, end in fragments:
        spool.write(view[start:end])
    return True


def _receiving(dul: DULServiceProvider) -> tuple[SpoolFile | None, int]:
    """The spool file of the C-STORE data set being received, and its presentation context."""
    message: Any = dul.assoc.dimse.message
    if message is None:
        return None, 0
    spool = getattr(message, "_data_set_file", None)
    context_id = getattr(message, "context_id", None)
    if not isinstance(spool, SpoolFile) or not isinstance(context_id, int):
        return None, 0
    return spool, context_id


def _fragments(pdu: bytes | bytearray, context_id: int) -> list[tuple[int, int]] | None:
    """Where the values of a P-DATA-TF PDU's data set fragments lie in it; ``None`` unless every
    PDV is a data set fragment but the last of ``context_id``, and the items fill the PDU exactly."""
    end = len(pdu)
    offset = _PDU_HEADER.size
    fragments = []
    while offset < end:
        if offset + _PDV_HEADER.size > end:
            return None
        length, item_context, control = _PDV_HEADER.unpack_from(pdu, offset)
        value_end = offset + 4 + length
        # control & 1: a command fragment; control & 2: the last fragment of the message.
        if length < 2 or value_end > end or item_context != context_id or control & 3:
            return None
        fragments.append((offset + _PDV_HEADER.size, value_end))
        offset = value_end
    return fragments or None


def _observed(dul: DULServiceProvider) -> bool:
    """Whether a handler wants to see each PDU (pynetdicom's standard log handlers at DEBUG)."""
    assoc = dul.assoc
    return bool(assoc.get_handlers(evt.EVT_DATA_RECV) or assoc.get_handlers(evt.EVT_PDU_RECV))


def _deliver(dul: DULServiceProvider, pdu: bytes | bytearray) -> None:
    """What ``DULServiceProvider._read_pdu_data`` does with a PDU once it has read it."""
    try:
        decoded, event = dul._decode_pdu(pdu)  # type: ignore[arg-type]  # read only (bytes() first)
        dul.event_queue.put(event)
    except Exception as exc:
        LOGGER.error("Unable to decode the received PDU data")
        LOGGER.exception(exc)
        dul.event_queue.put("Evt19")  # unrecognised or invalid PDU: the association is aborted
        return
    dul._recv_pdu.put(decoded)
