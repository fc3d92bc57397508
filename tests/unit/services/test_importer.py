"""ImportService on both backend pairs: ``pacs import`` of a folder as it comes off a device or a disc.

A folder holds instances of several methods, media files that are not instances (DICOMDIR), stray
non-DICOM files and copies of the same instance. Every file must be accounted for in the summary, a
refusal must say which file and why, and one bad file must not stop the others.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.services.importer import collect_files
from tests.support.factories import diconde_dx, enhanced_ct, part10_bytes, us_multiframe, write

CTX = CallerContext(via="import", user="tester")


@pytest.fixture
def device_folder(tmp_path: Path) -> Path:
    """DX, CT and US instances in subfolders, a DICOMDIR, a text file, a copy and a hidden file."""
    root = tmp_path / "disc"
    (root / "DX").mkdir(parents=True)
    (root / "CT").mkdir()
    (root / "US").mkdir()
    study = generate_uid()
    write(diconde_dx(part_id="BRACKET-1", study_uid=study, rows=64, columns=64), root / "DX" / "IM0001")
    write(
        diconde_dx(part_id="BRACKET-1", study_uid=study, rows=64, columns=64, seed=5), root / "DX" / "IM0002"
    )
    write(enhanced_ct(part_id="BRACKET-1", frames=4, rows=32, columns=32), root / "CT" / "VOL0001")
    write(us_multiframe(part_id="WELD-3", frames=3, rows=32, columns=40), root / "US" / "SCAN0001")
    shutil.copy(root / "DX" / "IM0001", root / "DX" / "IM0001_COPY")
    (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (root / "README.TXT").write_text("Inspection disc of bracket 1, burnt by the DR station.\n")
    (root / ".hidden").write_bytes(b"editor swap file")
    return root


def test_collect_files_walks_folders_sorted_without_hidden_entries(
    device_folder: Path, tmp_path: Path
) -> None:
    extra = tmp_path / "single.dcm"
    extra.write_bytes(b"x")
    files = collect_files([device_folder, extra])
    relative = [
        str(p.relative_to(device_folder)) if p.is_relative_to(device_folder) else p.name for p in files
    ]
    assert relative == [
        "DICOMDIR",
        "README.TXT",
        "CT/VOL0001",
        "DX/IM0001",
        "DX/IM0001_COPY",
        "DX/IM0002",
        "US/SCAN0001",
        "single.dcm",
    ]


@pytest.mark.parametrize("jobs", [1, 4])
def test_import_of_a_device_folder_counts_every_file(
    archive: Archive, device_folder: Path, jobs: int
) -> None:
    seen: list[tuple[Path, str]] = []
    files = collect_files([device_folder])

    summary = archive.importer().run(files, CTX, jobs=jobs, on_file=lambda p, o: seen.append((p, o)))

    assert (summary.stored, summary.duplicates, summary.new_versions) == (4, 1, 0)
    assert summary.total == len(files) == 7
    assert [(p.name, reason) for p, reason in summary.skipped] == [
        ("DICOMDIR", "DICOMDIR is a media index, not an instance")
    ]
    [(rejected, reason)] = summary.rejected
    assert rejected == device_folder / "README.TXT"
    assert str(rejected) in reason and "DICM" in reason
    assert sorted(p.name for p, _ in seen) == sorted(p.name for p in files)
    assert summary.line() == (
        "import: 7 files: 4 stored, 1 already present, 0 new versions, 1 rejected, 1 skipped"
    )

    counts = archive.index.counts()
    assert counts == {"components": 2, "inspections": 3, "series": 4, "instances": 4, "versions": 4}
    # The copy left no second object behind, even when it raced its original (jobs > 1).
    assert len(list(archive.store.iter_objects())) == 4


def test_a_second_import_finds_everything_present(archive: Archive, device_folder: Path) -> None:
    files = collect_files([device_folder])
    archive.importer().run(files, CTX)
    again = archive.importer().run(files, CTX, jobs=3)
    assert (again.stored, again.duplicates, len(again.rejected), len(again.skipped)) == (0, 5, 1, 1)
    assert archive.index.counts()["versions"] == 4


def test_a_changed_instance_is_a_new_version(archive: Archive, tmp_path: Path) -> None:
    uid = generate_uid()
    first = write(diconde_dx(sop_uid=uid, rows=32, columns=32, seed=1), tmp_path / "IM1")
    changed = write(diconde_dx(sop_uid=uid, rows=32, columns=32, seed=2), tmp_path / "IM1_retake")

    assert archive.importer().run([first], CTX).stored == 1
    summary = archive.importer().run([changed], CTX)

    assert (summary.stored, summary.new_versions, summary.duplicates) == (0, 1, 0)
    assert len(archive.retrieve.versions(uid)) == 2


def test_missing_and_damaged_files_are_rejected_by_name(archive: Archive, tmp_path: Path) -> None:
    good = write(diconde_dx(rows=32, columns=32), tmp_path / "good.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-300])
    absent = tmp_path / "absent.dcm"
    folder = tmp_path / "a-folder"
    folder.mkdir()

    summary = archive.importer().run([truncated, absent, good, folder], CTX)

    assert summary.stored == 1
    reasons = dict(summary.rejected)
    assert set(reasons) == {truncated, absent, folder}
    assert str(truncated) in reasons[truncated] and "truncated" in reasons[truncated]
    assert reasons[absent] == reasons[folder] == "not a file"


def test_a_file_cut_inside_its_file_meta_is_rejected_without_stopping_the_import(
    archive: Archive, tmp_path: Path
) -> None:
    """A damaged file is one rejection in the summary; the files after it are still imported."""
    data = part10_bytes(diconde_dx(rows=32, columns=32))
    damaged = tmp_path / "damaged.dcm"
    damaged.write_bytes(data[:154])  # inside the length of (0002,0001) File Meta Information Version
    good = write(diconde_dx(rows=32, columns=32), tmp_path / "good.dcm")

    summary = archive.importer().run([damaged, good], CTX)

    assert summary.stored == 1
    assert [p for p, _ in summary.rejected] == [damaged]
