"""Matching in Python, on DICOM JSON elements: for the keys SQL cannot decide.

:mod:`pacs.query.sql` matches the indexed columns in SQL; what stays (attributes read from the
DICOM JSON, times and date-times, wildcards on multi-valued columns, sequences) is decided here,
with the same rules (PS3.4 C.2.2.2):

* an entity without a value for a key fails every matcher but universal matching;
* a multi-valued attribute matches when any of its values does;
* strings compare case-sensitively, person names (PN) case-insensitively (both sides case-folded,
  the archive's person name policy; :func:`pacs.diconde.person_name_key`);
* dates, times and date-times match by the period they name: ``1015`` is 10:15:00 to 10:15:59.999999,
  a time zone offset on a date-time is ignored;
* numbers (IS, DS, binary) compare as numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from pacs.query.attributes import tag_hex
from pacs.query.model import (
    AnyOf,
    Key,
    Matcher,
    Range,
    SequenceMatch,
    SingleValue,
    UidList,
    Universal,
    Wildcard,
)

NUMERIC_VRS = frozenset({"IS", "DS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})
TEMPORAL_VRS = frozenset({"DA", "TM", "DT"})

_TIME = re.compile(r"^(\d{2}(?:\d{2}(?:\d{2})?)?)(?:\.(\d{1,6}))?$")
_DATE = re.compile(r"^\d{8}$")
_DATETIME = re.compile(
    r"^(\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2})?)?)?)?)?)(?:\.(\d{1,6}))?([+-]\d{4})?$"
)
_DT_LOW = "00000101000000"
_DT_HIGH = "99991231235959"


# -- dates and times ------------------------------------------------------------------------------
def temporal_bounds(vr: str, text: str) -> tuple[str, str] | None:
    """The first and last moment ``text`` names, as strings of one length that compare in time
    order; ``None`` if ``text`` is not a valid DA, TM or DT value."""
    text = text.strip()
    if vr == "DA":
        text = text.replace(".", "") if len(text) == 10 else text  # ACR-NEMA "YYYY.MM.DD"
        return (text, text) if _DATE.match(text) else None
    if vr == "TM":
        if ":" in text and len(text) >= 5:  # ACR-NEMA "HH:MM:SS"
            text = text.replace(":", "")
        m = _TIME.match(text)
        if m is None:
            return None
        main, fraction = m.group(1), m.group(2) or ""
        if fraction and len(main) != 6:
            return None
        return (main.ljust(6, "0") + fraction.ljust(6, "0"), main.ljust(6, "9") + fraction.ljust(6, "9"))
    if vr == "DT":
        m = _DATETIME.match(text)
        if m is None:
            return None
        main, fraction = m.group(1), m.group(2) or ""
        if fraction and len(main) != 14:
            return None
        low = main + _DT_LOW[len(main) :] + fraction.ljust(6, "0")
        high = main + _DT_HIGH[len(main) :] + fraction.ljust(6, "9")
        return low, high
    raise ValueError(f"not a temporal VR: {vr}")


def range_bounds(vr: str, matcher: Range) -> tuple[str | None, str | None]:
    """The comparable bounds of a range (validated when the query was built)."""
    low = temporal_bounds(vr, matcher.start)[0] if matcher.start else None  # type: ignore[index]
    high = temporal_bounds(vr, matcher.end)[1] if matcher.end else None  # type: ignore[index]
    return low, high


# -- values of an element -------------------------------------------------------------------------
def element_values(element: Mapping[str, Any] | None) -> list[Any]:
    """The values of a DICOM JSON element: strings (person names as their DICOM string), numbers,
    or items (dicts) of a sequence. An element without values, or with bulk data, has none."""
    if not element:
        return []
    values = element.get("Value")
    if not values:
        return []
    if element.get("vr") == "PN":
        return [person_name_text(v) for v in values if v]
    return [v for v in values if v is not None and v != ""]


def person_name_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    groups = [value.get(name, "") for name in ("Alphabetic", "Ideographic", "Phonetic")]
    return "=".join(groups).rstrip("=")


# -- matching -------------------------------------------------------------------------------------
def matches(key: Key, element: Mapping[str, Any] | None) -> bool:
    """Whether an entity whose value of ``key`` is ``element`` (DICOM JSON, or ``None``) matches."""
    return _matches(key.matcher, key.vr, element)


def _matches(matcher: Matcher, vr: str, element: Mapping[str, Any] | None) -> bool:
    if isinstance(matcher, Universal):
        return True
    if isinstance(matcher, SequenceMatch):
        if matcher.is_universal:
            return True
        return bool(matching_items(matcher, element))
    values = element_values(element)
    if not values:
        return False
    return any(_value_matches(matcher, vr, value) for value in values)


def _value_matches(matcher: Matcher, vr: str, value: Any) -> bool:
    if isinstance(matcher, AnyOf):
        return any(_value_matches(m, vr, value) for m in matcher.matchers)
    if isinstance(matcher, Universal):
        return True
    if isinstance(matcher, UidList):
        return str(value) in matcher.uids
    if isinstance(matcher, SingleValue):
        if vr in NUMERIC_VRS:
            return _numbers_equal(value, matcher.value)
        if vr in TEMPORAL_VRS:
            return _in_period(vr, value, matcher.value, matcher.value)
        if vr == "PN":
            return str(value).casefold() == matcher.value.casefold()
        return str(value) == matcher.value
    if isinstance(matcher, Wildcard):
        if vr == "PN":
            return wildcard_regex(matcher.pattern.casefold()).fullmatch(str(value).casefold()) is not None
        return wildcard_regex(matcher.pattern).fullmatch(str(value)) is not None
    if isinstance(matcher, Range):
        return _in_period(vr, value, matcher.start, matcher.end)
    return False  # a sequence matcher on a value: the query builder never makes one


def _numbers_equal(value: Any, wanted: str) -> bool:
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


def _in_period(vr: str, value: Any, start: str | None, end: str | None) -> bool:
    point = temporal_bounds(vr, str(value))
    if point is None:  # a malformed stored value matches no date or time
        return False
    low, high = range_bounds(vr, Range(start, end))
    return (low is None or point[0] >= low) and (high is None or point[0] <= high)


@lru_cache(maxsize=256)
def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """``*`` any run of characters, ``?`` one character; everything else literal."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


# -- sequences ------------------------------------------------------------------------------------
def matching_items(matcher: SequenceMatch, element: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The items of a sequence element that match every key of the request's item."""
    items = [item for item in element_values(element) if isinstance(item, dict)]
    return [item for item in items if all(matches(key, item.get(tag_hex(key.tag))) for key in matcher.item)]


def response_items(matcher: SequenceMatch, element: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The items a response carries: those that match, with the request item's keys (empty when
    the item has no value); every item, whole, when the request gave no item keys."""
    items = matching_items(matcher, element)
    if not matcher.item:
        return items
    return [_item_response(matcher.item, item) for item in items]


def _item_response(keys: Iterable[Key], item: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        found = item.get(tag_hex(key.tag))
        if isinstance(key.matcher, SequenceMatch):
            found = {"vr": "SQ", "Value": response_items(key.matcher, found)}
        if found is not None:
            out[tag_hex(key.tag)] = found
    return out
