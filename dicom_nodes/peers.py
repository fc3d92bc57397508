"""The archive's SCU offered to the core as :class:`pacs.peers.DicomPeers`: C-ECHO and C-STORE to
registered nodes, for the HTTP face, which may not import this package. ``pacs serve`` puts one
into each worker's ``Archive.peers``."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pynetdicom import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_nodes import scu
from pacs.archive import Archive
from pacs.errors import ResourceUnavailable
from pacs.index.nodes import Node
from pacs.peers import EchoResult, SendOutcome
from pacs.services.retrieve import RetrieveItem


class ScuPeers:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def echo(self, node: Node) -> EchoResult:
        started = time.perf_counter()
        try:
            with scu.associate(self.archive.settings, node, [build_context(Verification)]) as assoc:
                status, comment = scu._status_of(assoc.send_c_echo())
        except scu.PeerError as exc:
            return EchoResult(False, None, str(exc), time.perf_counter() - started)
        ok = status == scu.SUCCESS
        reason = (
            "" if ok else (comment or (f"status 0x{status:04X}" if status is not None else "no response"))
        )
        return EchoResult(ok, status, reason, time.perf_counter() - started)

    def send(self, node: Node, items: Sequence[RetrieveItem]) -> list[SendOutcome]:
        try:
            results = scu.send(self.archive, node, items)
        except scu.PeerError as exc:
            raise ResourceUnavailable(str(exc)) from exc
        return [
            SendOutcome(r.sop_instance_uid, r.ok, r.status, r.sent_as, r.transcoded, r.reason)
            for r in results
        ]
