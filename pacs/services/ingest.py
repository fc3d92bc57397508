"""Store an instance: the write rule that protects data (docs/architecture.md, "Storing an instance").

1. The object is in a local file, its SHA-256 known (hashed while it was received, or here).
2. The file is checked and its header read up to the pixel data (:mod:`pacs.dicom.parse`).
3. The object is put in the object store under a new key, never reused; durable when put returns.
4. One index transaction records component, inspection, series, instance and the version.
5. Only then does the caller answer Success. Any failure before: an exception, and the object
   from step 3 is removed (best effort). A crash leaves at worst an unreferenced object, which
   ``pacs fsck`` reports, never an index row without its object.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pacs.context import CallerContext
from pacs.dicom.json import to_dicom_json
from pacs.dicom.parse import ParsedObject, parse_part10
from pacs.diconde import column_values
from pacs.errors import InvalidObject, ObjectMismatch, ResourceUnavailable
from pacs.index.repository import IndexRepository, NewVersion, Outcome
from storage import ObjectStore, ObjectWriter, StorageError

log = logging.getLogger(__name__)

_REQUIRED_UIDS = (
    ("SOPClassUID", "(0008,0016)"),
    ("SOPInstanceUID", "(0008,0018)"),
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
)


@dataclass(frozen=True)
class Received:
    """An object that arrived in a local file.

    Either a file to copy into the store (``pacs import``), or, with ``writer``, an object already
    written into the store but not yet committed (C-STORE, see ``dicom_nodes.spool``); ``path`` is
    then the writer's local file. ``sha256``/``size`` are given when computed while receiving.
    """

    path: Path
    sha256: str | None = None
    size: int | None = None
    writer: ObjectWriter | None = None


@dataclass(frozen=True)
class Expected:
    """What the transport announced for the object (the C-STORE command and its context)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    sop_instance_uid: str
    part_id: str
    sha256: str
    size: int
    version_id: int


def new_object_key() -> str:
    return uuid.uuid4().hex


class IngestService:
    def __init__(
        self,
        index: IndexRepository,
        store: ObjectStore,
        *,
        new_key: Callable[[], str] = new_object_key,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.index = index
        self.store = store
        self.new_key = new_key
        self._clock = clock

    def ingest(
        self, received: Received, ctx: CallerContext, expected: Expected | None = None
    ) -> IngestResult:
        """Check, store and index one object; returns only once it is durable and indexed.

        Raises :class:`InvalidObject`/:class:`ObjectMismatch` for data that cannot be kept and
        :class:`ResourceUnavailable` when storage or index fail; in every case nothing is kept.
        """
        started = time.perf_counter()
        name = expected.sop_instance_uid if expected else str(received.path)
        writer = received.writer
        try:
            parsed, sha256, size = self._examine(received, name)
            _check(parsed, expected, name)
            uid = parsed.sop_instance_uid
            known = self.index.find_version(uid, sha256)
            if known is not None:  # an identical re-send: nothing to store
                if writer is not None:
                    writer.abort()
                log.info("%s: %s from %s", Outcome.DUPLICATE.value, uid, ctx.describe())
                return IngestResult(Outcome.DUPLICATE, uid, _part_id(parsed), sha256, size, known)
            key = self._put(received, uid)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        try:
            recorded = self.index.record(self._new_version(parsed, key, sha256, size, ctx))
        except BaseException:
            self._discard(key, uid)
            raise
        if recorded.outcome is Outcome.DUPLICATE:  # an identical copy won a race with us
            self._discard(key, uid)
        log.info(
            "%s: %s (part %r, %s, %.1f MB) from %s in %.1f ms",
            recorded.outcome.value,
            uid,
            _part_id(parsed),
            parsed.dataset.get("Modality", "?"),
            size / 1e6,
            ctx.describe(),
            (time.perf_counter() - started) * 1000,
        )
        return IngestResult(recorded.outcome, uid, _part_id(parsed), sha256, size, recorded.version_id)

    def _examine(self, received: Received, name: str) -> tuple[ParsedObject, str, int]:
        try:
            with open(received.path, "rb") as f:
                parsed = parse_part10(f, name=name)
                if received.sha256 is not None and received.size is not None:
                    return parsed, received.sha256, received.size
                f.seek(0)
                return parsed, hashlib.file_digest(f, "sha256").hexdigest(), parsed.size
        except FileNotFoundError:
            raise InvalidObject(f"{name}: file not found") from None

    def _put(self, received: Received, uid: str) -> str:
        """Make the object durable in the store; returns its key."""
        try:
            if received.writer is not None:
                received.writer.commit()
                return received.writer.key
            key = self.new_key()
            self.store.put_file(key, received.path)
            return key
        except (StorageError, OSError) as exc:
            raise ResourceUnavailable(f"{uid}: cannot store object: {exc}") from exc

    def _new_version(
        self, parsed: ParsedObject, key: str, sha256: str, size: int, ctx: CallerContext
    ) -> NewVersion:
        ds = parsed.dataset
        component = column_values("component", ds)
        component["part_id"] = component["part_id"] or ""
        pixel = parsed.pixel_data
        return NewVersion(
            sop_instance_uid=parsed.sop_instance_uid,
            component=component,
            inspection=column_values("inspection", ds),
            series=column_values("series", ds),
            instance=column_values("instance", ds),
            object_key=key,
            sha256=sha256,
            size=size,
            transfer_syntax_uid=parsed.transfer_syntax,
            pixel_data_offset=pixel.value_offset if pixel else None,
            frames=pixel.frames if pixel else None,
            dicom_json=to_dicom_json(ds, pixel),
            received_at=self._clock(),
            received_via=ctx.via,
            source_ae=ctx.ae_title,
            source_address=ctx.address,
            received_by=ctx.user,
        )

    def _discard(self, key: str, uid: str) -> None:
        try:
            self.store.delete(key)
        except Exception as exc:  # best effort: fsck reports what is left
            log.warning("%s: could not remove object %s after a failed store: %s", uid, key, exc)


def _part_id(parsed: ParsedObject) -> str:
    return str(parsed.dataset.get("PatientID", "") or "")


def _check(parsed: ParsedObject, expected: Expected | None, name: str) -> None:
    ds = parsed.dataset
    for keyword, tag in _REQUIRED_UIDS:
        value = str(ds.get(keyword, "") or "")
        if not value:
            raise ObjectMismatch(f"{name}: {keyword} {tag} is missing")
        if len(value) > 64:
            raise ObjectMismatch(f"{name}: {keyword} {tag} {value!r} is longer than 64 characters")
    meta_uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    if meta_uid and meta_uid != parsed.sop_instance_uid:
        raise ObjectMismatch(
            f"{name}: file meta SOP Instance UID {meta_uid} differs from the dataset's "
            f"{parsed.sop_instance_uid}"
        )
    if expected is None:
        return
    if parsed.sop_instance_uid != expected.sop_instance_uid:
        raise ObjectMismatch(
            f"{name}: dataset SOP Instance UID {parsed.sop_instance_uid} differs from the request's "
            f"{expected.sop_instance_uid}"
        )
    if parsed.sop_class_uid != expected.sop_class_uid:
        raise ObjectMismatch(
            f"{name}: dataset SOP Class UID {parsed.sop_class_uid} differs from the request's "
            f"{expected.sop_class_uid}"
        )
