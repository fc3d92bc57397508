"""Crash safety of ``pacs serve``: SIGKILL while eight associations store.

The write rule (docs/architecture.md, "Storing an instance") answers Success only for an instance
whose object is durable and whose index transaction committed. So a crash at any moment may cost
only what was not acknowledged: after a restart every acknowledged instance comes back with the
bytes sent, ``pacs fsck`` finds no index entry without its object, and sending the rest again
completes the set without a duplicate row or a second version.

Each round kills the server at a random moment of the sending window and restarts it on the same
ports and data. Mostly the whole server, supervisor and workers at once (``kill -9`` of the process
group); once the supervisor alone (the OOM killer's or an operator's ``kill -9 PID``), whose
workers must die with it instead of serving on, unsupervised, the ports the restart needs. CI runs
three rounds: two on SQLite + files, one on PostgreSQL + S3; ``bench/crash.py`` runs twenty per
backend pair. The seed of the random moments is in every assertion message, to replay a failure
(``CRASH_TEST_SEED``).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

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

#: What each round kills: the whole server, or the supervisor alone.
KILLS = {"sqlite+file": ("server", "supervisor"), "postgresql+s3": ("server",)}
ASSOCIATIONS = 8
INSTANCES = 48  # per round: 2 parts x 2 inspections x 2 series, every 8th instance 2 MB
PARTS, INSPECTIONS, SERIES = 2, 2, 2


@pytest.fixture
def archive_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """``pacs`` settings of an empty archive on the backend pair under test."""
    values = {"data_dir": str(tmp_path / "pacs-data")}
    if backend == "postgresql+s3":
        values["database_url"] = request.getfixturevalue("postgres_url")
        values["object_store"] = request.getfixturevalue("s3_url")
    return values


def test_sigkill_while_eight_associations_store_loses_nothing_acknowledged(
    backend: str, archive_settings: dict[str, str], tmp_path: Path
) -> None:
    seed = int(os.environ.get("CRASH_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    flags = archive_flags(archive_settings)
    server = PacsServer(flags, workers=2, log_path=tmp_path / "serve-0.log").start()
    acknowledged: list[SentInstance] = []
    try:
        for n, kill in enumerate(KILLS[backend], 1):
            where = f"seed {seed}, round {n} (kill the {kill}), logs in {tmp_path}"
            instances = instance_corpus(
                tmp_path / f"round-{n}", INSTANCES, tag=f"CRASH-{n}", large_every=8, parts=PARTS
            )
            load = StoreLoad.to(server, instances, ASSOCIATIONS).start()
            # A random moment of the sending window: after 4 to 24 acknowledgements, plus 0-50 ms.
            threshold = rng.randint(INSTANCES // 10, INSTANCES // 2)
            reached = load.wait_for_acknowledged(threshold, timeout=120)
            assert reached, (where, load.refused, load.errors, server.log()[-3000:])
            time.sleep(rng.uniform(0.0, 0.05))
            ports = ["--dicom-port", str(server.dicom_port), "--http-port", str(server.http_port)]
            kill_server(server, supervisor_only=kill == "supervisor")  # TimeoutError if workers outlive it
            load.join()
            assert load.refused == {}, where  # nothing refused before the kill
            assert load.unanswered, f"the kill came after the last store, not during sending ({where})"
            acknowledged += load.acknowledged

            server = restart_on_ports([*flags, *ports], workers=2, log_path=tmp_path / f"serve-{n}.log")
            assert verify_stored(archive_settings, acknowledged) == {}, where
            fsck = fsck_summary(archive_settings)
            assert fsck.returncode == 0 and fsck.no_entry_without_object, (where, fsck.output)
            assert fsck.checked >= len(acknowledged), (where, fsck.output)

            acknowledged_now = {i.sop_instance_uid for i in load.acknowledged}
            rest = [i for i in instances if i.sop_instance_uid not in acknowledged_now]
            resend = StoreLoad.to(server, rest, ASSOCIATIONS).run()
            assert resend.complete, (where, resend.refused, resend.errors)
            acknowledged += resend.acknowledged
            assert verify_stored(archive_settings, instances) == {}, where
            total = n * INSTANCES
            assert index_counts(archive_settings) == {
                "components": n * PARTS,
                "inspections": n * PARTS * INSPECTIONS,
                "series": n * PARTS * INSPECTIONS * SERIES,
                "instances": total,
                "versions": total,  # a re-send of a stored but unacknowledged instance adds no version
            }, where
    finally:
        if server.process is not None and server.returncode is None:
            server.stop()
