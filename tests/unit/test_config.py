"""pacs.config.load_settings: where each setting comes from, and refusal of bad ones at start-up.

Every ``pacs`` subcommand loads settings this way, so a wrong precedence would make ``pacs fsck``
look at a different archive than ``pacs serve`` runs; a bad value must stop the start with a
message naming the setting, never surface later as an odd failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pacs.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the PACS_* variables it sets itself."""
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults ----------------------------------------------------------------------------------
def test_defaults_are_sqlite_and_files_under_the_data_dir() -> None:
    settings = load_settings()
    assert settings.data_dir == Path("pacs-data")
    assert settings.database_url == "sqlite:///pacs-data/index.sqlite"
    assert settings.object_store == "file://pacs-data/objects"
    assert settings.ae_title == "NDT_PACS"
    assert settings.dicom_port == 11112
    assert settings.http_port == 8042
    assert settings.allowed_peers == []
    assert settings.log_level == "INFO"


def test_embedded_defaults_follow_a_given_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": tmp_path / "archive"})
    assert settings.database_url == f"sqlite:///{tmp_path / 'archive' / 'index.sqlite'}"
    assert settings.object_store == f"file://{tmp_path / 'archive' / 'objects'}"
    assert settings.incoming_dir == tmp_path / "archive" / "incoming"


def test_explicit_database_and_store_are_kept(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "data_dir": tmp_path,
            "database_url": "postgresql://pacs@db.example:5432/pacs",
            "object_store": "s3://key:secret@minio.example:9000/pacs?secure=false",
        }
    )
    assert settings.database_url == "postgresql://pacs@db.example:5432/pacs"
    assert settings.object_store == "s3://key:secret@minio.example:9000/pacs?secure=false"


# -- precedence --------------------------------------------------------------------------------
def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_toml(
        tmp_path / "pacs.toml",
        'ae_title = "FILE_AE"\ndicom_port = 1111\nhttp_port = 2222\nlog_level = "warning"\n',
    )
    monkeypatch.setenv("PACS_AE_TITLE", "ENV_AE")
    monkeypatch.setenv("PACS_DICOM_PORT", "3333")

    settings = load_settings({"ae_title": "FLAG_AE"}, config_file=config)

    assert settings.ae_title == "FLAG_AE"  # flag over environment and file
    assert settings.dicom_port == 3333  # environment over file
    assert settings.http_port == 2222  # file over default
    assert settings.log_level == "WARNING"
    assert settings.max_associations == 64  # default


def test_a_flag_left_unset_does_not_hide_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_AE_TITLE", "ENV_AE")
    assert load_settings({"ae_title": None}).ae_title == "ENV_AE"


def test_config_file_named_by_pacs_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_toml(tmp_path / "pacs.toml", f'[pacs]\ndata_dir = "{tmp_path / "d"}"\nworkers = 3\n')
    monkeypatch.setenv("PACS_CONFIG", str(config))
    settings = load_settings()
    assert settings.data_dir == tmp_path / "d"
    assert settings.workers == 3
    assert settings.worker_count == 3
    assert settings.database_url == f"sqlite:///{tmp_path / 'd' / 'index.sqlite'}"


def test_allowed_peers_from_a_comma_list_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_ALLOWED_PEERS", "CT_SCANNER, DR_PANEL@10.0.0.5 ;UT_RIG,")
    assert load_settings().allowed_peers == ["CT_SCANNER", "DR_PANEL@10.0.0.5", "UT_RIG"]


def test_allowed_peers_as_a_list_in_the_file(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "pacs.toml", 'allowed_peers = ["A_ONE", "B_TWO@host"]\n')
    assert load_settings(config_file=config).allowed_peers == ["A_ONE", "B_TWO@host"]


# -- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("title", ["A" * 17, "BAD\\TITLE", "", "   ", "TAB\tTITLE", "ÄRCHIV"])
def test_invalid_ae_title_is_refused_naming_the_setting(title: str) -> None:
    with pytest.raises(ConfigError, match="ae_title"):
        load_settings({"ae_title": title})


def test_sixteen_character_ae_title_is_accepted() -> None:
    assert load_settings({"ae_title": "A" * 16}).ae_title == "A" * 16


def test_empty_ae_title_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_AE_TITLE", "")
    with pytest.raises(ConfigError, match="ae_title"):
        load_settings()


@pytest.mark.parametrize("peers", ["GOOD,BAD\\PEER", "GOOD," + "X" * 17, "@host"])
def test_invalid_allowed_peer_is_refused_naming_the_setting(
    peers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACS_ALLOWED_PEERS", peers)
    with pytest.raises(ConfigError, match="allowed_peers"):
        load_settings()


@pytest.mark.parametrize(
    "url", ["mysql://user:hunter2@db/pacs", "pacs.sqlite", "postgres://user:hunter2@db/x"]
)
def test_bad_database_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError, match="database_url") as caught:
        load_settings({"database_url": url})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("url", ["ftp://key:hunter2@host/bucket", "/var/lib/pacs", "minio://key:hunter2@h/b"])
def test_bad_object_store_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError, match="object_store") as caught:
        load_settings({"object_store": url})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("dicom_port", "70000"), ("dicom_port", "eleven"), ("max_associations", "0"), ("log_level", "LOUD")],
)
def test_bad_values_from_the_environment_name_the_setting(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"PACS_{name.upper()}", value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "pacs.toml", 'ae_title = "OK_AE"\ndicom_prot = 104\n')
    with pytest.raises(ConfigError, match="dicom_prot") as caught:
        load_settings(config_file=config)
    assert str(config) in str(caught.value)


def test_unknown_key_in_the_pacs_table_is_refused(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "pacs.toml", "[pacs]\nmax_asociations = 5\n")
    with pytest.raises(ConfigError, match="max_asociations"):
        load_settings(config_file=config)


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match="colour"):
        load_settings({"colour": "blue"})


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "pacs.toml", "ae_title = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_file=config)


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(config_file=tmp_path / "absent.toml")


def test_nodes_in_the_pacs_table_are_read(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path / "pacs.toml",
        '[pacs]\nae_title = "LAB_A"\n\n[[pacs.nodes]]\nae_title = "VIEWER_1"\nhost = "viewer1.example"\n'
        "port = 11112\n",
    )
    settings = load_settings(config_file=config)
    assert [(n.ae_title, n.host, n.port, n.tls) for n in settings.nodes] == [
        ("VIEWER_1", "viewer1.example", 11112, False)
    ]


def test_a_table_beside_the_pacs_table_is_refused_not_ignored(tmp_path: Path) -> None:
    """`[[nodes]]` after `[pacs]` is a top-level table TOML keeps apart from the settings."""
    config = write_toml(
        tmp_path / "pacs.toml",
        '[pacs]\nae_title = "LAB_A"\n\n[[nodes]]\nae_title = "VIEWER_1"\nhost = "viewer1.example"\n'
        "port = 104\n",
    )
    with pytest.raises(ConfigError, match=r"nodes outside the \[pacs\] table \(write \[pacs.nodes\]"):
        load_settings(config_file=config)


def test_cors_origins_from_a_variable_are_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_CORS_ALLOWED_ORIGINS", "https://a.example, http://b.example:3000 ;")
    assert load_settings().cors_allowed_origins == ["https://a.example", "http://b.example:3000"]


# -- trusted proxies ---------------------------------------------------------------------------
def test_no_proxy_is_trusted_by_default() -> None:
    assert load_settings().trusted_proxies == []


def test_trusted_proxies_from_a_variable_and_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_TRUSTED_PROXIES", " 10.0.1.5, 10.8.0.0/16 ;fd00::/8,::1")
    assert load_settings().trusted_proxies == ["10.0.1.5", "10.8.0.0/16", "fd00::/8", "::1"]
    monkeypatch.delenv("PACS_TRUSTED_PROXIES")
    config = write_toml(tmp_path / "pacs.toml", 'trusted_proxies = ["192.0.2.7", "2001:DB8::/32"]\n')
    assert load_settings(config_file=config).trusted_proxies == ["192.0.2.7", "2001:db8::/32"]


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("proxy.lab.example", "does not appear to be an IPv4 or IPv6 address"),
        ("10.0.1.5/16", "has host bits set"),  # uvicorn would take it as a name nothing matches
        ("10.0.0.0/33", "does not appear to be an IPv4 or IPv6 network"),
        ("*", "does not appear to be an IPv4 or IPv6 address"),
    ],
)
def test_a_trusted_proxy_that_is_no_address_or_network_is_refused_naming_it(
    entry: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACS_TRUSTED_PROXIES", f"10.0.1.5,{entry}")
    with pytest.raises(ConfigError, match="trusted_proxies") as caught:
        load_settings()
    message = str(caught.value)
    assert f"{entry!r} is not an IP address or network (CIDR)" in message and why in message


# -- DICOM TLS ---------------------------------------------------------------------------------
# Settings check what the TLS settings need of each other; `pacs serve` reads the files at start
# (dicom_nodes.tls.check) and refuses any it cannot use, naming the setting.
def make_identity(
    folder: Path, name: str, *, days: float = 365, encrypted: bool = False
) -> tuple[Path, Path]:
    """A self-signed certificate and its key (PEM files), valid until ``days`` from now."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now - dt.timedelta(hours=1), now + dt.timedelta(days=days - 1)))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    protection = (
        serialization.BestAvailableEncryption(b"secret") if encrypted else serialization.NoEncryption()
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, protection)
    )
    return cert_path, key_path


def tls_settings(cert: Path, key: Path, ca: Path | None, **more: object) -> dict[str, object]:
    return {
        "dicom_tls_port": 2762,
        "tls_certificate": cert,
        "tls_private_key": key,
        "tls_ca_certificates": ca,
        **more,
    }


def test_tls_settings_default_to_no_listener_and_required_client_certificates() -> None:
    settings = load_settings()
    assert settings.dicom_tls_port is None
    assert settings.tls_certificate is None and settings.tls_ca_certificates is None
    assert settings.tls_require_client_certificate is True
    assert settings.tls_verify_peer_hostname is True


def test_tls_settings_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_toml(
        tmp_path / "pacs.toml",
        '[pacs]\ndicom_tls_port = 2762\ntls_certificate = "/etc/pacs/tls/pacs.pem"\n'
        'tls_private_key = "/etc/pacs/tls/pacs.key"\n',
    )
    monkeypatch.setenv("PACS_TLS_REQUIRE_CLIENT_CERTIFICATE", "false")
    settings = load_settings(config_file=config)
    assert settings.dicom_tls_port == 2762
    assert settings.tls_certificate == Path("/etc/pacs/tls/pacs.pem")
    assert settings.tls_require_client_certificate is False


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"dicom_tls_port": 2762}, "tls_certificate"),
        ({"tls_certificate": "/a.pem"}, "tls_private_key"),
        ({"tls_private_key": "/a.key"}, "tls_certificate"),
        (
            {"dicom_tls_port": 2762, "tls_certificate": "/a.pem", "tls_private_key": "/a.key"},
            "tls_ca_certificates",
        ),
        (
            {
                "dicom_tls_port": 11112,
                "tls_certificate": "/a.pem",
                "tls_private_key": "/a.key",
                "tls_require_client_certificate": False,
            },
            "dicom_port",
        ),
        ({"dicom_tls_port": 70000}, "dicom_tls_port"),
    ],
    ids=["port-without-certificate", "certificate-without-key", "key-without-certificate",
         "client-certificates-without-ca", "same-port-as-dicom", "port-out-of-range"],
)  # fmt: skip
def test_inconsistent_tls_settings_are_refused_naming_the_setting(
    values: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(values)


def test_usable_tls_files_give_a_listener_that_requires_trusted_client_certificates(tmp_path: Path) -> None:
    import ssl

    from dicom_nodes import tls

    cert, key = make_identity(tmp_path, "pacs")
    ca, _ = make_identity(tmp_path, "ca")
    context = tls.check(load_settings(tls_settings(cert, key, ca)))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "ca"),),)]

    optional = tls.check(load_settings(tls_settings(cert, key, ca, tls_require_client_certificate=False)))
    assert optional is not None and optional.verify_mode == ssl.CERT_OPTIONAL
    client = tls.client_context(load_settings(tls_settings(cert, key, ca)))
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("missing-certificate", "tls_certificate: cannot read"),
        ("certificate-not-pem", "tls_certificate: .* holds no PEM certificate"),
        ("missing-key", "tls_private_key: cannot read"),
        ("key-of-another-certificate", "tls_private_key: .* is not the key of the certificate"),
        ("encrypted-key", "tls_private_key: .* is encrypted"),
        ("key-not-pem", "tls_private_key: .* holds no PEM private key"),
        ("missing-ca", "tls_ca_certificates: cannot read"),
        ("ca-not-pem", "tls_ca_certificates: .* holds no PEM certificate"),
    ],
)
def test_unusable_tls_files_are_refused_naming_the_setting(tmp_path: Path, fault: str, message: str) -> None:
    from dicom_nodes import tls

    cert, key = make_identity(tmp_path, "pacs")
    ca, _ = make_identity(tmp_path, "ca")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a PEM file\n")
    if fault == "missing-certificate":
        cert = tmp_path / "nowhere.pem"
    elif fault == "certificate-not-pem":
        cert = junk
    elif fault == "missing-key":
        key = tmp_path / "nowhere.key"
    elif fault == "key-of-another-certificate":
        _, key = make_identity(tmp_path, "other")
    elif fault == "encrypted-key":
        cert, key = make_identity(tmp_path, "locked", encrypted=True)
    elif fault == "key-not-pem":
        key = junk
    elif fault == "missing-ca":
        ca = tmp_path / "nowhere-ca.pem"
    elif fault == "ca-not-pem":
        ca = junk
    with pytest.raises(ConfigError, match=message):
        tls.check(load_settings(tls_settings(cert, key, ca)))


@pytest.mark.parametrize(
    ("days", "level", "words"), [(10, "WARNING", "expires on"), (-1, "ERROR", "expired on")]
)
def test_a_certificate_near_or_past_its_expiry_is_reported_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, days: float, level: str, words: str
) -> None:
    from dicom_nodes import tls

    cert, key = make_identity(tmp_path, "pacs", days=days)
    ca, _ = make_identity(tmp_path, "ca")
    with caplog.at_level("WARNING", logger="dicom_nodes.tls"):
        tls.check(load_settings(tls_settings(cert, key, ca)))
    (record,) = [r for r in caplog.records if r.name == "dicom_nodes.tls"]
    assert record.levelname == level and words in record.getMessage() and str(cert) in record.getMessage()
