"""The C-FIND identifier written straight from DICOM JSON equals the one pydicom writes.

``encode_identifier`` is the fast path of the C-FIND SCP; ``response_identifier`` plus pydicom's
encoder is the reference. Both get the same queries and index values (hand-made ones for the edge
cases, and the whole metadata of real-world sample files), and must give the same bytes, or the
fast path must decline (None) so that the reference is used.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from pacs.query.identifier import query_from_identifier
from pacs.query.model import InformationModel, Level, Match
from pacs.query.response import encode_identifier, response_identifier
from tests.unit.query.queries import received

AE = "NDT_PACS"


def both(request: Dataset, attributes: dict[str, Any], *, implicit: bool) -> tuple[bytes | None, bytes]:
    query = query_from_identifier(received(request, implicit=implicit), InformationModel.STUDY_ROOT)
    found = Match(query.level, 1, attributes)
    reference = encode(response_identifier(query, found, AE), implicit, True)
    assert reference is not None
    return encode_identifier(query, found, AE, implicit_vr=implicit), reference


def study_request(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


STUDY_KEYS = {
    "PatientID": "",
    "PatientName": "",
    "StudyInstanceUID": "",
    "StudyDate": "",
    "StudyTime": "",
    "AccessionNumber": "",
    "ModalitiesInStudy": "",
    "NumberOfStudyRelatedInstances": "",
    "StudyDescription": "",
    "PatientBirthDate": "",
}


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(
    ("charset", "attributes"),
    [
        (
            None,
            {
                "00100020": {"vr": "LO", "Value": ["BLADE-000123"]},
                "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Turbine^Blade 123"}]},
                "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.10.543.1"]},  # odd: \0 padding
                "00080020": {"vr": "DA", "Value": ["20240102"]},
                "00080030": {"vr": "TM", "Value": ["101500.5"]},
                "00080061": {"vr": "CS", "Value": ["CT", "DX"]},
                "00201208": {"vr": "IS", "Value": [12]},
            },
        ),
        (None, {}),  # nothing known: every key empty
        (  # non-ASCII without a requested character set: answered in UTF-8
            None,
            {
                "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Überhitzer^Rohr", "Ideographic": "Ü"}]},
                "00081030": {"vr": "LO", "Value": ["Schweißnaht Prüfung"]},
            },
        ),
        (  # Latin-1 asked, and the values fit it
            "ISO_IR 100",
            {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Schweißnaht^Behälter"}]}},
        ),
        (  # Latin-1 asked, a value that does not fit: UTF-8
            "ISO_IR 100",
            {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Ротор^Вал"}]}},
        ),
        (  # an empty value, a null in a multi-value, a PN with only a phonetic group
            "ISO_IR 192",
            {
                "00080061": {"vr": "CS", "Value": ["CT", None, "US"]},
                "00100010": {"vr": "PN", "Value": [{"Phonetic": "abc"}]},
                "00100030": {"vr": "DA"},
            },
        ),
    ],
)
def test_fast_identifier_equals_pydicoms(
    implicit: bool, charset: str | None, attributes: dict[str, Any]
) -> None:
    request = study_request(**STUDY_KEYS)
    if charset:
        request.SpecificCharacterSet = charset
    fast, reference = both(request, attributes, implicit=implicit)
    assert fast == reference


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(
    "sample", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "US1_J2KR.dcm"]
)
def test_every_attribute_of_real_world_samples_at_image_level(sample: str, implicit: bool) -> None:
    """Every top-level, non-bulk, non-sequence attribute of a sample as a return key."""
    ds = dcmread(get_testdata_file(sample), stop_before_pixels=True)
    attributes = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _: "bulk")
    request = Dataset()
    request.QueryRetrieveLevel = "IMAGE"
    request.StudyInstanceUID = ds.StudyInstanceUID
    request.SeriesInstanceUID = ds.SeriesInstanceUID
    request.SOPInstanceUID = ""
    for elem in ds:
        wanted = elem.tag.group > 0x0008 and elem.tag not in request and not elem.tag.is_private
        if wanted and elem.VR not in ("SQ", "OB", "OW", "OF", "UN"):
            request.add_new(elem.tag, elem.VR, None)
    query = query_from_identifier(received(request, implicit=implicit), InformationModel.STUDY_ROOT)
    found = Match(Level.IMAGE, 1, attributes)
    reference = encode(response_identifier(query, found, AE), implicit, True)
    fast = encode_identifier(query, found, AE, implicit_vr=implicit)
    assert fast is not None, "the fast path declined a sample it should write"
    assert fast == reference


@pytest.mark.parametrize(
    ("attributes", "why"),
    [
        (
            {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]}},
            "ISO 2022",
        ),
        ({"00101002": {"vr": "SQ", "Value": [{}]}}, "a sequence"),
        ({"00100020": {"vr": "LO", "BulkDataURI": "x"}}, "bulk data"),
    ],
)
def test_fast_identifier_declines_what_only_pydicom_writes(attributes: dict[str, Any], why: str) -> None:
    request = study_request(PatientID="", PatientName="", OtherPatientIDsSequence=[])
    if why == "ISO 2022":
        request.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    query = query_from_identifier(received(request), InformationModel.STUDY_ROOT)
    assert encode_identifier(query, Match(query.level, 1, attributes), AE, implicit_vr=False) is None, why
