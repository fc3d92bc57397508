"""C-FIND identifiers → the query model, as the SCP receives them (encoded, then decoded by pynetdicom).

What a querying inspector relies on: every matching type of PS3.4 C.2.2.2 is understood as the
standard says; a value that cannot be used is refused with a reason that names the attribute,
instead of silently matching nothing (or everything); names arrive intact in UTF-8 and Latin-1.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from pacs.errors import InvalidQuery, QueryModelMismatch
from pacs.query.identifier import query_from_identifier
from pacs.query.model import (
    AnyOf,
    InformationModel,
    Level,
    Query,
    Range,
    SequenceMatch,
    SingleValue,
    UidList,
    Universal,
    Wildcard,
)
from tests.unit.query.queries import PATIENT_ROOT, STUDY_ROOT, identifier, received


def parse(ds: Dataset, model: InformationModel = STUDY_ROOT, *, implicit: bool = False) -> Query:
    return query_from_identifier(received(ds, implicit=implicit), model)


def matcher_of(query: Query, keyword: str) -> Any:
    tag = Tag(keyword)
    key = query.key(int(tag))
    assert key is not None, f"{keyword} not in the query"
    return key.matcher


def with_raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> Dataset:
    """Put a value pydicom would refuse to assign (e.g. a wildcard in an IS) as the wire carries it."""
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return ds


# -- matching types -----------------------------------------------------------------------------
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_each_matching_type_is_recognised(implicit: bool) -> None:
    query = parse(
        identifier(
            "STUDY",
            PatientID="",
            PatientName="Turb*ne^Bl?de",
            AccessionNumber="WO-1000",
            StudyDate="20240101-20240331",
            StudyInstanceUID="1.2.3\\1.2.4",
            ModalitiesInStudy="CT\\DX",
            StudyDescription="*",
        ),
        implicit=implicit,
    )
    assert query.level is Level.STUDY
    assert query.model is STUDY_ROOT
    assert matcher_of(query, "PatientID") == Universal()
    assert matcher_of(query, "PatientName") == Wildcard("Turb*ne^Bl?de")
    assert matcher_of(query, "AccessionNumber") == SingleValue("WO-1000")
    assert matcher_of(query, "StudyDate") == Range("20240101", "20240331")
    assert matcher_of(query, "StudyInstanceUID") == UidList(("1.2.3", "1.2.4"))
    assert matcher_of(query, "ModalitiesInStudy") == AnyOf((SingleValue("CT"), SingleValue("DX")))
    assert matcher_of(query, "StudyDescription") == Universal()  # "*" alone is universal
    assert {k.keyword for k in query.matching_keys} == {
        "PatientName",
        "AccessionNumber",
        "StudyDate",
        "StudyInstanceUID",
        "ModalitiesInStudy",
    }


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("StudyDate", "20240101-", Range("20240101", None)),
        ("StudyDate", "-20240101", Range(None, "20240101")),
        ("StudyDate", "20240315", SingleValue("20240315")),
        ("StudyTime", "1015-1130", Range("1015", "1130")),
        ("StudyTime", "101500.5-", Range("101500.5", None)),
        ("StudyTime", "10", SingleValue("10")),
        ("AcquisitionDateTime", "20240315101500-20240316", Range("20240315101500", "20240316")),
        ("AcquisitionDateTime", "20240315101500-0500", SingleValue("20240315101500-0500")),
        ("AcquisitionDateTime", "2024-", Range("2024", None)),
    ],
)
def test_dates_times_and_datetimes_single_or_range(keyword: str, value: str, expected: object) -> None:
    query = parse(identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3", **{keyword: value}))
    assert matcher_of(query, keyword) == expected


@pytest.mark.parametrize(
    ("keyword", "value", "reason"),
    [
        ("StudyDate", "2024*", "no wildcards in DA, use a range"),
        ("StudyDate", "2024031", "not a valid DA"),
        ("StudyDate", "20240101-2024", "not a valid DA range"),
        ("StudyDate", "20240301-20240101", "range starts after it ends"),
        ("StudyDate", "-", "not a valid DA range"),
        ("StudyDate", "2024-03-15", "not a valid DA range"),
        ("StudyTime", "25h", "not a valid TM"),
        ("StudyTime", "1015.5", "not a valid TM"),
        ("StudyTime", "12-10", "range starts after it ends"),
        ("StudyInstanceUID", "1.2.*", "no wildcards in UI"),
        ("StudyInstanceUID", "1.2.abc", "not a UID"),
        ("NumberOfStudyRelatedInstances", "many", "not a number"),
    ],
)
def test_malformed_values_are_refused_naming_the_attribute(keyword: str, value: str, reason: str) -> None:
    vr = {"StudyDate": "DA", "StudyTime": "TM", "NumberOfStudyRelatedInstances": "IS"}.get(keyword, "UI")
    raw = value.encode() + (b" " if len(value) % 2 and vr != "UI" else b"\x00" if len(value) % 2 else b"")
    ds = with_raw(identifier("STUDY"), keyword, vr, raw)

    with pytest.raises(InvalidQuery) as caught:
        parse(ds)

    assert not isinstance(caught.value, QueryModelMismatch)  # a bad value, not a bad model: 0xC000
    message = str(caught.value)
    assert message.startswith(reason), message
    assert f"{keyword} ({Tag(keyword).group:04X},{Tag(keyword).element:04X})" in message
    assert caught.value.tag == int(Tag(keyword))


def test_wildcards_in_numbers_are_refused_and_star_alone_is_universal() -> None:
    with pytest.raises(InvalidQuery, match="no wildcards in IS: SeriesNumber"):
        parse(with_raw(identifier("SERIES", StudyInstanceUID="1.2"), "SeriesNumber", "IS", b"1*"))
    query = parse(with_raw(identifier("SERIES", StudyInstanceUID="1.2"), "SeriesNumber", "IS", b"* "))
    assert matcher_of(query, "SeriesNumber") == Universal()
    query = parse(identifier("SERIES", StudyInstanceUID="1.2", SeriesNumber="7"))
    assert matcher_of(query, "SeriesNumber") == SingleValue("7")


def test_literal_text_in_a_uid_or_date_is_not_a_pattern() -> None:
    """'?' and '*' are wildcards only where the VR allows them; elsewhere they are errors, and
    characters special to SQL are plain text everywhere."""
    query = parse(identifier("STUDY", AccessionNumber="WO_100%", StudyDescription="Weld [A]"))
    assert matcher_of(query, "AccessionNumber") == SingleValue("WO_100%")
    assert matcher_of(query, "StudyDescription") == SingleValue("Weld [A]")
    with pytest.raises(InvalidQuery, match="no wildcards in UI"):
        parse(identifier("STUDY", StudyInstanceUID="1.2.?"))


def test_binary_numbers_match_as_single_values() -> None:
    query = parse(
        identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3", Rows=256, Columns=None)
    )
    assert matcher_of(query, "Rows") == SingleValue("256")
    assert matcher_of(query, "Columns") == Universal()


# -- sequences ----------------------------------------------------------------------------------
def test_sequence_with_one_item_matches_on_its_keys() -> None:
    item = Dataset()
    item.IndicationType = "CRACK"
    item.IndicationLabel = ""
    ds = identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3")
    ds.IndicationSequence = Sequence([item])

    query = parse(ds)

    matcher = matcher_of(query, "IndicationSequence")
    assert isinstance(matcher, SequenceMatch)
    assert [(k.keyword, k.matcher) for k in matcher.item] == [
        ("IndicationLabel", Universal()),
        ("IndicationType", SingleValue("CRACK")),
    ]
    assert not query.key(int(Tag("IndicationSequence"))).is_universal  # type: ignore[union-attr]


def test_empty_sequence_or_empty_item_is_universal() -> None:
    ds = identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3")
    ds.IndicationSequence = Sequence([])
    ds.AnatomicRegionSequence = Sequence([Dataset()])
    query = parse(ds)
    assert matcher_of(query, "IndicationSequence") == SequenceMatch(())
    assert matcher_of(query, "AnatomicRegionSequence") == SequenceMatch(())
    assert {k.keyword for k in query.matching_keys} == {"StudyInstanceUID", "SeriesInstanceUID"}


def test_sequence_matching_takes_one_item() -> None:
    one, two = Dataset(), Dataset()
    one.IndicationType = "CRACK"
    two.IndicationType = "PORE"
    ds = identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3")
    ds.IndicationSequence = Sequence([one, two])
    with pytest.raises(InvalidQuery, match="sequence matching takes one item: IndicationSequence"):
        parse(ds)


# -- hierarchy (PS3.4 C.4.1.2) ------------------------------------------------------------------
def test_level_is_required_and_must_belong_to_the_model() -> None:
    with pytest.raises(QueryModelMismatch, match=r"missing QueryRetrieveLevel \(0008,0052\)"):
        parse(identifier(None, PatientID="X"))
    with pytest.raises(QueryModelMismatch, match="not a level of the study root model") as caught:
        parse(identifier("PATIENT", PatientID="X"), STUDY_ROOT)
    assert caught.value.tag == 0x00080052
    with pytest.raises(QueryModelMismatch, match="'FRAME'"):
        parse(identifier("FRAME", PatientID="X"), PATIENT_ROOT)
    assert parse(identifier("PATIENT", PatientID="X"), PATIENT_ROOT).level is Level.PATIENT


@pytest.mark.parametrize(
    ("model", "level", "keys", "missing"),
    [
        (PATIENT_ROOT, "STUDY", {}, "PatientID"),
        (PATIENT_ROOT, "SERIES", {"PatientID": "P"}, "StudyInstanceUID"),
        (PATIENT_ROOT, "IMAGE", {"PatientID": "P", "StudyInstanceUID": "1.2"}, "SeriesInstanceUID"),
        (STUDY_ROOT, "SERIES", {}, "StudyInstanceUID"),
        (STUDY_ROOT, "IMAGE", {"StudyInstanceUID": "1.2"}, "SeriesInstanceUID"),
    ],
)
def test_unique_keys_of_the_levels_above_are_required(
    model: InformationModel, level: str, keys: dict[str, str], missing: str
) -> None:
    with pytest.raises(QueryModelMismatch, match=f"level missing: {missing}") as caught:
        parse(identifier(level, **keys), model)
    assert caught.value.tag == int(Tag(missing))


def test_unique_keys_above_must_be_single_values_or_uid_lists() -> None:
    with pytest.raises(QueryModelMismatch, match="not a single value: PatientID"):
        parse(identifier("STUDY", PatientID="BLADE*"), PATIENT_ROOT)
    with pytest.raises(QueryModelMismatch, match="not a single value: StudyInstanceUID"):
        parse(identifier("SERIES", StudyInstanceUID=""), STUDY_ROOT)
    query = parse(identifier("SERIES", StudyInstanceUID="1.2\\1.3"), STUDY_ROOT)
    assert matcher_of(query, "StudyInstanceUID") == UidList(("1.2", "1.3"))
    # In the Study Root model the patient is part of the study: no patient key is required.
    assert parse(identifier("STUDY", PatientID="BLADE*"), STUDY_ROOT).level is Level.STUDY


def test_keys_below_the_level_may_only_be_universal() -> None:
    query = parse(identifier("STUDY", Modality="", SOPInstanceUID=""))
    assert {k.keyword for k in query.keys} == {"Modality", "SOPInstanceUID"}
    with pytest.raises(
        QueryModelMismatch, match=r"SERIES key matched in a STUDY query: Modality \(0008,0060\)"
    ):
        parse(identifier("STUDY", Modality="DX"))
    with pytest.raises(QueryModelMismatch, match="STUDY key matched in a PATIENT query: StudyDate"):
        parse(identifier("PATIENT", StudyDate="20240101"), PATIENT_ROOT)


def test_keys_above_the_level_are_matched() -> None:
    query = parse(
        identifier("SERIES", PatientID="P-1", PatientName="Turb*", StudyInstanceUID="1.2"), PATIENT_ROOT
    )
    assert matcher_of(query, "PatientName") == Wildcard("Turb*")


# -- character sets -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("charset", "name"),
    [("ISO_IR 192", "Лопатка^涡轮叶片*"), ("ISO_IR 100", "Gehäuse^Flügel*"), ("ISO_IR 144", "Лопатка*")],
)
def test_values_are_decoded_in_the_specific_character_set(charset: str, name: str) -> None:
    ds = identifier("PATIENT", SpecificCharacterSet=charset, PatientName=name)
    query = parse(ds, PATIENT_ROOT)
    assert matcher_of(query, "PatientName") == Wildcard(name)
    assert query.character_set == (charset,)
    assert query.key(0x00080005) is None  # not a key: the response decides its own


def test_latin1_bytes_are_not_read_as_utf8() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.SpecificCharacterSet = "ISO_IR 100"
    name = "Gehäuse^Flügel".encode("latin-1")
    ds = with_raw(ds, "PatientName", "PN", name)
    query = query_from_identifier(ds, PATIENT_ROOT)
    assert matcher_of(query, "PatientName") == SingleValue("Gehäuse^Flügel")


def test_default_repertoire_has_no_character_set() -> None:
    assert parse(identifier("PATIENT", PatientID="X"), PATIENT_ROOT).character_set == ()


def test_unknown_character_set_is_refused() -> None:
    ds = identifier("PATIENT", PatientName="X")
    ds.SpecificCharacterSet = "ISO_IR 999"
    with pytest.raises(InvalidQuery, match="unknown character set: SpecificCharacterSet .* 'ISO_IR 999'"):
        parse(ds, PATIENT_ROOT)


def test_person_name_with_component_groups_stays_one_value() -> None:
    ds = identifier("PATIENT", SpecificCharacterSet="ISO_IR 192", PatientName="Yamada^Tarou=山田^太郎")
    query = parse(ds, PATIENT_ROOT)
    assert matcher_of(query, "PatientName") == SingleValue("Yamada^Tarou=山田^太郎")


def test_private_and_unknown_attributes_are_return_keys_read_from_the_metadata() -> None:
    ds = identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3")
    ds.add_new(0x00091010, "LO", "")
    ds.KVP = "160"
    query = parse(ds)
    assert query.key(0x00091010) is not None
    assert query.key(0x00091010).is_universal  # type: ignore[union-attr]
    assert matcher_of(query, "KVP") == SingleValue("160")
