"""Is a version's stored object still what arrived? One check, used by fsck, storage commitment
and the repair of a damaged object by an identical re-send."""

from __future__ import annotations

from dataclasses import dataclass

from pacs.dicom.digest import hash_part10_file
from pacs.index.repository import VersionRow
from storage import ObjectNotFound, ObjectStore, StorageError


@dataclass
class ObjectProblem:
    kind: str  # missing, size, unreadable, corrupt
    key: str
    detail: str


def check_object(store: ObjectStore, version: VersionRow, *, quick: bool = False) -> ObjectProblem | None:
    """``None`` when the object exists with the recorded size and (unless ``quick``) both SHA-256
    digests recorded at ingest; otherwise what is wrong. A full check reads the object once, as a
    stream; a quick one only asks the store for its size."""
    key = version.object_key
    try:
        if quick:
            size = store.stat(key).size
        else:
            with store.open(key) as f:
                digests = hash_part10_file(f, version.dataset_offset)
            size = digests.size
    except ObjectNotFound:
        return ObjectProblem("missing", key, f"object {key} is missing")
    except (StorageError, OSError) as exc:
        return ObjectProblem("unreadable", key, f"object {key}: {exc}")
    if size != version.size:
        return ObjectProblem("size", key, f"object {key} has {size} bytes, the index recorded {version.size}")
    if quick:
        return None
    if digests.dataset_sha256 != version.dataset_sha256:
        return ObjectProblem(
            "corrupt",
            key,
            f"object {key}: dataset SHA-256 {digests.dataset_sha256}, "
            f"the index recorded {version.dataset_sha256}",
        )
    if digests.file_meta_sha256 != version.file_meta_sha256:
        detail = f"object {key}: file meta differs from what was stored (SHA-256)"
        return ObjectProblem("corrupt", key, detail)
    return None
