"""A 2 GB instance through ``pacs serve`` in bounded memory.

The archive's first rule is never to hold a whole large instance in memory (docs/architecture.md,
"Storing an instance"): a C-STORE streams into the object store while it is hashed. This sends a
2 GiB multi-frame instance with dcmtk's storescu to a one-worker server and measures the worker's
peak resident memory (VmHWM) against its resident memory before the transfer. On both backend
pairs: on S3 the object is spooled to a local file and uploaded at commit in 16 MiB parts, which
must stay bounded too.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import text

from pacs.index.database import create_index_engine
from tests.support.factories import large_multiframe_file
from tests.support.serve import (
    PacsServer,
    dataset_offset,
    dataset_sha256,
    object_path,
    proc_status_kib,
    run_pacs,
    store_successes,
    storescu,
)

SIZE = 2 * 1024**3
MAX_GROWTH_MB = 300


def test_a_2gb_instance_is_stored_in_bounded_memory(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    # The file sent and the stored object; on S3 also the spool file and the server's copy.
    needed = (3 if backend == "sqlite+file" else 5) * SIZE
    free = shutil.disk_usage(tmp_path).free
    assert free > needed, f"{tmp_path} has {free / 1e9:.1f} GB free; this test needs {needed / 1e9:.1f} GB"
    data = tmp_path / "archive"
    config: list[str | Path] = ["--data-dir", data]
    database_url = f"sqlite:///{data / 'index.sqlite'}"
    if backend == "postgresql+s3":
        database_url = request.getfixturevalue("postgres_url")
        config += ["--database-url", database_url, "--object-store", request.getfixturevalue("s3_url")]
    sent = tmp_path / "big.dcm"
    try:
        t0 = time.monotonic()
        large_multiframe_file(sent, SIZE, part_id="BIG-MEMORY")
        header = pydicom.dcmread(sent, stop_before_pixels=True)
        uid, frames = str(header.SOPInstanceUID), int(header.NumberOfFrames)
        frame_bytes = int(header.Rows) * int(header.Columns) * 2
        made_in = time.monotonic() - t0

        with PacsServer(config, workers=1, log_path=tmp_path / "serve.log") as server:
            (worker,) = server.worker_pids()
            rss_before = proc_status_kib(worker, "VmRSS")
            hwm_before = proc_status_kib(worker, "VmHWM")
            t0 = time.monotonic()
            result = storescu(server, sent, timeout=600)
            sent_in = time.monotonic() - t0
            hwm_after = proc_status_kib(worker, "VmHWM")
            assert server.worker_pids() == [worker], "the worker was replaced during the transfer"
        assert server.returncode == 0, server.log()

        growth_mb = (hwm_after - rss_before) / 1024
        figures = (
            f"worker {worker}: VmRSS before {rss_before / 1024:.0f} MB, "
            f"VmHWM before {hwm_before / 1024:.0f} MB, "
            f"VmHWM after {hwm_after / 1024:.0f} MB, growth {growth_mb:.0f} MB (limit {MAX_GROWTH_MB} MB); "
            f"{sent.stat().st_size / 1e9:.2f} GB made in {made_in:.1f} s, sent in {sent_in:.1f} s "
            f"({sent.stat().st_size / 1e6 / sent_in:.0f} MB/s)"
        )
        print(f"\n{figures}")
        assert result.returncode == 0 and store_successes(result.stdout) == 1, result.stdout + server.log()
        assert growth_mb < MAX_GROWTH_MB, figures

        engine = create_index_engine(database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT v.object_key, v.dataset_sha256, v.dataset_offset, v.size, v.frames "
                        "FROM instance i JOIN instance_version v ON v.instance_id = i.id "
                        "WHERE i.sop_instance_uid = :uid"
                    ),
                    {"uid": uid},
                ).all()
        finally:
            engine.dispose()
        assert len(rows) == 1, rows
        key, recorded_sha256, offset, size, frame_json = rows[0]
        # The receiver writes its own file meta; from the dataset on, the bytes are those sent.
        assert size - offset == sent.stat().st_size - dataset_offset(sent)
        assert recorded_sha256 == dataset_sha256(sent)
        if backend == "sqlite+file":
            stored = object_path(data / "objects", key)
            assert stored.stat().st_size == size
            assert dataset_offset(stored) == offset
            assert dataset_sha256(stored) == recorded_sha256

        recorded = json.loads(frame_json) if isinstance(frame_json, str) else frame_json
        assert len(recorded) == frames, f"{len(recorded)} frames recorded, NumberOfFrames is {frames}"
        assert all(sum(length for _, length in segments) == frame_bytes for segments in recorded)
        last_offset, last_length = recorded[-1][-1]
        assert last_offset + last_length == size, "the last frame does not end the object"

        # fsck re-hashes the object (on S3 as it streams it back): the index's SHA-256 is that of
        # the stored bytes.
        fsck = run_pacs("fsck", *config, timeout=300)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert "fsck: 1 indexed objects checked, 0 missing, 0 corrupt" in fsck.stdout, fsck.stdout
    finally:
        sent.unlink(missing_ok=True)
        shutil.rmtree(data, ignore_errors=True)
