"""A process's start steps and the dead processes it replaces (streams/service/startup.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.service.startup import (
    JOIN_HEARTBEAT_INTERVAL_MS,
    JOIN_SESSION_TIMEOUT_MS,
    STARTUP,
    Startup,
    dead_predecessors,
    forget_member,
    member_record,
    predecessor_of,
    process_started,
    record_member,
)
from driftswitch.streams.service.worker import WorkerSettings

HOST = "h1"


def alive(starts: dict[int, float]) -> object:
    return lambda pid: starts.get(pid)


def record(pid: int = 7, started: float = 100.0, host: str = HOST, member: str = "m-1") -> dict:
    return {"member_id": member, "pid": pid, "host": host, "started": started}


def test_a_recorded_process_that_is_gone_was_a_dead_member() -> None:
    assert predecessor_of(record(), HOST, alive({1: 5.0}), own_pid=1) == "m-1"


def test_a_reused_pid_is_a_dead_member_too() -> None:
    # pid 7 exists, but started long after the recorded process.
    assert predecessor_of(record(), HOST, alive({1: 5.0, 7: 250.0}), own_pid=1) == "m-1"


def test_a_live_process_is_not_a_predecessor() -> None:
    assert predecessor_of(record(), HOST, alive({1: 5.0, 7: 100.4}), own_pid=1) is None
    # This very process.
    assert predecessor_of(record(pid=1, started=5.0), HOST, alive({1: 5.0}), own_pid=1) is None


def test_records_of_other_hosts_or_without_proc_are_left_alone() -> None:
    assert predecessor_of(record(host="h2"), HOST, alive({1: 5.0}), own_pid=1) is None
    assert predecessor_of(record(), HOST, alive({}), own_pid=1) is None


def test_malformed_records_are_not_predecessors() -> None:
    starts = alive({1: 5.0})
    assert predecessor_of({**record(), "member_id": ""}, HOST, starts, own_pid=1) is None
    assert predecessor_of({**record(), "pid": "7"}, HOST, starts, own_pid=1) is None
    assert predecessor_of({**record(), "started": None}, HOST, starts, own_pid=1) is None


def test_process_started_reads_proc() -> None:
    began = process_started()
    assert began is not None
    assert began <= time.time()
    assert abs(began - STARTUP.began) < 0.05
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_started(child.pid) is None


def test_records_in_a_shared_directory(tmp_path: Path) -> None:
    record_member(tmp_path, "me-1")
    mine = member_record(tmp_path)
    assert orjson.loads(mine.read_bytes())["member_id"] == "me-1"
    assert dead_predecessors(tmp_path) == {}  # this process is alive
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gone = member_record(tmp_path, child.pid)
    gone.write_bytes(orjson.dumps(record(child.pid, time.time() - 5, socket.gethostname(), "d-1")))
    other = member_record(tmp_path, child.pid + 1_000_000)
    other.write_bytes(orjson.dumps(record(child.pid + 1_000_000, 1.0, "elsewhere", "x-1")))
    (tmp_path / "member-9.json").write_bytes(b"{not json")
    parent = member_record(tmp_path, os.getppid())
    started = process_started(os.getppid())
    assert started is not None
    parent.write_bytes(orjson.dumps(record(os.getppid(), started, socket.gethostname(), "p-1")))
    assert dead_predecessors(tmp_path) == {gone: "d-1"}
    forget_member(tmp_path)
    assert not mine.exists()
    forget_member(tmp_path)  # twice: nothing to remove


def test_steps_are_kept_once_in_the_order_reached() -> None:
    startup = Startup(began=1000.0)
    startup.mark_at("b", 1002.5)
    startup.mark_at("a", 1001.25)
    startup.mark_at("a", 1003.0)
    assert startup.seconds() == {"a": 1.25, "b": 2.5}
    startup.mark("c")
    assert list(startup.seconds()) == ["a", "b", "c"]


def test_the_join_members_session_is_the_worker_settings_default() -> None:
    defaults = WorkerSettings(bootstrap="127.0.0.1:1", topics=Topics.with_prefix("t"))
    assert defaults.session_timeout_ms == JOIN_SESSION_TIMEOUT_MS
    assert defaults.heartbeat_interval_ms == JOIN_HEARTBEAT_INTERVAL_MS
