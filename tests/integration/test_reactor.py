"""The event-driven association loops (dicom_nodes/reactor.py) against ``pacs serve``.

An association the archive holds open costs it no CPU while nothing arrives (pynetdicom's own loops
poll every millisecond on two threads per association), and still answers at once when something
does: a C-ECHO on each of many idle associations, a release, a peer that vanishes.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.serve import PacsServer, proc_status_kib

IDLE_ASSOCIATIONS = 16
IDLE_SECONDS = 3.0
#: CPU seconds the worker may spend over IDLE_SECONDS with IDLE_ASSOCIATIONS open and silent.
#: pynetdicom's polling loops spent about 2 s here (two thirds of a core), the archive's 0.06 s.
IDLE_CPU_LIMIT = 0.25


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def open_associations(server: PacsServer, count: int) -> list[Association]:
    ae = AE("IDLE_SCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    opened = []
    for _ in range(count):
        assoc = ae.associate(server.host, server.dicom_port, ae_title=server.ae_title)
        assert assoc.is_established
        opened.append(assoc)
    return opened


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PacsServer]:
    with PacsServer(
        ["--data-dir", tmp_path / "archive"], workers=1, log_path=tmp_path / "serve.log"
    ) as running:
        yield running


def test_idle_associations_cost_the_server_no_cpu_and_answer_at_once(server: PacsServer) -> None:
    (worker,) = server.worker_pids()
    opened = open_associations(server, IDLE_ASSOCIATIONS)
    try:
        time.sleep(0.5)  # the association requests themselves are handled
        before = cpu_seconds(worker)
        time.sleep(IDLE_SECONDS)
        spent = cpu_seconds(worker) - before
        assert spent < IDLE_CPU_LIMIT, (
            f"{spent:.2f} CPU seconds in {IDLE_SECONDS} s for {IDLE_ASSOCIATIONS} idle associations"
        )
        for assoc in opened:  # each woken by its request, answered within the DIMSE timeout
            started = time.monotonic()
            assert assoc.send_c_echo().Status == 0x0000
            assert time.monotonic() - started < 1.0
    finally:
        for assoc in opened:
            assoc.release()
    assert all(assoc.is_released for assoc in opened)


def test_a_peer_that_vanishes_frees_its_association(server: PacsServer) -> None:
    """A connection closed without A-RELEASE or A-ABORT: the waiting DUL thread sees the socket
    readable at end of stream and ends the association (no idle-timeout wait)."""
    (assoc,) = open_associations(server, 1)
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    raw: socket.socket = assoc.dul.socket.socket
    threads_before = threads(server.worker_pids()[0])
    raw.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and threads(server.worker_pids()[0]) >= threads_before:
        time.sleep(0.05)
    assert threads(server.worker_pids()[0]) < threads_before, "the association's threads still run"
    assoc.abort()
    (again,) = open_associations(server, 1)  # and the node keeps serving
    assert again.send_c_echo().Status == 0x0000
    again.release()


def threads(pid: int) -> int:
    return proc_status_kib(pid, "Threads")  # a count, despite the helper's name
