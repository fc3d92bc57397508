"""The archive's C-STORE service (``dicom_nodes/store_service.py``): the response it encodes itself
is the one pynetdicom would send, and what it does not cover is still pynetdicom's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode as encode_command
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import ThreadedAssociationServer

import dicom_nodes.store
from dicom_nodes import store_service, transport
from dicom_nodes.spool import Spooler
from pacs.archive import Archive
from pacs.errors import NotFound
from tests.conftest import RunningNode
from tests.support.factories import diconde_dx
from tests.support.hostile import RawPeer, c_store_rq, encode, p_data

DX = DigitalXRayImageStorageForPresentation
CONTEXT = 1


def request(message_id: int = 7) -> C_STORE:
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = DX
    req.AffectedSOPInstanceUID = generate_uid()
    req.Priority = 0
    return req


def status(code: int, comment: str | None = None, **others: Any) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment is not None:
        ds.ErrorComment = comment
    for keyword, value in others.items():
        setattr(ds, keyword, value)
    return ds


def pynetdicom_response(req: C_STORE, answer: Any) -> bytes:
    """The command set pynetdicom's StorageServiceClass and DIMSE provider would send."""
    rsp = C_STORE()
    rsp.MessageID = req.MessageID
    rsp.MessageIDBeingRespondedTo = req.MessageID
    rsp.AffectedSOPInstanceUID = req.AffectedSOPInstanceUID
    rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
    rsp = StorageServiceClass(None).validate_status(answer, rsp)  # type: ignore[arg-type]
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return bytes(encode_command(message.command_set, True, True))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "answer",
    [
        0x0000,
        0xB007,  # a warning
        status(0x0000),
        status(0xA700, "cannot store: the index is unavailable"),  # odd length: padded
        status(0xA900, "SOP Instance UID differs from the C-STORE request's"),
        status(0xC000, "x" * 64),
        status(0x0110, ""),  # an empty comment is sent empty
    ],
    ids=["int", "warning", "dataset", "odd comment", "even comment", "64 characters", "empty comment"],
)
def test_the_response_is_byte_for_byte_what_pynetdicom_sends(answer: Any) -> None:
    req = request()
    ours = store_service._response_command(req, answer)
    assert ours is not None
    assert ours == pynetdicom_response(req, answer)


@pytest.mark.parametrize(
    "answer",
    [
        status(0xA900, "the data set differs", OffendingElement=[0x00080018]),
        Dataset(),  # no Status: pynetdicom answers 0xC001
        status(0xA700, "Prüfung fehlgeschlagen"),  # beyond the default repertoire
        status(0xA700, "a\\b"),  # a backslash would make two values
        status(0xA700, "x" * 65),  # longer than an LO
        "0000",
        0x10000,
        -1,
        None,
    ],
    ids=[
        "offending element",
        "no status",
        "non-ASCII comment",
        "backslash",
        "65 characters",
        "str",
        "too large",
        "negative",
        "none",
    ],
)
def test_answers_it_does_not_encode_are_left_to_pynetdicom(answer: Any) -> None:
    assert store_service._response_command(request(), answer) is None


# -- over an association, against the archive's node ------------------------------------------
embedded = pytest.mark.parametrize("backend", ["sqlite+file"])


@pytest.fixture
def peer(dicom_node: RunningNode) -> Iterator[RawPeer]:
    with RawPeer(dicom_node.host, dicom_node.port) as raw:
        raw.associate(dicom_node.ae_title, [(CONTEXT, DX, [ExplicitVRLittleEndian])])
        yield raw


@pytest.fixture
def pynetdicom_sends(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every message pynetdicom's own DIMSE provider encodes and sends."""
    sent: list[Any] = []
    real = DIMSEServiceProvider.send_msg

    def recording(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        sent.append(primitive)
        real(self, primitive, context_id)

    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", recording)
    return sent


def store(peer: RawPeer, ds: Dataset, *, message_id: int = 1, uid: str | None = None) -> Dataset:
    """A C-STORE of ``ds`` (the request naming ``uid`` if given): the response's command set."""
    peer.send(p_data(CONTEXT, c_store_rq(DX, uid or ds.SOPInstanceUID, message_id), command=True, last=True))
    peer.send_dataset(CONTEXT, encode(ds, ExplicitVRLittleEndian))
    return peer.response()


@embedded
def test_a_stored_instance_is_answered_with_a_complete_response(
    archive: Archive, peer: RawPeer, pynetdicom_sends: list[Any]
) -> None:
    ds = diconde_dx(rows=64, columns=64)
    rsp = store(peer, ds, message_id=42)

    assert rsp.Status == 0x0000
    assert rsp.CommandField == 0x8001
    assert rsp.MessageIDBeingRespondedTo == 42
    assert rsp.CommandDataSetType == 0x0101
    assert rsp.AffectedSOPClassUID == DX
    assert rsp.AffectedSOPInstanceUID == ds.SOPInstanceUID
    assert "ErrorComment" not in rsp
    # The group length counts every element after it.
    assert rsp.CommandGroupLength == len(encode_command(rsp, True, True)) - 12  # type: ignore[arg-type]
    assert archive.retrieve.current(ds.SOPInstanceUID) is not None
    assert pynetdicom_sends == []  # encoded by the archive's service


@embedded
def test_a_refused_instance_is_answered_with_its_reason(archive: Archive, peer: RawPeer) -> None:
    ds = diconde_dx(rows=64, columns=64)
    other = generate_uid()
    rsp = store(peer, ds, uid=other)

    assert rsp.Status == 0xA900
    assert "SOP Instance UIDs differ" in rsp.ErrorComment
    assert rsp.AffectedSOPInstanceUID == other
    for uid in (ds.SOPInstanceUID, other):
        with pytest.raises(NotFound):
            archive.retrieve.current(uid)


@embedded
def test_a_handler_that_raises_is_answered_0xC211_and_the_association_goes_on(
    archive: Archive, peer: RawPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Spooler.claim
    calls = []

    def failing_once(self: Spooler, path: Any) -> Any:
        calls.append(path)
        if len(calls) == 1:
            real(self, path).discard()  # type: ignore[union-attr]
            raise RuntimeError("a bug in the handler")
        return real(self, path)

    monkeypatch.setattr(Spooler, "claim", failing_once)
    first, second = diconde_dx(rows=64, columns=64, seed=1), diconde_dx(rows=64, columns=64, seed=2)

    assert store(peer, first, message_id=1).Status == store_service.HANDLER_ERROR
    rsp = store(peer, second, message_id=2)
    assert rsp.Status == 0x0000
    assert rsp.MessageIDBeingRespondedTo == 2
    with pytest.raises(NotFound):
        archive.retrieve.current(first.SOPInstanceUID)
    assert archive.retrieve.current(second.SOPInstanceUID) is not None


@embedded
def test_an_answer_it_does_not_encode_is_sent_by_pynetdicom(
    archive: Archive, peer: RawPeer, monkeypatch: pytest.MonkeyPatch, pynetdicom_sends: list[Any]
) -> None:
    real = dicom_nodes.store._status

    def with_offending_element(code: int, comment: str | None = None) -> Dataset:
        ds = real(code, comment)
        ds.OffendingElement = [0x00080018]
        return ds

    monkeypatch.setattr(dicom_nodes.store, "_status", with_offending_element)
    ds = diconde_dx(rows=64, columns=64)
    rsp = store(peer, ds, uid=generate_uid())

    assert rsp.Status == 0xA900
    assert rsp.OffendingElement == 0x00080018
    assert [type(sent) for sent in pynetdicom_sends] == [C_STORE]
    assert "SOP Instance UIDs differ" in rsp.ErrorComment


# -- any handler, on an association the archive's RequestHandler made -----------------------------
@pytest.fixture
def handler_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start a pynetdicom server with the archive's RequestHandler and ``handler`` on EVT_C_STORE
    (pynetdicom's standard log handlers off, as the archive runs)."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    servers: list[ThreadedAssociationServer] = []

    def start(handler: Any) -> int:
        ae = AE("HANDLERS")
        ae.add_supported_context(DX, ExplicitVRLittleEndian)
        server = ThreadedAssociationServer(
            ae,
            ("127.0.0.1", 0),
            ae.ae_title,
            ae.supported_contexts,
            evt_handlers=[(evt.EVT_C_STORE, handler)],
            request_handler=transport.RequestHandler,
        )
        ae._servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize(
    ("answer", "status", "by_pynetdicom"),
    [(None, 0xC002, 1), (Dataset(), 0xC001, 1), (0xB000, 0xB000, 0)],
    ids=["none", "no status element", "warning"],
)
def test_whatever_a_handler_returns_is_answered_as_pynetdicom_answers_it(
    handler_server: Any, pynetdicom_sends: list[Any], answer: Any, status: int, by_pynetdicom: int
) -> None:
    port = handler_server(lambda event: answer)
    ds = diconde_dx(rows=32, columns=32)
    with RawPeer("127.0.0.1", port) as peer:
        peer.associate("HANDLERS", [(CONTEXT, DX, [ExplicitVRLittleEndian])])
        rsp = store(peer, ds, message_id=9)
        assert rsp.Status == status
        assert rsp.MessageIDBeingRespondedTo == 9
        assert rsp.AffectedSOPInstanceUID == ds.SOPInstanceUID
    assert len(pynetdicom_sends) == by_pynetdicom  # an answer it cannot encode is pynetdicom's
