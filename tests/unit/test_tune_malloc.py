"""``tune_malloc``: what ``driftswitch run`` does to glibc's malloc before it starts.

Each case runs in a fresh interpreter: malloc's thresholds are the whole process's. The
service's images and CI run on glibc (Debian), where it acts.
"""

from __future__ import annotations

import os
import subprocess
import sys

#: Frees a large block (which raises glibc's adjusting mmap threshold to its size), allocates
#: 64 blocks of 1 MiB and then small blocks after them, frees the large ones, and prints
#: tune_malloc's answer and the RSS (MB) before, with and after the 64 MiB.
SCENARIO = """
import sys
from driftswitch.streams.service.runner import tune_malloc

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

tuned = tune_malloc() if sys.argv[1] == "tune" else None
big = bytearray(8 << 20)
del big
before = rss()
blocks = [bytearray(1 << 20) for _ in range(64)]
pins = [bytearray(2048) for _ in range(64)]
held = rss()
del blocks
print(tuned, before, held, rss())
"""


def run(mode: str, **env: str) -> tuple[str, float, float, float]:
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], float(out[1]), float(out[2]), float(out[3])


def test_freed_large_blocks_leave_the_rss_once_tuned() -> None:
    tuned, before, held, after = run("tune")
    assert tuned == "True"
    assert held - before > 60
    # The 64 MiB went back to the system when freed.
    assert after - before < 8


def test_untuned_the_heap_keeps_them() -> None:
    # What tune_malloc is for: glibc's default keeps the freed blocks (the heap's top is pinned
    # by the small blocks after them), so the RSS stays at its peak.
    tuned, before, held, after = run("plain")
    assert tuned == "None"
    assert held - before > 60
    assert after - before > 60


def test_the_operators_setting_stands() -> None:
    tuned, _, _, _ = run("tune", MALLOC_MMAP_THRESHOLD_="1048576")
    assert tuned == "False"
