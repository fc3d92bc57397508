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
