"""A C-FIND request identifier → :class:`~pacs.query.model.Query`, with the rules of PS3.4 C.4.1.2.

Values are read from the identifier's bytes as they arrived and decoded in its Specific Character
Set (0008,0005) (any set pydicom knows: UTF-8 ``ISO_IR 192``, Latin-1 ``ISO_IR 100``, the other
single-byte sets, ISO 2022 code extensions, GB18030), so a value that pydicom would refuse to
convert (a wildcard in an IS, a range in a DA) still reaches the checks here and gets a precise
error. Every error names the attribute: it becomes the C-FIND response's Error Comment and
Offending Element.

Hierarchical rules (PS3.4 C.4.1.2.1, baseline behaviour, no relational queries):

* Query/Retrieve Level (0008,0052) is present and is a level of the information model
  (the Study Root model has no PATIENT level);
* the unique key of every level above the query level is present with a single value (a list of
  UIDs for UID keys is accepted too);
* a key of a level below the query level may only be universal: it is returned empty;
* keys of the query level and above are matched (beyond the baseline, which matches only unique
  keys above the query level: a superset that never changes which entity a baseline query finds).
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceType
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes, python_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PN_DELIMS, TEXT_VR_DELIMS

from pacs.errors import InvalidQuery, QueryModelMismatch
from pacs.query import match
from pacs.query.attributes import UNIQUE_KEYS, attribute_for
from pacs.query.model import (
    AnyOf,
    InformationModel,
    Key,
    Level,
    Matcher,
    Query,
    Range,
    SequenceMatch,
    SingleValue,
    UidList,
    Universal,
    ValueMatcher,
    Wildcard,
    describe_tag,
)

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052

#: Value representations that allow wildcard matching (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})  # in the Specific Character Set
_STRING_VRS = _TEXT_VRS | {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"}
_BINARY_NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})
_KEEP_LEADING_SPACES = frozenset({"LT", "ST", "UT"})
#: Values one key may give (multiple value matching, PS3.4 C.2.2.2.8), and UIDs one list may hold.
MAX_VALUES = 256
MAX_UIDS = 4096


def query_from_identifier(identifier: Dataset, model: InformationModel) -> Query:
    """The query ``identifier`` asks of ``model``; :class:`InvalidQuery` (0xC000) for a value that
    cannot be used, :class:`QueryModelMismatch` (0xA900) for an identifier that breaks the model."""
    terms, encodings = _character_set(identifier)
    level = _level(identifier, model, encodings)
    keys: list[Key] = []
    for elem in identifier.elements():
        tag = int(elem.tag)
        if tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL) or _not_a_key(tag):
            continue
        keys.append(_key(elem, encodings, identifier))
    _check_hierarchy(keys, level, model)
    return Query(model=model, level=level, keys=tuple(keys), character_set=terms)


def _not_a_key(tag: int) -> bool:
    """Command and file meta groups, group lengths: not attributes of the data."""
    return tag >> 16 in (0x0000, 0x0002) or tag & 0xFFFF == 0


# -- character set and level ----------------------------------------------------------------------
def _character_set(identifier: Dataset) -> tuple[tuple[str, ...], list[str]]:
    elem = identifier.get_item(SPECIFIC_CHARACTER_SET)
    terms = tuple(_strings(elem, "CS", ["iso8859"])) if elem is not None else ()
    if len(terms) == 0:
        return (), ["iso8859"]
    for term in terms:
        if term not in python_encoding:
            raise InvalidQuery(
                f"unknown character set: SpecificCharacterSet (0008,0005) {term!r}", SPECIFIC_CHARACTER_SET
            )
    return terms, convert_encodings(list(terms))


def _level(identifier: Dataset, model: InformationModel, encodings: list[str]) -> Level:
    elem = identifier.get_item(QUERY_RETRIEVE_LEVEL)
    values = _strings(elem, "CS", encodings) if elem is not None else []
    allowed = ", ".join(level.value for level in model.levels)
    if not values:
        raise QueryModelMismatch(
            f"missing QueryRetrieveLevel (0008,0052): one of {allowed}", QUERY_RETRIEVE_LEVEL
        )
    text = "\\".join(values)
    if text not in model.levels:
        raise QueryModelMismatch(
            f"not a level of the {model} model: QueryRetrieveLevel (0008,0052) {text!r} ({allowed})",
            QUERY_RETRIEVE_LEVEL,
        )
    return Level(text)


# -- one key --------------------------------------------------------------------------------------
def _key(elem: DataElement | RawDataElement, encodings: list[str], parent: Dataset) -> Key:
    tag = int(elem.tag)
    # The dictionary's VR for attributes the archive knows, else the one the identifier gives.
    attribute = attribute_for(tag, _concrete_vr(elem.VR))
    vr = attribute.vr
    name = describe_tag(tag, attribute.keyword)
    if vr == "SQ":
        return Key(tag, attribute.keyword, vr, _sequence_matcher(elem, name, encodings, parent))
    values = _strings(elem, vr, encodings, name=name, parent=parent)
    return Key(tag, attribute.keyword, vr, _matcher(values, vr, name, tag))


def _concrete_vr(vr: str | None) -> str | None:
    return vr if vr and " or " not in vr else None


def _sequence_matcher(
    elem: DataElement | RawDataElement, name: str, encodings: list[str], parent: Dataset
) -> SequenceMatch:
    if isinstance(elem, RawDataElement):
        elem = convert_raw_data_element(elem, encoding=encodings, ds=parent)
    items = list(elem.value or [])
    if len(items) > 1:
        raise InvalidQuery(f"sequence matching takes one item: {name} has {len(items)}", int(elem.tag))
    if not items:
        return SequenceMatch(())
    item: Dataset = items[0]
    return SequenceMatch(
        tuple(_key(inner, encodings, item) for inner in item.elements() if not _not_a_key(int(inner.tag)))
    )


def _strings(
    elem: DataElement | RawDataElement,
    vr: str,
    encodings: list[str],
    *,
    name: str = "",
    parent: Dataset | None = None,
) -> list[str]:
    """The element's values as strings (empty for a zero-length value), decoded in ``encodings``."""
    value: Any = elem.value
    if value is None or value == b"" or value == "":
        return []
    tag = int(elem.tag)
    if isinstance(elem, RawDataElement):
        if vr in _STRING_VRS:
            return _decode_strings(bytes(value), vr, encodings, name, tag)
        if vr not in _BINARY_NUMBER_VRS:
            raise InvalidQuery(f"cannot match on a {vr} value: {name}", tag)
        value = convert_raw_data_element(elem._replace(VR=vr), encoding=encodings, ds=parent).value
    elif vr not in _STRING_VRS and vr not in _BINARY_NUMBER_VRS:
        raise InvalidQuery(f"cannot match on a {vr} value: {name}", tag)
    texts = [str(v) for v in value] if isinstance(value, MultiValue | list | tuple) else [str(value)]
    return _cleaned(texts, vr)


def _decode_strings(raw: bytes, vr: str, encodings: list[str], name: str, tag: int) -> list[str]:
    if vr in _TEXT_VRS:
        delimiters = PN_DELIMS | {0x3D} if vr == "PN" else TEXT_VR_DELIMS
        pieces = raw.split(b"\\") if vr not in _KEEP_LEADING_SPACES else [raw]
        try:
            texts = [decode_bytes(piece, encodings, delimiters) for piece in pieces]
        except (LookupError, UnicodeDecodeError) as exc:
            raise InvalidQuery(f"value not in the Specific Character Set: {name}: {exc}", tag) from None
    else:
        try:
            texts = raw.decode("ascii").split("\\")
        except UnicodeDecodeError:
            raise InvalidQuery(f"a {vr} value must be ASCII: {name}", tag) from None
    return _cleaned(texts, vr)


def _cleaned(texts: list[str], vr: str) -> list[str]:
    """Padding is not part of a value: trailing spaces and NULs, leading spaces but in texts."""
    out = []
    for text in texts:
        text = text.rstrip(" \x00")
        if vr not in _KEEP_LEADING_SPACES:
            text = text.lstrip(" ")
        out.append(text)
    return [] if all(t == "" for t in out) else out


# -- matchers -------------------------------------------------------------------------------------
def matcher_for(values: SequenceType[str], vr: str, name: str, tag: int) -> Matcher:
    """The matcher of a key given ``values`` already decoded to text (QIDO-RS parameters), by the
    same rules as an identifier's; padding is dropped first."""
    return _matcher(_cleaned(list(values), vr), vr, name, tag)


def _matcher(values: SequenceType[str], vr: str, name: str, tag: int) -> Matcher:
    if not values:
        return Universal()
    limit = MAX_UIDS if vr == "UI" else MAX_VALUES
    if len(values) > limit:
        # Each value is one more term of the SQL condition: SQLite refuses expressions deeper than
        # 1000 terms, and neither index wants one query of thousands of alternatives.
        raise InvalidQuery(f"{len(values)} values for {name}: at most {limit} in one query", tag)
    matchers = [_value_matcher(value, vr, name, tag) for value in values]
    if any(isinstance(m, Universal) for m in matchers):
        return Universal()
    if len(matchers) == 1:
        return matchers[0]
    if vr == "UI":  # List of UID matching (PS3.4 C.2.2.2.2)
        return UidList(tuple(m.value for m in matchers if isinstance(m, SingleValue)))
    return AnyOf(tuple(matchers))


def _value_matcher(value: str, vr: str, name: str, tag: int) -> ValueMatcher:
    if value == "" or value == "*":  # "*" alone is universal matching (PS3.4 C.2.2.2.4)
        return Universal()
    if "\x00" in value:  # padding is gone: a NUL inside a value, which no value in the index holds
        raise InvalidQuery(f"a NUL character inside the value of {name}", tag)
    wild = "*" in value or "?" in value
    if vr in match.TEMPORAL_VRS:
        if wild:
            raise InvalidQuery(f"no wildcards in {vr}, use a range: {name} {value!r}", tag)
        return _temporal(value, vr, name, tag)
    if wild:
        if vr not in WILDCARD_VRS:
            raise InvalidQuery(f"no wildcards in {vr}: {name} {value!r}", tag)
        return Wildcard(value)
    if vr == "UI" and not is_uid(value):
        raise InvalidQuery(f"not a UID: {name} {value!r}", tag)
    if vr in match.NUMERIC_VRS:
        try:
            float(value)
        except ValueError:
            raise InvalidQuery(f"not a number: {name} {value!r}", tag) from None
    return SingleValue(value)


def is_uid(value: str) -> bool:
    """Digits and dots, at most 64 characters (PS3.5 9.1), as a UID key's value must be."""
    parts = value.split(".")
    return len(value) <= 64 and all(p.isdigit() and p.isascii() for p in parts)


def _temporal(value: str, vr: str, name: str, tag: int) -> ValueMatcher:
    """A DA, TM or DT value: single, or a range ``A-B``, ``A-``, ``-B`` (PS3.4 C.2.2.2.5)."""
    if "-" not in value or (vr == "DT" and match.temporal_bounds(vr, value) is not None):
        if match.temporal_bounds(vr, value) is None:
            raise InvalidQuery(f"not a valid {vr}: {name} {value!r}", tag)
        return SingleValue(value)
    # A DT may carry a "-HHMM" offset, so try every '-' as the range separator.
    for at in (i for i, c in enumerate(value) if c == "-"):
        start, end = value[:at], value[at + 1 :]
        if (start or end) and all(not part or match.temporal_bounds(vr, part) for part in (start, end)):
            matcher = Range(start or None, end or None)
            low, high = match.range_bounds(vr, matcher)
            if low is not None and high is not None and low > high:
                raise InvalidQuery(f"range starts after it ends: {name} {value!r}", tag)
            return matcher
    raise InvalidQuery(f"not a valid {vr} range: {name} {value!r}", tag)


# -- hierarchy ------------------------------------------------------------------------------------
def _check_hierarchy(keys: list[Key], level: Level, model: InformationModel) -> None:
    by_tag = {key.tag: key for key in keys}
    levels = model.levels
    for upper in levels[: levels.index(level)]:
        tag = UNIQUE_KEYS[upper]
        key = by_tag.get(tag)
        name = describe_tag(tag, attribute_for(tag).keyword)
        if key is None or not isinstance(key.matcher, SingleValue | UidList):
            problem = "missing" if key is None else "not a single value"
            raise QueryModelMismatch(f"unique key of the {upper} level {problem}: {name}", tag)
    for key in keys:
        home = attribute_for(key.tag).home_level(model)
        if home is not None and home.depth > level.depth and not key.is_universal:
            raise QueryModelMismatch(f"{home} key matched in a {level} query: {key.name}", key.tag)
