"""Read stored instances back: the current version, or any earlier one kept as evidence; and resolve a
C-MOVE / C-GET retrieve to the current versions it sends."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from sqlalchemy import or_, select, true
from sqlalchemy.exc import SQLAlchemyError

from pacs import metrics
from pacs.dicom import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacs.dicom.retrieve_keys import RetrieveRequest
from pacs.errors import NotFound, PacsError, ResourceUnavailable
from pacs.index.database import read_transaction
from pacs.index.repository import VERSION_COLUMNS, IndexRepository, VersionRow, version_row
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

    @metrics.instrument_retrieve("instance")
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

    def metadata(self, version: VersionRow) -> dict[str, Any]:
        """The version's DICOM JSON (no bulk data) and pixel data layout, from the index alone:
        ``{"dicom_json": ..., "frames": [[[offset, length], ...], ...] | None, "pixel_data_offset": ...}``."""
        found = self.index.version_metadata(version.id)
        if found is None:
            raise NotFound(f"no version {version.id} of {version.sop_instance_uid}")
        return found

    def dicom_json_of(self, versions: Sequence[VersionRow]) -> dict[int, dict[str, Any]]:
        """The DICOM JSON of many versions in one read transaction, by version id (the index alone:
        a study's metadata costs a few queries, not one per instance). That column alone: the frame
        layout beside it (a byte range per frame, some 30 kB of JSON for 1000 frames) is not part of
        the metadata, and decoding it cost more than the rest of a metadata request."""
        ids = [v.id for v in versions]
        found: dict[int, dict[str, Any]] = {}
        query = select(instance_version.c.id, instance_version.c.dicom_json)
        try:
            with read_transaction(self.index.engine) as conn:
                for start in range(0, len(ids), _IN_CHUNK):
                    chunk = ids[start : start + _IN_CHUNK]
                    for row in conn.execute(query.where(instance_version.c.id.in_(chunk))):
                        found[int(row.id)] = row.dicom_json
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc
        return found

    @metrics.instrument_retrieve("frame")
    def frame(self, version: VersionRow, number: int, frames: list[Any] | None = None) -> bytes:
        """The stored bytes of frame ``number`` (1-based) by byte ranges of the object, never the whole
        object: native pixel data as stored, or an encapsulated frame's fragment values joined (its
        compressed bitstream). ``frames``: the layout from :meth:`metadata`, if already at hand."""
        layout = frames if frames is not None else self.metadata(version)["frames"]
        if not layout:
            raise NotFound(f"{version.sop_instance_uid} has no pixel data frames")
        if not 1 <= number <= len(layout):
            raise NotFound(f"{version.sop_instance_uid} has {len(layout)} frame(s), not frame {number}")
        parts = []
        try:
            for offset, length in layout[number - 1]:
                chunk = self.store.read_range(version.object_key, int(offset), int(length))
                if len(chunk) != int(length):
                    raise ResourceUnavailable(
                        f"object {version.object_key} of {version.sop_instance_uid} ends inside frame "
                        f"{number} (run `pacs fsck`)"
                    )
                parts.append(chunk)
        except ObjectNotFound:
            raise NotFound(
                f"object {version.object_key} of {version.sop_instance_uid} is missing from the store "
                "(run `pacs fsck`)"
            ) from None
        except StorageError as exc:
            raise ResourceUnavailable(f"cannot read {version.sop_instance_uid}: {exc}") from exc
        return b"".join(parts)

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
        query = _ITEMS.where(*conditions)
        if listed is None:
            rows = self._rows([query])
        else:
            column, uids = listed
            rows = self._rows(query.where(column.in_(chunk)) for chunk in _chunks(uids))
        return _items(rows)

    def resolve_uids(self, uids: Sequence[str]) -> tuple[list[RetrieveItem], list[str]]:
        """The current versions of every instance that ``uids`` name, each a SOP Instance, Series
        or Study Instance UID, in the order of :meth:`resolve`; and the UIDs that name nothing.
        Reads the index only."""
        wanted = list(dict.fromkeys(u.strip() for u in uids if u.strip()))
        query = _ITEMS
        rows = self._rows(
            query.where(
                or_(
                    instance.c.sop_instance_uid.in_(chunk),
                    series.c.series_instance_uid.in_(chunk),
                    inspection.c.study_instance_uid.in_(chunk),
                )
            )
            for chunk in _chunks(wanted)
        )
        named: set[str] = set()
        for row in rows:
            named.update((row.sop_instance_uid, row.series_instance_uid, row.study_instance_uid))
        return _items(rows), [u for u in wanted if u not in named]

    def _rows(self, queries: Iterable[Any]) -> list[Any]:
        """The rows of ``queries`` in one read transaction, each instance once."""
        rows: dict[int, Any] = {}
        try:
            with read_transaction(self.index.engine) as conn:
                for query in queries:
                    rows.update((row.id, row) for row in conn.execute(query))
        except SQLAlchemyError as exc:
            raise ResourceUnavailable(f"index unavailable: {getattr(exc, 'orig', None) or exc}") from exc
        return list(rows.values())

    @contextmanager
    def local_file(self, item: RetrieveItem, scratch_dir: Path | None = None) -> Iterator[Path]:
        """A local Part 10 file of ``item`` with a complete file meta, for as long as the block runs.

        pynetdicom sends from a file and needs the Media Storage SOP Class / Instance UIDs and the
        Transfer Syntax UID in its file meta. A store that hands out real files (the filesystem store)
        is read in place when the stored file meta has them; otherwise (S3, or an imported file with
        a sparse file meta) the stored dataset bytes are copied behind a fresh file meta into
        ``scratch_dir`` (default: the service's, else the system's temporary folder), checked
        against their SHA-256 on the way, and the copy is removed when the block ends. Read-only.
        """
        version = item.version
        with self.open(version) as stored:
            name = getattr(stored, "name", None)
            if isinstance(name, str) and os.path.isfile(name) and _meta_complete(Path(name)):
                yield Path(name)
                return
            folder = scratch_dir or self.scratch_dir
            if folder is not None:
                Path(folder).mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=folder, prefix="retrieve-", suffix=".dcm")
            path = Path(temporary)
            try:
                try:
                    with os.fdopen(fd, "wb") as out:
                        _copy_with_file_meta(item, stored, out)
                except PacsError:
                    raise
                except Exception as exc:  # storage, HTTP or local disk errors alike
                    raise ResourceUnavailable(
                        f"cannot copy {version.sop_instance_uid} to a local file: {exc}"
                    ) from exc
                yield path
            finally:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:  # best effort: `pacs serve` clears the incoming folder at start
                    log.warning("could not remove temporary copy %s: %s", path, exc)


def _copy_with_file_meta(item: RetrieveItem, stored: BinaryIO, out: BinaryIO) -> None:
    version = item.version
    out.write(b"\0" * 128 + b"DICM")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(item.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(item.sop_instance_uid)
    meta.TransferSyntaxUID = UID(item.transfer_syntax_uid)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    skip = version.dataset_offset
    while skip > 0:
        chunk = stored.read(min(skip, _COPY_CHUNK))
        if not chunk:
            raise ResourceUnavailable(
                f"object {version.object_key} of {version.sop_instance_uid} is shorter than its file meta "
                "(run `pacs fsck`)"
            )
        skip -= len(chunk)
    digest = hashlib.sha256()
    while chunk := stored.read(_COPY_CHUNK):
        digest.update(chunk)
        out.write(chunk)
    if digest.hexdigest() != version.dataset_sha256:
        raise ResourceUnavailable(
            f"object {version.object_key} of {version.sop_instance_uid} does not match its SHA-256 "
            "(run `pacs fsck`)"
        )


def _meta_complete(path: Path) -> bool:
    try:
        meta = read_file_meta_info(path)
    except Exception:
        return False
    return all(
        k in meta for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
    )


def _chunks(uids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(uids), _IN_CHUNK):
        yield list(uids[start : start + _IN_CHUNK])


def _items(rows: Iterable[Any]) -> list[RetrieveItem]:
    return [
        RetrieveItem(str(row.sop_class_uid or ""), version_row(row))
        for row in sorted(rows, key=_retrieve_order)
    ]


_VERSION_COLUMNS = (*VERSION_COLUMNS, true().label("is_current"))  # a retrieve sends current versions


#: Each instance's current version with what a retrieve sorts and sends by.
_ITEMS = select(
    instance.c.sop_class_uid,
    instance.c.instance_number,
    series.c.series_instance_uid,
    series.c.series_number,
    inspection.c.study_instance_uid,
    *_VERSION_COLUMNS,
).select_from(
    instance.join(instance_version, instance_version.c.id == instance.c.current_version_id)
    .join(series, series.c.id == instance.c.series_id)
    .join(inspection, inspection.c.id == series.c.inspection_id)
    .join(component, component.c.id == inspection.c.component_id)
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
