"""A query as data: what to find (level and information model), how each attribute must match, and
which attributes to return.

One model for both faces: :mod:`pacs.query.identifier` builds it from a C-FIND identifier, QIDO-RS
will build it from its parameters, and :mod:`pacs.query.sql` is the only place that turns it into
SQL. Values are plain Python strings (already decoded from their character set), tags plain ints,
so nothing here depends on pydicom or pynetdicom.

Matching types are those of PS3.4 C.2.2.2: universal (C.2.2.2.3), single value (C.2.2.2.1),
wildcard (C.2.2.2.4), range (C.2.2.2.5), list of UIDs (C.2.2.2.2), sequence (C.2.2.2.6), and
multiple values (C.2.2.2.8), which matches when any of its values matches.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Level(enum.StrEnum):
    """Query/Retrieve Level (0008,0052) values, read the NDE way."""

    PATIENT = "PATIENT"  # component
    STUDY = "STUDY"  # inspection
    SERIES = "SERIES"
    IMAGE = "IMAGE"  # instance

    @property
    def depth(self) -> int:
        return _DEPTH[self]

    @property
    def entity(self) -> str:
        """The archive's name of the entity at this level (the index table that holds it)."""
        return _ENTITY[self]


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}
_ENTITY = {
    Level.PATIENT: "component",
    Level.STUDY: "inspection",
    Level.SERIES: "series",
    Level.IMAGE: "instance",
}


class InformationModel(enum.StrEnum):
    """The Query/Retrieve information models the archive answers (PS3.4 C.6.1 and C.6.2)."""

    PATIENT_ROOT = "patient root"
    STUDY_ROOT = "study root"

    @property
    def levels(self) -> tuple[Level, ...]:
        """The levels of the model, top down. In the Study Root model the patient's attributes are
        attributes of the study (PS3.4 C.6.2.1)."""
        if self is InformationModel.PATIENT_ROOT:
            return (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
        return (Level.STUDY, Level.SERIES, Level.IMAGE)


# -- matchers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Universal:
    """Zero-length value (or ``*`` alone): every entity matches, even one without a value."""


@dataclass(frozen=True)
class SingleValue:
    """Equal to ``value``: case-sensitive, except person names (the archive's PN policy)."""

    value: str


@dataclass(frozen=True)
class Wildcard:
    """``*`` matches any sequence of characters (also none), ``?`` exactly one."""

    pattern: str


@dataclass(frozen=True)
class Range:
    """Dates, times or date-times from ``start`` to ``end`` inclusive; ``None`` leaves that side open.

    Bounds are as the request gave them (``YYYYMMDD``, ``HHMMSS.FFFFFF`` and shorter forms,
    ``YYYYMMDDHHMMSS.FFFFFF``); a shorter bound covers the whole period it names, so a range
    ending at ``1015`` includes 10:15:59.
    """

    start: str | None
    end: str | None


@dataclass(frozen=True)
class UidList:
    """Any of these UIDs (a backslash-separated list in DICOM)."""

    uids: tuple[str, ...]


@dataclass(frozen=True)
class AnyOf:
    """Multiple values: matches when any of ``matchers`` matches (PS3.4 C.2.2.2.8)."""

    matchers: tuple[ValueMatcher, ...]


@dataclass(frozen=True)
class SequenceMatch:
    """Sequence matching with the one item of the request (PS3.4 C.2.2.2.6): an entity matches if
    one of its items matches every key of ``item``; the response carries those items with the
    keys of ``item``. An empty ``item`` (a sequence with no item, or an empty one) is universal."""

    item: tuple[Key, ...]

    @property
    def is_universal(self) -> bool:
        return all(key.is_universal for key in self.item)


ValueMatcher = Universal | SingleValue | Wildcard | Range | UidList
Matcher = ValueMatcher | AnyOf | SequenceMatch


@dataclass(frozen=True)
class Key:
    """One attribute of a query: how it must match, and that it is returned (every key is)."""

    tag: int
    keyword: str  # "" for private or unknown attributes
    vr: str
    matcher: Matcher

    @property
    def is_universal(self) -> bool:
        m = self.matcher
        return isinstance(m, Universal) or (isinstance(m, SequenceMatch) and m.is_universal)

    @property
    def name(self) -> str:
        """How messages name the attribute: ``PatientName (0010,0010)``."""
        return describe_tag(self.tag, self.keyword)


@dataclass(frozen=True)
class Query:
    """A hierarchical query (PS3.4 C.4.1.2): the entities of ``level`` whose attributes match every
    key. ``character_set`` is the request's Specific Character Set (the defined terms, empty for
    the default repertoire); the response is written in it when every value fits.
    ``limit``/``offset`` page the results (QIDO-RS); C-FIND uses neither."""

    model: InformationModel
    level: Level
    keys: tuple[Key, ...]
    character_set: tuple[str, ...] = ()
    limit: int | None = None
    offset: int = 0

    @property
    def matching_keys(self) -> tuple[Key, ...]:
        return tuple(key for key in self.keys if not key.is_universal)

    def key(self, tag: int) -> Key | None:
        for key in self.keys:
            if key.tag == tag:
                return key
        return None


def describe_tag(tag: int, keyword: str = "") -> str:
    text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{keyword} {text}" if keyword else text


@dataclass(frozen=True)
class Match:
    """One entity that matches a query: the DICOM JSON (PS3.18 F) of the query's keys it has a value
    for. Sequences carry the items the response returns. Keys without a value are absent."""

    level: Level
    entity_id: int
    attributes: dict[str, dict[str, Any]]
