"""The table of queryable attributes agrees with the index it reads from.

A key whose column was renamed in ``attributes.csv`` or the schema would fail only when someone
queries it; these checks fail at once.
"""

from __future__ import annotations

from pacs.diconde import LEVELS, indexed_attributes
from pacs.index.schema import metadata
from pacs.query.attributes import UNIQUE_KEYS, Column, FromJson, attribute_for, query_attributes
from pacs.query.model import InformationModel, Level


def test_every_column_source_exists_in_the_schema() -> None:
    for attribute in query_attributes().values():
        source = attribute.source
        if isinstance(source, Column):
            table = metadata.tables[source.table]
            assert source.column in table.c, attribute.keyword
            if source.match_column:
                assert source.match_column in table.c, attribute.keyword


def test_every_indexed_attribute_is_matched_on_its_column_at_its_level() -> None:
    levels = {level.entity: level for level in Level}
    for entity in LEVELS:
        for indexed in indexed_attributes()[entity]:
            attribute = attribute_for(indexed.tag)
            assert attribute.level is levels[entity], indexed.keyword
            assert attribute.source == Column(
                entity,
                indexed.column,
                attribute.source.multi_valued,  # type: ignore[union-attr]
                "component_name_key" if indexed.keyword == "PatientName" else None,
            )


def test_multi_valued_columns_are_the_ones_dicom_allows_several_values() -> None:
    multi = {
        a.keyword
        for a in query_attributes().values()
        if isinstance(a.source, Column) and a.source.multi_valued
    }
    assert multi == {"OtherPatientIDs", "ModalitiesInStudy"}


def test_unique_keys_and_model_levels() -> None:
    assert [attribute_for(UNIQUE_KEYS[level]).keyword for level in Level] == [
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
    ]
    patient_id = attribute_for(UNIQUE_KEYS[Level.PATIENT])
    assert patient_id.home_level(InformationModel.PATIENT_ROOT) is Level.PATIENT
    assert patient_id.home_level(InformationModel.STUDY_ROOT) is Level.STUDY


def test_unknown_attributes_are_read_from_the_metadata_at_the_query_level() -> None:
    kvp_like = attribute_for(0x00181150)  # ExposureTime: not in any table
    assert kvp_like.keyword == "ExposureTime" and kvp_like.level is None and kvp_like.source == FromJson()
    private = attribute_for(0x00091010, "LO")
    assert (private.keyword, private.vr, private.level) == ("", "LO", None)
