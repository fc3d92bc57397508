"""Bulk import of DICOM files and folders through the same ingest path as C-STORE (``pacs import``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pacs.context import CallerContext
from pacs.errors import PacsError
from pacs.index.repository import Outcome
from pacs.services.ingest import IngestResult, IngestService

_MEDIA_DIRECTORY = "DICOMDIR"


@dataclass
class ImportSummary:
    stored: int = 0
    new_versions: int = 0
    duplicates: int = 0
    repaired: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    #: The SOP Instance UIDs now in the archive, by part ID (stored, new versions, duplicates, repaired).
    instances: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return (
            self.stored
            + self.new_versions
            + self.duplicates
            + self.repaired
            + len(self.skipped)
            + len(self.rejected)
        )

    def line(self) -> str:
        repaired = f", {self.repaired} repaired damaged copies" if self.repaired else ""
        return (
            f"import: {self.total} files: {self.stored} stored, {self.duplicates} already present, "
            f"{self.new_versions} new versions, {len(self.rejected)} rejected, {len(self.skipped)} skipped"
            f"{repaired}"
        )


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Files named directly, and every file under folders (sorted, hidden entries left out)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(Path(root, n) for n in sorted(names) if not n.startswith("."))
        else:
            files.append(path)
    return files


class ImportService:
    def __init__(self, ingest: IngestService) -> None:
        self.ingest = ingest

    def run(
        self,
        files: list[Path],
        ctx: CallerContext,
        *,
        jobs: int = 1,
        on_file: Callable[[Path, str], None] | None = None,
    ) -> ImportSummary:
        summary = ImportSummary()

        def one(path: Path) -> tuple[Path, str, str | None, IngestResult | None]:
            if path.name.upper() == _MEDIA_DIRECTORY:
                return path, "skipped", "DICOMDIR is a media index, not an instance", None
            if not path.is_file():
                return path, "rejected", "not a file", None
            try:
                result = self.ingest.ingest_file(path, ctx)
            except PacsError as exc:
                return path, "rejected", str(exc), None
            except OSError as exc:
                return path, "rejected", f"{path}: {exc.strerror or exc}", None
            return path, result.outcome.value, None, result

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for path, outcome, reason, result in pool.map(one, files):
                if result is not None:
                    summary.instances.setdefault(result.part_id, []).append(result.sop_instance_uid)
                if outcome == Outcome.STORED.value:
                    summary.stored += 1
                elif outcome == Outcome.NEW_VERSION.value:
                    summary.new_versions += 1
                elif outcome == Outcome.DUPLICATE.value:
                    summary.duplicates += 1
                elif outcome == Outcome.REPAIRED.value:
                    summary.repaired += 1
                elif outcome == "skipped":
                    summary.skipped.append((path, reason or ""))
                else:
                    summary.rejected.append((path, reason or ""))
                if on_file is not None:
                    on_file(path, outcome)
        return summary
