"""Resolving a retrieve to current versions from the index alone, and the local copy of each object
to send (in place on a filesystem store, a temporary copy from S3). Both backend pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from sqlalchemy import create_engine

from pacs.archive import Archive
from pacs.context import CallerContext
from pacs.dicom.retrieve_keys import InformationModel, RetrieveRequest
from pacs.errors import NotFound, ResourceUnavailable
from pacs.index.repository import IndexRepository
from pacs.services.retrieve import RetrieveItem, RetrieveService
from tests.support.factories import diconde_dx, enhanced_ct, write

P, S = InformationModel.PATIENT_ROOT, InformationModel.STUDY_ROOT
IMPORT = CallerContext(via="import")


def uid(*parts: int) -> str:
    return "1.2.826.0.1.3680043.10.543.7." + ".".join(map(str, parts))


@pytest.fixture
def stored(archive: Archive, tmp_path: Path) -> dict[str, str]:
    """Part A: study 1 (series 1: instances 1-3, series 2: instance 4), study 2 (instance 5);
    part B: study 3 (instance 6). Stored out of order; instance 2 twice (two versions)."""
    layout = [
        # name, part, study, series, series number, instance number
        ("i3", "A", 1, 1, 1, 3),
        ("i4", "A", 1, 2, 2, 1),
        ("i1", "A", 1, 1, 1, 1),
        ("i2", "A", 1, 1, 1, 2),
        ("i5", "A", 2, 3, 1, 1),
        ("i6", "B", 3, 4, 1, 1),
    ]
    names = {}
    for n, (name, part, study, series, series_number, number) in enumerate(layout):
        ds = diconde_dx(
            part_id=part,
            rows=16,
            columns=16,
            seed=n,
            study_uid=uid(study),
            series_uid=uid(study, series),
            sop_uid=uid(study, series, number),
            SeriesNumber=series_number,
            InstanceNumber=number,
        )
        archive.ingest.ingest_file(write(ds, tmp_path / f"{name}.dcm"), IMPORT)
        names[name] = ds.SOPInstanceUID
    # A second version of i2 (other pixels): the retrieve sends the current one only.
    again = diconde_dx(
        part_id="A",
        rows=16,
        columns=16,
        seed=99,
        study_uid=uid(1),
        series_uid=uid(1, 1),
        sop_uid=names["i2"],
        SeriesNumber=1,
        InstanceNumber=2,
    )
    archive.ingest.ingest_file(write(again, tmp_path / "i2-v2.dcm"), IMPORT)
    return names


def resolved(archive: Archive, request: RetrieveRequest) -> list[str]:
    return [item.sop_instance_uid for item in archive.retrieve.resolve(request)]


def test_each_level_in_hierarchy_order(archive: Archive, stored: dict[str, str]) -> None:
    s = stored
    assert resolved(archive, RetrieveRequest(P, "PATIENT", "A")) == [
        s[n] for n in ("i1", "i2", "i3", "i4", "i5")
    ]
    assert resolved(archive, RetrieveRequest(S, "STUDY", None, (uid(3), uid(1)))) == [
        s[n] for n in ("i1", "i2", "i3", "i4", "i6")
    ]
    assert resolved(archive, RetrieveRequest(S, "SERIES", None, (uid(1),), (uid(1, 2), uid(1, 1)))) == [
        s[n] for n in ("i1", "i2", "i3", "i4")
    ]
    assert resolved(
        archive, RetrieveRequest(P, "IMAGE", "A", (uid(1),), (uid(1, 1),), (s["i3"], s["i1"]))
    ) == [
        s["i1"],
        s["i3"],
    ]


def test_keys_above_the_level_restrict_the_match(archive: Archive, stored: dict[str, str]) -> None:
    assert resolved(archive, RetrieveRequest(P, "STUDY", "B", (uid(1),))) == []  # study 1 is part A's
    assert resolved(archive, RetrieveRequest(S, "SERIES", None, (uid(2),), (uid(1, 1),))) == []
    assert resolved(archive, RetrieveRequest(S, "STUDY", None, ("1.2.3.404",))) == []


def test_the_current_version_is_what_is_sent(archive: Archive, stored: dict[str, str]) -> None:
    items = archive.retrieve.resolve(
        RetrieveRequest(S, "IMAGE", None, (uid(1),), (uid(1, 1),), (stored["i2"],))
    )
    assert len(items) == 1
    assert items[0].version == archive.retrieve.current(stored["i2"])
    assert len(archive.retrieve.versions(stored["i2"])) == 2
    assert items[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation, from the index


def test_long_uid_lists_are_queried_in_chunks(archive: Archive, stored: dict[str, str]) -> None:
    many = tuple(f"1.2.3.{i}" for i in range(1200)) + (stored["i5"], stored["i6"])
    request = RetrieveRequest(S, "IMAGE", None, (uid(2),), (uid(2, 3),), many)
    assert resolved(archive, request) == [stored["i5"]]


def item_of(archive: Archive, sop_instance_uid: str) -> RetrieveItem:
    items, unknown = archive.retrieve.resolve_uids([sop_instance_uid])
    assert unknown == []
    return items[0]


def test_resolve_uids_takes_uids_of_any_level_and_names_the_unknown(
    archive: Archive, stored: dict[str, str]
) -> None:
    s = stored
    items, unknown = archive.retrieve.resolve_uids([uid(2), s["i4"], "1.2.3.999", uid(1, 1), s["i4"]])
    # Study 2, series 1.1 and instance 4, each instance once, in hierarchy order; the current version.
    assert [i.sop_instance_uid for i in items] == [s[n] for n in ("i1", "i2", "i3", "i4", "i5")]
    assert items[1].version.id == archive.retrieve.current(s["i2"]).id
    assert unknown == ["1.2.3.999"]
    assert archive.retrieve.resolve_uids([" ", ""]) == ([], [])


def test_local_file_has_the_stored_dataset_behind_a_complete_file_meta(
    archive: Archive, stored: dict[str, str], backend: str, tmp_path: Path
) -> None:
    item = item_of(archive, stored["i1"])
    version = item.version
    with archive.retrieve.open(version) as f:
        expected = f.read()[version.dataset_offset :]
    scratch = tmp_path / "scratch"
    with archive.retrieve.local_file(item, scratch) as path:
        meta = read_file_meta_info(path)
        assert meta.MediaStorageSOPInstanceUID == stored["i1"]
        assert meta.MediaStorageSOPClassUID == item.sop_class_uid
        assert meta.TransferSyntaxUID == item.transfer_syntax_uid
        data = path.read_bytes()
        assert data.endswith(expected)
        assert dcmread(path).SOPInstanceUID == stored["i1"]
        copied = list(scratch.glob("*")) if scratch.exists() else []
    if backend == "sqlite+file":
        assert copied == []  # the object file itself, nothing copied
    else:
        assert copied == [path]  # streamed to the scratch folder ...
    assert not scratch.exists() or list(scratch.iterdir()) == []  # ... and removed after use


def sparse_meta_file(tmp_path: Path, part_id: str, damage: bool = False) -> tuple[str, bytes, Path]:
    """A Part 10 file whose file meta holds the transfer syntax only, as some imported files do:
    its SOP Instance UID, its dataset bytes and the file."""
    ds = diconde_dx(part_id=part_id, rows=8, columns=8)
    raw = write(ds, tmp_path / f"{part_id}-full.dcm").read_bytes()
    meta_end = 144 + int.from_bytes(raw[140:144], "little")  # after (0002,0000) Group Length's value
    dataset = raw[meta_end:]
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    path = tmp_path / f"{part_id}.dcm"
    with path.open("wb") as out:
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=False)  # type: ignore[arg-type]
        out.write(dataset)
    return str(ds.SOPInstanceUID), dataset, path


def test_a_stored_file_meta_without_media_storage_uids_is_completed_in_a_copy(
    archive: Archive, tmp_path: Path
) -> None:
    """pynetdicom sends from a file only when its file meta names the SOP class and instance."""
    sop_instance_uid, dataset, path = sparse_meta_file(tmp_path, "SPARSE")
    archive.ingest.ingest_file(path, IMPORT)
    item = item_of(archive, sop_instance_uid)
    scratch = tmp_path / "scratch"
    with archive.retrieve.local_file(item, scratch) as local:
        assert local.parent == scratch  # a copy on every backend
        assert read_file_meta_info(local).MediaStorageSOPInstanceUID == sop_instance_uid
        assert local.read_bytes().endswith(dataset)
    assert list(scratch.iterdir()) == []


def test_a_copy_whose_dataset_does_not_match_its_hash_is_refused(archive: Archive, tmp_path: Path) -> None:
    sop_instance_uid, _, path = sparse_meta_file(tmp_path, "DAMAGED")
    archive.ingest.ingest_file(path, IMPORT)
    item = item_of(archive, sop_instance_uid)
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF  # the same size, other bytes: found only by the hash
    path.write_bytes(bytes(damaged))
    archive.store.delete(item.version.object_key)
    archive.store.put_file(item.version.object_key, path)
    scratch = tmp_path / "scratch"
    with (
        pytest.raises(ResourceUnavailable, match=f"{sop_instance_uid} does not match its SHA-256"),
        archive.retrieve.local_file(item, scratch),
    ):
        pass
    assert list(scratch.iterdir()) == []


def test_local_file_of_a_missing_object_is_not_found(
    archive: Archive, stored: dict[str, str], tmp_path: Path
) -> None:
    item = item_of(archive, stored["i1"])
    archive.store.delete(item.version.object_key)
    with (
        pytest.raises(NotFound, match="missing from the store"),
        archive.retrieve.local_file(item, tmp_path),
    ):
        pass


def test_index_failures_are_resource_unavailable(archive: Archive, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    unreachable = IndexRepository(create_engine(f"sqlite:///{not_a_folder}/index.sqlite"))
    with pytest.raises(ResourceUnavailable, match="index unavailable"):
        RetrieveService(unreachable, archive.store).resolve(RetrieveRequest(P, "PATIENT", "A"))


@pytest.mark.parametrize("syntax", [str(ExplicitVRLittleEndian), str(RLELossless)])
def test_frame_is_read_by_byte_ranges_and_equals_the_frame_pydicom_reads(
    archive: Archive, tmp_path: Path, syntax: str
) -> None:
    ds = enhanced_ct(frames=3, rows=8, columns=8)
    path = write(ds, tmp_path / "ct.dcm", syntax)
    archive.ingest.ingest_file(path, IMPORT)
    version = archive.retrieve.current(ds.SOPInstanceUID)
    layout = archive.retrieve.metadata(version)["frames"]
    assert len(layout) == 3
    reference = dcmread(path)
    for number in (1, 3):
        got = archive.retrieve.frame(version, number, layout)
        if syntax == str(RLELossless):
            fragments = list(generate_fragmented_frames(reference.PixelData, number_of_frames=3))
            assert got == b"".join(fragments[number - 1])
        else:
            size = 8 * 8 * 2
            assert got == reference.PixelData[(number - 1) * size : number * size]
    with pytest.raises(NotFound, match="has 3 frame"):
        archive.retrieve.frame(version, 4)
