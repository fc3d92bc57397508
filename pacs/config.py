"""The archive's configuration: one validated object, loaded once and passed down.

Sources, strongest first: command-line flags, ``PACS_*`` environment variables, a TOML file
(``--config FILE`` or ``PACS_CONFIG``), then the defaults below. Every ``pacs`` subcommand loads the
same way, so ``pacs fsck --data-dir D`` works on the archive that ``pacs serve --data-dir D`` runs.
docs/configuration.md lists every setting.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from pacs.security import Role, parse_role


class ConfigError(ValueError):
    """The configuration is invalid; the message names the setting."""


def split_peer(entry: str) -> tuple[str, str | None]:
    """``AE`` or ``AE@host`` (an allowed calling AE title, optionally only from one host), either
    optionally followed by ``=role`` (:func:`peer_role`)."""
    title, _, host = entry.partition("=")[0].partition("@")
    return title.strip(), (host.strip() or None)


def peer_role(entry: str) -> Role:
    """The role of an ``allowed_peers`` entry: its ``=role`` suffix; ``admin`` (every DIMSE service,
    as before roles existed) without one."""
    _, equals, role = entry.partition("=")
    return parse_role(role) if equals else Role.ADMIN


class RetentionRule(BaseModel):
    """How long inspections are kept (``[[pacs.retention_rules]]``): those of an NDE method (Modality
    in the inspection) and/or of parts matching a pattern (``*`` and ``?``), ``years`` after the
    inspection date. When several rules match, the longest applies."""

    model_config = ConfigDict(extra="forbid")

    method: str | None = Field(None, max_length=16, description="e.g. DX, CT, US; none: every method")
    part: str | None = Field(None, max_length=64, description="a part ID pattern; none: every part")
    years: int = Field(ge=1, le=200)


class NodeSetting(BaseModel):
    """A DICOM node in the configuration file (``[[pacs.nodes]]``); registered when ``pacs serve`` starts."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    description: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        return validate_ae_title(value, "nodes.ae_title")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PACS_", extra="forbid", validate_default=True)

    # Where the embedded default keeps everything.
    data_dir: Path = Field(Path("pacs-data"), description="folder for the embedded index and objects")
    database_url: str | None = Field(
        None, description="sqlite:///PATH or postgresql://...; default sqlite under data_dir"
    )
    object_store: str | None = Field(
        None, description="file://PATH or s3://ACCESS:SECRET@HOST:PORT/BUCKET?secure=false"
    )

    # Listeners.
    host: str = Field("0.0.0.0", description="address the DICOM, DICOM TLS and HTTP listeners bind")
    dicom_port: int = Field(11112, ge=0, le=65535)
    dicom_tls_port: int | None = Field(
        None, ge=0, le=65535, description="DICOM TLS port (2762 is IANA's); 0 = a free one; unset = none"
    )
    http_port: int = Field(8042, ge=0, le=65535)
    ae_title: str = Field("NDT_PACS", description="the archive's own AE title")
    workers: int = Field(0, ge=0, description="server processes sharing the ports; 0 = one per CPU")

    # DICOM TLS: the TLS listener and outbound associations with nodes marked tls.
    tls_certificate: Path | None = Field(
        None, description="the archive's certificate (PEM, chain after it), shown to peers both ways"
    )
    tls_private_key: Path | None = Field(None, description="the certificate's private key (PEM, unencrypted)")
    tls_ca_certificates: Path | None = Field(
        None,
        description="CA certificates (PEM bundle) that peers' certificates must chain to; "
        "unset: outbound, the system's trusted CAs",
    )
    tls_require_client_certificate: bool = Field(
        True, description="the TLS listener refuses peers without a trusted certificate"
    )
    tls_verify_peer_hostname: bool = Field(
        True, description="outbound: the node's certificate must name its host"
    )

    # Association policy.
    allowed_peers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="calling AE titles (AE or AE@host, optionally =role) allowed; empty = any",
    )
    max_associations: int = Field(64, ge=1, description="concurrent associations, all workers together")
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins (scheme://host[:port]) whose web pages may call the HTTP API; empty = none",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="IP addresses or networks (CIDR) of HTTP proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; empty = those headers are ignored",
    )
    nodes: list[NodeSetting] = Field(
        default_factory=list, description="DICOM nodes (C-MOVE destinations, peers) to register at start"
    )
    max_pdu_size: int = Field(
        1 << 20, ge=0, description="largest PDU we accept; 0 = unlimited (larger PDUs mean less overhead)"
    )
    acse_timeout: float = Field(30.0, gt=0, description="seconds to wait for association messages")
    dimse_timeout: float = Field(60.0, gt=0, description="seconds to wait for DIMSE messages")
    network_timeout: float = Field(60.0, gt=0, description="seconds an association may stay silent")

    # Operation.
    shutdown_grace: float = Field(
        30.0, ge=0, description="seconds in-flight associations get to finish on SIGTERM"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    retention_rules: list[RetentionRule] = Field(
        default_factory=list,
        description="how long inspections are kept before they may be deleted; none: no constraint",
    )
    purge_grace_days: float = Field(
        7.0, ge=0, description="days between a deletion request and `pacs purge` carrying it out"
    )
    evidence_key: Path | None = Field(
        None,
        description="the archive's Ed25519 private key (PEM) that signs evidence packages; made on first "
        "use; default data_dir/keys/evidence-ed25519.pem. Nodes sharing one index must share one key",
    )

    @field_validator("ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        return validate_ae_title(value, "ae_title")

    @field_validator("allowed_peers", "cors_allowed_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_peers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
        return value

    @field_validator("allowed_peers")
    @classmethod
    def _valid_peers(cls, value: list[str]) -> list[str]:
        peers = [v.strip() for v in value]
        for peer in peers:
            validate_ae_title(split_peer(peer)[0], "allowed_peers")
            try:
                peer_role(peer)
            except ValueError as exc:
                raise ValueError(f"allowed_peers: {peer!r}: {exc}") from None
        return peers

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, value: list[str]) -> list[str]:
        """Each an IP address or a network in CIDR notation (uvicorn would silently take anything
        else as a name that no client address ever matches)."""
        proxies = []
        for entry in (v.strip() for v in value):
            try:
                proxy = ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or network (CIDR): {exc}") from None
            proxies.append(str(proxy))
        return proxies

    @field_validator("log_level")
    @classmethod
    def _valid_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {value!r}")
        return level

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'index.sqlite'}"
        if self.object_store is None:
            self.object_store = f"file://{self.data_dir / 'objects'}"
        if self.evidence_key is None:
            self.evidence_key = self.data_dir / "keys" / "evidence-ed25519.pem"
        if not self.database_url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError(
                "database_url must start with sqlite:/// or postgresql://, "
                f"not {self.database_url.split(':')[0]}:"
            )
        if not self.object_store.startswith(("file://", "s3://")):
            raise ValueError("object_store must be file://PATH or s3://ACCESS:SECRET@HOST:PORT/BUCKET")
        self._check_tls()
        return self

    def _check_tls(self) -> None:
        """What the TLS settings need of each other; the files are read by ``pacs serve`` at start
        (``dicom_nodes.tls``), so a command that makes no association does not need them."""
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            given, missing = (
                ("tls_certificate", "tls_private_key")
                if self.tls_private_key is None
                else ("tls_private_key", "tls_certificate")
            )
            raise ValueError(f"{given} is set but {missing} is not: give both, or neither")
        if self.dicom_tls_port is None:
            return
        if self.tls_certificate is None:
            raise ValueError("dicom_tls_port is set: tls_certificate and tls_private_key are required")
        if self.tls_require_client_certificate and self.tls_ca_certificates is None:
            raise ValueError(
                "tls_require_client_certificate is true but tls_ca_certificates is not set: client "
                "certificates are verified against it (set it, or set "
                "tls_require_client_certificate = false)"
            )
        if self.dicom_tls_port and self.dicom_tls_port == self.dicom_port:
            raise ValueError(f"dicom_tls_port {self.dicom_tls_port} is also dicom_port: give it another port")

    @property
    def worker_count(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)

    @property
    def incoming_dir(self) -> Path:
        """Where DICOM receives are spooled before they become objects (same disk as data_dir)."""
        return self.data_dir / "incoming"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (= command-line flags) > environment > config file (handled in load_settings).
        return (init_settings, env_settings)


def validate_ae_title(value: str, name: str) -> str:
    """PS3.5 6.2: AE is 1-16 characters of the default repertoire, no backslash, not all spaces."""
    title = value.strip()
    if not title or len(value) > 16:
        raise ValueError(f"{name}: AE title {value!r} must be 1 to 16 characters")
    if "\\" in title or any(ord(c) < 0x20 or ord(c) > 0x7E for c in title):
        raise ValueError(f"{name}: AE title {value!r} may hold only printable ASCII and no backslash")
    return title


def load_settings(overrides: dict[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Build the settings from flags (``overrides``), the environment and an optional TOML file."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    path = config_file or (Path(os.environ["PACS_CONFIG"]) if os.environ.get("PACS_CONFIG") else None)
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                file_values = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
        if "pacs" in file_values:
            outside = sorted(set(file_values) - {"pacs"})
            if outside:
                raise ConfigError(
                    f"configuration file {path}: {', '.join(outside)} outside the [pacs] table "
                    f"(write [pacs.{outside[0]}] or [[pacs.{outside[0]}]])"
                )
            file_values = file_values["pacs"]
        unknown = set(file_values) - set(Settings.model_fields)
        if unknown:
            raise ConfigError(f"configuration file {path}: unknown settings {', '.join(sorted(unknown))}")
    env_names = {f"PACS_{name.upper()}" for name in Settings.model_fields}
    from_env = {k for k in os.environ if k in env_names}
    # The file only fills what neither flags nor the environment set.
    merged = {
        k: v for k, v in file_values.items() if k not in overrides and f"PACS_{k.upper()}" not in from_env
    }
    merged.update(overrides)
    try:
        return Settings(**merged)
    except ValueError as exc:
        raise ConfigError(_explain(exc)) from exc


def _explain(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        lines.append(f"{where}: {err.get('msg')}")
    return "invalid configuration: " + "; ".join(lines)
