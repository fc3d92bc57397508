"""C-MOVE and C-GET against independent peers: DCMTK movescu / getscu / storescp and pynetdicom.

What an inspector relies on: a retrieve at any level of either model sends exactly the instances it
names, byte for byte as they were stored whenever the receiver accepts the stored transfer syntax,
losslessly transcoded (same pixels) when it does not; a destination that refuses some instances
gets those listed in the Failed SOP Instance UID List; C-CANCEL stops the sub-operations; a bad
request gets a failure status with an error comment naming the attribute, and the node goes on.

pynetdicom peers that *receive* C-STOREs (the C-GET SCU, a storage SCP) run in a spawned process:
the archive's node, in this process, makes pynetdicom receive every C-STORE into the archive
(``dicom_nodes.spool``), process-wide.
"""

from __future__ import annotations

import gc
import io
import logging
import multiprocessing
import os
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_nodes import move
from dicom_nodes.server import SERVICES
from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.index.nodes import Node
from tests.conftest import RunningNode, start_dicom_node
from tests.support.factories import (
    SAMPLES_BY_TRANSFER_SYNTAX,
    diconde_dx,
    enhanced_ct,
    sample_file,
    us_multiframe,
    write,
)
from tests.support.net import free_port, wait_for_port

MOVESCU, GETSCU, STORESCP = "/usr/bin/movescu", "/usr/bin/getscu", "/usr/bin/storescp"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
MOVE_MODELS = {
    "P": PatientRootQueryRetrieveInformationModelMove,
    "S": StudyRootQueryRetrieveInformationModelMove,
}
GET_MODELS = {
    "P": PatientRootQueryRetrieveInformationModelGet,
    "S": StudyRootQueryRetrieveInformationModelGet,
}


# -- helpers --------------------------------------------------------------------------------------
def run_dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=DCMTK_ENV)


def dataset_bytes(part10: bytes) -> bytes:
    """Everything after the File Meta Information group of a Part 10 file (PS3.10 7.1)."""
    assert part10[128:132] == b"DICM", "not a Part 10 file"
    (group_length,) = struct.unpack_from("<L", part10, 140)
    return part10[144 + group_length :]


def stored_file_bytes(archive: Archive, uid: str) -> bytes:
    with archive.retrieve.open(archive.retrieve.current(uid)) as f:
        return f.read()


def ingest(archive: Archive, path: Path) -> None:
    archive.ingest.ingest_file(path, CallerContext(via="import"))


def received(folder: Path) -> dict[str, Path]:
    """SOP Instance UID -> file, of the Part 10 files a receiver wrote to ``folder``."""
    found = {}
    for path in folder.iterdir():
        if path.is_file():
            found[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return found


def transfer_syntax(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def assert_byte_identical(archive: Archive, uid: str, path: Path) -> None:
    stored = stored_file_bytes(archive, uid)
    assert transfer_syntax(path) == archive.retrieve.current(uid).transfer_syntax_uid, uid
    assert dataset_bytes(path.read_bytes()) == dataset_bytes(stored), f"{uid}: dataset bytes differ"


def assert_same_pixels(archive: Archive, uid: str, path: Path) -> None:
    """The receiver's copy decodes to the pixels of the stored original (a lossless conversion)."""
    original = dcmread(_stored_copy(archive, uid))
    copy = dcmread(path)
    assert np.array_equal(copy.pixel_array, original.pixel_array), f"{uid}: pixels differ"
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
        assert copy.get(keyword) == original.get(keyword), f"{uid}: {keyword} differs"


def _stored_copy(archive: Archive, uid: str) -> io.BytesIO:
    return io.BytesIO(stored_file_bytes(archive, uid))


def keys_args(keys: dict[str, str]) -> list[str]:
    return [arg for keyword, value in keys.items() for arg in ("-k", f"{keyword}={value}")]


def movescu(
    node: RunningNode, model: str, destination: str, keys: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return run_dcmtk(
        MOVESCU,
        "-v",
        f"-{model}",
        "-aec",
        node.ae_title,
        "-aem",
        destination,
        *keys_args(keys),
        node.host,
        str(node.port),
    )


def start_node(archive: Archive) -> RunningNode:
    return start_dicom_node(archive, services=SERVICES)


@pytest.fixture
def node(archive: Archive) -> Iterator[RunningNode]:
    running = start_node(archive)
    yield running
    running.node.stop(grace=5)  # type: ignore[attr-defined]


@dataclass
class StoreSCP:
    ae_title: str
    port: int
    folder: Path
    process: subprocess.Popen[str]

    def clear(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()


@contextmanager
def storescp(archive: Archive, folder: Path, ae_title: str, *options: str) -> Iterator[StoreSCP]:
    """DCMTK storescp on a free port, registered as a node; ``+B`` writes what it receives unchanged."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(folder.with_suffix(".log"), "w") as log:  # its messages, for a failing test to show
        process = subprocess.Popen(
            [STORESCP, "+B", *options, "-aet", ae_title, "-od", str(folder), str(port)],
            env=DCMTK_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for_port("127.0.0.1", port)
            archive.nodes.add(Node(ae_title, "127.0.0.1", port))
            yield StoreSCP(ae_title, port, folder, process)
        finally:
            process.terminate()
            process.wait(timeout=10)


# -- the archive's content --------------------------------------------------------------------------
@dataclass
class Stored:
    """Two components, three inspections, five series; every native syntax and two compressed ones.

    PART-A  SA1  SX (DX): dx1 explicit LE, dx2 JPEG 2000 lossless
                 SY (CT): ct1 RLE
            SA2  SZ (DX): dx3 deflated
    PART-B  SB1  SW (US): us1 implicit LE
                 SV (DX): dx4 explicit big endian
    """

    uids: dict[str, str]  # name -> UID, for instances, studies and series alike

    def __getitem__(self, name: str) -> str:
        return self.uids[name]

    def instances(self, *names: str) -> set[str]:
        return {self.uids[n] for n in names}


def _uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.543.{os.getpid()}.{n}"


@pytest.fixture
def stored(archive: Archive, tmp_path: Path) -> Stored:
    names = ["SA1", "SA2", "SB1", "SX", "SY", "SZ", "SW", "SV", "dx1", "dx2", "ct1", "dx3", "us1", "dx4"]
    uids = {name: _uid(i + 1) for i, name in enumerate(names)}
    folder = tmp_path / "originals"
    folder.mkdir()

    def dx(
        name: str, study: str, series: str, number: int, series_number: int, syntax: str, part: str
    ) -> None:
        ds = diconde_dx(
            part_id=part,
            rows=48,
            columns=48,
            seed=number,
            study_uid=uids[study],
            series_uid=uids[series],
            sop_uid=uids[name],
            InstanceNumber=number,
            SeriesNumber=series_number,
        )
        ingest(archive, write(ds, folder / f"{name}.dcm", syntax))

    dx("dx2", "SA1", "SX", 2, 1, JPEG2000Lossless, "PART-A")  # stored first: the order is not arrival's
    dx("dx1", "SA1", "SX", 1, 1, ExplicitVRLittleEndian, "PART-A")
    ct = enhanced_ct(
        frames=2,
        rows=32,
        columns=32,
        part_id="PART-A",
        study_uid=uids["SA1"],
        series_uid=uids["SY"],
        sop_uid=uids["ct1"],
        SeriesNumber=2,
    )
    ingest(archive, write(ct, folder / "ct1.dcm", RLELossless))
    dx("dx3", "SA2", "SZ", 1, 1, DeflatedExplicitVRLittleEndian, "PART-A")
    us = us_multiframe(
        frames=2,
        rows=32,
        columns=32,
        part_id="PART-B",
        study_uid=uids["SB1"],
        series_uid=uids["SW"],
        sop_uid=uids["us1"],
        SeriesNumber=1,
    )
    ingest(archive, write(us, folder / "us1.dcm", ImplicitVRLittleEndian))
    dx("dx4", "SB1", "SV", 1, 2, ExplicitVRBigEndian, "PART-B")
    return Stored(uids)


def level_moves(s: Stored) -> list[tuple[str, dict[str, str], set[str]]]:
    """(model, keys, expected instances) for every level of both models; lists at the level."""
    return [
        (
            "P",
            {"QueryRetrieveLevel": "PATIENT", "PatientID": "PART-A"},
            s.instances("dx1", "dx2", "ct1", "dx3"),
        ),
        (
            "P",
            {"QueryRetrieveLevel": "STUDY", "PatientID": "PART-A", "StudyInstanceUID": s["SA1"]},
            s.instances("dx1", "dx2", "ct1"),
        ),
        (
            "P",
            {
                "QueryRetrieveLevel": "SERIES",
                "PatientID": "PART-A",
                "StudyInstanceUID": s["SA1"],
                "SeriesInstanceUID": s["SX"],
            },
            s.instances("dx1", "dx2"),
        ),
        (
            "P",
            {
                "QueryRetrieveLevel": "IMAGE",
                "PatientID": "PART-B",
                "StudyInstanceUID": s["SB1"],
                "SeriesInstanceUID": s["SW"],
                "SOPInstanceUID": s["us1"],
            },
            s.instances("us1"),
        ),
        (
            "S",
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": f"{s['SA2']}\\{s['SB1']}"},
            s.instances("dx3", "us1", "dx4"),
        ),
        (
            "S",
            {
                "QueryRetrieveLevel": "SERIES",
                "StudyInstanceUID": s["SA1"],
                "SeriesInstanceUID": f"{s['SX']}\\{s['SY']}",
            },
            s.instances("dx1", "dx2", "ct1"),
        ),
        (
            "S",
            {
                "QueryRetrieveLevel": "IMAGE",
                "StudyInstanceUID": s["SA1"],
                "SeriesInstanceUID": s["SX"],
                "SOPInstanceUID": f"{s['dx1']}\\{s['dx2']}",
            },
            s.instances("dx1", "dx2"),
        ),
    ]


# -- C-MOVE with dcmtk ----------------------------------------------------------------------------
def test_movescu_at_every_level_of_both_models_sends_the_stored_bytes(
    archive: Archive, stored: Stored, node: RunningNode, tmp_path: Path, settings: Any
) -> None:
    # +xa: storescp accepts every syntax it knows, so each instance goes in its stored syntax.
    with storescp(archive, tmp_path / "dest", "DEST", "+xa") as dest:
        for model, keys, expected in level_moves(stored):
            result = movescu(node, model, dest.ae_title, keys)
            what = f"{model} {keys}"
            assert result.returncode == 0, what + result.stdout + result.stderr
            assert "Received Final Move Response (Success)" in result.stderr, what + result.stderr
            got = received(dest.folder)
            assert set(got) == expected, what
            for uid, path in got.items():
                assert_byte_identical(archive, uid, path)
            dest.clear()
    # Nothing is left behind (an S3 object is copied to the incoming folder while it is sent).
    assert not list(settings.incoming_dir.glob("retrieve-*"))


def test_movescu_sends_every_sample_syntax_unchanged_or_transcoded_when_unknown_to_the_receiver(
    archive: Archive, node: RunningNode, tmp_path: Path
) -> None:
    """Real-world samples of every stored syntax, plus HTJ2K, which DCMTK 3.6.7 does not know: those
    must arrive transcoded (the archive falls back to explicit / implicit VR little endian)."""
    paths = [sample_file(name) for name in SAMPLES_BY_TRANSFER_SYNTAX.values()]
    for i, syntax in enumerate((HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K)):
        ds = diconde_dx(part_id=f"J2K-{i}", rows=48, columns=48, seed=i)
        paths.append(write(ds, tmp_path / f"htj2k_{i}.dcm", syntax))
    studies = []
    for path in paths:
        ingest(archive, path)
        studies.append(str(dcmread(path, stop_before_pixels=True).StudyInstanceUID))
    relabelled = {str(HTJ2KLossless), str(HTJ2KLosslessRPCL), str(HTJ2K)}

    with storescp(archive, tmp_path / "dest", "DEST", "+xa") as dest:
        result = movescu(
            node, "S", dest.ae_title, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "\\".join(studies)}
        )
        assert result.returncode == 0, result.stdout + result.stderr
        got = received(dest.folder)
    assert len(got) == len(paths)
    for uid, path in got.items():
        stored_syntax = archive.retrieve.current(uid).transfer_syntax_uid
        if stored_syntax in relabelled:
            assert transfer_syntax(path) in (ExplicitVRLittleEndian, ImplicitVRLittleEndian), uid
            assert_same_pixels(archive, uid, path)
        elif stored_syntax == DeflatedExplicitVRLittleEndian:
            # Inflated and deflated again (pynetdicom, zlib's default level): the same dataset.
            assert transfer_syntax(path) == stored_syntax
            sent = zlib.decompress(dataset_bytes(path.read_bytes()), -zlib.MAX_WBITS)
            original = zlib.decompress(dataset_bytes(stored_file_bytes(archive, uid)), -zlib.MAX_WBITS)
            assert sent == original, uid
        else:
            assert_byte_identical(archive, uid, path)


def test_movescu_to_uncompressed_receivers_transcodes_losslessly(
    archive: Archive, node: RunningNode, tmp_path: Path
) -> None:
    """storescp's default accepts the three uncompressed syntaxes, ``+xi`` implicit VR LE only: the
    compressed originals arrive decoded, big endian and explicit ones as implicit for ``+xi``."""
    paths = [sample_file(name) for name in SAMPLES_BY_TRANSFER_SYNTAX.values()]
    paths.append(
        write(diconde_dx(part_id="J2K", rows=48, columns=48), tmp_path / "j2k.dcm", JPEG2000Lossless)
    )
    paths.append(write(enhanced_ct(frames=2, rows=32, columns=32), tmp_path / "rle.dcm", RLELossless))
    studies = []
    for path in paths:
        ingest(archive, path)
        studies.append(str(dcmread(path, stop_before_pixels=True).StudyInstanceUID))
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "\\".join(studies)}
    uncompressed = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian)}

    with (
        storescp(archive, tmp_path / "plain", "PLAIN") as plain,
        storescp(archive, tmp_path / "implicit", "IMPLICIT", "+xi") as implicit,
    ):
        for dest in (plain, implicit):
            result = movescu(node, "S", dest.ae_title, keys)
            assert result.returncode == 0, result.stdout + result.stderr
        got_plain, got_implicit = received(plain.folder), received(implicit.folder)
    assert len(got_plain) == len(got_implicit) == len(paths)
    for uid, path in got_plain.items():
        stored_syntax = archive.retrieve.current(uid).transfer_syntax_uid
        if stored_syntax in uncompressed:
            assert_byte_identical(archive, uid, path)
        elif stored_syntax == DeflatedExplicitVRLittleEndian:
            assert transfer_syntax(path) == ExplicitVRLittleEndian
            inflated = zlib.decompress(dataset_bytes(stored_file_bytes(archive, uid)), -zlib.MAX_WBITS)
            assert dataset_bytes(path.read_bytes()) == inflated, uid
        else:
            assert transfer_syntax(path) in uncompressed, uid
            assert_same_pixels(archive, uid, path)
    for uid, path in got_implicit.items():
        assert transfer_syntax(path) == ImplicitVRLittleEndian, uid
        assert_same_pixels(archive, uid, path)


# -- C-MOVE statuses with a pynetdicom mover (it receives no C-STORE, so it may run here) ---------
@dataclass
class Responses:
    """The responses to one C-MOVE or C-GET, the final one last."""

    items: list[tuple[Dataset, Dataset | None]]

    @property
    def final(self) -> Dataset:
        return self.items[-1][0]

    @property
    def status(self) -> int:
        return int(self.final.Status)

    @property
    def failed_uids(self) -> list[str]:
        identifier = self.items[-1][1]
        if identifier is None or "FailedSOPInstanceUIDList" not in identifier:
            return []
        return [str(v) for v in _as_list(identifier.FailedSOPInstanceUIDList)]

    @property
    def pending(self) -> list[Dataset]:
        return [status for status, _ in self.items if status.Status == 0xFF00]


def identifier(keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value.split("\\") if "\\" in value else value)
    return ds


@contextmanager
def mover(node: RunningNode) -> Iterator[Any]:
    ae = AE(ae_title="MOVER")
    for uid in (*MOVE_MODELS.values(), *GET_MODELS.values(), Verification):
        ae.add_requested_context(uid)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def send_move(assoc: Any, model: str, destination: str, keys: dict[str, str]) -> Responses:
    return Responses(list(assoc.send_c_move(identifier(keys), destination, MOVE_MODELS[model])))


def test_an_unknown_destination_gets_0xA801_with_a_reason(
    archive: Archive, stored: Stored, node: RunningNode
) -> None:
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": stored["SA1"]}
    with mover(node) as assoc:
        unknown = send_move(assoc, "S", "NOBODY", keys)
    assert unknown.status == 0xA801
    assert "NOBODY" in unknown.final.ErrorComment
    # DCMTK's mover reads the same status.
    result = movescu(node, "S", "NOBODY", keys)
    assert "MoveDestinationUnknown" in result.stdout + result.stderr


def test_a_registered_destination_that_is_down_gets_0xA801_and_the_log_names_it(
    archive: Archive, stored: Stored, node: RunningNode, caplog: pytest.LogCaptureFixture
) -> None:
    archive.nodes.add(Node("ASLEEP", "127.0.0.1", free_port()))  # nothing listens there
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": stored["SA1"]}
    with caplog.at_level(logging.ERROR, logger="dicom_nodes.move"), mover(node) as assoc:
        down = send_move(assoc, "S", "ASLEEP", keys)
        gc.collect()  # pynetdicom drops the handler's generator; closing it writes the log line
        echo = assoc.send_c_echo()
    assert down.status == 0xA801
    assert echo.Status == 0x0000  # the association and the node go on
    messages = [r.getMessage() for r in caplog.records]
    assert any("ASLEEP" in m and "did not accept an association" in m for m in messages)


def test_instances_the_destination_refuses_are_listed_as_failed(
    archive: Archive, stored: Stored, node: RunningNode, tmp_path: Path
) -> None:
    """storescp configured without the DX SOP class: the CT of the study arrives, both DX fail."""
    config = tmp_path / "no-dx.cfg"
    config.write_text(
        "[[TransferSyntaxes]]\n[Uncompressed]\n"
        f"TransferSyntax1 = {ExplicitVRLittleEndian}\nTransferSyntax2 = {ImplicitVRLittleEndian}\n"
        "[[PresentationContexts]]\n[NoRadiographs]\n"
        f"PresentationContext1 = {EnhancedCTImageStorage}\\Uncompressed\n"
        "[[Profiles]]\n[Default]\nPresentationContexts = NoRadiographs\n"
    )
    with (
        storescp(archive, tmp_path / "dest", "NO_DX", "-xf", str(config), "Default") as dest,
        mover(node) as assoc,
    ):
        responses = send_move(
            assoc, "S", dest.ae_title, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": stored["SA1"]}
        )
        got = received(dest.folder)
    assert responses.status == 0xB000  # Warning: sub-operations complete, one or more failed
    assert sorted(responses.failed_uids) == sorted(stored.instances("dx1", "dx2"))
    assert (responses.final.NumberOfCompletedSuboperations, responses.final.NumberOfFailedSuboperations) == (
        1,
        2,
    )
    assert set(got) == stored.instances("ct1")
    assert_same_pixels(archive, stored["ct1"], got[stored["ct1"]])  # RLE, not accepted: decoded
    # A pending response after each sub-operation, counting down.
    assert [p.NumberOfRemainingSuboperations for p in responses.pending] == [2, 1, 0]


# -- pynetdicom peers that receive C-STOREs: in a spawned process ----------------------------------
def _storage_scp(ae_title: str, refuse: list[str], ready: Any, stop: Any, results: Any) -> None:
    """A storage SCP that answers 0xA700 for the SOP Instance UIDs in ``refuse``."""
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts

    from pacs.diconde.encodings import STORED_TRANSFER_SYNTAXES

    log: list[tuple[str, str]] = []

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        log.append((uid, str(event.context.transfer_syntax)))
        return 0xA700 if uid in refuse else 0x0000

    ae = AE(ae_title=ae_title)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(STORED_TRANSFER_SYNTAXES))
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    ready.put(server.server_address[1])
    stop.wait(120)
    server.shutdown()
    results.put(log)


def _get_scu(
    host: str,
    port: int,
    called: str,
    model: str,
    keys: dict[str, str],
    storage: list[tuple[str, list[str]]],
    folder: str,
    delay: float,
    cancel_after: int,
    results: Any,
) -> None:
    """A C-GET SCU accepting ``storage`` (SOP class, transfer syntaxes); writes what it receives as
    Part 10 files (dataset bytes as received); optionally cancels after ``cancel_after`` pendings."""
    import time as _time

    from pynetdicom import AE, build_role, evt

    written: list[str] = []

    def on_store(event: Any) -> int:
        path = Path(folder) / f"{len(written)}.dcm"
        path.write_bytes(event.encoded_dataset())
        written.append(str(path))
        if delay:
            _time.sleep(delay)
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(model)
    roles = []
    for sop_class, syntaxes in storage:
        ae.add_requested_context(sop_class, syntaxes)
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate(
        host, port, ae_title=called, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    responses = []
    if assoc.is_established:
        pendings = 0
        for status, ident in assoc.send_c_get(identifier(keys), model, msg_id=9):
            responses.append(
                {
                    "status": int(status.Status),
                    "counts": [_count(status, keyword) for keyword in COUNTERS],
                    "comment": str(status.get("ErrorComment", "")),
                    "failed": [str(v) for v in _as_list(ident.get("FailedSOPInstanceUIDList"))]
                    if ident
                    else [],
                }
            )
            if status.Status == 0xFF00:
                pendings += 1
                if pendings == cancel_after:
                    context = assoc._get_valid_context(model, "", "scu")
                    assoc.send_c_cancel(9, context.context_id)
        assoc.release()
    results.put({"responses": responses, "written": written})


COUNTERS = (
    "NumberOfRemainingSuboperations",
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)


def _count(status: Dataset, keyword: str) -> int:
    value = status.get(keyword)
    return -1 if value is None else int(value)


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | int):  # one UID, one tag
        return [value]
    return list(value)


@dataclass
class GetResult:
    responses: list[dict[str, Any]]
    written: list[Path]

    @property
    def final(self) -> dict[str, Any]:
        return self.responses[-1]


def c_get(
    node: RunningNode,
    model: str,
    keys: dict[str, str],
    storage: list[tuple[str, list[str]]],
    folder: Path,
    *,
    delay: float = 0.0,
    cancel_after: int = 0,
) -> GetResult:
    folder.mkdir(parents=True, exist_ok=True)
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    process = spawn.Process(
        target=_get_scu,
        args=(
            node.host,
            node.port,
            node.ae_title,
            GET_MODELS[model],
            keys,
            storage,
            str(folder),
            delay,
            cancel_after,
            results,
        ),
    )
    process.start()
    try:
        outcome = results.get(timeout=120)
    finally:
        process.join(timeout=30)
    return GetResult(outcome["responses"], [Path(p) for p in outcome["written"]])


@contextmanager
def refusing_scp(archive: Archive, ae_title: str, refuse: Sequence[str]) -> Iterator[Any]:
    spawn = multiprocessing.get_context("spawn")
    ready, results, stop = spawn.Queue(), spawn.Queue(), spawn.Event()
    process = spawn.Process(target=_storage_scp, args=(ae_title, list(refuse), ready, stop, results))
    process.start()
    log: list[tuple[str, str]] = []
    try:
        port = ready.get(timeout=60)
        archive.nodes.add(Node(ae_title, "127.0.0.1", port))
        yield log
    finally:
        stop.set()
        log.extend(results.get(timeout=60))
        process.join(timeout=30)


def test_store_failures_and_missing_objects_fail_their_sub_operations(
    archive: Archive, stored: Stored, node: RunningNode
) -> None:
    """The destination refuses one instance (0xA700), another one's object is gone from the store: both
    are listed, the others arrive, in the order of the hierarchy (series number, instance number)."""
    archive.store.delete(archive.retrieve.current(stored["dx3"]).object_key)
    keys = {"QueryRetrieveLevel": "PATIENT", "PatientID": "PART-A"}
    with refusing_scp(archive, "PICKY", [stored["dx2"]]) as log, mover(node) as assoc:
        responses = send_move(assoc, "P", "PICKY", keys)
    assert responses.status == 0xB000
    assert sorted(responses.failed_uids) == sorted(stored.instances("dx2", "dx3"))
    assert (responses.final.NumberOfCompletedSuboperations, responses.final.NumberOfFailedSuboperations) == (
        2,
        2,
    )
    # SA1 (dx1, dx2 in series 1, then ct1 in series 2), and the missing dx3 never reached the wire.
    assert [uid for uid, _ in log] == [stored["dx1"], stored["dx2"], stored["ct1"]]
    assert dict(log)[stored["dx2"]] == JPEG2000Lossless  # the SCP takes every syntax: stored ones sent


def test_a_move_whose_every_sub_operation_fails_answers_0xA702(
    archive: Archive, stored: Stored, node: RunningNode
) -> None:
    with refusing_scp(archive, "REFUSER", list(stored.instances("dx1", "dx2"))), mover(node) as assoc:
        responses = send_move(
            assoc,
            "P",
            "REFUSER",
            {
                "QueryRetrieveLevel": "SERIES",
                "PatientID": "PART-A",
                "StudyInstanceUID": stored["SA1"],
                "SeriesInstanceUID": stored["SX"],
            },
        )
    assert responses.status == 0xA702
    assert sorted(responses.failed_uids) == sorted(stored.instances("dx1", "dx2"))


class _LateReactor(threading.Event):
    """An association's reactor checkpoint whose thread is descheduled for 0.1 s once past it."""

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        time.sleep(0.1)
        return passed


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "pynetdicom-alone"])
def test_the_response_guard_closes_pynetdicoms_reactor_race(
    archive: Archive,
    stored: Stored,
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    guarded: bool,
) -> None:
    """pynetdicom's race (``dicom_nodes.move.ResponseGuard``) made certain instead of rare: the
    sub-association's reactor passes its checkpoint just before ``send_c_store`` pauses it, and the
    sending thread is descheduled between sending the C-STORE request and reading the response, so
    the response is there when the reactor polls. Unguarded, the reactor takes it and the
    sub-operation fails at the DIMSE timeout; guarded, ``send_c_store`` gets it. When the unguarded
    case stops failing, pynetdicom has fixed the race and the guard can go."""
    install = move.ResponseGuard.install

    def widen_then_install(guard: move.ResponseGuard, assoc: Any) -> None:
        assoc._reactor_checkpoint = _LateReactor()  # EVT_ACCEPTED runs before the reactor starts
        assoc._reactor_checkpoint.set()
        send = assoc.dimse.send_msg

        def send_then_stall(*args: Any, **kwargs: Any) -> None:
            send(*args, **kwargs)
            time.sleep(0.3)

        assoc.dimse.send_msg = send_then_stall
        if guarded:
            install(guard, assoc)

    monkeypatch.setattr(move.ResponseGuard, "install", widen_then_install)
    impatient = settings.model_copy(update={"dimse_timeout": 3.0})
    running = start_dicom_node(archive, impatient, services=SERVICES)
    keys = {
        "QueryRetrieveLevel": "SERIES",
        "StudyInstanceUID": stored["SA1"],
        "SeriesInstanceUID": stored["SX"],
    }
    try:
        with storescp(archive, tmp_path / "dest", "DEST", "+xa") as dest, mover(running) as assoc:
            responses = send_move(assoc, "S", dest.ae_title, keys)
            got = received(dest.folder)
    finally:
        running.node.stop(grace=5)  # type: ignore[attr-defined]
    stolen = "Received unexpected C-STORE service message" in caplog.text  # the reactor took it
    if guarded:
        assert responses.status == 0x0000
        assert set(got) == stored.instances("dx1", "dx2")
        assert not stolen
    else:
        assert stolen
        assert responses.status != 0x0000  # then send_c_store waited for the DIMSE timeout
        assert responses.failed_uids


def test_c_cancel_stops_a_move(archive: Archive, stored: Stored, node: RunningNode, tmp_path: Path) -> None:
    # storescp sleeps a second after each store: the cancel arrives while sub-operations remain.
    with (
        storescp(archive, tmp_path / "slow", "SLOW", "+xa", "--sleep-after", "1") as dest,
        mover(node) as assoc,
    ):
        responses_iter = assoc.send_c_move(
            identifier({"QueryRetrieveLevel": "PATIENT", "PatientID": "PART-A"}),
            dest.ae_title,
            MOVE_MODELS["P"],
            msg_id=5,
        )
        first = next(responses_iter)
        assert first[0].Status == 0xFF00
        context = assoc._get_valid_context(MOVE_MODELS["P"], "", "scu")
        assoc.send_c_cancel(5, context.context_id)
        rest = list(responses_iter)
        got = received(dest.folder)
    final = rest[-1][0]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations >= 1
    assert final.NumberOfCompletedSuboperations + final.NumberOfRemainingSuboperations == 4
    assert len(got) == final.NumberOfCompletedSuboperations


# -- bad requests ---------------------------------------------------------------------------------
BAD_IDENTIFIERS = [
    ("S", {"QueryRetrieveLevel": "STUDY"}, "(0020,000D)"),  # missing unique key
    ("S", {"QueryRetrieveLevel": "WORLD", "StudyInstanceUID": "1.2.3"}, "(0008,0052)"),  # unknown level
    ("S", {"QueryRetrieveLevel": "PATIENT", "PatientID": "PART-A"}, "(0008,0052)"),  # not in Study Root
    ("S", {"StudyInstanceUID": "1.2.3"}, "(0008,0052)"),  # no level
    ("P", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3"}, "(0010,0020)"),  # key above missing
    ("P", {"QueryRetrieveLevel": "PATIENT", "PatientID": "PART-*"}, "(0010,0020)"),  # wild card
    (
        "S",
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"},
        "(0008,0018)",
    ),
    (
        "S",
        {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2\\1.3", "SeriesInstanceUID": "1.4"},
        "(0020,000D)",
    ),
    ("S", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.x"}, "(0020,000D)"),  # not a UID
]


def test_bad_identifiers_get_0xA900_with_the_attribute_named_and_the_node_goes_on(
    archive: Archive, stored: Stored, node: RunningNode, tmp_path: Path
) -> None:
    archive.nodes.add(Node("NOWHERE", "127.0.0.1", free_port()))  # never reached: the checks come first
    with mover(node) as assoc:
        for model, keys, tag in BAD_IDENTIFIERS:
            for responses in (
                Responses(list(assoc.send_c_move(identifier(keys), "NOWHERE", MOVE_MODELS[model]))),
                Responses(list(assoc.send_c_get(identifier(keys), GET_MODELS[model]))),
            ):
                assert len(responses.items) == 1, keys
                assert responses.status == 0xA900, keys
                assert tag in responses.final.ErrorComment, (keys, responses.final.ErrorComment)
                offending = (int(tag[1:5], 16) << 16) | int(tag[6:10], 16)
                assert offending in _as_list(responses.final.OffendingElement), keys
        # The same association still serves: a valid retrieve that matches nothing succeeds.
        nothing = send_move(
            assoc, "S", "NOWHERE", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3"}
        )
        assert nothing.status == 0x0000
        assert nothing.final.NumberOfCompletedSuboperations == 0
    # And DCMTK gets the status too, on a new association.
    result = movescu(node, "S", "NOWHERE", {"QueryRetrieveLevel": "STUDY"})
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr


# -- C-GET ----------------------------------------------------------------------------------------
def test_getscu_receives_the_stored_bytes(
    archive: Archive, stored: Stored, node: RunningNode, tmp_path: Path
) -> None:
    """getscu proposes one syntax order for every storage class: its default (explicit VR LE first)
    for the explicit LE original, ``+xv`` (JPEG 2000 lossless) and ``+xr`` (RLE) for the others."""
    cases = [("dx1", "SX", []), ("dx2", "SX", ["+xv"]), ("ct1", "SY", ["+xr"])]
    for name, series, options in cases:
        folder = tmp_path / f"get-{name}"
        folder.mkdir()
        keys = {
            "QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": stored["SA1"],
            "SeriesInstanceUID": stored[series],
            "SOPInstanceUID": stored[name],
        }
        result = run_dcmtk(
            GETSCU,
            "-v",
            "-S",
            "+B",
            *options,
            "-aec",
            node.ae_title,
            "-od",
            str(folder),
            *keys_args(keys),
            node.host,
            str(node.port),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Received C-GET Response (Success)" in result.stderr, result.stderr
        got = received(folder)
        assert set(got) == {stored[name]}
        assert_byte_identical(archive, stored[name], got[stored[name]])
    # A whole study in one C-GET (Patient Root), every instance in a syntax getscu accepted.
    folder = tmp_path / "get-study"
    folder.mkdir()
    result = run_dcmtk(
        GETSCU,
        "-P",
        "+B",
        "-aec",
        node.ae_title,
        "-od",
        str(folder),
        *keys_args({"QueryRetrieveLevel": "STUDY", "PatientID": "PART-B", "StudyInstanceUID": stored["SB1"]}),
        node.host,
        str(node.port),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    got = received(folder)
    assert set(got) == stored.instances("us1", "dx4")
    for uid, path in got.items():
        assert_same_pixels(archive, uid, path)


def test_c_get_accepting_only_explicit_vr_little_endian_gets_a_jpeg2000_original_transcoded(
    archive: Archive, stored: Stored, node: RunningNode, tmp_path: Path
) -> None:
    keys = {
        "QueryRetrieveLevel": "IMAGE",
        "StudyInstanceUID": stored["SA1"],
        "SeriesInstanceUID": stored["SX"],
        "SOPInstanceUID": stored["dx2"],
    }
    result = c_get(
        node, "S", keys, [(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])], tmp_path / "in"
    )
    assert result.final["status"] == 0x0000
    assert len(result.written) == 1
    assert archive.retrieve.current(stored["dx2"]).transfer_syntax_uid == JPEG2000Lossless
    assert transfer_syntax(result.written[0]) == ExplicitVRLittleEndian
    assert_same_pixels(archive, stored["dx2"], result.written[0])


def test_c_get_lists_instances_of_sop_classes_the_requester_did_not_propose(
    archive: Archive, stored: Stored, node: RunningNode, tmp_path: Path
) -> None:
    keys = {"QueryRetrieveLevel": "STUDY", "PatientID": "PART-A", "StudyInstanceUID": stored["SA1"]}
    result = c_get(
        node,
        "P",
        keys,
        [(DigitalXRayImageStorageForPresentation, [JPEG2000Lossless, ExplicitVRLittleEndian])],
        tmp_path / "in",
    )
    assert result.final["status"] == 0xB000
    assert result.final["failed"] == [stored["ct1"]]
    assert result.final["counts"][1:3] == [2, 1]  # completed, failed
    by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in result.written}
    assert set(by_uid) == stored.instances("dx1", "dx2")
    # One context per SOP class; the requester's first choice (JPEG 2000 lossless) was accepted, so
    # dx2 goes unchanged and the explicit LE dx1 is compressed losslessly.
    assert_byte_identical(archive, stored["dx2"], by_uid[stored["dx2"]])
    assert transfer_syntax(by_uid[stored["dx1"]]) == JPEG2000Lossless
    assert_same_pixels(archive, stored["dx1"], by_uid[stored["dx1"]])


def test_c_cancel_stops_a_get(archive: Archive, stored: Stored, node: RunningNode, tmp_path: Path) -> None:
    keys = {"QueryRetrieveLevel": "PATIENT", "PatientID": "PART-A"}
    storage = [
        (DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian]),
        (EnhancedCTImageStorage, [ExplicitVRLittleEndian]),
    ]
    result = c_get(node, "P", keys, storage, tmp_path / "in", delay=0.5, cancel_after=1)
    final = result.final
    assert final["status"] == 0xFE00
    remaining, completed = final["counts"][0], final["counts"][1]
    assert remaining >= 1
    assert completed + remaining == 4
    assert len(result.written) == completed
