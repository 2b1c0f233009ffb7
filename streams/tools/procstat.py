"""CPU time of a process, from Linux's ``/proc`` (the benchmarks' CPU-per-event figures)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_seconds"]

#: Clock ticks per second, the unit of utime and stime in /proc/<pid>/stat.
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (its threads included), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / TICKS
