"""The association policy seen from real peers: who may associate, and how many at once.

A refused peer must get an A-ASSOCIATE-RJ with the reason the standard names (PS3.8 9.3.4), so the
device's operator can tell "not configured here" (permanent) from "busy, retry" (transient).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.archive import Archive
from tests.conftest import RunningNode, start_dicom_node

ECHOSCU = "/usr/bin/echoscu"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

# A-ASSOCIATE-RJ result / source / reason-diagnostic values, PS3.8 Table 9-21.
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02
SOURCE_SERVICE_USER, SOURCE_PROVIDER_PRESENTATION = 0x01, 0x03
CALLING_AE_NOT_RECOGNISED, LOCAL_LIMIT_EXCEEDED = 0x03, 0x02


@contextmanager
def running_node(archive: Archive, **update: Any) -> Iterator[RunningNode]:
    """The archive's DIMSE face started with some settings changed."""
    node = start_dicom_node(archive, archive.settings.model_copy(update=update))
    try:
        yield node
    finally:
        node.node.stop(grace=5)  # type: ignore[attr-defined]


def echoscu(node: RunningNode, calling: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, "-aet", calling, "-aec", node.ae_title, node.host, str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=DCMTK_ENV,
    )


def associate(node: RunningNode, calling: str) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = 10
    ae.add_requested_context(Verification)
    return ae.associate(node.host, node.port, ae_title=node.ae_title)


def reject_reason(assoc: Association) -> tuple[int, int, int]:
    rsp = assoc.acceptor.primitive
    assert rsp is not None
    assert rsp.result is not None and rsp.result_source is not None and rsp.diagnostic is not None
    return int(rsp.result), int(rsp.result_source), int(rsp.diagnostic)


@pytest.mark.parametrize("entry", ["GOODSCU", "GOODSCU@127.0.0.1"])
def test_allowed_calling_ae_is_accepted_and_others_are_rejected(archive: Archive, entry: str) -> None:
    with running_node(archive, allowed_peers=[entry]) as node:
        good = echoscu(node, "GOODSCU")
        assert good.returncode == 0, good.stderr + good.stdout

        bad = echoscu(node, "BADSCU")
        assert bad.returncode != 0
        assert "Association Rejected" in bad.stdout + bad.stderr

        assoc = associate(node, "BADSCU")
        assert assoc.is_rejected
        assert reject_reason(assoc) == (REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        assert "Calling AE title not recognised" in assoc.acceptor.primitive.reason_str  # type: ignore[union-attr]

        accepted = associate(node, "GOODSCU")
        assert accepted.is_established
        assert accepted.send_c_echo().Status == 0x0000
        accepted.release()


def test_allowed_title_from_another_host_is_rejected(archive: Archive) -> None:
    with running_node(archive, allowed_peers=["GOODSCU@10.9.9.9"]) as node:
        result = echoscu(node, "GOODSCU")
        assert result.returncode != 0
        assert "Association Rejected" in result.stdout + result.stderr

        assoc = associate(node, "GOODSCU")
        assert assoc.is_rejected
        assert reject_reason(assoc) == (REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED)


def test_association_limit_rejects_transiently_and_frees_on_release(archive: Archive) -> None:
    with running_node(archive, max_associations=2) as node:
        closed = threading.Event()
        # Bound after the policy's own EVT_CONN_CLOSE handler, so once this fires the slot is free.
        node.node.server.bind(evt.EVT_CONN_CLOSE, lambda event: closed.set())  # type: ignore[attr-defined]

        first, second = associate(node, "SCU_ONE"), associate(node, "SCU_TWO")
        assert first.is_established and second.is_established

        third = associate(node, "SCU_THREE")
        assert third.is_rejected
        assert reject_reason(third) == (
            REJECTED_TRANSIENT,
            SOURCE_PROVIDER_PRESENTATION,
            LOCAL_LIMIT_EXCEEDED,
        )
        assert third.acceptor.primitive.reason_str == "Local limit exceeded"  # type: ignore[union-attr]
        # The rejected connection closing must not free a slot it never held.
        assert closed.wait(10)
        closed.clear()
        fourth = associate(node, "SCU_FOUR")
        assert fourth.is_rejected, "a rejected association released a slot it never took"

        assert closed.wait(10)
        closed.clear()
        first.release()
        assert closed.wait(10), "the server never saw the released connection close"

        again = associate(node, "SCU_FIVE")
        assert again.is_established
        assert again.send_c_echo().Status == 0x0000
        again.release()
        second.release()
