"""Object storage: immutable, opaque objects addressed by key.

The archive keeps every received DICOM object byte-exact here; what the bytes *mean* lives in the
metadata index (``pacs.index``). This package knows nothing about DICOM and imports nothing of the
project, so a backend can be tested (and replaced) on its own.

Contract shared by every backend (``tests/unit/storage/test_contract.py`` runs it on each):

* ``put_file`` and ``ObjectWriter.commit`` return only once the object is durable (fsync on a
  filesystem, a completed upload on S3). A key is written once: reusing one raises
  :class:`ObjectExists`.
* ``open`` / ``read_range`` / ``stat`` raise :class:`ObjectNotFound` for a missing key.
* ``delete`` of a missing key is not an error (deletes are retried by purges and undo paths).
"""

from __future__ import annotations

from storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    StorageError,
    StorageFull,
)
from storage.url import StoreURLError, open_store

__all__ = [
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectWriter",
    "StorageError",
    "StorageFull",
    "StoreURLError",
    "open_store",
]
