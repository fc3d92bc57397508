"""A small archive of inspections, built once per module and backend pair through the ingest service.

| part ID    | component name                   | inspection: date, time, work order | series (instances) |
|------------|----------------------------------|------------------------------------|--------------------|
| BLADE-0001 | Turbine^Blade                    | S1 20240315 101500 WO-1000         | DX (2), CT (1)     |
| BLADE-0002 | TURBINE^Blade^Spare              | S2 20240401 093000 WO-2000         | DX (1)             |
| CASING-7   | Gehäuse^Flügelrad (ISO_IR 100)   | S3 20231120 1600 WO-3000           | US (1)             |
| WELD-3     | Лопатка^涡轮叶片 (ISO_IR 192)     | S4 20240315 160000.25 WO-4000      | US (1)             |
| blade-0003 | turbine^blade                    | S5 20240510 101500 WO-5000         | DX (1)             |

Queries only read; tests must not change it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.archive import Archive, open_archive
from pacs.config import load_settings
from pacs.context import CallerContext
from tests.conftest import BACKENDS
from tests.support.factories import diconde_dx, enhanced_ct, us_multiframe, write

CTX = CallerContext(via="import", user="tester")


def uid(name: str) -> str:
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


@dataclass
class Scans:
    archive: Archive
    study: dict[str, str] = field(default_factory=dict)  # S1.. -> StudyInstanceUID
    series: dict[str, str] = field(default_factory=dict)  # S1-DX .. -> SeriesInstanceUID
    instance: dict[str, str] = field(default_factory=dict)  # I1 .. -> SOPInstanceUID


def _indication(label: str, kind: str, disposition: str) -> Dataset:
    item = Dataset()
    item.IndicationLabel = label
    item.IndicationType = kind
    item.IndicationDisposition = disposition
    return item


def build(archive: Archive, folder: Path) -> Scans:
    scans = Scans(archive)
    for name in ("S1", "S2", "S3", "S4", "S5"):
        scans.study[name] = uid(f"study {name}")
    for name in ("S1-DX", "S1-CT", "S2-DX", "S3-US", "S4-US", "S5-DX"):
        scans.series[name] = uid(f"series {name}")
    for name in ("I1", "I2", "I3", "I4", "I5", "I6", "I7"):
        scans.instance[name] = uid(f"instance {name}")
    s, se, i = scans.study, scans.series, scans.instance
    datasets = [
        diconde_dx(
            part_id="BLADE-0001",
            component_name="Turbine^Blade",
            study_uid=s["S1"],
            series_uid=se["S1-DX"],
            sop_uid=i["I1"],
            rows=16,
            columns=16,
            AccessionNumber="WO-1000",
            StudyDescription="Weld 100% [A]_1",
            IndicationSequence=Sequence(
                [_indication("PORE-1", "POROSITY", "ACCEPT"), _indication("CRACK-1", "CRACK", "REJECT")]
            ),
        ),
        diconde_dx(
            part_id="BLADE-0001",
            component_name="Turbine^Blade",
            study_uid=s["S1"],
            series_uid=se["S1-DX"],
            sop_uid=i["I2"],
            rows=16,
            columns=16,
            seed=2,
            InstanceNumber=2,
            ImageType=["DERIVED", "SECONDARY"],
        ),
        enhanced_ct(
            part_id="BLADE-0001",
            component_name="Turbine^Blade",
            study_uid=s["S1"],
            series_uid=se["S1-CT"],
            sop_uid=i["I3"],
            frames=2,
            rows=16,
            columns=16,
            SeriesNumber=2,
        ),
        diconde_dx(
            part_id="BLADE-0002",
            component_name="TURBINE^Blade^Spare",
            study_uid=s["S2"],
            series_uid=se["S2-DX"],
            sop_uid=i["I4"],
            rows=16,
            columns=16,
            StudyDate="20240401",
            StudyTime="093000",
            AccessionNumber="WO-2000",
            StudyDescription="Weld A",
            MaterialGrade="Ti-6Al-4V",
            MaterialThickness="8",
            OperatorsName="Smith^Jane",
            KVP="120",
        ),
        us_multiframe(
            part_id="CASING-7",
            component_name="Gehäuse^Flügelrad",
            charset="ISO_IR 100",
            study_uid=s["S3"],
            series_uid=se["S3-US"],
            sop_uid=i["I5"],
            frames=2,
            rows=16,
            columns=16,
            StudyDate="20231120",
            StudyTime="1600",
            AccessionNumber="WO-3000",
        ),
        us_multiframe(
            part_id="WELD-3",
            component_name="Лопатка^涡轮叶片",
            charset="ISO_IR 192",
            study_uid=s["S4"],
            series_uid=se["S4-US"],
            sop_uid=i["I6"],
            frames=2,
            rows=16,
            columns=16,
            StudyDate="20240315",
            StudyTime="160000.25",
            AccessionNumber="WO-4000",
        ),
        diconde_dx(
            part_id="blade-0003",
            component_name="turbine^blade",
            study_uid=s["S5"],
            series_uid=se["S5-DX"],
            sop_uid=i["I7"],
            rows=16,
            columns=16,
            StudyDate="20240510",
            AccessionNumber="WO-5000",
        ),
    ]
    for number, ds in enumerate(datasets):
        archive.ingest.ingest_file(write(ds, folder / f"{number}.dcm"), CTX)
    return scans


@pytest.fixture(scope="module", params=BACKENDS)
def scans(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scans]:
    folder = tmp_path_factory.mktemp("query-archive")
    values: dict[str, object] = {"data_dir": folder / "pacs-data"}
    database = None
    if request.param == "postgresql+s3":
        postgres = request.getfixturevalue("postgres")
        database = postgres.fresh()
        values["database_url"] = database
        values["object_store"] = request.getfixturevalue("s3_server").url(f"query-{uuid.uuid4().hex[:12]}")
    archive = open_archive(load_settings(values))
    try:
        yield build(archive, folder)
    finally:
        archive.close()
        if database is not None:
            request.getfixturevalue("postgres").drop(database)
