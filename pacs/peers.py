"""Talking to other DICOM nodes from the HTTP face: C-ECHO and C-STORE, without importing the DIMSE face.

``api`` may not import ``dicom_nodes`` (docs/architecture.md), yet ``POST /api/nodes/{ae}/echo``
and ``/send`` need its SCU. The core therefore names what it needs, :class:`DicomPeers`, and the
composition root (``pacs serve``) puts ``dicom_nodes.peers.ScuPeers`` into ``Archive.peers``; an
archive without one (a maintenance command, a test that starts no DIMSE code) answers 503.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pacs.index.nodes import Node
from pacs.services.retrieve import RetrieveItem


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    status: int | None  # the C-ECHO response status; None when there was no association or answer
    reason: str  # why it failed, empty on success
    seconds: float  # association, C-ECHO and release


@dataclass(frozen=True)
class SendOutcome:
    sop_instance_uid: str
    ok: bool  # success or warning status
    status: int | None  # the peer's C-STORE status; None when it was never answered
    transfer_syntax_uid: str | None  # the syntax it went in
    transcoded: bool
    reason: str


class DicomPeers(Protocol):
    def echo(self, node: Node) -> EchoResult:
        """C-ECHO ``node`` (PS3.7 9.1.5) on an association of its own."""
        ...

    def send(self, node: Node, items: Sequence[RetrieveItem]) -> list[SendOutcome]:
        """C-STORE ``items`` to ``node``, one outcome per item in order; raises
        :class:`pacs.errors.ResourceUnavailable` when no association can be made (nothing sent)."""
        ...
