"""What an object store holds, as the tests look at it: its objects, and the local files of objects
still on their way in (a filesystem store's ``.staging`` folder, an S3 store's spool files).

An object being received is written to such a file and named only once whole, so "nothing was kept"
means neither an object nor a staged file: a failed or cut-off store must remove both.
"""

from __future__ import annotations

from storage import ObjectStore
from storage.filesystem import FilesystemStore
from storage.s3 import S3Store


def staged_files(store: ObjectStore) -> list[str]:
    """Names of the store's local files of objects not committed (or not cleaned up)."""
    if isinstance(store, FilesystemStore):
        folder, pattern = store.root / ".staging", "*"
    elif isinstance(store, S3Store):
        folder, pattern = store.staging_dir, "s3-*.part"
    else:
        raise TypeError(f"no staging folder known for {type(store).__name__}")
    return sorted(path.name for path in folder.glob(pattern))


def contents(store: ObjectStore) -> set[str]:
    """The keys of the stored objects and, marked ``staged:``, the staged files."""
    return {info.key for info in store.iter_objects()} | {f"staged:{name}" for name in staged_files(store)}
