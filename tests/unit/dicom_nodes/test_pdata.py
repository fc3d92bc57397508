"""The C-STORE data set shortcut (``dicom_nodes/pdata.py``): which PDUs take it, which do not.

A PDU that only continues the data set being received is written to its object without
pynetdicom decoding it; every other PDU (commands, each data set's last fragment, anything
malformed, every PDU while a handler watches PDUs) still goes through pynetdicom. The stored
object is the same either way: the data set bytes exactly as sent.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
from pynetdicom import _config, evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event

from dicom_nodes import transport
from pacs.archive import Archive
from pacs.errors import NotFound
from tests.conftest import RunningNode, start_dicom_node
from tests.support.factories import diconde_dx
from tests.support.hostile import RawPeer, c_store_rq, encode, p_data, pdu
from tests.support.stores import contents

pytestmark = pytest.mark.parametrize("backend", ["sqlite+file"])

DX = DigitalXRayImageStorageForPresentation
CONTEXT = 1
SUCCESS = 0x0000


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The type of every PDU pynetdicom decodes, in order."""
    types: list[int] = []
    real = DULServiceProvider._decode_pdu

    def recording(self: DULServiceProvider, bytestream: bytearray) -> object:
        types.append(bytestream[0])
        return real(self, bytestream)

    monkeypatch.setattr(DULServiceProvider, "_decode_pdu", recording)
    return types


@pytest.fixture
def peer(dicom_node: RunningNode) -> Iterator[RawPeer]:
    with RawPeer(dicom_node.host, dicom_node.port) as raw:
        raw.associate(dicom_node.ae_title, [(CONTEXT, DX, [ExplicitVRLittleEndian])])
        yield raw


def data_pdv(data: bytes, *, last: bool = False, context: int = CONTEXT) -> bytes:
    """One presentation data value item of a data set fragment."""
    value = struct.pack(">BB", context, 2 if last else 0) + data
    return struct.pack(">L", len(value)) + value


def dataset(ds: Dataset) -> bytes:
    return encode(ds, ExplicitVRLittleEndian)


def stored_dataset(archive: Archive, ds: Dataset) -> bytes:
    version = archive.retrieve.current(ds.SOPInstanceUID)
    with archive.retrieve.open(version) as f:
        return f.read()[version.dataset_offset :]


def test_data_set_pdus_skip_pynetdicom_and_the_object_is_stored_as_sent(
    archive: Archive, peer: RawPeer, decoded: list[int]
) -> None:
    ds = diconde_dx(rows=256, columns=256)
    data = dataset(ds)
    pieces = [data[i : i + 5000] for i in range(0, len(data), 5000)]
    assert len(pieces) > 20
    peer.send(p_data(CONTEXT, c_store_rq(DX, ds.SOPInstanceUID), command=True, last=True))
    # One PDU per fragment, then one PDU carrying three, then the last fragment on its own.
    for piece in pieces[:-4]:
        peer.send(pdu(0x04, data_pdv(piece)))
    peer.send(pdu(0x04, b"".join(data_pdv(piece) for piece in pieces[-4:-1])))
    peer.send(pdu(0x04, data_pdv(pieces[-1], last=True)))
    assert peer.response().Status == SUCCESS

    assert stored_dataset(archive, ds) == data
    # pynetdicom decoded the command and the last fragment; the others went straight to the object.
    assert decoded == [0x04, 0x04]


def test_two_c_stores_sent_at_once_are_split_where_each_data_set_ends(
    archive: Archive, peer: RawPeer, decoded: list[int]
) -> None:
    """Everything is waiting when the node reads: the PDUs taken in one go stop at each last
    fragment, and the next request's command is pynetdicom's again."""
    sets = [diconde_dx(rows=128, columns=128, seed=n) for n in range(2)]
    wire = b""
    for ds in sets:
        data = dataset(ds)
        pieces = [data[i : i + 3000] for i in range(0, len(data), 3000)]
        wire += p_data(CONTEXT, c_store_rq(DX, ds.SOPInstanceUID), command=True, last=True)
        wire += b"".join(
            pdu(0x04, data_pdv(piece, last=number == len(pieces))) for number, piece in enumerate(pieces, 1)
        )
    peer.send(wire)
    assert [peer.response().Status for _ in sets] == [SUCCESS, SUCCESS]

    for ds in sets:
        assert stored_dataset(archive, ds) == dataset(ds)
    assert decoded == [0x04, 0x04] * 2


def test_pdus_the_shortcut_does_not_understand_go_through_pynetdicom(
    archive: Archive, peer: RawPeer, decoded: list[int]
) -> None:
    """A PDU ending in the last fragment and one with a fragment under another presentation
    context are pynetdicom's to decode (it writes both, as it always did)."""
    ds = diconde_dx(rows=64, columns=64)
    data = dataset(ds)
    third = len(data) // 3
    peer.send(p_data(CONTEXT, c_store_rq(DX, ds.SOPInstanceUID), command=True, last=True))
    peer.send(pdu(0x04, data_pdv(data[:third])))  # the shortcut
    peer.send(pdu(0x04, data_pdv(data[third : 2 * third], context=3)))  # pynetdicom
    peer.send(pdu(0x04, data_pdv(data[2 * third : -10]) + data_pdv(data[-10:], last=True)))  # pynetdicom
    assert peer.response().Status == SUCCESS

    assert stored_dataset(archive, ds) == data
    assert decoded == [0x04, 0x04, 0x04]


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda fragment: pdu(0x04, data_pdv(fragment)[:-3]), id="item longer than its PDU"),
        pytest.param(lambda fragment: pdu(0x04, struct.pack(">L", 1) + b"\x01"), id="item too short"),
        pytest.param(
            lambda fragment: pdu(0x04, data_pdv(fragment) + b"\x00\x00"), id="bytes after the last item"
        ),
    ],
)
def test_a_malformed_pdu_in_the_middle_of_a_data_set_aborts_and_leaves_nothing(
    archive: Archive, dicom_node: RunningNode, peer: RawPeer, broken: object
) -> None:
    ds = diconde_dx(rows=64, columns=64)
    data = dataset(ds)
    peer.send(p_data(CONTEXT, c_store_rq(DX, ds.SOPInstanceUID), command=True, last=True))
    peer.send(pdu(0x04, data_pdv(data[:1000])))
    peer.send(broken(data[1000:2000]))  # type: ignore[operator]
    kind, _ = peer.receive()
    assert kind == 0x07  # A-ABORT
    assert peer.closed_by_peer()
    deadline = time.monotonic() + 10
    while contents(archive.store) and time.monotonic() < deadline:
        time.sleep(0.05)  # the partial object goes when the association's connection has closed
    assert contents(archive.store) == set()
    with pytest.raises(NotFound):
        archive.retrieve.current(ds.SOPInstanceUID)

    # The node still stores the same instance on a new association.
    with RawPeer(dicom_node.host, dicom_node.port) as again:
        again.associate(dicom_node.ae_title, [(CONTEXT, DX, [ExplicitVRLittleEndian])])
        assert again.store(CONTEXT, DX, ds.SOPInstanceUID, data).Status == SUCCESS
    assert stored_dataset(archive, ds) == data


def test_a_handler_watching_pdus_sees_every_one(archive: Archive, dicom_node: RunningNode) -> None:
    seen: list[int] = []

    def watch(event: Event) -> None:
        seen.append(type(event.pdu).__name__ == "P_DATA_TF")

    server = dicom_node.node.server  # type: ignore[attr-defined]
    server.bind(evt.EVT_PDU_RECV, watch)
    ds = diconde_dx(rows=128, columns=128)
    data = dataset(ds)
    with RawPeer(dicom_node.host, dicom_node.port) as peer:
        peer.associate(dicom_node.ae_title, [(CONTEXT, DX, [ExplicitVRLittleEndian])])
        peer.send(p_data(CONTEXT, c_store_rq(DX, ds.SOPInstanceUID), command=True, last=True))
        pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)]
        for number, piece in enumerate(pieces, 1):
            peer.send(pdu(0x04, data_pdv(piece, last=number == len(pieces))))
        assert peer.response().Status == SUCCESS
        peer.release()
    assert sum(seen) == 1 + len(pieces)
    assert stored_dataset(archive, ds) == data


def test_pynetdicom_log_handlers_are_bound_only_at_debug(archive: Archive) -> None:
    """pynetdicom's standard handlers narrate every PDU; a server binds them when it is made."""
    _config.LOG_HANDLER_LEVEL = "standard"  # pynetdicom's default, whatever ran before
    node = start_dicom_node(archive)
    try:
        assert node.node.server.get_handlers(evt.EVT_PDU_RECV) == []  # type: ignore[attr-defined]
    finally:
        node.node.stop(grace=5)  # type: ignore[attr-defined]

    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        node = start_dicom_node(archive)
        try:
            assert node.node.server.get_handlers(evt.EVT_PDU_RECV) != []  # type: ignore[attr-defined]
        finally:
            node.node.stop(grace=5)  # type: ignore[attr-defined]
    finally:
        logger.setLevel(level)
        transport.quiet_logging()
