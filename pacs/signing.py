"""The archive's Ed25519 key that signs evidence packages (``cryptography``).

The private key lives at ``settings.evidence_key`` (default ``data_dir/keys/evidence-ed25519.pem``),
PKCS#8 PEM without a passphrase, readable by the archive's user only. It is made on first use:
the folder with mode 0700, the file with mode 0600, written to a temporary file and then *linked*
into place, so two processes starting at once never see a half-written key and never sign with two
different keys (the second ``link`` fails, and that process reads the winner's key). Nodes sharing
one index must share one key file.

The public key is published as SubjectPublicKeyInfo PEM (``GET /api/system/evidence-key``, and
``evidence-key.pem`` inside each package); its fingerprint is the SHA-256 of the 32 raw key bytes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pacs.errors import ResourceUnavailable


@dataclass(frozen=True)
class EvidenceKey:
    """The archive's signing key and what it publishes."""

    private: Ed25519PrivateKey
    path: Path | None = None

    @classmethod
    def load_or_create(cls, path: Path) -> EvidenceKey:
        """The key at ``path``, made there first if there is none (see the module docstring).
        :class:`ResourceUnavailable` when it cannot be read or written, or is not an Ed25519 key."""
        try:
            return cls(_read_private(path), path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ResourceUnavailable(f"cannot read the evidence key {path}: {exc}") from exc
        try:
            _create(path)
            return cls(_read_private(path), path)
        except OSError as exc:
            raise ResourceUnavailable(f"cannot create the evidence key {path}: {exc}") from exc

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def public_pem(self) -> bytes:
        return public_pem(self.public)

    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (deterministic: same key and bytes, same signature)."""
        return self.private.sign(data)


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_public_pem(pem: bytes) -> Ed25519PublicKey:
    """A public key from PEM; :class:`ValueError` naming what it is when it is not Ed25519."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"not an Ed25519 public key but {type(key).__name__}")
    return key


def verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _read_private(path: Path) -> Ed25519PrivateKey:
    pem = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ResourceUnavailable(f"the evidence key {path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ResourceUnavailable(f"the evidence key {path} is {type(key).__name__}, not Ed25519")
    return key


def _create(path: Path) -> None:
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    temporary = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)  # atomic, and fails if another process got there first
        except FileExistsError:
            return
        _fsync_folder(folder)
    finally:
        temporary.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
