"""Consistency check of index and object store (``pacs fsck``).

* every indexed version's object exists, has the recorded size and (unless ``quick``) the recorded
  SHA-256 of its dataset and of its file meta — a mismatch is evidence that stored bytes changed;
* every stored object is referenced by a version; unreferenced ones are what a crash between
  "object put" and "index committed" leaves behind, and ``repair`` removes them. Objects younger
  than ``grace`` are skipped: on a running archive they may belong to a store still in flight;
* the store's staging copies (objects that were still arriving) older than ``grace``: what a
  crash during a receive leaves behind, possibly gigabytes; ``repair`` removes them too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pacs.index.repository import IndexRepository, VersionRow
from pacs.services.integrity import check_object
from storage import ObjectInfo, ObjectStore

Progress = Callable[[str, int], None]  # (phase, items just done)


@dataclass
class Problem:
    kind: str  # missing, size, corrupt, unreadable, unreferenced, staged
    key: str
    detail: str


@dataclass
class FsckReport:
    versions_checked: int = 0
    objects_listed: int = 0
    bytes_hashed: int = 0
    problems: list[Problem] = field(default_factory=list)
    removed: int = 0
    removed_staged: int = 0

    def count(self, kind: str) -> int:
        return sum(1 for p in self.problems if p.kind == kind)

    @property
    def ok(self) -> bool:
        """Nothing wrong, or only leftovers that were removed."""
        return all(p.kind in _LEFTOVERS and p.detail.endswith("(removed)") for p in self.problems)

    def summary(self) -> str:
        unreferenced = self.count("unreferenced")
        parts = [
            f"{self.versions_checked} indexed objects checked",
            f"{self.count('missing')} missing",
            f"{self.count('corrupt') + self.count('size')} corrupt",
            f"{self.count('unreadable')} unreadable",
            f"{unreferenced} unreferenced" + (f" ({self.removed} removed)" if self.removed else ""),
        ]
        staged = self.count("staged")
        if staged:  # rare: said only when there are some
            removed = f" ({self.removed_staged} removed)" if self.removed_staged else ""
            parts.append(f"{staged} stale staging copies{removed}")
        return "fsck: " + ", ".join(parts) + (" - OK" if self.ok else " - PROBLEMS FOUND")


class FsckService:
    def __init__(self, index: IndexRepository, store: ObjectStore) -> None:
        self.index = index
        self.store = store

    def run(
        self,
        *,
        quick: bool = False,
        repair: bool = False,
        grace: dt.timedelta = dt.timedelta(hours=1),
        progress: Progress | None = None,
        now: dt.datetime | None = None,
    ) -> FsckReport:
        report = FsckReport()
        step = progress or (lambda phase, n: None)
        for version in self.index.iter_versions():
            report.versions_checked += 1
            problem = self._check_version(version, quick, report)
            if problem is not None:
                problem.detail = f"{version.sop_instance_uid} (version {version.id}): {problem.detail}"
                report.problems.append(problem)
            step("verify", 1)

        cutoff = (now or dt.datetime.now(dt.UTC)) - grace
        for batch in _batches(self.store.iter_objects(), 500):
            report.objects_listed += len(batch)
            known = self.index.known_keys(obj.key for obj in batch)
            for obj in batch:
                if obj.key in known or obj.modified > cutoff:
                    continue
                stored = f"{obj.modified:%Y-%m-%d %H:%M:%S}Z"
                detail = f"object {obj.key} ({obj.size} bytes, stored {stored}) is in no index entry"
                if repair:
                    self.store.delete(obj.key)
                    report.removed += 1
                    detail += " (removed)"
                report.problems.append(Problem("unreferenced", obj.key, detail))
            step("scan", len(batch))

        older_than = dt.datetime.now(dt.UTC).timestamp() - cutoff.timestamp()
        stale = self.store.stale_staging(older_than)
        if stale and repair:
            report.removed_staged = self.store.sweep_staging(older_than)
        for copy in stale:
            written = f"{copy.modified:%Y-%m-%d %H:%M:%S}Z"
            detail = f"staging copy {copy.key} ({copy.size} bytes, written {written}) of an interrupted store"
            report.problems.append(Problem("staged", copy.key, detail + (" (removed)" if repair else "")))
        return report

    def _check_version(self, version: VersionRow, quick: bool, report: FsckReport) -> Problem | None:
        problem = check_object(self.store, version, quick=quick)
        if not quick and (problem is None or problem.kind == "corrupt"):
            report.bytes_hashed += version.size
        return None if problem is None else Problem(problem.kind, problem.key, problem.detail)


_LEFTOVERS = frozenset({"unreferenced", "staged"})  # what a crash leaves; removing them repairs it


def _batches(items: Iterator[ObjectInfo], size: int) -> Iterator[list[ObjectInfo]]:
    batch: list[ObjectInfo] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
