"""QIDO-RS as a workstation reaches it: httpx and the real dicomweb-client against the served app.

The archive is the query tests' small collection of inspections (tests/unit/query/conftest.py),
built once per backend pair: components with ASCII, Latin-1 and UTF-8 names, five inspections,
six series, seven instances, one with an IndicationSequence (a crack and a pore).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from pacs.archive import open_archive
from pacs.config import load_settings
from pacs.query.qido import MAX_LIMIT
from tests.conftest import BACKENDS
from tests.support.web import RunningWeb, running_web
from tests.unit.query.conftest import Scans, build

DICOM_JSON = "application/dicom+json"


@dataclass
class Served:
    scans: Scans
    web: RunningWeb

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.web.dicomweb, headers=self.web.headers("inspector"))

    def get(self, path: str, params: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {**self.web.headers("inspector"), **kwargs.pop("headers", {})}
        return httpx.get(f"{self.web.dicomweb}{path}", params=params, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("qido-archive")
    values: dict[str, object] = {"data_dir": folder / "pacs-data"}
    database = None
    if request.param == "postgresql+s3":
        database = request.getfixturevalue("postgres").fresh()
        values["database_url"] = database
        values["object_store"] = request.getfixturevalue("s3_server").url(f"qido-{uuid.uuid4().hex[:12]}")
    archive = open_archive(load_settings(values))
    try:
        scans = build(archive, folder)
        with running_web(archive) as web:
            yield Served(scans, web)
    finally:
        archive.close()
        if database is not None:
            request.getfixturevalue("postgres").drop(database)


def values(result: dict[str, Any], tag: str) -> list[Any]:
    return list(result.get(tag, {}).get("Value", []))


def first(result: dict[str, Any], tag: str) -> Any:
    found = values(result, tag)
    return found[0] if found else None


def study_uids(results: list[dict[str, Any]]) -> set[str]:
    return {first(r, "0020000D") for r in results}


# -- resources and returned attributes ------------------------------------------------------------
def test_study_search_returns_the_default_attributes_and_a_retrieve_url(served: Served) -> None:
    s = served.scans.study
    response = served.get("/studies", {"PatientID": "BLADE-0001"})
    assert response.status_code == 200
    assert response.headers["content-type"] == DICOM_JSON
    assert "warning" not in response.headers
    [study] = response.json()
    assert first(study, "0020000D") == s["S1"]
    assert first(study, "00100010") == {"Alphabetic": "Turbine^Blade"}
    assert first(study, "00080020") == "20240315"
    assert first(study, "00080050") == "WO-1000"
    assert sorted(values(study, "00080061")) == ["CT", "DX"]
    assert first(study, "00201206") == 2  # series
    assert first(study, "00201208") == 3  # instances
    assert first(study, "00080056") == "ONLINE"
    assert first(study, "00081190") == f"{served.web.dicomweb}/studies/{s['S1']}"
    # Required attributes the archive has no value for are present and empty (PS3.18 F.2.5).
    assert study["00080090"] == {"vr": "PN"}
    assert "00080060" not in study  # a series attribute


def test_series_search_all_and_within_an_inspection(served: Served) -> None:
    s, se = served.scans.study, served.scans.series
    every = served.client().search_for_series(search_filters={"Modality": "DX"})
    assert {first(r, "0020000E") for r in every} == {se["S1-DX"], se["S2-DX"], se["S5-DX"]}
    one = next(r for r in every if first(r, "0020000E") == se["S1-DX"])
    assert first(one, "00100020") == "BLADE-0001"  # /series carries the inspection's attributes
    assert first(one, "00201209") == 2
    # dicomweb-client sends "Host: 127.0.0.1" without the port: the URL follows the Host header.
    assert first(one, "00081190").endswith(f"/dicom-web/studies/{s['S1']}/series/{se['S1-DX']}")

    nested = served.client().search_for_series(study_instance_uid=s["S1"])
    assert {first(r, "0020000E") for r in nested} == {se["S1-DX"], se["S1-CT"]}
    assert all("00100020" not in r and first(r, "0020000D") == s["S1"] for r in nested)


def test_instance_search_at_every_resource(served: Served) -> None:
    s, se, i = served.scans.study, served.scans.series, served.scans.instance
    client = served.client()
    in_series = client.search_for_instances(study_instance_uid=s["S1"], series_instance_uid=se["S1-DX"])
    assert {first(r, "00080018") for r in in_series} == {i["I1"], i["I2"]}
    i1 = next(r for r in in_series if first(r, "00080018") == i["I1"])
    assert first(i1, "00081190").endswith(
        f"/dicom-web/studies/{s['S1']}/series/{se['S1-DX']}/instances/{i['I1']}"
    )
    direct = served.get(f"/studies/{s['S1']}/series/{se['S1-DX']}/instances", {"SOPInstanceUID": i["I1"]})
    assert first(direct.json()[0], "00081190") == (
        f"{served.web.dicomweb}/studies/{s['S1']}/series/{se['S1-DX']}/instances/{i['I1']}"
    )
    assert (first(i1, "00280010"), first(i1, "00280011"), first(i1, "00280100")) == (16, 16, 16)
    in_study = client.search_for_instances(study_instance_uid=s["S1"])
    assert {first(r, "00080018") for r in in_study} == {i["I1"], i["I2"], i["I3"]}
    ct = next(r for r in in_study if first(r, "00080018") == i["I3"])
    assert first(ct, "00280008") == 2 and first(ct, "00080060") == "CT"
    everywhere = client.search_for_instances(search_filters={"PatientID": "BLADE-0002"})
    assert [first(r, "00080018") for r in everywhere] == [i["I4"]]
    assert first(everywhere[0], "00080020") == "20240401"  # /instances carries inspection attributes


# -- matching -------------------------------------------------------------------------------------
def test_matching_types_through_dicomweb_client(served: Served) -> None:
    s = served.scans.study
    client = served.client()
    assert study_uids(client.search_for_studies(search_filters={"PatientID": "BLADE-0002"})) == {s["S2"]}
    # wildcard, case-sensitive for a LO: BLADE-* does not find blade-0003
    assert study_uids(client.search_for_studies(search_filters={"PatientID": "BLADE-*"})) == {
        s["S1"],
        s["S2"],
    }
    assert study_uids(client.search_for_studies(search_filters={"PatientID": "BLADE-000?"})) == {
        s["S1"],
        s["S2"],
    }
    # component names match regardless of case (the archive's person name policy)
    assert study_uids(client.search_for_studies(search_filters={"PatientName": "TURBINE^BLADE"})) == {
        s["S1"],
        s["S5"],
    }
    assert study_uids(client.search_for_studies(search_filters={"PatientName": "turbine*"})) == {
        s["S1"],
        s["S2"],
        s["S5"],
    }
    # date range, open ranges
    march = client.search_for_studies(search_filters={"StudyDate": "20240301-20240331"})
    assert study_uids(march) == {s["S1"], s["S4"]}
    assert study_uids(client.search_for_studies(search_filters={"StudyDate": "20240401-"})) == {
        s["S2"],
        s["S5"],
    }
    # UID list: comma-separated, and as repeated parameters
    listed = client.search_for_studies(search_filters={"StudyInstanceUID": f"{s['S1']},{s['S3']}"})
    assert study_uids(listed) == {s["S1"], s["S3"]}
    repeated = served.get("/studies", [("StudyInstanceUID", s["S2"]), ("StudyInstanceUID", s["S4"])])
    assert study_uids(repeated.json()) == {s["S2"], s["S4"]}
    # by tag, and several keys at once
    both = served.get("/studies", {"00100020": "BLADE-*", "00080050": "WO-2000"})
    assert study_uids(both.json()) == {s["S2"]}
    # a key of the inspection level above a series search
    by_part = client.search_for_series(search_filters={"PatientID": "WELD-3"})
    assert {first(r, "0020000E") for r in by_part} == {served.scans.series["S4-US"]}


def test_utf8_component_names(served: Served) -> None:
    s = served.scans.study
    [weld] = served.get("/studies", {"PatientName": "лопатка*"}).json()
    assert first(weld, "0020000D") == s["S4"]
    assert first(weld, "00100010") == {"Alphabetic": "Лопатка^涡轮叶片"}
    assert values(weld, "00080005") == ["ISO_IR 192"]
    [casing] = served.client().search_for_studies(search_filters={"PatientName": "GEHÄUSE^flügelrad"})
    assert first(casing, "0020000D") == s["S3"]
    assert first(casing, "00100010") == {"Alphabetic": "Gehäuse^Flügelrad"}
    ascii_only = served.get("/studies", {"PatientID": "BLADE-0002"}).json()[0]
    assert "00080005" not in ascii_only


def test_sequence_matching_on_the_indications_found(served: Served) -> None:
    i = served.scans.instance
    cracks = served.get("/instances", {"IndicationSequence.IndicationType": "CRACK"}).json()
    assert [first(r, "00080018") for r in cracks] == [i["I1"]]
    [item] = values(cracks[0], "00142012")
    assert first(item, "0014201A") == "CRACK"  # only the matching item comes back
    assert served.get("/instances", {"IndicationSequence.IndicationType": "SLAG"}).json() == []


# -- includefield ---------------------------------------------------------------------------------
def test_includefield_by_keyword_tag_and_all(served: Served) -> None:
    s = served.scans.study
    [study] = served.client().search_for_studies(
        search_filters={"PatientID": "BLADE-0002"}, fields=["StudyDescription", "00140042"]
    )
    assert first(study, "00081030") == "Weld A"
    assert first(study, "00140042") == "Ti-6Al-4V"
    [comma] = served.get(
        "/studies", {"PatientID": "BLADE-0002", "includefield": "00101000,MaterialThickness"}
    ).json()
    assert sorted(values(comma, "00101000")) == ["SN-BLADE-0002-A", "SN-BLADE-0002-B"]
    assert first(comma, "00140030") == 8
    [everything] = served.get("/studies", {"StudyInstanceUID": s["S2"], "includefield": "all"}).json()
    assert first(everything, "00140042") == "Ti-6Al-4V"
    assert first(everything, "00140028") == "Acme Aero Castings"  # ComponentManufacturer
    assert "00080060" not in everything  # series attributes are not a study's
    [instance] = served.get(
        "/instances", {"SOPInstanceUID": served.scans.instance["I2"], "includefield": "ImageType"}
    ).json()
    assert values(instance, "00080008") == ["DERIVED", "SECONDARY"]  # read from the index's JSON
    # More attributes read from the JSON than one database call builds at once (see pacs.query.sql).
    [whole] = served.get(
        "/instances", {"SOPInstanceUID": served.scans.instance["I4"], "includefield": "all"}
    ).json()
    assert first(whole, "00180060") == 120  # KVP
    assert first(whole, "00081070") == {"Alphabetic": "Smith^Jane"}  # OperatorsName
    assert first(whole, "00140042") == "Ti-6Al-4V" and first(whole, "00080060") == "DX"


def test_includefield_of_a_lower_level_is_left_out(served: Served) -> None:
    # Viewers ask study searches for Modality; the answer carries ModalitiesInStudy instead.
    response = served.get("/studies", {"PatientID": "BLADE-0001", "includefield": "00080060"})
    assert response.status_code == 200
    assert "00080060" not in response.json()[0]


# -- paging ---------------------------------------------------------------------------------------
def test_limit_and_offset_page_in_arrival_order_with_a_warning(served: Served) -> None:
    s = served.scans.study
    order = [s[name] for name in ("S1", "S2", "S3", "S4", "S5")]
    page = served.get("/studies", {"limit": 2})
    assert [first(r, "0020000D") for r in page.json()] == order[:2]
    assert page.headers["warning"].startswith("299 ")
    assert "offset=2" in page.headers["warning"]
    middle = served.client().search_for_studies(limit=2, offset=2)
    assert [first(r, "0020000D") for r in middle] == order[2:4]
    last = served.get("/studies", {"limit": 2, "offset": 4})
    assert [first(r, "0020000D") for r in last.json()] == order[4:]
    assert "warning" not in last.headers
    assert served.get("/studies", {"offset": 5}).json() == []
    every = served.client().search_for_studies(limit=2, get_remaining=True)
    assert [first(r, "0020000D") for r in every] == order
    capped = served.get("/studies", {"limit": MAX_LIMIT + 1})
    assert capped.status_code == 200 and len(capped.json()) == 5
    assert f"maximum of {MAX_LIMIT}" in capped.headers["warning"]


def test_nothing_matched_is_200_with_an_empty_array(served: Served) -> None:
    response = served.get("/studies", {"PatientID": "NO-SUCH-PART"})
    assert (response.status_code, response.json()) == (200, [])
    assert served.client().search_for_studies(search_filters={"PatientID": "NO-SUCH-PART"}) == []
    unknown_study = served.get("/studies/1.2.3.4/series")
    assert (unknown_study.status_code, unknown_study.json()) == (200, [])


# -- errors and negotiation -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"PatientNme": "X"}, "unknown parameter or attribute: 'PatientNme'"),
        ({"StudyDate": "2024-01-01"}, "StudyDate (0008,0020)"),
        ({"StudyDate": "20240131-20240101"}, "range starts after it ends"),
        ({"includefield": "Nope"}, "includefield='Nope'"),
        ({"fuzzymatching": "true"}, "fuzzymatching=true is not supported"),
        ({"limit": "-1"}, "limit must be a positive integer"),
        ({"Modality": "CT"}, "search /series instead"),
        ({"StudyInstanceUID": "1.2.x"}, "not a UID"),
    ],
)
def test_bad_requests_are_400_with_a_reason(served: Served, params: dict[str, str], reason: str) -> None:
    response = served.get("/studies", params)
    assert response.status_code == 400
    assert reason in response.json()["detail"]


def test_dicomweb_client_sees_400_and_fuzzymatching_false_works(served: Served) -> None:
    client = served.client()
    with pytest.raises(requests.HTTPError) as error:
        client.search_for_studies(search_filters={"StudyDate": "yesterday"})
    assert error.value.response.status_code == 400
    found = client.search_for_studies(search_filters={"PatientName": "turbine^blade"}, fuzzymatching=False)
    assert study_uids(found) == {served.scans.study["S1"], served.scans.study["S5"]}
    bad_path = served.get("/studies/not-a-uid/series")
    assert bad_path.status_code == 400 and "not a UID" in bad_path.json()["detail"]


@pytest.mark.parametrize(
    ("accept", "status", "media_type"),
    [
        ("application/dicom+json", 200, DICOM_JSON),
        ("application/json", 200, "application/json"),
        ("*/*", 200, DICOM_JSON),
        ("application/json;q=0.5, application/dicom+json", 200, DICOM_JSON),
        ('multipart/related; type="application/dicom+xml"', 406, None),
        ("application/dicom+json;q=0, text/html", 406, None),
    ],
)
def test_accept_header(served: Served, accept: str, status: int, media_type: str | None) -> None:
    response = served.get("/studies", headers={"Accept": accept})
    assert response.status_code == status, response.text
    if media_type:
        assert response.headers["content-type"] == media_type
        assert len(response.json()) == 5
    else:
        assert "not acceptable" in response.json()["detail"]


def test_a_device_token_cannot_query(served: Served) -> None:
    response = httpx.get(f"{served.web.dicomweb}/studies", headers=served.web.headers("device"), timeout=10)
    assert response.status_code == 403
    assert httpx.get(f"{served.web.dicomweb}/studies", timeout=10).status_code == 401
