"""The audit trail on real SQLite and PostgreSQL: a hash chain that names the first tampered entry.

Rows are edited, deleted and inserted with plain SQL, as someone with write access to the index
would; ``verify`` must fail at the right entry, and a trail nobody touched must verify.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom.events import EVT_C_STORE as evt_store
from sqlalchemy import delete, insert, select, update

from pacs.archive import Archive
from pacs.audit import Action, AuditEvent, Outcome, dicom_audit_message, json_lines
from pacs.context import CallerContext
from pacs.index.schema import audit_entry, audit_head
from tests.conftest import RunningNode
from tests.support.factories import diconde_dx, write
from tests.support.web import RunningWeb

INSPECTOR = CallerContext(via="http", user="ws-12", address="10.0.0.7:51234")
DEVICE = CallerContext(via="c-store", ae_title="DR_PANEL_1", address="10.0.0.9:40000")


def fill(archive: Archive, count: int = 10) -> None:
    for n in range(count):
        caller = INSPECTOR if n % 2 else DEVICE
        action = Action.QUERY if n % 2 else Action.STORE
        archive.audit.record(
            AuditEvent(action, caller, part_id=f"BLADE-{n % 3:04d}", uids=[f"1.2.826.0.1.3680043.10.543.{n}"])
        )


def test_entries_chain_and_filter(archive: Archive) -> None:
    fill(archive)
    entries = archive.audit.entries()
    assert [e.seq for e in entries] == list(range(1, 11))
    assert entries[0].prev_hash == "0" * 64
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(entries, entries[1:], strict=False))
    assert entries[0].ae_title == "DR_PANEL_1" and entries[0].action == "store" and entries[0].user is None
    assert entries[1].user == "ws-12" and entries[1].address == "10.0.0.7:51234"
    assert entries[0].at.tzinfo is not None
    assert [e.seq for e in archive.audit.entries(part_id="BLADE-0001")] == [2, 5, 8]
    assert [e.seq for e in archive.audit.entries(user="ws-12", action="query")] == [2, 4, 6, 8, 10]
    assert [e.seq for e in archive.audit.entries(limit=3, offset=4)] == [5, 6, 7]
    future = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    assert archive.audit.entries(since=future) == []
    assert len(archive.audit.entries(until=future)) == 10
    result = archive.audit.verify()
    assert result.ok and result.checked == 10 and result.head_seq == 10


def test_an_edited_entry_is_named(archive: Archive) -> None:
    fill(archive)
    with archive.engine.begin() as conn:
        conn.execute(update(audit_entry).where(audit_entry.c.seq == 4).values(user_name="somebody-else"))
    result = archive.audit.verify()
    assert not result.ok and result.broken_seq == 4
    assert result.problem == "entry 4: its content does not match its hash: edited"


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(archive: Archive) -> None:
    fill(archive)
    entry = archive.audit.entries()[5]  # seq 6
    forged = {**entry.content(), "outcome": "refused"}
    from pacs.audit import entry_hash

    with archive.engine.begin() as conn:
        conn.execute(
            update(audit_entry)
            .where(audit_entry.c.seq == 6)
            .values(outcome="refused", hash=entry_hash(forged))
        )
    result = archive.audit.verify()
    assert not result.ok and result.broken_seq == 7
    assert "entry 7: its previous hash is not entry 6's" in (result.problem or "")


def test_a_deleted_entry_is_named(archive: Archive) -> None:
    fill(archive)
    with archive.engine.begin() as conn:
        conn.execute(delete(audit_entry).where(audit_entry.c.seq == 3))
    result = archive.audit.verify()
    assert not result.ok and result.broken_seq == 3
    assert result.problem == "entry 3 is missing (the next one is 4): deleted"


def test_deleting_the_newest_entries_disagrees_with_the_head(archive: Archive) -> None:
    fill(archive)
    with archive.engine.begin() as conn:
        conn.execute(delete(audit_entry).where(audit_entry.c.seq >= 9))
    result = archive.audit.verify()
    assert not result.ok and result.broken_seq == 9
    assert result.problem == "entries 9 to 10 are missing: deleted"


def test_an_inserted_entry_is_named(archive: Archive) -> None:
    fill(archive)
    with archive.engine.begin() as conn:
        # Make room in the middle: every entry from 5 on moves up one, and a forged one takes 5.
        for seq in range(10, 4, -1):
            conn.execute(update(audit_entry).where(audit_entry.c.seq == seq).values(seq=seq + 1))
        row = conn.execute(select(audit_entry).where(audit_entry.c.seq == 4)).one()._asdict()
        conn.execute(insert(audit_entry).values({**row, "seq": 5, "action": "delete"}))
        conn.execute(update(audit_head).values(seq=11))
    result = archive.audit.verify()
    assert not result.ok and result.broken_seq == 5
    assert result.problem == "entry 5: its content does not match its hash: edited"

    # An entry appended past the head, without moving the head, is also found.
    with archive.engine.begin() as conn:
        conn.execute(update(audit_head).values(seq=10))
        conn.execute(delete(audit_entry).where(audit_entry.c.seq == 5))
        for seq in range(6, 12):
            conn.execute(update(audit_entry).where(audit_entry.c.seq == seq).values(seq=seq - 1))
        row = conn.execute(select(audit_entry).where(audit_entry.c.seq == 10)).one()._asdict()
        conn.execute(insert(audit_entry).values({**row, "seq": 11}))
    result = archive.audit.verify()
    assert not result.ok and result.broken_seq == 11
    assert result.problem == "entry 11 lies beyond the head (10): inserted"


def test_concurrent_writers_make_one_chain(archive: Archive) -> None:
    def work(n: int) -> None:
        for i in range(10):
            archive.audit.record(AuditEvent(Action.RETRIEVE, INSPECTOR, part_id=f"P{n}", detail={"i": i}))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = archive.audit.verify()
    assert result.ok and result.checked == 40


def test_queued_events_are_written_in_order_and_on_close(archive: Archive) -> None:
    for n in range(25):
        archive.audit.record_later(AuditEvent(Action.VIEW, INSPECTOR, part_id="BLADE-0001", detail={"n": n}))
    assert archive.audit.flush(10)
    assert [e.detail["n"] for e in archive.audit.entries()] == list(range(25))
    archive.audit.record_later(AuditEvent(Action.VIEW, INSPECTOR, detail={"n": 25}))
    archive.audit.close()
    assert [e.detail["n"] for e in archive.audit.entries()][-1] == 25
    assert archive.audit.verify().ok


def test_a_batch_of_queued_events_finds_the_parts_of_its_instances_and_inspections(
    archive: Archive, tmp_path: Path
) -> None:
    """The writer looks up the parts of a whole batch together; each entry must still get its own."""
    stored = {}
    for n, part in enumerate(["BATCH-A", "BATCH-A", "BATCH-B"]):
        ds = diconde_dx(part_id=part, rows=8, columns=8)
        archive.ingest.ingest_file(write(ds, tmp_path / f"{n}.dcm"), CallerContext(via="import"))
        stored[n] = (str(ds.SOPInstanceUID), str(ds.StudyInstanceUID))
    (a1, study_a1), (a2, study_a2), (b1, study_b1) = stored.values()
    unknown = "1.2.826.0.1.3680043.10.543.999"
    events = [
        AuditEvent(Action.STORE, DEVICE, instances=[a1]),
        AuditEvent(Action.STORE, DEVICE, Outcome.REFUSED, instances=[unknown]),
        AuditEvent(Action.RETRIEVE, INSPECTOR, instances=[b1, a2, a1, a1]),  # two parts: two entries
        AuditEvent(Action.QUERY, INSPECTOR, uids=[study_b1]),
        AuditEvent(Action.VIEW, INSPECTOR, part_id="BATCH-A", instances=[a2, b1]),  # the part is given
    ]
    for event in events:
        archive.audit.record_later(event)
    assert archive.audit.flush(10)
    got = [(e.action, e.part_id, e.uids, e.detail.get("instances")) for e in archive.audit.entries()]
    assert got == [
        ("store", "BATCH-A", (study_a1,), [a1]),
        ("store", None, (), [unknown]),
        ("retrieve", "BATCH-A", tuple(sorted({study_a1, study_a2})), sorted([a1, a2])),
        ("retrieve", "BATCH-B", (study_b1,), [b1]),
        ("query", "BATCH-B", (study_b1,), None),
        ("view", "BATCH-A", (study_a2,), sorted([a2, b1])),
    ]
    assert archive.audit.verify().ok


def test_exports_as_json_lines_and_dicom_audit_messages(archive: Archive) -> None:
    fill(archive, 2)
    entries = archive.audit.entries()
    lines = list(json_lines(entries))
    first = json.loads(lines[0])
    assert first["seq"] == 1 and first["hash"] == entries[0].hash and first["ae_title"] == "DR_PANEL_1"
    from pacs.audit import entry_hash

    assert entry_hash({k: v for k, v in first.items() if k != "hash"}) == first["hash"]  # verifiable offline

    message = ET.fromstring(dicom_audit_message(entries[1], "NDT_PACS"))
    assert message.tag == "AuditMessage"
    event = message.find("EventIdentification")
    assert (
        event is not None
        and event.get("EventOutcomeIndicator") == "0"
        and event.get("EventActionCode") == "E"
    )
    event_id = event.find("EventID")
    assert event_id is not None and event_id.get("csd-code") == "110112"  # Query
    requestor = message.findall("ActiveParticipant")[0]
    assert requestor.get("UserID") == "ws-12" and requestor.get("NetworkAccessPointID") == "10.0.0.7"
    objects = message.findall("ParticipantObjectIdentification")
    assert objects[0].get("ParticipantObjectID") == "BLADE-0001"
    assert objects[1].get("ParticipantObjectID") == "1.2.826.0.1.3680043.10.543.1"


@pytest.mark.parametrize("outcome", [Outcome.REFUSED, Outcome.FAILURE])
def test_outcomes_map_to_rfc3881_indicators(archive: Archive, outcome: Outcome) -> None:
    entry = archive.audit.record(AuditEvent(Action.LOGIN_FAILED, INSPECTOR, outcome=outcome))
    event = ET.fromstring(dicom_audit_message(entry, "NDT_PACS")).find("EventIdentification")
    assert event is not None
    assert event.get("EventOutcomeIndicator") == {"refused": "4", "failure": "8"}[outcome]


# -- what the faces record ------------------------------------------------------------------------
def _stored(archive: Archive, tmp_path: Path, part_id: str = "BLADE-0042") -> Dataset:
    ds = diconde_dx(part_id=part_id, rows=32, columns=32)
    archive.ingest.ingest_file(write(ds, tmp_path / "dx.dcm"), CallerContext(via="import"))
    return ds


def test_http_requests_are_recorded_with_user_part_and_outcome(web: RunningWeb, tmp_path: Path) -> None:
    ds = _stored(web.archive, tmp_path)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    with web.client("inspector") as client:
        assert client.get("/dicom-web/studies", params={"PatientID": "BLADE-0042"}).status_code == 200
        base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
        assert client.get(base, headers={"Accept": "application/dicom"}).status_code == 200
        assert client.get(f"{base}/rendered", headers={"Accept": "image/png"}).status_code == 200
        assert client.get("/api/audit").status_code == 403  # an inspector may not read the trail
    assert (
        httpx.get(f"{web.base_url}/api/me", headers={"Authorization": "Bearer not-a-token"}).status_code
        == 401
    )
    assert web.archive.audit.flush(10)

    entries = web.archive.audit.entries()
    inspector = [e for e in entries if (e.user or "").startswith("test-inspector-")]
    assert [(e.action, e.outcome) for e in inspector] == [
        ("query", "success"),
        ("retrieve", "success"),
        ("view", "success"),
        ("query", "refused"),
    ]
    query, retrieve, view, refused = inspector
    assert query.part_id == "BLADE-0042" and query.detail["query"] == "PatientID=BLADE-0042"
    assert retrieve.part_id == "BLADE-0042" and retrieve.uids == (study,)  # the part found from the study
    assert view.uids == (study,) and view.detail["path"].endswith("/rendered")
    assert refused.detail["status"] == 403 and retrieve.via == "http" and retrieve.address
    (failed,) = [e for e in entries if e.action == "login-failed"]
    assert failed.outcome == "refused" and failed.user is None and failed.address.startswith("127.0.0.1:")
    assert "not-a-token" not in json.dumps(failed.to_json())
    assert web.archive.audit.verify().ok


def test_the_audit_route_filters_and_exports(web: RunningWeb, tmp_path: Path) -> None:
    fill(web.archive)
    with web.client("auditor") as client:
        part = client.get("/api/audit", params={"part_id": "BLADE-0001"})
        assert part.status_code == 200
        assert [e["seq"] for e in part.json()] == [2, 5, 8]
        stores = client.get("/api/audit", params={"action": "store", "limit": 2, "offset": 1}).json()
        assert [e["seq"] for e in stores] == [3, 5]
        lines = client.get("/api/audit", params={"format": "jsonl", "user": "ws-12"})
        assert lines.headers["content-type"].startswith("application/x-ndjson")
        parsed = [json.loads(line) for line in lines.text.splitlines()]
        assert [p["seq"] for p in parsed] == [2, 4, 6, 8, 10]
        xml = client.get("/api/audit", params={"format": "dicom", "action": "query"})
        messages = ET.fromstring(xml.text).findall("AuditMessage")
        assert len(messages) >= 5  # the auditor's own queries of the trail are in it too
        assert client.get("/api/audit", params={"action": "nonsense"}).status_code == 422


def test_c_find_and_c_get_are_recorded(archive: Archive, dicom_node: RunningNode, tmp_path: Path) -> None:
    from pynetdicom import AE, build_role
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        DigitalXRayImageStorageForPresentation,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
    )

    ds = _stored(archive, tmp_path, "VANE-0007")
    node = dicom_node
    ae = AE("WS_AUDIT")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    role = build_role(DigitalXRayImageStorageForPresentation, scp_role=True)
    assoc = ae.associate(
        node.host,
        node.port,
        ae_title=node.ae_title,
        ext_neg=[role],
        evt_handlers=[(evt_store, lambda event: 0x0000)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "VANE-0007"
    query.StudyInstanceUID = ""
    assert [s.Status for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)][
        -1
    ] == 0
    get = Dataset()
    get.QueryRetrieveLevel = "STUDY"
    get.StudyInstanceUID = ds.StudyInstanceUID
    assert [s.Status for s, _ in assoc.send_c_get(get, StudyRootQueryRetrieveInformationModelGet)][-1] == 0
    assoc.release()
    assert archive.audit.flush(10)
    find, retrieve = [e for e in archive.audit.entries() if e.ae_title == "WS_AUDIT"]
    assert (find.action, find.via, find.part_id, find.detail["matches"]) == (
        "query",
        "c-find",
        "VANE-0007",
        1,
    )
    assert (retrieve.action, retrieve.via, retrieve.part_id) == ("retrieve", "c-get", "VANE-0007")
    assert retrieve.uids == (ds.StudyInstanceUID,) and retrieve.detail["instances"] == [ds.SOPInstanceUID]
    assert retrieve.outcome == "success" and retrieve.detail["failed"] == 0


def test_pacs_audit_verify_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pacs.cli import main

    data = ["--data-dir", str(tmp_path / "archive")]
    assert main(["users", "add", "ws-30", "--role", "inspector", *data]) == 0
    assert main(["users", "revoke", "ws-30", *data]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", *data]) == 0
    assert "audit trail intact: 2 entries, head 2" in capsys.readouterr().out
    out = tmp_path / "trail.jsonl"
    assert main(["audit", "export", str(out), *data]) == 0
    changes = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(c["action"], c["detail"]["change"], c["via"]) for c in changes] == [
        ("user-change", "add", "cli"),
        ("user-change", "revoke", "cli"),
    ]
    assert changes[0]["user"].startswith("os:")

    from pacs.archive import open_archive
    from pacs.config import load_settings

    archive = open_archive(load_settings({"data_dir": tmp_path / "archive"}))
    try:
        with archive.engine.begin() as conn:
            conn.execute(
                update(audit_entry).where(audit_entry.c.seq == 1).values(detail='{"change":"nothing"}')
            )
    finally:
        archive.close()
    capsys.readouterr()
    assert main(["audit", "verify", *data]) == 1
    assert "audit trail BROKEN at entry 1: entry 1: its content does not match its hash: edited" in (
        capsys.readouterr().err
    )


def test_c_store_and_stow_are_recorded(web: RunningWeb, dicom_node: RunningNode, tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]

    archive = web.archive
    sent = dcmread(write(diconde_dx(part_id="DISC-0005", rows=32, columns=32), tmp_path / "sent.dcm"))
    ae = AE("DR_AUDIT")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
    assert assoc.is_established
    assert assoc.send_c_store(sent).Status == 0x0000
    broken = Dataset()  # no Study Instance UID or anything else of the IOD: refused
    broken.file_meta = FileMetaDataset()
    broken.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    broken.SOPClassUID = DigitalXRayImageStorageForPresentation
    broken.SOPInstanceUID = "1.2.3.4.5.6"
    broken.PatientID = "DISC-0005"
    assert assoc.send_c_store(broken).Status != 0x0000
    assoc.release()

    posted = diconde_dx(part_id="DISC-0006", rows=32, columns=32)
    path = write(posted, tmp_path / "stow.dcm")
    boundary = "audit-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with web.client("device") as client:
        answer = client.post(
            "/dicom-web/studies",
            content=body,
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        )
        assert answer.status_code == 200, answer.text
    assert archive.audit.flush(10)
    stores = archive.audit.entries(action="store")
    dimse = [e for e in stores if e.ae_title == "DR_AUDIT"]
    assert [(e.outcome, e.via) for e in dimse] == [("success", "c-store"), ("refused", "c-store")]
    assert dimse[0].part_id == "DISC-0005" and dimse[0].uids == (sent.StudyInstanceUID,)
    assert dimse[0].detail["instances"] == [sent.SOPInstanceUID] and dimse[0].detail["status"] == 0
    assert dimse[1].detail["instances"] == ["1.2.3.4.5.6"] and dimse[1].part_id is None
    (stow,) = [e for e in stores if e.via == "http"]
    assert stow.outcome == "success" and stow.part_id == "DISC-0006"
    assert stow.uids == (posted.StudyInstanceUID,) and stow.detail["instances"] == [posted.SOPInstanceUID]
    assert stow.user and stow.user.startswith("test-device-")


def test_pacs_import_is_recorded_per_part(tmp_path: Path) -> None:
    from pacs.archive import open_archive
    from pacs.cli import main
    from pacs.config import load_settings

    folder = tmp_path / "in"
    folder.mkdir()
    a = write(diconde_dx(part_id="IMP-0001", rows=16, columns=16), folder / "a.dcm")
    b = write(diconde_dx(part_id="IMP-0002", rows=16, columns=16), folder / "b.dcm")
    (folder / "junk.dcm").write_bytes(b"not dicom at all")
    data = ["--data-dir", str(tmp_path / "archive")]
    assert main(["import", str(folder), *data]) == 1  # one file rejected
    archive = open_archive(load_settings({"data_dir": tmp_path / "archive"}))
    try:
        stores = archive.audit.entries(action="store")
    finally:
        archive.close()
    by_part = {e.part_id: e for e in stores if e.outcome == "success"}
    assert set(by_part) == {"IMP-0001", "IMP-0002"} and all(e.via == "import" for e in stores)
    from pydicom import dcmread

    assert by_part["IMP-0001"].detail["instances"] == [dcmread(a).SOPInstanceUID]
    assert by_part["IMP-0002"].uids == (dcmread(b).StudyInstanceUID,)
    (refused,) = [e for e in stores if e.outcome == "refused"]
    assert refused.detail["rejected"] == 1 and "junk.dcm" in refused.detail["files"][0]
