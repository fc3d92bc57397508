"""QIDO-RS query parameters → the shared query model (pacs.query.qido): no database needed."""

from __future__ import annotations

import pytest

from pacs.errors import InvalidQuery
from pacs.query.model import (
    AnyOf,
    Level,
    Range,
    SequenceMatch,
    SingleValue,
    UidList,
    Universal,
    Wildcard,
)
from pacs.query.qido import DEFAULT_LIMIT, MAX_LIMIT, QidoSearch, qido_search

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
STUDY_DATE = 0x00080020
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
MODALITY = 0x00080060
RETRIEVE_URL = 0x00081190


def search(level: Level = Level.STUDY, **parameters: str | list[str]) -> QidoSearch:
    pairs: list[tuple[str, str]] = []
    for name, value in parameters.items():
        values = value if isinstance(value, list) else [value]
        pairs.extend((name, v) for v in values)
    return qido_search(level, pairs)


def matcher(found: QidoSearch, tag: int) -> object:
    key = found.query.key(tag)
    assert key is not None, f"no key {tag:08X}"
    return key.matcher


def test_keyword_and_tag_name_the_same_attribute() -> None:
    assert matcher(search(PatientID="BLADE-0001"), PATIENT_ID) == SingleValue("BLADE-0001")
    assert matcher(search(**{"00100020": "BLADE-0001"}), PATIENT_ID) == SingleValue("BLADE-0001")


def test_matching_types_of_the_query_model() -> None:
    assert matcher(search(PatientID="BLADE-*"), PATIENT_ID) == Wildcard("BLADE-*")
    assert matcher(search(PatientID="*"), PATIENT_ID) == Universal()
    assert matcher(search(StudyDate="20240101-20240131"), STUDY_DATE) == Range("20240101", "20240131")
    assert matcher(search(StudyDate="20240101-"), STUDY_DATE) == Range("20240101", None)


def test_uid_lists_by_commas_or_repeated_parameters() -> None:
    assert matcher(search(StudyInstanceUID="1.2.3,1.2.4"), STUDY_UID) == UidList(("1.2.3", "1.2.4"))
    repeated = search(StudyInstanceUID=["1.2.3", "1.2.4"])
    assert matcher(repeated, STUDY_UID) == UidList(("1.2.3", "1.2.4"))


def test_other_repeated_values_match_any_and_commas_stay_literal() -> None:
    assert matcher(search(ModalitiesInStudy="CT\\DX"), 0x00080061) == AnyOf(
        (SingleValue("CT"), SingleValue("DX"))
    )
    assert matcher(search(StudyDescription="Weld 3, left"), 0x00081030) == SingleValue("Weld 3, left")


def test_sequence_path_becomes_sequence_matching() -> None:
    found = search(Level.IMAGE, **{"IndicationSequence.IndicationType": "CRACK"})
    sequence = matcher(found, 0x00142012)
    assert isinstance(sequence, SequenceMatch)
    assert [(k.keyword, k.matcher) for k in sequence.item] == [("IndicationType", SingleValue("CRACK"))]


def test_default_attributes_per_level_and_retrieve_url() -> None:
    study = search()
    tags = {key.tag for key in study.query.keys}
    assert {PATIENT_ID, PATIENT_NAME, STUDY_UID, STUDY_DATE, 0x00201208} <= tags
    assert RETRIEVE_URL in study.response_keys
    assert SERIES_UID not in tags
    everything = search(Level.IMAGE)
    tags = {key.tag for key in everything.query.keys}
    assert {PATIENT_ID, STUDY_UID, SERIES_UID, MODALITY, 0x00080018, 0x00280010} <= tags
    nested = qido_search(Level.IMAGE, [], study_uid="1.2.3", series_uid="1.2.4")
    tags = {key.tag for key in nested.query.keys}
    assert {STUDY_UID, SERIES_UID, 0x00080018} <= tags
    assert PATIENT_ID not in tags and MODALITY not in tags
    assert matcher(nested, STUDY_UID) == SingleValue("1.2.3")


def test_includefield_keywords_tags_commas_and_all() -> None:
    found = search(includefield=["StudyDescription,00101000", "MaterialGrade"])
    tags = {key.tag for key in found.query.keys}
    assert {0x00081030, 0x00101000, 0x00140042} <= tags
    assert not found.optional
    assert search(includefield="StudyDescription,").query.key(0x00081030) is not None  # a trailing comma
    everything = search(includefield="all")
    assert 0x00140042 in {key.tag for key in everything.query.keys}
    assert 0x00140042 in everything.optional  # returned only when it has a value
    assert MODALITY not in {key.tag for key in everything.query.keys}  # a series attribute


def test_includefield_of_a_lower_level_is_left_out() -> None:
    found = search(includefield="Modality")
    assert found.query.key(MODALITY) is None


def test_limit_default_maximum_and_offset() -> None:
    found = search()
    assert (found.limit, found.offset, found.query.limit) == (DEFAULT_LIMIT, 0, DEFAULT_LIMIT + 1)
    assert found.warnings == ()
    capped = search(limit=str(MAX_LIMIT + 1), offset="20")
    assert (capped.limit, capped.offset) == (MAX_LIMIT, 20)
    assert "maximum" in capped.warnings[0]


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({"Foo": "1"}, "unknown parameter or attribute: 'Foo'"),
        ({"includefield": "NotAKeyword"}, "unknown parameter or attribute: includefield='NotAKeyword'"),
        ({"StudyDate": "2024-01"}, "StudyDate (0008,0020)"),
        ({"StudyDate": "20240131-20240101"}, "range starts after it ends"),
        ({"StudyInstanceUID": "abc"}, "not a UID"),
        ({"NumberOfStudyRelatedInstances": "many"}, "not a number"),
        ({"StudyDate": "2024*"}, "no wildcards in DA"),
        ({"Modality": "CT"}, "Modality (0008,0060) is a SERIES attribute"),
        ({"limit": "0"}, "limit must be a positive integer"),
        ({"limit": "ten"}, "limit must be a positive integer"),
        ({"offset": "-1"}, "offset must be a non-negative integer"),
        ({"limit": ["5", "6"]}, "limit given more than once"),
        ({"fuzzymatching": "true"}, "fuzzymatching=true is not supported"),
        ({"fuzzymatching": "yes"}, "fuzzymatching must be true or false"),
        ({"RetrieveURL": "http://x"}, "cannot match on RetrieveURL"),
        ({"IndicationSequence": "CRACK"}, "a sequence matches through its items"),
        ({"PatientID.PatientName": "x"}, "not a sequence"),
    ],
)
def test_bad_parameters_are_refused_with_a_reason(
    parameters: dict[str, str | list[str]], reason: str
) -> None:
    with pytest.raises(InvalidQuery) as error:
        search(**parameters)
    assert reason in str(error.value)


def test_fuzzymatching_false_is_accepted() -> None:
    assert matcher(search(fuzzymatching="false", PatientName="turbine*"), PATIENT_NAME) == Wildcard(
        "turbine*"
    )


def test_path_uid_cannot_also_be_a_parameter() -> None:
    with pytest.raises(InvalidQuery, match="given by the resource path"):
        qido_search(Level.SERIES, [("StudyInstanceUID", "1.2.3")], study_uid="1.2.3")
