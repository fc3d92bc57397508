"""DICOM over TLS (PS3.15 Annex B, the BCP 195 TLS secure transport connection profiles): the TLS
contexts of the archive's TLS listener and of its associations with nodes marked ``tls``, built
from the configuration, and the handshake of an accepted TLS connection.

* One certificate and key (``tls_certificate``, ``tls_private_key``) identify the archive both ways:
  to peers that connect to its TLS port and to nodes it connects to.
* Peers' certificates must chain to ``tls_ca_certificates``. The listener asks every peer for one
  and, with ``tls_require_client_certificate`` (the default), refuses a peer without a trusted
  certificate: the DICOM TLS profiles authenticate both nodes, and an AE title is no credential.
  Outbound, the node's certificate must chain to the same CAs (the system's trusted CAs when
  ``tls_ca_certificates`` is unset) and, with ``tls_verify_peer_hostname``, name the node's host.
* TLS 1.2 or newer, with Python's default cipher suites (forward-secret AES-GCM and ChaCha20, no
  SHA-1 or RSA key exchange); TLS 1.3 when the peer offers it.

:func:`server_context` and :func:`client_context` read and check the files and raise
:class:`~pacs.config.ConfigError` naming the setting at fault; ``pacs serve`` calls them before it
starts anything. The handshake of an accepted connection runs in the association's own thread
(:class:`TlsRequestHandler`), bounded by ``acse_timeout``, never in the accept loop, so a peer that
connects and stays silent holds up nobody else.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from dicom_nodes.transport import RequestHandler
from pacs.audit import Action, AuditEvent, AuditTrail, Outcome
from pacs.config import ConfigError, Settings
from pacs.context import CallerContext, host_port
from pacs.index.nodes import Node

log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: A certificate that expires sooner than this is reported when ``pacs serve`` starts.
EXPIRY_WARNING = dt.timedelta(days=30)
#: OpenSSL's reasons for a handshake that failed on the peer's certificate: an authentication
#: failure, audited like a failed login (anything else is a protocol error, only logged).
_CERTIFICATE_REASONS = frozenset({"CERTIFICATE_VERIFY_FAILED", "PEER_DID_NOT_RETURN_A_CERTIFICATE"})
#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH and _IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = frozenset({62, 63, 64})
#: TLS alerts by which a peer refuses the certificate we showed it (or that we showed none).
_REFUSED_OUR_CERTIFICATE = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    }
)


# -- contexts -------------------------------------------------------------------------------------
def server_context(settings: Settings) -> ssl.SSLContext:
    """The context of the TLS listener (``dicom_tls_port``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_own_certificate(context, settings)
    if settings.tls_ca_certificates is not None:
        _load_trusted(context, settings.tls_ca_certificates)
        # Asked of every peer; verified when given. Optional only when configured so.
        context.verify_mode = (
            ssl.CERT_REQUIRED if settings.tls_require_client_certificate else ssl.CERT_OPTIONAL
        )
    elif settings.tls_require_client_certificate:  # Settings refuses this; kept for direct callers
        raise ConfigError("tls_require_client_certificate needs tls_ca_certificates")
    return context


def client_context(settings: Settings) -> ssl.SSLContext:
    """The context of outbound TLS associations; one per configuration, shared by every thread."""
    return _client_context(
        settings.tls_certificate,
        settings.tls_private_key,
        settings.tls_ca_certificates,
        settings.tls_verify_peer_hostname,
    )


def client_tls_args(settings: Settings, node: Node) -> tuple[ssl.SSLContext, str] | None:
    """``tls_args`` for pynetdicom's ``AE.associate`` with ``node``: None unless it is marked ``tls``."""
    if not node.tls:
        return None
    transport_log = logging.getLogger("pynetdicom.transport")
    if _HANDSHAKE_TRACEBACKS not in transport_log.filters:
        transport_log.addFilter(_HANDSHAKE_TRACEBACKS)
    return client_context(settings), node.host


def check(settings: Settings) -> ssl.SSLContext | None:
    """What ``pacs serve`` runs before it starts anything: every TLS file read and checked (a
    :class:`~pacs.config.ConfigError` names the setting at fault), the certificate's validity
    reported; returns the listener's context, None without ``dicom_tls_port``."""
    given = settings.dicom_tls_port is not None or any(
        path is not None
        for path in (settings.tls_certificate, settings.tls_private_key, settings.tls_ca_certificates)
    )
    if not given:
        return None
    context = server_context(settings) if settings.dicom_tls_port is not None else None
    client_context(settings)
    if settings.tls_certificate is not None:
        _report_validity(
            _certificates(settings.tls_certificate, "tls_certificate")[0], settings.tls_certificate
        )
    return context


class _DropHandshakeTracebacks(logging.Filter):
    """pynetdicom logs a failed TLS connection as an error line with the reason, then once more
    with the traceback; the archive's log keeps the line. (The caller gets the reason too.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ssl.SSLError))


_HANDSHAKE_TRACEBACKS = _DropHandshakeTracebacks()


@functools.lru_cache(maxsize=4)
def _client_context(
    certificate: Path | None, private_key: Path | None, ca_certificates: Path | None, verify_hostname: bool
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED: a node always shows one
    context.minimum_version = MINIMUM_VERSION
    context.check_hostname = verify_hostname
    if ca_certificates is not None:
        _load_trusted(context, ca_certificates)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certificate is not None and private_key is not None:
        _load_pair(context, certificate, private_key)
    return context


def _load_own_certificate(context: ssl.SSLContext, settings: Settings) -> None:
    if settings.tls_certificate is None or settings.tls_private_key is None:
        raise ConfigError("the DICOM TLS port needs tls_certificate and tls_private_key")
    _load_pair(context, settings.tls_certificate, settings.tls_private_key)


def _load_pair(context: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    chain = _certificates(certificate, "tls_certificate")
    key = _private_key(private_key)
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != chain[0].public_key().public_bytes(*public):
        raise ConfigError(
            f"tls_private_key: {private_key} is not the key of the certificate in tls_certificate "
            f"({certificate}, {chain[0].subject.rfc4514_string()})"
        )
    try:
        context.load_cert_chain(certificate, private_key, password=_no_password)
    except ssl.SSLError as exc:  # read above, so rare: a key type or size OpenSSL refuses
        raise ConfigError(f"tls_certificate / tls_private_key: OpenSSL refuses them: {exc}") from None


def _load_trusted(context: ssl.SSLContext, bundle: Path) -> None:
    _certificates(bundle, "tls_ca_certificates")
    try:
        context.load_verify_locations(cafile=bundle)
    except ssl.SSLError as exc:
        raise ConfigError(f"tls_ca_certificates: OpenSSL refuses {bundle}: {exc}") from None


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def _certificates(path: Path, setting: str) -> list[x509.Certificate]:
    data = _read(path, setting)
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        found = []
    if not found:
        raise ConfigError(f"{setting}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return found


def _private_key(path: Path) -> Any:
    data = _read(path, "tls_private_key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"tls_private_key: {path} is encrypted; give it unencrypted and readable only by the "
            "archive's user (openssl pkey -in KEY -out NEWKEY)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"tls_private_key: {path} holds no PEM private key") from None


def _no_password() -> str:
    # Never let OpenSSL prompt on the terminal of a service (an encrypted key is refused above).
    raise ConfigError("tls_private_key is encrypted")


def _report_validity(certificate: x509.Certificate, path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    subject = certificate.subject.rfc4514_string()
    if certificate.not_valid_after_utc < now:
        log.error(
            "tls_certificate %s (%s) expired on %s: peers will refuse TLS associations",
            path,
            subject,
            certificate.not_valid_after_utc.date(),
        )
    elif certificate.not_valid_before_utc > now:
        log.error(
            "tls_certificate %s (%s) is not valid before %s: peers will refuse TLS associations",
            path,
            subject,
            certificate.not_valid_before_utc,
        )
    elif certificate.not_valid_after_utc - now < EXPIRY_WARNING:
        log.warning(
            "tls_certificate %s (%s) expires on %s", path, subject, certificate.not_valid_after_utc.date()
        )


# -- accepted connections -------------------------------------------------------------------------
class TlsRequestHandler(RequestHandler):
    """An accepted TLS connection: the handshake first (in this, the association's thread), then
    the association as on the plain port. A failed handshake is logged, audited when it failed on
    the peer's certificate, and the connection closed; the server goes on."""

    def handle(self) -> None:
        if self._handshake():
            super().handle()

    def _handshake(self) -> bool:
        conn = self.request
        assert isinstance(conn, ssl.SSLSocket)
        host, port = self.client_address[:2]
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(self.server.ae.acse_timeout)
            conn.do_handshake()
            conn.settimeout(None)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a timeout too
            _close(conn)
            self._refused(host_port(host, port), exc)
            return False
        if log.isEnabledFor(logging.DEBUG):
            cipher = conn.cipher()
            log.debug(
                "TLS connection from %s:%s: %s %s, certificate %s",
                host,
                port,
                conn.version(),
                cipher[0] if cipher else "?",
                _subject(conn.getpeercert()),
            )
        return True

    def _refused(self, address: str, exc: BaseException) -> None:
        reason = describe_failure(exc)
        log.warning("TLS connection from %s refused: %s", address, reason)
        audit: AuditTrail | None = getattr(self.server, "audit", None)
        if audit is not None and getattr(exc, "reason", None) in _CERTIFICATE_REASONS:
            audit.record_later(
                AuditEvent(
                    Action.LOGIN_FAILED,
                    CallerContext(via="dicom-tls", address=address),
                    Outcome.REFUSED,
                    detail={"reason": reason},
                )
            )


def describe_failure(exc: BaseException) -> str:
    """A handshake failure in words an operator can act on."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake within acse_timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return f"the certificate is not for this host: {exc.verify_message} (tls_verify_peer_hostname)"
        return f"certificate not trusted: {exc.verify_message}"
    reason = getattr(exc, "reason", None)
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "the peer sent no certificate (tls_require_client_certificate)"
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNEXPECTED_RECORD", "RECORD_LAYER_FAILURE"):
        return f"not a TLS handshake ({reason}): a plain DICOM peer on the TLS port?"
    if reason == "UNSUPPORTED_PROTOCOL":
        return "the peer offers only TLS versions older than 1.2"
    if reason in ("NO_SHARED_CIPHER", "SSLV3_ALERT_HANDSHAKE_FAILURE"):
        return f"no cipher suite in common ({reason}): the peer offers only retired ones?"
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return "the peer closed the connection during the TLS handshake"
    if reason in _REFUSED_OUR_CERTIFICATE:
        return f"the peer refused our certificate (tls_certificate): {reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {reason or exc}"
    return f"connection lost during the TLS handshake: {exc}"


def _subject(certificate: Any) -> str:
    if not certificate:
        return "none"
    parts = [f"{k}={v}" for rdn in certificate.get("subject", ()) for k, v in rdn]
    return ",".join(parts) or "(no subject)"


def _close(conn: socket.socket) -> None:
    try:
        conn.close()
    except OSError:
        pass


# -- outbound diagnosis -------------------------------------------------------------------------
def handshake_problem(settings: Settings, node: Node, timeout: float = 10.0) -> str | None:
    """Why a TLS handshake with ``node`` fails, or None when it does not (or the node cannot be
    reached at all: then the failure is not TLS's). pynetdicom only logs why a connection failed;
    this tries one handshake to tell the caller. With TLS 1.3 a peer refuses our certificate after
    the handshake, so the first second of the connection is read for its alert."""
    try:
        context = client_context(settings)
        raw = socket.create_connection((node.host, node.port), timeout=timeout)
    except ConfigError as exc:
        return str(exc)
    except OSError:
        return None
    try:
        with context.wrap_socket(raw, server_hostname=node.host) as conn:
            conn.settimeout(1.0)
            try:
                conn.recv(1)  # a DICOM acceptor sends nothing first; a refusal is an alert
            except TimeoutError:
                pass
            return None
    except (OSError, ValueError) as exc:
        if isinstance(exc, ssl.SSLError):
            return describe_failure(exc)
        return None
    finally:
        _close(raw)


__all__ = [
    "MINIMUM_VERSION",
    "TlsRequestHandler",
    "client_context",
    "check",
    "client_tls_args",
    "describe_failure",
    "handshake_problem",
    "server_context",
]
