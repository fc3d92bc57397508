"""``pacs query`` / ``pacs retrieve`` keys: findscu's ``-k`` syntax turned into a C-FIND identifier."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_nodes.scu import build_identifier, describe_match


def test_keywords_and_tags_with_and_without_values() -> None:
    ds = build_identifier(
        "study", ["PatientID=BLADE*", "0010,0010=", "(0008,0020)=20240101-", "StudyInstanceUID"]
    )
    assert ds.QueryRetrieveLevel == "STUDY"
    assert ds.PatientID == "BLADE*"
    assert ds["PatientName"].value in (None, "")  # a return key: present and empty
    assert ds.StudyDate == "20240101-"
    assert "StudyInstanceUID" in ds and not ds.StudyInstanceUID
    assert "SpecificCharacterSet" not in ds  # ASCII only


def test_numbers_lists_and_sequence_items() -> None:
    ds = build_identifier(
        "image",
        ["Rows=512", "StudyInstanceUID=1.2.3\\1.2.4", "AnatomicRegionSequence[0].CodeValue=74964007"],
    )
    assert ds.Rows == 512
    assert list(ds.StudyInstanceUID) == ["1.2.3", "1.2.4"]
    assert isinstance(ds.AnatomicRegionSequence, Sequence)
    assert ds.AnatomicRegionSequence[0].CodeValue == "74964007"


def test_non_ascii_values_declare_utf8_unless_a_key_says_otherwise() -> None:
    assert build_identifier("study", ["PatientName=Größe*"]).SpecificCharacterSet == "ISO_IR 192"
    latin1 = build_identifier("study", ["SpecificCharacterSet=ISO_IR 100", "PatientName=Größe*"])
    assert latin1.SpecificCharacterSet == "ISO_IR 100"


@pytest.mark.parametrize(
    ("level", "model", "keys", "message"),
    [
        ("PATIENT", "study", [], "level PATIENT does not exist in the study root model"),
        ("FRAME", "patient", [], "level FRAME does not exist in the patient root model"),
        ("STUDY", "study", ["PartNumber=7"], "unknown attribute 'PartNumber'"),
        ("STUDY", "study", ["0009,0010=x"], "not in the DICOM dictionary"),
        ("STUDY", "study", ["PatientID[0].CodeValue=1"], "PatientID is not a sequence"),
        ("STUDY", "study", ["Rows=many"], "invalid literal"),
        ("STUDY", "study", ["=x"], "empty key"),
    ],
)
def test_bad_keys_are_refused_with_the_reason(level: str, model: str, keys: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_identifier(level, keys, model)


def test_a_match_is_one_line_of_keyword_value_fields_in_tag_order() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.3"
    ds.PatientName = "Schaufel^Größe"
    ds.ModalitiesInStudy = ["DX", "US"]
    item = Dataset()
    item.CodeValue = "74964007"
    ds.AnatomicRegionSequence = Sequence([item])
    assert describe_match(ds) == (
        "ModalitiesInStudy=DX\\US\tAnatomicRegionSequence[0].CodeValue=74964007\t"
        "PatientName=Schaufel^Größe\tStudyInstanceUID=1.2.3"
    )
