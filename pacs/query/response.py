"""A :class:`~pacs.query.model.Match` → the C-FIND response identifier (PS3.4 C.4.1.1.3.2).

The identifier carries exactly the keys of the request, with the entity's values or empty when the
archive has none (keys of levels below the query level are always empty), plus Query/Retrieve
Level (0008,0052), Retrieve AE Title (0008,0054) = the archive's AE title, and Specific Character
Set (0008,0005) when needed.

Character set: the response is written in the request's Specific Character Set when every value
fits it, otherwise in UTF-8 (``ISO_IR 192``). A request without one gets none back as long as every
value is ASCII (the default repertoire), and ``ISO_IR 192`` otherwise.
"""

from __future__ import annotations

import codecs
import logging
import struct
from collections.abc import Iterator
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName, format_number_as_ds

from pacs.query.attributes import tag_hex
from pacs.query.model import Key, Match, Query

log = logging.getLogger(__name__)

UTF8 = "ISO_IR 192"
INSTANCE_AVAILABILITY = 0x00080056
RETRIEVE_AE_TITLE = 0x00080054


def response_identifier(query: Query, found: Match, retrieve_ae_title: str) -> Dataset:
    ds = Dataset()
    for key in query.keys:
        ds[key.tag] = _element(key, found.attributes.get(tag_hex(key.tag)))
    ds.QueryRetrieveLevel = query.level.value
    ds.RetrieveAETitle = retrieve_ae_title
    if INSTANCE_AVAILABILITY in ds:
        ds.InstanceAvailability = "ONLINE"  # every instance is in the object store, none near-line
    charset = response_character_set(query.character_set, _texts(ds))
    if charset:
        ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    return ds


def _element(key: Key, element: dict[str, Any] | None) -> DataElement:
    if element is not None:
        try:
            if element.get("vr") == "DS" and element.get("Value"):
                return DataElement(key.tag, "DS", [_decimal_string(v) for v in element["Value"]])
            return Dataset.from_json({tag_hex(key.tag): element})[key.tag]
        except Exception as exc:  # a value pydicom cannot take back: answer it as unknown
            log.warning("cannot return %s from the index (%s): returning it empty", key.name, exc)
    if key.vr == "SQ":
        return DataElement(key.tag, "SQ", Sequence())
    return DataElement(key.tag, key.vr if key.vr != "UN" else "UN", None)


def _decimal_string(value: Any) -> str:
    """A DS as a device would write it: ``8``, ``12.5`` (pydicom would write ``8.0``), in 16 characters."""
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    text = repr(number)
    return text if len(text) <= 16 else format_number_as_ds(number)


def response_character_set(requested: tuple[str, ...], texts: Iterator[str]) -> tuple[str, ...]:
    """The Specific Character Set of a response: the request's if every text fits it, else UTF-8."""
    values = list(texts)
    if not requested:
        return () if all(text.isascii() for text in values) else (UTF8,)
    python_codecs = [codecs.lookup(name).name for name in convert_encodings(list(requested))]
    if len(python_codecs) == 1:
        fits = all(_encodable(text, python_codecs[0]) for text in values)
    else:  # ISO 2022 code extensions: each character in one of the sets
        fits = all(any(_encodable(ch, c) for c in python_codecs) for text in values for ch in text)
    return requested if fits else (UTF8,)


def _encodable(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _texts(ds: Dataset) -> Iterator[str]:
    """Every text value of ``ds`` and its sequence items."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _texts(item)
            continue
        value = elem.value
        items = value if isinstance(value, MultiValue | list) else [value]
        for item in items:
            if isinstance(item, str | PersonName):
                yield str(item)


# -- the identifier as bytes, straight from DICOM JSON -----------------------------------------------
# A C-FIND answer is mostly short strings; building a pydicom Dataset for each match (``from_json``
# per element) and encoding it cost about 2 ms a match, ten times the index query. The encoder
# below writes the same identifier from the DICOM JSON in one pass (little endian, implicit or
# explicit VR). It covers the value representations a query returns; for anything else (sequences,
# bulk data, a value that does not fit its VR, ISO 2022 code extensions) it answers None and the
# caller takes the Dataset path above, which knows every case.

_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})  # written in the character set
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "IS", "DS"})
_BINARY_VRS = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d", "SV": "<q", "UV": "<Q"}
_LONG_HEADER_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005


class _Unsupported(Exception):
    """The fast encoder cannot write this identifier; the Dataset path will."""


def encode_identifier(
    query: Query, found: Match, retrieve_ae_title: str, *, implicit_vr: bool
) -> bytes | None:
    """The response identifier of :func:`response_identifier`, encoded in little endian with
    implicit or explicit VR; None when only the Dataset path can write it."""
    try:
        values: dict[int, tuple[str, list[Any]]] = {}
        for key in query.keys:
            element = found.attributes.get(tag_hex(key.tag))
            vr = (element or {}).get("vr") or key.vr
            values[key.tag] = (vr, _json_values(vr, element))
        values[QUERY_RETRIEVE_LEVEL] = ("CS", [query.level.value])
        values[RETRIEVE_AE_TITLE] = ("AE", [retrieve_ae_title])
        if INSTANCE_AVAILABILITY in values:
            values[INSTANCE_AVAILABILITY] = ("CS", ["ONLINE"])
        values.pop(SPECIFIC_CHARACTER_SET, None)
        texts = (v for vr, items in values.values() if vr in _TEXT_VRS or vr in _ASCII_VRS for v in items)
        charset = response_character_set(query.character_set, (t for t in texts if isinstance(t, str)))
        if len(charset) > 1:
            raise _Unsupported("ISO 2022 code extensions")
        codec = codecs.lookup(convert_encodings(list(charset))[0]).name if charset else "ascii"
        if charset:
            values[SPECIFIC_CHARACTER_SET] = ("CS", [charset[0]])
        out = bytearray()
        for tag in sorted(values):
            vr, items = values[tag]
            _write(out, tag, vr, _value_bytes(vr, items, codec), implicit_vr)
        return bytes(out)
    except (_Unsupported, UnicodeEncodeError, ValueError, TypeError, struct.error, OverflowError):
        return None


def _json_values(vr: str, element: dict[str, Any] | None) -> list[Any]:
    if element is None:
        return []
    if "Value" not in element:
        if "BulkDataURI" in element or "InlineBinary" in element:
            raise _Unsupported("bulk data")
        return []
    items = element["Value"]
    if vr == "SQ" or not isinstance(items, list):
        raise _Unsupported(vr)
    if vr == "PN":
        return [_person_name(item) for item in items]
    if vr == "DS":
        return [
            "" if item is None else _decimal_string(item) if not isinstance(item, str) else item
            for item in items
        ]
    if vr == "IS":
        return [
            "" if item is None else str(int(item)) if not isinstance(item, str) else item for item in items
        ]
    return items


def _person_name(item: Any) -> str:
    if item is None:
        return ""
    if not isinstance(item, dict):
        raise _Unsupported("PN value")
    groups = [item.get("Alphabetic", ""), item.get("Ideographic", ""), item.get("Phonetic", "")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _value_bytes(vr: str, items: list[Any], codec: str) -> bytes:
    if not items:
        return b""
    if vr in _BINARY_VRS:
        if any(item is None for item in items):
            raise _Unsupported("null binary value")
        return b"".join(struct.pack(_BINARY_VRS[vr], item) for item in items)
    if vr == "AT":
        return b"".join(struct.pack("<HH", int(item[:4], 16), int(item[4:], 16)) for item in items)
    if vr in _TEXT_VRS:
        data = "\\".join("" if item is None else item for item in items).encode(codec)
    elif vr in _ASCII_VRS:
        data = "\\".join("" if item is None else item for item in items).encode("ascii")
    else:
        raise _Unsupported(vr)
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def _write(out: bytearray, tag: int, vr: str, value: bytes, implicit_vr: bool) -> None:
    out += struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit_vr:
        out += struct.pack("<I", len(value))
    elif vr in _LONG_HEADER_VRS:
        out += vr.encode("ascii") + b"\x00\x00" + struct.pack("<I", len(value))
    else:
        if len(value) > 0xFFFF:
            raise _Unsupported("value too long for a short header")
        out += vr.encode("ascii") + struct.pack("<H", len(value))
    out += value
