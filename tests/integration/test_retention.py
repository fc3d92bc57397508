"""Retention rules, legal holds and two-phase deletion, on both backend pairs: refused with a reason
before expiry or under hold, marked then purged (rows, then objects), every step audited."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from pacs.archive import Archive
from pacs.config import RetentionRule
from pacs.context import CallerContext
from pacs.errors import InvalidQuery, NotFound
from pacs.retention import DeletionRefused, RetentionService
from tests.support.factories import diconde_dx, write
from tests.support.web import RunningWeb

ADMIN = CallerContext(via="http", user="qa-admin")
LATER = dt.timedelta(days=30)


def stored(archive: Archive, tmp_path: Path, part_id: str, date: str, **extra: object) -> Dataset:
    ds = diconde_dx(part_id=part_id, rows=16, columns=16, StudyDate=date, **extra)
    archive.ingest.ingest_file(write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm"), CallerContext(via="import"))
    return ds


def service(archive: Archive, *rules: RetentionRule, grace_days: float = 7) -> RetentionService:
    return RetentionService(archive.engine, archive.store, archive.audit, rules, grace_days)


def test_the_longest_matching_rule_decides_and_no_rule_means_no_constraint(
    archive: Archive, tmp_path: Path
) -> None:
    old = stored(archive, tmp_path, "BLADE-0001", "20100301").StudyInstanceUID
    recent = stored(archive, tmp_path, "BLADE-0002", "20240301").StudyInstanceUID
    retention = service(
        archive,
        RetentionRule(method="DX", years=10),
        RetentionRule(part="BLADE-0002", years=30),
        RetentionRule(method="CT", years=50),  # does not match a DX inspection
    )
    state = retention.state(old)
    assert (state.keep_until, state.rule) == (dt.date(2020, 3, 1), "method=DX: 10 years")
    assert state.why_not_deletable(dt.date(2026, 1, 1)) is None
    state = retention.state(recent)
    assert (state.keep_until, state.rule) == (dt.date(2054, 3, 1), "part=BLADE-0002: 30 years")
    assert (
        state.why_not_deletable(dt.date(2026, 1, 1))
        == "kept until 2054-03-01 by the retention rule part=BLADE-0002: 30 years"
    )
    assert service(archive).state(recent).keep_until is None  # no rules: may be deleted


def test_deletion_is_refused_before_expiry_and_under_legal_hold(archive: Archive, tmp_path: Path) -> None:
    recent = stored(archive, tmp_path, "WELD-0001", "20240301").StudyInstanceUID
    old = stored(archive, tmp_path, "WELD-0002", "20000301").StudyInstanceUID
    retention = service(archive, RetentionRule(years=10))
    with pytest.raises(
        DeletionRefused, match="kept until 2034-03-01 by the retention rule every inspection: 10 years"
    ):
        retention.request_delete(recent, "duplicate upload", ADMIN)
    retention.place_hold("WELD-0002", "claim 2026-117", ADMIN)
    with pytest.raises(
        DeletionRefused,
        match=r"part WELD-0002 is under legal hold since .* \(claim 2026-117; placed by qa-admin\)",
    ):
        retention.request_delete(old, "past retention", ADMIN)
    with pytest.raises(InvalidQuery, match="under legal hold already"):
        retention.place_hold("WELD-0002", "again", ADMIN)
    with pytest.raises(NotFound):
        retention.place_hold("NO-SUCH-PART", "x", ADMIN)
    retention.release_hold("WELD-0002", ADMIN)
    state = retention.request_delete(old, "past retention", ADMIN)
    assert state.delete_requested_by == "qa-admin" and state.delete_reason == "past retention"
    assert [h.active for h in retention.holds(include_released=True)] == [False]
    assert retention.holds() == []
    with pytest.raises(InvalidQuery, match="requested already"):
        retention.request_delete(old, "again", ADMIN)


def test_two_phase_deletion_then_purge(archive: Archive, tmp_path: Path) -> None:
    gone = stored(archive, tmp_path, "DISC-0001", "20000301")
    second = stored(archive, tmp_path, "DISC-0001", "20000301", study_uid=gone.StudyInstanceUID)
    kept = stored(archive, tmp_path, "DISC-0001", "20010301")
    retention = service(archive, RetentionRule(years=10), grace_days=7)
    study = gone.StudyInstanceUID
    keys = _object_keys(archive, study)
    assert len(keys) == 2 and all(_exists(archive, k) for k in keys)

    retention.request_delete(study, "past retention, customer release 12", ADMIN)
    # Phase one only marks: the inspection is still there, and nothing is purgeable before the grace.
    assert archive.retrieve.resolve_uids([second.SOPInstanceUID])[0]
    assert retention.purge(dt.datetime.now(dt.UTC)).inspections == []
    (listed,) = [s for s in retention.report() if s.study_instance_uid == study]
    assert not listed.purgeable(dt.datetime.now(dt.UTC), retention.grace)
    assert listed.purgeable(dt.datetime.now(dt.UTC) + LATER, retention.grace)

    # A hold placed meanwhile stops the purge.
    retention.place_hold("DISC-0001", "audit 7", ADMIN)
    assert retention.purge(dt.datetime.now(dt.UTC) + LATER).inspections == []
    retention.release_hold("DISC-0001", ADMIN)

    result = retention.purge(dt.datetime.now(dt.UTC) + LATER, ADMIN)
    assert result.inspections == [study] and result.objects_deleted == 2 and result.objects_left == []
    assert not any(_exists(archive, k) for k in keys)
    with pytest.raises(NotFound):
        retention.state(study)
    assert retention.state(kept.StudyInstanceUID).delete_requested_at is None  # the other inspection stays
    from pacs.services.parts import PartService

    part = PartService(archive.engine).get("DISC-0001")
    assert (part.summary.inspections, part.summary.series, part.summary.instances) == (1, 1, 1)
    fsck = archive.fsck().run()
    assert fsck.ok, fsck

    deletes = archive.audit.entries(action="delete")
    assert [e.detail["phase"] for e in deletes] == ["requested", "purged"]
    assert deletes[1].detail["objects"] == 2 and deletes[1].detail["requested_by"] == "qa-admin"
    holds = [e.detail["hold"] for e in archive.audit.entries(part_id="DISC-0001") if "hold" in e.detail]
    assert holds == ["placed", "released"]
    assert archive.audit.verify().ok


def test_a_withdrawn_request_is_not_purged(archive: Archive, tmp_path: Path) -> None:
    study = stored(archive, tmp_path, "PIPE-0001", "20000301").StudyInstanceUID
    retention = service(archive, grace_days=0)
    retention.request_delete(study, "wrong part", ADMIN)
    retention.withdraw_delete(study, ADMIN)
    assert retention.purge(dt.datetime.now(dt.UTC) + LATER).inspections == []
    with pytest.raises(NotFound, match="no deletion"):
        retention.withdraw_delete(study, ADMIN)


def test_holds_and_deletion_over_http_by_role(web: RunningWeb, tmp_path: Path) -> None:
    study = stored(web.archive, tmp_path, "VANE-0001", "20000301").StudyInstanceUID
    with web.client("inspector") as inspector, web.client("auditor") as auditor, web.client("admin") as admin:
        assert inspector.post("/api/parts/VANE-0001/hold", json={"reason": "x"}).status_code == 403
        placed = auditor.post("/api/parts/VANE-0001/hold", json={"reason": "claim 9"})
        assert (
            placed.status_code == 201
            and placed.json()["active"]
            and placed.json()["placed_by"].startswith("test-auditor-")
        )
        assert [h["part_id"] for h in auditor.get("/api/holds").json()] == ["VANE-0001"]
        assert auditor.delete(f"/api/inspections/{study}", params={"reason": "r"}).status_code == 403
        refused = admin.delete(f"/api/inspections/{study}", params={"reason": "cleanup"})
        assert refused.status_code == 409 and "under legal hold" in refused.json()["detail"]
        assert auditor.delete("/api/parts/VANE-0001/hold").status_code == 200
        accepted = admin.delete(f"/api/inspections/{study}", params={"reason": "cleanup"})
        assert accepted.status_code == 202 and accepted.json()["delete_reason"] == "cleanup"
        assert admin.delete("/api/inspections/1.2.3.4", params={"reason": "x"}).status_code == 404


def test_pacs_delete_report_and_purge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pacs.archive import open_archive
    from pacs.cli import main
    from pacs.config import load_settings

    data = ["--data-dir", str(tmp_path / "archive")]
    settings = load_settings({"data_dir": tmp_path / "archive"})
    archive = open_archive(settings)
    try:
        old = stored(archive, tmp_path, "SHAFT-0001", "20000301").StudyInstanceUID
    finally:
        archive.close()
    assert main(["hold", "place", "SHAFT-0001", "--reason", "order 5", *data]) == 0
    assert main(["delete", old, "--reason", "obsolete", *data]) == 1
    assert "under legal hold" in capsys.readouterr().err
    assert main(["hold", "release", "SHAFT-0001", *data]) == 0
    assert main(["delete", old, *data]) == 2  # no reason
    capsys.readouterr()
    assert main(["delete", old, "--reason", "obsolete", *data]) == 0
    assert "requested" in capsys.readouterr().out
    assert main(["retention", "report", *data]) == 0
    out = capsys.readouterr().out
    assert old in out and "grace until" in out  # the default grace is 7 days
    assert main(["purge", "--dry-run", *data]) == 0
    assert "0 inspection(s) would be purged" in capsys.readouterr().err
    import os

    os.environ["PACS_PURGE_GRACE_DAYS"] = "0"
    try:
        assert main(["purge", *data]) == 0
    finally:
        del os.environ["PACS_PURGE_GRACE_DAYS"]
    assert "purged 1 inspection(s): 1 objects" in capsys.readouterr().out


def _object_keys(archive: Archive, study: str) -> list[str]:
    from sqlalchemy import select

    from pacs.index.schema import inspection, instance, instance_version, series

    with archive.engine.connect() as conn:
        return list(
            conn.execute(
                select(instance_version.c.object_key)
                .select_from(instance_version.join(instance).join(series).join(inspection))
                .where(inspection.c.study_instance_uid == study)
            ).scalars()
        )


def _exists(archive: Archive, key: str) -> bool:
    try:
        archive.store.stat(key)
    except Exception:
        return False
    return True
