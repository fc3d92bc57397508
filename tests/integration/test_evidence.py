"""Evidence packages of a part (issue 6, point 3) on both backend pairs: what an auditor receives,
and what ``verify`` finds when anything in it was changed.

Packages are built by the service (``pacs.services.evidence``), fetched over HTTP from the archive's
HTTP face and written by ``pacs evidence export``; each is checked by the offline verifier, by
pydicom's FileSet (the DICOMDIR) and by dcmtk / dicom3tools where they apply.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import subprocess
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.services.evidence import EvidenceService, verify_package
from pacs.signing import EvidenceKey
from storage.filesystem import FilesystemStore
from tests.support.factories import dciodvfy_errors, diconde_dx, us_multiframe, write
from tests.support.serve import object_path, run_pacs
from tests.support.web import RunningWeb

PART = "BLADE-0001"
CTX = CallerContext(via="import", user="tester")


def decisions(part_id: str) -> list[dict[str, Any]]:
    return [{"part_id": part_id, "decision": "accept", "by": "auditor-1", "at": "2024-07-01T10:00:00Z"}]


def audit_entries(part_id: str) -> Iterable[dict[str, Any]]:
    for n in range(3):
        yield {"part_id": part_id, "action": "view", "n": n}


def service(archive: Archive) -> EvidenceService:
    return EvidenceService.for_archive(archive, decisions=decisions, audit_entries=audit_entries)


def build(archive: Archive, part_id: str = PART, *, superseded: bool = False, **plan: Any) -> bytes:
    evidence = service(archive)
    return b"".join(evidence.stream(evidence.plan(part_id, include_superseded=superseded, **plan)))


def public_key(archive: Archive) -> bytes:
    assert archive.settings.evidence_key is not None
    return EvidenceKey.load_or_create(archive.settings.evidence_key).public_pem()


def manifest_of(package: bytes) -> dict[str, Any]:
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        return json.loads(zf.read("manifest.json"))  # type: ignore[no-any-return]


def instances(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in manifest["files"] if f["kind"] == "instance"]


def rewritten(package: bytes, change: dict[str, bytes | None]) -> bytes:
    """The package with members replaced (``None``: removed), written anew (valid CRCs)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename in change:
                data = change[info.filename]
                if data is not None:
                    dst.writestr(info, data)
            else:
                dst.writestr(info, src.read(info))
    return out.getvalue()


@pytest.fixture
def part(archive: Archive, tmp_path: Path) -> dict[str, Any]:
    """The blade inspected twice (DX in March; UT and DX in June), one radiograph re-sent with other
    pixels (two versions), and another part that must not appear."""
    march, june = generate_uid(), generate_uid()
    resent = generate_uid()
    datasets = [
        diconde_dx(part_id=PART, study_uid=march, rows=32, columns=32, AccessionNumber="WO-17"),
        diconde_dx(part_id=PART, study_uid=march, rows=32, columns=32, seed=1, sop_uid=resent),
        us_multiframe(part_id=PART, component_name="Turbine^Blade", study_uid=june, StudyDate="20240620"),
        diconde_dx(part_id=PART, study_uid=june, rows=32, columns=32, seed=2, StudyDate="20240620"),
        diconde_dx(part_id=PART, study_uid=march, rows=32, columns=32, seed=3, sop_uid=resent),  # v2
        diconde_dx(part_id="WELD-3", rows=32, columns=32, seed=4),
    ]
    for n, ds in enumerate(datasets):
        archive.ingest.ingest_file(write(ds, tmp_path / f"{n}.dcm"), CTX)
    current = {str(ds.SOPInstanceUID) for ds in datasets[:4]}
    return {"current": current, "resent": resent, "march": march, "june": june}


# -- the package -------------------------------------------------------------------------------
def test_round_trip_export_then_verify(archive: Archive, part: dict[str, Any], tmp_path: Path) -> None:
    package = build(archive)
    path = tmp_path / "evidence.zip"
    path.write_bytes(package)

    report = verify_package(path, public_key(archive))
    assert report.ok, report.problems
    assert report.signature_ok and not report.warnings
    assert report.files_checked == 4 + 3  # instances, DICOMDIR, decisions.json, audit.jsonl

    manifest = manifest_of(package)
    assert manifest["part_id"] == PART and manifest["component_name"] == "Turbine^Blade"
    assert manifest["archive"]["ae_title"] == archive.settings.ae_title
    assert {f["sop_instance_uid"] for f in instances(manifest)} == part["current"]
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        for entry in instances(manifest):
            version = archive.retrieve.current(entry["sop_instance_uid"])
            assert entry["current"] and entry["verified_at_export"] is True
            assert entry["ingest"]["dataset_sha256"] == version.dataset_sha256
            assert entry["ingest"]["file_meta_sha256"] == version.file_meta_sha256
            assert entry["size"] == version.size and entry["received_from"]["via"] == "import"
            assert entry["received_from"]["user"] == "tester"
            with archive.retrieve.open(version) as stored:
                assert zf.read(entry["path"]) == stored.read(), "the packed file is not the stored object"
            assert zf.getinfo(entry["path"]).compress_type == zipfile.ZIP_STORED
        assert json.loads(zf.read("decisions.json")) == decisions(PART)
        lines = zf.read("audit.jsonl").decode().splitlines()
        assert [json.loads(line) for line in lines] == list(audit_entries(PART))
        assert zf.read("evidence-key.pem") == public_key(archive)
    methods = {(f["study_instance_uid"], f["modality"]) for f in instances(manifest)}
    assert methods == {(part["march"], "DX"), (part["june"], "US"), (part["june"], "DX")}
    # Deterministic: the same versions at the same time give the same bytes (signature included).
    at = dt.datetime.fromisoformat(manifest["generated_at"])
    assert build(archive, now=at) == package


def test_the_dicomdir_lists_the_current_instances(
    archive: Archive, part: dict[str, Any], tmp_path: Path
) -> None:
    package = build(archive, superseded=True)
    root = tmp_path / "package"
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        zf.extractall(root)
    fileset = FileSet(root / "DICOMDIR")
    assert {str(i.SOPInstanceUID) for i in fileset} == part["current"]
    assert fileset.find(PatientID=PART) and len(fileset.find(StudyInstanceUID=part["june"])) == 2
    for found in fileset:
        ds = found.load()  # the referenced file is the instance
        assert str(ds.SOPInstanceUID) == str(found.SOPInstanceUID)
    dump = subprocess.run(["/usr/bin/dcmdump", str(root / "DICOMDIR")], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout.count("DirectoryRecordType") >= 1 + 2 + 3 + 4  # patient, studies, series, images
    assert dciodvfy_errors(root / "DICOMDIR") == []


def test_superseded_versions_only_when_asked(archive: Archive, part: dict[str, Any]) -> None:
    current = manifest_of(build(archive))
    assert all(f["current"] for f in instances(current)) and len(instances(current)) == 4
    assert current["versions"] == "current"

    everything = manifest_of(build(archive, superseded=True))
    assert everything["versions"] == "all"
    older = [f for f in instances(everything) if not f["current"]]
    assert len(older) == 1
    (old,) = older
    assert old["sop_instance_uid"] == part["resent"] and old["version_number"] == 1
    assert old["path"].startswith("SUPERSEDED/") and not old["in_dicomdir"]
    newer = next(f for f in instances(everything) if f["sop_instance_uid"] == part["resent"] and f["current"])
    assert (
        newer["version_number"] == 2 and newer["ingest"]["dataset_sha256"] != old["ingest"]["dataset_sha256"]
    )
    assert old["path"] == f"SUPERSEDED/{newer['path']}/V0000001"


# -- what verify finds ----------------------------------------------------------------------------
def test_a_changed_byte_in_a_dicom_file_is_named(
    archive: Archive, part: dict[str, Any], tmp_path: Path
) -> None:
    package = build(archive)
    target = instances(manifest_of(package))[1]
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        data = bytearray(zf.read(target["path"]))
    data[-7] ^= 0x01  # one pixel bit
    path = tmp_path / "changed.zip"
    path.write_bytes(rewritten(package, {target["path"]: bytes(data)}))

    report = verify_package(path, public_key(archive))
    assert report.signature_ok and not report.ok
    assert any(
        p.startswith(f"changed: {target['path']} ({target['sop_instance_uid']})") for p in report.problems
    ), report.problems
    assert len(report.problems) == 1, report.problems

    # The same byte flipped in place in the ZIP (its CRC-32 no longer matches): named as well.
    raw = bytearray(package)
    at = raw.index(bytes(data[-64:-7])) + 57  # the flipped byte's place in the original package
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    report = verify_package(path, public_key(archive))
    assert [p for p in report.problems if target["path"] in p], report.problems


def test_a_changed_manifest_fails_the_signature(
    archive: Archive, part: dict[str, Any], tmp_path: Path
) -> None:
    package = build(archive)
    manifest = manifest_of(package)
    manifest["component_name"] = "Something^Else"
    text = json.dumps(manifest, sort_keys=True, ensure_ascii=False, indent=1).encode() + b"\n"
    path = tmp_path / "changed.zip"
    path.write_bytes(rewritten(package, {"manifest.json": text}))
    report = verify_package(path, public_key(archive))
    assert not report.signature_ok
    assert [p for p in report.problems if p.startswith("manifest.json: the signature does not verify")]


def test_a_package_signed_by_another_key_fails_with_the_archive_key(
    archive: Archive, part: dict[str, Any], tmp_path: Path
) -> None:
    """Re-signing a forged manifest with a key of one's own passes with the key inside the package
    (with a warning), not with the archive's key obtained independently."""
    package = build(archive)
    manifest = manifest_of(package)
    manifest["component_name"] = "Forged"
    text = json.dumps(manifest, sort_keys=True, ensure_ascii=False, indent=1).encode() + b"\n"
    forger = EvidenceKey.load_or_create(tmp_path / "forger.pem")
    forged = rewritten(
        package,
        {
            "manifest.json": text,
            "manifest.sig": base64.b64encode(forger.sign(text)) + b"\n",
            "evidence-key.pem": forger.public_pem(),
        },
    )
    path = tmp_path / "forged.zip"
    path.write_bytes(forged)
    alone = verify_package(path)
    assert alone.signature_ok and alone.warnings  # only the key inside: said so
    assert "evidence-key.pem" in alone.warnings[0]
    with_key = verify_package(path, public_key(archive))
    assert not with_key.ok and not with_key.signature_ok


def test_a_removed_and_an_added_file_are_reported_by_path(
    archive: Archive, part: dict[str, Any], tmp_path: Path
) -> None:
    package = build(archive)
    target = instances(manifest_of(package))[0]
    path = tmp_path / "removed.zip"
    path.write_bytes(rewritten(package, {target["path"]: None, "audit.jsonl": None}))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("PT000000/EXTRA", b"x")
    report = verify_package(path, public_key(archive))
    assert sorted(report.problems) == sorted(
        [
            f"missing: {target['path']} ({target['sop_instance_uid']})",
            "missing: audit.jsonl",
            "extra: PT000000/EXTRA: in the ZIP but not in the manifest",
        ]
    )


def test_a_cut_off_package_is_reported(archive: Archive, part: dict[str, Any], tmp_path: Path) -> None:
    package = build(archive)
    path = tmp_path / "cut.zip"
    path.write_bytes(package[: len(package) // 2])
    report = verify_package(path, public_key(archive))
    assert not report.ok and "not a complete ZIP file" in report.problems[0]


@pytest.mark.parametrize("backend", ["sqlite+file"])  # the stored object is changed on disk
def test_an_object_changed_in_the_store_is_packed_but_flagged(
    archive: Archive, part: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(archive.store, FilesystemStore)
    uid = sorted(part["current"])[0]
    version = archive.retrieve.current(uid)
    stored = object_path(Path(str(archive.settings.object_store).removeprefix("file://")), version.object_key)
    stored.chmod(0o644)
    data = bytearray(stored.read_bytes())
    data[-3] ^= 0xFF
    stored.write_bytes(bytes(data))

    package = build(archive)
    entry = next(f for f in instances(manifest_of(package)) if f["sop_instance_uid"] == uid)
    assert entry["verified_at_export"] is False
    assert entry["reason"] == "data set SHA-256 differs from the one recorded at ingest"
    assert [r for r in caplog.records if r.levelname == "ERROR" and uid in r.getMessage()]
    path = tmp_path / "flagged.zip"
    path.write_bytes(package)
    report = verify_package(path, public_key(archive))
    assert report.signature_ok
    assert sorted(p.split(":")[0] for p in report.problems) == [
        "changed since ingest",
        "not verified at export",
    ]


# -- over HTTP ------------------------------------------------------------------------------------
def test_http_streams_the_package_the_builder_makes(web: RunningWeb, part: dict[str, Any]) -> None:
    with web.client("auditor") as client:
        answer = client.get(f"/api/parts/{PART}/evidence", params={"versions": "all"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/zip"
        disposition = answer.headers["content-disposition"]
        assert disposition.startswith(f'attachment; filename="evidence-{PART}-') and disposition.endswith(
            '.zip"'
        )
        key = client.get("/api/system/evidence-key")
    assert key.status_code == 200 and key.text.startswith("-----BEGIN PUBLIC KEY-----")
    package = answer.content
    manifest = manifest_of(package)
    # The builder as the route wires it, at the same time: the same package. The audit trail may have
    # grown in between (the request itself is audited), so audit.jsonl and the manifest's line for
    # it, and hence the signature, are compared apart.
    evidence = EvidenceService.for_archive(web.archive)
    plan = evidence.plan(
        PART, include_superseded=True, now=dt.datetime.fromisoformat(manifest["generated_at"])
    )
    built = b"".join(evidence.stream(plan))
    with zipfile.ZipFile(io.BytesIO(package)) as http, zipfile.ZipFile(io.BytesIO(built)) as local:
        assert http.namelist() == local.namelist()
        for name in http.namelist():
            if name not in ("audit.jsonl", "manifest.json", "manifest.sig"):
                assert http.read(name) == local.read(name), name
        same_audit = http.read("audit.jsonl") == local.read("audit.jsonl")
    if same_audit:
        assert package == built
    ours = manifest_of(built)
    for m in (manifest, ours):
        m["files"] = [f for f in m["files"] if f["path"] != "audit.jsonl"]
    assert manifest == ours


def test_the_published_key_verifies_a_package_from_http(
    web: RunningWeb, part: dict[str, Any], tmp_path: Path
) -> None:
    with web.client("inspector") as client:  # any authenticated user may fetch the key
        key = client.get("/api/system/evidence-key")
    assert key.status_code == 200
    with web.client("auditor") as client:
        package = client.get(f"/api/parts/{PART}/evidence").content
    path = tmp_path / "http.zip"
    path.write_bytes(package)
    report = verify_package(path, key.content)
    assert report.ok and report.signature_ok and not report.warnings, report.problems
    other = EvidenceKey.load_or_create(tmp_path / "other.pem").public_pem()
    assert not verify_package(path, other).signature_ok


def test_http_errors_before_the_first_byte(web: RunningWeb, part: dict[str, Any]) -> None:
    with web.client("auditor") as client:
        unknown = client.get("/api/parts/NO-SUCH-PART/evidence")
        assert unknown.status_code == 404 and "NO-SUCH-PART" in unknown.json()["detail"]
        assert client.get(f"/api/parts/{PART}/evidence", params={"versions": "some"}).status_code == 422
    with web.client("inspector") as client:
        denied = client.get(f"/api/parts/{PART}/evidence")
        assert denied.status_code == 403
    with web.client(None) as anonymous:
        assert anonymous.get(f"/api/parts/{PART}/evidence").status_code == 401
        assert anonymous.get("/api/system/evidence-key").status_code == 401
    with web.client("admin") as client:  # the part itself is still served by /api/parts/{part_id}
        assert client.get(f"/api/parts/{PART}").json()["part_id"] == PART


# -- the command ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite+file"])
def test_pacs_evidence_export_and_verify(archive: Archive, part: dict[str, Any], tmp_path: Path) -> None:
    data = ["--data-dir", str(archive.settings.data_dir)]
    out = tmp_path / "blade.zip"
    exported = run_pacs("evidence", "export", PART, out, "--all-versions", *data)
    assert exported.returncode == 0, exported.stderr
    assert f"evidence of part '{PART}': 4 current and 1 superseded versions" in exported.stdout
    assert not list(tmp_path.glob(".*.partial"))
    again = run_pacs("evidence", "export", PART, out, *data)
    assert again.returncode == 2 and "exists" in again.stderr

    key = tmp_path / "key.pem"
    key.write_bytes(public_key(archive))
    checked = run_pacs("evidence", "verify", out, "--key", key, *data)
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.strip().endswith(": OK") and "warning" not in checked.stdout
    alone = run_pacs("evidence", "verify", out, *data)
    assert alone.returncode == 0 and alone.stdout.startswith("warning: the signature was checked only")

    package = out.read_bytes()
    target = instances(manifest_of(package))[2]
    with zipfile.ZipFile(out) as zf:
        content = bytearray(zf.read(target["path"]))
    content[200] ^= 0x40
    out.write_bytes(rewritten(package, {target["path"]: bytes(content)}))
    changed = run_pacs("evidence", "verify", out, "--key", key, *data)
    assert changed.returncode == 1
    assert changed.stdout.splitlines()[0].startswith(
        f"changed: {target['path']} ({target['sop_instance_uid']})"
    )

    unknown = run_pacs("evidence", "export", "NO-SUCH-PART", tmp_path / "x.zip", *data)
    assert unknown.returncode == 1 and "NO-SUCH-PART" in unknown.stderr
    assert not (tmp_path / "x.zip").exists()


# -- a 2 GB part -------------------------------------------------------------------------------------
_MEASURE = """
import json, os, sys, time
from pathlib import Path
from pacs.archive import open_archive
from pacs.config import load_settings
from pacs.services.evidence import EvidenceService, verify_package
from tests.support.serve import proc_status_kib

archive = open_archive(load_settings({"data_dir": Path(sys.argv[1])}), upgrade_schema=False)
evidence = EvidenceService.for_archive(archive)
plan = evidence.plan(sys.argv[2])
pid = os.getpid()
rss_before = proc_status_kib(pid, "VmRSS")
t0 = time.monotonic()
with open(sys.argv[3], "wb") as out:
    evidence.write(plan, out)
exported_in = time.monotonic() - t0
hwm_export = proc_status_kib(pid, "VmHWM")
archive.close()
t0 = time.monotonic()
report = verify_package(Path(sys.argv[3]))
verified_in = time.monotonic() - t0
hwm_verify = proc_status_kib(pid, "VmHWM")
print(json.dumps({"rss_before": rss_before, "hwm_export": hwm_export, "hwm_verify": hwm_verify,
                  "exported_in": exported_in, "verified_in": verified_in, "problems": report.problems}))
"""


def test_a_2gb_part_is_exported_and_verified_in_bounded_memory(tmp_path: Path) -> None:
    """The builder and the verifier on a 2 GiB instance in a process of their own: peak resident
    memory (VmHWM) against resident memory once the plan is made, as tests/integration/test_memory.py
    measures the server."""
    import shutil
    import sys

    from pacs.archive import open_archive
    from pacs.config import load_settings
    from tests.support.factories import large_multiframe_file

    size, limit_mb = 2 * 1024**3, 300
    free = shutil.disk_usage(tmp_path).free
    assert free > 3.2 * size, (
        f"{tmp_path} has {free / 1e9:.1f} GB free; this test needs {3.2 * size / 1e9:.1f} GB"
    )
    data, sent, package = tmp_path / "archive", tmp_path / "big.dcm", tmp_path / "big.zip"
    try:
        large_multiframe_file(sent, size, part_id="BIG-EVIDENCE")
        archive = open_archive(load_settings({"data_dir": data}))
        try:
            archive.ingest.ingest_file(sent, CTX)
        finally:
            archive.close()
        sent.unlink()
        measured = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(data), "BIG-EVIDENCE", str(package)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=Path(__file__).parents[2],
        )
        assert measured.returncode == 0, measured.stderr
        figures = json.loads(measured.stdout.splitlines()[-1])
        export_mb = (figures["hwm_export"] - figures["rss_before"]) / 1024
        verify_mb = (figures["hwm_verify"] - figures["rss_before"]) / 1024
        print(
            f"\n{package.stat().st_size / 1e9:.2f} GB package: exported in {figures['exported_in']:.1f} s, "
            f"verified in {figures['verified_in']:.1f} s; RSS before {figures['rss_before'] / 1024:.0f} MB, "
            f"growth exporting {export_mb:.0f} MB, verifying {verify_mb:.0f} MB (limit {limit_mb} MB)"
        )
        assert figures["problems"] == [], figures["problems"]
        assert export_mb < limit_mb and verify_mb < limit_mb, figures
        assert package.stat().st_size > size
    finally:
        shutil.rmtree(data, ignore_errors=True)
        sent.unlink(missing_ok=True)
        package.unlink(missing_ok=True)
