"""The evidence key: made once, private to the archive's user, the same for every process."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from pacs.errors import ResourceUnavailable
from pacs.signing import EvidenceKey, load_public_pem, verify


def _load(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(EvidenceKey.load_or_create(Path(path)).fingerprint())


def test_the_key_is_made_once_with_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys" / "evidence-ed25519.pem"
    first = EvidenceKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = EvidenceKey.load_or_create(path)
    assert again.fingerprint() == first.fingerprint()
    assert list(path.parent.iterdir()) == [path], "a temporary file was left behind"


def test_processes_starting_at_once_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "evidence-ed25519.pem"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_load, args=(str(path), queue)) for _ in range(8)]
    for worker in workers:
        worker.start()
    fingerprints = {queue.get(timeout=30) for _ in workers}
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert fingerprints == {EvidenceKey.load_or_create(path).fingerprint()}


def test_a_signature_verifies_with_the_published_key_only_over_the_same_bytes(tmp_path: Path) -> None:
    key = EvidenceKey.load_or_create(tmp_path / "k.pem")
    signature = key.sign(b"manifest")
    public = load_public_pem(key.public_pem())
    assert verify(public, signature, b"manifest")
    assert not verify(public, signature, b"manifest ")
    other = EvidenceKey.load_or_create(tmp_path / "other.pem")
    assert not verify(load_public_pem(other.public_pem()), signature, b"manifest")


def test_a_file_that_is_not_an_ed25519_key_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("not a key")
    with pytest.raises(ResourceUnavailable, match=str(path)):
        EvidenceKey.load_or_create(path)
