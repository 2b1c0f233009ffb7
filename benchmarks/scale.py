"""Join state at scale: peak RSS, checkpoint cost and recovery time of the disk-backed join.

    .venv/bin/python benchmarks/scale.py [--pending 20000000] [--rate 50000] [--dir DIR]

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
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import orjson

from driftswitch.streams.pipeline.join import JoinBuffer, StoredJoinBuffer
from driftswitch.streams.service.joinstore import RocksJoinStore

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
    blob = zlib.compress(orjson.dumps(buf.to_state()), 1)
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
                args = ["--log-level", "warning", "--snapshot-interval", "1"]
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
    args = parser.parse_args()
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
