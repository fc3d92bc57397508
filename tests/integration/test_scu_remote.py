"""The archive as a client of a second archive of ours (``pacs query`` and ``pacs retrieve`` by C-GET and
C-MOVE): the other half of test_scu.py, in a file of its own so the two halves run side by side."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from pacs.archive import Archive
from pacs.config import Settings
from pacs.index.nodes import Node
from tests.integration.test_scu import config_args, fields, ingest, last_line, pacs
from tests.support.factories import diconde_dx, us_multiframe
from tests.support.serve import PacsServer


# -- against a second archive of ours ------------------------------------------------------------------
@dataclass
class RemoteArchive:
    archive: Archive
    port: int
    study: str
    uids: list[str]


@pytest.fixture
def remote_archive(archive: Archive, tmp_path: Path) -> Iterator[RemoteArchive]:
    """Another archive (SQLite + files) serving C-FIND, C-GET and C-MOVE in this process, holding a
    JPEG 2000 radiograph and an RLE ultrasound scan; registered in the archive under test as REMOTE."""
    from dicom_nodes.server import SERVICES
    from pacs.archive import open_archive
    from pacs.config import load_settings
    from tests.conftest import start_dicom_node

    remote_settings = load_settings({"data_dir": tmp_path / "remote", "ae_title": "REMOTE"})
    remote = open_archive(remote_settings)
    study = generate_uid()
    uids = [
        ingest(remote, diconde_dx(part_id="REMOTE-1", study_uid=study, seed=7), tmp_path, JPEG2000Lossless),
        ingest(remote, us_multiframe(part_id="REMOTE-1", study_uid=study), tmp_path, RLELossless),
    ]
    services = SERVICES
    running = start_dicom_node(remote, remote_settings, services)
    archive.nodes.add(Node("REMOTE", running.host, running.port))
    try:
        yield RemoteArchive(remote, running.port, study, uids)
    finally:
        running.node.stop(grace=5)  # type: ignore[attr-defined]
        remote.close()


def assert_holds_the_remote_bytes(archive: Archive, remote: Archive, uids: list[str]) -> None:
    for uid in uids:
        theirs, ours = remote.retrieve.current(uid), archive.retrieve.current(uid)
        assert (ours.transfer_syntax_uid, ours.dataset_sha256) == (
            theirs.transfer_syntax_uid,
            theirs.dataset_sha256,
        ), uid
        assert len(archive.retrieve.versions(uid)) == 1


def test_query_and_retrieve_by_c_get_from_another_archive_of_ours(
    remote_archive: RemoteArchive, archive: Archive, settings: Settings
) -> None:
    remote = remote_archive
    found = pacs(
        settings, "query", "REMOTE", "--level", "SERIES", "-k", f"StudyInstanceUID={remote.study}",
        "-k", "SeriesInstanceUID=", "-k", "Modality=", "-k", "NumberOfSeriesRelatedInstances=",
    )  # fmt: skip
    assert found.returncode == 0, found.stdout + found.stderr
    matches = sorted((fields(line)["Modality"], fields(line)["NumberOfSeriesRelatedInstances"])
                     for line in found.stdout.splitlines())  # fmt: skip
    assert matches == [("DX", "1"), ("US", "1")]

    first = pacs(settings, "retrieve", "REMOTE", "-k", "PatientID=REMOTE-*")
    assert first.returncode == 0, first.stdout + first.stderr
    assert last_line(first).endswith("2 stored, 0 already present, 0 new versions, 0 failed")
    assert_holds_the_remote_bytes(archive, remote.archive, remote.uids)

    again = pacs(settings, "retrieve", "REMOTE", "-k", f"StudyInstanceUID={remote.study}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert last_line(again).endswith("0 stored, 2 already present, 0 new versions, 0 failed")


def test_retrieve_by_c_move_from_another_archive_of_ours(
    remote_archive: RemoteArchive, archive: Archive, settings: Settings, tmp_path: Path
) -> None:
    remote = remote_archive
    with PacsServer(config_args(settings), workers=1, log_path=tmp_path / "serve.log") as running:
        remote.archive.nodes.add(Node(settings.ae_title, "127.0.0.1", running.dicom_port))
        result = pacs(
            settings, "retrieve", "REMOTE", "--via", "move", "-k", f"StudyInstanceUID={remote.study}"
        )
        assert result.returncode == 0, result.stdout + result.stderr + running.log()
        assert last_line(result).endswith("by C-MOVE: 2 completed, 0 with warnings, 0 failed")
        assert_holds_the_remote_bytes(archive, remote.archive, remote.uids)

        remote.archive.nodes.remove(settings.ae_title)
        unknown = pacs(
            settings, "retrieve", "REMOTE", "--via", "move", "-k", f"StudyInstanceUID={remote.study}"
        )
        assert unknown.returncode == 1, unknown.stdout + unknown.stderr
        assert "error: REMOTE C-MOVE failed: status 0xA801" in unknown.stdout
