"""A process's start: when it reached each step, and the dead process it replaces.

When a process reached each step of its start, for ``/healthz`` (``startup_seconds``).

A restarted stage process is not working again until it has started Python, imported its
modules, joined its consumer group, been assigned partitions and restored their state. The
stage's ``recovery_seconds`` covers only the last step; :data:`STARTUP` records them all, as
seconds since the process began (its start time in ``/proc/self/stat`` on Linux, else when this
module was imported), so the time from a SIGKILL to the partitions being read again can be split
into its parts (``benchmarks/scale.py --join-stage`` prints them).

The processes it replaces: a stage process with a state directory records there, in a file of
its own (several processes may share the directory), its group member id, its pid, its host and
when it started (:func:`record_member`; removed on a clean stop). A process started later on the
same directory reads those records (:func:`dead_predecessors`): a recorded process that is gone
(no process with that pid, or one that started at another time: the pid was reused) was a dead
member, which the new process removes from the group before joining
(:class:`~driftswitch.streams.kafka.groups.StageMember` ``replaces``). The group then need not
wait for the dead member's session to time out before it hands its partitions over. A record
from another host is not checked (its pid says nothing here) and is left alone.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from driftswitch.streams.contract.topics import Topics
    from driftswitch.streams.kafka.groups import StageMember
    from driftswitch.streams.kafka.settings import KafkaSettings

__all__ = [
    "JOIN_HEARTBEAT_INTERVAL_MS",
    "JOIN_SESSION_TIMEOUT_MS",
    "STARTUP",
    "Startup",
    "dead_predecessors",
    "forget_member",
    "join_member",
    "member_record",
    "predecessor_of",
    "process_started",
    "record_member",
]

log = logging.getLogger(__name__)


def process_started(pid: int | str = "self") -> float | None:
    """When process ``pid`` started, as :func:`time.time`, from ``/proc`` (``None`` when there is
    no such process, or no ``/proc``).

    ``/proc/<pid>/stat`` field 22 is the start in clock ticks since boot; ``/proc/stat``'s
    ``btime`` is the boot in seconds since the epoch."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    # The command name (field 2) may hold spaces: the fields after it follow its last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    try:
        ticks = int(fields[19])  # field 22 overall
    except (IndexError, ValueError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


class Startup:
    """The steps of one process's start, each recorded once (the first time)."""

    def __init__(self, began: float | None = None) -> None:
        #: The process's start (:func:`time.time`); its resolution is a clock tick (10 ms).
        self.began = began if began is not None else (process_started() or time.time())
        self._steps: dict[str, float] = {}

    def mark(self, step: str) -> None:
        """Record that ``step`` is reached now, unless it was reached before."""
        self._steps.setdefault(step, time.time())

    def mark_at(self, step: str, at: float) -> None:
        """Record that ``step`` was reached at ``at`` (:func:`time.time`), unless it was before."""
        self._steps.setdefault(step, at)

    def seconds(self) -> dict[str, float]:
        """``{step: seconds since the process began}``, in the order the steps were reached."""
        return {
            step: round(at - self.began, 3)
            for step, at in sorted(self._steps.items(), key=lambda item: item[1])
        }


#: This process's start.
STARTUP = Startup()


def member_record(directory: Path, pid: int | None = None) -> Path:
    """The file in ``directory`` where process ``pid`` (default: this one) records its member."""
    return directory / f"{MEMBER_PREFIX}{os.getpid() if pid is None else pid}{MEMBER_SUFFIX}"


#: A member record's file name: prefix, the process id, suffix.
MEMBER_PREFIX, MEMBER_SUFFIX = "member-", ".json"


def record_member(directory: Path, member_id: str) -> None:
    """Record in ``directory`` that this process is ``member_id`` (its own file, atomically
    replaced: several processes may share the directory)."""
    record = {
        "member_id": member_id,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": STARTUP.began,
    }
    path = member_record(directory)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(record))
    os.replace(tmp, path)


def forget_member(directory: Path) -> None:
    """Remove this process's record (it left its group cleanly)."""
    member_record(directory).unlink(missing_ok=True)


def predecessor_of(
    record: dict[str, object],
    host: str,
    started_of: Callable[[int], float | None],
    own_pid: int,
) -> str | None:
    """The member id in ``record`` if its process is dead, else ``None``.

    Dead: on this ``host``, and no process has its pid (``started_of(pid)`` is ``None``), or the
    one that has it started more than a second away from the recorded start (the pid was reused;
    :data:`STARTUP` is precise to a clock tick). A record of this very process (``own_pid`` with
    its start) is not a predecessor, and where ``started_of`` cannot tell even this process's
    start (no ``/proc``), nothing is."""
    member_id, pid, started = record.get("member_id"), record.get("pid"), record.get("started")
    if not isinstance(member_id, str) or not member_id or record.get("host") != host:
        return None
    if not isinstance(pid, int) or not isinstance(started, int | float):
        return None
    if started_of(own_pid) is None:
        return None  # no /proc here: nothing can be told
    now = started_of(pid)
    if now is not None and abs(now - started) <= 1.0:
        return None  # alive (this process, or another one on the same directory)
    return member_id


def dead_predecessors(directory: Path) -> dict[Path, str]:
    """``{record file: member id}`` of the processes recorded in ``directory``
    (:func:`record_member`) that are dead (:func:`predecessor_of`). Unreadable records are
    skipped."""
    found: dict[Path, str] = {}
    host, pid = socket.gethostname(), os.getpid()
    for path in sorted(directory.glob(f"{MEMBER_PREFIX}*{MEMBER_SUFFIX}")):
        try:
            record = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            continue  # removed meanwhile by its process (a clean stop) or another replacement
        except (OSError, orjson.JSONDecodeError) as err:
            log.warning("ignoring the unreadable member record %s: %r", path, err)
            continue
        member_id = (
            predecessor_of(record, host, process_started, pid) if isinstance(record, dict) else None
        )
        if member_id is not None:
            found[path] = member_id
    return found


#: A join-stage member's session timeout and heartbeat interval (the worker settings' defaults;
#: tests/unit/test_startup.py checks they agree).
JOIN_SESSION_TIMEOUT_MS = 6_000
JOIN_HEARTBEAT_INTERVAL_MS = 1_000


async def join_member(
    kafka: KafkaSettings,
    group: str,
    topics: Topics,
    members_dir: Path | None,
    *,
    session_timeout_ms: int = JOIN_SESSION_TIMEOUT_MS,
    heartbeat_interval_ms: int = JOIN_HEARTBEAT_INTERVAL_MS,
) -> StageMember:
    """The join stage's group member, started and ``unbound`` (its runner binds the callbacks):
    it reads the prediction, outcome and repartition topics of ``topics`` in ``group``, and
    first removes the dead members recorded in ``members_dir`` (module doc). Raises as
    :meth:`StageMember.start <driftswitch.streams.kafka.groups.StageMember.start>` does."""
    from driftswitch.streams.kafka.groups import StageMember

    dead = dead_predecessors(members_dir) if members_dir is not None else {}
    if dead:
        log.warning(
            "join stage: removing from group %s the members of processes that ran on %s and are "
            "gone: %s",
            group,
            members_dir,
            ", ".join(sorted(dead.values())),
        )
    member = StageMember(
        kafka,
        group,
        [topics.predictions.name, topics.outcomes.name, topics.repartition.name],
        replaces=sorted(dead.values()),
        unbound=True,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await member.start()
    await member.wait_joining(10.0)  # then the coordinator works while this process starts
    for path, member_id in dead.items():
        if member.replaced.get(member_id) is not None:  # answered: removed, or unknown
            path.unlink(missing_ok=True)
    STARTUP.mark("subscribed")
    return member
