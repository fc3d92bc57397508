"""Read stored instances back: the current version, or any earlier one kept as evidence; and resolve a
C-MOVE / C-GET retrieve to the current versions it sends."""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from pacs.dicom.retrieve_keys import RetrieveRequest
from pacs.errors import NotFound, ResourceUnavailable
from pacs.index.database import read_transaction
from pacs.index.repository import IndexRepository, VersionRow
from pacs.index.schema import component, inspection, instance, instance_version, series
from storage import ObjectNotFound, ObjectStore, StorageError

log = logging.getLogger(__name__)

_IN_CHUNK = 500  # UIDs per IN (...) list: well under SQLite's and PostgreSQL's bound-parameter limits
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class RetrieveItem:
    """One instance a retrieve sends: its SOP class (for the presentation context) and current version."""

    sop_class_uid: str
    version: VersionRow

    @property
    def sop_instance_uid(self) -> str:
        return self.version.sop_instance_uid

    @property
    def transfer_syntax_uid(self) -> str:
        return self.version.transfer_syntax_uid


class RetrieveService:
    def __init__(self, index: IndexRepository, store: ObjectStore, scratch_dir: Path | None = None) -> None:
        self.index = index
        self.store = store
        #: Where an object that is not a local file (S3) is copied while it is sent.
        self.scratch_dir = scratch_dir

    def versions(self, sop_instance_uid: str) -> list[VersionRow]:
        """Every version of the instance, oldest first; :class:`NotFound` if there is none."""
        rows = self.index.versions(sop_instance_uid)
        if not rows:
            raise NotFound(f"no instance {sop_instance_uid}")
        return rows

    def current(self, sop_instance_uid: str) -> VersionRow:
        row = self.index.current_version(sop_instance_uid)
        if row is None:
            raise NotFound(f"no instance {sop_instance_uid}")
        return row

    def open(self, version: VersionRow) -> BinaryIO:
        """The stored Part 10 bytes of ``version``, exactly as received."""
        try:
            return self.store.open(version.object_key)
        except ObjectNotFound:
            raise NotFound(
                f"object {version.object_key} of {version.sop_instance_uid} is missing from the store "
                "(run `pacs fsck`)"
            ) from None
        except StorageError as exc:
            raise ResourceUnavailable(f"cannot read {version.sop_instance_uid}: {exc}") from exc

    # -- retrieve (C-MOVE / C-GET) -------------------------------------------------------------
    def resolve(self, request: RetrieveRequest) -> list[RetrieveItem]:
        """The current versions of the instances ``request`` names, from the index alone (no object
        is opened), in a deterministic order: by study, series (number, then UID) and instance
        (number, then UID), so a retrieve repeated sends in the same order.

        Keys above the request's level restrict the match (PS3.4 C.4.2.2.1: a series UID under
        another study than the one named matches nothing).
        """
        conditions: list[Any] = []
        if request.patient_id is not None:
            conditions.append(component.c.part_id == request.patient_id)
        listed: tuple[Any, tuple[str, ...]] | None = None
        for column, uids in (
            (inspection.c.study_instance_uid, request.study_uids),
            (series.c.series_instance_uid, request.series_uids),
            (instance.c.sop_instance_uid, request.sop_instance_uids),
        ):
            if len(uids) == 1:
                conditions.append(column == uids[0])
            elif uids:
                listed = (column, uids)  # only the key at the level may be a list
        query = (
            select(
                instance.c.sop_class_uid,
                instance.c.instance_number,
                series.c.series_instance_uid,
                series.c.series_number,
                inspection.c.study_instance_uid,
                *_VERSION_COLUMNS,
            )
            .select_from(
                instance.join(instance_version, instance_version.c.id == instance.c.current_version_id)
                .join(series, series.c.id == instance.c.series_id)
                .join(inspection, inspection.c.id == series.c.inspection_id)
                .join(component, component.c.id == inspection.c.component_id)
            )
            .where(*conditions)
        )
        rows: dict[int, Any] = {}
        try:
            with read_transaction(self.index.engine) as conn:
                if listed is None:
                    rows.update((row.id, row) for row in conn.execute(query))
                else:
                    column, uids = listed
                    for start in range(0, len(uids), _IN_CHUNK):
                        chunk = list(uids[start : start + _IN_CHUNK])
                        rows.update((row.id, row) for row in conn.execute(query.where(column.in_(chunk))))
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc
        ordered = sorted(rows.values(), key=_retrieve_order)
        return [RetrieveItem(str(row.sop_class_uid or ""), _version(row)) for row in ordered]

    @contextmanager
    def local_file(self, version: VersionRow, scratch_dir: Path | None = None) -> Iterator[Path]:
        """A local file holding the stored Part 10 bytes of ``version``, for as long as the block runs.

        Read through :meth:`ObjectStore.open`: when the store hands back a plain file (the filesystem
        store), that file is used in place and nothing is copied; otherwise (S3) the object is
        streamed to a temporary file in ``scratch_dir`` (default: the service's, else the system's
        temporary folder) which is removed when the block ends. Use it read-only.
        """
        with self.open(version) as stream:
            raw = getattr(stream, "raw", stream)
            name = getattr(stream, "name", None)
            if isinstance(raw, io.FileIO) and isinstance(name, str) and os.path.isfile(name):
                yield Path(name)
                return
            folder = scratch_dir or self.scratch_dir
            if folder is not None:
                Path(folder).mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=folder, prefix="retrieve-", suffix=".dcm")
            try:
                try:
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(stream, out, _COPY_CHUNK)
                        copied = out.tell()
                except Exception as exc:  # storage, HTTP or local disk errors alike
                    raise ResourceUnavailable(
                        f"cannot copy {version.sop_instance_uid} to a local file: {exc}"
                    ) from exc
                if copied != version.size:
                    raise ResourceUnavailable(
                        f"object {version.object_key} of {version.sop_instance_uid} is {copied} bytes, "
                        f"the index says {version.size} (run `pacs fsck`)"
                    )
                yield Path(temporary)
            finally:
                try:
                    os.unlink(temporary)
                except OSError as exc:  # best effort: `pacs serve` clears the incoming folder at start
                    log.warning("could not remove temporary copy %s: %s", temporary, exc)


_VERSION_COLUMNS = (
    instance_version.c.id,
    instance_version.c.instance_id,
    instance.c.sop_instance_uid,
    instance_version.c.object_key,
    instance_version.c.dataset_sha256,
    instance_version.c.file_meta_sha256,
    instance_version.c.dataset_offset,
    instance_version.c.size,
    instance_version.c.transfer_syntax_uid,
    instance_version.c.received_at,
)


def _version(row: Any) -> VersionRow:
    return VersionRow(
        id=int(row.id),
        instance_id=int(row.instance_id),
        sop_instance_uid=row.sop_instance_uid,
        object_key=row.object_key,
        dataset_sha256=row.dataset_sha256,
        file_meta_sha256=row.file_meta_sha256,
        dataset_offset=int(row.dataset_offset),
        size=int(row.size),
        transfer_syntax_uid=row.transfer_syntax_uid,
        received_at=row.received_at,
        is_current=True,
    )


def _retrieve_order(row: Any) -> tuple[Any, ...]:
    """Sorted in Python, not SQL: NULLs order alike on SQLite and PostgreSQL, and UID lists
    queried in chunks still come out in one order."""
    return (
        row.study_instance_uid,
        row.series_number is None,
        row.series_number or 0,
        row.series_instance_uid,
        row.instance_number is None,
        row.instance_number or 0,
        row.sop_instance_uid,
    )
