"""The maintenance subcommands of ``pacs`` as an operator runs them: import, fsck, db, config.

Each test runs the installed command in a subprocess and reads what a person reads: the exit code,
the lines on stdout, the progress bar on stderr.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from pacs.index import migrate
from tests.support.factories import diconde_dx, write
from tests.support.serve import object_path, run_pacs

PLANTED_KEY = "abcd" + "0123456789abcdef0123456789ab"  # 32 hex digits, like the archive's keys


def index_rows(data: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True) as conn:
        return conn.execute(sql, params).fetchall()


def object_key(data: Path, uid: str) -> str:
    rows = index_rows(
        data,
        "SELECT v.object_key FROM instance i JOIN instance_version v ON v.id = i.current_version_id "
        "WHERE i.sop_instance_uid = ?",
        uid,
    )
    assert len(rows) == 1, rows
    return str(rows[0][0])


def summary_line(stdout: str, prefix: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stdout
    assert stdout.rstrip("\n").splitlines()[-1] == lines[0], "the summary is not the last line"
    return lines[0]


def plant_object(data: Path, key: str, age_seconds: float) -> Path:
    """An object file no index row names, as a crash between put and commit leaves one."""
    path = object_path(data / "objects", key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"DICM left behind by a crash" * 10)
    stamp = time.time() - age_seconds
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def imported(tmp_path: Path) -> tuple[Path, list[str]]:
    """An archive with three instances, imported with ``pacs import``; returns (data dir, UIDs)."""
    data = tmp_path / "archive"
    source = tmp_path / "incoming"
    source.mkdir()
    uids = []
    for i in range(3):
        ds = diconde_dx(part_id="FSCK-1", seed=i)
        write(ds, source / f"{i}.dcm")
        uids.append(str(ds.SOPInstanceUID))
    result = run_pacs("import", "--data-dir", data, source)
    assert result.returncode == 0, result.stdout + result.stderr
    return data, uids


# -- import -------------------------------------------------------------------------------------
def test_import_reports_every_file_and_is_idempotent(tmp_path: Path) -> None:
    data = tmp_path / "archive"
    parts = tmp_path / "parts"
    (parts / "blade").mkdir(parents=True)
    (parts / "disc").mkdir()
    blade = [diconde_dx(part_id="BLADE-7", seed=i) for i in range(3)]
    blades = [write(ds, parts / "blade" / f"{i}.dcm") for i, ds in enumerate(blade)]
    for i in range(2):
        write(diconde_dx(part_id="DISC-2", seed=10 + i), parts / "disc" / f"{i}.dcm")
    shutil.copy(blades[0], parts / "blade" / "copy-of-0.dcm")  # the same instance twice in one run

    first = run_pacs("import", "--data-dir", data, parts)
    assert first.returncode == 0, first.stdout + first.stderr
    assert summary_line(first.stdout, "import:") == (
        "import: 6 files: 5 stored, 1 already present, 0 new versions, 0 rejected, 0 skipped"
    )
    assert re.search(r"importing: 100%.*\b6/6\b", first.stderr), first.stderr
    assert index_rows(data, "SELECT part_id FROM component ORDER BY part_id") == [("BLADE-7",), ("DISC-2",)]

    misc = tmp_path / "misc"
    misc.mkdir()
    (misc / "notes.txt").write_text("inspection notes, not DICOM\n")
    (misc / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    again = run_pacs("import", "--data-dir", data, parts, misc)
    assert again.returncode == 1, again.stdout + again.stderr
    assert summary_line(again.stdout, "import:") == (
        "import: 8 files: 0 stored, 6 already present, 0 new versions, 1 rejected, 1 skipped"
    )
    rejected = [line for line in again.stdout.splitlines() if line.startswith("rejected:")]
    assert rejected == [
        f"rejected: {misc / 'notes.txt'}: not a DICOM Part 10 file (no 'DICM' prefix at byte 128)"
    ]
    skipped = [line for line in again.stdout.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped: {misc / 'DICOMDIR'}: "), again.stdout
    assert re.search(r"importing: 100%.*\b8/8\b", again.stderr), again.stderr

    # A different object under a known SOP Instance UID becomes a new version, the old one kept.
    uid = str(blade[0].SOPInstanceUID)
    changed = write(diconde_dx(part_id="BLADE-7", seed=99, sop_uid=uid), tmp_path / "changed.dcm")
    third = run_pacs("import", "--data-dir", data, changed)
    assert third.returncode == 0, third.stdout + third.stderr
    assert summary_line(third.stdout, "import:") == (
        "import: 1 files: 0 stored, 0 already present, 1 new versions, 0 rejected, 0 skipped"
    )
    assert index_rows(data, "SELECT count(*) FROM instance_version") == [(6,)]


def test_import_of_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = run_pacs("import", "--data-dir", tmp_path / "archive", tmp_path / "nowhere")
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr


# -- fsck ---------------------------------------------------------------------------------------
def test_fsck_finds_missing_and_corrupt_objects(imported: tuple[Path, list[str]]) -> None:
    data, uids = imported
    clean = run_pacs("fsck", "--data-dir", data)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert summary_line(clean.stdout, "fsck:") == (
        "fsck: 3 indexed objects checked, 0 missing, 0 corrupt, 0 unreadable, 0 unreferenced - OK"
    )

    gone, damaged = object_key(data, uids[0]), object_key(data, uids[1])
    object_path(data / "objects", gone).unlink()
    with open(object_path(data / "objects", damaged), "r+b") as f:  # same size, other bytes
        f.seek(2000)
        f.write(b"\xff" * 64)

    result = run_pacs("fsck", "--data-dir", data)
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    missing = [line for line in lines if line.startswith("missing:")]
    corrupt = [line for line in lines if line.startswith("corrupt:")]
    assert len(missing) == 1 and uids[0] in missing[0] and gone in missing[0], result.stdout
    assert len(corrupt) == 1 and uids[1] in corrupt[0] and damaged in corrupt[0], result.stdout
    assert uids[2] not in result.stdout
    assert summary_line(result.stdout, "fsck:") == (
        "fsck: 3 indexed objects checked, 1 missing, 1 corrupt, 0 unreadable, 0 unreferenced - PROBLEMS FOUND"
    )
    # --quick checks existence and size only: the same-size corruption goes unseen, the loss does not.
    quick = run_pacs("fsck", "--data-dir", data, "--quick")
    assert quick.returncode == 1
    assert "1 missing, 0 corrupt" in summary_line(quick.stdout, "fsck:")


def test_fsck_lists_an_old_unreferenced_object_and_repair_removes_it(
    imported: tuple[Path, list[str]],
) -> None:
    data, _ = imported
    planted = plant_object(data, PLANTED_KEY, age_seconds=2 * 3600)

    found = run_pacs("fsck", "--data-dir", data)
    assert found.returncode == 1, found.stdout
    unreferenced = [line for line in found.stdout.splitlines() if line.startswith("unreferenced:")]
    assert len(unreferenced) == 1, found.stdout
    assert "1 unreferenced - PROBLEMS FOUND" in summary_line(found.stdout, "fsck:")
    assert planted.exists(), "fsck without --repair must not remove anything"

    repaired = run_pacs("fsck", "--data-dir", data, "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "1 unreferenced (1 removed) - OK" in summary_line(repaired.stdout, "fsck:")
    assert not planted.exists()

    after = run_pacs("fsck", "--data-dir", data)
    assert after.returncode == 0, after.stdout
    assert "unreferenced:" not in after.stdout
    assert summary_line(after.stdout, "fsck:").endswith("0 unreferenced - OK")


def test_fsck_names_the_unreferenced_object_it_lists(imported: tuple[Path, list[str]]) -> None:
    """Without the key the operator cannot tell which file fsck means, nor inspect it before --repair."""
    data, _ = imported
    plant_object(data, PLANTED_KEY, age_seconds=2 * 3600)
    found = run_pacs("fsck", "--data-dir", data)
    unreferenced = [line for line in found.stdout.splitlines() if line.startswith("unreferenced:")]
    assert len(unreferenced) == 1, found.stdout
    assert PLANTED_KEY in unreferenced[0], unreferenced[0]


def test_fsck_leaves_young_objects_alone_within_the_grace_period(imported: tuple[Path, list[str]]) -> None:
    data, _ = imported
    planted = plant_object(data, PLANTED_KEY, age_seconds=120)  # a store that may still be in flight

    default = run_pacs("fsck", "--data-dir", data, "--repair")
    assert default.returncode == 0, default.stdout
    assert "unreferenced:" not in default.stdout
    assert planted.exists()

    longer = run_pacs("fsck", "--data-dir", data, "--grace-seconds", "600")
    assert longer.returncode == 0 and "unreferenced:" not in longer.stdout, longer.stdout

    shorter = run_pacs("fsck", "--data-dir", data, "--grace-seconds", "60")
    assert shorter.returncode == 1, shorter.stdout
    assert "1 unreferenced - PROBLEMS FOUND" in summary_line(shorter.stdout, "fsck:")
    assert planted.exists()


# -- db -----------------------------------------------------------------------------------------
def test_db_upgrade_then_current(tmp_path: Path) -> None:
    data = tmp_path / "archive"
    head = migrate.head_revision()
    assert head

    before = run_pacs("db", "current", "--data-dir", data)  # no archive there yet
    assert before.returncode == 1, before.stdout + before.stderr
    assert "no archive index at" in before.stderr and "pacs db upgrade" in before.stderr
    assert not data.exists(), "inspecting a missing archive created one"

    upgrade = run_pacs("db", "upgrade", "--data-dir", data)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert upgrade.stdout.startswith(f"index schema at revision {head} ")

    current = run_pacs("db", "current", "--data-dir", data)
    assert current.returncode == 0, current.stdout + current.stderr
    assert current.stdout.strip() == f"index schema at revision {head}; this version of pacs expects {head}"

    again = run_pacs("db", "upgrade", "--data-dir", data)  # nothing to do is not an error
    assert again.returncode == 0 and again.stdout.startswith(f"index schema at revision {head} ")


def test_db_current_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    result = run_pacs("db", "current", "--data-dir", tmp_path / "d", "--database-url", postgres_url)
    head = migrate.head_revision()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"index schema at revision {head}; this version of pacs expects {head}"


# -- config -------------------------------------------------------------------------------------
def test_config_prints_settings_with_secrets_redacted(tmp_path: Path) -> None:
    result = run_pacs(
        "config",
        "--data-dir",
        tmp_path / "archive",
        "--database-url",
        "postgresql://archivist:pg-secret-123@db.example:5432/pacs",
        "--ae-title",
        "CONFIGTEST",
        env={"PACS_OBJECT_STORE": "s3://AKIAEXAMPLE:s3-secret-456@minio.example:9000/ndt?secure=false"},
    )
    assert result.returncode == 0, result.stderr
    settings = dict(line.split(" = ", 1) for line in result.stdout.splitlines())
    assert "pg-secret-123" not in result.stdout and "s3-secret-456" not in result.stdout
    assert settings["database_url"].startswith("postgresql://archivist:")
    assert "db.example:5432/pacs" in settings["database_url"]
    assert settings["object_store"].startswith("s3://AKIAEXAMPLE:")
    assert "minio.example:9000/ndt" in settings["object_store"]
    assert settings["ae_title"] == "CONFIGTEST"
    assert settings["data_dir"] == str(tmp_path / "archive")
    assert settings["dicom_port"] == "11112"
