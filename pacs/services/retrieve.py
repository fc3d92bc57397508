"""Read stored instances back: the current version, or any earlier one kept as evidence."""

from __future__ import annotations

from typing import BinaryIO

from pacs.errors import NotFound, ResourceUnavailable
from pacs.index.repository import IndexRepository, VersionRow
from storage import ObjectNotFound, ObjectStore, StorageError


class RetrieveService:
    def __init__(self, index: IndexRepository, store: ObjectStore) -> None:
        self.index = index
        self.store = store

    def versions(self, sop_instance_uid: str) -> list[VersionRow]:
        """Every version of the instance, oldest first; :class:`NotFound` if there is none."""
        rows = self.index.versions(sop_instance_uid)
        if not rows:
            raise NotFound(f"no instance {sop_instance_uid}")
        return rows

    def current(self, sop_instance_uid: str) -> VersionRow:
        row = self.index.current_version(sop_instance_uid)
        if row is None:
            raise NotFound(f"no instance {sop_instance_uid}")
        return row

    def open(self, version: VersionRow) -> BinaryIO:
        """The stored Part 10 bytes of ``version``, exactly as received."""
        try:
            return self.store.open(version.object_key)
        except ObjectNotFound:
            raise NotFound(
                f"object {version.object_key} of {version.sop_instance_uid} is missing from the store "
                "(run `pacs fsck`)"
            ) from None
        except StorageError as exc:
            raise ResourceUnavailable(f"cannot read {version.sop_instance_uid}: {exc}") from exc
