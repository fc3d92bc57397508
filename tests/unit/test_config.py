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
