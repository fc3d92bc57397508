"""Store an instance: the write rule that protects data (docs/architecture.md, "Storing an instance").

1. The object's bytes are in a new, uncommitted store object (:class:`Incoming`, written as they
   arrive and hashed on the way) or in a local file (``pacs import``).
2. The object is checked and its header read up to the pixel data (:mod:`pacs.dicom.parse`).
3. The object is made durable in the object store under a new key, never reused.
4. One index transaction records component, inspection, series, instance and the version.
5. Only then does the caller answer Success. Any failure before: an exception, and the object
   from step 3 is removed (best effort). A crash leaves at worst an unreferenced object, which
   ``pacs fsck`` reports, never an index row without its object.

When a dependency fails (the object store unreachable, the index down or restarting, the disk
full), the store fails with :class:`ResourceUnavailable` and the same running service stores again
once the dependency is back. Removing the object of a failed store is where care is needed: an
index transaction whose connection was lost during COMMIT may have committed after all, so the
object is removed only once the index says no version refers to it. When the index cannot say, or
the store cannot delete, the object is held and removed by a later successful store
(:meth:`IngestService.held_objects`); only a process that stops before then leaves one for
``pacs fsck``.

An object whose dataset bytes equal a version already kept for its SOP Instance UID is a
duplicate: nothing new is stored (:mod:`pacs.dicom.digest` says why the dataset is the identity).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from pacs import metrics
from pacs.context import CallerContext
from pacs.dicom.digest import Digests, Part10Hasher, hash_part10_file
from pacs.dicom.json import to_dicom_json
from pacs.dicom.parse import ParsedObject, parse_part10
from pacs.diconde import column_values, person_name_key
from pacs.errors import InvalidObject, ObjectMismatch, ResourceUnavailable
from pacs.index.repository import IndexRepository, NewVersion, Outcome, Recorded
from pacs.services.integrity import check_object
from storage import ObjectStore, ObjectWriter, StorageError

log = logging.getLogger(__name__)

_REQUIRED_UIDS = (
    ("SOPClassUID", "(0008,0016)"),
    ("SOPInstanceUID", "(0008,0018)"),
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
)


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
    dataset_sha256: str
    size: int
    version_id: int


def new_object_key(now: float | None = None) -> str:
    """A new object key: 32 hex digits, random but for the first two, which count days.

    Stores fan objects out into folders by the key's first characters; with purely random keys a
    young archive creates (and fsyncs) a new folder for most objects. The day counter keeps a
    day's objects within 256 folders, reused every 256 days. 120 random bits keep keys unique.
    """
    day = int((time.time() if now is None else now) // 86400) % 256
    return f"{day:02x}{uuid.uuid4().hex[2:]}"


class HashingThread:
    """A thread hashing the chunks of received objects, in the order they were queued.

    One per ingest service, shared by every object being received. Queueing a chunk is one put on
    a C-level queue: an executor's ``submit`` (a future, a lock and a condition per call) cost a
    quarter of the receiving thread's time with the GIL at 16 chunks per 2 MB image.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Part10Hasher | None, object]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def put(self, hasher: Part10Hasher, chunk: bytes | bytearray | memoryview) -> None:
        self._queue.put((hasher, chunk))

    def wait(self) -> None:
        """Until every chunk queued before this call is hashed."""
        done = threading.Event()
        self._queue.put((None, done))
        done.wait()

    def close(self) -> None:
        self._queue.put((None, None))
        self._thread.join()

    def _run(self) -> None:
        while True:
            hasher, item = self._queue.get()
            if hasher is not None:
                try:
                    hasher.update(item)  # type: ignore[arg-type]
                except Exception:  # not expected; the object is then hashed from the file instead
                    log.exception("hashing a received chunk failed")
                    hasher.abandon()
            elif item is None:
                return
            else:
                item.set()  # type: ignore[attr-defined]


class Incoming:
    """A Part 10 object being received straight into the store, hashed as it arrives.

    Write the bytes as they come (preamble, file meta, dataset); then hand it to
    :meth:`IngestService.ingest_incoming`, which commits it or discards it. A store failure while
    writing does not raise: the bytes stop going anywhere and ingest reports the failure, so a
    network peer can be answered with a status instead of a dropped association.
    """

    def __init__(self, writer: ObjectWriter, hashing: HashingThread | None = None) -> None:
        self._writer = writer
        self._hasher = Part10Hasher()
        # With a hashing thread the hash runs beside the receiving thread (SHA-256 releases the
        # GIL), in the order the bytes came; digests() waits for the last chunk.
        self._hashing = hashing
        self._queued = False  # chunks queued since the last wait for them
        self.error: StorageError | None = None

    @property
    def key(self) -> str:
        return self._writer.key

    @property
    def path(self) -> Path:
        """A local file with the bytes written so far."""
        return self._writer.path

    @property
    def size(self) -> int:
        self._hashed()
        return self._hasher.size

    def write(self, data: bytes | bytearray | memoryview, *, handed_over: bool = False) -> int:
        """Write ``data`` and queue it for hashing. The queue needs bytes that do not change until
        they are hashed: a buffer the caller may reuse is copied first, unless ``handed_over`` says
        the caller keeps no hold on it (a fresh buffer it will not touch again)."""
        if self.error is None:
            try:
                self._writer.write(data)
            except StorageError as exc:
                self.error = exc
                self._writer.abort()
        if self._hashing is None:
            self._hasher.update(data)
        else:
            chunk = data if handed_over or isinstance(data, bytes) else bytes(data)
            self._hashing.put(self._hasher, chunk)
            self._queued = True
        return len(data)

    def finish(self) -> None:
        """Every byte is in: the store may start making the object durable (see ObjectWriter)."""
        if self.error is None:
            self._writer.finish()

    def digests(self) -> Digests | None:
        self._hashed()
        return self._hasher.digests()

    def _hashed(self) -> None:
        """Wait until every chunk queued so far is hashed."""
        if self._hashing is not None and self._queued:
            self._hashing.wait()
            self._queued = False

    def commit(self) -> str:
        self._writer.commit()
        return self._writer.key

    def abort(self) -> None:
        """Discard the object unless it was committed."""
        self._writer.abort()


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
        self._new_key = new_key
        self._clock = clock
        self._hashing: HashingThread | None = None
        self._background: ThreadPoolExecutor | None = None
        self._hashing_lock = threading.Lock()
        # Objects of failed stores not removed yet (key -> SOP Instance UID), see _discard_unrecorded.
        self._held: dict[str, str] = {}
        self._held_lock = threading.Lock()

    def receive(self) -> Incoming:
        """Start receiving a new object into the store. It is hashed on a thread of its own; the
        store gets another for work of its own (a filesystem store fsyncs there)."""
        with self._hashing_lock:
            if self._hashing is None:
                self._hashing = HashingThread()
                self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sync")
            hashing, background = self._hashing, self._background
        try:
            return Incoming(self.store.create(self._new_key(), background=background), hashing)
        except StorageError as exc:
            raise ResourceUnavailable(str(exc)) from exc

    def close(self) -> None:
        with self._hashing_lock:
            if self._hashing is not None:
                self._hashing.close()
                self._hashing = None
            if self._background is not None:
                self._background.shutdown()
                self._background = None

    @metrics.instrument_ingest
    def ingest_incoming(
        self, incoming: Incoming, ctx: CallerContext, expected: Expected | None = None
    ) -> IngestResult:
        """Check, commit and index a received object; see :meth:`ingest_file`."""
        name = expected.sop_instance_uid if expected else incoming.key
        try:
            if incoming.error is not None:
                raise ResourceUnavailable(f"{name}: {incoming.error}")
            incoming.finish()  # a filesystem store's fdatasync runs while the object is checked
            return self._ingest(
                incoming.path, incoming.digests(), incoming.commit, ctx, expected, name, check_first=False
            )
        finally:
            incoming.abort()  # nothing happens once committed

    @metrics.instrument_ingest
    def ingest_file(self, path: Path, ctx: CallerContext, expected: Expected | None = None) -> IngestResult:
        """Check, store (a copy of ``path``) and index one object; returns once it is durable and indexed.

        Raises :class:`InvalidObject`/:class:`ObjectMismatch` for data that cannot be kept and
        :class:`ResourceUnavailable` when storage or index fail; in every case nothing is kept.
        """

        def put() -> str:
            key = self._new_key()
            self.store.put_file(key, path)
            return key

        return self._ingest(path, None, put, ctx, expected, str(path), check_first=True)

    def _ingest(
        self,
        path: Path,
        digests: Digests | None,
        put: Callable[[], str],
        ctx: CallerContext,
        expected: Expected | None,
        name: str,
        *,
        check_first: bool,
    ) -> IngestResult:
        """``check_first``: look for an identical version before ``put`` (worth a query when put
        copies a file; an incoming object is already written, so the index transaction alone
        tells a duplicate, which is then discarded)."""
        started = time.perf_counter()
        try:
            with open(path, "rb") as f:
                parsed = parse_part10(f, name=name)
                if digests is None or digests.dataset_offset != parsed.dataset_offset:
                    f.seek(0)
                    digests = hash_part10_file(f, parsed.dataset_offset)
        except FileNotFoundError:
            raise InvalidObject(f"{name}: file not found") from None
        _check(parsed, expected, name)
        uid = parsed.sop_instance_uid
        if check_first:
            known = self.index.find_version(uid, digests.dataset_sha256)
            if known is not None and self._intact(known):  # an identical re-send: nothing to store
                log.info("%s: %s from %s", Outcome.DUPLICATE.value, uid, ctx.describe())
                return IngestResult(
                    Outcome.DUPLICATE, uid, _part_id(parsed), digests.dataset_sha256, digests.size, known
                )
        try:
            key = put()
        except (StorageError, OSError) as exc:
            raise ResourceUnavailable(f"{uid}: {exc}") from exc
        try:
            recorded = self.index.record(self._new_version(parsed, key, digests, ctx))
            if recorded.outcome is Outcome.DUPLICATE:  # already kept (a re-send, or a copy won a race)
                recorded = self._repair_or_discard(recorded, key, digests, uid)
        except BaseException as exc:
            if _maybe_committed(exc):
                self._discard_unrecorded(key, uid)
            else:  # the transaction was rolled back: no version can refer to the object
                self._discard(key, uid)
            raise
        if self._held:  # the store and the index work again: remove what failed stores left
            self._remove_held()
        log.info(
            "%s: %s (part %r, %s, %.1f MB) from %s in %.1f ms",
            recorded.outcome.value,
            uid,
            _part_id(parsed),
            parsed.dataset.get("Modality", "?"),
            digests.size / 1e6,
            ctx.describe(),
            (time.perf_counter() - started) * 1000,
        )
        return IngestResult(
            recorded.outcome, uid, _part_id(parsed), digests.dataset_sha256, digests.size, recorded.version_id
        )

    def _new_version(
        self, parsed: ParsedObject, key: str, digests: Digests, ctx: CallerContext
    ) -> NewVersion:
        ds = parsed.dataset
        component = column_values("component", ds)
        component["part_id"] = component["part_id"] or ""
        component["component_name_key"] = person_name_key(component["component_name"])
        pixel = parsed.pixel_data
        return NewVersion(
            sop_instance_uid=parsed.sop_instance_uid,
            component=component,
            inspection=column_values("inspection", ds),
            series=column_values("series", ds),
            instance=column_values("instance", ds),
            object_key=key,
            dataset_sha256=digests.dataset_sha256,
            file_meta_sha256=digests.file_meta_sha256,
            dataset_offset=digests.dataset_offset,
            size=digests.size,
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

    def _intact(self, version_id: int) -> bool:
        version = self.index.version(version_id)
        return version is not None and check_object(self.store, version) is None

    def _repair_or_discard(self, recorded: Recorded, key: str, digests: Digests, uid: str) -> Recorded:
        """An identical re-send keeps nothing new, unless the kept object was damaged or lost: then
        the re-sent copy takes its place (the way back from a failed storage commitment, PS3.4
        J.3.3.1.3). The damaged object is left in the store, unreferenced, for `pacs fsck` to show."""
        version = self.index.version(recorded.version_id)
        problem = None if version is None else check_object(self.store, version)
        if version is None or problem is None:
            self._discard(key, uid)
            return recorded
        if not self.index.replace_object(
            version.id,
            version.object_key,
            key,
            digests.file_meta_sha256,
            digests.dataset_offset,
            digests.size,
        ):
            self._discard(key, uid)
            return recorded
        log.warning("%s: version %d repaired from a re-sent copy (%s)", uid, version.id, problem.detail)
        return Recorded(Outcome.REPAIRED, recorded.instance_id, recorded.version_id)

    def _discard(self, key: str, uid: str) -> None:
        """Remove an object no version refers to; held for later when the store cannot delete it."""
        try:
            self.store.delete(key)
        except Exception as exc:
            log.warning("%s: cannot remove object %s of a failed store yet: %s", uid, key, exc)
            self._hold(key, uid)

    def _discard_unrecorded(self, key: str, uid: str) -> None:
        """Remove the object of a store whose index transaction failed, unless that transaction
        committed after all (its connection lost during COMMIT): then a version refers to the object
        and it stays. An index that cannot answer keeps the object held until it can."""
        try:
            recorded = key in self.index.known_keys([key])
        except Exception as exc:
            log.warning(
                "%s: object %s kept until the index can tell whether it is recorded: %s", uid, key, exc
            )
            self._hold(key, uid)
            return
        if recorded:
            log.warning("%s: the failed index transaction did commit; object %s is kept", uid, key)
            return
        self._discard(key, uid)

    def _hold(self, key: str, uid: str) -> None:
        with self._held_lock:
            if len(self._held) < _HELD_LIMIT:
                self._held[key] = uid
                return
        log.error("%s: too many objects of failed stores held; `pacs fsck --repair` will remove %s", uid, key)

    def held_objects(self) -> int:
        """Objects of failed stores waiting to be removed (the index or the store was unavailable)."""
        with self._held_lock:
            return len(self._held)

    def _remove_held(self) -> None:
        """Remove held objects that no version refers to; what still cannot be removed stays held."""
        with self._held_lock:
            batch = dict(list(self._held.items())[:_HELD_BATCH])
            for key in batch:
                del self._held[key]
        if not batch:
            return
        try:
            recorded = self.index.known_keys(batch)
        except Exception as exc:
            log.warning("cannot check %d held objects against the index yet: %s", len(batch), exc)
            with self._held_lock:
                self._held.update(batch)
            return
        removed = 0
        for key, uid in batch.items():
            if key in recorded:
                continue
            try:
                self.store.delete(key)
                removed += 1
            except Exception as exc:
                log.warning("%s: cannot remove object %s of a failed store yet: %s", uid, key, exc)
                self._hold(key, uid)
        log.info("removed %d objects left by stores that failed while a dependency was down", removed)


def _maybe_committed(exc: BaseException) -> bool:
    """Whether the index transaction that raised ``exc`` may have committed all the same: only when
    its connection was lost (the COMMIT may have reached the server, its answer did not come back)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_HELD_LIMIT = 100_000  # objects of failed stores held for removal; beyond that, fsck removes them
_HELD_BATCH = 50  # held objects removed after one successful store


def _part_id(parsed: ParsedObject) -> str:
    return str(parsed.dataset.get("PatientID", "") or "")


def _check(parsed: ParsedObject, expected: Expected | None, name: str) -> None:
    """What must hold for an object to be kept. Messages give the reason before the values: a
    DIMSE Error Comment keeps only 64 characters."""
    ds = parsed.dataset
    for keyword, tag in _REQUIRED_UIDS:
        value = str(ds.get(keyword, "") or "")
        if not value:
            raise ObjectMismatch(f"{name}: {keyword} {tag} is missing")
        if len(value) > 64:
            raise ObjectMismatch(f"{name}: {keyword} {tag} longer than 64 characters: {value!r}")
    meta_uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    if meta_uid and meta_uid != parsed.sop_instance_uid:
        raise ObjectMismatch(
            f"{name}: file meta and dataset SOP Instance UIDs differ: {meta_uid} in the file meta, "
            f"{parsed.sop_instance_uid} in the dataset"
        )
    if expected is None:
        return
    if parsed.sop_instance_uid != expected.sop_instance_uid:
        raise ObjectMismatch(
            f"{name}: SOP Instance UID differs from the C-STORE request's: dataset "
            f"{parsed.sop_instance_uid}, request {expected.sop_instance_uid}"
        )
    if parsed.sop_class_uid != expected.sop_class_uid:
        raise ObjectMismatch(
            f"{name}: SOP Class UID differs from the C-STORE request's: dataset "
            f"{parsed.sop_class_uid}, request {expected.sop_class_uid}"
        )
