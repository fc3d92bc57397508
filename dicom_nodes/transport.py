"""Socket reads sized for the archive's large PDUs.

pynetdicom's ``AssociationSocket.recv`` assembles a PDU from ``recv(4096)`` calls in a Python loop.
With the megabyte PDUs the archive negotiates (``max_pdu_size``) that loop, not the data copy,
dominates the receive cost: 256 iterations per MiB. :class:`BulkReceiveSocket` reads the PDU into
one buffer with ``recv_into`` and otherwise behaves the same (it returns what arrived before the
peer closed the connection). :class:`RequestHandler` gives every accepted association one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pynetdicom import transport

if TYPE_CHECKING:
    from pynetdicom.association import Association


class BulkReceiveSocket(transport.AssociationSocket):
    def recv(self, nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        sock = self.socket
        assert sock is not None
        read = 0
        while read < nr_bytes:
            n = sock.recv_into(view[read:], nr_bytes - read)
            if not n:  # the peer closed the connection: what arrived so far, as pynetdicom does
                del view
                return buffer[:read]
            read += n
        return buffer


class RequestHandler(transport.RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # Same object, same state, one method faster: BulkReceiveSocket adds no attributes.
        assoc.dul.socket.__class__ = BulkReceiveSocket
        return assoc
