"""What an object store holds, as the tests look at it: its objects, and the local files of objects
still on their way in (a filesystem store's ``.staging`` folder, an S3 store's spool files).

An object being received is written to such a file and named only once whole, so "nothing was kept"
means neither an object nor a staged file: a failed or cut-off store must remove both.
"""

from __future__ import annotations

from storage import ObjectStore


def staged_files(store: ObjectStore) -> list[str]:
    """Names of the store's local files of objects not committed (or not cleaned up), however young."""
    return sorted(info.key for info in store.stale_staging(older_than=float("-inf")))


def contents(store: ObjectStore) -> set[str]:
    """The keys of the stored objects and, marked ``staged:``, the staged files."""
    return {info.key for info in store.iter_objects()} | {f"staged:{name}" for name in staged_files(store)}
