"""Prometheus metrics at ``/metrics``: what a C-STORE, a C-FIND, a REST call and a read of stored data
move, and that the numbers add up over the worker processes of ``pacs serve``.

Counters are process-wide and the suite shares one process, so each test compares values before and
after what it does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    DigitalXRayImageStorageForPresentation,
    StudyRootQueryRetrieveInformationModelFind,
)

from dicom_nodes.transport import tune
from pacs.context import CallerContext
from tests.conftest import RunningNode
from tests.support.factories import diconde_dx, part10_bytes, write
from tests.support.serve import PacsServer
from tests.support.web import RunningWeb

EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"


def scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{base_url}/metrics", timeout=10)  # open: no token
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == EXPOSITION
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_c_store_a_c_find_and_a_rest_call_move_the_counters(
    web: RunningWeb, dicom_node: RunningNode
) -> None:
    ds = diconde_dx(part_id="METRICS-1")
    size = len(part10_bytes(ds))
    before = scrape(web.base_url)

    ae = AE("METRICS_SCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(*dicom_node.address, ae_title=dicom_node.ae_title)
    assert assoc.is_established
    # pynetdicom's own race (its reactor can take the response a send_* waits for under load) is a
    # client bug, not the archive's: this client gets the archive's guard against it.
    tune(assoc)
    try:
        assert assoc.send_c_store(ds).Status == 0
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.PatientID = "METRICS-1"
        identifier.StudyInstanceUID = ""
        found = [
            i for status, i in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind) if i
        ]
        assert len(found) == 1
    finally:
        assoc.release()
    with web.client("inspector") as client:
        assert client.get("/api/parts", params={"q": "METRICS-1"}).status_code == 200

    after = scrape(web.base_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("pacs_stores_total", via="c-store", outcome="stored") == 1
    # The stored object is the received data set under a file meta of pynetdicom's making.
    assert abs(moved("pacs_stored_bytes_total", via="c-store") - size) < 512
    assert moved("pacs_store_seconds_count", via="c-store") == 1
    assert moved("pacs_queries_total", interface="dimse", level="study") == 1
    assert moved("pacs_query_seconds_count", interface="dimse", level="study") == 1
    assert moved("pacs_queries_total", interface="rest", level="component") == 1
    assert moved("pacs_http_requests_total", method="GET", route="/api/parts", status="200") == 1
    assert moved("pacs_http_request_seconds_count", method="GET", route="/api/parts") == 1
    assert value(after, "pacs_http_request_seconds_bucket", method="GET", route="/api/parts", le="+Inf") >= 1


def test_retrieves_rejections_and_unknown_routes_are_counted(web: RunningWeb, tmp_path: Path) -> None:
    ds = diconde_dx(part_id="METRICS-2", rows=64, columns=64)
    path = write(ds, tmp_path / "a.dcm")
    web.archive.ingest.ingest_file(path, CallerContext(via="import"))
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    before = scrape(web.base_url)

    version = web.archive.retrieve.current(str(ds.SOPInstanceUID))
    frame = web.archive.retrieve.frame(version, 1)
    web.archive.retrieve.open(version).close()
    with pytest.raises(Exception):  # noqa: B017 - the kind is counted below
        web.archive.ingest.ingest_file(garbage, CallerContext(via="import"))
    assert httpx.get(f"{web.base_url}/no/such/route", timeout=10).status_code == 404
    with web.client("inspector") as client:
        assert client.get("/api/parts/NO-SUCH").status_code == 404

    after = scrape(web.base_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("pacs_retrieves_total", interface="dimse", kind="frame") == 1
    assert moved("pacs_retrieved_bytes_total", interface="dimse", kind="frame") == len(frame) == 64 * 64 * 2
    assert moved("pacs_retrieves_total", interface="dimse", kind="instance") == 1
    assert moved("pacs_retrieved_bytes_total", interface="dimse", kind="instance") == version.size
    assert moved("pacs_stores_total", via="import", outcome="rejected") == 1
    assert moved("pacs_errors_total", operation="store", error="InvalidObject") == 1
    assert moved("pacs_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert moved("pacs_http_requests_total", method="GET", route="/api/parts/{part_id}", status="404") == 1


def test_metrics_of_forked_processes_add_up(tmp_path: Path) -> None:
    """Multiprocess mode as `pacs serve` sets it up: three processes count, one scrape sums them."""
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from pacs import metrics

        metrics.setup_multiprocess(Path({str(tmp_path / "metrics")!r}))
        children = []
        for n in range(3):
            pid = os.fork()
            if pid == 0:
                for _ in range(n + 1):
                    metrics.http_request("GET", "/api/parts", 200, 0.01)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        print(metrics.render().decode())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(result.stdout)
        for s in family.samples
    }
    assert value(samples, "pacs_http_requests_total", method="GET", route="/api/parts", status="200") == 6
    assert value(samples, "pacs_http_request_seconds_count", method="GET", route="/api/parts") == 6
    assert len(list((tmp_path / "metrics").glob("counter_*.db"))) == 3


def test_pacs_serve_with_two_workers_reports_the_sum_of_both(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with PacsServer(["--data-dir", data], workers=2, log_path=tmp_path / "serve.log") as server:
        requests = 40
        for _ in range(requests):  # a new connection each time: the workers share the accepts
            assert httpx.get(f"{server.http_url}/health", timeout=10).status_code == 200
        samples = scrape(server.http_url)
        counted = value(samples, "pacs_http_requests_total", method="GET", route="/health", status="200")
        assert counted == requests, server.log()
        # Each worker that served some of them wrote its own file (in memory, not on the data disk,
        # which may fill up); the scrape summed them.
        files = Path(f"/dev/shm/pacs-metrics-{server.pid}")
        assert 1 <= len(list(files.glob("counter_*.db"))) <= 2
        assert not (data / "metrics").exists()
