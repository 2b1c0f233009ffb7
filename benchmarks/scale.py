"""Join state at scale: peak RSS, checkpoint cost and recovery time of the disk-backed join.

    .venv/bin/python benchmarks/scale.py [--pending 20000000] [--rate 50000] [--dir DIR]
    .venv/bin/python benchmarks/scale.py --stages 1,2,3 [--events 400000] [--rounds 3] [--live]
    .venv/bin/python benchmarks/scale.py --join-stage 20000000 [--labelled 200000] [--forget-member]

A child process fills a :class:`~driftswitch.streams.service.joinstore.RocksJoinStore` through
:class:`~driftswitch.streams.pipeline.join.StoredJoinBuffer` with ``--pending`` predictions
whose labels have not arrived (32-character request ids, the engine's payload shape), committing
one checkpoint per second of input (``--rate`` events), as the worker does with its default
``--snapshot-interval 1``. It then keeps adding entries without committing, and is SIGKILLed.
A second child recovers: opens the store, reads the checkpoint, continues the join from it, and
joins a batch of labels against the oldest entries. Printed:

- events/s into the store, and the child's peak RSS;
- checkpoint cost per second of input: the commit's wall time, for the first and the last tenth
  of the fill (flat means it does not grow with the state), and its mean;
- recovery after SIGKILL: seconds until the first batch is joined, and that the uncommitted
  entries are gone and the committed ones all there;
- for comparison, the in-memory join's whole snapshot (``JoinBuffer.to_state`` as the worker
  serialises it) at ``--compare`` entries.

With ``--worker 50000,300000`` it also runs the real worker (``driftswitch run``) on the
embedded broker for each count of pending predictions, with and without ``--state-dir``:
SIGKILL once everything is read and snapshotted, restart, and print ``recovery_seconds`` from
``/healthz`` (lease held → active: state topic read, store opened, inputs sought) and the
restart's wall time until every entry is back (process start, the lease's session timeout and
the replay since the last snapshot included).

With ``--join-stage N`` it runs only a real join-stage process (``driftswitch run --stage join
--state-dir DIR --snapshot-interval 1``, 4-partition topics on the embedded broker): predictions
of :class:`~driftswitch.streams.tools.delayedlabels.DelayedLabels` (labels 30 minutes of event
time late) are produced by ``--producers`` confluent-kafka processes while the stage reads them,
until ``N`` entries are pending (``join.max_pending`` is 1,000: nothing may be evicted). Sampled
once a second from ``/healthz`` and /proc: the stage's RSS (and its peak, VmHWM), the broker's, and
the last checkpoint's duration (one checkpoint per second of input: its cost per second of
input), for the first and the last tenth of the fill. Then ``--labelled`` more predictions and
the labels of as many early ones are produced (so ``N`` stay pending), and the stage is SIGKILLed
once half of them are read, some of it after its last checkpoint. A second process starts on
the same state directory: printed are its ``/healthz`` ``recovery_seconds`` (state topic read,
stores opened, inputs sought), the wall time from the SIGKILL until its partitions are restored
(the group's session timeout included) and until it has read everything, and a check that
exactly ``N`` entries are pending then, none lost, none rejected as a duplicate. Two parts of
``recovery_seconds`` are also timed alone once the run is over: reading the whole state topic
(it grows with the run's history) and opening hard-linked copies of the stores taken at the
SIGKILL (write-ahead log replay; the logs' size at the SIGKILL is printed too). The restart is
also printed step by step, in seconds after the SIGKILL: the process spawned, then each step of
its ``/healthz`` ``startup_seconds`` (Python and the command line, JoinGroup sent, the service's
modules imported, JoinGroup answered, SyncGroup answered, partitions restored, reading again).
``--forget-member`` deletes the killed process's member record before the restart, so the group
keeps the dead member until its session times out (the restart without that removal).

With ``--stages 1,2,3`` it runs only the stages as separate processes (``driftswitch run --stage
join|decide``) on the embedded broker: a backlog of ``--events`` simulated events of ``--flags``
flags (4-partition input and observations topics) is prepared once; then, per ``--rounds`` and per
k, on fresh topics, k join processes and k decide processes (one active, k-1 standbys;
``--decide-processes N``: N whatever k) start; once every input partition is assigned, one decide
process is active and the assignment has held for 3 s, each process's CPU time (utime + stime,
/proc/<pid>/stat) is read twice, ``--idle-window`` seconds apart (its idle CPU rate). Then every
stage process is stopped (SIGSTOP), the backlog is produced (predictions with confluent-kafka's
default partitioner; outcomes by ``--placement``: ``murmur2``, a Java/aiokafka producer's, about 3
in 4 re-routed, or ``crc32``, their join partition, none re-routed), each process's CPU time (and
the broker's) is read as the baseline, and all of them continue (SIGCONT) at once: a pre-produced
backlog, read by processes already assigned; process start, imports, group joins, the reads of
the empty topics and the production are not counted, and the standbys' polling while the backlog
is read is. A run whose assignment changed meanwhile (stopped past the session timeout, or a
starved member) is discarded and run again on fresh topics. With ``--live`` (the earlier method)
nothing is stopped: the second idle reading is the baseline and the processes read the backlog
as it is produced, so their polling during the production counts too. The run ends when the
active decide process's ``/healthz`` counts every prediction and join the engine counts on the
events in event-time order. Printed per run and summarised (median, min-max): wall seconds from
SIGCONT (``--live``: from the first record produced), the join stage's ``idle_after`` included,
and events/s; CPU-seconds
per million events of the join stage (its processes summed), of the decide stage (standbys included)
and of the broker; the idle cost of each stage (idle CPU rate times wall time, an upper bound of its
fixed per-process overhead); the ratio of CPU per million events at k processes to 1 process per
round; a least-squares split of the join stage's CPU into a per-event and a per-process-second cost;
peak RSS (VmHWM) per process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from driftswitch.streams.pipeline.join import JoinBuffer, StoredJoinBuffer
from driftswitch.streams.service.joinstore import RocksJoinStore
from driftswitch.streams.service.snapshot import compress
from driftswitch.streams.tools.procstat import cpu_seconds

T0 = 1_700_000_000.0
TTL = 7 * 86400.0


def rid(i: int) -> str:
    return f"{i:032x}"


def payload(i: int) -> tuple[str, str, bool, bool]:
    return ("ranker", "control" if i % 2 else "candidate", i % 3 == 0, False)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fill(path: Path, pending: int, rate: int) -> None:
    """Child: fill the store, one commit per ``rate`` events; then add without committing."""
    store = RocksJoinStore(path)
    buf = StoredJoinBuffer(TTL, store)
    commits: list[float] = []
    started = time.perf_counter()
    for i in range(pending):
        buf.add_prediction(rid(i), T0 + i / rate, "ranker/control", payload(i))
        if (i + 1) % rate == 0 or i + 1 == pending:
            buf.expire()
            t = time.perf_counter()
            store.commit(orjson.dumps({"join": buf.to_state(), "upto": i + 1}))
            commits.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    tenth = max(1, len(commits) // 10)
    print(
        json.dumps(
            {
                "events_per_s": pending / elapsed,
                "fill_s": elapsed,
                "peak_rss_mb": peak_rss_mb(),
                "store_bytes": store.size_bytes(),
                "checkpoints": len(commits),
                "commit_first_tenth_s": sum(commits[:tenth]) / tenth,
                "commit_last_tenth_s": sum(commits[-tenth:]) / tenth,
                "commit_mean_s": sum(commits) / len(commits),
                "commit_max_s": max(commits),
            }
        ),
        flush=True,
    )
    i = pending
    while True:  # uncommitted input, until the parent's SIGKILL
        buf.add_prediction(rid(i), T0 + i / rate, "ranker/control", payload(i))
        i += 1
        if i % 10_000 == 0:
            print(json.dumps({"uncommitted": i - pending}), flush=True)


def recover(path: Path, pending: int, rate: int) -> None:
    """Child: open the store after the SIGKILL, continue, join one batch of labels."""
    started = time.perf_counter()
    store = RocksJoinStore(path)
    raw = store.checkpoint()
    assert raw is not None
    doc = orjson.loads(raw)
    buf = StoredJoinBuffer.from_state(doc["join"], store)
    opened = time.perf_counter() - started
    joined = 0
    for i in range(rate):  # one second of labels for the oldest predictions
        got = buf.add_outcome(rid(i), T0 + 1800.0 + i / rate, True)
        joined += got is not None
    ready = time.perf_counter() - started
    uncommitted = store.get(rid(pending))
    print(
        json.dumps(
            {
                "open_s": opened,
                "recovered_s": ready,
                "checkpoint_upto": doc["upto"],
                "pending_after": buf.pending_predictions,
                "joined_first_batch": joined,
                "uncommitted_entry_found": uncommitted is not None,
                "peak_rss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )


def in_memory_snapshot(count: int) -> dict[str, float]:
    """The in-memory join's whole snapshot at ``count`` entries, as the worker writes it."""
    buf = JoinBuffer(TTL, count + 1)
    for i in range(count):
        buf.add_prediction(rid(i), T0 + i / 50_000, "ranker/control", payload(i))
    t = time.perf_counter()
    blob = compress(orjson.dumps(buf.to_state()))
    return {"snapshot_s": time.perf_counter() - t, "snapshot_mb": len(blob) / 1e6}


WORKER_CONFIG = """\
flags:
  ranker:
    default: control
    variants:
      control: {weight: 50, value: control}
      candidate: {weight: 50, value: candidate}
join:
  ttl: 7d
  max_pending: 100000000
"""


def worker_recovery(counts: list[int]) -> list[tuple[int, str, float, float, int]]:
    """``(pending, mode, recovery_seconds, wall to active, snapshot bytes)`` per run."""
    import asyncio

    from confluent_kafka import Producer

    from driftswitch.streams.contract.events import PredictionEvent
    from driftswitch.streams.contract.topics import Topics
    from driftswitch.streams.kafka import ensure_topics
    from driftswitch.streams.service.snapshot import HEADER_SNAPSHOT
    from driftswitch.streams.service.worker import state_topic
    from driftswitch.streams.tools.broker import EmbeddedBroker
    from driftswitch.streams.tools.testing import WorkerProcess, event_records, read_topic

    rows: list[tuple[int, str, float, float, int]] = []
    work = Path(tempfile.mkdtemp(prefix="driftswitch-scale-worker-"))
    config = work / "config.yaml"
    config.write_text(WORKER_CONFIG)
    try:
        with EmbeddedBroker() as broker:
            for n, (count, mode) in enumerate(
                (c, m) for c in counts for m in ("in memory", "--state-dir")
            ):
                topics = Topics.with_prefix(f"scale{n}", partitions=4)
                asyncio.run(ensure_topics(broker.bootstrap, [*topics.specs(), state_topic(topics)]))
                events = [
                    PredictionEvent(
                        request_id=rid(i),
                        flag="ranker",
                        variant="control" if i % 2 else "candidate",
                        ts=T0 + i / 1000,
                        prediction=i % 3 == 0,
                    )
                    for i in range(count)
                ]
                producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
                for topic, key, value in event_records(topics, events):
                    while True:
                        try:
                            producer.produce(topic, value, key)
                            break
                        except BufferError:
                            producer.poll(0.05)
                assert producer.flush(120) == 0
                del producer  # closed before the broker stops
                args = ["--log-level", "warning", "--stage", "single", "--snapshot-interval", "1"]
                if mode == "--state-dir":
                    args += ["--state-dir", str(work / f"state{n}")]
                log = work / f"worker{n}.log"
                with WorkerProcess(broker.bootstrap, topics, config, log, args=args) as first:
                    first.wait_for("all read", lambda s, n=count: s["records"] == n, 600)
                    time.sleep(3)  # past the next snapshot (one per second while input arrives)
                    first.proc.send_signal(signal.SIGKILL)
                    first.proc.wait()
                started = time.perf_counter()
                with WorkerProcess(broker.bootstrap, topics, config, log, args=args) as second:
                    second.wait_active(600)
                    status = second.health() or {}
                    recovery = float(status["state"]["recovery_seconds"])
                    # Then the replay of the input after the snapshot it resumed from.
                    second.wait_for(
                        "caught up",
                        lambda s, n=count: s["engine"]["join"]["pending_predictions"] == n,
                        600,
                    )
                    wall = time.perf_counter() - started
                    join = (second.health() or {})["engine"]["join"]
                    assert join["pending_predictions"] == count, join
                    assert join["duplicate_predictions"] == 0, join
                records = read_topic(broker.bootstrap, state_topic(topics).name)
                last = dict(records[-1].headers)[HEADER_SNAPSHOT]
                size = sum(
                    len(r.value) for r in records if dict(r.headers)[HEADER_SNAPSHOT] == last
                )
                rows.append((count, mode, recovery, wall, size))
                print(f"  {count:>10,} pending, {mode:<12}: recovery {recovery:6.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


# -- the join stage at 20M pending: a real `driftswitch run --stage join --state-dir` -------------


def vm_kb(pid: int, field: str) -> int:
    """A ``Vm*`` line of /proc/<pid>/status, in kB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def join_stage_scale(
    pending: int, labelled: int, producers: int, forget_member: bool = False
) -> dict[str, Any]:
    """Fill a join-stage process to ``pending`` waiting predictions, SIGKILL it while ``labelled``
    more predictions and the outcomes of as many early ones are being read, restart it, and
    measure (see the module doc)."""
    import asyncio
    import threading

    from driftswitch.streams.contract.topics import Topics
    from driftswitch.streams.kafka import ensure_topics
    from driftswitch.streams.service.startup import MEMBER_PREFIX, MEMBER_SUFFIX
    from driftswitch.streams.service.worker import state_topic
    from driftswitch.streams.tools.broker import EmbeddedBroker
    from driftswitch.streams.tools.delayedlabels import CONFIG, DelayedLabels, produce
    from driftswitch.streams.tools.testing import WorkerProcess

    workload = DelayedLabels(pending, labelled)
    work = Path(tempfile.mkdtemp(prefix="driftswitch-scale-join-"))
    config = work / "config.yaml"
    config.write_text(CONFIG)
    args = ["--stage", "join", "--state-dir", str(work / "state"), "--log-level", "warning"]
    args += ["--snapshot-interval", "1"]
    out: dict[str, Any] = {"pending": pending, "labelled": labelled}

    def pending_of(s: dict[str, Any]) -> int:
        return sum(s["pending"].values())

    def read_all(s: dict[str, Any]) -> bool:
        """Every record produced read: offsets are counts (no transactions)."""
        read = {t: sum(p.get(t, 0) for p in s["read"].values()) for t in names}
        return read == {names[0]: workload.predictions, names[1]: labelled}

    def background(start: int, stop: int) -> threading.Thread:
        thread = threading.Thread(
            target=produce, args=(broker.bootstrap, topics, workload, start, stop, producers)
        )
        thread.start()
        return thread

    try:
        with EmbeddedBroker() as broker:
            topics = Topics.with_prefix("scalejoin", partitions=4)
            names = (topics.predictions.name, topics.outcomes.name)
            asyncio.run(ensure_topics(broker.bootstrap, [*topics.specs(), state_topic(topics)]))
            broker_pid = broker.pid
            log = work / "join.log"
            first = WorkerProcess(broker.bootstrap, topics, config, log, args=args)
            try:
                first.wait_for("assigned", lambda s: len(s["partitions"]) == 4, 300)
                started = time.monotonic()
                thread = background(0, pending)
                # Samples once a second: (wall s, events, pending, checkpoints, last checkpoint s,
                # stage RSS MB, broker RSS MB).
                samples: list[tuple[float, int, int, int, float, float, float]] = []
                last_print = 0.0
                while True:
                    s = first.health()
                    if first.proc.poll() is not None:
                        raise SystemExit(f"join stage exited:\n{log.read_text()[-3000:]}")
                    if s is not None:
                        now = time.monotonic() - started
                        row = (
                            now,
                            int(s["events"]),
                            pending_of(s),
                            int(s["checkpoints"]),
                            float(s["checkpoint_seconds"]),
                            vm_kb(first.proc.pid, "VmRSS") / 1024,
                            vm_kb(broker_pid, "VmRSS") / 1024,
                        )
                        samples.append(row)
                        if now - last_print >= 60:
                            last_print = now
                            print(
                                f"  {now:6.0f} s: {row[1]:>11,} read, {row[2]:>11,} pending, "
                                f"last checkpoint {row[4]:.3f} s, RSS stage {row[5]:,.0f} MB, "
                                f"broker {row[6]:,.0f} MB, load {load_average()}",
                                flush=True,
                            )
                        if row[2] == pending and row[1] == pending:
                            break
                    time.sleep(1)
                thread.join()
                fill_s = samples[-1][0]
                # Past the next checkpoint of every partition.
                done = samples[-1][3]
                first.wait_for("checkpointed", lambda s: int(s["checkpoints"]) >= done + 4, 120)
                end = first.health() or {}
                out.update(
                    fill_s=fill_s,
                    fill_events_per_s=pending / fill_s,
                    store_bytes=int(end["store_bytes"]),
                    stage_peak_rss_mb=vm_kb(first.proc.pid, "VmHWM") / 1024,
                    broker_rss_mb=vm_kb(broker_pid, "VmRSS") / 1024,
                    join_entries_lost_first=int(end["join_entries_lost"]),
                )
                tenth = [r for r in samples if r[1] <= pending / 10 and r[3] > 0]
                last = [r for r in samples if r[1] >= pending * 9 / 10]

                def rate(rows: list[Any]) -> float:
                    if len(rows) < 2 or rows[-1][0] <= rows[0][0]:
                        return float("nan")
                    return float((rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0]))

                def mean(values: list[float]) -> float:
                    return sum(values) / len(values) if values else float("nan")

                out.update(
                    checkpoint_first_tenth_s=mean([r[4] for r in tenth]),
                    checkpoint_last_tenth_s=mean([r[4] for r in last]),
                    events_per_s_first_tenth=rate(tenth),
                    events_per_s_last_tenth=rate(last),
                    checkpoint_max_s=max(r[4] for r in samples),
                )
                # Then input the process never checkpoints: SIGKILL while it is being read.
                before = int(end["events"])
                thread = background(pending, pending + labelled)
                first.wait_for(
                    "part of the labels read",
                    lambda s: int(s["events"]) >= before + labelled // 2,
                    1800,
                )
                out["stage_peak_rss_mb"] = vm_kb(first.proc.pid, "VmHWM") / 1024
                first.proc.send_signal(signal.SIGKILL)
                first.proc.wait()
                killed_at = time.monotonic()
                killed_wall = time.time()
                # The stores as the SIGKILL left them, hard links (instant): opened alone after
                # the run, they show what replaying the write-ahead logs costs.
                wal_bytes = sum(f.stat().st_size for f in (work / "state").rglob("*.log"))
                subprocess.run(["cp", "-al", str(work / "state"), str(work / "killed")], check=True)
                records = list((work / "state").glob(f"*/{MEMBER_PREFIX}*{MEMBER_SUFFIX}"))
                out["member_record"] = bool(records) and not forget_member
                if forget_member:
                    for record in records:
                        record.unlink()
            finally:
                first.stop()
            spawned_wall = time.time()
            second = WorkerProcess(broker.bootstrap, topics, config, log, args=args)
            try:
                second.wait_for("recovered", lambda s: s["recovery_seconds"] is not None, 600)
                out["restart_to_assigned_s"] = time.monotonic() - killed_at
                s = second.health() or {}
                out["recovery_seconds"] = float(s["recovery_seconds"])
                second.wait_for("reading", lambda s: "reading" in s["startup_seconds"], 600)
                s = second.health() or {}
                out["spawn_s"] = spawned_wall - killed_wall
                out["startup_seconds"] = dict(s["startup_seconds"])
                thread.join()
                second.wait_for(
                    "caught up", lambda s: read_all(s) and pending_of(s) == pending, 3600
                )
                out["restart_to_caught_up_s"] = time.monotonic() - killed_at
                s = second.health() or {}
                out.update(
                    events_after_restart=int(s["events"]),
                    read_all=read_all(s),
                    pending_after=pending_of(s),
                    rejected_after=s["rejected"],
                    join_entries_lost=int(s["join_entries_lost"]),
                    recovery_peak_rss_mb=vm_kb(second.proc.pid, "VmHWM") / 1024,
                    broker_peak_rss_mb=vm_kb(broker_pid, "VmHWM") / 1024,
                )
            finally:
                second.stop()
            out.update(recovery_parts(broker.bootstrap, state_topic(topics).name, work / "killed"))
            out["wal_bytes"] = wal_bytes
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def recovery_parts(bootstrap: str, state: str, killed: Path) -> dict[str, Any]:
    """Two parts of the restart's ``recovery_seconds``, each timed alone once the run is over:
    reading the whole state topic (it grows with the run's history: one record per partition
    per checkpoint; the restarted process's included) and opening the stores as the SIGKILL left
    them (write-ahead log replay)."""
    import asyncio

    from driftswitch.streams.kafka.connect import read_partitions
    from driftswitch.streams.kafka.settings import KafkaSettings

    t0 = time.monotonic()
    read = asyncio.run(
        read_partitions(
            KafkaSettings(bootstrap=bootstrap), state, [0], max_partition_fetch_bytes=4 << 20
        )
    )
    read_s = time.monotonic() - t0
    records = next(iter(read.records.values()), [])
    opened = []
    for path in sorted(p for p in killed.glob("*/*") if p.is_dir()):
        t0 = time.monotonic()
        RocksJoinStore(path).close()
        opened.append(time.monotonic() - t0)
    return {
        "state_records": len(records),
        "state_bytes": sum(len(r.value or b"") for r in records),
        "state_read_s": read_s,
        "stores_opened": len(opened),
        "stores_open_s": sum(opened),
    }


#: What each step of a restarted join-stage process's ``/healthz`` ``startup_seconds`` ends.
RESTART_STEPS = {
    "main": "Python started, command line parsed",
    "imports": "the service's modules imported",
    "topics": "topics checked",
    "http": "HTTP listening",
    "producer": "producer connected",
    "join_sent": "JoinGroup sent",
    "subscribed": "dead member removed, JoinGroup out",
    "joined": "JoinGroup answered (the rebalance)",
    "synced": "SyncGroup answered (assignment)",
    "assigned": "rebalance callback entered",
    "restored": "state read, stores opened, sought",
    "reading": "input checked, partitions resumed",
}


def restart_steps(r: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows: each step of the restart, as seconds from the SIGKILL (and the step's own)."""
    removed = "removed" if r["member_record"] else "left to time out"
    rows = [
        (f"  the killed member: {removed}", ""),
        ("  SIGKILL to: process spawned", f"{r['spawn_s']:.2f}"),
    ]
    last = r["spawn_s"]
    for step, at in r["startup_seconds"].items():
        t = r["spawn_s"] + float(at)
        what = RESTART_STEPS.get(step, step)
        rows.append((f"    {step}: {what}"[:56], f"{t:.2f} (+{t - last:.2f})"))
        last = t
    return rows


def join_stage_report(r: dict[str, Any]) -> None:
    rows = [
        ("pending entries after the fill", f"{r['pending']:,}"),
        ("fill: wall s / events/s read", f"{r['fill_s']:.0f} / {r['fill_events_per_s']:,.0f}"),
        (
            "events/s read, first / last tenth",
            f"{r['events_per_s_first_tenth']:,.0f} / {r['events_per_s_last_tenth']:,.0f}",
        ),
        ("join stage peak RSS (VmHWM, MB)", f"{r['stage_peak_rss_mb']:,.0f}"),
        ("store size on disk (MB)", f"{r['store_bytes'] / 1e6:,.0f}"),
        (
            "checkpoint s (one per 1 s of input), first / last tenth",
            f"{r['checkpoint_first_tenth_s']:.3f} / {r['checkpoint_last_tenth_s']:.3f}",
        ),
        ("checkpoint s, max", f"{r['checkpoint_max_s']:.3f}"),
        ("after SIGKILL: /healthz recovery_seconds", f"{r['recovery_seconds']:.2f}"),
        (
            "  of which, timed alone: state topic read (records, MB)",
            f"{r['state_read_s']:.2f} ({r['state_records']:,}, {r['state_bytes'] / 1e6:,.1f})",
        ),
        (
            "  and: opening the SIGKILLed stores (stores, WAL MB)",
            f"{r['stores_open_s']:.2f} ({r['stores_opened']}, {r['wal_bytes'] / 1e6:,.1f})",
        ),
        ("after SIGKILL: restart to partitions restored (s)", f"{r['restart_to_assigned_s']:.1f}"),
        *restart_steps(r),
        ("after SIGKILL: restart to caught up (s)", f"{r['restart_to_caught_up_s']:.1f}"),
        ("restarted process peak RSS (MB)", f"{r['recovery_peak_rss_mb']:,.0f}"),
        ("broker peak RSS (MB)", f"{r['broker_peak_rss_mb']:,.0f}"),
        (
            "after the restart: events read again or new / pending / lost",
            f"{r['events_after_restart']:,} / {r['pending_after']:,} / {r['join_entries_lost']}",
        ),
    ]
    for name, value in rows:
        print(f"{name:<56} {value:>22}")
    ok = (
        r["pending_after"] == r["pending"]
        and r["read_all"]
        and not r["rejected_after"]
        and r["join_entries_lost"] == 0
        and r["join_entries_lost_first"] == 0
    )
    print(f"{'load average (1, 5, 15 min) at the end':<56} {load_average():>22}")
    print(f"{'every label joined, nothing lost or duplicated':<56} {'yes' if ok else 'NO':>22}")
    if not ok:
        raise SystemExit(f"join stage run mismatch: {r}")


# -- processes per stage: CPU per event as the stages scale out --------------------------------


def peak_rss_of(pid: int) -> float:
    """VmHWM of ``pid`` in MB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def stage_flags(count: int) -> list[str]:
    """``count`` flag names, spread over the 4 observation partitions where possible."""
    from driftswitch.streams.contract.placement import observations_partition

    names: list[str] = []
    used: set[int] = set()
    i = 0
    while len(names) < count:
        name = f"model{i}"
        part = observations_partition(name, 4)
        if part not in used or len(used) == 4:
            names.append(name)
            used.add(part)
        i += 1
    return names


def stage_backlog(total: int, flags: int) -> tuple[str, list[Any], dict[str, Any]]:
    """The config, the events of ``flags`` simulated model services merged in event-time order
    (``total`` events in all, predictions and outcomes), and the counts the engine reaches on
    them in that order (per flag and variant: predictions, joined)."""
    import heapq

    from driftswitch.streams.config.model import parse_config
    from driftswitch.streams.contract.events import PredictionEvent
    from driftswitch.streams.pipeline.engine import Engine
    from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
    from driftswitch.streams.tools.testing import KILL_ON_ACCURACY

    label_fraction = 0.9
    requests = int(total / flags / (1 + label_fraction))
    scenarios = [
        Scenario(
            flag=name,
            requests=requests,
            change_at=requests // 2,
            rate=250.0,
            seed=100 + n,
            label_delay=3.0,
            label_fraction=label_fraction,
            variants=(
                VariantSpec("control", weight=70, accuracy=0.90),
                VariantSpec("candidate", weight=30, accuracy=0.90, accuracy_after=0.75),
            ),
        )
        for n, name in enumerate(stage_flags(flags))
    ]
    text = "flags:\n" + "".join(
        config_yaml(s, KILL_ON_ACCURACY).removeprefix("flags:\n") for s in scenarios
    )

    def key(e: Any) -> tuple[float, str, int]:
        return (e.ts, e.request_id, 0 if isinstance(e, PredictionEvent) else 1)

    def own_ids(s: Scenario) -> Iterator[Any]:  # simulate() numbers every flag's requests alike
        for e in simulate(s):
            yield e.model_copy(update={"request_id": f"{s.flag}-{e.request_id}"})

    events = list(heapq.merge(*(own_ids(s) for s in scenarios), key=key))
    engine = Engine(parse_config(text, "<scale config>"))
    for start in range(0, len(events), 1000):
        engine.process(events[start : start + 1000])
    return text, events, stage_counts(engine.snapshot())


def stage_counts(snapshot: Any) -> dict[str, Any]:
    return {
        f"{flag}/{v}": [s["predictions"], s["joined"]]
        for flag, f in snapshot["flags"].items()
        for v, s in f["variants"].items()
    }


def stage_records(events: list[Any], placement: str) -> list[tuple[int, bytes, bytes, int | None]]:
    """``(0 predictions | 1 outcomes, key, value, partition)`` per event, in event order.

    Predictions carry no partition: confluent-kafka's default partitioner (CRC-32) places them,
    which is their join partition. Outcomes go where ``placement`` says: ``murmur2`` (a Java or
    aiokafka producer's default: about 3 in 4 outside their join partition, so re-routed) or
    ``crc32`` (their join partition: nothing re-routed).
    """
    from driftswitch.streams.contract.events import PredictionEvent, encode
    from driftswitch.streams.contract.placement import join_partition
    from driftswitch.streams.kafka.groups import partition_for

    out: list[tuple[int, bytes, bytes, int | None]] = []
    for e in events:
        key = e.request_id.encode()
        if isinstance(e, PredictionEvent):
            out.append((0, key, encode(e), None))
        elif placement == "murmur2":
            out.append((1, key, encode(e), partition_for(key, 4)))
        else:
            out.append((1, key, encode(e), join_partition(e.request_id, 4)))
    return out


def produce_records(
    bootstrap: str, names: tuple[str, str], records: list[tuple[int, bytes, bytes, int | None]]
) -> None:
    """Produce ``records`` (:func:`stage_records`) in their order, with confluent-kafka."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for which, key, value, partition in records:
        while True:
            try:
                if partition is None:
                    producer.produce(names[which], value, key)
                else:
                    producer.produce(names[which], value, key, partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120) != 0:
        raise RuntimeError("records not delivered in 120 s")


#: Producer processes for a pre-produced backlog.
PRODUCERS = 2


def produce_in_parallel(
    bootstrap: str,
    names: tuple[str, str],
    records: list[tuple[int, bytes, bytes, int | None]],
    workers: int,
) -> None:
    """:func:`produce_records` split over ``workers`` forked processes by input partition, so
    each partition's records keep their order (predictions still placed by confluent-kafka's
    partitioner: their join partition)."""
    import multiprocessing

    from driftswitch.streams.contract.placement import join_partition

    def part(r: tuple[int, bytes, bytes, int | None]) -> int:
        return r[3] if r[3] is not None else join_partition(r[1].decode(), 4)

    shares = [[r for r in records if part(r) % workers == w] for w in range(workers)]
    fork = multiprocessing.get_context("fork")
    children = [
        fork.Process(target=produce_records, args=(bootstrap, names, share)) for share in shares
    ]
    for c in children:
        c.start()
    for c in children:
        c.join()
    if any(c.exitcode != 0 for c in children):
        raise RuntimeError(f"a producer failed: exit codes {[c.exitcode for c in children]}")


#: Runs of one (round, k) tried on fresh topics before the benchmark gives up: on a loaded machine
#: a starved decide process loses its lease now and then (session timeout 6 s).
ATTEMPTS = 6


class ProcessExitedError(RuntimeError):
    """A stage process exited during a run (e.g. a decide process expelled from its lease group
    after missing heartbeats on a starved machine), or the assignment changed: the run's CPU
    figures are incomplete or include a rebalance."""


def stage_run(
    bootstrap: str,
    work: Path,
    config: Path,
    k: int,
    name: str,
    records: list[tuple[int, bytes, bytes, int | None]],
    expected: dict[str, Any],
    idle_window: float,
    broker_pid: int,
    deciders: int | None = None,
    live: bool = False,
) -> dict[str, Any]:
    """One measurement: ``k`` join and ``k`` decide processes (``deciders`` if given) on fresh
    topics, assigned and idle; then the backlog is produced while they are stopped (SIGSTOP) and
    read from when they continue (SIGCONT) until the active decide process has counted every
    prediction and join. With ``live``, they are not stopped: the baseline is taken before the
    backlog is produced, and they read it as it comes."""
    import asyncio

    from driftswitch.streams.contract.topics import Topics
    from driftswitch.streams.kafka import ensure_topics
    from driftswitch.streams.service.worker import state_topic
    from driftswitch.streams.tools.testing import WorkerProcess

    topics = Topics.with_prefix(name, partitions=4, observation_partitions=4)
    asyncio.run(ensure_topics(bootstrap, [*topics.specs(), state_topic(topics)]))
    quiet = ["--log-level", "warning"]
    procs: dict[str, list[WorkerProcess]] = {"join": [], "decide": []}
    try:
        for i in range(max(k, deciders or k)):
            for role in ("decide", "join"):
                if i >= (k if role == "join" else deciders or k):
                    continue
                log = work / f"{name}-{role}{i}.log"
                procs[role].append(
                    WorkerProcess(bootstrap, topics, config, log, args=["--stage", role, *quiet])
                )
        everything = procs["join"] + procs["decide"]

        def settled() -> bool:
            parts = []
            for j in procs["join"]:
                status = j.health()
                if status is None:
                    return False
                parts.append(status["partitions"])
            roles = [(d.health() or {}).get("role") for d in procs["decide"]]
            return (
                sorted(p for o in parts for p in o) == [0, 1, 2, 3]
                and all(parts)
                and roles.count("active") == 1
            )

        deadline = time.monotonic() + 180
        stable = 0
        while stable < 3:  # the same assignment for 3 polls one second apart
            for w in everything:
                if w.proc.poll() is not None:
                    raise ProcessExitedError(f"{w.log} exited:\n{w.log.read_text()[-1500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the processes did not settle in 180 s")
            stable = stable + 1 if settled() else 0
            time.sleep(1.0)
        pids = [w.proc.pid for w in everything] + [broker_pid]
        started = {pid: cpu_seconds(pid) for pid in pids}
        time.sleep(idle_window)
        base = {pid: cpu_seconds(pid) for pid in pids}
        idle = {pid: (base[pid] - started[pid]) / idle_window for pid in base}
        active = next(d for d in procs["decide"] if (d.health() or {}).get("role") == "active")
        owned = [(j.health() or {}).get("partitions") for j in procs["join"]]

        load_before = load_average()
        if not live:
            for w in everything:
                w.proc.send_signal(signal.SIGSTOP)
        t0 = time.perf_counter()
        names = (topics.predictions.name, topics.outcomes.name)
        if live:
            produce_records(bootstrap, names, records)
        else:
            # Stopped processes miss their heartbeats: produce fast (the session timeout is 6 s).
            produce_in_parallel(bootstrap, names, records, PRODUCERS)
        produced = time.perf_counter() - t0
        if not live:
            # The backlog is there: count from here, every process at once.
            base = {pid: cpu_seconds(pid) for pid in pids}
            t0 = time.perf_counter()
            for w in everything:
                w.proc.send_signal(signal.SIGCONT)
        counts: Any = None
        buffered = 0  # the active decide process's merge, most observations buffered in a poll
        deadline = time.monotonic() + 1800
        while counts != expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not counted in 1800 s: {counts} != {expected}")
            for w in everything:
                if w.proc.poll() is not None:
                    raise ProcessExitedError(f"{w.log} exited:\n{w.log.read_text()[-1500:]}")
            time.sleep(0.25)
            status = active.health() or {}
            buffered = max(buffered, (status.get("merge") or {}).get("buffered", 0))
            engine = status.get("engine")
            counts = stage_counts(engine) if engine else None
        wall = time.perf_counter() - t0
        cpu = {pid: cpu_seconds(pid) - base[pid] for pid in pids}
        rss = {w.proc.pid: peak_rss_of(w.proc.pid) for w in everything}
        joins = [j.health() or {} for j in procs["join"]]
        decided = active.health() or {}
        load_after = load_average()
        if [j.get("partitions") for j in joins] != owned or (active.health() or {}).get(
            "role"
        ) != "active":
            # Stopped longer than the session timeout (a slow production), or a starved member:
            # the run's CPU includes a rebalance.
            raise ProcessExitedError(
                f"the assignment changed during the run: join partitions {owned} -> "
                f"{[j.get('partitions') for j in joins]}, or the active decide process changed"
            )
    finally:
        for ws in procs.values():
            for w in ws:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGCONT)
                w.stop()
    n = len(records)

    def stage(s: str) -> dict[str, Any]:
        pids = [w.proc.pid for w in procs[s]]
        return {
            "cpu_s": sum(cpu[p] for p in pids),
            "cpu_per_m": sum(cpu[p] for p in pids) / n * 1e6,
            "per_process_cpu_s": [round(cpu[p], 2) for p in pids],
            "idle_cpu_per_s": [round(idle[p], 4) for p in pids],
            "peak_rss_mb": [round(rss[p]) for p in pids],
        }

    return {
        "k": k,
        "events": n,
        "wall_s": wall,
        "produce_s": produced,
        "method": "live" if live else "pre-produced",
        "events_per_s": n / wall,
        "join": stage("join"),
        "decide": stage("decide"),
        "broker": {"cpu_per_m": cpu[broker_pid] / n * 1e6, "idle_cpu_per_s": idle[broker_pid]},
        "rerouted": sum(j.get("rerouted", 0) for j in joins),
        "join_records": sum(j.get("records", 0) for j in joins),
        "observations": sum(j.get("observations", 0) for j in joins),
        "join_batches": sum(j.get("batches", 0) for j in joins),
        "observation_records": sum(j.get("observation_records", 0) for j in joins),
        "markers": sum(j.get("markers", 0) for j in joins),
        "checkpoints": sum(j.get("checkpoints", 0) for j in joins),
        "decide_records": decided.get("records", 0),
        "decide_batches": decided.get("batches", 0),
        "decide_snapshots": decided.get("snapshots_written", 0),
        "decide_merge_max": buffered,
        "load": f"{load_before} -> {load_after}",
    }


def stages_benchmark(
    ks: list[int],
    total: int,
    flags: int,
    rounds: int,
    placements: list[str],
    idle_window: float,
    deciders: int | None = None,
    live: bool = False,
) -> None:
    """Print, per placement, one row per (round, k) and the min/median/max summary with the
    ratios of CPU per million events at k processes to 1 process, per stage."""
    import secrets

    from driftswitch.streams.tools.broker import EmbeddedBroker

    print(f"simulating {total:,} events of {flags} flags ...", flush=True)
    text, events, expected = stage_backlog(total, flags)
    work = Path(tempfile.mkdtemp(prefix="driftswitch-scale-stages-"))
    config = work / "config.yaml"
    config.write_text(text)
    tag = secrets.token_hex(2)
    try:
        with EmbeddedBroker() as broker:
            for placement in placements:
                records = stage_records(events, placement)
                print(
                    f"\n{'live' if live else 'pre-produced'} backlog, "
                    f"outcomes placed by {placement}; {len(records):,} events "
                    f"({sum(r[0] == 0 for r in records):,} predictions), {flags} flags, "
                    f"load average at start {load_average()}",
                    flush=True,
                )
                rows: list[dict[str, Any]] = []
                for r in range(rounds):
                    for k in ks:
                        for attempt in range(ATTEMPTS):
                            name = f"scale-{tag}-{placement}-r{r}-k{k}-a{attempt}"
                            try:
                                row = stage_run(
                                    broker.bootstrap,
                                    work,
                                    config,
                                    k,
                                    name,
                                    records,
                                    expected,
                                    idle_window,
                                    broker.pid,
                                    deciders,
                                    live,
                                )
                                break
                            except ProcessExitedError as err:
                                print(f"run discarded, retried on fresh topics: {err}", flush=True)
                        else:
                            raise SystemExit(f"k={k}: a process exited in {ATTEMPTS} attempts")
                        row["round"] = r
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                stage_table(rows, ks, placement)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def stage_table(rows: list[dict[str, Any]], ks: list[int], placement: str) -> None:
    import statistics

    def spread(values: list[float], fmt: str) -> str:
        if len(values) == 1:
            return format(values[0], fmt)
        lo, mid, hi = min(values), statistics.median(values), max(values)
        return f"{format(mid, fmt)} ({format(lo, fmt)}–{format(hi, fmt)})"

    print(f"\nprocesses per stage, outcomes placed by {placement} (median (min–max) of rounds):")
    head = ("k", "events/s", "wall s", "join CPU-s/M", "decide CPU-s/M", "broker CPU-s/M")
    print(f"{head[0]:>2} {head[1]:>22} {head[2]:>20} {head[3]:>22} {head[4]:>22} {head[5]:>22}")
    for k in ks:
        at = [r for r in rows if r["k"] == k]
        print(
            f"{k:>2} {spread([r['events_per_s'] for r in at], ',.0f'):>22} "
            f"{spread([r['wall_s'] for r in at], '.1f'):>20} "
            f"{spread([r['join']['cpu_per_m'] for r in at], '.1f'):>22} "
            f"{spread([r['decide']['cpu_per_m'] for r in at], '.1f'):>22} "
            f"{spread([r['broker']['cpu_per_m'] for r in at], '.1f'):>22}"
        )
    print(
        "idle cost: the stage's CPU-s per second while assigned and idle, summed over its\n"
        "processes, times the run's wall time, per million events (an upper bound of the fixed\n"
        "per-process overhead in the figures above: polling, heartbeats, timers):"
    )
    for k in ks:
        at = [r for r in rows if r["k"] == k]
        cost = {
            s: [sum(r[s]["idle_cpu_per_s"]) * r["wall_s"] / r["events"] * 1e6 for r in at]
            for s in ("join", "decide")
        }
        rate = {s: [sum(r[s]["idle_cpu_per_s"]) for r in at] for s in ("join", "decide")}
        print(
            f"  k={k} join {spread(cost['join'], '.1f')} CPU-s/M "
            f"(idle {spread(rate['join'], '.3f')} CPU-s/s), "
            f"decide {spread(cost['decide'], '.1f')} CPU-s/M "
            f"(idle {spread(rate['decide'], '.3f')} CPU-s/s)"
        )
    print("ratio of CPU-s per million events to k=1, per round (median (min–max)):")
    for k in ks[1:]:
        for s in ("join", "decide"):
            ratios = []
            for r in {row["round"] for row in rows}:
                one = [x for x in rows if x["round"] == r and x["k"] == ks[0]]
                at = [x for x in rows if x["round"] == r and x["k"] == k]
                if one and at:
                    ratios.append(at[0][s]["cpu_per_m"] / one[0][s]["cpu_per_m"])
            print(f"  k={k} {s:<6} {spread(ratios, '.3f')}")
    if len(rows) >= 3:
        print(
            "least-squares fit over the runs: join CPU-s = per-event cost x events\n"
            "+ per-process-second cost x (k x wall s)"
        )
        for s in ("join",):
            xs = [r["k"] * r["wall_s"] for r in rows]
            ys = [r[s]["cpu_s"] for r in rows]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            sxx = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
            per_m = (my - slope * mx) / rows[0]["events"] * 1e6
            print(f"  {per_m:.1f} CPU-s per million events + {slope:.3f} CPU-s per process-second")
    rss = {s: max(max(r[s]["peak_rss_mb"]) for r in rows) for s in ("join", "decide")}
    print(f"peak RSS per process (max over runs): join {rss['join']} MB, decide {rss['decide']} MB")


def child(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True, bufsize=1
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, default=20_000_000)
    parser.add_argument("--rate", type=int, default=50_000, help="events per second of input")
    parser.add_argument("--compare", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes (a disk)")
    parser.add_argument("--child", choices=["fill", "recover"], default=None)
    parser.add_argument(
        "--worker", default="", help="pending counts for the worker runs, e.g. 50000,300000"
    )
    parser.add_argument(
        "--stages",
        default="",
        help="processes per stage to measure, e.g. 1,2,3 (runs only this mode)",
    )
    parser.add_argument("--events", type=int, default=400_000, help="backlog for --stages")
    parser.add_argument("--flags", type=int, default=4, help="simulated flags for --stages")
    parser.add_argument("--rounds", type=int, default=1, help="repetitions for --stages")
    parser.add_argument(
        "--placement",
        default="murmur2,crc32",
        help="outcome placements for --stages: murmur2 (re-routed), crc32 (in place), or both",
    )
    parser.add_argument(
        "--idle-window",
        type=float,
        default=5.0,
        help="seconds the --stages processes sit idle before the backlog (idle CPU rate)",
    )
    parser.add_argument(
        "--decide-processes",
        type=int,
        default=None,
        help="decide processes per --stages run (default: k; 1 measures the join stage without "
        "the decide standbys' lease rebalances, which starve on a loaded machine)",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="--stages: produce the backlog while the processes run and count from before it "
        "(the earlier method), instead of stopping them while it is produced",
    )
    parser.add_argument(
        "--join-stage",
        type=int,
        default=0,
        help="pending entries for a real join-stage process, e.g. 20000000 (runs only this mode)",
    )
    parser.add_argument(
        "--labelled", type=int, default=200_000, help="labels after the fill (--join-stage)"
    )
    parser.add_argument(
        "--producers", type=int, default=2, help="producer processes (--join-stage)"
    )
    parser.add_argument(
        "--forget-member",
        action="store_true",
        help="--join-stage: delete the killed process's member record before the restart, so "
        "the group waits for its session to time out (the restart as it was without it)",
    )
    args = parser.parse_args()
    if args.join_stage:
        print(
            f"a join-stage process (--state-dir) filled to {args.join_stage:,} pending, "
            f"SIGKILLed while {args.labelled:,} labels arrive, restarted ..."
        )
        join_stage_report(
            join_stage_scale(args.join_stage, args.labelled, args.producers, args.forget_member)
        )
        return
    if args.stages:
        placements = args.placement.split(",")
        if set(placements) - {"murmur2", "crc32"}:
            parser.error("--placement takes murmur2, crc32 or both")
        ks = [int(k) for k in args.stages.split(",")]
        stages_benchmark(
            ks,
            args.events,
            args.flags,
            args.rounds,
            placements,
            args.idle_window,
            args.decide_processes,
            args.live,
        )
        return
    if args.child is not None:
        (fill if args.child == "fill" else recover)(args.dir, args.pending, args.rate)
        return
    if args.worker:
        print("the worker on the embedded broker: SIGKILL, restart, /healthz recovery_seconds")
        rows = worker_recovery([int(c) for c in args.worker.split(",")])
        head = ("pending", "join state", "recovery (s)", "restart to caught up (s)", "snapshot (B)")
        print(f"{head[0]:>12} {head[1]:<12} {head[2]:>13} {head[3]:>22} {head[4]:>19}")
        for count, mode, recovery, wall, size in rows:
            print(f"{count:>12,} {mode:<12} {recovery:>13.2f} {wall:>22.2f} {size:>19,}")
        if args.pending <= 0:
            return

    base = Path(tempfile.mkdtemp(prefix="driftswitch-scale-", dir=args.dir))
    path = base / "join"
    common = ["--dir", str(path), "--pending", str(args.pending), "--rate", str(args.rate)]
    try:
        print(f"filling {args.pending:,} pending entries at {args.rate:,} events/s of input ...")
        proc = child(["--child", "fill", *common])
        assert proc.stdout is not None
        filled = json.loads(proc.stdout.readline())
        for line in proc.stdout:  # wait until uncommitted input is in flight
            if json.loads(line)["uncommitted"] >= 20_000:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rec = child(["--child", "recover", *common])
        assert rec.stdout is not None
        recovered = json.loads(rec.stdout.readline())
        rec.wait()
        memory = in_memory_snapshot(args.compare)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"{'pending entries':<46} {args.pending:>14,}")
    print(f"{'fill: events/s into the store':<46} {filled['events_per_s']:>14,.0f}")
    print(f"{'peak RSS while filling (MB)':<46} {filled['peak_rss_mb']:>14,.0f}")
    print(f"{'store size on disk (MB)':<46} {filled['store_bytes'] / 1e6:>14,.0f}")
    print(f"{'checkpoints (one per second of input)':<46} {filled['checkpoints']:>14,}")
    first, last = filled["commit_first_tenth_s"], filled["commit_last_tenth_s"]
    print(f"{'checkpoint cost, first tenth (s per s input)':<46} {first:>14.3f}")
    print(f"{'checkpoint cost, last tenth (s per s input)':<46} {last:>14.3f}")
    mean, worst = filled["commit_mean_s"], filled["commit_max_s"]
    print(f"{'checkpoint cost, mean / max (s)':<46} {mean:>6.3f} / {worst:.3f}")
    print(f"{'recovery after SIGKILL: store open (s)':<46} {recovered['open_s']:>14.3f}")
    print(f"{'recovery: first batch joined (s)':<46} {recovered['recovered_s']:>14.3f}")
    print(f"{'peak RSS while recovering (MB)':<46} {recovered['peak_rss_mb']:>14,.0f}")
    ok = (
        recovered["checkpoint_upto"] == args.pending
        and recovered["pending_after"] == args.pending - args.rate
        and recovered["joined_first_batch"] == args.rate
        and not recovered["uncommitted_entry_found"]
    )
    print(f"{'recovered exactly the last checkpoint':<46} {'yes' if ok else 'NO':>14}")
    print(
        f"{'in-memory join, whole snapshot at':<34} {args.compare:>11,}: "
        f"{memory['snapshot_s']:.2f} s, {memory['snapshot_mb']:.0f} MB"
    )
    if not ok:
        raise SystemExit(f"recovery mismatch: {recovered}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
