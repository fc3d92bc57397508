"""The archive's DICOM application entity: every DIMSE service it offers, on a listening socket
and optionally on a second one for DICOM over TLS.

The sockets are created by the caller: ``pacs serve`` makes them once and every worker process
accepts on them (pre-fork, like gunicorn), so associations spread over processes and the GIL of one
process does not cap throughput; tests make them on free ports. Whichever process is idle picks up
the next connection. Both sockets serve the same AE: the same services, the same association
policy and the same association limit; the TLS one first runs a TLS handshake (:mod:`dicom_nodes.tls`).
"""

from __future__ import annotations

import gc
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_nodes import commitment, find, get, move, negotiation, store
from dicom_nodes.policy import AssociationLimiter, AssociationPolicy, guard
from dicom_nodes.spool import Spooler
from dicom_nodes.tls import TlsRequestHandler
from dicom_nodes.transport import RequestHandler, quiet_logging
from pacs.archive import Archive
from pacs.audit import AuditTrail
from pacs.config import Settings
from pacs.dicom import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)

UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
storage_sop_classes = store.storage_sop_classes  # re-exported: docs and tests list them from here


class SharedSocketServer(ThreadedAssociationServer):
    """A pynetdicom server on a listening socket made elsewhere and possibly shared with other processes."""

    request_handler_class: type[RequestHandler] = RequestHandler

    def __init__(self, ae: AE, listening: socket.socket, contexts: list[Any], handlers: list[Any]) -> None:
        self._listening = listening
        super().__init__(
            ae,
            listening.getsockname(),
            ae.ae_title,
            contexts,
            evt_handlers=handlers,
            request_handler=self.request_handler_class,
        )

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()  # the one socketserver just made; ours is already bound
        self.socket = self._listening
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Already listening."""

    def service_actions(self) -> None:
        """pynetdicom runs a full ``gc.collect()`` every 60 polls of the accept loop (every 12 s with
        ``poll_interval=0.2``) to reclaim finished associations; on a worker's large heap that
        stalled every thread, associations in flight included, for a few hundred milliseconds. Their
        cycles are young: collecting the two young generations is enough, and Python's own collector
        still runs the full collections when it decides to."""
        self._polls = getattr(self, "_polls", 0) + 1
        if self._polls >= 60:
            self._polls = 0
            gc.collect(1)

    def server_close(self) -> None:
        # Never shutdown() a listening socket shared with other processes: that stops theirs too.
        if self.socket is not None:
            self.socket.close()


class SharedTlsSocketServer(SharedSocketServer):
    """The same on the TLS port: each accepted connection is wrapped for TLS here, and its handshake
    runs in the connection's own thread (:class:`~dicom_nodes.tls.TlsRequestHandler`), not in the
    accept loop as pynetdicom's would."""

    request_handler_class = TlsRequestHandler

    def __init__(
        self,
        ae: AE,
        listening: socket.socket,
        contexts: list[Any],
        handlers: list[Any],
        context: ssl.SSLContext,
        audit: AuditTrail | None = None,
    ) -> None:
        super().__init__(ae, listening, contexts, handlers)
        self.tls_context = context
        self.audit = audit  # failed client authentications are audited

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        conn, address = self.socket.accept()
        wrapped = self.tls_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return wrapped, address


class Registry:
    """What the DIMSE service modules add to a node: presentation contexts and event handlers.

    Each service module (``store``, and the query/retrieve ones) has a ``register(registry)``
    function; the node calls those of :data:`SERVICES`.
    """

    def __init__(self, ae: AE, archive: Archive, settings: Settings, spooler: Spooler) -> None:
        self.ae = ae
        self.archive = archive
        self.settings = settings
        self.spooler = spooler
        self.handlers: list[Any] = []

    def add_context(
        self,
        abstract_syntax: str,
        transfer_syntaxes: Sequence[str],
        scu_role: bool | None = None,
        scp_role: bool | None = None,
    ) -> None:
        self.ae.add_supported_context(abstract_syntax, list(transfer_syntaxes), scu_role, scp_role)

    def bind(self, event: Any, handler: Callable[..., Any], args: Sequence[Any] | None = None) -> None:
        self.handlers.append((event, handler, list(args)) if args is not None else (event, handler))


def _register_verification(registry: Registry) -> None:
    """C-ECHO (PS3.4 A.4): pynetdicom answers Success by default."""
    registry.add_context(Verification, UNCOMPRESSED)


ServiceModule = Callable[[Registry], None]
SERVICES: tuple[ServiceModule, ...] = (
    _register_verification,
    store.register,
    find.register,
    move.register,
    get.register,  # after store.register: it re-registers the storage contexts with both roles
    commitment.register,
)


class DicomNode:
    """One process's share of the archive's DIMSE face."""

    def __init__(
        self,
        settings: Settings,
        archive: Archive,
        listening: socket.socket,
        limiter: AssociationLimiter,
        spooler: Spooler,
        services: Sequence[ServiceModule] = SERVICES,
        tls: tuple[socket.socket, ssl.SSLContext] | None = None,
    ) -> None:
        """``tls``: the TLS listening socket and its context (:func:`dicom_nodes.tls.server_context`)."""
        self.settings = settings
        self.spooler = spooler
        # Before the servers exist: each binds pynetdicom's standard log handlers when it is made.
        quiet_logging()
        listening.setblocking(False)  # several processes accept on it; the losers must not block
        ae = AE(settings.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = settings.max_pdu_size
        ae.acse_timeout = settings.acse_timeout
        ae.dimse_timeout = settings.dimse_timeout
        ae.network_timeout = settings.network_timeout
        ae.maximum_associations = settings.max_associations  # the shared limiter is the real bound
        self.ae = ae
        registry = Registry(ae, archive, settings, spooler)
        for register in services:
            register(registry)
        policy = AssociationPolicy(settings.allowed_peers, limiter)
        handlers = [
            *policy.handlers(),
            (evt.EVT_ACCEPTED, negotiation.log_refused_contexts),
            (evt.EVT_CONN_CLOSE, spooler.on_connection_closed),
            *guard(registry.handlers, spooler, archive.audit),
        ]
        self.server = SharedSocketServer(ae, listening, ae.supported_contexts, handlers)
        self.tls_server: SharedTlsSocketServer | None = None
        if tls is not None:
            tls_listening, context = tls
            tls_listening.setblocking(False)
            self.tls_server = SharedTlsSocketServer(
                ae, tls_listening, ae.supported_contexts, handlers, context, archive.audit
            )
        for server in self._servers:
            ae._servers.append(server)
        self._threads: list[threading.Thread] = []

    @property
    def _servers(self) -> list[SharedSocketServer]:
        return [self.server] + ([self.tls_server] if self.tls_server is not None else [])

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    @property
    def tls_address(self) -> tuple[str, int] | None:
        if self.tls_server is None:
            return None
        host, port = self.tls_server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.spooler.install()
        negotiation.install()
        for server, name in zip(self._servers, ("dicom-accept", "dicom-tls-accept"), strict=False):
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def active_associations(self) -> Sequence[Any]:
        return [assoc for server in self._servers for assoc in server.active_associations]

    def stop(self, grace: float) -> None:
        """Stop accepting; let running associations finish for up to ``grace`` seconds, then abort them.

        An aborted C-STORE never got its Success, so nothing is lost: the sender still has it, and
        the partial object is discarded here.
        """
        for server in self._servers:
            socketserver.BaseServer.shutdown(server)  # stop the accept loop only (no socket shutdown)
        deadline = time.monotonic() + grace
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = self.active_associations()
        for assoc in remaining:
            log.warning(
                "aborting association with %s after %.0f s shutdown grace", assoc.requestor.ae_title, grace
            )
            assoc.abort()
        for assoc in remaining:
            assoc.join(timeout=5)
        discarded = self.spooler.abort_pending()
        if discarded:
            log.warning("discarded %d partly received object(s)", discarded)
        for server in self._servers:
            server.server_close()
            if server in self.ae._servers:
                self.ae._servers.remove(server)
        negotiation.uninstall()
        self.spooler.uninstall()
