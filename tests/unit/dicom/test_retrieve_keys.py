"""Retrieve identifiers (PS3.4 C.4.2.2.1, C.4.3.2.1): hierarchical keys of Patient Root and Study Root."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from pacs.dicom.retrieve_keys import (
    InformationModel,
    InvalidIdentifier,
    RetrieveRequest,
    parse_retrieve_identifier,
)

P, S = InformationModel.PATIENT_ROOT, InformationModel.STUDY_ROOT


def identifier(**keys: object) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("model", "keys", "expected"),
    [
        (
            P,
            {"QueryRetrieveLevel": "PATIENT", "PatientID": "BLADE-1"},
            RetrieveRequest(P, "PATIENT", "BLADE-1"),
        ),
        (
            P,
            {"QueryRetrieveLevel": "STUDY", "PatientID": "BLADE-1", "StudyInstanceUID": ["1.2.1", "1.2.2"]},
            RetrieveRequest(P, "STUDY", "BLADE-1", ("1.2.1", "1.2.2")),
        ),
        (
            P,
            {
                "QueryRetrieveLevel": "IMAGE",
                "PatientID": "BLADE-1",
                "StudyInstanceUID": "1.2.1",
                "SeriesInstanceUID": "1.2.1.1",
                "SOPInstanceUID": ["1.2.1.1.1", "1.2.1.1.2", "1.2.1.1.1"],  # a repeat is retrieved once
            },
            RetrieveRequest(P, "IMAGE", "BLADE-1", ("1.2.1",), ("1.2.1.1",), ("1.2.1.1.1", "1.2.1.1.2")),
        ),
        (
            S,
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.1"},
            RetrieveRequest(S, "STUDY", None, ("1.2.1",)),
        ),
        (
            S,  # a Patient ID is no key in Study Root: ignored, like any other non-key attribute
            {
                "QueryRetrieveLevel": "SERIES",
                "PatientID": "X",
                "StudyInstanceUID": "1.2.1",
                "SeriesInstanceUID": "1.3",
            },
            RetrieveRequest(S, "SERIES", None, ("1.2.1",), ("1.3",)),
        ),
        (
            S,  # empty keys below the level (copied from a C-FIND) are harmless; padding is not a value
            {"QueryRetrieveLevel": "study ", "StudyInstanceUID": "1.2.1", "SeriesInstanceUID": ""},
            RetrieveRequest(S, "STUDY", None, ("1.2.1",)),
        ),
    ],
)
def test_valid_identifiers(
    model: InformationModel, keys: dict[str, object], expected: RetrieveRequest
) -> None:
    assert parse_retrieve_identifier(identifier(**keys), model) == expected


@pytest.mark.parametrize(
    ("model", "keys", "tag", "message"),
    [
        (S, {"StudyInstanceUID": "1.2.1"}, 0x00080052, "missing"),
        (
            S,
            {"QueryRetrieveLevel": "FRAME", "StudyInstanceUID": "1.2.1"},
            0x00080052,
            "not a Study Root level",
        ),
        (S, {"QueryRetrieveLevel": "PATIENT", "PatientID": "X"}, 0x00080052, "not a Study Root level"),
        (P, {"QueryRetrieveLevel": "PATIENT"}, 0x00100020, "missing"),
        (P, {"QueryRetrieveLevel": "PATIENT", "PatientID": ""}, 0x00100020, "missing"),  # no universal match
        (P, {"QueryRetrieveLevel": "PATIENT", "PatientID": "BLADE*"}, 0x00100020, "wild card"),
        (P, {"QueryRetrieveLevel": "PATIENT", "PatientID": ["A", "B"]}, 0x00100020, "single value"),
        (P, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.1"}, 0x00100020, "required at STUDY"),
        (S, {"QueryRetrieveLevel": "STUDY"}, 0x0020000D, "missing"),
        (S, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, 0x0020000D, "not a valid UID"),
        (
            S,
            {
                "QueryRetrieveLevel": "SERIES",
                "StudyInstanceUID": ["1.2.1", "1.2.2"],
                "SeriesInstanceUID": "1.3",
            },
            0x0020000D,
            "one UID above SERIES",
        ),
        (
            S,
            {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.1", "SOPInstanceUID": "1.2.3"},
            0x0020000E,  # the series key is missing; the instance key below would be refused too
            "missing",
        ),
        (
            S,
            {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.1", "SeriesInstanceUID": "1.3"},
            0x0020000E,
            "not allowed at STUDY level",
        ),
    ],
)
def test_invalid_identifiers_name_the_tag(
    model: InformationModel, keys: dict[str, object], tag: int, message: str
) -> None:
    with pytest.raises(InvalidIdentifier, match=message) as raised:
        parse_retrieve_identifier(identifier(**keys), model)
    assert raised.value.tag == tag
    assert f"({tag >> 16:04X},{tag & 0xFFFF:04X})" in str(raised.value)
    assert len(str(raised.value)) <= 64 or "valid UID" in str(raised.value)  # fits an Error Comment


def test_describe_is_short_for_long_uid_lists() -> None:
    request = RetrieveRequest(S, "STUDY", None, tuple(f"1.2.{i}" for i in range(500)))
    assert request.describe() == "Study Root STUDY, 500 study UID(s)"
