"""DICOM over TLS, as a site runs it: ``pacs serve`` with a TLS port and certificates from the
configuration, reached by DCMTK's TLS clients, and the archive sending over TLS to DCMTK's storescp.

The certificates are made here (``cryptography``): a CA the archive trusts, the archive's own
certificate (for 127.0.0.1 and localhost, used both ways), a device's client certificate, a
certificate from a CA nobody trusts, and peer certificates for the storescp the archive sends to.
TLS is transport only, the same whatever the index and the object store, so the server runs on the
embedded default (SQLite + files); one server serves the inbound tests of the module.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.factories import diconde_dx, write
from tests.support.net import free_port, wait_for_port
from tests.support.serve import PacsServer, dataset_offset, run_pacs, wait_until

STORESCU, ECHOSCU, STORESCP = "/usr/bin/storescu", "/usr/bin/echoscu", "/usr/bin/storescp"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


# -- certificates -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    certificate: Path
    key: Path


class Authority:
    """A certificate authority that issues leaf certificates into ``folder``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        now = dt.datetime.now(dt.UTC)
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.bundle = folder / f"{name}-ca.pem"
        self.bundle.write_bytes(self._certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, name: str, *, hosts: tuple[str, ...] = (), server: bool = False, client: bool = False
    ) -> Identity:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        identity = Identity(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        identity.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        identity.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        identity.key.chmod(0o600)
        return identity


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


@dataclass(frozen=True)
class Pki:
    ca: Path  # what the archive trusts
    archive: Identity  # the archive's own certificate, shown both ways
    device: Identity  # a client certificate from the trusted CA
    stranger: Identity  # a client certificate from a CA nobody trusts
    peer: Identity  # storescp's certificate, from the trusted CA, for 127.0.0.1
    peer_by_name: Identity  # the same, but naming only "localhost"
    peer_stranger: Identity  # a storescp certificate from the untrusted CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    trusted, untrusted = Authority(folder, "lab"), Authority(folder, "elsewhere")
    return Pki(
        ca=trusted.bundle,
        archive=trusted.issue("ndt-pacs", hosts=("localhost", "127.0.0.1"), server=True, client=True),
        device=trusted.issue("dr-panel-1", client=True),
        stranger=untrusted.issue("intruder", client=True),
        peer=trusted.issue("viewer-1", hosts=("127.0.0.1",), server=True),
        peer_by_name=trusted.issue("viewer-2", hosts=("localhost",), server=True),
        peer_stranger=untrusted.issue("viewer-3", hosts=("127.0.0.1",), server=True),
    )


def tls_flags(pki: Pki) -> list[str]:
    return [
        "--tls-certificate",
        str(pki.archive.certificate),
        "--tls-private-key",
        str(pki.archive.key),
        "--tls-ca-certificates",
        str(pki.ca),
    ]


# -- the archive with a TLS port ----------------------------------------------------------------------
@dataclass
class TlsArchive:
    server: PacsServer
    data_dir: Path
    token: str

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.http_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


@pytest.fixture(scope="module")
def archive_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsArchive]:
    folder = tmp_path_factory.mktemp("archive")
    data = folder / "data"
    flags = ["--data-dir", str(data), "--dicom-tls-port", "0", *tls_flags(pki)]
    with PacsServer(flags, workers=1, log_path=folder / "serve.log") as server:
        token = server.stdout_lines[1]  # the first admin's token, printed once before the ready line
        yield TlsArchive(server, data, token)
    assert server.returncode == 0, server.log()
    assert "Traceback" not in server.log()


def dcmtk(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        env=DCMTK_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def to_tls_port(archive: TlsArchive) -> list[str]:
    server = archive.server
    assert server.dicom_tls_port is not None
    return ["-aec", server.ae_title, server.host, str(server.dicom_tls_port)]


def wado_instance(archive: TlsArchive, path: Path) -> bytes:
    response = wado(archive, path)
    assert response.status_code == 200, response.text
    return response.content


def wado(archive: TlsArchive, path: Path) -> httpx.Response:
    """WADO-URI of the instance in ``path``, as Part 10."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    with archive.http() as http:
        return http.get(
            "/dicom-web/wado",
            params={
                "requestType": "WADO",
                "studyUID": ds.StudyInstanceUID,
                "seriesUID": ds.SeriesInstanceUID,
                "objectUID": ds.SOPInstanceUID,
                "contentType": "application/dicom",
            },
        )


def dataset_bytes_of(part10: bytes) -> bytes:
    assert part10[128:132] == b"DICM"
    return part10[144 + int.from_bytes(part10[140:144], "little") :]


def file_dataset_bytes(path: Path) -> bytes:
    return path.read_bytes()[dataset_offset(path) :]


# -- inbound ------------------------------------------------------------------------------------------
def test_storescu_stores_over_tls_and_the_instance_comes_back_byte_exact(
    archive_tls: TlsArchive, pki: Pki, tmp_path: Path
) -> None:
    server = archive_tls.server
    assert server.dicom_tls_port and server.dicom_tls_port != server.dicom_port
    assert f"DICOM TLS on {server.host}:{server.dicom_tls_port}; " in server.ready_line
    dx = write(diconde_dx(part_id="TLS-1"), tmp_path / "dx.dcm")

    sent = dcmtk(
        STORESCU, "-v", "+tls", str(pki.device.key), str(pki.device.certificate), "+cf", str(pki.ca),
        *to_tls_port(archive_tls), str(dx),
    )  # fmt: skip

    assert sent.returncode == 0, sent.stdout
    assert "Received Store Response (Success)" in sent.stdout, sent.stdout
    assert dataset_bytes_of(wado_instance(archive_tls, dx)) == file_dataset_bytes(dx)


def test_echoscu_over_tls_and_the_plain_port_still_serves(archive_tls: TlsArchive, pki: Pki) -> None:
    echo = dcmtk(
        ECHOSCU, "-v", "+tls", str(pki.device.key), str(pki.device.certificate), "+cf", str(pki.ca),
        *to_tls_port(archive_tls),
    )  # fmt: skip
    assert echo.returncode == 0 and "Received Echo Response (Success)" in echo.stdout, echo.stdout

    server = archive_tls.server
    plain = dcmtk(ECHOSCU, "-v", "-aec", server.ae_title, server.host, str(server.dicom_port))
    assert plain.returncode == 0 and "Received Echo Response (Success)" in plain.stdout, plain.stdout


@pytest.mark.parametrize(
    ("client", "logged"),
    [
        ("anonymous", "the peer sent no certificate"),
        ("untrusted", "certificate not trusted"),
    ],
)
def test_a_client_without_a_trusted_certificate_is_refused_and_audited(
    archive_tls: TlsArchive, pki: Pki, tmp_path: Path, client: str, logged: str
) -> None:
    dx = write(diconde_dx(part_id=f"TLS-REFUSED-{client}"), tmp_path / "dx.dcm")
    credentials = (
        ["+tla"] if client == "anonymous" else ["+tls", str(pki.stranger.key), str(pki.stranger.certificate)]
    )
    with archive_tls.http() as http:
        failed_before = len(http.get("/api/audit", params={"action": "login-failed"}).json())

    sent = dcmtk(STORESCU, "-v", *credentials, "+cf", str(pki.ca), *to_tls_port(archive_tls), str(dx))

    assert sent.returncode != 0, sent.stdout
    assert "Store Response" not in sent.stdout, sent.stdout
    wait_until(lambda: logged in archive_tls.server.log(), 10, f"the log to say {logged!r}")
    assert wado(archive_tls, dx).status_code == 404
    with archive_tls.http() as http:

        def audited() -> list[dict[str, object]]:
            entries = http.get("/api/audit", params={"action": "login-failed"}).json()
            return entries[failed_before:]

        wait_until(audited, 10, "the refused TLS client in the audit trail")
        (entry,) = audited()
    assert entry["via"] == "dicom-tls" and entry["outcome"] == "refused"
    assert str(entry["address"]).startswith("127.0.0.1:")
    assert logged in str(entry["detail"])


def test_plain_dicom_on_the_tls_port_fails_cleanly_and_a_silent_peer_blocks_nobody(
    archive_tls: TlsArchive, pki: Pki
) -> None:
    server = archive_tls.server
    assert server.dicom_tls_port is not None
    plain = dcmtk(ECHOSCU, "-v", *to_tls_port(archive_tls), timeout=60)
    assert plain.returncode != 0, plain.stdout
    assert "Received Echo Response" not in plain.stdout
    wait_until(lambda: "not a TLS handshake" in server.log(), 10, "the log to name the plain peer")

    # A connection that never starts its handshake holds up no other peer, even with one worker.
    with socket.create_connection((server.host, server.dicom_tls_port)):
        started = time.monotonic()
        echo = dcmtk(
            ECHOSCU, "-v", "+tls", str(pki.device.key), str(pki.device.certificate), "+cf", str(pki.ca),
            *to_tls_port(archive_tls),
        )  # fmt: skip
        assert echo.returncode == 0 and "Received Echo Response (Success)" in echo.stdout, echo.stdout
        assert time.monotonic() - started < 10
    assert server.process is not None and server.process.poll() is None


def test_a_peer_that_never_starts_the_handshake_is_dropped_after_acse_timeout(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The node in this process, as a ``pacs serve`` worker runs it, with a short ``acse_timeout``."""
    import multiprocessing

    from dicom_nodes import tls
    from dicom_nodes.policy import AssociationLimiter
    from dicom_nodes.server import DicomNode
    from dicom_nodes.spool import Spooler
    from pacs.archive import open_archive
    from pacs.config import load_settings

    settings = load_settings(
        {"data_dir": tmp_path / "d", "acse_timeout": 0.5, "dicom_tls_port": 0}
        | {"tls_certificate": pki.archive.certificate, "tls_private_key": pki.archive.key}
        | {"tls_ca_certificates": pki.ca}
    )
    context = tls.check(settings)
    assert context is not None
    archive = open_archive(settings)
    plain, secure = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    slots = multiprocessing.get_context("fork").Array("i", 1)
    node = DicomNode(
        settings,
        archive,
        plain,
        AssociationLimiter(settings.max_associations, slots),
        Spooler(archive.ingest.receive, settings.incoming_dir),
        tls=(secure, context),
    )
    node.start()
    try:
        assert node.tls_address is not None
        with caplog.at_level("WARNING", logger="dicom_nodes.tls"):
            started = time.monotonic()
            with socket.create_connection(node.tls_address, timeout=10) as silent:
                assert silent.recv(1) == b""  # closed by the archive
            waited = time.monotonic() - started
            wait_until(lambda: "no TLS handshake within acse_timeout" in caplog.text, 5, "the log line")
        assert 0.4 < waited < 5
        assert not node.active_associations()
    finally:
        node.stop(grace=1)
        archive.close()


# -- outbound -----------------------------------------------------------------------------------------
@dataclass
class StoreSCP:
    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()

    def received(self) -> list[Path]:
        return sorted(self.folder.iterdir())


def start_storescp_tls(tmp_path: Path, identity: Identity, ca: Path) -> StoreSCP:
    """DCMTK's storescp on TLS only, requiring (by default) a client certificate that chains to ``ca``."""
    folder = tmp_path / "storescp"
    folder.mkdir()
    port = free_port()
    log_path = tmp_path / "storescp.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [
            STORESCP,
            "-v",
            "+B",
            "-aet",
            "VIEWER_TLS",
            "-od",
            str(folder),
            "+tls",
            str(identity.key),
            str(identity.certificate),
            "+cf",
            str(ca),
            str(port),
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
        env=DCMTK_ENV,
    )
    scp = StoreSCP(port, folder, process, log, log_path)
    try:
        wait_for_port("127.0.0.1", port)
    except BaseException:
        scp.stop()
        raise
    return scp


def register_and_send(archive: TlsArchive, port: int, uid: str) -> dict[str, object]:
    with archive.http() as http:
        added = http.post(
            "/api/nodes",
            json={"ae_title": "VIEWER_TLS", "host": "127.0.0.1", "port": port, "tls": True, "replace": True},
        )
        assert added.status_code == 201, added.text
        response = http.post("/api/nodes/VIEWER_TLS/send", json={"uids": [uid]})
    assert response.status_code in (200, 502, 503), response.text
    return dict(response.json())


def stored_in(archive: TlsArchive, tmp_path: Path, part_id: str) -> tuple[Path, str]:
    """Store one instance through the plain port and return the file and its SOP Instance UID."""
    ds = diconde_dx(part_id=part_id)
    path = write(ds, tmp_path / f"{part_id}.dcm")
    server = archive.server
    sent = dcmtk(STORESCU, "-aec", server.ae_title, server.host, str(server.dicom_port), str(path))
    assert sent.returncode == 0, sent.stdout
    return path, str(ds.SOPInstanceUID)


def test_the_archive_sends_over_tls_to_a_storescp_that_requires_its_certificate(
    archive_tls: TlsArchive, pki: Pki, tmp_path: Path
) -> None:
    path, uid = stored_in(archive_tls, tmp_path, "TLS-SEND-1")
    scp = start_storescp_tls(tmp_path, pki.peer, pki.ca)
    try:
        answer = register_and_send(archive_tls, scp.port, uid)
        assert answer["sent"] == 1 and answer["failed"] == 0, answer
        (received,) = scp.received()
    finally:
        scp.stop()
    assert file_dataset_bytes(received) == file_dataset_bytes(path)  # storescp +B writes what arrived


@pytest.mark.parametrize(
    ("peer", "reason"),
    [
        ("peer_stranger", "certificate not trusted"),
        ("peer_by_name", "IP address mismatch"),
    ],
    ids=["untrusted-ca", "wrong-host"],
)
def test_the_archive_refuses_to_send_to_a_node_whose_certificate_it_cannot_verify(
    archive_tls: TlsArchive, pki: Pki, tmp_path: Path, peer: str, reason: str
) -> None:
    _, uid = stored_in(archive_tls, tmp_path, f"TLS-SEND-{peer}")
    identity: Identity = getattr(pki, peer)
    scp = start_storescp_tls(tmp_path, identity, pki.ca)
    try:
        answer = register_and_send(archive_tls, scp.port, uid)
        received = scp.received()
    finally:
        scp.stop()
    assert received == []
    assert reason in str(answer), answer


@pytest.mark.parametrize("with_certificate", [True, False], ids=["archive-certificate", "no-certificate"])
def test_echo_to_a_tls_node_and_why_it_fails_when_the_node_refuses_the_archive(
    pki: Pki, tmp_path: Path, with_certificate: bool
) -> None:
    """``pacs send`` / ``query`` / ``retrieve`` and ``POST /api/nodes/{ae}/echo`` associate this way."""
    from pynetdicom import build_context
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from dicom_nodes.scu import PeerError, associate
    from pacs.config import load_settings
    from pacs.index.nodes import Node

    values: dict[str, object] = {"data_dir": tmp_path / "d", "tls_ca_certificates": pki.ca}
    if with_certificate:
        values |= {"tls_certificate": pki.archive.certificate, "tls_private_key": pki.archive.key}
    settings = load_settings(values)
    scp = start_storescp_tls(tmp_path, pki.peer, pki.ca)
    try:
        node = Node("VIEWER_TLS", "127.0.0.1", scp.port, tls=True)
        if with_certificate:
            with associate(settings, node, [build_context(Verification)]) as assoc:
                assert assoc.send_c_echo().Status == 0x0000
        else:
            with (
                pytest.raises(PeerError, match=r"\(TLS\): the peer refused our certificate"),
                associate(settings, node, [build_context(Verification)]),
            ):
                pass
    finally:
        scp.stop()


# -- configuration --------------------------------------------------------------------------------------
def test_a_missing_private_key_stops_serve_with_exit_2_naming_the_setting(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.key"
    flags = tls_flags(pki)
    flags[flags.index("--tls-private-key") + 1] = str(missing)
    result = run_pacs(
        "serve", "--data-dir", tmp_path / "d", "--dicom-port", "0", "--http-port", "0",
        "--dicom-tls-port", "0", *flags, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"tls_private_key: cannot read {missing}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "NDT archive ready" not in result.stdout
    assert not (tmp_path / "d").exists(), "nothing is created for an invalid configuration"


# -- C-MOVE and storage commitment over TLS (dicom_nodes/move.py, dicom_nodes/commitment.py) -------
MOVESCU = "/usr/bin/movescu"


def test_c_move_to_a_tls_destination_goes_over_tls(archive_tls: TlsArchive, pki: Pki, tmp_path: Path) -> None:
    path, uid = stored_in(archive_tls, tmp_path, "TLS-MOVE-1")
    study = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    scp = start_storescp_tls(tmp_path, pki.peer, pki.ca)
    try:
        with archive_tls.http() as http:
            added = http.post(
                "/api/nodes",
                json={
                    "ae_title": "VIEWER_TLS",
                    "host": "127.0.0.1",
                    "port": scp.port,
                    "tls": True,
                    "replace": True,
                },
            )
            assert added.status_code == 201, added.text
        moved = dcmtk(
            MOVESCU, "-v", "-S", "-aem", "VIEWER_TLS",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "-aec", archive_tls.server.ae_title, archive_tls.server.host, str(archive_tls.server.dicom_port),
        )  # fmt: skip
        received = scp.received()
    finally:
        scp.stop()
    assert moved.returncode == 0, moved.stdout
    assert len(received) == 1, moved.stdout + scp.log_path.read_text()
    assert file_dataset_bytes(received[0]) == file_dataset_bytes(path)


def test_a_storage_commitment_report_goes_to_a_tls_device_over_tls(
    archive_tls: TlsArchive, pki: Pki, tmp_path: Path
) -> None:
    import queue
    import ssl

    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StorageCommitmentPushModel, Verification  # type: ignore[attr-defined]

    path, uid = stored_in(archive_tls, tmp_path, "TLS-COMMIT-1")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    reports: queue.Queue[Dataset] = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.put(event.event_information)
        return 0x0000, None

    # The device: listens over TLS for the report, requiring the archive's certificate.
    listening = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    listening.load_cert_chain(pki.peer.certificate, pki.peer.key)
    listening.load_verify_locations(pki.ca)
    listening.verify_mode = ssl.CERT_REQUIRED
    device = AE("NDT_DEVICE")
    device.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    device.add_requested_context(StorageCommitmentPushModel)
    device.add_supported_context(Verification)
    port = free_port()
    server = device.start_server(
        ("127.0.0.1", port),
        block=False,
        ssl_context=listening,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    try:
        with archive_tls.http() as http:
            added = http.post(
                "/api/nodes",
                json={
                    "ae_title": "NDT_DEVICE",
                    "host": "127.0.0.1",
                    "port": port,
                    "tls": True,
                    "replace": True,
                },
            )
            assert added.status_code == 201, added.text
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_cert_chain(pki.device.certificate, pki.device.key)
        client.load_verify_locations(pki.ca)
        server_ = archive_tls.server
        assoc = device.associate(
            server_.host,
            server_.dicom_tls_port,
            ae_title=server_.ae_title,
            tls_args=(client, server_.host),
            ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)],
            # The report comes on this association when the archive is quicker than the release,
            # else on a new one to the listener: TLS either way.
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
        )
        assert assoc.is_established
        info = Dataset()
        info.TransactionUID = generate_uid()
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = uid
        info.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assoc.release()
        assert status.Status == 0x0000
        report = reports.get(timeout=30)
    finally:
        server.shutdown()
    assert report.TransactionUID == info.TransactionUID
    assert [str(i.ReferencedSOPInstanceUID) for i in report.ReferencedSOPSequence] == [uid]
