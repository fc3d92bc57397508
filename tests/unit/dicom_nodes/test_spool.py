"""Guards the pynetdicom internals that ``dicom_nodes/spool.py`` relies on.

The spooler replaces ``pynetdicom.dimse_messages.NamedTemporaryFile`` so a received C-STORE dataset is
written straight into a new object of the store, and relies on pynetdicom reporting that file's
``name`` as ``event.dataset_path`` and unlinking that name after the handler. pynetdicom is pinned;
when an upgrade changes any of this, these tests say so before an instance is lost.
"""

from __future__ import annotations

import gc
import hashlib
import io
import multiprocessing
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynetdicom.dimse_messages
import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dsutils import create_file_meta, encode

from dicom_nodes.policy import AssociationLimiter
from dicom_nodes.server import DicomNode
from dicom_nodes.spool import FileMeta, Spooler, SpoolFile, write_file_meta
from pacs.archive import Archive
from pacs.diconde.encodings import STORED_TRANSFER_SYNTAXES
from tests.support.factories import diconde_dx


class RecordingSpooler(Spooler):
    """The real spooler, remembering what it handed out and what the C-STORE handler claimed."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.created: list[SpoolFile] = []
        self.claims: list[tuple[str, SpoolFile | None]] = []

    def create(self, *args: Any, **kwargs: Any) -> SpoolFile:
        spool = super().create(*args, **kwargs)
        self.created.append(spool)
        return spool

    def claim(self, path: Path | str) -> SpoolFile | None:
        spool = super().claim(path)
        self.claims.append((str(path), spool))
        return spool


@pytest.fixture
def spooler(archive: Archive) -> Iterator[RecordingSpooler]:
    spooler = RecordingSpooler(archive.ingest.receive, archive.settings.incoming_dir)
    yield spooler
    spooler.uninstall()


@pytest.fixture
def node(archive: Archive, spooler: RecordingSpooler) -> Iterator[DicomNode]:
    """The archive's DIMSE face on a free port, receiving through ``spooler``."""
    settings = archive.settings
    slots = multiprocessing.get_context("fork").Array("i", 1)
    node = DicomNode(
        settings,
        archive,
        socket.create_server(("127.0.0.1", 0)),
        AssociationLimiter(settings.max_associations, slots),
        spooler,
    )
    node.start()
    yield node
    node.stop(grace=5)


def dataset_bytes(ds: Dataset) -> bytes:
    """What pynetdicom puts on the wire for ``ds`` in explicit VR little endian."""
    encoded = encode(ds, False, True)
    assert encoded is not None
    return encoded


def store_one(node: DicomNode, ds: Dataset) -> None:
    """C-STORE ``ds`` to ``node`` on an association of its own; it must succeed."""
    ae = AE(ae_title="SPOOL_SCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
    host, port = node.address
    assoc = ae.associate(host, port, ae_title=node.settings.ae_title)
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


def object_keys(archive: Archive) -> set[str]:
    return {info.key for info in archive.store.iter_objects()}


def test_fragments_are_hashed_without_a_copy_because_pynetdicom_never_reuses_them(
    archive: Archive, node: DicomNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SpoolFile hands each fragment to the hashing queue as it is (``handed_over``): that is only
    right while pynetdicom gives every fragment a buffer of its own and never writes to it again."""
    handed: list[tuple[bytes | bytearray | memoryview, bytes]] = []
    real_write = SpoolFile.write

    def recording_write(self: SpoolFile, data: bytes | bytearray | memoryview) -> int:
        handed.append((data, bytes(data)))
        return real_write(self, data)

    monkeypatch.setattr(SpoolFile, "write", recording_write)
    ds = diconde_dx(rows=1100, columns=1100)  # 2.4 MB of pixels: several PDUs of at most 1 MiB
    store_one(node, ds)

    fragments = [(data, seen) for data, seen in handed if len(data) > 64 << 10]
    assert len(fragments) >= 3
    assert len({id(data) for data, _ in fragments}) == len(fragments)  # a buffer each ...
    assert all(bytes(data) == seen for data, seen in fragments)  # ... left as it was written
    version = archive.retrieve.current(ds.SOPInstanceUID)
    with archive.retrieve.open(version) as f:
        stored = f.read()
    assert hashlib.sha256(stored[version.dataset_offset :]).hexdigest() == version.dataset_sha256


def test_install_hooks_pynetdicom_and_uninstall_restores(spooler: RecordingSpooler) -> None:
    assert pynetdicom.dimse_messages.NamedTemporaryFile is tempfile.NamedTemporaryFile

    spooler.install()
    assert pynetdicom.dimse_messages.NamedTemporaryFile == spooler.create
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    assert pynetdicom.dimse_messages.create_file_meta is FileMeta
    assert pynetdicom.dimse_messages.write_file_meta_info is write_file_meta

    spooler.uninstall()
    assert pynetdicom.dimse_messages.NamedTemporaryFile is tempfile.NamedTemporaryFile
    assert _config.STORE_RECV_CHUNKED_DATASET is False
    assert pynetdicom.dimse_messages.create_file_meta is create_file_meta
    assert pynetdicom.dimse_messages.write_file_meta_info is write_file_meta_info


def pydicom_file_meta(**values: str) -> bytes:
    """The file meta group as pynetdicom has pydicom make and write it."""
    out = io.BytesIO()
    write_file_meta_info(out, create_file_meta(**values))  # type: ignore[arg-type]
    return out.getvalue()


def our_file_meta(**values: str) -> bytes:
    out = io.BytesIO()
    write_file_meta(out, FileMeta(**values))
    return out.getvalue()


@pytest.mark.parametrize("transfer_syntax", sorted(STORED_TRANSFER_SYNTAXES))
@pytest.mark.parametrize("instance_length", [41, 64])
@pytest.mark.parametrize("sop_class", ["1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.2"])
def test_the_file_meta_is_written_byte_for_byte_as_pydicom_writes_it(
    transfer_syntax: str, instance_length: int, sop_class: str
) -> None:
    instance = ("1.2.826.0.1.3680043.8.498." + "1234567890" * 7)[:instance_length]
    values = {"sop_class_uid": sop_class, "sop_instance_uid": instance, "transfer_syntax": transfer_syntax}
    assert our_file_meta(**values) == pydicom_file_meta(**values)


@pytest.mark.parametrize(
    "instance",
    ["1.2.3.4 ", "1.2.A.4", "1." + "2" * 70, "1.2.\u00e9"],
    ids=["trailing space", "letter", "too long", "non-ASCII"],
)
def test_unusual_uids_are_left_to_pydicom(instance: str) -> None:
    values = {
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1",
        "sop_instance_uid": instance,
        "transfer_syntax": ExplicitVRLittleEndian,
    }
    try:
        expected: bytes | type[Exception] = pydicom_file_meta(**values)
    except Exception as exc:  # pydicom refuses it: so must we
        expected = type(exc)
    if isinstance(expected, bytes):
        assert our_file_meta(**values) == expected
    else:
        with pytest.raises(expected):
            our_file_meta(**values)


def test_received_dataset_goes_through_a_spool_file_into_the_store(
    archive: Archive, node: DicomNode, spooler: RecordingSpooler, monkeypatch: pytest.MonkeyPatch
) -> None:
    unlinked: list[str] = []
    real_unlink = os.unlink

    def recording_unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        unlinked.append(os.fspath(path))
        real_unlink(path, *args, **kwargs)

    # pynetdicom's StorageServiceClass calls os.unlink(file.name) once the handler returned.
    monkeypatch.setattr(os, "unlink", recording_unlink)
    ds = diconde_dx(rows=32, columns=32)
    store_one(node, ds)

    # The handler was given, as event.dataset_path, the name of the spool file pynetdicom wrote to.
    [spool] = spooler.created
    assert spooler.claims == [(spool.name, spool)]
    assert not Path(spool.name).exists()  # a token, never a file on disk
    assert spool.name in unlinked  # pynetdicom still unlinks it after the handler ...

    # ... and that did not touch the committed object, whose hashes were computed on the way in.
    version = archive.retrieve.current(ds.SOPInstanceUID)
    assert spool.incoming is not None and version.object_key == spool.incoming.key
    with archive.retrieve.open(version) as f:
        stored = f.read()
    digests = spool.incoming.digests()
    assert digests is not None
    offset = digests.dataset_offset
    assert hashlib.sha256(stored[offset:]).hexdigest() == digests.dataset_sha256 == version.dataset_sha256
    assert hashlib.sha256(stored[:offset]).hexdigest() == digests.file_meta_sha256 == version.file_meta_sha256
    assert stored[offset:] == dataset_bytes(ds)
    # The file meta is the one pynetdicom would have written (its UIDs, its implementation).
    meta = pydicom_file_meta(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=ExplicitVRLittleEndian,
    )
    assert stored[:offset] == b"\0" * 128 + b"DICM" + meta
    assert spool.incoming.size == len(stored) == version.size
    assert object_keys(archive) == {version.object_key}
    assert spooler.pending == 0


@pytest.fixture
def without_cyclic_gc() -> Iterator[None]:
    """A collection between ``del`` and the check would hide whether dropping the file is enough."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("without_cyclic_gc")
def test_connection_closed_discards_what_its_association_was_still_receiving(
    archive: Archive, spooler: RecordingSpooler
) -> None:
    """An association cut off mid-transfer: its spool file is never claimed, and when the connection
    closes (EVT_CONN_CLOSE) the partial object goes, deterministically, without waiting for a GC."""
    receiver = threading.Thread(target=lambda: None)  # stands for the association's DUL thread

    def create_in(thread_owner: threading.Thread) -> SpoolFile:
        spool: SpoolFile | None = None

        def run() -> None:
            nonlocal spool
            spool = spooler.create(delete=False, mode="wb", suffix=".dcm")

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        assert spool is not None
        spool.owner = thread_owner  # the receiving thread recorded at creation
        return spool

    cut_off = create_in(receiver)
    other = create_in(threading.Thread(target=lambda: None))  # another association's transfer
    for spool in (cut_off, other):
        assert spool.incoming is not None
        spool.write(b"\x00" * 128 + b"DICM" + b"partial dataset")
    cut_off_local = cut_off.incoming.path  # type: ignore[union-attr]
    other_local = other.incoming.path  # type: ignore[union-attr]

    spooler.on_connection_closed(SimpleNamespace(assoc=SimpleNamespace(dul=receiver)))  # type: ignore[arg-type]

    assert not cut_off_local.exists(), "the cut-off transfer's partial data outlived its connection"
    assert cut_off.incoming.key not in object_keys(archive)  # type: ignore[union-attr]
    assert other_local.exists(), "another association's transfer in progress was discarded"
    assert spooler.pending == 1
    assert spooler.abort_pending() == 1
    assert not other_local.exists()
