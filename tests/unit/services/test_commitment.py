"""CommitmentService on both backend pairs: what may the archive commit to keeping?

Committed means: in the index under the requested SOP class, and the current version's stored bytes
are still the ones received (size and both SHA-256). Everything else fails with the Failure Reason
of PS3.3 C.14.1.1 that says why; one bad instance never hides the verdict on the others.
"""

from __future__ import annotations

import io
import threading
import tracemalloc
from pathlib import Path

import pytest
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.services.commitment import (
    CommitmentRequest,
    CommitmentResult,
    CommitmentService,
    Failure,
    FailureReason,
    InvalidRequest,
    Reference,
)
from storage.filesystem import FilesystemStore
from storage.s3 import S3Store
from tests.support.factories import diconde_dx, large_multiframe_file, write

CTX = CallerContext(via="import", user="tester")
DX = str(DigitalXRayImageStorageForPresentation)


@pytest.fixture
def service(archive: Archive) -> CommitmentService:
    return CommitmentService(archive.index, archive.store, storage_sop_classes={DX, str(CTImageStorage)})


@pytest.fixture
def stored(archive: Archive, tmp_path: Path) -> list[Reference]:
    """Three ingested radiographs."""
    refs = []
    for i in range(3):
        path = write(diconde_dx(part_id=f"PART-{i}", rows=32, columns=32, seed=i), tmp_path / f"{i}.dcm")
        result = archive.ingest.ingest_file(path, CTX)
        refs.append(Reference(DX, result.sop_instance_uid))
    return refs


def commitment(*refs: Reference, transaction: str | None = None) -> CommitmentRequest:
    return CommitmentRequest(transaction or generate_uid(), tuple(refs))


def overwrite(archive: Archive, request: pytest.FixtureRequest, key: str, data: bytes) -> None:
    """Change the stored bytes behind the archive's back, as a disk fault or an intruder would."""
    store = archive.store
    if isinstance(store, FilesystemStore):
        store.path_for(key).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        client = request.getfixturevalue("s3_server").client()
        client.put_object(store.bucket, key, io.BytesIO(data), len(data))


def stored_bytes(archive: Archive, uid: str) -> tuple[str, bytes]:
    key = archive.retrieve.current(uid).object_key
    with archive.store.open(key) as f:
        return key, f.read()


def reasons(failures: list[Failure]) -> dict[str, FailureReason]:
    return {f.reference.sop_instance_uid: f.reason for f in failures}


def test_stored_instances_are_committed_in_request_order(
    service: CommitmentService, stored: list[Reference]
) -> None:
    order = [stored[2], stored[0], stored[1]]
    result = service.verify(commitment(*order, transaction="1.2.3.4"))

    assert result.committed == order
    assert result.failed == []
    assert result.all_committed
    assert result.transaction_uid == "1.2.3.4"
    assert result.summary() == "transaction 1.2.3.4: 3 committed, 0 failed"


def test_an_unknown_instance_is_no_such_object_instance(
    service: CommitmentService, stored: list[Reference]
) -> None:
    unknown = Reference(DX, generate_uid())

    result = service.verify(commitment(stored[0], unknown))

    assert result.committed == [stored[0]]
    [failure] = result.failed
    assert (failure.reference, failure.reason) == (unknown, FailureReason.NO_SUCH_OBJECT_INSTANCE)
    assert unknown.sop_instance_uid in failure.detail
    assert not result.all_committed
    assert "(0x0112)" in result.summary()


def test_an_unknown_instance_of_a_class_never_stored_is_class_not_supported(
    service: CommitmentService,
) -> None:
    ref = Reference("1.2.840.10008.5.1.4.31", generate_uid())  # Modality Worklist: not a storage class

    [failure] = service.verify(commitment(ref)).failed

    assert failure.reason is FailureReason.REFERENCED_SOP_CLASS_NOT_SUPPORTED


def test_a_stored_instance_named_with_another_sop_class_is_a_class_instance_conflict(
    service: CommitmentService, stored: list[Reference]
) -> None:
    wrong = Reference(str(CTImageStorage), stored[1].sop_instance_uid)

    result = service.verify(commitment(stored[0], wrong))

    assert result.committed == [stored[0]]
    [failure] = result.failed
    assert (failure.reference, failure.reason) == (wrong, FailureReason.CLASS_INSTANCE_CONFLICT)
    assert DX in failure.detail  # says what the archive has


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]), id="last-pixel-byte"),
        pytest.param(lambda data: b"\xff" + data[1:], id="preamble-byte"),
        pytest.param(lambda data: data[:-10], id="truncated"),
    ],
)
def test_changed_stored_bytes_are_a_processing_failure(
    archive: Archive,
    service: CommitmentService,
    stored: list[Reference],
    request: pytest.FixtureRequest,
    change: object,
) -> None:
    victim = stored[0]
    key, data = stored_bytes(archive, victim.sop_instance_uid)
    overwrite(archive, request, key, change(data))  # type: ignore[operator]

    result = service.verify(commitment(*stored))

    assert result.committed == stored[1:]
    assert reasons(result.failed) == {victim.sop_instance_uid: FailureReason.PROCESSING_FAILURE}
    assert key in result.failed[0].detail


def test_a_vanished_object_is_no_such_object_instance(
    archive: Archive, service: CommitmentService, stored: list[Reference]
) -> None:
    victim = stored[2]
    archive.store.delete(archive.retrieve.current(victim.sop_instance_uid).object_key)

    result = service.verify(commitment(*stored))

    assert result.committed == stored[:2]
    assert reasons(result.failed) == {victim.sop_instance_uid: FailureReason.NO_SUCH_OBJECT_INSTANCE}
    assert "missing" in result.failed[0].detail


def test_only_the_current_version_counts(
    archive: Archive,
    service: CommitmentService,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """An older version kept as evidence is not what a reader gets; the current one must verify."""
    uid = generate_uid()
    first = write(diconde_dx(sop_uid=uid, rows=32, columns=32, seed=1), tmp_path / "v1.dcm")
    second = write(diconde_dx(sop_uid=uid, rows=32, columns=32, seed=2), tmp_path / "v2.dcm")
    archive.ingest.ingest_file(first, CTX)
    archive.ingest.ingest_file(second, CTX)
    old, new = archive.retrieve.versions(uid)
    ref = Reference(DX, uid)

    overwrite(archive, request, old.object_key, b"gone")
    assert service.verify(commitment(ref)).committed == [ref]

    overwrite(archive, request, new.object_key, b"gone")
    assert reasons(service.verify(commitment(ref)).failed) == {uid: FailureReason.PROCESSING_FAILURE}


def test_an_instance_listed_twice_is_reported_twice(
    service: CommitmentService, stored: list[Reference]
) -> None:
    unknown = Reference(DX, generate_uid())

    result = service.verify(commitment(stored[0], unknown, stored[0], unknown))

    assert result.committed == [stored[0], stored[0]]
    assert [f.reference for f in result.failed] == [unknown, unknown]


def test_a_transaction_being_verified_cannot_be_started_again(
    service: CommitmentService, stored: list[Reference]
) -> None:
    """PS3.3 C.14.1.1 0x0131: a second request with a Transaction UID in use fails as a whole."""
    transaction = generate_uid()
    inner: list[CommitmentResult] = []

    def while_first_runs(ref: Reference, failure: Failure | None) -> None:
        if not inner:
            inner.append(service.verify(commitment(*stored, transaction=transaction)))

    first = service.verify(commitment(*stored, transaction=transaction), progress=while_first_runs)
    again = service.verify(commitment(*stored, transaction=transaction))

    assert first.committed == stored
    [duplicate] = inner
    assert duplicate.committed == []
    assert reasons(duplicate.failed) == {
        ref.sop_instance_uid: FailureReason.DUPLICATE_TRANSACTION_UID for ref in stored
    }
    assert again.committed == stored  # finished transactions are forgotten


def test_concurrent_transactions_are_independent(service: CommitmentService, stored: list[Reference]) -> None:
    results: list[CommitmentResult | None] = [None] * 4

    def run(i: int) -> None:
        results[i] = service.verify(commitment(*stored))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert [r.committed if r else None for r in results] == [stored] * 4


def test_a_large_object_is_verified_in_bounded_memory(
    archive: Archive, service: CommitmentService, tmp_path: Path
) -> None:
    size = 96 * 1024 * 1024
    path = large_multiframe_file(tmp_path / "big.dcm", size, part_id="BIG-COMMIT")
    uid = archive.ingest.ingest_file(path, CTX).sop_instance_uid
    path.unlink()
    ref = Reference(str(MultiFrameGrayscaleWordSecondaryCaptureImageStorage), uid)

    tracemalloc.start()
    try:
        result = service.verify(commitment(ref))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.committed == [ref]
    assert peak < 8 * 1024 * 1024, f"verifying a {size >> 20} MiB object took {peak >> 20} MiB"


@pytest.mark.parametrize(
    ("transaction", "refs", "message"),
    [
        ("", (Reference(DX, "1.2.3"),), "(0008,1195) Transaction UID missing"),
        ("1.2.3", (), "(0008,1199) Referenced SOP Sequence has no items"),
        ("1.2.3", (Reference("", "1.2.3"),), "(0008,1150) Referenced SOP Class UID, item 1, missing"),
        (
            "1.2.3",
            (Reference(DX, "1.2.3"), Reference(DX, "")),
            "(0008,1155) Referenced SOP Instance UID, item 2, missing",
        ),
        ("1.2.3.abc", (Reference(DX, "1.2.3"),), "(0008,1195) Transaction UID not a UID"),
        ("1." + "2" * 63, (Reference(DX, "1.2.3"),), "(0008,1195) Transaction UID not a UID"),
    ],
)
def test_a_malformed_request_is_refused_naming_the_attribute(
    transaction: str, refs: tuple[Reference, ...], message: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        CommitmentRequest(transaction, refs)
    assert str(caught.value).startswith(message)
    assert len(message) <= 64  # fits a DIMSE Error Comment


def test_uids_with_leading_zeros_are_tolerated() -> None:
    CommitmentRequest("1.02.3", (Reference(DX, "1.2.03"),))
