"""Scale-out: two ``pacs serve`` nodes on one PostgreSQL database and one S3 bucket (docs/scaling.md).

No state that matters lives in a node, so two of them behind a load balancer are one archive: the
same new parts, inspections and series arrive through both at once, and the index ends with one
row each, whichever node's transaction came first; both nodes answer every C-FIND and QIDO-RS
query alike; and when one node is killed outright in the middle of it, nothing either node
acknowledged is lost, and what it did not acknowledge completes through the other.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from tests.support.serve import (
    PacsServer,
    SentInstance,
    StoreLoad,
    archive_flags,
    fsck_summary,
    index_counts,
    instance_corpus,
    kill_server,
    restart_on_ports,
    verify_stored,
)

PARTS, INSPECTIONS, SERIES = 3, 2, 2
CHAINS = PARTS * INSPECTIONS * SERIES
INSTANCES = 8 * CHAINS  # every series gets 8 instances, 4 through each node
ASSOCIATIONS_PER_NODE = 4
TAG = "SCALE"


def test_two_nodes_on_one_index_and_store_are_one_archive(
    tmp_path: Path, postgres_url: str, s3_url: str
) -> None:
    shared = {"database_url": postgres_url, "object_store": s3_url}
    settings_a = {"data_dir": str(tmp_path / "node-a"), **shared}
    settings_b = {"data_dir": str(tmp_path / "node-b"), **shared}
    checker = {"data_dir": str(tmp_path / "checker"), **shared}  # the test's own view of the archive
    node_a = PacsServer(archive_flags(settings_a), workers=1, log_path=tmp_path / "a.log")
    node_b = PacsServer(archive_flags(settings_b), workers=1, log_path=tmp_path / "b-0.log")
    try:
        with ThreadPoolExecutor(2) as starting:  # both nodes start at once, on an index without users
            for started in [starting.submit(node.start) for node in (node_a, node_b)]:
                started.result()
        tokens = [token for node in (node_a, node_b) if (token := first_admin_token(node))]
        assert len(tokens) == 1, "the first admin user must be created once, by one node"
        token = tokens[0]
        instances = instance_corpus(
            tmp_path / "corpus", INSTANCES, tag=TAG, parts=PARTS, inspections=INSPECTIONS, series=SERIES
        )
        # Consecutive instances belong to different series; whole turns alternate between the
        # nodes, so every series is filled through both nodes at the same time.
        to_a = [i for k, i in enumerate(instances) if (k // CHAINS) % 2 == 0]
        to_b = [i for k, i in enumerate(instances) if (k // CHAINS) % 2 == 1]
        load_a = StoreLoad.to(node_a, to_a, ASSOCIATIONS_PER_NODE)
        load_b = StoreLoad.to(node_b, to_b, ASSOCIATIONS_PER_NODE)
        load_a.start()
        load_b.start()
        seed = time.time_ns() % 1_000_000
        threshold = random.Random(seed).randint(4, len(to_b) // 2)
        assert load_b.wait_for_acknowledged(threshold, timeout=120), (load_b.errors, node_b.log()[-3000:])
        ports_b = ["--dicom-port", str(node_b.dicom_port), "--http-port", str(node_b.http_port)]
        kill_server(node_b)
        load_a.join()
        load_b.join()
        where = f"node B killed after {len(load_b.acknowledged)} of {len(to_b)} acknowledged (seed {seed})"
        assert load_a.complete, (where, load_a.refused, load_a.errors, node_a.log()[-3000:])
        assert load_b.refused == {} and load_b.unanswered, where

        # Nothing either node acknowledged is lost, and no index entry lacks its object.
        acknowledged = load_a.acknowledged + load_b.acknowledged
        assert verify_stored(checker, acknowledged) == {}, where
        fsck = fsck_summary(checker)
        assert fsck.returncode == 0 and fsck.no_entry_without_object, (where, fsck.output)

        # The load balancer sends what node B did not acknowledge to node A; B comes back.
        rest = [i for i in to_b if i not in set(load_b.acknowledged)]
        resend = StoreLoad.to(node_a, rest, ASSOCIATIONS_PER_NODE).run()
        assert resend.complete, (where, resend.refused, resend.errors)
        log_b = tmp_path / "b-1.log"
        node_b = restart_on_ports([*archive_flags(settings_b), *ports_b], workers=1, log_path=log_b)

        assert verify_stored(checker, instances) == {}, where
        assert index_counts(checker) == {
            "components": PARTS,
            "inspections": PARTS * INSPECTIONS,
            "series": CHAINS,
            "instances": INSTANCES,
            "versions": INSTANCES,
        }, where
        answers_a, answers_b = c_find_answers(node_a, instances), c_find_answers(node_b, instances)
        assert answers_a == answers_b, where
        assert answers_a == expected_c_find_answers(instances), where
        qido = qido_answers(node_a, token)
        assert qido == qido_answers(node_b, token), where
        found = sorted(match["00080018"]["Value"][0] for match in qido[1])
        assert found == sorted(i.sop_instance_uid for i in instances), where
    finally:
        for node in (node_a, node_b):
            if node.process is not None and node.returncode is None:
                node.stop()


# -- what the nodes answer ------------------------------------------------------------------------
def first_admin_token(server: PacsServer) -> str | None:
    """The API token ``pacs serve`` prints once, on the first start of an archive without users."""
    lines = server.stdout_lines
    notice = next((k for k, line in enumerate(lines) if line.startswith("no users yet")), None)
    return None if notice is None else lines[notice + 1].strip()


def c_find_answers(server: PacsServer, instances: Sequence[SentInstance]) -> dict[str, list[tuple[Any, ...]]]:
    """Study-root C-FIND, sorted: the inspections of the test's parts with their counts, and each
    inspection's series with theirs (QIDO-RS compares the instances)."""
    ae = AE(ae_title="SCALE_SCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(server.host, server.dicom_port, ae_title=server.ae_title)
    assert assoc.is_established
    answers: dict[str, list[tuple[Any, ...]]] = {}
    try:

        def find(level: str, keys: dict[str, str], returned: Sequence[str]) -> list[tuple[Any, ...]]:
            query = Dataset()
            query.QueryRetrieveLevel = level
            for keyword, value in keys.items():
                setattr(query, keyword, value)
            for keyword in returned:
                setattr(query, keyword, "")
            matches = []
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                assert status and status.Status in (0x0000, 0xFF00, 0xFF01), status
                if status.Status != 0x0000:
                    assert identifier is not None
                    matches.append(tuple(str(identifier.get(k, "")) for k in (*keys, *returned)))
            return sorted(matches)

        answers["studies"] = find(
            "STUDY",
            {"PatientID": f"{TAG}-*"},
            ["StudyInstanceUID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"],
        )
        for study in sorted({i.study_uid for i in instances}):
            answers[study] = find(
                "SERIES", {"StudyInstanceUID": study}, ["SeriesInstanceUID", "NumberOfSeriesRelatedInstances"]
            )
    finally:
        assoc.release()
    return answers


def expected_c_find_answers(instances: Sequence[SentInstance]) -> dict[str, list[tuple[Any, ...]]]:
    """What :func:`c_find_answers` must find when the index holds ``instances`` exactly once."""
    studies = sorted({(i.part_id, i.study_uid) for i in instances})
    series = sorted({(i.study_uid, i.series_uid) for i in instances})
    answers: dict[str, list[tuple[Any, ...]]] = {
        "studies": sorted(
            (
                part_id,
                study,
                str(sum(1 for st, _ in series if st == study)),
                str(sum(1 for i in instances if i.study_uid == study)),
            )
            for part_id, study in studies
        )
    }
    for _, study in studies:
        answers[study] = sorted(
            (study, s, str(sum(1 for i in instances if i.series_uid == s))) for st, s in series if st == study
        )
    return answers


def qido_answers(server: PacsServer, token: str) -> list[Any]:
    """QIDO-RS inspections of the test's parts and all their instances, without the node's own
    address (the Retrieve URLs name the node that answered)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}
    answers = []
    with httpx.Client(base_url=f"{server.http_url}/dicom-web", headers=headers, timeout=30) as client:
        for path, params in (
            ("/studies", {"PatientID": f"{TAG}-*", "includefield": "all"}),
            ("/instances", {"PatientID": f"{TAG}-*", "limit": "1000"}),
        ):
            response = client.get(path, params=params)
            assert response.status_code == 200, response.text
            assert "Warning" not in response.headers, response.headers["Warning"]
            text = response.text.replace(server.http_url, "NODE")
            answers.append(sorted(httpx.Response(200, text=text).json(), key=repr))
    return answers
