"""The archive's DICOM face against independent clients: DCMTK echoscu, storescu, dcmsend; pynetdicom.

What a device operator relies on: an instance answered with Success is in the index, its bytes are the
bytes that were sent (no transcoding at ingest, whatever the transfer syntax), names in any declared
character set come back unchanged, and the transfer syntax stored is the one the sender put first.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from pynetdicom import AE, _config
from sqlalchemy import select

from dicom_nodes.server import storage_sop_classes
from pacs.archive import Archive
from pacs.index.schema import component
from tests.conftest import RunningNode
from tests.support.factories import (
    SAMPLES_BY_TRANSFER_SYNTAX,
    diconde_dx,
    enhanced_ct,
    sample_file,
    us_multiframe,
    write,
)

ECHOSCU, STORESCU, DCMSEND = "/usr/bin/echoscu", "/usr/bin/storescu", "/usr/bin/dcmsend"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

LATIN1_NAME = "Gehäuse^Flügelrad"
UTF8_NAME = "Лопатка^涡轮叶片"


def run_dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, env=DCMTK_ENV)


def node_args(node: RunningNode) -> list[str]:
    return ["-aec", node.ae_title, node.host, str(node.port)]


def dataset_bytes(part10: bytes) -> bytes:
    """Everything after the File Meta Information group of a Part 10 file (PS3.10 7.1)."""
    assert part10[128:132] == b"DICM", "not a Part 10 file"
    assert part10[132:140] == b"\x02\x00\x00\x00UL\x04\x00", "no File Meta Information Group Length first"
    (group_length,) = struct.unpack_from("<L", part10, 140)
    return part10[144 + group_length :]


def stored_versions(archive: Archive, uid: str) -> list[tuple[str, bytes]]:
    """(transfer syntax, dataset bytes) of every stored version of ``uid``."""
    out = []
    for version in archive.retrieve.versions(uid):
        with archive.retrieve.open(version) as f:
            out.append((version.transfer_syntax_uid, dataset_bytes(f.read())))
    return out


def stored_current(archive: Archive, uid: str) -> tuple[str, bytes]:
    version = archive.retrieve.current(uid)
    with archive.retrieve.open(version) as f:
        return version.transfer_syntax_uid, dataset_bytes(f.read())


# -- C-ECHO -------------------------------------------------------------------------------------
def test_echoscu_succeeds(dicom_node: RunningNode) -> None:
    result = run_dcmtk(ECHOSCU, *node_args(dicom_node))
    assert result.returncode == 0, result.stdout + result.stderr


# -- storescu -----------------------------------------------------------------------------------
def test_storescu_stores_diconde_objects_byte_for_byte(
    archive: Archive, dicom_node: RunningNode, tmp_path: Path
) -> None:
    datasets = {
        "dx_default": diconde_dx(part_id="DX-ASCII", rows=64, columns=64),
        "dx_latin1": diconde_dx(
            part_id="DX-LATIN1", component_name=LATIN1_NAME, charset="ISO_IR 100", rows=64, columns=64
        ),
        "dx_utf8": diconde_dx(
            part_id="DX-UTF8", component_name=UTF8_NAME, charset="ISO_IR 192", rows=64, columns=64
        ),
        "enhanced_ct": enhanced_ct(frames=4, rows=32, columns=32),
        "us_multiframe": us_multiframe(frames=3, rows=32, columns=40),
    }
    files = {name: write(ds, tmp_path / f"{name}.dcm") for name, ds in datasets.items()}

    # -xe: explicit VR little endian (the files' own syntax) first; -R +C: one context per SOP class.
    result = run_dcmtk(STORESCU, "-xe", "-R", "+C", *node_args(dicom_node), *map(str, files.values()))
    assert result.returncode == 0, result.stdout + result.stderr

    for name, path in files.items():
        uid = datasets[name].SOPInstanceUID
        assert len(archive.index.versions(uid)) == 1, name
        syntax, stored = stored_current(archive, uid)
        assert syntax == ExplicitVRLittleEndian, name
        assert stored == dataset_bytes(path.read_bytes()), f"{name}: stored dataset differs from the file"

    with archive.engine.connect() as conn:
        names = dict(conn.execute(select(component.c.part_id, component.c.component_name)).all())
    assert names["DX-LATIN1"] == LATIN1_NAME
    assert names["DX-UTF8"] == UTF8_NAME
    assert names["DX-ASCII"] == "Turbine^Blade"


# -- dcmsend: every transfer syntax kept as sent -------------------------------------------------
FACTORY_SYNTAXES = (
    RLELossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
# dcmsend proposes every uncompressed file as [explicit LE, explicit BE, implicit LE] (see its -d
# output) and the archive honours the sender's first choice, so these would arrive as explicit LE.
# storescu proposing exactly their syntax sends them instead.
SENT_WITH_STORESCU = {str(ExplicitVRBigEndian): "-xb", str(ImplicitVRLittleEndian): "-xi"}
# DCMTK 3.6.7 does not know the HTJ2K syntaxes ("Unknown Transfer Syntax"): pynetdicom sends those.
SENT_WITH_PYNETDICOM = {str(HTJ2KLossless), str(HTJ2KLosslessRPCL), str(HTJ2K)}


def _transfer_syntax(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _factory_files(tmp_path: Path) -> list[Path]:
    files = []
    for i, syntax in enumerate(FACTORY_SYNTAXES):
        ds = diconde_dx(part_id=f"TS-{i}", rows=48, columns=48, seed=i)
        files.append(write(ds, tmp_path / f"factory_{UID(syntax).keyword or i}.dcm", syntax))
    return files


def _sample_files() -> list[Path]:
    assert SAMPLES_BY_TRANSFER_SYNTAX, "the sample table is empty"
    return [sample_file(name) for name in SAMPLES_BY_TRANSFER_SYNTAX.values()]


def send_chunked(node: RunningNode, paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Send each file's dataset bytes unchanged, in the file's own transfer syntax (pynetdicom's
    chunked send reads the dataset from the file and never re-encodes it)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="RAW_SCU")
    for path in paths:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    try:
        assert assoc.is_established
        for path in paths:
            status = assoc.send_c_store(path)
            assert status.Status == 0x0000, f"{path.name}: 0x{status.Status:04X} {status.get('ErrorComment')}"
    finally:
        assoc.release()


def test_dcmsend_keeps_every_transfer_syntax(
    archive: Archive, dicom_node: RunningNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples, generated = _sample_files(), _factory_files(tmp_path)
    by_sender: dict[str, list[Path]] = {}
    for path in samples + generated:
        syntax = _transfer_syntax(path)
        sender = "pynetdicom" if syntax in SENT_WITH_PYNETDICOM else SENT_WITH_STORESCU.get(syntax, "dcmsend")
        by_sender.setdefault(sender, []).append(path)

    # -dn: never decompress. dcmsend then proposes a compressed file's syntax alone, and uses one
    # association for all files as long as the contexts fit.
    result = run_dcmtk(DCMSEND, "-dn", *node_args(dicom_node), *map(str, by_sender.pop("dcmsend")))
    assert result.returncode == 0, result.stdout + result.stderr
    send_chunked(dicom_node, by_sender.pop("pynetdicom"), monkeypatch)
    for option, paths in by_sender.items():
        result = run_dcmtk(STORESCU, option, "-R", "+C", *node_args(dicom_node), *map(str, paths))
        assert result.returncode == 0, result.stdout + result.stderr

    problems = []
    for path in samples + generated:
        ds = dcmread(path, stop_before_pixels=True)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        versions = stored_versions(archive, str(ds.SOPInstanceUID))
        if [ts for ts, _ in versions] != [syntax]:
            problems.append(f"{path.name}: stored as {[ts for ts, _ in versions]}, sent as {syntax}")
        # DCMTK re-encodes what it sends (it drops dataset trailing padding, re-deflates, rewrites
        # item lengths), so the samples' bytes are compared in the next test; the generated files
        # are canonical and go over the wire unchanged.
        elif path in generated and versions[0][1] != dataset_bytes(path.read_bytes()):
            problems.append(f"{path.name}: stored in {syntax} but the dataset bytes differ")
    assert not problems, "\n".join(problems)


def test_sample_bytes_are_stored_unchanged(
    archive: Archive, dicom_node: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every real-world sample, sent byte for byte in its own syntax, is stored byte for byte."""
    samples = _sample_files()
    send_chunked(dicom_node, samples, monkeypatch)
    for path in samples:
        ds = dcmread(path, stop_before_pixels=True)
        syntax, stored = stored_current(archive, str(ds.SOPInstanceUID))
        assert syntax == ds.file_meta.TransferSyntaxUID, path.name
        assert stored == dataset_bytes(path.read_bytes()), f"{path.name}: stored dataset differs"


# -- negotiation keeps the sender's order ----------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "first_proposed", "stored"),
    [
        ("-xb", "=BigEndianExplicit", ExplicitVRBigEndian),
        ("-xi", "=LittleEndianImplicit", ImplicitVRLittleEndian),
        ("-xe", "=LittleEndianExplicit", ExplicitVRLittleEndian),
    ],
)
def test_storescu_first_proposed_syntax_is_stored(
    archive: Archive, dicom_node: RunningNode, tmp_path: Path, option: str, first_proposed: str, stored: str
) -> None:
    ds = diconde_dx(part_id="NEGOTIATION", rows=32, columns=32)
    path = write(ds, tmp_path / "dx.dcm")
    result = run_dcmtk(STORESCU, "-d", option, "-R", "+C", *node_args(dicom_node), str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    # What storescu proposed for its one context, in its order.
    log = (result.stdout + result.stderr).splitlines()
    start = log.index("D:     Proposed Transfer Syntax(es):")
    assert log[start + 1].split()[-1] == first_proposed

    assert archive.retrieve.current(ds.SOPInstanceUID).transfer_syntax_uid == stored


@pytest.mark.parametrize(
    "proposed",
    [[JPEG2000Lossless, ExplicitVRLittleEndian], [ExplicitVRLittleEndian, JPEG2000Lossless]],
    ids=["j2k-first", "explicit-first"],
)
def test_pynetdicom_first_proposed_syntax_is_accepted(dicom_node: RunningNode, proposed: list[str]) -> None:
    ae = AE(ae_title="ORDER_SCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, proposed)
    assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
    try:
        assert assoc.is_established
        [context] = assoc.accepted_contexts
        assert context.transfer_syntax == [proposed[0]]
    finally:
        assoc.release()


def test_each_context_of_one_sop_class_gets_its_own_first_choice(dicom_node: RunningNode) -> None:
    """An RLE original proposed as [RLE, explicit LE] beside an [explicit LE] context of the same SOP
    class must get RLE: taking one order per SOP class would decompress it in flight."""
    ae = AE(ae_title="ORDER_SCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [RLELossless, ExplicitVRLittleEndian])
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian, RLELossless])
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ImplicitVRLittleEndian])
    assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
    try:
        assert assoc.is_established
        accepted = sorted(assoc.accepted_contexts, key=lambda cx: cx.context_id or 0)
        assert [cx.transfer_syntax for cx in accepted] == [
            [RLELossless],
            [ExplicitVRLittleEndian],
            [ImplicitVRLittleEndian],
        ]
    finally:
        assoc.release()


def test_dcmsend_uncompressed_file_is_stored_in_dcmsends_first_proposal(
    archive: Archive, dicom_node: RunningNode, tmp_path: Path
) -> None:
    """dcmsend puts explicit VR LE before the file's own big endian; the archive takes the first."""
    ds = diconde_dx(part_id="BE-VIA-DCMSEND", rows=32, columns=32)
    path = write(ds, tmp_path / "be.dcm", ExplicitVRBigEndian)
    result = run_dcmtk(DCMSEND, "-d", "-dn", *node_args(dicom_node), str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    log = (result.stdout + result.stderr).splitlines()
    start = log.index("D:     Proposed Transfer Syntax(es):")
    assert log[start + 1].split()[-1] == "=LittleEndianExplicit"
    assert archive.retrieve.current(ds.SOPInstanceUID).transfer_syntax_uid == ExplicitVRLittleEndian


# -- every storage SOP class ----------------------------------------------------------------------
def test_every_storage_sop_class_is_accepted_in_explicit_little_endian(dicom_node: RunningNode) -> None:
    classes = storage_sop_classes()
    assert len(classes) > 100  # DX, CR, CT, Enhanced CT, US, SC, Raw Data, ... (sanity of the list itself)
    for start in range(0, len(classes), 128):
        batch = classes[start : start + 128]
        ae = AE(ae_title="ALL_CLASSES")
        for uid in batch:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian])
        assoc = ae.associate(dicom_node.host, dicom_node.port, ae_title=dicom_node.ae_title)
        try:
            assert assoc.is_established
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
            assert set(batch) - accepted == set(), f"rejected: {sorted(set(batch) - accepted)}"
            assert all(cx.transfer_syntax == [ExplicitVRLittleEndian] for cx in assoc.accepted_contexts)
        finally:
            assoc.release()
