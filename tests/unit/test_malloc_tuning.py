"""The workers' glibc malloc tuning (pacs.supervisor.keep_large_blocks), observed in a fresh
interpreter: a large freed block stays with the process and the next one reuses its pages."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import ctypes, json, resource, sys
from pacs.supervisor import keep_large_blocks
tuned = keep_large_blocks() if sys.argv[1] == "tuned" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
size = 20 << 20  # an 18 MB frame, say
block = libc.malloc(size); ctypes.memset(block, 1, size)
held = rss_kib(); libc.free(block); returned_kib = held - rss_kib()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size); ctypes.memset(block, 2, size); libc.free(block)
print(json.dumps({"tuned": tuned, "returned_kib": returned_kib,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}))
"""


def probe(mode: str, **env: str) -> dict[str, int]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.update(env, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=environment, check=True
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_a_worker_keeps_large_freed_blocks_and_reuses_their_pages() -> None:
    plain, tuned = probe("plain"), probe("tuned")
    pages = (20 << 20) // 4096
    # glibc's default maps a first 20 MB block and gives it back when freed: the next one faults
    # every page in again (the cost of each rendering and retrieve, on a virtual machine).
    assert plain["returned_kib"] > 15_000
    assert tuned["tuned"] and tuned["returned_kib"] < 1_000
    assert tuned["faults"] < pages // 20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_an_operators_malloc_settings_win() -> None:
    result = probe("tuned", MALLOC_TRIM_THRESHOLD_="0")
    assert not result["tuned"]
    assert result["returned_kib"] > 15_000
