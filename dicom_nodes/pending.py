"""Pending C-FIND responses written to the association's socket in batches.

pynetdicom sends each response of a C-FIND as its own DIMSE message: the handler yields a dataset,
pynetdicom encodes the command set (twice, to measure its group length) and the identifier, queues
two P-DATA PDUs, and its DUL thread, which polls its queue with 1 ms sleeps, sends them one at a
time. That came to 1-3 ms a match, many times the index query. The pending responses of one
C-FIND all carry the same command set (Status 0xFF00 Pending, the same Message ID Being Responded
To and SOP class), so :class:`PendingResponses` encodes it once (:func:`command_set`), puts
each identifier (already encoded, :func:`pacs.query.response.encode_identifier`) after it as
P-DATA-TF PDUs (PS3.8 9.3.5, fragmented to the peer's maximum PDU length as pynetdicom does), and
writes many responses in one socket send. The final response (Success, Cancel or a failure) still
goes through pynetdicom, after the last batch, so the order on the wire is the order of the
responses.

Writing beside pynetdicom's queue is safe because nothing else is queued on the association while
a C-FIND is answered (no asynchronous operations are negotiated, so the peer sent this request only
after the previous response arrived), and :meth:`PendingResponses.open` waits for the queue to be
empty before the first write. A failed send is reported to pynetdicom's state machine as a closed
connection (its own ``AssociationSocket.send`` does that), and the writer stops.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

PENDING = 0xFF00
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

#: A batch is sent when it holds this many bytes, or when it is this old (so that a slow stream of
#: matches still reaches the peer steadily).
BATCH_BYTES = 64 * 1024
BATCH_SECONDS = 0.05
#: How long to wait for pynetdicom's send queue to drain before the first direct write.
DRAIN_SECONDS = 5.0

# Message control header of a PDV (PS3.8 E.2): bit 0 command (1) or data set (0), bit 1 last fragment.
_COMMAND = 0x01
_DATASET = 0x00
_LAST = 0x02
C_FIND_RSP_FIELD = 0x8020
DATA_SET_PRESENT = 0x0001  # Command Data Set Type: anything but 0x0101 (pynetdicom writes 1)


def command_set(sop_class_uid: str, message_id: int) -> bytes:
    """The command set of a pending C-FIND-RSP (PS3.7 9.3.2.2), implicit VR little endian as every
    command set is: Command Group Length, Affected SOP Class UID, Command Field, Message ID Being
    Responded To, Command Data Set Type, Status."""
    uid = sop_class_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\x00"
    body = (
        struct.pack("<HHI", 0x0000, 0x0002, len(uid))
        + uid
        + struct.pack("<HHIH", 0x0000, 0x0100, 2, C_FIND_RSP_FIELD)
        + struct.pack("<HHIH", 0x0000, 0x0120, 2, message_id)
        + struct.pack("<HHIH", 0x0000, 0x0800, 2, DATA_SET_PRESENT)
        + struct.pack("<HHIH", 0x0000, 0x0900, 2, PENDING)
    )
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def p_data_tf(data: bytes, context_id: int, max_pdu: int, control: int) -> list[bytes]:
    """``data`` as P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5), fragments of at most the peer's
    maximum PDU length less the PDV header (as pynetdicom fragments); 0: no limit."""
    step = max_pdu - 6 if max_pdu else len(data) or 1
    pdus = []
    for start in range(0, max(len(data), 1), step):
        piece = data[start : start + step]
        flags = control | (_LAST if start + step >= len(data) else 0)
        pdus.append(
            struct.pack(">BBIIBB", 0x04, 0, len(piece) + 6, len(piece) + 2, context_id, flags) + piece
        )
    return pdus


class PendingResponses:
    """Pending responses of one C-FIND, written in batches; see the module docstring."""

    def __init__(
        self, assoc: Association, context_id: int, implicit_vr: bool, command_pdus: bytes, max_pdu: int
    ) -> None:
        self.assoc = assoc
        self.context_id = context_id
        #: The identifiers' encoding: the presentation context's transfer syntax.
        self.implicit_vr = implicit_vr
        self.command_pdus = command_pdus
        self.max_pdu = max_pdu
        self.batch = bytearray()
        self.started = time.monotonic()
        self.failed = False

    @classmethod
    def open(cls, event: Event) -> PendingResponses | None:
        """A writer for the responses to ``event``'s C-FIND, or None when its transfer syntax is not
        little endian (the identifiers are encoded for those two only) or the queue does not drain."""
        context = event.context
        syntax = str(context.transfer_syntax)
        if syntax not in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN):
            return None
        assoc = event.assoc
        request = event.request
        max_pdu = int(assoc.requestor.maximum_length or 0)  # what the peer can receive
        command = command_set(str(request.AffectedSOPClassUID), cast(int, request.MessageID))
        command_pdus = b"".join(p_data_tf(command, context.context_id, max_pdu, control=_COMMAND))
        deadline = time.monotonic() + DRAIN_SECONDS
        while not assoc.dul.to_provider_queue.empty():
            if time.monotonic() > deadline or not assoc.is_established:
                return None
            time.sleep(0.0005)
        return cls(assoc, context.context_id, syntax == IMPLICIT_VR_LITTLE_ENDIAN, command_pdus, max_pdu)

    def add(self, identifier: bytes) -> None:
        """Queue one pending response with this (encoded) identifier; sends when the batch is full."""
        self.batch += self.command_pdus
        for pdu in p_data_tf(identifier, self.context_id, self.max_pdu, control=_DATASET):
            self.batch += pdu
        if len(self.batch) >= BATCH_BYTES or time.monotonic() - self.started >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> bool:
        """Send what is batched; False once the association can no longer take responses."""
        if self.batch and not self.failed:
            holder = self.assoc.dul.socket
            sock = holder.socket if holder is not None else None
            if sock is None or not self.assoc.is_established:
                self.failed = True
            else:
                try:
                    sock.sendall(self.batch)
                except OSError:  # the peer went away: tell pynetdicom as its own send would
                    self.assoc.dul.event_queue.put("Evt17")
                    self.failed = True
        self.batch.clear()
        self.started = time.monotonic()
        return not self.failed
