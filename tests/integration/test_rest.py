"""The REST API under ``/api`` as a script or the viewer reaches it: parts, nodes, system.

Served by uvicorn on a free port on both backend pairs; data comes in through the ingest service;
the node that ``echo`` and ``send`` talk to is DCMTK's storescp, an independent implementation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.index.database import redact_url
from tests.integration.test_scu import StoreSCP, start_storescp
from tests.support.factories import diconde_dx, enhanced_ct, us_multiframe, write
from tests.support.net import free_port
from tests.support.web import RunningWeb


def ingest(archive: Archive, ds: Dataset, tmp_path: Path) -> Path:
    path = write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm")
    archive.ingest.ingest_file(path, CallerContext(via="import"))
    return path


@pytest.fixture
def inspections(web: RunningWeb, tmp_path: Path) -> dict[str, str]:
    """Three components; the blade inspected twice (DX in March, UT in June with two series)."""
    blade_march, blade_june = generate_uid(), generate_uid()
    ingest(web.archive, diconde_dx(study_uid=blade_march, AccessionNumber="WO-17"), tmp_path)
    june: dict[str, Any] = {"StudyDate": "20240620", "AccessionNumber": "WO-42"}
    ingest(
        web.archive,
        us_multiframe(part_id="BLADE-0001", component_name="Turbine^Blade", study_uid=blade_june, **june),
        tmp_path,
    )
    ingest(web.archive, diconde_dx(study_uid=blade_june, seed=2, **june), tmp_path)
    ingest(web.archive, us_multiframe(), tmp_path)  # WELD-3, Pipe^Weld
    ingest(web.archive, enhanced_ct(part_id="LINE/7/CASTING"), tmp_path)  # a part ID with slashes
    return {"march": blade_march, "june": blade_june}


# -- parts ------------------------------------------------------------------------------------------
def test_parts_search_by_prefix_pattern_and_name_with_counts_dates_and_methods(
    web: RunningWeb, inspections: dict[str, str]
) -> None:
    with web.client("inspector") as client:
        found = client.get("/api/parts", params={"q": "BLADE"})
        assert found.status_code == 200, found.text
        assert found.json() == [
            {
                "part_id": "BLADE-0001",
                "name": "Turbine^Blade",
                "inspection_count": 2,
                "series_count": 3,
                "instance_count": 3,
                "last_inspection_date": "2024-06-20",
                "methods": ["DX", "US"],
            }
        ]
        by_name = client.get("/api/parts", params={"q": "turbine"}).json()  # names ignore case
        assert [p["part_id"] for p in by_name] == ["BLADE-0001"]
        assert client.get("/api/parts", params={"q": "blade"}).json() == []  # part IDs do not
        pattern = client.get("/api/parts", params={"q": "*WEL?-3"}).json()
        assert [p["part_id"] for p in pattern] == ["WELD-3"]
        assert client.get("/api/parts", params={"q": "WELD-3X*"}).json() == []
        assert client.get("/api/parts", params={"q": "100%"}).json() == []  # no SQL wildcard leaks


def test_parts_are_listed_by_part_id_and_paged(web: RunningWeb, inspections: dict[str, str]) -> None:
    with web.client("inspector") as client:
        everything = client.get("/api/parts")
        assert [p["part_id"] for p in everything.json()] == ["BLADE-0001", "LINE/7/CASTING", "WELD-3"]
        assert everything.headers["X-Total-Count"] == "3"
        page = client.get("/api/parts", params={"limit": 1, "offset": 1})
        assert [p["part_id"] for p in page.json()] == ["LINE/7/CASTING"]
        assert page.headers["X-Total-Count"] == "3"
        assert client.get("/api/parts", params={"offset": 5}).json() == []
        assert client.get("/api/parts", params={"limit": 100000}).status_code == 422
        assert client.get("/api/parts", params={"offset": -1}).status_code == 422


def test_a_part_with_all_its_inspections(web: RunningWeb, inspections: dict[str, str]) -> None:
    with web.client("inspector") as client:
        response = client.get("/api/parts/BLADE-0001")
        assert response.status_code == 200, response.text
        part = response.json()
        assert part["part_id"] == "BLADE-0001"
        assert part["inspection_count"] == 2
        assert part["attributes"]["material_grade"] == "Inconel 718"
        assert part["attributes"]["serial_numbers"] == "SN-BLADE-0001-A\\SN-BLADE-0001-B"
        march, june = part["inspections"]  # oldest first
        assert march["study_instance_uid"] == inspections["march"]
        assert (march["date"], march["accession_number"], march["methods"]) == ("2024-03-15", "WO-17", ["DX"])
        assert (march["series_count"], march["instance_count"]) == (1, 1)
        assert june["study_instance_uid"] == inspections["june"]
        assert (june["date"], june["accession_number"], june["methods"]) == (
            "2024-06-20",
            "WO-42",
            ["DX", "US"],
        )
        assert (june["series_count"], june["instance_count"]) == (2, 2)

        slashed = client.get("/api/parts/LINE/7/CASTING")
        assert slashed.status_code == 200
        assert slashed.json()["methods"] == ["CT"]
        missing = client.get("/api/parts/NO-SUCH-PART")
        assert missing.status_code == 404
        assert "NO-SUCH-PART" in missing.json()["detail"]


# -- nodes ------------------------------------------------------------------------------------------
@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = start_storescp(tmp_path, "+xa")
    yield scp
    scp.stop()


@pytest.fixture
def peers(web: RunningWeb) -> RunningWeb:
    """What `pacs serve` does in each worker: give the HTTP face the archive's DICOM client."""
    from dicom_nodes.peers import ScuPeers

    web.archive.peers = ScuPeers(web.archive)
    return web


def test_nodes_are_added_listed_replaced_and_removed(web: RunningWeb) -> None:
    node = {"ae_title": "VIEWER_1", "host": "10.0.0.5", "port": 104, "tls": False, "description": "lab"}
    with web.client("admin") as client:
        assert client.get("/api/nodes").json() == []
        added = client.post("/api/nodes", json=node)
        assert added.status_code == 201, added.text
        assert added.json() == node
        assert added.headers["Location"].endswith("/api/nodes/VIEWER_1")
        again = client.post("/api/nodes", json=node)
        assert again.status_code == 409
        assert "VIEWER_1" in again.json()["detail"]
        moved = client.post("/api/nodes", json={**node, "port": 11112, "replace": True})
        assert moved.status_code == 201
        assert client.get("/api/nodes").json() == [{**node, "port": 11112}]
        assert web.archive.nodes.get("VIEWER_1").port == 11112  # type: ignore[union-attr]

        for bad in ("", "A" * 17, "BACK\\SLASH", "TAB\tX"):
            refused = client.post("/api/nodes", json={**node, "ae_title": bad})
            assert refused.status_code == 400, bad
            assert "AE title" in refused.json()["detail"]
        assert client.post("/api/nodes", json={**node, "ae_title": "X", "host": "a b"}).status_code == 400
        assert client.post("/api/nodes", json={**node, "ae_title": "X", "port": 0}).status_code == 422

        assert client.delete("/api/nodes/VIEWER_1").status_code == 204
        assert client.delete("/api/nodes/VIEWER_1").status_code == 404
        assert client.get("/api/nodes").json() == []


def test_echo_a_node_that_answers_and_one_that_does_not(peers: RunningWeb, storescp: StoreSCP) -> None:
    with peers.client("admin") as client:
        client.post("/api/nodes", json={"ae_title": "STORESCP", "host": "127.0.0.1", "port": storescp.port})
        client.post("/api/nodes", json={"ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()})
        answered = client.post("/api/nodes/STORESCP/echo")
        assert answered.status_code == 200, answered.text
        assert answered.json()["ok"] is True
        assert answered.json()["status"] == 0
        silent = client.post("/api/nodes/NOBODY/echo").json()
        assert silent["ok"] is False
        assert silent["status"] is None
        assert silent["reason"]
        assert client.post("/api/nodes/UNKNOWN/echo").status_code == 404


def test_send_a_study_to_a_node_bit_for_bit(peers: RunningWeb, storescp: StoreSCP, tmp_path: Path) -> None:
    study = generate_uid()
    paths = [ingest(peers.archive, diconde_dx(study_uid=study, seed=seed), tmp_path) for seed in (1, 2)]
    with peers.client("admin") as client:
        client.post("/api/nodes", json={"ae_title": "STORESCP", "host": "127.0.0.1", "port": storescp.port})
        response = client.post("/api/nodes/STORESCP/send", json={"uids": [study]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["sent"], body["failed"]) == (2, 0)
        assert {r["sop_instance_uid"] for r in body["results"]} == {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths
        }
        assert all(r["ok"] and r["status"] == 0 and not r["transcoded"] for r in body["results"])
        received = storescp.received()
        for path in paths:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            sent_pixels = pydicom.dcmread(path).PixelData
            assert (
                hashlib.sha256(pydicom.dcmread(received[uid]).PixelData).digest()
                == hashlib.sha256(sent_pixels).digest()
            )

        unknown = client.post("/api/nodes/STORESCP/send", json={"uids": [study, "1.2.3.999"]})
        assert unknown.status_code == 404
        assert "1.2.3.999" in unknown.json()["detail"]
        assert client.post("/api/nodes/STORESCP/send", json={"uids": []}).status_code == 422
        assert client.post("/api/nodes/NOPE/send", json={"uids": [study]}).status_code == 404


def test_send_to_a_node_that_is_down_is_503_and_nothing_is_sent(peers: RunningWeb, tmp_path: Path) -> None:
    study = generate_uid()
    ingest(peers.archive, diconde_dx(study_uid=study), tmp_path)
    with peers.client("admin") as client:
        client.post("/api/nodes", json={"ae_title": "DOWN", "host": "127.0.0.1", "port": free_port()})
        response = client.post("/api/nodes/DOWN/send", json={"uids": [study]})
        assert response.status_code == 503
        assert "DOWN" in response.json()["detail"]


def test_echo_without_a_dicom_client_in_the_process_is_503(web: RunningWeb) -> None:
    with web.client("admin") as client:
        client.post("/api/nodes", json={"ae_title": "PEER", "host": "127.0.0.1", "port": 104})
        response = client.post("/api/nodes/PEER/echo")
        assert response.status_code == 503
        assert "pacs serve" in response.json()["detail"]


# -- system -----------------------------------------------------------------------------------------
def test_system_reports_version_listeners_counts_and_storage(
    web: RunningWeb, inspections: dict[str, str]
) -> None:
    with web.client("auditor") as client:
        response = client.get("/api/system")
    assert response.status_code == 200, response.text
    info = response.json()
    settings = web.archive.settings
    assert info["ae_title"] == settings.ae_title
    assert info["dicom_port"] == settings.dicom_port
    assert info["dicom_tls_port"] is None  # no TLS listener unless configured
    assert info["uptime_seconds"] >= 0
    assert info["index"]["backend"] in ("sqlite", "postgresql")
    counts = web.archive.index.counts()
    assert {k: info["index"][k] for k in counts} == counts
    assert info["index"]["components"] == 3
    assert info["storage"]["objects"] == counts["versions"] == info["storage"]["current_objects"]
    stored = sum(v.size for v in web.archive.index.iter_versions())
    assert info["storage"]["bytes"] == stored == info["storage"]["current_bytes"]
    assert info["storage"]["location"] == web.archive.store.location
    assert info["index"]["location"] == redact_url(str(settings.database_url))
    if "@" in str(settings.object_store):  # s3://ACCESS:SECRET@HOST:PORT/BUCKET
        credentials = str(settings.object_store).split("//", 1)[1].split("@", 1)[0]
        assert credentials.split(":")[1] not in info["storage"]["location"]


# -- who may do what ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "allowed", "refused"),
    [
        ("GET", "/api/parts", ("inspector", "auditor", "admin"), ("device",)),
        ("GET", "/api/parts/X", ("inspector", "auditor", "admin"), ("device",)),
        ("GET", "/api/nodes", ("admin",), ("device", "inspector", "auditor")),
        ("DELETE", "/api/nodes/X", ("admin",), ("device", "inspector", "auditor")),
        ("POST", "/api/nodes/X/echo", ("admin",), ("device", "inspector", "auditor")),
        ("GET", "/api/system", ("auditor", "admin"), ("device", "inspector")),
    ],
)
def test_roles(
    web: RunningWeb, method: str, path: str, allowed: tuple[str, ...], refused: tuple[str, ...]
) -> None:
    for role in refused:
        with web.client(role) as client:
            assert client.request(method, path).status_code == 403, role
    for role in allowed:
        with web.client(role) as client:
            assert client.request(method, path).status_code not in (401, 403), role
    with web.client(None) as anonymous:
        assert anonymous.request(method, path).status_code == 401
