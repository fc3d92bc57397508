"""QIDO-RS query parameters → :class:`~pacs.query.model.Query`, and a match → its DICOM JSON result.

The same query model as C-FIND (:mod:`pacs.query.identifier`), so both faces match alike; only the
request syntax differs (PS3.18 8.3.4 and 10.6.1):

* ``{attribute}={value}``: the attribute by keyword (``PatientID``), by tag (``00100020``), or as a
  path into a sequence (``IndicationSequence.IndicationType``, sequence matching with one item);
  the value as in C-FIND: single value, ``*``/``?`` wildcards, date/time ranges ``A-B``, ``A-``,
  ``-B``. A UID attribute takes a list of UIDs separated by commas (or backslashes); any attribute
  repeated, or with values separated by backslashes, matches when any of its values does
  (PS3.4 C.2.2.2.8). Texts (LT, ST, UT) are never split.
* ``includefield``: keywords, tags, or ``all``; repeated or comma-separated.
* ``limit`` / ``offset``: a page of the results, ``limit`` at most :data:`MAX_LIMIT`,
  :data:`DEFAULT_LIMIT` when absent.
* ``fuzzymatching=false`` is accepted; ``true`` is refused: the archive does no fuzzy semantic
  matching, and person names already match regardless of case (the archive's person name policy).

QIDO-RS searches are relational across the levels above the target (``/series?PatientID=..``):
keys of the target level and above are matched. A key of a level below the target cannot be
matched and is refused; asked for with ``includefield`` it is left out of the results (viewers ask
study searches for ``Modality``).

Every error is an :class:`InvalidQuery` naming the parameter or attribute at fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from pacs.errors import InvalidQuery
from pacs.query.attributes import FromResponse, attribute_for, query_attributes, tag_hex
from pacs.query.identifier import is_uid as _is_uid
from pacs.query.identifier import matcher_for
from pacs.query.match import NUMERIC_VRS
from pacs.query.model import (
    InformationModel,
    Key,
    Level,
    Match,
    Matcher,
    Query,
    SequenceMatch,
    SingleValue,
    Universal,
    describe_tag,
)

#: Results per response when the request gives no ``limit``.
DEFAULT_LIMIT = 100
#: The largest page a request may ask for; a larger ``limit`` is lowered to it, with a warning.
MAX_LIMIT = 1000

RETRIEVE_URL = 0x00081190
INSTANCE_AVAILABILITY = 0x00080056
SPECIFIC_CHARACTER_SET = 0x00080005
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018

#: The parameters that are not attributes (PS3.18 8.3.4); ``accept`` and ``charset`` are the HTTP
#: face's (PS3.18 8.3.3.1).
CONTROL_PARAMETERS = ("includefield", "limit", "offset", "fuzzymatching")

# The attributes each level returns by default (PS3.18 Table 10.6.3-3, -4 and -5). The unique keys
# of the levels above the target come back too, so that every result names its resource.
_STUDY_DEFAULTS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
_SERIES_DEFAULTS = (
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "RetrieveURL",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
_INSTANCE_DEFAULTS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
_DEFAULTS = {Level.STUDY: _STUDY_DEFAULTS, Level.SERIES: _SERIES_DEFAULTS, Level.IMAGE: _INSTANCE_DEFAULTS}

# Filled by the response, never matched (a value in the request is refused).
_RESPONSE_ONLY = frozenset({RETRIEVE_URL, INSTANCE_AVAILABILITY, SPECIFIC_CHARACTER_SET})
_SPLIT_NEVER = frozenset({"LT", "ST", "UT"})
_MATCHABLE_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
    | NUMERIC_VRS
)


@dataclass(frozen=True)
class QidoSearch:
    """A QIDO-RS search: the :attr:`query` to run and how to write its results.

    ``query.limit`` is one more than :attr:`limit`, so that the search tells whether more results
    follow the page; :meth:`page` keeps the page and says so.
    """

    query: Query
    limit: int
    offset: int
    warnings: tuple[str, ...] = ()
    #: Keys asked for by ``includefield=all``: returned only when they have a value.
    optional: frozenset[int] = field(default_factory=frozenset)
    #: Keys of the results beside the query's (Retrieve URL, Instance Availability).
    response_keys: frozenset[int] = field(default_factory=frozenset)

    def page(self, matches: Iterable[Match]) -> tuple[list[Match], bool]:
        """The matches of the page, and whether more follow it."""
        found = list(matches)
        return found[: self.limit], len(found) > self.limit

    def result(self, found: Match, base_url: str) -> dict[str, Any]:
        """The DICOM JSON (PS3.18 F.2) of one match; ``base_url`` is the DICOMweb root for the
        Retrieve URL (``http://host:port/dicom-web``). Attributes without a value are present and
        empty, except those asked for only by ``includefield=all``."""
        out: dict[str, Any] = {}
        for key in self.query.keys:
            tag = tag_hex(key.tag)
            element = found.attributes.get(tag)
            if element is None:
                if key.tag in self.optional:
                    continue
                element = {"vr": key.vr.split(" or ")[0]}  # the dictionary's "OB or OW": one of them
            out[tag] = element
        if INSTANCE_AVAILABILITY in self.response_keys:
            # Every instance is in the object store, none near-line or off-line.
            out[tag_hex(INSTANCE_AVAILABILITY)] = {"vr": "CS", "Value": ["ONLINE"]}
        if RETRIEVE_URL in self.response_keys:
            out[tag_hex(RETRIEVE_URL)] = {"vr": "UR", "Value": [_retrieve_url(found, base_url)]}
        if any(not text.isascii() for text in _texts(out)):
            # DICOM JSON is UTF-8; say so the way a dataset would (PS3.18 F.2.1, Table 10.6.3-3).
            out[tag_hex(SPECIFIC_CHARACTER_SET)] = {"vr": "CS", "Value": ["ISO_IR 192"]}
        return dict(sorted(out.items()))


def qido_search(
    level: Level,
    parameters: Sequence[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> QidoSearch:
    """The search that ``parameters`` (the query string's name/value pairs, in order) ask of the
    entities of ``level``, inside the study and series given by the resource path.

    Results carry the default attributes of ``level`` and of the levels between it and the one the
    path names (PS3.18 10.6.3.3): ``/instances`` those of study, series and instance,
    ``/studies/{study}/instances`` those of series and instance; of the levels the path names,
    their unique keys.
    """
    named = Level.SERIES if series_uid else Level.STUDY if study_uid else None
    filters: dict[tuple[int, ...], list[str]] = {}
    names: dict[tuple[int, ...], str] = {}
    includes: list[str] = []
    controls: dict[str, str] = {}
    for name, value in parameters:
        if "\x00" in name or "\x00" in value:
            # No attribute holds a NUL (ingest drops them from the index), and URLs carry no padding.
            raise InvalidQuery(f"a NUL character in the query parameter {name!r}")
        if name == "includefield":
            includes.extend(part.strip() for part in value.split(",") if part.strip())
        elif name in CONTROL_PARAMETERS:
            if name in controls:
                raise InvalidQuery(f"{name} given more than once")
            controls[name] = value
        else:
            path = _attribute_path(name)
            names.setdefault(path, name)
            filters.setdefault(path, []).append(value)
    _fuzzy_matching(controls.get("fuzzymatching"))
    limit, warnings = _limit(controls.get("limit"))
    offset = _count("offset", controls.get("offset"), 0)

    keys: dict[int, Key] = {}
    for tag, uid in ((STUDY_INSTANCE_UID, study_uid), (SERIES_INSTANCE_UID, series_uid)):
        if uid is None:
            continue
        if (tag,) in filters:
            raise InvalidQuery(f"{_describe(tag)} is given by the resource path, not as a parameter", tag)
        keys[tag] = _path_key(tag, uid)

    for tag, paths in _group(filters).items():
        key = _key(tag, paths, filters)
        _check_level(key, level)
        keys[tag] = key
    response_keys: set[int] = set()
    for tag in _returned(level, named):
        if tag in _RESPONSE_ONLY:
            response_keys.add(tag)
        elif tag not in keys:
            keys[tag] = _universal(tag)
    optional: set[int] = set()
    for text in includes:
        if text == "all":
            for tag in _all_attributes(level):
                if tag not in keys and tag not in _RESPONSE_ONLY:
                    keys[tag] = _universal(tag)
                    optional.add(tag)
            continue
        tag = _attribute_path(text, parameter="includefield")[0]
        if tag in _RESPONSE_ONLY:
            response_keys.add(tag)
        elif not _below(tag, level):  # a lower level's attribute is left out (module docstring)
            optional.discard(tag)
            keys.setdefault(tag, _universal(tag))
    query = Query(
        model=InformationModel.STUDY_ROOT,
        level=level,
        keys=tuple(keys.values()),
        limit=limit + 1,
        offset=offset,
    )
    return QidoSearch(query, limit, offset, tuple(warnings), frozenset(optional), frozenset(response_keys))


# -- parameters -----------------------------------------------------------------------------------
def _attribute_path(text: str, parameter: str | None = None) -> tuple[int, ...]:
    """``PatientID``, ``00100020`` or ``IndicationSequence.IndicationType`` → its tags."""
    tags = []
    for part in text.split("."):
        tag = _tag(part)
        if tag is None:
            where = f"includefield={text!r}" if parameter else repr(text)
            raise InvalidQuery(
                f"unknown parameter or attribute: {where} (an attribute keyword such as PatientID, "
                f"a tag such as 00100020, or one of {', '.join(CONTROL_PARAMETERS)})"
            )
        tags.append(tag)
    for tag in tags[:-1]:
        if attribute_for(tag).vr != "SQ":
            raise InvalidQuery(f"not a sequence, cannot hold {text!r}: {_describe(tag)}", tag)
    return tuple(tags)


def _tag(text: str) -> int | None:
    if len(text) == 8:
        try:
            return int(text, 16)
        except ValueError:
            pass
    if text.isidentifier():
        return tag_for_keyword(text)
    return None


def _fuzzy_matching(value: str | None) -> None:
    if value is None or value == "false":
        return
    if value == "true":
        raise InvalidQuery(
            "fuzzymatching=true is not supported: the archive matches values literally, and person "
            "names regardless of case; send fuzzymatching=false or leave it out"
        )
    raise InvalidQuery(f"fuzzymatching must be true or false, not {value!r}")


def _limit(value: str | None) -> tuple[int, list[str]]:
    limit = _count("limit", value, DEFAULT_LIMIT, minimum=1)
    if limit > MAX_LIMIT:
        return MAX_LIMIT, [
            f"The limit {limit} exceeds the maximum of {MAX_LIMIT} results per request; "
            f"at most {MAX_LIMIT} are returned."
        ]
    return limit, []


def _count(name: str, value: str | None, default: int, minimum: int = 0) -> int:
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or int(value) < minimum:
        kind = "a positive integer" if minimum else "a non-negative integer"
        raise InvalidQuery(f"{name} must be {kind}, not {value!r}")
    return int(value)


# -- keys -----------------------------------------------------------------------------------------
def _group(filters: dict[tuple[int, ...], list[str]]) -> dict[int, list[tuple[int, ...]]]:
    grouped: dict[int, list[tuple[int, ...]]] = {}
    for path in filters:
        grouped.setdefault(path[0], []).append(path)
    return grouped


def _path_key(tag: int, uid: str) -> Key:
    """The key of a UID the resource path names: that one UID, exactly. A path segment is not a
    query value: ``/studies/*/series`` names no study (no wildcard, list or universal matching)."""
    if not _is_uid(uid):
        raise InvalidQuery(f"not a UID in the resource path: {_describe(tag)} {uid[:80]!r}", tag)
    return Key(tag, attribute_for(tag).keyword, "UI", SingleValue(uid))


def _key(tag: int, paths: list[tuple[int, ...]], filters: dict[tuple[int, ...], list[str]]) -> Key:
    """The key of ``tag`` from the filters on it (``paths`` all start with ``tag``)."""
    attribute = attribute_for(tag)
    name = _describe(tag)
    given = any(value for value in filters.get((tag,), []))
    if tag in _RESPONSE_ONLY or (isinstance(attribute.source, FromResponse) and given):
        raise InvalidQuery(f"cannot match on {name}: the archive fills it in the results", tag)
    if attribute.vr == "SQ":
        if (tag,) in filters and any(value for value in filters[(tag,)]):
            raise InvalidQuery(f"a sequence matches through its items: {name}.<attribute>=<value>", tag)
        inner = [path[1:] for path in paths if len(path) > 1]
        sub = {path[1:]: filters[path] for path in paths if len(path) > 1}
        item = tuple(_key(t, [p for p in inner if p[0] == t], sub) for t in _group(sub))
        return Key(tag, attribute.keyword, "SQ", SequenceMatch(item))
    return Key(tag, attribute.keyword, attribute.vr, _matcher(filters[(tag,)], attribute.vr, name, tag))


def _matcher(raw: list[str], vr: str, name: str, tag: int) -> Matcher:
    values: list[str] = []
    for value in raw:
        if vr in _SPLIT_NEVER:
            values.append(value)
        else:
            values.extend(value.replace(",", "\\").split("\\") if vr == "UI" else value.split("\\"))
    if any(values) and vr not in _MATCHABLE_VRS:
        raise InvalidQuery(f"cannot match on a {vr} value: {name}", tag)
    return matcher_for(values, vr, name, tag)


def _universal(tag: int) -> Key:
    attribute = attribute_for(tag)
    matcher: Matcher = SequenceMatch(()) if attribute.vr == "SQ" else Universal()
    return Key(tag, attribute.keyword, attribute.vr, matcher)


def _check_level(key: Key, level: Level) -> None:
    if _below(key.tag, level) and not key.is_universal:
        home = attribute_for(key.tag).home_level(InformationModel.STUDY_ROOT)
        raise InvalidQuery(
            f"{key.name} is a {home} attribute and cannot be matched in a {level} search; "
            f"search {_RESOURCE_OF[home] if home else 'its level'} instead",
            key.tag,
        )


_RESOURCE_OF = {Level.STUDY: "/studies", Level.SERIES: "/series", Level.IMAGE: "/instances"}


def _below(tag: int, level: Level) -> bool:
    home = attribute_for(tag).home_level(InformationModel.STUDY_ROOT)
    return home is not None and home.depth > level.depth


def _returned(level: Level, named: Level | None) -> list[int]:
    """The attributes returned by default, top level first; ``named`` is the deepest level the
    resource path names."""
    tags: list[int] = []
    for upper in (Level.STUDY, Level.SERIES, Level.IMAGE)[: level.depth]:
        defaults: list[int | None]
        if named is not None and upper.depth <= named.depth:
            defaults = [_UNIQUE[upper]]  # to build the Retrieve URL
        else:
            defaults = [tag_for_keyword(keyword) for keyword in _DEFAULTS[upper]]
        tags.extend(tag for tag in defaults if tag is not None and tag not in tags)
    return tags


_UNIQUE = {Level.STUDY: STUDY_INSTANCE_UID, Level.SERIES: SERIES_INSTANCE_UID, Level.IMAGE: SOP_INSTANCE_UID}


def _all_attributes(level: Level) -> list[int]:
    """``includefield=all``: every attribute the archive keeps for ``level`` and the levels above."""
    return [
        tag
        for tag, attribute in query_attributes().items()
        if not isinstance(attribute.source, FromResponse) and not _below(tag, level)
    ]


def _describe(tag: int) -> str:
    return describe_tag(tag, keyword_for_tag(tag) or "")


# -- results --------------------------------------------------------------------------------------
def _retrieve_url(found: Match, base_url: str) -> str:
    """The WADO-RS URL of the matched study, series or instance (PS3.18 10.4.1)."""
    parts = [("studies", STUDY_INSTANCE_UID)]
    if found.level.depth >= Level.SERIES.depth:
        parts.append(("series", SERIES_INSTANCE_UID))
    if found.level is Level.IMAGE:
        parts.append(("instances", SOP_INSTANCE_UID))
    url = base_url.rstrip("/")
    for resource, tag in parts:
        values = found.attributes.get(tag_hex(tag), {}).get("Value") or [""]
        url += f"/{resource}/{values[0]}"
    return url


def _texts(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
