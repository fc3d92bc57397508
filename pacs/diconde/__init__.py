"""The DICONDE vocabulary: which attributes the index keeps per level and what they mean in NDE.

The table is data (``attributes.csv``, with its source noted there); this module loads it once and
turns a dataset's values into column values.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

Level = Literal["component", "inspection", "series", "instance"]
LEVELS: tuple[Level, ...] = ("component", "inspection", "series", "instance")


@dataclass(frozen=True)
class IndexedAttribute:
    level: Level
    keyword: str
    tag: int
    vr: str
    column: str
    nde_name: str

    @property
    def python_type(self) -> type:
        if self.vr in ("IS", "US", "SS", "UL", "SL"):
            return int
        if self.vr in ("DS", "FL", "FD"):
            return float
        return str

    def value_from(self, ds: Dataset) -> Any:
        """The column value for this attribute in ``ds``; ``None`` when absent or empty.

        Multi-valued strings keep all values joined by a backslash, as in DICOM; numbers keep the
        first value (the attributes indexed as numbers are single-valued by definition).
        """
        elem = ds.get(self.tag)
        if elem is None or elem.is_empty:
            return None
        value = elem.value
        kind = self.python_type
        if kind is str:
            if isinstance(value, MultiValue):
                return without_nul("\\".join(str(v) for v in value))
            return without_nul(str(value))
        if isinstance(value, MultiValue):
            value = value[0]
        try:
            return kind(value)
        except (TypeError, ValueError):
            return None


def without_nul(text: str) -> str:
    """Devices sometimes pad or terminate strings with NUL; PostgreSQL text cannot hold it, and it
    carries no meaning in an index (the stored object keeps the original bytes)."""
    return text.replace("\x00", "") if "\x00" in text else text


def person_name_key(name: str | None) -> str | None:
    """The form of a person name (PN) the index matches on: case-folded, so matching ignores case
    (the archive's person name policy, docs/conformance.md). ``None`` stays ``None``."""
    return None if name is None else name.casefold()


@cache
def indexed_attributes() -> dict[Level, tuple[IndexedAttribute, ...]]:
    text = resources.files(__package__).joinpath("attributes.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    by_level: dict[Level, list[IndexedAttribute]] = {level: [] for level in LEVELS}
    for row in rows:
        level = row["level"]
        if level not in by_level:
            raise ValueError(f"attributes.csv: unknown level {level!r} for {row['keyword']}")
        tag = tag_for_keyword(row["keyword"])
        if tag is None:
            raise ValueError(f"attributes.csv: {row['keyword']!r} is not a DICOM keyword")
        by_level[level].append(  # type: ignore[index]
            IndexedAttribute(
                level=level,  # type: ignore[arg-type]
                keyword=row["keyword"],
                tag=tag,
                vr=dictionary_VR(tag),
                column=row["column"],
                nde_name=row["nde_name"],
            )
        )
    return {level: tuple(attrs) for level, attrs in by_level.items()}


def column_values(level: Level, ds: Dataset) -> dict[str, Any]:
    """The indexed column values of one level, read from ``ds``."""
    return {attr.column: attr.value_from(ds) for attr in indexed_attributes()[level]}
