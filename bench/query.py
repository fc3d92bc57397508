"""Query benchmark (C-FIND): study-level queries on a large PostgreSQL index, side by side with Orthanc.

The index is filled directly with PostgreSQL COPY from a synthetic, reproducible archive (components,
inspections, series, instances and their versions, with the counters, case-folded names and DICOM JSON
that ingest keeps), then the archive's DIMSE face (`pacs serve`) answers C-FINDs from a pynetdicom SCU
on one association; the same queries also run through `SearchService` and as plain SQL in this process
(no network). Orthanc is loaded through its REST API for a bounded time, our archive is filled with the
very inspections it took, and both answer the same C-FINDs in interleaved rounds. Every answer's number
of matches is checked against the synthetic data. See docs/benchmarks.md and bench/README.md.

    python bench/query.py            # 100,000 inspections / 1,000,000 instances, then Orthanc
    python bench/query.py --quick    # a smoke run of about a minute
"""

from __future__ import annotations

import argparse
import calendar
import concurrent.futures
import datetime as dt
import fnmatch
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/query.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    PACS_READY,
    READY_TIMEOUT,
    LineReader,
    Postgres,
    Processes,
    disk_of,
    listening,
    machine,
    orthanc_binary,
    pacs_command,
    wait_until,
)
from bench.report import write_section  # noqa: E402
from tests.support.net import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
POSTGRES_URL = os.environ.get("PACS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SEED = 20261126
TARGET_MS = 20.0
SCU_AE = "BENCH_SCU"

# Scale: inspections; a tenth as many components, ten instances per inspection (2-3 series).
DEFAULT_SCALE, QUICK_SCALE = 100_000, 2_000
DEFAULT_ORTHANC_SCALE, QUICK_ORTHANC_SCALE = 20_000, 300
ORTHANC_BUDGET = 240.0  # seconds of loading Orthanc; it gets the first inspections loaded by then
INSTANCES_PER_INSPECTION = 10
INSPECTIONS_PER_COMPONENT = 10
DEFAULT_REPEAT, QUICK_REPEAT = 30, 8

# -- the synthetic archive ------------------------------------------------------------------------
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid() uses it
FIRST_DAY = dt.date(2018, 1, 1)
LAST_DAY = dt.date(2025, 12, 31)  # eight years of inspections

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@dataclass(frozen=True)
class Family:
    """A kind of component: its name (PN, family^given) and part ID prefix, how common it is, and
    what inspects it."""

    name: str
    code: str
    weight: float
    methods: tuple[str, ...]
    materials: tuple[str, ...]
    shape: str
    thickness: tuple[float, float]  # mm


FAMILIES: tuple[Family, ...] = (
    Family(
        "Turbine^Blade", "BLADE", 14, ("CT", "DX", "DX", "US"), ("Inconel 718", "CMSX-4"), "OTHER", (1, 6)
    ),
    Family("Turbine^Vane", "VANE", 8, ("DX", "CT", "CR"), ("Mar-M247", "Inconel 738"), "OTHER", (1, 5)),
    Family("Turbine^Disc", "DISC", 4, ("US", "DX"), ("Inconel 718", "Waspaloy"), "OTHER", (20, 90)),
    Family("Compressor^Blade", "CBLADE", 8, ("DX", "CT"), ("Ti-6Al-4V",), "OTHER", (1, 4)),
    Family("Compressor^Disc", "CDISC", 3, ("US", "CT"), ("Ti-6Al-4V", "Ti-17"), "OTHER", (20, 80)),
    Family("Pipeline^Weld", "WELD", 12, ("CR", "DX", "US"), ("API 5L X65", "API 5L X70"), "PIPE", (8, 25)),
    Family("Pressure Vessel^Nozzle", "NOZZLE", 5, ("DX", "US"), ("SA-516 Gr 70",), "OTHER", (12, 60)),
    Family("Pressure Vessel^Shell", "SHELL", 4, ("US", "CR"), ("SA-516 Gr 70", "P355NH"), "PLATE", (10, 80)),
    Family("Wing^Spar", "SPAR", 5, ("US", "DX"), ("AA 7050-T7451", "CFRP"), "OTHER", (3, 30)),
    Family("Fuselage^Frame", "FRAME", 5, ("DX", "US"), ("AA 2024-T3", "CFRP"), "OTHER", (2, 12)),
    Family("Landing Gear^Axle", "AXLE", 3, ("US", "CT"), ("300M",), "BAR", (30, 120)),
    Family("Rail^Wheel", "WHEEL", 4, ("US",), ("ER7",), "OTHER", (30, 140)),
    Family("Casting^Housing", "HOUSING", 4, ("CT", "DX"), ("A356-T6", "EN-GJS-400"), "OTHER", (4, 40)),
    Family("Boiler^Tube", "TUBE", 4, ("CR", "DX"), ("SA-213 T22", "P91"), "PIPE", (3, 12)),
    Family("Bridge^Girder", "GIRDER", 2, ("US", "CR"), ("S355J2",), "OTHER", (10, 60)),
    Family("Überhitzer^Rohr", "UEROHR", 2, ("CR", "DX"), ("13CrMo4-5", "X20CrMoV11-1"), "PIPE", (4, 16)),
    Family("Schweißnaht^Behälter", "SNAHT", 2, ("DX", "US"), ("P265GH",), "PLATE", (8, 40)),
    Family("Échangeur^Plaque", "ECHPL", 2, ("US", "CT"), ("AISI 316L",), "PLATE", (1, 6)),
    Family("Soudure^Cuve", "SOUD", 1, ("DX", "US"), ("16MND5",), "PLATE", (20, 200)),
    Family("Łopatka^Turbiny", "LOPAT", 1, ("CT", "DX"), ("Inconel 713C",), "OTHER", (1, 6)),
    Family("Turbinenschaufel^Stufe", "TSCH", 1, ("CT", "US"), ("IN-939",), "OTHER", (1, 6)),
    Family("Ротор^Вал", "ROTOR", 1, ("US",), ("26NiCrMoV14-5",), "BAR", (200, 900)),
)
COMPONENT_MANUFACTURERS = (
    "Aerotec GmbH",
    "Nordic Castings AB",
    "Forgeworks Ltd",
    "Société Métallurgique",
    "Kowal",
)

# Per NDE method: SOP class, image size choices, bits, frames, photometric, transfer syntaxes.
SOP_DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SOP_CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SOP_CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
SOP_US = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage


@dataclass(frozen=True)
class Method:
    sop_class: str
    sizes: tuple[tuple[int, int], ...]  # (rows, columns)
    bits: int
    frames: tuple[int, int] | None  # multi-frame: min, max
    photometric: str
    syntaxes: tuple[str, ...]
    manufacturers: tuple[str, ...]
    descriptions: tuple[str, ...]
    protocol: str
    weight: float  # how many more instances its series get


METHODS: dict[str, Method] = {
    "DX": Method(
        SOP_DX,
        ((2048, 2048), (3072, 3072), (4096, 2048)),
        16,
        None,
        "MONOCHROME1",
        (EXPLICIT_LE, JPEG2000_LOSSLESS),
        ("Waygate Technologies", "Carestream NDT", "Vidisco"),
        ("DR 0°", "DR 90°", "DR double wall"),
        "ISO 17636-2 class B",
        1.0,
    ),
    "CR": Method(
        SOP_CR,
        ((2500, 2048), (4800, 1200)),
        16,
        None,
        "MONOCHROME1",
        (EXPLICIT_LE,),
        ("Fujifilm", "Carestream NDT", "Dürr NDT"),
        ("CR plate", "CR weld strip"),
        "ASTM E2738",
        1.0,
    ),
    "CT": Method(
        SOP_CT,
        ((512, 512), (1024, 1024)),
        16,
        None,
        "MONOCHROME2",
        (EXPLICIT_LE,),
        ("Zeiss", "Nikon Metrology", "Waygate Technologies"),
        ("CT volume", "CT slices"),
        "ASTM E1695",
        3.0,
    ),
    "US": Method(
        SOP_US,
        ((480, 640), (600, 800)),
        8,
        (10, 60),
        "MONOCHROME2",
        (EXPLICIT_LE, JPEG_BASELINE),
        ("Olympus", "Zetec", "Sonatest"),
        ("PAUT sector scan", "TOFD", "C-scan"),
        "ISO 13588",
        1.5,
    ),
}


def _element(vr: str, *values: Any) -> dict[str, Any]:
    """A DICOM JSON element (PS3.18 F.2); no value when every value is empty."""
    kept = [v for v in values if v not in (None, "")]
    if not kept:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": v} for v in kept]}
    return {"vr": vr, "Value": kept}


def _fragment(elements: dict[str, dict[str, Any]]) -> str:
    """DICOM JSON elements as the inside of a JSON object, to be joined with other fragments."""
    return json.dumps(elements, ensure_ascii=False, separators=(",", ":"))[1:-1]


@dataclass
class Component:
    id: int
    family: Family
    part_id: str
    name: str
    serial_numbers: str | None
    manufacturing_date: str
    manufacturer: str
    material_grade: str
    shape: str
    thickness: float
    studies: int = 0
    series: int = 0
    instances: int = 0
    created_at: dt.datetime | None = None
    json: str = ""

    @property
    def name_key(self) -> str:
        return self.name.casefold()  # pacs.diconde.person_name_key


@dataclass
class Inspection:
    id: int
    component: Component
    uid: str
    date: str
    time: str
    study_id: str
    accession: str
    description: str
    created_at: dt.datetime
    modalities: str = ""
    series: int = 0
    instances: int = 0


@dataclass
class Series:
    id: int
    inspection: Inspection
    uid: str
    modality: str
    number: int
    description: str
    time: str
    manufacturer: str
    station: str
    rows: int
    columns: int
    frames: int | None
    syntax: str
    instances: int = 0
    first_instance: int = 0  # id of its first instance; the others follow
    json: str = ""


class Synthetic:
    """A reproducible archive: the same ``seed`` and scale give the same rows, UIDs and values.

    Inspections arrive in date order (their ids follow their dates, as an archive's do), each with
    2-3 series of its component family's NDE methods; ``instances`` are spread over the series (at
    least one each, CT series get more). Component ids follow their first inspection.
    """

    def __init__(self, inspections: int, instances: int, components: int, seed: int = SEED) -> None:
        import numpy as np

        rng = random.Random(seed)
        self.seed = seed
        # Components, and how often each is inspected (skewed: some parts are inspected often).
        weights = [f.weight for f in FAMILIES]
        families = rng.choices(FAMILIES, weights, k=components)
        activity = [rng.lognormvariate(0, 0.8) for _ in range(components)]
        owners = list(range(components)) + rng.choices(
            range(components), activity, k=inspections - components
        )
        rng.shuffle(owners)
        # Dates: weekdays (weekends rare), growing activity over the years; times in working hours.
        days = [FIRST_DAY + dt.timedelta(d) for d in range((LAST_DAY - FIRST_DAY).days + 1)]
        day_weights = [
            (1.0 if day.weekday() < 5 else 0.08) * (1 + i / len(days)) for i, day in enumerate(days)
        ]
        drawn = sorted(
            (day, rng.randrange(6 * 3600, 19 * 3600)) for day in rng.choices(days, day_weights, k=inspections)
        )
        self.components: list[Component] = []
        by_index: dict[int, Component] = {}
        sequence: dict[str, int] = {}
        self.inspections: list[Inspection] = []
        accession: dict[int, int] = {}
        for number, ((day, seconds), owner) in enumerate(zip(drawn, owners, strict=True), start=1):
            when = dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(seconds=seconds)
            comp = by_index.get(owner)
            if comp is None:
                family = families[owner]
                sequence[family.code] = sequence.get(family.code, 0) + 1
                comp = Component(
                    id=len(self.components) + 1,
                    family=family,
                    part_id=f"{family.code}-{sequence[family.code]:06d}",
                    name=f"{family.name} {rng.randint(1, 9999)}",
                    serial_numbers=f"SN{rng.randrange(10**7, 10**8)}" if rng.random() < 0.3 else None,
                    manufacturing_date=(day - dt.timedelta(rng.randint(30, 3000))).strftime("%Y%m%d"),
                    manufacturer=rng.choice(COMPONENT_MANUFACTURERS),
                    material_grade=rng.choice(family.materials),
                    shape=family.shape,
                    thickness=round(rng.uniform(*family.thickness), 1),
                    created_at=when,
                )
                by_index[owner] = comp
                self.components.append(comp)
            comp.studies += 1
            accession[day.year] = accession.get(day.year, 0) + 1
            self.inspections.append(
                Inspection(
                    id=number,
                    component=comp,
                    uid=f"{UID_ROOT}1.{number}.{rng.randrange(10**11, 10**12)}",
                    date=day.strftime("%Y%m%d"),
                    time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
                    study_id=str(comp.studies),
                    accession=f"WO-{day.year}-{accession[day.year]:06d}",
                    description="",
                    created_at=when + dt.timedelta(minutes=rng.randint(5, 120)),
                )
            )
        # Series: 2 or 3 per inspection, methods drawn from the family's.
        self.series: list[Series] = []
        for insp in self.inspections:
            count = rng.choice((2, 3))
            methods = [rng.choice(insp.component.family.methods) for _ in range(count)]
            insp.modalities = "\\".join(sorted(set(methods)))
            insp.series = count
            insp.component.series += count
            insp.description = (
                f"{insp.component.family.name.split('^')[-1]} {' + '.join(dict.fromkeys(methods))}"
            )
            start = int(insp.time[:2]) * 3600 + int(insp.time[2:4]) * 60 + int(insp.time[4:])
            for j, modality in enumerate(methods, start=1):
                method = METHODS[modality]
                rows, columns = rng.choice(method.sizes)
                at = min(start + 600 * j, 86399)
                self.series.append(
                    Series(
                        id=len(self.series) + 1,
                        inspection=insp,
                        uid=f"{UID_ROOT}2.{len(self.series) + 1}.{rng.randrange(10**11, 10**12)}",
                        modality=modality,
                        number=j,
                        description=rng.choice(method.descriptions),
                        time=f"{at // 3600:02d}{at // 60 % 60:02d}{at % 60:02d}",
                        manufacturer=rng.choice(method.manufacturers),
                        station=f"NDT-{modality}-{rng.randint(1, 12):02d}",
                        rows=rows,
                        columns=columns,
                        frames=rng.randint(*method.frames) if method.frames else None,
                        syntax=rng.choice(method.syntaxes),
                    )
                )
        # Instances: at least one per series, the rest spread by method weight.
        if instances < len(self.series):
            raise ValueError(f"{instances} instances cannot fill {len(self.series)} series")
        spread = np.random.default_rng(seed).multinomial(
            instances - len(self.series),
            _normalised([METHODS[s.modality].weight for s in self.series]),
        )
        next_instance = 1
        for s, extra in zip(self.series, spread.tolist(), strict=True):
            s.instances = 1 + extra
            s.first_instance = next_instance
            next_instance += s.instances
            s.inspection.instances += s.instances
            s.inspection.component.instances += s.instances
        self.instance_count = next_instance - 1
        self._json_fragments()

    def truncate(self, inspections: int) -> None:
        """Keep the first ``inspections`` (an archive as it was when they had arrived): their series,
        instances and components, with the counters recounted. Ids stay as they were: inspections,
        series, instances and components are numbered in arrival order."""
        if inspections >= len(self.inspections):
            return
        self.inspections = self.inspections[:inspections]
        self.series = [s for s in self.series if s.inspection.id <= inspections]
        seen = {i.component.id for i in self.inspections}
        self.components = [c for c in self.components if c.id in seen]
        for c in self.components:
            c.studies = c.series = c.instances = 0
        for i in self.inspections:
            i.component.studies += 1
            i.component.series += i.series
            i.component.instances += i.instances
        self.instance_count = sum(s.instances for s in self.series)

    # -- DICOM JSON, as ingest keeps it (pacs.dicom.json.to_dicom_json): one fragment per level ---
    def _json_fragments(self) -> None:
        inspection_json: dict[int, str] = {}
        for comp in self.components:
            comp.json = _fragment(
                {
                    "00080005": _element("CS", "ISO_IR 192"),
                    "00100010": _element("PN", comp.name),
                    "00100020": _element("LO", comp.part_id),
                    "00100030": _element("DA", comp.manufacturing_date),
                    "00100040": _element("CS"),
                    **({"00101000": _element("LO", comp.serial_numbers)} if comp.serial_numbers else {}),
                    "00140028": _element("ST", comp.manufacturer),
                    "00140030": _element("DS", comp.thickness),
                    "00140042": _element("ST", comp.material_grade),
                    "00140050": _element("CS", comp.shape),
                }
            )
        for insp in self.inspections:
            inspection_json[insp.id] = _fragment(
                {
                    "00080020": _element("DA", insp.date),
                    "00080030": _element("TM", insp.time),
                    "00080050": _element("SH", insp.accession),
                    "00080090": _element("PN"),
                    "00081030": _element("LO", insp.description),
                    "0020000D": _element("UI", insp.uid),
                    "00200010": _element("SH", insp.study_id),
                }
            )
        for s in self.series:
            method = METHODS[s.modality]
            insp = s.inspection
            elements = {
                "00080008": _element("CS", "ORIGINAL", "PRIMARY"),
                "00080016": _element("UI", method.sop_class),
                "00080021": _element("DA", insp.date),
                "00080023": _element("DA", insp.date),
                "00080031": _element("TM", s.time),
                "00080060": _element("CS", s.modality),
                "00080070": _element("LO", s.manufacturer),
                "00081010": _element("SH", s.station),
                "0008103E": _element("LO", s.description),
                "00181030": _element("LO", method.protocol),
                "0020000E": _element("UI", s.uid),
                "00200011": _element("IS", s.number),
                "00280002": _element("US", 1),
                "00280004": _element("CS", method.photometric),
                "00280010": _element("US", s.rows),
                "00280011": _element("US", s.columns),
                "00280100": _element("US", method.bits),
                "00280101": _element("US", method.bits if method.bits == 8 else 14),
                "00280102": _element("US", (method.bits if method.bits == 8 else 14) - 1),
                "00280103": _element("US", 0),
            }
            if s.frames:
                elements["00280008"] = _element("IS", s.frames)
            encapsulated = s.syntax != EXPLICIT_LE
            pixel_vr = "OB" if encapsulated or method.bits == 8 else "OW"
            elements["7FE00010"] = {"vr": pixel_vr, "BulkDataURI": "7FE00010"}
            s.json = "{" + ",".join(
                (s.inspection.component.json, inspection_json[insp.id], _fragment(elements))
            )

    # -- rows -------------------------------------------------------------------------------------
    def instances_of(self, s: Series) -> Iterator[tuple[int, int, str, str]]:
        """(instance id, instance number, SOP Instance UID, Content Time) of a series' instances."""
        hh, mm, ss = int(s.time[:2]), int(s.time[2:4]), int(s.time[4:])
        base = hh * 3600 + mm * 60 + ss
        for k in range(s.instances):
            instance_id = s.first_instance + k
            at = min(base + 2 * k, 86399)
            yield (
                instance_id,
                k + 1,
                f"{UID_ROOT}3.{instance_id}.{_digits(self.seed, instance_id)}",
                f"{at // 3600:02d}{at // 60 % 60:02d}{at % 60:02d}",
            )

    def dicom_json(self, s: Series, uid: str, number: int, content_time: str) -> str:
        return (
            f'{s.json},"00080018":{{"vr":"UI","Value":["{uid}"]}},'
            f'"00080033":{{"vr":"TM","Value":["{content_time}"]}},'
            f'"00200013":{{"vr":"IS","Value":[{number}]}}}}'
        )

    def version_values(self, s: Series, instance_id: int, uid: str) -> dict[str, Any]:
        """Where the object is and what it hashes to, as ingest records them (no object exists)."""
        digest = hashlib.sha256(f"{self.seed}:{instance_id}".encode()).hexdigest()
        method = METHODS[s.modality]
        frames = s.frames or 1
        frame_bytes = s.rows * s.columns * method.bits // 8
        if s.syntax == JPEG2000_LOSSLESS:
            frame_bytes = frame_bytes * 45 // 100
        elif s.syntax == JPEG_BASELINE:
            frame_bytes = frame_bytes // 12
        dataset_offset = 132 + 174 + len(uid) + len(s.syntax) + len(method.sop_class)
        pixel_offset = dataset_offset + len(s.json) + 200  # the header is about as long as its JSON
        encapsulated = s.syntax != EXPLICIT_LE
        segments = []
        at = pixel_offset + (8 + 8 if encapsulated else 0)  # item tags: offset table, first fragment
        for _ in range(frames):
            segments.append([[at, frame_bytes]])
            at += frame_bytes + (8 if encapsulated else 0)
        received = s.inspection.created_at + dt.timedelta(seconds=instance_id % 600)
        day = int(received.timestamp() // 86400) % 256
        return {
            "object_key": f"{day:02x}{digest[34:64]}",  # pacs.services.ingest.new_object_key's form
            "dataset_sha256": digest,
            "file_meta_sha256": hashlib.sha256(digest.encode()).hexdigest(),
            "dataset_offset": dataset_offset,
            "size": at + (8 if encapsulated else 0),
            "transfer_syntax_uid": s.syntax,
            "pixel_data_offset": pixel_offset,
            "frames": json.dumps(segments),
            "received_at": received,
        }

    def part10_files(self, s: Series, *, pixels: bool = False) -> Iterator[bytes]:
        """The series' instances as Part 10 files, built from the same DICOM JSON the index gets.
        Without ``pixels`` (what Orthanc gets: queries never read them) in explicit VR little endian;
        with, as a stand-in JPEG 2000 of a few bytes per frame, enough for the archive's parser.

        pydicom encodes the series' attributes once; each instance's own three attributes and its
        file meta are spliced in (pydicom would take a millisecond per file)."""
        from pydicom.dataset import Dataset
        from pydicom.encaps import encapsulate
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        model = json.loads(s.json + "}")
        model.pop("7FE00010")
        ds = Dataset.from_json(model)
        if pixels:
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51"] * (s.frames or 1))
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True  # encapsulated
        syntax = JPEG2000_LOSSLESS if pixels else EXPLICIT_LE
        cuts = (0x00080018, 0x00080033, 0x00200013)  # SOPInstanceUID, ContentTime, InstanceNumber
        segments = []
        for low, high in zip((0, *cuts), (*cuts, 1 << 32), strict=True):
            part = Dataset()
            for elem in ds:
                if low < int(elem.tag) < high:
                    part.add(elem)
            out = DicomBytesIO()
            out.is_little_endian, out.is_implicit_VR = True, False
            write_dataset(out, part, ds._character_set)
            segments.append(out.getvalue())
        sop_class = METHODS[s.modality].sop_class
        for _instance_id, number, uid, content_time in self.instances_of(s):
            yield b"".join(
                (
                    _file_meta(sop_class, uid, syntax),
                    segments[0],
                    _explicit(0x00080018, "UI", uid),
                    segments[1],
                    _explicit(0x00080033, "TM", content_time),
                    segments[2],
                    _explicit(0x00200013, "IS", str(number)),
                    segments[3],
                )
            )


IMPLEMENTATION_UID = UID_ROOT + "9.1"  # the benchmark's, in the file meta of the files it makes


def _explicit(tag: int, vr: str, text: str) -> bytes:
    """One short-form element in explicit VR little endian, padded to an even length."""
    value = text.encode("ascii")
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def _file_meta(sop_class: str, uid: str, syntax: str) -> bytes:
    """Preamble, prefix and file meta group (PS3.10 7.1)."""
    body = b"".join(
        (
            struct.pack("<HH2s2xI", 0x0002, 0x0001, b"OB", 2) + b"\0\1",
            _explicit(0x00020002, "UI", sop_class),
            _explicit(0x00020003, "UI", uid),
            _explicit(0x00020010, "UI", syntax),
            _explicit(0x00020012, "UI", IMPLEMENTATION_UID),
        )
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return bytes(128) + b"DICM" + group_length + body


def _digits(seed: int, number: int) -> int:
    """Twelve reproducible digits that make a UID look generated."""
    return 10**11 + (number * 2654435761 + seed) % (9 * 10**11)


def _normalised(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


# -- the bulk fill ----------------------------------------------------------------------------------
COMPONENT_COLUMNS = (
    "id",
    "part_id",
    "component_name",
    "component_name_key",
    "serial_numbers",
    "manufacturing_date",
    "component_manufacturer",
    "material_grade",
    "component_shape",
    "material_thickness",
    "number_of_studies",
    "number_of_series",
    "number_of_instances",
    "created_at",
)
INSPECTION_COLUMNS = (
    "id",
    "component_id",
    "study_instance_uid",
    "study_date",
    "study_time",
    "study_id",
    "accession_number",
    "study_description",
    "modalities_in_study",
    "number_of_series",
    "number_of_instances",
    "created_at",
)
SERIES_COLUMNS = (
    "id",
    "inspection_id",
    "series_instance_uid",
    "modality",
    "series_number",
    "series_description",
    "series_date",
    "series_time",
    "manufacturer",
    "station_name",
    "protocol_name",
    "number_of_instances",
    "created_at",
)
INSTANCE_COLUMNS = (
    "id",
    "series_id",
    "sop_instance_uid",
    "sop_class_uid",
    "instance_number",
    "content_date",
    "content_time",
    "number_of_frames",
    "rows",
    "columns",
    "bits_allocated",
    "current_version_id",
    "created_at",
    "updated_at",
)
VERSION_COLUMNS = (
    "id",
    "instance_id",
    "object_key",
    "dataset_sha256",
    "file_meta_sha256",
    "dataset_offset",
    "size",
    "transfer_syntax_uid",
    "pixel_data_offset",
    "frames",
    "dicom_json",
    "received_at",
    "received_via",
    "source_ae",
    "source_address",
)


def component_row(c: Component) -> tuple[Any, ...]:
    return (
        c.id,
        c.part_id,
        c.name,
        c.name_key,
        c.serial_numbers,
        c.manufacturing_date,
        c.manufacturer,
        c.material_grade,
        c.shape,
        c.thickness,
        c.studies,
        c.series,
        c.instances,
        c.created_at,
    )


def inspection_row(i: Inspection) -> tuple[Any, ...]:
    return (
        i.id,
        i.component.id,
        i.uid,
        i.date,
        i.time,
        i.study_id,
        i.accession,
        i.description,
        i.modalities,
        i.series,
        i.instances,
        i.created_at,
    )


def series_row(s: Series) -> tuple[Any, ...]:
    return (
        s.id,
        s.inspection.id,
        s.uid,
        s.modality,
        s.number,
        s.description,
        s.inspection.date,
        s.time,
        s.manufacturer,
        s.station,
        METHODS[s.modality].protocol,
        s.instances,
        s.inspection.created_at,
    )


def instance_rows(data: Synthetic, s: Series) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """(instance row, version row) of each instance of ``s``; version id = instance id."""
    method = METHODS[s.modality]
    for instance_id, number, uid, content_time in data.instances_of(s):
        version = data.version_values(s, instance_id, uid)
        received = version["received_at"]
        yield (
            (
                instance_id,
                s.id,
                uid,
                method.sop_class,
                number,
                s.inspection.date,
                content_time,
                s.frames,
                s.rows,
                s.columns,
                method.bits,
                instance_id,
                received,
                received,
            ),
            (
                instance_id,
                instance_id,
                version["object_key"],
                version["dataset_sha256"],
                version["file_meta_sha256"],
                version["dataset_offset"],
                version["size"],
                version["transfer_syntax_uid"],
                version["pixel_data_offset"],
                version["frames"],
                data.dicom_json(s, uid, number, content_time),
                received,
                "c-store",
                s.station.replace("-", "_"),
                f"10.20.{s.id % 250}.{s.id % 200 + 20}",
            ),
        )


def check_schema_coverage() -> None:
    """Every column the fill leaves out has a default or may be NULL: the rows respect the schema."""
    from pacs.index.schema import component, inspection, instance, instance_version, series

    for table, columns in (
        (component, COMPONENT_COLUMNS),
        (inspection, INSPECTION_COLUMNS),
        (series, SERIES_COLUMNS),
        (instance, INSTANCE_COLUMNS),
        (instance_version, VERSION_COLUMNS),
    ):
        unknown = set(columns) - set(table.c.keys())
        if unknown:
            raise RuntimeError(f"bench/query.py fills unknown {table.name} columns {sorted(unknown)}")
        for column in table.c:
            if column.name not in columns and not column.nullable and column.server_default is None:
                raise RuntimeError(f"bench/query.py does not fill {table.name}.{column.name}")


def check_against_ingest(data: Synthetic, samples: int = 200) -> None:
    """The rows and DICOM JSON of sampled instances are what ingest makes of their Part 10 files
    (pacs.dicom.parse + pacs.dicom.json + pacs.diconde): the fill is faithful, not approximate."""
    from pacs.dicom.json import to_dicom_json
    from pacs.dicom.parse import parse_part10
    from pacs.diconde import column_values, person_name_key

    rng = random.Random(data.seed + 1)
    for s in rng.sample(data.series, min(samples, len(data.series))):
        _instance_id, number, uid, content_time = next(data.instances_of(s))
        parsed = parse_part10(io.BytesIO(next(data.part10_files(s, pixels=True))))
        ds = parsed.dataset
        expected = json.loads(data.dicom_json(s, uid, number, content_time))
        made = to_dicom_json(ds, parsed.pixel_data)
        # The stand-in pixel data is encapsulated (OB); the index says what the series really has.
        made["7FE00010"] = expected["7FE00010"]
        if made != expected:
            diff = {
                k: (made.get(k), expected.get(k))
                for k in set(made) | set(expected)
                if made.get(k) != expected.get(k)
            }
            raise RuntimeError(f"bench DICOM JSON differs from ingest's for {uid}: {diff}")
        comp = s.inspection.component
        instance_row, _ = next(instance_rows(data, s))
        ours = {
            "component": dict(zip(COMPONENT_COLUMNS, component_row(comp), strict=True)),
            "inspection": dict(zip(INSPECTION_COLUMNS, inspection_row(s.inspection), strict=True)),
            "series": dict(zip(SERIES_COLUMNS, series_row(s), strict=True)),
            "instance": dict(zip(INSTANCE_COLUMNS, instance_row, strict=True)),
        }
        for level, row in ours.items():
            for column, value in column_values(level, ds).items():  # type: ignore[arg-type]
                if column == "part_id":
                    value = value or ""
                if row.get(column) != value:
                    raise RuntimeError(
                        f"bench {level}.{column} = {row.get(column)!r}, ingest would store {value!r} ({uid})"
                    )
        if ours["component"]["component_name_key"] != person_name_key(comp.name):
            raise RuntimeError(f"component_name_key of {comp.part_id} differs from ingest's")


class Filler:
    """Fills a migrated, empty index with COPY, table by table, and checks its invariants after."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _connect(self) -> Any:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(self.url)
        return psycopg.connect(
            host=u.host, port=u.port or 5432, user=u.username, password=u.password, dbname=u.database
        )

    def fill(self, data: Synthetic, progress: Callable[[str], None]) -> dict[str, float]:
        timings: dict[str, float] = {}
        with self._connect() as conn:
            conn.execute("SET synchronous_commit = off")  # one transaction per table: no fsync waits
            for table, columns, rows, count in (
                ("component", COMPONENT_COLUMNS, map(component_row, data.components), len(data.components)),
                (
                    "inspection",
                    INSPECTION_COLUMNS,
                    map(inspection_row, data.inspections),
                    len(data.inspections),
                ),
                ("series", SERIES_COLUMNS, map(series_row, data.series), len(data.series)),
            ):
                started = time.monotonic()
                self._copy(conn, table, columns, rows, count, progress)
                timings[table] = time.monotonic() - started
            started = time.monotonic()
            self._copy_instances(conn, data, progress)
            timings["instance + instance_version"] = time.monotonic() - started
            for table in ("component", "inspection", "series", "instance", "instance_version"):
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                )
            conn.commit()
        started = time.monotonic()
        with self._connect() as conn:
            conn.autocommit = True
            progress("VACUUM ANALYZE (what autovacuum does after a bulk load) ...")
            conn.execute("VACUUM (ANALYZE)")
        timings["vacuum analyze"] = time.monotonic() - started
        return timings

    def _copy(
        self,
        conn: Any,
        table: str,
        columns: Sequence[str],
        rows: Iterator[tuple[Any, ...]],
        count: int,
        progress: Callable[[str], None],
    ) -> None:
        with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        progress(f"{table}: {count:,} rows")

    def _copy_instances(self, conn: Any, data: Synthetic, progress: Callable[[str], None]) -> None:
        """Instances on this connection, their versions on a second one, fed from one generator: the
        two COPY streams (and the server's two backends) run side by side."""
        import queue

        versions: queue.Queue[list[tuple[Any, ...]] | None] = queue.Queue(maxsize=8)
        failure: list[BaseException] = []

        def write_versions() -> None:
            try:
                with self._connect() as vconn:
                    vconn.execute("SET synchronous_commit = off")
                    with (
                        vconn.cursor() as cur,
                        cur.copy(f"COPY instance_version ({', '.join(VERSION_COLUMNS)}) FROM STDIN") as copy,
                    ):
                        while (batch := versions.get()) is not None:
                            for row in batch:
                                copy.write_row(row)
                    vconn.commit()
            except BaseException as exc:
                failure.append(exc)
                while versions.get() is not None:  # unblock the producer
                    pass

        # The versions reference the instances (foreign key): the instances' COPY must be visible
        # first, so the instances are copied and committed in chunks ahead of their versions.
        writer: threading.Thread | None = None
        done, step, started = 0, max(data.instance_count // 10, 1), time.monotonic()
        pending: list[tuple[Any, ...]] = []
        chunk_series: list[Series] = []
        chunk_size = 0

        def flush() -> None:
            nonlocal writer, done, pending, chunk_series, chunk_size
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY instance ({', '.join(INSTANCE_COLUMNS)}) FROM STDIN") as copy,
            ):
                for s in chunk_series:
                    for instance_row, version_row in instance_rows(data, s):
                        copy.write_row(instance_row)
                        pending.append(version_row)
            conn.commit()
            if writer is None:
                writer = threading.Thread(target=write_versions, name="copy-versions", daemon=True)
                writer.start()
            if failure:
                raise failure[0]
            versions.put(pending)
            before = done
            done += len(pending)
            if done // step != before // step or done == data.instance_count:
                rate = done / (time.monotonic() - started)
                progress(f"instance + instance_version: {done:,} of {data.instance_count:,} ({rate:,.0f}/s)")
            pending, chunk_series, chunk_size = [], [], 0

        try:
            for s in data.series:
                chunk_series.append(s)
                chunk_size += s.instances
                if chunk_size >= 20_000:
                    flush()
            if chunk_series:
                flush()
        finally:
            versions.put(None)
            if writer is not None:
                writer.join()
        if failure:
            raise failure[0]

    def check_invariants(self) -> list[str]:
        """What ingest guarantees, checked over the whole index: counters equal the rows below,
        Modalities in Study are the series' modalities, every instance has its current version."""
        checks = {
            "series.number_of_instances": "SELECT count(*) FROM series s WHERE number_of_instances <> "
            "(SELECT count(*) FROM instance i WHERE i.series_id = s.id)",
            "inspection counters": "SELECT count(*) FROM inspection t JOIN (SELECT inspection_id, "
            "count(*) n, sum(number_of_instances) m, string_agg(DISTINCT modality, '\\' ORDER BY modality) "
            "mods FROM series GROUP BY inspection_id) x ON x.inspection_id = t.id WHERE t.number_of_series "
            "<> x.n OR t.number_of_instances <> x.m OR t.modalities_in_study <> x.mods",
            "component counters": "SELECT count(*) FROM component c JOIN (SELECT component_id, count(*) n, "
            "sum(number_of_series) s, sum(number_of_instances) m FROM inspection GROUP BY component_id) x "
            "ON x.component_id = c.id WHERE c.number_of_studies <> x.n OR c.number_of_series <> x.s "
            "OR c.number_of_instances <> x.m",
            "current versions": "SELECT count(*) FROM instance i LEFT JOIN instance_version v "
            "ON v.id = i.current_version_id AND v.instance_id = i.id WHERE v.id IS NULL",
        }
        problems = []
        with self._connect() as conn:
            for name, query in checks.items():
                bad = conn.execute(query).fetchone()[0]
                if bad:
                    problems.append(f"{name}: {bad} rows inconsistent")
            names = conn.execute("SELECT component_name, component_name_key FROM component").fetchall()
        bad = sum(1 for name, key in names if key != name.casefold())  # pacs.diconde.person_name_key
        if bad:
            problems.append(f"component_name_key: {bad} rows are not the case-folded name")
        return problems


# -- databases --------------------------------------------------------------------------------------
def create_index(postgres: Postgres) -> str:
    """A fresh database on the server, migrated to the current schema head; its URL."""
    from pacs.index import migrate
    from pacs.index.database import create_index_engine

    url = postgres.create()
    engine = create_index_engine(url, pool_size=1)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return url


@dataclass
class Filled:
    """One filled index: its data, URL and how the fill went."""

    label: str
    data: Synthetic
    url: str
    seconds: float
    timings: dict[str, float]
    problems: list[str]
    size_mb: float


def fill_index(postgres: Postgres, data: Synthetic, label: str) -> Filled:
    print(f"[{label}] creating and migrating a database on {postgres.url.host} ...", flush=True)
    url = create_index(postgres)
    started = time.monotonic()
    filler = Filler(url)
    timings = filler.fill(data, lambda text: print(f"[{label}]   {text}", flush=True))
    seconds = time.monotonic() - started
    print(f"[{label}] filled in {seconds:.0f} s; checking the invariants ...", flush=True)
    problems = filler.check_invariants()
    for problem in problems:
        print(f"[{label}] INVARIANT BROKEN: {problem}", flush=True)
    with filler._connect() as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return Filled(label, data, url, seconds, timings, problems, size / 1e6)


# -- the queries ------------------------------------------------------------------------------------
RETURN_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)


@dataclass(frozen=True)
class QueryKind:
    """A kind of study-level C-FIND: which key it matches, how, and one value per repetition.

    The target kinds are the selective lookups an inspector makes (one part, a name prefix that
    narrows to a few components, one day); the others return hundreds or thousands of inspections
    and show what each match costs."""

    key: str
    title: str
    example: str
    target: bool  # one of the issue's targets (< 20 ms median)
    broad: bool = False  # thousands of matches: repeated less

    def values(self, data: Synthetic, count: int) -> list[dict[str, str]]:
        rng = random.Random(f"{data.seed}:{self.key}")
        out = []
        for _ in range(count):
            if self.key == "none":
                out.append({"PatientID": f"NONE-{rng.randint(1, 999_999):06d}"})
            elif self.key == "part-id":
                out.append({"PatientID": rng.choice(data.components).part_id})
            elif self.key == "name":
                out.append({"PatientName": f"Turbine^Blade {rng.randint(100, 999)}*"})
            elif self.key == "name-case":
                out.append({"PatientName": f"turbine^blade {rng.randint(100, 999)}*"})
            elif self.key == "name-short":
                out.append({"PatientName": f"Turbine^Blade {rng.randint(10, 99)}*"})
            elif self.key == "name-broad":
                out.append({"PatientName": "turbine*"})
            elif self.key == "day":
                date = rng.choice(data.inspections).date
                out.append({"StudyDate": f"{date}-{date}"})
            elif self.key == "week":
                first = _monday(rng.choice(data.inspections).date)
                last = first + dt.timedelta(6)
                out.append({"StudyDate": f"{first:%Y%m%d}-{last:%Y%m%d}"})
            elif self.key == "month":
                day = dt.datetime.strptime(rng.choice(data.inspections).date, "%Y%m%d")
                end = calendar.monthrange(day.year, day.month)[1]
                out.append({"StudyDate": f"{day:%Y%m}01-{day:%Y%m}{end:02d}"})
        return out


QUERY_KINDS = (
    QueryKind("none", "part ID, no match (the fixed cost)", "PatientID=NONE-000123", False),
    QueryKind("part-id", "part ID, exact", "PatientID=BLADE-000123", True),
    QueryKind("name", "component name, wildcard", "PatientName=Turbine^Blade 123*", True),
    QueryKind("name-case", "component name, wildcard, other case", "PatientName=turbine^blade 123*", True),
    QueryKind("day", "inspection date range, one day", "StudyDate=20240102-20240102", True),
    QueryKind("name-short", "component name, short wildcard", "PatientName=Turbine^Blade 12*", False),
    QueryKind("week", "inspection date range, one week", "StudyDate=20240101-20240107", False),
    QueryKind("month", "inspection date range, one month", "StudyDate=20240101-20240131", False),
    QueryKind("name-broad", "component name, broad wildcard", "PatientName=turbine*", False, broad=True),
)


def _monday(date: str) -> dt.date:
    day = dt.datetime.strptime(date, "%Y%m%d").date()
    return day - dt.timedelta(day.weekday())


def expected_matches(data: Synthetic, matching: dict[str, str]) -> int:
    """How many inspections the query must find, from the synthetic data itself."""
    if "PatientID" in matching:
        return sum(c.studies for c in data.components if c.part_id == matching["PatientID"])
    if "PatientName" in matching:  # person names match case-insensitively (the archive's policy)
        pattern = matching["PatientName"].casefold()
        return sum(c.studies for c in data.components if fnmatch.fnmatchcase(c.name_key, pattern))
    first, last = matching["StudyDate"].split("-")
    return sum(1 for i in data.inspections if first <= i.date <= last)


def identifier(matching: dict[str, str]) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, matching.get(keyword, ""))
    return ds


# -- measuring --------------------------------------------------------------------------------------
@dataclass
class Sample:
    seconds: float
    matches: int
    expected: int
    error: str = ""
    handler: float | None = None  # seconds in the archive's C-FIND handler, from its log
    retried: bool = False  # spoilt by the SCU's pynetdicom race (see StolenResponses) and asked again


@dataclass
class Series_:  # noqa: N801 - "Series" is the DICOM level above
    """The samples of one (target, query kind, way of asking)."""

    samples: list[Sample] = field(default_factory=list)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    @property
    def ms(self) -> list[float]:
        return [s.seconds * 1000 for s in self.samples if not s.error]

    @property
    def median(self) -> float | None:
        return statistics.median(self.ms) if self.ms else None

    @property
    def p90(self) -> float | None:
        values = sorted(self.ms)
        if not values:
            return None
        return values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]

    @property
    def handler_median(self) -> float | None:
        """Median of the server's own handler time (ms), where its log gave one for every sample."""
        found = [s.handler * 1000 for s in self.samples if not s.error and s.handler is not None]
        return statistics.median(found) if found and len(found) == len(self.ms) else None

    @property
    def matches(self) -> list[int]:
        return [s.matches for s in self.samples if not s.error]

    @property
    def wrong(self) -> list[Sample]:
        return [s for s in self.samples if s.error or s.matches != s.expected]


class StolenResponses(logging.Handler):
    """Counts a known pynetdicom race on the SCU side (pynetdicom issue 875): ``send_c_find`` pauses
    the association's reactor thread by a flag that the reactor may pass just before it is set; the
    reactor then takes a C-FIND-RSP off the queue itself, logs "Received unexpected C-FIND service
    message" and drops it, and the SCU sees one match fewer. Rare, more frequent on a busy machine;
    the query is then asked again."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Received unexpected"):
            self.count += 1


STOLEN = StolenResponses()
logging.getLogger("pynetdicom").addHandler(STOLEN)


class Scu:
    """A pynetdicom C-FIND SCU on one association (Study Root). A query that gets no final response
    within ``timeout`` seconds counts as failed; the next one gets a new association. ``asked``
    keeps every sample in the order asked (warm-up included), to pair them with the server's log."""

    def __init__(self, host: str, port: int, called_ae: str, timeout: float = 180.0) -> None:
        from pynetdicom import AE, _config
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

        # pynetdicom decodes and pretty-prints every response identifier for its log, even when that
        # log is off: the client's own cost, kept out of what is measured (for every server alike).
        _config.LOG_RESPONSE_IDENTIFIERS = False
        _config.LOG_REQUEST_IDENTIFIERS = False
        self.model = StudyRootQueryRetrieveInformationModelFind
        self.asked: list[Sample] = []
        self.associations = 0
        self.races = 0
        self.address = (host, port, called_ae)
        self.ae = AE(SCU_AE)
        self.ae.add_requested_context(self.model)
        self.ae.add_requested_context("1.2.840.10008.1.1")  # Verification: C-ECHO
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = timeout
        self.ae.network_timeout = timeout
        self.assoc = self._associate()

    def _associate(self) -> Any:
        host, port, called_ae = self.address
        assoc = self.ae.associate(host, port, ae_title=called_ae)
        if not assoc.is_established:
            raise RuntimeError(f"no association with {called_ae}@{host}:{port}")
        self.associations += 1
        # pynetdicom writes a request's command and identifier as two PDUs; without TCP_NODELAY the
        # second waits for the peer's delayed ACK (40 ms on Linux) and every query would take that long.
        _nodelay(assoc)
        return assoc

    def find(self, matching: dict[str, str], expected: int) -> Sample:
        """One query; asked again (up to twice) if pynetdicom's own race took one of its responses."""
        for _attempt in range(3):
            stolen = STOLEN.count
            sample = self._find(matching, expected)
            self.asked.append(sample)
            if STOLEN.count == stolen:
                break
            sample.error = f"{STOLEN.count - stolen} response(s) taken by the SCU's reactor (pynetdicom race)"
            sample.retried = True
            self.races += 1
        return sample

    def _find(self, matching: dict[str, str], expected: int) -> Sample:
        if not self.assoc.is_established:
            self.assoc = self._associate()
        ds = identifier(matching)
        matches, final = 0, None
        started = time.perf_counter()
        for status, _identifier in self.assoc.send_c_find(ds, self.model):
            if not status:  # pynetdicom's way of saying: aborted, or no response in time
                self.assoc.abort()
                error = f"no final response (association aborted or {self.ae.dimse_timeout:.0f} s timeout)"
                return Sample(time.perf_counter() - started, matches, expected, error)
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                matches += 1
            else:
                final = code
        seconds = time.perf_counter() - started
        error = "" if final == 0x0000 else f"final status 0x{final or 0:04X}"
        return Sample(seconds, matches, expected, error)

    def echo(self) -> Sample:
        """One C-ECHO: the DIMSE round trip with no work behind it (again if the race struck)."""
        for _attempt in range(3):
            if not self.assoc.is_established:
                self.assoc = self._associate()
            stolen = STOLEN.count
            started = time.perf_counter()
            status = self.assoc.send_c_echo()
            seconds = time.perf_counter() - started
            if STOLEN.count == stolen:
                break
            self.races += 1
        code = int(status.Status) if status else None
        return Sample(seconds, 0, 0, "" if code == 0 else f"C-ECHO status {code}")

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def abort(self) -> None:
        if self.assoc.is_established:
            self.assoc.abort()


def _nodelay(assoc: Any) -> None:
    """TCP_NODELAY on an association's socket: each PDU leaves when written."""
    holder = assoc.dul.socket
    if holder is not None and holder.socket is not None:
        holder.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class InProcess:
    """The same queries through the archive's SearchService in this process: index cost alone, and
    with the response identifiers made and encoded as the C-FIND SCP does."""

    def __init__(self, url: str) -> None:
        from pacs.index.database import create_index_engine
        from pacs.services.search import SearchService

        self.engine = create_index_engine(url, pool_size=2)
        self.search = SearchService(self.engine)
        self.raw: Any = None

    def query(self, matching: dict[str, str]) -> Any:
        from pynetdicom.dsutils import decode, encode

        from pacs.query.identifier import query_from_identifier
        from pacs.query.model import InformationModel

        raw = encode(identifier(matching), False, True)  # as the SCP receives it: undecoded values
        assert raw is not None
        return query_from_identifier(decode(io.BytesIO(raw), False, True), InformationModel.STUDY_ROOT)

    def find(self, matching: dict[str, str], expected: int, *, respond: bool) -> Sample:
        from pynetdicom.dsutils import encode

        from pacs.query.response import encode_identifier, response_identifier

        query = self.query(matching)
        started = time.perf_counter()
        matches = 0
        for found in self.search.find(query):
            matches += 1
            # As the SCP does: straight from the DICOM JSON, pydicom where that path declines.
            if respond and encode_identifier(query, found, "NDT_PACS", implicit_vr=False) is None:
                encode(response_identifier(query, found, "NDT_PACS"), False, True)
        return Sample(time.perf_counter() - started, matches, expected)

    def statement(self, matching: dict[str, str]) -> Sample:
        """The SQL `pacs.query.sql` makes for the query, run as one statement on a plain psycopg
        connection and fetched whole: the database's share, without SQLAlchemy, transaction or cursor."""
        from pacs.query import sql

        compiled = sql.plan(self.query(matching), "postgresql").statement.compile(dialect=self.engine.dialect)
        if self.raw is None:
            import psycopg

            u = self.engine.url
            self.raw = psycopg.connect(
                host=u.host, port=u.port or 5432, user=u.username, password=u.password, dbname=u.database
            )
            self.raw.autocommit = True
        started = time.perf_counter()
        rows = self.raw.execute(str(compiled), compiled.params).fetchall()
        return Sample(time.perf_counter() - started, len(rows), len(rows))

    def explain(self, matching: dict[str, str]) -> str:
        from pacs.query import sql

        query = self.query(matching)
        compiled = sql.plan(query, "postgresql").statement.compile(dialect=self.engine.dialect)
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + str(compiled),
                compiled.params,  # type: ignore[arg-type]
            ).all()
        return "\n".join(r[0] for r in rows)

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
        self.engine.dispose()


# -- servers ----------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    process: subprocess.Popen[Any]
    port: int
    called_ae: str
    log: Path
    http: str = ""


def start_ours(procs: Processes, url: str, folder: Path) -> Server:
    """`pacs serve` on the filled database, one worker, a filesystem object store (queries open no
    object)."""
    folder.mkdir(parents=True, exist_ok=True)
    args = ["serve", "--data-dir", str(folder / "pacs-data"), "--database-url", url, "--host", "127.0.0.1"]
    args += ["--dicom-port", str(free_port()), "--http-port", str(free_port()), "--workers", "1"]
    log = folder / "server.log"
    with open(log, "wb") as log_file:
        process = procs.start(
            [*pacs_command(), *args],
            log_file,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            # The default 60 s would close an association idle while another server answers a broad query.
            env={"PACS_NETWORK_TIMEOUT": "3600"},
        )
    match = LineReader(process).wait_for(PACS_READY, READY_TIMEOUT, "pacs serve", log)
    return Server("ours", process, int(match[3]), match[1], log)


HANDLER_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ +\[[^]]*\] dicom_nodes\.find: "
    rf"C-FIND from {SCU_AE}@\S+: (?:(\w+) level|(\d+) match\(es\) in ([\d.]+) ms)"
)


def handler_seconds(log: Path) -> list[float]:
    """The archive's own time for each C-FIND of the benchmark's SCU, in order, as its log line
    "C-FIND from ...: N match(es) in T ms" gives it: from the request handed over by pynetdicom to
    the last pending response sent (the final response follows)."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        found = HANDLER_LINE.match(line)
        if found and found[5]:
            times.append(float(found[5]) / 1000)
    return times


def attach_handler_times(server: Server, scu: Scu) -> None:
    """Each sample of ``scu`` gets its handler time from ``server``'s log, if the two line up."""
    times = handler_seconds(server.log)
    spoilt = any(s.error and not s.retried for s in scu.asked)
    # One log line per query the server answered, in order, re-associations included (after the SCU's
    # race took a final response, say): the two line up whenever their counts agree.
    if len(times) == len(scu.asked) and not spoilt:
        for sample, seconds in zip(scu.asked, times, strict=True):
            sample.handler = seconds
    else:
        print(
            f"[{server.name}] its log has {len(times)} C-FIND handler times for {len(scu.asked)} queries: "
            "no server-side figures",
            flush=True,
        )


def start_orthanc(procs: Processes, folder: Path) -> Server:
    """Orthanc 1.x with its default SQLite index, answering C-FIND from any AE on loopback."""
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "Plugins": [],
        "StorageCompression": False,
        "SyncStorageArea": False,  # loading speed only; queries do not write
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowFind": True,
        "DicomModalities": {"bench": [SCU_AE, "127.0.0.1", 104]},
        "AuthenticationEnabled": False,
        "RemoteAccessAllowed": False,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "CaseSensitivePN": False,  # its default, and the archive's policy
        "MaximumPduLength": 131072,
        "DicomScpTimeout": 3600,  # its 30 s would close an association idle while another server answers
    }
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = folder / "server.log"
    with open(log, "wb") as log_file:
        process = procs.start([orthanc_binary(), str(config_path)], log_file, env={"TCP_NODELAY": "1"})
    server = Server("orthanc", process, dicom_port, "ORTHANC", log, f"http://127.0.0.1:{http_port}")
    wait_until(lambda: listening(dicom_port), READY_TIMEOUT, "Orthanc DICOM port", process)
    wait_until(lambda: _http_ok(server.http + "/system"), READY_TIMEOUT, "Orthanc HTTP", process)
    return server


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def load_orthanc(
    server: Server, data: Synthetic, budget: float, threads: int = 2, batch: int = 100
) -> tuple[float, int]:
    """The instances of ``data``, inspection by inspection in arrival order, through Orthanc's REST
    API: ZIP archives of whole inspections (about ``batch`` instances each) posted to /instances,
    ``threads`` at a time, until all are in or ``budget`` seconds have passed. Returns the seconds
    it took and how many inspections (the first ones) Orthanc holds in full."""
    import httpx

    local = threading.local()

    def upload(body: bytes) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=server.http, timeout=600)
        response = client.post("/instances", content=body, headers={"Content-Type": "application/zip"})
        response.raise_for_status()

    def archives() -> Iterator[tuple[int, int, bytes]]:
        """(inspections so far, instances so far, a ZIP of the inspections since the last one)."""
        instances = 0
        buffer, archive = io.BytesIO(), None
        by_inspection = itertools.groupby(data.series, key=lambda s: s.inspection.id)
        for inspections, (_inspection_id, group) in enumerate(by_inspection, start=1):
            if archive is None:
                buffer = io.BytesIO()
                archive = zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED)
            for s in group:
                for body in data.part10_files(s):
                    archive.writestr(f"{instances}.dcm", body)
                    instances += 1
            if len(archive.namelist()) >= batch or inspections == len(data.inspections):
                archive.close()
                yield inspections, instances, buffer.getvalue()
                archive = None

    started = time.monotonic()
    loaded, shown = 0, 0
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        in_flight: set[concurrent.futures.Future[None]] = set()
        for inspections, instances, body in archives():
            in_flight.add(pool.submit(upload, body))
            loaded = inspections  # every archive submitted is waited for below
            if len(in_flight) >= threads * 2:
                finished, in_flight = concurrent.futures.wait(in_flight, return_when="FIRST_COMPLETED")
                for future in finished:
                    future.result()
            elapsed = time.monotonic() - started
            if elapsed - shown >= 30:
                shown = int(elapsed)
                print(
                    f"[orthanc]   {inspections:,} inspections, {instances:,} instances in {elapsed:.0f} s "
                    f"({instances / elapsed:,.0f}/s)",
                    flush=True,
                )
            if elapsed > budget:
                print(f"[orthanc]   {budget:.0f} s budget spent: stopping at {inspections:,} inspections")
                break
        for future in concurrent.futures.as_completed(in_flight):
            future.result()
    return time.monotonic() - started, loaded


def orthanc_instances(server: Server) -> int:
    import httpx

    return int(httpx.get(server.http + "/statistics", timeout=60).json()["CountInstances"])


# -- one scale: measure every query kind on every target, interleaved ----------------------------
@dataclass
class Results:
    """Samples by (target, query kind key)."""

    series: dict[tuple[str, str], Series_] = field(default_factory=dict)
    races: int = 0  # queries asked again after the SCU's pynetdicom race (StolenResponses)

    def get(self, target: str, kind: str) -> Series_:
        return self.series.setdefault((target, kind), Series_())


ECHO = "echo"  # the key of the C-ECHO samples


def repeats(kind: QueryKind, repeat: int) -> int:
    return 2 if kind.broad else repeat


def measure_dimse(
    scus: dict[str, Scu],
    data: Synthetic,
    repeat: int,
    results: Results,
    label: str,
    kinds: Sequence[QueryKind] = QUERY_KINDS,
) -> None:
    """Each round sends a C-ECHO and asks every query kind once of every target (the target order
    alternating), so a slow spell of the machine hits all alike. One unmeasured round first warms
    caches."""
    values = {kind.key: kind.values(data, repeats(kind, repeat)) for kind in kinds}
    expected = {key: [expected_matches(data, v) for v in vs] for key, vs in values.items()}
    names = list(scus)
    for name in names:  # warm-up (not of the broad kinds: they read what the others have read)
        scus[name].echo()
        for kind in kinds:
            if not kind.broad:
                scus[name].find(values[kind.key][0], expected[kind.key][0])
    for round_index in range(repeat):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            results.get(name, ECHO).add(scus[name].echo())
        for kind in kinds:
            if round_index >= len(values[kind.key]):
                continue
            for name in order:
                sample = scus[name].find(values[kind.key][round_index], expected[kind.key][round_index])
                results.get(name, kind.key).add(sample)
        if (round_index + 1) % max(1, repeat // 4) == 0 or round_index + 1 == repeat:
            summary = ", ".join(
                f"{name} {kind.key} {results.get(name, kind.key).median or 0:.1f}"
                for name in names
                for kind in kinds
                if kind.target
            )
            print(f"[{label}] round {round_index + 1}/{repeat}: median ms {summary}", flush=True)


def measure_in_process(inproc: InProcess, data: Synthetic, repeat: int, results: Results) -> None:
    values = {kind.key: kind.values(data, repeats(kind, repeat)) for kind in QUERY_KINDS}
    expected = {key: [expected_matches(data, v) for v in vs] for key, vs in values.items()}
    for kind in QUERY_KINDS:  # warm-up
        if not kind.broad:
            inproc.find(values[kind.key][0], expected[kind.key][0], respond=True)
            inproc.statement(values[kind.key][0])
    for round_index in range(repeat):
        for kind in QUERY_KINDS:
            if round_index >= len(values[kind.key]):
                continue
            value, count = values[kind.key][round_index], expected[kind.key][round_index]
            results.get("search", kind.key).add(inproc.find(value, count, respond=False))
            results.get("respond", kind.key).add(inproc.find(value, count, respond=True))
            results.get("sql", kind.key).add(inproc.statement(value))


PLAN_INDEX = re.compile(r"(?:Index|Index Only|Bitmap Index) Scan (?:Backward )?(?:using|on) (\w+)")
PLAN_TIME = re.compile(r"Execution Time: ([\d.]+) ms")


def explain_all(inproc: InProcess, data: Synthetic) -> dict[str, tuple[str, float, list[str]]]:
    """EXPLAIN ANALYZE of each query kind's first value: the plan, its execution time, the indexes."""
    plans = {}
    for kind in QUERY_KINDS:
        text = inproc.explain(kind.values(data, 1)[0])
        seconds = float(PLAN_TIME.search(text)[1]) if PLAN_TIME.search(text) else float("nan")  # type: ignore[index]
        plans[kind.key] = (text, seconds, list(dict.fromkeys(PLAN_INDEX.findall(text))))
    return plans


# -- report -----------------------------------------------------------------------------------------
TITLES = {
    "ours": "ours",
    "orthanc": "Orthanc",
    "search": "SearchService",
    "respond": "SearchService + responses",
    "sql": "SQL alone",
}


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _matches(series: Series_) -> str:
    found = series.matches
    if not found:
        return "–"
    low, high, mid = min(found), max(found), statistics.median(found)
    return f"{mid:g}" if low == high else f"{mid:g} ({low}–{high})"


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def large_table(results: Results) -> list[str]:
    lines = [
        "| Query (study level) | Matches: median (range) | C-FIND median ms | C-FIND p90 ms "
        "| handler median ms | SearchService ms | SearchService + responses ms | SQL alone ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    echo = results.get("ours", ECHO)
    if echo.ms:
        lines.append(
            f"| C-ECHO (no query: the DIMSE round trip alone) | – | {_ms(echo.median)} | {_ms(echo.p90)} "
            "| – | – | – | – |"
        )
    for kind in QUERY_KINDS:
        dimse = results.get("ours", kind.key)
        search, respond, alone = (results.get(t, kind.key) for t in ("search", "respond", "sql"))
        found = _matches(dimse if dimse.matches else search)
        lines.append(
            f"| {kind.title}: `{kind.example}` | {found} | {_ms(dimse.median)} | {_ms(dimse.p90)} "
            f"| {_ms(dimse.handler_median)} | {_ms(search.median)} | {_ms(respond.median)} "
            f"| {_ms(alone.median)} |"
        )
    return lines


def small_table(results: Results) -> list[str]:
    lines = [
        "| Query (study level) | Matches: median (range) | ours median ms | ours p90 ms | ours handler ms "
        "| Orthanc median ms | Orthanc p90 ms | ours / Orthanc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ours, theirs = results.get("ours", ECHO), results.get("orthanc", ECHO)
    if ours.ms:
        lines.append(
            f"| C-ECHO (no query) | – | {_ms(ours.median)} | {_ms(ours.p90)} | – | {_ms(theirs.median)} "
            f"| {_ms(theirs.p90)} | {_ratio(ours.median, theirs.median)} |"
        )
    for kind in QUERY_KINDS:
        ours, theirs = results.get("ours", kind.key), results.get("orthanc", kind.key)
        lines.append(
            f"| {kind.title}: `{kind.example}` | {_matches(ours)} | {_ms(ours.median)} | {_ms(ours.p90)} "
            f"| {_ms(ours.handler_median)} | {_ms(theirs.median)} | {_ms(theirs.p90)} "
            f"| {_ratio(ours.median, theirs.median)} |"
        )
    return lines


def _verdict(value: float | None) -> str:
    return "pass" if value is not None and value < TARGET_MS else "fail"


def target_lines(results: Results, small: Results | None) -> list[str]:
    """PASS/FAIL per target kind on the server-side median (the C-FIND handler's own time, as the
    issue sets the target); the time at the SCU and the index alone beside it."""
    lines = []
    for kind in QUERY_KINDS:
        if not kind.target:
            continue
        dimse = results.get("ours", kind.key)
        search = results.get("search", kind.key).median
        text = (
            f"- **{_verdict(dimse.handler_median).upper()}**: {kind.title}, `{kind.example}` "
            f"({_matches(dimse)} matches): server side (the C-FIND handler) {_ms(dimse.handler_median)} ms; "
            f"at the SCU {_ms(dimse.median)} ms; the index alone (SearchService) {_ms(search)} ms"
        )
        if small is not None:
            ours, theirs = small.get("ours", kind.key).median, small.get("orthanc", kind.key).median
            text += f"; {_ratio(ours, theirs)} x Orthanc's time at the Orthanc scale"
        lines.append(text)
    return lines


REMEDY = (
    "- What the archive does about it: pynetdicom's log work is off unless its logger is at DEBUG "
    "(`dicom_nodes.transport.quiet_logging`); a search is one `LIMIT` query outside a transaction "
    "(no BEGIN/COMMIT, no server-side cursor, pooled connections pinged only after 2 s idle); each response "
    "identifier is encoded straight from the index's DICOM JSON (`pacs.query.response.encode_identifier`, "
    "about 30 µs) and the pending responses are written as P-DATA PDUs, many per socket send "
    "(`dicom_nodes/pending.py`), not one message at a time through pynetdicom's polling DUL thread. What "
    "remains at the server is pynetdicom receiving the request and sending the final response through "
    "its 1 ms polling loops; at the SCU, its own pynetdicom decoding every response.\n"
)


def _widest(results: Results, target: str) -> QueryKind | None:
    """The kind with the most matches that ``target`` answered over DIMSE in this run."""
    asked = [k for k in QUERY_KINDS if results.get(target, k.key).matches]
    return max(asked, key=lambda k: statistics.median(results.get(target, k.key).matches), default=None)


def _per_match(results: Results, target: str) -> tuple[QueryKind, float, float] | None:
    """(kind, its median matches, ms per match): that kind's median less the no-match query's, per match."""
    kind, none = _widest(results, target), results.get(target, "none")
    if kind is None or none.median is None:
        return None
    series = results.get(target, kind.key)
    matches = statistics.median(series.matches)
    if not matches or series.median is None:
        return None
    return kind, matches, (series.median - none.median) / matches


def time_lines(results: Results, small: Results | None) -> list[str]:
    """Where a C-FIND's time goes, from this run's figures: a fixed cost and a cost per match."""
    lines = []
    none = results.get("ours", "none")
    echo = results.get("ours", ECHO).median
    search, alone = results.get("search", "none").median, results.get("sql", "none").median
    if none.median is not None and echo is not None:
        text = (
            f"- Fixed cost (a part ID with no match): {_ms(none.median)} ms at the SCU. A C-ECHO on the same "
            f"association, no query behind it, takes {_ms(echo)} ms: the round trip through pynetdicom at "
            f"both ends. In the server's handler {_ms(none.handler_median)} ms, of which SearchService "
            f"{_ms(search)} ms in process, and the same SQL as one statement on a plain psycopg connection "
            f"{_ms(alone)} ms."
        )
        if small is not None:
            their_none = small.get("orthanc", "none").median
            their_echo = small.get("orthanc", ECHO).median
            text += f" Orthanc at its scale: no match {_ms(their_none)} ms, C-ECHO {_ms(their_echo)} ms."
        lines.append(text)
        lines.append(REMEDY.rstrip())
    widest = _per_match(results, "ours")
    if widest is not None:
        kind, matches, per = widest
        search_w, respond_w = results.get("search", kind.key), results.get("respond", kind.key)
        text = (
            f"- Per match ({kind.title}, {matches:,g} matches, less the fixed cost): {per:.2f} ms over DIMSE"
        )
        if search_w.median is not None and respond_w.median is not None:
            index = search_w.median / matches
            respond = (respond_w.median - search_w.median) / matches
            text += (
                f", of which the index query and its rows {index:.3f} ms and encoding the response "
                f"identifier (`pacs.query.response.encode_identifier`) {respond:.3f} ms; the rest, "
                f"{per - index - respond:.2f} ms, is writing its two P-DATA PDUs and, mostly, the SCU's "
                "pynetdicom receiving and decoding them"
            )
        text += "."
        theirs = _per_match(small, "orthanc") if small is not None else None
        ours_small = _per_match(small, "ours") if small is not None else None
        if theirs is not None and ours_small is not None:
            text += (
                f" At the Orthanc scale ({theirs[0].title}, {theirs[1]:,g} matches): ours "
                f"{ours_small[2]:.2f} ms per match, Orthanc {theirs[2]:.2f} ms."
            )
        handler = results.get("ours", kind.key).handler_median
        if handler is not None and none.handler_median is not None:
            server = max(0.0, handler - none.handler_median) / matches
            text += f" Server side (handler) {server:.3f} ms per match."
        lines.append(text)
    return lines


def wrong_lines(results: Results) -> list[str]:
    lines = []
    for (target, kind), series in sorted(results.series.items()):
        for sample in series.wrong[:3]:
            problem = sample.error or f"{sample.matches} matches, {sample.expected} expected"
            lines.append(f"- {TITLES.get(target, target)}, {kind}: {problem}")
    return lines


def plan_lines(plans: dict[str, tuple[str, float, list[str]]]) -> list[str]:
    lines = ["| Query | Execution time (EXPLAIN ANALYZE) | Indexes used |", "|---|---:|---|"]
    for kind in QUERY_KINDS:
        if kind.key in plans:
            _text, ms, indexes = plans[kind.key]
            used = ", ".join(f"`{i}`" for i in indexes) or "none (sequential scans)"
            lines.append(f"| {kind.title} | {ms:.2f} ms | {used} |")
    return lines


def versions(postgres: Postgres) -> list[str]:
    import psycopg
    import pydicom
    import pynetdicom
    import sqlalchemy

    import pacs

    try:
        out = subprocess.run(
            [orthanc_binary(), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        orthanc = out.strip().splitlines()[0].split()[-1] if out.strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        orthanc = "not installed"
    return [
        f"pacs {pacs.__version__}{_commit()}",
        f"Python {sys.version.split()[0]}",
        f"pynetdicom {pynetdicom.__version__}",
        f"pydicom {pydicom.__version__}",
        f"SQLAlchemy {sqlalchemy.__version__}",
        f"psycopg {psycopg.__version__}",
        f"PostgreSQL {postgres.version()}",
        f"Orthanc {orthanc}",
    ]


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return ""
    if out.returncode != 0 or not out.stdout.strip():
        return ""
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f" (commit {out.stdout.strip()}{', with uncommitted changes' if changed else ''})"


def postgres_settings(postgres: Postgres) -> str:
    from sqlalchemy import text

    names = ("shared_buffers", "work_mem", "effective_cache_size", "random_page_cost", "lc_collate")
    with postgres.engine.connect() as conn:
        return ", ".join(f"{n}={conn.execute(text(f'SHOW {n}')).scalar()}" for n in names)


def _scale_text(data: Synthetic) -> str:
    return (
        f"{len(data.components):,} components, {len(data.inspections):,} inspections, "
        f"{len(data.series):,} series, {data.instance_count:,} instances"
    )


def render(run: dict[str, Any], args: argparse.Namespace) -> str:
    large: Filled = run["large"]
    results: Results = run["results"]
    lines = [
        "## Query (C-FIND)",
        "",
        "Re-run: `python bench/query.py` (the venv's python, from the repository root; `--help` lists the "
        "options). It rewrites this section.",
        "",
        f"Last run: {run['date']}, `{run['command']}`, took {run['minutes']:.1f} min.",
    ]
    if args.quick:
        lines += [
            "",
            "**This was a `--quick` smoke run: a small index, few repeats; the figures mean little.**",
        ]
    if args.note:
        lines += ["", f"Note: {args.note}"]
    fill_rate = large.data.instance_count / large.timings["instance + instance_version"]
    invariants = "all consistent" if not large.problems else "PROBLEMS: " + "; ".join(large.problems)
    lines += [
        "",
        f"- Machine: {run['machine']}; database on {run['disk']}.",
        f"- Versions: {'; '.join(run['versions'])}.",
        f"- PostgreSQL: the machine's server, default configuration ({run['pg_settings']}).",
        f"- Load: the machine's 1-minute load average was {run['load'][0]:.1f} at the start, "
        f"{max(run['load']):.1f} at most and {run['load'][-1]:.1f} at the end of the run (sampled between "
        "its phases; 2 cores, whatever else ran on the machine included).",
        "",
        "### Method",
        "",
        "- Index: a fresh PostgreSQL database, migrated to the schema head by `pacs.index.migrate`, filled "
        f"by COPY with a synthetic, reproducible archive (seed {SEED}): {_scale_text(large.data)}. "
        f"Components of {len(FAMILIES)} kinds with skewed frequencies (part IDs like `BLADE-000123`, names "
        "like `Turbine^Blade 123` with numbers 1–9999; a tenth of them non-ASCII: `Überhitzer^Rohr`, "
        "`Schweißnaht^Behälter`, `Łopatka^Turbiny`, `Ротор^Вал` ...), some inspected far more often than "
        f"others; inspections on weekdays from {FIRST_DAY:%Y-%m-%d} to {LAST_DAY:%Y-%m-%d}, more each year, "
        "ids in date order (arrival order); 2–3 series each of the kind's NDE methods (DX, CR, CT, US), at "
        "least one instance per series, CT series with more.",
        "- Every row is as ingest makes it: counters, Modalities in Study, case-folded component names, one "
        "version per instance with its DICOM JSON, object key, hashes, pixel data layout, and "
        "`current_version_id`. Checked each run: the rows and DICOM JSON of 200 sampled instances equal "
        "what the archive's own parser, DICOM JSON model and column mapping make of the same instance as a "
        "Part 10 file; after the fill, SQL checks every counter, Modalities in Study, case-folded name and "
        f"current version against the rows ({invariants}). Then `VACUUM (ANALYZE)`, as autovacuum would do.",
        f"- Fill: {large.seconds:.0f} s, of which instances with their versions "
        f"{large.timings['instance + instance_version']:.0f} s ({fill_rate:,.0f} instances/s; two COPY "
        f"streams side by side) and VACUUM ANALYZE {large.timings['vacuum analyze']:.0f} s; database size "
        f"{large.size_mb:,.0f} MB. Generating the data took {run['generate_seconds']:.0f} s more.",
        "- Server: `pacs serve --database-url ... --workers 1` (a filesystem object store; queries open no "
        "object), default log level (INFO: two lines per C-FIND). Client: a pynetdicom SCU in the benchmark "
        "process (TCP_NODELAY set on its socket, pynetdicom's logging of identifiers off), one association "
        "per server, Study Root C-FIND at STUDY level with the return keys "
        f"{', '.join(RETURN_KEYS)}. Each query kind is asked with another value each round (random part "
        f"IDs, name prefixes, days, weeks, months): {run['repeat']} rounds "
        "(2 for the broad wildcard, which has no warm-up) after one unmeasured warm-up round; every "
        "answer's number of matches is checked against the synthetic data. Each round also sends a C-ECHO.",
        f"- The SCU's pynetdicom has a race (its issue 875): its association thread may take a response "
        "meant for `send_c_find` and drop it, and the answer then lacks a match. Each query it struck "
        f"(this run: {results.races + (run['small_results'].races if 'small_results' in run else 0)}) was "
        "asked again; the spoilt one is not counted.",
        "- Server side (the targets are judged on it, as the issue sets them): the C-FIND handler's own "
        "time, which the archive logs with each query (`C-FIND from ...: N match(es) in T ms`): from the "
        "request handed over by pynetdicom to the last pending response written to the socket. It leaves "
        "out pynetdicom receiving and decoding the request and sending the final response (about a "
        "millisecond each, its polling loops). At the SCU: from sending the request to the final response, "
        "every pending response received and decoded by the benchmark's pynetdicom SCU.",
        "- SearchService: the same queries through `archive.search.find()` in the benchmark process, no "
        "network (the identifier decoded as the SCP decodes it): the index query alone, and with every "
        "match made into its response identifier and encoded, which the C-FIND SCP does before pynetdicom "
        "sends it. SQL alone: the statement `pacs.query.sql` makes, run once on a plain psycopg connection "
        "and fetched whole.",
        "- Query kinds: the targets are the selective lookups (one part ID; a name prefix of three digits "
        "that narrows to a few components, in the stored case and in another; a date range of one day). "
        "The others show the fixed cost (no match) and what each match costs (a two-digit prefix, a week, "
        "a month, and `turbine*`, a quarter of the archive).",
        "",
        f"### Results: {_scale_text(large.data)}",
        "",
        *large_table(results),
        "",
        f"### The project's target: < {TARGET_MS:.0f} ms median for study-level C-FIND at this scale",
        "",
        *target_lines(results, run.get("small_results")),
        "",
        "### Where the time goes",
        "",
        *time_lines(results, run.get("small_results")),
        "",
        "Query plans (EXPLAIN ANALYZE of each kind's first value, the SQL `pacs.query.sql` makes; all plans "
        "are in `bench/results/query/explain.txt` after a run):",
        "",
        *plan_lines(run["plans"]),
    ]
    small: Filled | None = run.get("small")
    if small is not None:
        small_results: Results = run["small_results"]
        if len(small.data.inspections) < args.orthanc_scale:
            reached_text = (
                f"the first {len(small.data.inspections):,} of the {args.orthanc_scale:,} inspections asked "
                f"for, all that Orthanc took in the {args.orthanc_budget:.0f} s allowed (`--orthanc-budget`)"
            )
        else:
            reached_text = f"the whole set asked for (`--orthanc-scale {args.orthanc_scale}`)"
        lines += [
            "",
            f"### Side by side with Orthanc: {_scale_text(small.data)}",
            "",
            f"- Orthanc {run['orthanc_version']}: default SQLite index, no plugins, own configuration on "
            "loopback, `TCP_NODELAY=1`, `CaseSensitivePN: false` (its default, and our person-name policy), "
            "no limit on results. Loaded through its REST API (`POST /instances` with ZIP archives of whole "
            "inspections, about 100 instances each, two uploads at a time) with the same synthetic data, "
            "inspections in arrival order, as Part 10 files without pixel data: "
            f"{run['orthanc_loaded']:,} instances in {run['orthanc_seconds']:.0f} s "
            f"({run['orthanc_loaded'] / run['orthanc_seconds']:,.0f}/s). **Scale reached for Orthanc: "
            f"{_scale_text(small.data)}**: {reached_text}; the large index is "
            f"{large.data.instance_count / small.data.instance_count:.0f} times larger.",
            f"- Ours: a second database filled with the very same inspections by the same COPY fill "
            f"({small.seconds:.0f} s), `pacs serve` as above.",
            "- One association to each server; every round asks each query of every server, the order "
            "alternating. Every answer is checked against the synthetic data. Ratios are of median times at "
            "the SCU (below 1: ours is faster).",
            "",
            *small_table(small_results),
        ]
    wrong = wrong_lines(results) + (wrong_lines(run["small_results"]) if small is not None else [])
    if wrong:
        lines += ["", "### Wrong answers", "", *wrong]
    return "\n".join(lines) + "\n"


def write_doc(section: str) -> None:
    write_section("query", section)


# -- main -------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small indexes, few repeats")
    parser.add_argument(
        "--scale",
        type=int,
        default=None,
        help=f"inspections in the large index ({DEFAULT_SCALE:,}; {QUICK_SCALE:,} if --quick), with "
        f"{INSTANCES_PER_INSPECTION} instances each and a component per {INSPECTIONS_PER_COMPONENT}",
    )
    parser.add_argument(
        "--orthanc-scale",
        type=int,
        default=None,
        help=f"inspections for the side by side with Orthanc ({DEFAULT_ORTHANC_SCALE:,}; "
        f"{QUICK_ORTHANC_SCALE} if --quick; 0 leaves Orthanc out); it gets as many of them as it can take "
        "within --orthanc-budget",
    )
    parser.add_argument(
        "--orthanc-budget",
        type=float,
        default=ORTHANC_BUDGET,
        help=f"seconds of loading Orthanc ({ORTHANC_BUDGET:.0f}); the inspections in by then are compared",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help=f"query rounds ({DEFAULT_REPEAT}; {QUICK_REPEAT} if --quick)"
    )
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="the server to create databases on")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=RESULTS / "query",
        help="logs, plans, Orthanc's data (bench/results/query)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases and Orthanc's data")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--note", default="", help="a remark for the doc (e.g. what else ran on the machine)")
    args = parser.parse_args(argv)
    args.scale = args.scale or (QUICK_SCALE if args.quick else DEFAULT_SCALE)
    if args.orthanc_scale is None:
        args.orthanc_scale = QUICK_ORTHANC_SCALE if args.quick else DEFAULT_ORTHANC_SCALE
    args.repeat = args.repeat or (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    return args


def synthetic(inspections: int) -> Synthetic:
    return Synthetic(
        inspections, inspections * INSTANCES_PER_INSPECTION, max(1, inspections // INSPECTIONS_PER_COMPONENT)
    )


def measure_servers(
    procs: Processes,
    servers: list[Server],
    data: Synthetic,
    repeat: int,
    label: str,
    kinds: Sequence[QueryKind] = QUERY_KINDS,
) -> Results:
    results = Results()
    scus: dict[str, Scu] = {}
    try:
        for server in servers:
            scus[server.name] = Scu("127.0.0.1", server.port, server.called_ae)
        measure_dimse(scus, data, repeat, results, label, kinds)
    except BaseException:  # interrupted or failed: no release (a query may be running), no grace
        for scu in scus.values():
            scu.abort()
        for server in servers:
            procs._kill_group(server.process)
        raise
    for scu in scus.values():
        scu.close()
        results.races += scu.races
    for server in servers:
        procs.stop(server.process)
    for server in servers:
        if server.name == "ours":  # stopped: its log is complete
            attach_handler_times(server, scus[server.name])
    return results


class RecordedProcesses(Processes):
    """Processes whose ids are also written to a file, so that a later run can stop what a killed
    run (SIGKILL, a lost terminal) left behind."""

    def __init__(self, record: Path) -> None:
        super().__init__()
        self.record = record

    def start(self, *args: Any, **kw: Any) -> subprocess.Popen[Any]:
        process = super().start(*args, **kw)
        with open(self.record, "a") as f:
            f.write(f"{process.pid}\n")
        return process


PIDS_FILE = "pids"
BENCH_DATABASE = re.compile(r"pacs_bench_(\d+)_[0-9a-f]+")  # bench.ingest.Postgres.create's names


def sweep_leftovers(postgres: Postgres, workdir: Path) -> None:
    """What an earlier run that could not clean up left: its servers (process groups recorded in
    ``workdir``, still running with ``workdir`` on their command line) and benchmark databases
    (``pacs_bench_<pid>_...``, made by this script and bench/ingest.py) whose process is gone."""
    record = workdir / PIDS_FILE
    for line in record.read_text().split() if record.exists() else []:
        pid = int(line)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone
        if str(workdir) in command:
            print(f"stopping process group {pid} left by an earlier run: {command[:100]}", flush=True)
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    from sqlalchemy import text

    with postgres.engine.connect() as conn:
        names = conn.execute(text("SELECT datname FROM pg_database")).scalars().all()
    stale = [n for n in names if (m := BENCH_DATABASE.fullmatch(n)) and not _alive(int(m[1]))]
    for name in stale:
        print(f"dropping database {name} left by an earlier run", flush=True)
        postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    workdir: Path = args.workdir.resolve()
    postgres = Postgres(args.postgres_url)
    try:
        postgres.execute("SELECT 1")
    except Exception as exc:
        print(f"PostgreSQL at {args.postgres_url} is not reachable: {exc}", file=sys.stderr)
        postgres.close()
        return 2
    sweep_leftovers(postgres, workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    procs = RecordedProcesses(workdir / PIDS_FILE)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    run: dict[str, Any] = {"repeat": args.repeat, "load": [os.getloadavg()[0]]}
    try:
        run["machine"], run["disk"] = machine(), disk_of(workdir)
        run["versions"], run["pg_settings"] = versions(postgres), postgres_settings(postgres)
        run["orthanc_version"] = run["versions"][-1].split()[-1]
        check_schema_coverage()
        # -- the large index ----------------------------------------------------------------------
        print(f"generating the synthetic archive: {args.scale:,} inspections ...", flush=True)
        begun = time.monotonic()
        data = synthetic(args.scale)
        check_against_ingest(data)
        run["generate_seconds"] = time.monotonic() - begun
        print(f"  {_scale_text(data)} in {run['generate_seconds']:.0f} s", flush=True)
        large = run["large"] = fill_index(postgres, data, "large")
        run["load"].append(os.getloadavg()[0])
        servers = [start_ours(procs, large.url, workdir / "ours-large")]
        # The broad wildcard (a quarter of the archive) runs in process only at this scale: over DIMSE
        # it would take minutes per query, and the other kinds show the cost per match.
        narrow = [kind for kind in QUERY_KINDS if not kind.broad]
        results = run["results"] = measure_servers(procs, servers, data, args.repeat, "large", narrow)
        inproc = InProcess(large.url)
        try:
            print("[large] the same queries through SearchService, in process ...", flush=True)
            run["load"].append(os.getloadavg()[0])
            measure_in_process(inproc, data, args.repeat, results)
            run["plans"] = explain_all(inproc, data)
        finally:
            inproc.close()
        (workdir / "explain.txt").write_text(
            "\n\n".join(f"-- {key}\n{text}" for key, (text, _ms, _ix) in run["plans"].items()) + "\n"
        )
        if not args.keep:
            postgres.drop(large.url)

        # -- side by side with Orthanc ------------------------------------------------------------
        if args.orthanc_scale:
            small_data = synthetic(args.orthanc_scale)
            orthanc = start_orthanc(procs, workdir / "orthanc")
            print(
                f"[orthanc] loading up to {small_data.instance_count:,} instances through REST "
                f"(at most {args.orthanc_budget:.0f} s) ...",
                flush=True,
            )
            run["orthanc_seconds"], reached = load_orthanc(orthanc, small_data, args.orthanc_budget)
            small_data.truncate(reached)
            run["orthanc_loaded"] = orthanc_instances(orthanc)
            if run["orthanc_loaded"] != small_data.instance_count:
                raise RuntimeError(
                    f"Orthanc holds {run['orthanc_loaded']} instances, not {small_data.instance_count}"
                )
            run["load"].append(os.getloadavg()[0])
            small = run["small"] = fill_index(postgres, small_data, "small")
            servers = [start_ours(procs, small.url, workdir / "ours-small"), orthanc]
            run["small_results"] = measure_servers(procs, servers, small_data, args.repeat, "small")
            if not args.keep:
                postgres.drop(small.url)

        run["load"].append(os.getloadavg()[0])
        run["date"] = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        given = list(sys.argv[1:] if argv is None else argv)
        run["command"] = shlex.join(["python", "bench/query.py", *given])
        run["minutes"] = (time.monotonic() - started) / 60
        section = render(run, args)
        print()
        print(section)
        if not args.no_doc:
            write_doc(section)
            print(f"wrote the query section of {DOC}")
        wrong = wrong_lines(results) + (wrong_lines(run["small_results"]) if "small_results" in run else [])
        return 1 if large.problems or wrong else 0
    except KeyboardInterrupt:
        print("interrupted: stopping the servers and dropping the databases this run made", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.kill_all()
        (workdir / PIDS_FILE).unlink(missing_ok=True)
        if args.keep:
            print(f"kept: databases {', '.join(postgres._created) or '-'}; {workdir}", flush=True)
            postgres._created.clear()
        postgres.close()
        if not args.keep:  # the logs stay
            for folder in (*workdir.glob("orthanc/storage"), *workdir.glob("orthanc/index")):
                shutil.rmtree(folder, ignore_errors=True)
            for folder in workdir.glob("ours-*/pacs-data"):
                shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _raise_interrupt(signo: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
