"""``pacs serve`` as an operator runs it: a subprocess configured by flags, ``PACS_*`` variables or a
TOML file, reached with dcmtk and HTTP, stopped with SIGTERM.

What only the whole command shows: the readiness line, the default layout of the embedded archive,
the pre-forked workers sharing the ports and being restarted, graceful stop in the middle of a
transfer, and configuration errors reported as such (exit 2, no traceback).
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.factories import diconde_dx, large_multiframe_file, write
from tests.support.serve import (
    READY,
    PacsServer,
    dataset_sha256,
    dcmtk_env,
    echoscu,
    object_path,
    run_pacs,
    store_successes,
    storescu,
    storescu_command,
    wait_until,
)

FSCK_OK = re.compile(
    r"^fsck: (\d+) indexed objects checked, 0 missing, 0 corrupt, 0 unreadable, 0 unreferenced - OK$", re.M
)


def sqlite_rows(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql, params).fetchall()


def table_counts(db: Path) -> dict[str, int]:
    tables = ("component", "inspection", "series", "instance", "instance_version")
    return {t: int(sqlite_rows(db, f"SELECT count(*) FROM {t}")[0][0]) for t in tables}


def stored_versions(db: Path, uid: str) -> list[tuple[str, str, int]]:
    """(object key, dataset SHA-256, size) of every indexed version of one instance."""
    rows = sqlite_rows(
        db,
        "SELECT v.object_key, v.dataset_sha256, v.size FROM instance i "
        "JOIN instance_version v ON v.instance_id = i.id WHERE i.sop_instance_uid = ?",
        uid,
    )
    return [(str(k), str(h), int(n)) for k, h, n in rows]


def assert_same_instance(sent: Path, objects: Path, version: tuple[str, str, int]) -> None:
    """The stored object is what the index says, and carries the sent dataset byte for byte."""
    key, recorded_sha256, size = version
    stored = object_path(objects, key)
    assert stored.stat().st_size == size
    assert dataset_sha256(stored) == recorded_sha256
    assert dataset_sha256(sent) == recorded_sha256


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- defaults -----------------------------------------------------------------------------------
def test_serve_with_only_a_data_dir_creates_the_embedded_archive_and_serves_both_faces(
    tmp_path: Path,
) -> None:
    data = tmp_path / "archive"
    instance = diconde_dx(part_id="DEFAULT-1")
    dx = write(instance, tmp_path / "dx.dcm")
    server = PacsServer(["--data-dir", data], workers=None, log_path=tmp_path / "serve.log", cwd=tmp_path)
    with server:
        assert (data / "index.sqlite").is_file()
        assert (data / "objects").is_dir()
        assert server.ae_title == "NDT_PACS"
        assert f"index sqlite:///{data / 'index.sqlite'}" in server.ready_line
        assert f"objects file://{data / 'objects'}" in server.ready_line

        health = httpx.get(f"{server.http_url}/health", timeout=10)
        assert health.status_code == 200
        assert health.headers["content-type"].startswith("application/json")
        assert health.json()["status"] == "ok"
        assert health.json()["ae_title"] == "NDT_PACS"
        assert httpx.get(f"{server.http_url}/docs", timeout=10).status_code == 200
        openapi = httpx.get(f"{server.http_url}/openapi.json", timeout=10)
        assert openapi.status_code == 200
        assert "/health" in openapi.json()["paths"]

        echo = echoscu(server)
        assert echo.returncode == 0, echo.stdout
        assert "Received Echo Response (Success)" in echo.stdout

        sent = storescu(server, dx)
        assert sent.returncode == 0 and store_successes(sent.stdout) == 1, sent.stdout
        (stored,) = stored_versions(data / "index.sqlite", str(instance.SOPInstanceUID))
        assert_same_instance(dx, data / "objects", stored)

        started = time.monotonic()
        code = server.stop(timeout=15)
        stopped_in = time.monotonic() - started
    assert code == 0, server.log()
    assert stopped_in < 5, f"SIGTERM took {stopped_in:.1f} s"
    printed = [line for line in server.stdout_lines if line]
    assert len(printed) == 3 and printed[-1] == server.ready_line  # first-admin notice, token, ready
    assert READY.match(server.ready_line)
    assert "Traceback" not in server.log()


def test_serve_on_postgresql_and_s3_then_fsck_with_the_same_flags(
    tmp_path: Path, postgres_url: str, s3_url: str
) -> None:
    flags: list[str | Path] = [
        "--data-dir",
        tmp_path / "node",
        "--database-url",
        postgres_url,
        "--object-store",
        s3_url,
    ]
    files = [write(diconde_dx(part_id="PG-S3-1", seed=i), tmp_path / f"dx{i}.dcm") for i in range(3)]
    with PacsServer(flags, workers=1, log_path=tmp_path / "serve.log") as server:
        assert "index postgresql" in server.ready_line and "objects s3://" in server.ready_line
        assert "pacs-test-secret" not in server.ready_line  # the S3 secret never reaches the output
        assert httpx.get(f"{server.http_url}/health", timeout=10).json()["status"] == "ok"
        sent = storescu(server, *files)
        assert sent.returncode == 0 and store_successes(sent.stdout) == 3, sent.stdout
        assert server.stop() == 0, server.log()

    fsck = run_pacs("fsck", *flags)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    summary = FSCK_OK.search(fsck.stdout)
    assert summary is not None and summary.group(1) == "3", fsck.stdout


# -- configuration sources ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("use_env", "use_flag", "expected"),
    [(False, False, "FILETITLE"), (True, False, "ENVTITLE"), (True, True, "FLAGTITLE")],
    ids=["file", "env-beats-file", "flag-beats-both"],
)
def test_environment_and_config_file_configure_the_server(
    tmp_path: Path, use_env: bool, use_flag: bool, expected: str
) -> None:
    data = tmp_path / "from-file"
    config = tmp_path / "pacs.toml"
    config.write_text(f'[pacs]\nae_title = "FILETITLE"\ndata_dir = "{data}"\nlog_level = "WARNING"\n')
    env = {"PACS_CONFIG": str(config)}
    if use_env:
        env["PACS_AE_TITLE"] = "ENVTITLE"
    flags = ["--ae-title", "FLAGTITLE"] if use_flag else []
    with PacsServer(flags, workers=1, env=env, log_path=tmp_path / "serve.log", cwd=tmp_path) as server:
        assert server.ready_line.startswith(f"NDT archive ready: DICOM {expected} on 127.0.0.1:")
        assert httpx.get(f"{server.http_url}/health", timeout=10).json()["ae_title"] == expected
        echo = echoscu(server)
        assert echo.returncode == 0, echo.stdout
    assert (data / "index.sqlite").is_file(), "data_dir from the config file was not used"
    assert not (tmp_path / "pacs-data").exists()
    # log_level WARNING from the file: the INFO start-up lines of the workers are not logged.
    assert "Application startup complete" not in server.log()


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--ae-title", "A" * 17], {}, "ae_title"),
        (["--object-store", "ftp://x"], {}, "object_store"),
        (["--database-url", "mysql://db/pacs"], {}, "database_url"),
        ([], {"PACS_WORKERS": "-1"}, "workers"),
        (["--log-level", "LOUD"], {}, "log_level"),
        (["--allowed-peers", "OK,BAD\\TITLE"], {}, "allowed_peers"),
    ],
    ids=["long-ae-title", "ftp-store", "mysql-index", "negative-workers", "log-level", "peer-backslash"],
)
def test_invalid_configuration_exits_2_naming_the_setting(
    tmp_path: Path, args: list[str], env: dict[str, str], setting: str
) -> None:
    result = run_pacs(
        "serve",
        "--data-dir",
        tmp_path / "d",
        "--dicom-port",
        "0",
        "--http-port",
        "0",
        *args,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert setting in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "NDT archive ready" not in result.stdout
    assert not (tmp_path / "d").exists(), "nothing is created for an invalid configuration"


def test_unknown_setting_in_config_file_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "pacs.toml"
    config.write_text('ae_title = "OK"\ncolour = "blue"\n')
    result = run_pacs("serve", "--config", config, "--data-dir", tmp_path / "d", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "colour" in result.stderr and "Traceback" not in result.stderr


# -- graceful stop ------------------------------------------------------------------------------
@pytest.mark.parametrize("grace", [30, 0], ids=["grace-30s", "grace-0s"])
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_during_a_large_store_keeps_index_and_objects_consistent(
    tmp_path: Path, grace: int, stop_signal: signal.Signals
) -> None:
    """SIGTERM (a service manager) and SIGINT (Ctrl-C at a terminal) stop the server alike: the store
    in flight finishes within the grace period or fails, and is never answered Success unless kept."""
    data = tmp_path / "archive"
    big = large_multiframe_file(tmp_path / "big.dcm", 200 * 1024**2, part_id="BIG-STOP")
    uid = uid_of(big)
    env = {"PACS_SHUTDOWN_GRACE": str(grace)}
    server = PacsServer(["--data-dir", data], workers=1, env=env, log_path=tmp_path / "serve.log")
    with server:
        sender = subprocess.Popen(
            storescu_command(server, big),
            env=dcmtk_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # The C-STORE is under way once its bytes land in the staging file it is received into.
            wait_until(
                lambda: any(p.stat().st_size > 1 << 20 for p in (data / "objects" / ".staging").iterdir()),
                timeout=60,
                what="the transfer to start",
            )
            server.signal(stop_signal)
            code = server.wait(timeout=grace + 60)
            output, _ = sender.communicate(timeout=120)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
    assert code == 0, server.log()
    succeeded = store_successes(output) == 1

    rows = stored_versions(data / "index.sqlite", uid)
    if succeeded:
        assert len(rows) == 1, output
        assert_same_instance(big, data / "objects", rows[0])
    else:
        assert rows == [], f"no Success was sent, yet the index holds {rows}"
    if grace == 30:  # in-flight associations get the grace period to finish
        assert succeeded, output + server.log()

    fsck = run_pacs("fsck", "--data-dir", data)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    summary = FSCK_OK.search(fsck.stdout)
    assert summary is not None and summary.group(1) == ("1" if succeeded else "0"), fsck.stdout
    # A graceful stop is not a crash: an aborted receive discards its partial object
    # (dicom_nodes/spool.py), so nothing is left for fsck to find even without a grace period,
    # and nothing in the staging folder either.
    leftovers = run_pacs("fsck", "--data-dir", data, "--grace-seconds", "0")
    assert leftovers.returncode == 0, (
        f"storescu {'succeeded' if succeeded else 'got no Success'}; after the stop:\n{leftovers.stdout}"
    )
    assert list((data / "objects" / ".staging").iterdir()) == []


# -- workers ------------------------------------------------------------------------------------
def test_two_workers_take_parallel_stores_of_one_component(tmp_path: Path) -> None:
    data = tmp_path / "archive"
    study = "1.2.826.0.1.3680043.8.498.1000"
    batches = []
    for sender in range(4):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        series = f"1.2.826.0.1.3680043.8.498.1000.{sender + 1}"
        batches.append(
            [
                write(
                    diconde_dx(
                        part_id="SHARED-PART", study_uid=study, series_uid=series, seed=10 * sender + i
                    ),
                    folder / f"{i}.dcm",
                )
                for i in range(5)
            ]
        )
    with PacsServer(["--data-dir", data], workers=2, log_path=tmp_path / "serve.log") as server:
        assert len(server.worker_pids()) == 2
        senders = [
            subprocess.Popen(
                storescu_command(server, *files, aet=f"DEVICE{n}"),
                env=dcmtk_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for n, files in enumerate(batches)
        ]
        outputs = [s.communicate(timeout=120)[0] for s in senders]
        for process, output in zip(senders, outputs, strict=True):
            assert process.returncode == 0 and store_successes(output) == 5, output
    assert server.returncode == 0, server.log()
    assert table_counts(data / "index.sqlite") == {
        "component": 1,
        "inspection": 1,
        "series": 4,
        "instance": 20,
        "instance_version": 20,
    }
    fsck = run_pacs("fsck", "--data-dir", data, "--grace-seconds", "0")
    assert fsck.returncode == 0, fsck.stdout
    summary = FSCK_OK.search(fsck.stdout)
    assert summary is not None and summary.group(1) == "20", fsck.stdout


def test_a_killed_worker_is_restarted_and_the_server_keeps_storing(tmp_path: Path) -> None:
    data = tmp_path / "archive"
    files = [write(diconde_dx(part_id="RESTART", seed=i), tmp_path / f"{i}.dcm") for i in range(2)]
    with PacsServer(["--data-dir", data], workers=1, log_path=tmp_path / "serve.log") as server:
        sent = storescu(server, files[0])
        assert store_successes(sent.stdout) == 1, sent.stdout
        (victim,) = server.worker_pids()
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(server.worker_pids()) == 1 and server.worker_pids() != [victim],
            timeout=30,
            what="the supervisor to start a new worker",
        )
        # With one worker, this store can only be taken by the replacement.
        sent = storescu(server, files[1])
        assert sent.returncode == 0 and store_successes(sent.stdout) == 1, sent.stdout + server.log()
        assert httpx.get(f"{server.http_url}/health", timeout=10).status_code == 200
        assert not Path(f"/proc/{victim}").exists(), "the killed worker was not reaped"
    assert server.returncode == 0, server.log()
    assert "worker 1 exited unexpectedly" in server.log()
    assert table_counts(data / "index.sqlite")["instance"] == 2


def test_a_killed_worker_gives_back_its_associations(tmp_path: Path) -> None:
    """The association limit is shared by all workers; a worker that dies with associations open
    must not keep counting them, or the archive would refuse peers until restarted."""
    with PacsServer(["--data-dir", tmp_path / "archive", "--max-associations", "1"], workers=1) as server:
        ae = AE("PROBE")
        ae.add_requested_context(Verification)
        held = ae.associate(server.host, server.dicom_port, ae_title=server.ae_title)
        assert held.is_established
        refused = ae.associate(server.host, server.dicom_port, ae_title=server.ae_title)
        assert refused.is_rejected, "the limit of one association is not enforced"

        (victim,) = server.worker_pids()
        os.kill(victim, signal.SIGKILL)
        held.abort()
        wait_until(
            lambda: len(server.worker_pids()) == 1 and server.worker_pids() != [victim],
            timeout=30,
            what="the supervisor to start a new worker",
        )
        # The listening socket stays open in the supervisor: this waits in its backlog until the
        # replacement accepts it.
        ae.acse_timeout = 60
        after = ae.associate(server.host, server.dicom_port, ae_title=server.ae_title)
        assert after.is_established, "the dead worker's association still counts"
        after.release()
    assert server.returncode == 0, server.log()
