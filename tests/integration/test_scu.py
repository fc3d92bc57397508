"""The archive as a client of other archives: ``pacs send``, ``pacs query``, ``pacs retrieve``.

The peers are independent implementations: DCMTK's storescp receives what ``pacs send`` pushes (in
bit-preserving mode, so what it wrote is what went over the wire), and Orthanc (Debian's package, on
loopback with its own configuration) answers C-FIND, C-GET and C-MOVE for ``pacs query`` and
``pacs retrieve``. Every command runs as a subprocess, as an operator runs it, on the backend pair
under test; the archive fixture reads the index afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from pacs.archive import Archive
from pacs.config import Settings
from pacs.context import CallerContext
from pacs.index.nodes import Node
from tests.support.factories import diconde_dx, large_multiframe_file, part10_bytes, us_multiframe, write
from tests.support.net import free_port, wait_for_port
from tests.support.serve import PacsServer, dataset_offset, pacs_command, run_pacs, sha256_of

STORESCP, ORTHANC = "/usr/bin/storescp", "/usr/sbin/Orthanc"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
UTF8_NAME = "Schaufel^Größe"


# -- helpers ----------------------------------------------------------------------------------------
def config_args(settings: Settings) -> list[str]:
    """The flags that point a ``pacs`` command at the archive of ``settings``."""
    return [
        "--data-dir",
        str(settings.data_dir),
        "--database-url",
        str(settings.database_url),
        "--object-store",
        str(settings.object_store),
    ]


def pacs(settings: Settings, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_pacs(*args, *config_args(settings), timeout=timeout)


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return lines[-1]


def ingest(archive: Archive, ds: Dataset, tmp_path: Path, transfer_syntax: str | None = None) -> str:
    path = write(ds, tmp_path / f"{ds.SOPInstanceUID}.dcm", transfer_syntax)
    archive.ingest.ingest_file(path, CallerContext(via="import"))
    return str(ds.SOPInstanceUID)


def dataset_hash_of_bytes(part10: bytes) -> str:
    assert part10[128:132] == b"DICM"
    offset = 144 + int.from_bytes(part10[140:144], "little")
    return hashlib.sha256(part10[offset:]).hexdigest()


def file_dataset_sha256(path: Path) -> str:
    return sha256_of(path, dataset_offset(path))


# -- storescp: the node that pacs send pushes to ----------------------------------------------------
@dataclass
class StoreSCP:
    ae_title: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> the file storescp wrote."""
        out = {}
        for path in self.folder.iterdir():
            meta = pydicom.dcmread(path, stop_before_pixels=True)
            out[str(meta.SOPInstanceUID)] = path
        return out


def start_storescp(tmp_path: Path, *options: str) -> StoreSCP:
    folder = tmp_path / "storescp"
    folder.mkdir()
    port = free_port()
    log = open(tmp_path / "storescp.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [STORESCP, "-v", "+B", *options, "-aet", "STORESCP", "-od", str(folder), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=DCMTK_ENV,
    )
    wait_for_port("127.0.0.1", port)
    return StoreSCP("STORESCP", port, folder, process, log)


@pytest.fixture
def storescp_all(tmp_path: Path) -> Iterator[StoreSCP]:
    """storescp accepting every transfer syntax it knows (+xa), writing what arrives bit for bit."""
    scp = start_storescp(tmp_path, "+xa")
    yield scp
    scp.stop()


@pytest.fixture
def storescp_uncompressed(tmp_path: Path) -> Iterator[StoreSCP]:
    """storescp with its defaults: uncompressed transfer syntaxes only."""
    scp = start_storescp(tmp_path)
    yield scp
    scp.stop()


# -- Orthanc: the archive that pacs query / retrieve pull from -------------------------------------
@dataclass
class OrthancPeer:
    ae_title: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen[bytes]
    log: Path

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def rest(self, path: str, data: bytes | None = None, method: str = "GET") -> bytes:
        request = urllib.request.Request(self._url(path), data=data, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def upload(self, part10: bytes) -> None:
        self.rest("/instances", part10, "POST")

    def instances(self) -> dict[str, tuple[str, str]]:
        """SOP Instance UID -> (transfer syntax, dataset SHA-256) of the files Orthanc holds."""
        out = {}
        for oid in json.loads(self.rest("/instances")):
            data = self.rest(f"/instances/{oid}/file")
            meta = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
            out[str(meta.SOPInstanceUID)] = (
                str(meta.file_meta.TransferSyntaxUID),
                dataset_hash_of_bytes(data),
            )
        return out

    def know(self, ae_title: str, port: int) -> None:
        """Register a C-MOVE destination."""
        body = json.dumps({"AET": ae_title, "Host": "127.0.0.1", "Port": port}).encode()
        self.rest(f"/modalities/{ae_title.lower()}", body, "PUT")

    def forget(self, ae_title: str) -> None:
        try:
            self.rest(f"/modalities/{ae_title.lower()}", method="DELETE")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise


@dataclass
class PeerData:
    """What the Orthanc peer holds: two components, four instances, one instance of a SOP class
    outside what C-GET offers to receive."""

    blade_study: str
    blade_uids: list[str]
    disc_study: str
    disc_uids: list[str]
    odd_study: str
    odd_uid: str
    utf8_part: str


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancPeer, PeerData]]:
    folder = tmp_path_factory.mktemp("orthanc")
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "scu-test-peer",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "StorageCompression": False,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {},
        "DicomModalitiesInDatabase": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = folder / "orthanc.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [ORTHANC, str(folder / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT, env=DCMTK_ENV
        )
    peer = OrthancPeer("ORTHANC", dicom_port, http_port, process, log)
    try:
        wait_for_port("127.0.0.1", http_port, timeout=30)
        wait_for_port("127.0.0.1", dicom_port, timeout=30)
        blade_study, disc_study, odd_study = generate_uid(), generate_uid(), generate_uid()
        blade_series = generate_uid()
        blade = [
            diconde_dx(part_id="BLADE-7", study_uid=blade_study, series_uid=blade_series, seed=seed)
            for seed in (1, 2)
        ]
        disc = [us_multiframe(part_id="DISC-2", study_uid=disc_study)]
        odd = diconde_dx(part_id="ODD-1", study_uid=odd_study, seed=4, SOPClassUID=MRImageStorage)
        utf8 = diconde_dx(part_id="GRÖSSE-1", component_name=UTF8_NAME, charset="ISO_IR 192", seed=5)
        peer.upload(part10_bytes(blade[0], JPEG2000Lossless))
        peer.upload(part10_bytes(blade[1], ExplicitVRLittleEndian))
        peer.upload(part10_bytes(disc[0], RLELossless))
        peer.upload(part10_bytes(odd, ExplicitVRLittleEndian))
        peer.upload(part10_bytes(utf8, ExplicitVRLittleEndian))
        data = PeerData(
            blade_study,
            [str(ds.SOPInstanceUID) for ds in blade],
            disc_study,
            [str(ds.SOPInstanceUID) for ds in disc],
            odd_study,
            str(odd.SOPInstanceUID),
            "GRÖSSE-1",
        )
        yield peer, data
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def peer(orthanc: tuple[OrthancPeer, PeerData], archive: Archive) -> tuple[OrthancPeer, PeerData]:
    """The Orthanc peer, registered in the archive under test as node ORTHANC."""
    server, _ = orthanc
    archive.nodes.add(Node("ORTHANC", "127.0.0.1", server.dicom_port, description="Orthanc test peer"))
    return orthanc


# -- pacs send ---------------------------------------------------------------------------------------
def test_send_keeps_the_stored_bytes_when_the_peer_accepts_the_stored_syntax(
    archive: Archive, settings: Settings, storescp_all: StoreSCP, tmp_path: Path
) -> None:
    study = generate_uid()
    dx_j2k = diconde_dx(part_id="SEND-1", study_uid=study, seed=1)
    dx_native = diconde_dx(part_id="SEND-1", study_uid=study, seed=2)
    us_rle = us_multiframe(part_id="SEND-1", study_uid=study)
    dx_deflated = diconde_dx(part_id="SEND-1", study_uid=study, seed=4)
    uids = [
        ingest(archive, dx_j2k, tmp_path, JPEG2000Lossless),
        ingest(archive, dx_native, tmp_path, ImplicitVRLittleEndian),
        ingest(archive, us_rle, tmp_path, RLELossless),
        ingest(archive, dx_deflated, tmp_path, DeflatedExplicitVRLittleEndian),
    ]
    archive.nodes.add(Node("STORESCP", "127.0.0.1", storescp_all.port))

    result = pacs(settings, "send", "STORESCP", study)

    assert result.returncode == 0, result.stdout + result.stderr
    assert last_line(result) == (
        f"sent 4 of 4 instances to STORESCP@127.0.0.1:{storescp_all.port}: "
        "4 in their stored transfer syntax, 0 transcoded, 0 failed"
    )
    assert "sending to STORESCP" in result.stderr  # the progress bar
    received = storescp_all.received()
    assert sorted(received) == sorted(uids)
    for uid in uids:
        stored = archive.retrieve.current(uid)
        written = received[uid]
        assert str(pydicom.dcmread(written, stop_before_pixels=True).file_meta.TransferSyntaxUID) == (
            stored.transfer_syntax_uid
        )
        assert file_dataset_sha256(written) == stored.dataset_sha256, f"{uid} changed on the way"


def test_send_decompresses_for_a_peer_that_takes_only_uncompressed(
    archive: Archive, settings: Settings, storescp_uncompressed: StoreSCP, tmp_path: Path
) -> None:
    dx = diconde_dx(part_id="SEND-2", seed=3)
    us = us_multiframe(part_id="SEND-2")
    dx_uid = ingest(archive, dx, tmp_path, JPEG2000Lossless)
    us_uid = ingest(archive, us, tmp_path, RLELossless)
    archive.nodes.add(Node("STORESCP", "127.0.0.1", storescp_uncompressed.port))

    # By SOP Instance UID and by Series Instance UID.
    result = pacs(settings, "send", "STORESCP", dx_uid, str(us.SeriesInstanceUID))

    assert result.returncode == 0, result.stdout + result.stderr
    assert last_line(result).endswith("0 in their stored transfer syntax, 2 transcoded, 0 failed")
    received = storescp_uncompressed.received()
    for uid, original in ((dx_uid, dx), (us_uid, us)):
        written = pydicom.dcmread(received[uid])
        assert not written.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(written.pixel_array, original.pixel_array), f"{uid}: pixels differ"
        assert written.PatientID == original.PatientID
        assert written.StudyInstanceUID == original.StudyInstanceUID


def test_send_reports_each_failure_and_exits_1(
    archive: Archive, settings: Settings, storescp_all: StoreSCP, tmp_path: Path
) -> None:
    study = generate_uid()
    fine = ingest(archive, diconde_dx(part_id="SEND-3", study_uid=study, seed=1), tmp_path)
    # A SOP class storescp does not know: it rejects the presentation context.
    private_class = "1.2.826.0.1.3680043.8.498.4242"
    odd = ingest(
        archive, diconde_dx(part_id="SEND-3", study_uid=study, seed=2, SOPClassUID=private_class), tmp_path
    )
    archive.nodes.add(Node("STORESCP", "127.0.0.1", storescp_all.port))

    result = pacs(settings, "send", "STORESCP", study)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"failed: {odd}: the peer accepted no presentation context for {private_class}" in result.stdout
    assert last_line(result).startswith("sent 1 of 2 instances")
    assert last_line(result).endswith("1 failed")
    assert sorted(storescp_all.received()) == [fine]


def test_send_refuses_unknown_nodes_and_uids_before_sending(
    archive: Archive, settings: Settings, storescp_all: StoreSCP, tmp_path: Path
) -> None:
    uid = ingest(archive, diconde_dx(part_id="SEND-4"), tmp_path)

    unknown_node = pacs(settings, "send", "NOBODY", uid)
    assert unknown_node.returncode == 2
    assert "no node with AE title 'NOBODY' is registered" in unknown_node.stderr

    archive.nodes.add(Node("STORESCP", "127.0.0.1", storescp_all.port))
    unknown_uid = pacs(settings, "send", "STORESCP", uid, "1.2.3.4.5.6")
    assert unknown_uid.returncode == 1
    assert "not in the archive: 1.2.3.4.5.6" in unknown_uid.stderr
    assert storescp_all.received() == {}, "something was sent although a UID was unknown"

    archive.nodes.add(Node("DOWN", "127.0.0.1", free_port()))
    down = pacs(settings, "send", "DOWN", uid)
    assert down.returncode == 1
    assert "DOWN@127.0.0.1" in down.stderr and "is the node running?" in down.stderr


def test_send_streams_a_large_instance_in_bounded_memory(
    archive: Archive, settings: Settings, storescp_all: StoreSCP, tmp_path: Path
) -> None:
    size = 384 * 1024**2
    big = large_multiframe_file(tmp_path / "big.dcm", size, part_id="SEND-BIG")
    archive.ingest.ingest_file(big, CallerContext(via="import"))
    uid = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    archive.nodes.add(Node("STORESCP", "127.0.0.1", storescp_all.port))

    # GNU time reports the command's peak resident memory (KiB) as the last line of stderr.
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *pacs_command(), "send", "STORESCP", uid, *config_args(settings)],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("PACS_")},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    peak_mib = int(result.stderr.strip().splitlines()[-1]) / 1024
    assert peak_mib < 160, f"pacs send peaked at {peak_mib:.0f} MiB for a {size / 1024**2:.0f} MiB instance"
    written = storescp_all.received()[uid]
    assert file_dataset_sha256(written) == archive.retrieve.current(uid).dataset_sha256


# -- pacs query ----------------------------------------------------------------------------------------
def fields(line: str) -> dict[str, str]:
    return dict(field.split("=", 1) for field in line.split("\t"))


def test_query_returns_the_requested_keys_at_each_level(
    peer: tuple[OrthancPeer, PeerData], settings: Settings
) -> None:
    _, data = peer
    studies = pacs(
        settings, "query", "ORTHANC", "-k", "PatientID=BLADE*", "-k", "StudyInstanceUID=", "-k", "0010,0010="
    )
    assert studies.returncode == 0, studies.stdout + studies.stderr
    (line,) = studies.stdout.splitlines()
    assert fields(line)["PatientID"] == "BLADE-7"
    assert fields(line)["StudyInstanceUID"] == data.blade_study
    assert fields(line)["PatientName"] == "Turbine^Blade"
    assert "1 match from ORTHANC" in studies.stderr

    series = pacs(
        settings,
        "query",
        "ORTHANC",
        "--level",
        "SERIES",
        "-k",
        f"StudyInstanceUID={data.blade_study}",
        "-k",
        "Modality=",
        "-k",
        "SeriesInstanceUID=",
    )
    assert series.returncode == 0, series.stdout + series.stderr
    assert [fields(line)["Modality"] for line in series.stdout.splitlines()] == ["DX"]

    components = pacs(
        settings, "query", "ORTHANC", "--model", "patient", "--level", "PATIENT", "-k", "PatientID=*-?"
    )
    assert components.returncode == 0, components.stdout + components.stderr
    assert sorted(fields(line)["PatientID"] for line in components.stdout.splitlines()) == [
        "BLADE-7",
        "DISC-2",
        "GRÖSSE-1",
        "ODD-1",
    ]


def test_query_with_a_utf8_component_name(peer: tuple[OrthancPeer, PeerData], settings: Settings) -> None:
    _, data = peer
    result = pacs(settings, "query", "ORTHANC", "-k", "PatientName=Schaufel*", "-k", "PatientID=")
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = result.stdout.splitlines()
    assert fields(line)["PatientName"] == UTF8_NAME
    assert fields(line)["PatientID"] == data.utf8_part

    # Non-ASCII values to match: the identifier goes out in UTF-8 (ISO_IR 192).
    for keys in (
        [f"PatientID={data.utf8_part}", "PatientName="],
        ["PatientName=*Größe", "PatientID="],
    ):
        result = pacs(settings, "query", "ORTHANC", "-k", keys[0], "-k", keys[1])
        assert result.returncode == 0, result.stdout + result.stderr
        (line,) = result.stdout.splitlines()
        assert (fields(line)["PatientID"], fields(line)["PatientName"]) == (data.utf8_part, UTF8_NAME)


def test_usage_errors_exit_2_before_any_association(tmp_path: Path) -> None:
    """Backend-independent: the identifier is checked before the archive is opened, the node is
    looked up before anything is sent (one embedded archive is enough)."""
    from pacs.archive import open_archive
    from pacs.config import load_settings

    settings = load_settings({"data_dir": tmp_path / "pacs-data"})
    open_archive(settings).close()

    no_patient_level = pacs(settings, "query", "ORTHANC", "--level", "PATIENT", "-k", "PatientID=")
    assert no_patient_level.returncode == 2
    assert "level PATIENT does not exist in the study root model" in no_patient_level.stderr

    unknown_key = pacs(settings, "retrieve", "ORTHANC", "-k", "PartNumber=7")
    assert unknown_key.returncode == 2
    assert "unknown attribute 'PartNumber'" in unknown_key.stderr

    unknown_node = pacs(settings, "query", "NOBODY", "-k", "PatientID=")
    assert unknown_node.returncode == 2
    assert "no node with AE title 'NOBODY' is registered" in unknown_node.stderr


# -- pacs retrieve ---------------------------------------------------------------------------------
def assert_holds_the_peer_bytes(archive: Archive, peer: OrthancPeer, uids: list[str]) -> None:
    held = peer.instances()
    for uid in uids:
        version = archive.retrieve.current(uid)
        assert (version.transfer_syntax_uid, version.dataset_sha256) == held[uid], uid
        assert len(archive.retrieve.versions(uid)) == 1


def test_retrieve_by_c_get_stores_the_peer_bytes_and_a_second_time_is_already_present(
    peer: tuple[OrthancPeer, PeerData], archive: Archive, settings: Settings
) -> None:
    server, data = peer
    first = pacs(settings, "retrieve", "ORTHANC", "-k", f"StudyInstanceUID={data.blade_study}")
    assert first.returncode == 0, first.stdout + first.stderr
    assert last_line(first) == (
        f"retrieved 2 instances from ORTHANC@127.0.0.1:{server.dicom_port} by C-GET: "
        "2 stored, 0 already present, 0 new versions, 0 failed"
    )
    assert "retrieving from ORTHANC" in first.stderr
    assert_holds_the_peer_bytes(archive, server, data.blade_uids)
    assert archive.retrieve.current(data.blade_uids[0]).transfer_syntax_uid == JPEG2000Lossless

    again = pacs(settings, "retrieve", "ORTHANC", "-k", f"StudyInstanceUID={data.blade_study}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert last_line(again).endswith("0 stored, 2 already present, 0 new versions, 0 failed")
    assert_holds_the_peer_bytes(archive, server, data.blade_uids)


def test_retrieve_queries_first_when_the_keys_are_not_unique_keys(
    peer: tuple[OrthancPeer, PeerData], archive: Archive, settings: Settings
) -> None:
    server, data = peer
    result = pacs(settings, "retrieve", "ORTHANC", "-k", "PatientID=DISC*", "-k", "StudyDate=2024-")
    assert result.returncode == 0, result.stdout + result.stderr
    assert last_line(result).endswith("1 stored, 0 already present, 0 new versions, 0 failed")
    assert_holds_the_peer_bytes(archive, server, data.disc_uids)

    # Patient Root, PATIENT level, by the unique key alone: retrieved without a query.
    component = pacs(settings, "retrieve", "ORTHANC", "--model", "patient", "--level", "PATIENT",
                     "-k", "PatientID=DISC-2")  # fmt: skip
    assert component.returncode == 0, component.stdout + component.stderr
    assert last_line(component).endswith("0 stored, 1 already present, 0 new versions, 0 failed")

    nothing = pacs(settings, "retrieve", "ORTHANC", "-k", "PatientID=NO-SUCH-PART")
    assert nothing.returncode == 0, nothing.stdout + nothing.stderr
    assert last_line(nothing).startswith("nothing on ORTHANC")


def test_retrieve_by_c_get_reports_what_the_peer_could_not_send(
    peer: tuple[OrthancPeer, PeerData], archive: Archive, settings: Settings
) -> None:
    _, data = peer
    # MR Image Storage is not among the SOP classes a C-GET offers to receive.
    result = pacs(settings, "retrieve", "ORTHANC", "-k", f"StudyInstanceUID={data.odd_study}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert last_line(result).endswith("0 stored, 0 already present, 0 new versions, 1 failed")
    assert "--via move" in result.stdout  # the hint
    assert archive.retrieve.index.current_version(data.odd_uid) is None


def test_retrieve_by_c_move_into_the_running_archive(
    peer: tuple[OrthancPeer, PeerData], archive: Archive, settings: Settings, tmp_path: Path
) -> None:
    server, data = peer
    with PacsServer(config_args(settings), workers=1, log_path=tmp_path / "serve.log") as running:
        server.know(settings.ae_title, running.dicom_port)
        try:
            result = pacs(settings, "retrieve", "ORTHANC", "--via", "move", "-k", "PatientID=BLADE-7")
            assert result.returncode == 0, result.stdout + result.stderr + running.log()
            assert last_line(result) == (
                f"moved 2 instances from ORTHANC@127.0.0.1:{server.dicom_port} to {settings.ae_title} "
                "by C-MOVE: 2 completed, 0 with warnings, 0 failed"
            )
            assert_holds_the_peer_bytes(archive, server, data.blade_uids)

            again = pacs(
                settings, "retrieve", "ORTHANC", "--via", "move", "-k", f"StudyInstanceUID={data.blade_study}"
            )
            assert again.returncode == 0, again.stdout + again.stderr
            assert_holds_the_peer_bytes(archive, server, data.blade_uids)  # still one version each
            assert running.log().count("already present") == 2
        finally:
            server.forget(settings.ae_title)

        # Once the peer no longer knows the archive, the move fails (Orthanc answers 0xC000, where
        # PS3.4 C.4.2.1.5 has 0xA801 "move destination unknown").
        unknown = pacs(
            settings, "retrieve", "ORTHANC", "--via", "move", "-k", f"StudyInstanceUID={data.disc_study}"
        )
        assert unknown.returncode == 1, unknown.stdout + unknown.stderr
        assert "error: ORTHANC C-MOVE failed: status 0x" in unknown.stdout
        assert last_line(unknown).endswith("0 completed, 0 with warnings, 0 failed")
