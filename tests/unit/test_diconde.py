"""pacs.diconde: the table of indexed attributes and the column values read from a dataset.

The table is data; a misspelt keyword there would silently index nothing, and a column missing from
the schema would fail only at the first ingest. These tests read the CSV independently of the loader.
"""

from __future__ import annotations

import csv
import io
from importlib import resources

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword

from pacs.diconde import LEVELS, Level, column_values, indexed_attributes
from pacs.index import schema
from tests.support.factories import diconde_dx, part10_bytes


def csv_rows() -> list[dict[str, str]]:
    text = resources.files("pacs.diconde").joinpath("attributes.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#")))


def test_every_row_of_the_table_resolves_to_a_dicom_keyword() -> None:
    rows = csv_rows()
    assert len(rows) >= 30
    for row in rows:
        assert row["level"] in LEVELS, row
        assert tag_for_keyword(row["keyword"]) is not None, f"{row['keyword']} is not a DICOM keyword"
        assert row["column"] and row["nde_name"], row


def test_the_loader_keeps_every_row_with_its_tag_and_vr() -> None:
    loaded = indexed_attributes()
    rows = csv_rows()
    assert sum(len(attrs) for attrs in loaded.values()) == len(rows)
    by_keyword = {attr.keyword: attr for attrs in loaded.values() for attr in attrs}
    for row in rows:
        attr = by_keyword[row["keyword"]]
        assert (attr.level, attr.column, attr.nde_name) == (row["level"], row["column"], row["nde_name"])
        assert attr.tag == tag_for_keyword(row["keyword"])
        assert attr.vr == dictionary_VR(attr.tag)


def test_columns_are_unique_per_level_and_exist_in_the_schema() -> None:
    tables = {
        "component": schema.component,
        "inspection": schema.inspection,
        "series": schema.series,
        "instance": schema.instance,
    }
    for level, attrs in indexed_attributes().items():
        columns = [attr.column for attr in attrs]
        assert len(columns) == len(set(columns)), level
        assert set(columns) <= set(tables[level].c.keys()), level


def test_the_nde_vocabulary_maps_to_the_patient_module() -> None:
    """DICONDE reads the Patient module as the component (ASTM E2339)."""
    component = {attr.keyword: attr.column for attr in indexed_attributes()["component"]}
    assert component["PatientID"] == "part_id"
    assert component["PatientName"] == "component_name"
    assert component["OtherPatientIDs"] == "serial_numbers"
    assert component["MaterialThickness"] == "material_thickness"
    inspection = {attr.keyword: attr.column for attr in indexed_attributes()["inspection"]}
    assert inspection["AccessionNumber"] == "accession_number"


def test_column_values_of_a_digital_radiograph() -> None:
    ds = diconde_dx(part_id="BLADE-0042", component_name="Turbine^Blade", seed=3)

    component = column_values("component", ds)
    assert component == {
        "part_id": "BLADE-0042",
        "part_id_issuer": None,
        "component_name": "Turbine^Blade",
        "serial_numbers": "SN-BLADE-0042-A\\SN-BLADE-0042-B",
        "manufacturing_date": "20190412",
        "component_manufacturer": "Acme Aero Castings",
        "material_grade": "Inconel 718",
        "component_shape": "OTHER",
        "material_thickness": 12.5,
        "material_pipe_diameter": None,
        "manufacturing_procedure": None,
    }
    assert isinstance(component["material_thickness"], float)

    inspection = column_values("inspection", ds)
    assert inspection["study_instance_uid"] == ds.StudyInstanceUID
    assert inspection["accession_number"] == "WO-1000"
    assert inspection["study_date"] == "20240315"

    series = column_values("series", ds)
    assert series["series_instance_uid"] == ds.SeriesInstanceUID
    assert series["modality"] == "DX"
    assert series["series_number"] == 1 and isinstance(series["series_number"], int)
    assert series["station_name"] == "NDT-STATION-1"

    instance = column_values("instance", ds)
    assert instance["sop_instance_uid"] == ds.SOPInstanceUID
    assert instance["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.1.1"
    assert (instance["rows"], instance["columns"], instance["bits_allocated"]) == (256, 256, 16)
    assert instance["number_of_frames"] is None


def test_values_read_back_from_a_file_are_the_same() -> None:
    """The ingest path indexes a dataset read from the stored bytes, not the generator's object."""
    ds = diconde_dx(part_id="BLADE-7", component_name="Schaufel^Jörg", charset="ISO_IR 192")
    read = dcmread(io.BytesIO(part10_bytes(ds)), stop_before_pixels=True)
    for level in LEVELS:
        assert column_values(level, read) == column_values(level, ds), level
    assert column_values("component", read)["component_name"] == "Schaufel^Jörg"


def test_multi_valued_strings_are_joined_by_backslash() -> None:
    ds = diconde_dx(OtherPatientIDs=["SN-1", "SN-2", "SN-3"], StationName="ST-1")
    assert column_values("component", ds)["serial_numbers"] == "SN-1\\SN-2\\SN-3"
    single = diconde_dx(OtherPatientIDs="SN-ONLY")
    assert column_values("component", single)["serial_numbers"] == "SN-ONLY"


def test_numbers_keep_the_first_of_several_values() -> None:
    ds = diconde_dx(MaterialThickness=["3.5", "7.25"])
    assert column_values("component", ds)["material_thickness"] == pytest.approx(3.5)


@pytest.mark.parametrize(
    ("level", "keyword", "column"),
    [
        ("inspection", "AccessionNumber", "accession_number"),
        ("component", "MaterialThickness", "material_thickness"),
        ("series", "SeriesNumber", "series_number"),
    ],
)
def test_empty_or_absent_values_are_none(level: Level, keyword: str, column: str) -> None:
    assert column_values(level, diconde_dx(**{keyword: None}))[column] is None
    empty = diconde_dx()
    empty[keyword].value = ""
    assert column_values(level, empty)[column] is None
