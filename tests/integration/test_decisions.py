"""Inspection decisions: recorded with the inspector's re-entered credential, never edited, only
superseded; each one in the audit trail. Both backend pairs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.decisions import Disposition
from pacs.errors import InvalidQuery, NotFound
from tests.support.factories import diconde_dx, write
from tests.support.web import RunningWeb


def stored(archive: Archive, tmp_path: Path, part_id: str = "WELD-0003") -> Dataset:
    ds = diconde_dx(part_id=part_id, rows=32, columns=32)
    archive.ingest.ingest_file(write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"), CallerContext(via="import"))
    return ds


def test_an_inspector_decides_and_a_later_decision_supersedes(web: RunningWeb, tmp_path: Path) -> None:
    study = stored(web.archive, tmp_path).StudyInstanceUID
    token = web.token("inspector")
    url = f"/api/inspections/{study}/decisions"
    with web.client("inspector") as client:
        first = client.post(
            url, json={"disposition": "rework", "comment": "undercut at 120 mm", "credential": token}
        )
        assert first.status_code == 201, first.text
        second = client.post(url, json={"disposition": "accepted", "credential": token})
        assert second.status_code == 201, second.text
        listed = client.get(url).json()
        by_part = client.get("/api/parts/WELD-0003/decisions").json()
    assert [d["disposition"] for d in listed] == ["rework", "accepted"]
    old, new = listed
    assert old["superseded_by"] == new["id"] and not old["current"]
    assert new["supersedes"] == old["id"] and new["current"] and new["superseded_by"] is None
    assert new["user"].startswith("test-inspector-") and new["part_id"] == "WELD-0003"
    assert by_part == listed

    assert web.archive.audit.flush(10)
    made = [e for e in web.archive.audit.entries() if e.action == "decision"]
    assert [(e.outcome, e.detail["disposition"], e.detail["decision"]) for e in made] == [
        ("success", "rework", old["id"]),
        ("success", "accepted", new["id"]),
    ]
    assert (
        made[0].part_id == "WELD-0003"
        and made[0].uids == (study,)
        and made[0].detail["comment"] == "undercut at 120 mm"
    )
    assert made[1].detail["supersedes"] == old["id"]
    assert web.archive.audit.verify().ok


def test_the_credential_must_be_the_callers_own_token(web: RunningWeb, tmp_path: Path) -> None:
    study = stored(web.archive, tmp_path).StudyInstanceUID
    url = f"/api/inspections/{study}/decisions"
    somebody_else = web.archive.users.add("ws-other", "inspector")
    with web.client("inspector") as client:
        for credential in (somebody_else, "not-a-token"):
            refused = client.post(url, json={"disposition": "accepted", "credential": credential})
            assert refused.status_code == 403
            assert "does not confirm the user test-inspector-" in refused.json()["detail"]
        assert client.get(url).json() == []
    assert web.archive.audit.flush(10)
    refusals = [e for e in web.archive.audit.entries() if e.action == "decision"]
    assert [e.outcome for e in refusals] == ["refused", "refused"]
    assert all(e.detail["reason"] == "credential not confirmed" for e in refusals)


@pytest.mark.parametrize("role", ["auditor", "device"])
def test_roles_that_may_not_decide(web: RunningWeb, tmp_path: Path, role: str) -> None:
    study = stored(web.archive, tmp_path).StudyInstanceUID
    with web.client(role) as client:
        answer = client.post(
            f"/api/inspections/{study}/decisions",
            json={"disposition": "accepted", "credential": web.token(role)},
        )
    assert answer.status_code == 403
    assert answer.json()["detail"] == f"role {role} does not grant the decide permission"


def test_bad_decisions_are_refused_with_a_reason(web: RunningWeb, tmp_path: Path) -> None:
    study = stored(web.archive, tmp_path).StudyInstanceUID
    token = web.token("inspector")
    with web.client("inspector") as client:
        url = f"/api/inspections/{study}/decisions"
        no_reason = client.post(url, json={"disposition": "rejected", "comment": "  ", "credential": token})
        assert no_reason.status_code == 400
        assert no_reason.json()["detail"] == "a rejected decision needs a comment saying why"
        assert client.post(url, json={"disposition": "maybe", "credential": token}).status_code == 422
        unknown = client.post(
            "/api/inspections/1.2.3.4.5/decisions", json={"disposition": "accepted", "credential": token}
        )
        assert unknown.status_code == 404 and "1.2.3.4.5" in unknown.json()["detail"]
        assert client.get("/api/inspections/1.2.3.4.5/decisions").status_code == 404


def test_simultaneous_decisions_form_one_line(archive: Archive, tmp_path: Path) -> None:
    study = stored(archive, tmp_path).StudyInstanceUID
    errors: list[Exception] = []

    def decide(n: int) -> None:
        try:
            caller = CallerContext(via="http", user=f"ws-{n}")
            archive.decisions.record(study, Disposition.REPEAT, f"blurred, take {n}", caller)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    decisions = archive.decisions.for_inspection(study)
    assert len(decisions) == 4
    assert [d.supersedes for d in decisions] == [None, *[d.id for d in decisions[:-1]]]
    assert [d.current for d in decisions] == [False, False, False, True]
    with pytest.raises(InvalidQuery, match="disposition 'fine'"):
        archive.decisions.record(study, "fine", "", CallerContext(via="http", user="ws-1"))
    with pytest.raises(NotFound):
        archive.decisions.for_inspection("1.2.3")
    assert archive.decisions.for_part("NO-SUCH-PART") == []
    assert archive.audit.verify().ok


def test_evidence_packages_carry_the_decisions_and_the_audit_entries_of_the_part(
    web: RunningWeb, tmp_path: Path
) -> None:
    import io
    import json
    import zipfile

    from pacs.audit import entry_hash
    from pacs.services.evidence import verify_package

    study = stored(web.archive, tmp_path, "WELD-0009").StudyInstanceUID
    stored(web.archive, tmp_path, "OTHER-0001")
    web.archive.decisions.record(
        study, "rejected", "porosity, cluster 4 mm", CallerContext(via="http", user="ws-1")
    )
    with web.client("inspector") as client:
        assert client.get("/dicom-web/studies", params={"PatientID": "WELD-0009"}).status_code == 200
    assert web.archive.audit.flush(10)
    with web.client("auditor") as client:
        answer = client.get("/api/parts/WELD-0009/evidence")
        assert answer.status_code == 200, answer.text
    package = zipfile.ZipFile(io.BytesIO(answer.content))
    (decision,) = json.loads(package.read("decisions.json"))
    assert (decision["disposition"], decision["comment"], decision["user"]) == (
        "rejected",
        "porosity, cluster 4 mm",
        "ws-1",
    )
    audit = [json.loads(line) for line in package.read("audit.jsonl").decode().splitlines()]
    assert {e["action"] for e in audit} >= {"decision", "query"}
    assert all(e["part_id"] == "WELD-0009" for e in audit)
    assert all(entry_hash({k: v for k, v in e.items() if k != "hash"}) == e["hash"] for e in audit)
    path = tmp_path / "evidence.zip"
    path.write_bytes(answer.content)
    assert verify_package(path).ok
    assert web.archive.audit.flush(10)
    (export,) = [e for e in web.archive.audit.entries(action="export")]
    assert export.part_id == "WELD-0009" and export.user and export.user.startswith("test-auditor-")
