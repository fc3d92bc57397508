"""Storage commitment (PS3.4 J.3): may the sender delete its copy of these instances?

An instance is committed only if the index holds it under the requested SOP class *and* the bytes of
its current version are still what was received: the object exists, has the recorded size, and the
SHA-256 of its dataset and of its file meta match the index (the check ``pacs fsck`` makes). Anything
else is failed with a Failure Reason (0008,1197), defined values of PS3.3 C.14.1.1:

======  ==================================  ===============================================
reason  name                                when
======  ==================================  ===============================================
0x0112  No such object instance             not in the index, or its stored object is gone
0x0119  Class / Instance conflict           indexed under another SOP class
0x0122  Referenced SOP Class not supported  unknown instance of a class the archive never stores
0x0110  Processing failure                  bytes changed (size or SHA-256), object unreadable,
                                            index or object store unavailable
0x0131  Duplicate Transaction UID           the transaction is already being verified here
======  ==================================  ===============================================

Verification reads every referenced object from start to end, a megabyte at a time, so memory stays
bounded whatever the size of the objects; the time it takes grows with their total size, which is why
the DIMSE face answers the request first and reports later (PS3.4 J.3.2.1.3, J.3.3.1.2).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pacs.errors import PacsError
from pacs.index.repository import IndexRepository, VersionRow
from pacs.services.integrity import check_object
from storage import ObjectStore

log = logging.getLogger(__name__)

_SOP_CLASS_UID = "00080016"  # SOP Class UID in the DICOM JSON model of an instance version
_UID_CHARACTERS = frozenset("0123456789.")


class FailureReason(enum.IntEnum):
    """Failure Reason (0008,1197) values for storage commitment, PS3.3 C.14.1.1."""

    PROCESSING_FAILURE = 0x0110
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119
    REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    DUPLICATE_TRANSACTION_UID = 0x0131
    RESOURCE_LIMITATION = 0x0213  # defined by the standard; the archive does not use it


class InvalidRequest(PacsError):
    """The storage commitment request itself is malformed (a missing or invalid UID)."""


@dataclass(frozen=True)
class Reference:
    """One item of the Referenced SOP Sequence (0008,1199)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentRequest:
    """Transaction UID (0008,1195) and the instances to commit (PS3.4 Table J.3-1).

    Raises :class:`InvalidRequest` for a request that cannot be answered item by item: the report
    must echo the Transaction UID and name every referenced instance by both UIDs.
    """

    transaction_uid: str
    references: tuple[Reference, ...]

    def __post_init__(self) -> None:
        check_uid(self.transaction_uid, "(0008,1195) Transaction UID")
        if not self.references:
            raise InvalidRequest("(0008,1199) Referenced SOP Sequence has no items")
        for n, ref in enumerate(self.references, 1):
            check_uid(ref.sop_class_uid, f"(0008,1150) Referenced SOP Class UID, item {n},")
            check_uid(ref.sop_instance_uid, f"(0008,1155) Referenced SOP Instance UID, item {n},")


@dataclass(frozen=True)
class Failure:
    reference: Reference
    reason: FailureReason
    detail: str  # for the log and the operator; the report carries only the reason code


@dataclass
class CommitmentResult:
    """The outcome for every referenced instance, in request order (PS3.4 J.3.3.1.2: the complete
    set of referenced instances is in the report, either committed or failed)."""

    transaction_uid: str
    committed: list[Reference] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    @property
    def all_committed(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = (
            f"transaction {self.transaction_uid}: {len(self.committed)} committed, {len(self.failed)} failed"
        )
        reasons = sorted({f"0x{f.reason:04X}" for f in self.failed})
        return text + (f" ({', '.join(reasons)})" if reasons else "")


Progress = Callable[[Reference, Failure | None], None]


def check_uid(value: str, name: str) -> None:
    """A UID the archive can echo back and look up: 1 to 64 characters, digits and dots (PS3.5 9.1).

    Leading zeros in a component are tolerated: some devices write them, and the value is only
    compared, never interpreted. Messages start with the tag: a DIMSE Error Comment keeps 64 characters.
    """
    if not value:
        raise InvalidRequest(f"{name} missing")
    if len(value) > 64 or not set(value) <= _UID_CHARACTERS:
        raise InvalidRequest(f"{name} not a UID: {value[:70]!r}")


class CommitmentService:
    """Verifies storage commitment requests against the index and the object store.

    ``storage_sop_classes``: the SOP classes the archive accepts for storage; an unknown instance
    of a class outside it fails with 0x0122 rather than 0x0112 (``None``: every class is accepted).
    One service per process: it remembers which transactions are being verified right now.
    """

    def __init__(
        self,
        index: IndexRepository,
        store: ObjectStore,
        storage_sop_classes: Collection[str] | None = None,
    ) -> None:
        self.index = index
        self.store = store
        self._supported = frozenset(storage_sop_classes) if storage_sop_classes is not None else None
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()

    def verify(self, request: CommitmentRequest, progress: Progress | None = None) -> CommitmentResult:
        """Decide every referenced instance; never raises for a problem with one of them.

        ``progress`` is called after each instance is decided (for logs of long verifications).
        """
        result = CommitmentResult(request.transaction_uid)
        with self._transaction(request.transaction_uid) as fresh:
            decided: dict[Reference, Failure | None] = {}
            for ref in request.references:
                if not fresh:
                    failure: Failure | None = Failure(
                        ref,
                        FailureReason.DUPLICATE_TRANSACTION_UID,
                        f"transaction {request.transaction_uid} is already being verified",
                    )
                elif ref in decided:  # listed twice: reported twice, verified once
                    failure = decided[ref]
                else:
                    failure = decided[ref] = self.check(ref)
                if failure is None:
                    result.committed.append(ref)
                else:
                    result.failed.append(failure)
                if progress is not None:
                    progress(ref, failure)
        return result

    def check(self, ref: Reference) -> Failure | None:
        """``None`` if the archive commits to keeping ``ref``, else why not."""
        uid = ref.sop_instance_uid
        try:
            version = self.index.current_version(uid)
            if version is None:
                if self._supported is not None and ref.sop_class_uid not in self._supported:
                    return Failure(
                        ref,
                        FailureReason.REFERENCED_SOP_CLASS_NOT_SUPPORTED,
                        f"{uid}: not stored, and SOP class {ref.sop_class_uid} is not one the archive stores",
                    )
                return Failure(ref, FailureReason.NO_SUCH_OBJECT_INSTANCE, f"{uid}: not in the archive")
            stored_class = self._indexed_sop_class(version)
        except PacsError as exc:  # index unavailable: we cannot vouch for anything now
            return Failure(ref, FailureReason.PROCESSING_FAILURE, f"{uid}: {exc}")
        if stored_class != ref.sop_class_uid:
            return Failure(
                ref,
                FailureReason.CLASS_INSTANCE_CONFLICT,
                f"{uid}: stored as SOP class {stored_class or '(none)'}, request names {ref.sop_class_uid}",
            )
        return self._verify_object(ref, version)

    def _indexed_sop_class(self, version: VersionRow) -> str:
        metadata = self.index.version_metadata(version.id)
        element = (metadata or {}).get("dicom_json", {}).get(_SOP_CLASS_UID, {})
        values = element.get("Value") or [""]
        return str(values[0])

    def _verify_object(self, ref: Reference, version: VersionRow) -> Failure | None:
        """Read the stored object once, as a stream, and compare its digests (as fsck does)."""
        uid = ref.sop_instance_uid
        problem = check_object(self.store, version)
        if problem is None:
            return None
        if problem.kind == "missing":
            return Failure(
                ref, FailureReason.NO_SUCH_OBJECT_INSTANCE, f"{uid}: {problem.detail} from the store"
            )
        log.error("storage commitment refused for %s: %s (run `pacs fsck`)", uid, problem.detail)
        return Failure(ref, FailureReason.PROCESSING_FAILURE, f"{uid}: {problem.detail}")

    @contextmanager
    def _transaction(self, transaction_uid: str) -> Iterator[bool]:
        """Yields whether this transaction is new here (False: already being verified)."""
        with self._lock:
            fresh = transaction_uid not in self._in_flight
            if fresh:
                self._in_flight.add(transaction_uid)
        try:
            yield fresh
        finally:
            if fresh:
                with self._lock:
                    self._in_flight.discard(transaction_uid)
