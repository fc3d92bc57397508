"""One minute of bench/soak.py: 16 storing associations and 8 HTTP clients against `pacs serve` on the
production pair (PostgreSQL + S3). Every answer must be right, every acknowledged instance indexed,
and the server's memory must show no growth trend after the warm-up (the ten-minute run is the
benchmark; docs/reliability.md has its figures)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.soak import HTTP_OPS, Options, run, table
from tests.conftest import POSTGRES_URL


def test_one_minute_of_parallel_storing_querying_and_retrieving(tmp_path: Path) -> None:
    options = Options(
        minutes=float(os.environ.get("PACS_TEST_SOAK_MINUTES", "1")),
        backend="postgresql+s3",
        postgres_url=POSTGRES_URL,
        progress=False,
    )
    result = run(options, tmp_path)
    report = table(result) + "".join(f"\n  {e}" for e in result.errors[:20])
    server_log = tmp_path / "serve.log"
    if server_log.exists():  # warnings and errors of the server (it logs at WARNING)
        report += "\n--- end of the server's log ---\n" + server_log.read_text(errors="replace")[-4000:]

    assert result.errors == [], report
    assert result.acknowledged > 0, report
    assert result.missing == 0, report
    for op in HTTP_OPS:  # every kind of request was made and answered right
        assert result.count(op) > 0, f"no successful {op}\n{report}"
    assert result.memory_growth <= result.memory_growth_limit, report
