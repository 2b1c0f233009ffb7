"""Soak benchmark: the RSS of ``driftswitch run`` (both stages, one process) over millions of
events at a steady pending count.

Run: ``.venv/bin/python benchmarks/soak.py [--events 10000000] [--pending 200000] [--csv FILE]``
(``--help`` lists the other options)

The workload (:class:`~driftswitch.streams.tools.soak.Soak`): ``--flags`` flags, each with a
control, a candidate and a challenger and three guardrails; predictions at ``--rate`` per second
of event time; the outcome of prediction ``j`` right after prediction ``j + pending``, so from
the first outcome on ``--pending`` predictions wait at once. The first flag's candidate drifts
halfway, so a kill happens mid-run.

On an embedded broker, one ``driftswitch run`` (``--stage all`` by default; ``--worker-arg``
passes options) is started on empty topics; once it owns every input partition, the records are
produced with confluent-kafka (librdkafka's default partitioner, CRC-32 of the key, where the
join stage places a request id), paced by the worker: the producer stays at most ``--backlog``
records ahead of what the worker has read (``/healthz``), so the broker never holds a backlog of
millions and the worker has records waiting. Every ``--every`` seconds the worker's RSS
(``/proc/<pid>/status`` VmRSS), the broker's RSS and the worker's ``/healthz`` (records read,
observations decided, join entries pending, the decide stage's merge buffer) are sampled.

Printed at the end:

- the worker's RSS when the pending count first reaches its steady value, at the start of the
  steady window (once the join's joined-id map is also full: ``ttl`` seconds of event time after
  the first outcome, :meth:`~driftswitch.streams.tools.soak.Soak.warmup`), at the end, and the
  maximum; the RSS at each million events read;
- the RSS slope over the steady window, and over each half of it, in MB per million events
  (least squares);
- events/s (the worker's read rate over the whole run and over the steady window);
- the pending count at the start of the steady window and at the end; the merge buffer's
  maximum; the broker's RSS at both ends.

``--csv FILE`` writes every sample as it is taken; ``--from-csv FILE`` prints the figures of such
a file again (give the same workload options). ``--tracemalloc DIR`` is for finding what
grows: the worker then runs with Python's ``tracemalloc`` (slower, more memory) and dumps a
snapshot into ``DIR`` every ``--tracemalloc-every`` seconds (a ``sitecustomize`` module put on
the worker's ``PYTHONPATH``; nothing in driftswitch changes), and the script prints the
allocation sites that grew most between the first snapshot of the steady window and the last.
Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.soak import Soak, slope
from driftswitch.streams.tools.testing import WorkerProcess

# --------------------------------------------------------------------------- measuring


def rss_mb(pid: int) -> float:
    """A process's resident set (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def read_records(status: dict[str, Any], topics: Topics) -> int:
    """Input records the process's join stage has read (``--stage single``: the worker's)."""
    join = status.get("join_stage")
    if join is None:
        return int(status["records"])
    inputs = (topics.predictions.name, topics.outcomes.name)
    return sum(o for read in join["read"].values() for t, o in read.items() if t in inputs)


def pending(status: dict[str, Any]) -> int:
    """Join entries waiting (predictions and outcomes, every owned partition)."""
    join = status.get("join_stage")
    if join is not None:
        return sum(int(v) for v in join["pending"].values())
    counters = status["engine"]["join"]
    return int(counters["pending_predictions"]) + int(counters["pending_outcomes"])


@dataclass
class Sample:
    seconds: float
    read: int
    produced: int
    decided: int
    pending: int
    merge: int
    rss_mb: float
    broker_rss_mb: float


#: The worker's ``sitecustomize`` with ``--tracemalloc``: trace from start-up, and dump a snapshot
#: every ``SOAK_TRACEMALLOC_EVERY`` seconds into ``SOAK_TRACEMALLOC_DIR`` from a daemon thread.
SITECUSTOMIZE = """\
import os, threading, time, tracemalloc

def _dump(directory, every):
    n = 0
    while True:
        time.sleep(every)
        n += 1
        snapshot = tracemalloc.take_snapshot()
        path = os.path.join(directory, f"snap-{n:04d}-{time.time():.0f}.tracemalloc")
        snapshot.dump(path + ".tmp")
        os.replace(path + ".tmp", path)

_dir = os.environ.get("SOAK_TRACEMALLOC_DIR")
if _dir:
    tracemalloc.start(int(os.environ.get("SOAK_TRACEMALLOC_FRAMES", "4")))
    threading.Thread(
        target=_dump, args=(_dir, float(os.environ["SOAK_TRACEMALLOC_EVERY"])), daemon=True
    ).start()
"""


def tracemalloc_env(directory: Path, every: float, frames: int) -> dict[str, str | None]:
    """The worker's environment for ``--tracemalloc``: :data:`SITECUSTOMIZE` on its path."""
    site = directory / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": path,
        "SOAK_TRACEMALLOC_DIR": str(directory),
        "SOAK_TRACEMALLOC_EVERY": repr(every),
        "SOAK_TRACEMALLOC_FRAMES": str(frames),
    }


def tracemalloc_report(directory: Path, after: float, top: int = 25) -> None:
    """The allocation sites (tracebacks) that grew most from the first snapshot dumped at or
    after wall time ``after`` (``time.time()``) to the last one."""
    import tracemalloc

    snaps = sorted(directory.glob("snap-*.tracemalloc"))
    stamped = [(float(p.stem.rsplit("-", 1)[1]), p) for p in snaps]
    steady = [p for t, p in stamped if t >= after] or [p for _, p in stamped]
    if len(steady) < 2:
        print(f"tracemalloc: {len(steady)} snapshot(s) in the steady window, nothing to compare")
        return
    first = tracemalloc.Snapshot.load(str(steady[0]))
    last = tracemalloc.Snapshot.load(str(steady[-1]))
    exclude = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen *>"),
    ]
    first, last = first.filter_traces(exclude), last.filter_traces(exclude)
    total = sum(s.size for s in last.statistics("filename")) - sum(
        s.size for s in first.statistics("filename")
    )
    print(
        f"tracemalloc: {steady[0].name} → {steady[-1].name}: traced memory "
        f"{total / 2**20:+.1f} MB; top growth by traceback:"
    )
    for stat in last.compare_to(first, "traceback")[:top]:
        print(
            f"  {stat.size_diff / 2**20:+8.2f} MB {stat.count_diff:+9,} blocks "
            f"(now {stat.size / 2**20:.1f} MB)"
        )
        for line in stat.traceback.format()[-8:]:
            print(f"      {line}")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


class Pacer:
    """The producer's side: sends the workload, never more than ``backlog`` records ahead of
    what the worker has read (``read``, set by the sampler)."""

    def __init__(self, bootstrap: str, topics: Topics, soak: Soak, backlog: int) -> None:
        self.bootstrap, self.topics, self.soak, self.backlog = bootstrap, topics, soak, backlog
        self.read = 0
        self.produced = 0
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:  # reported by the main loop
            self.error = err
        finally:
            self.finished.set()

    def _run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 20,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 500_000,
                # librdkafka's default partitioner (CRC-32 of the key), where driftswitch's join
                # stage places a request id: nothing is re-routed.
                "partitioner": "consistent_random",
            }
        )
        predictions, outcomes = self.topics.predictions.name, self.topics.outcomes.name
        send = producer.produce
        step = 5_000  # predictions per round (about twice as many records)
        for start in range(0, self.soak.predictions, step):
            while self.produced - self.read > self.backlog:
                if self.stopping.is_set():
                    return
                producer.poll(0.1)
            for is_prediction, key, value in self.soak.records(start, start + step):
                while True:
                    try:
                        send(predictions if is_prediction else outcomes, value, key)
                        break
                    except BufferError:
                        producer.poll(0.05)
                self.produced += 1
            producer.poll(0)
        if producer.flush(300) != 0:
            raise RuntimeError("records still unacknowledged after 300 s")


async def soak_run(args: argparse.Namespace) -> list[Sample]:
    soak = Soak.for_events(args.events, args.pending, args.flags, args.rate)
    tmp = Path(tempfile.mkdtemp(prefix="driftswitch-soak-"))
    config = tmp / "config.yaml"
    config.write_text(soak.config(args.ttl))
    load_config(config)  # fails here, not in the worker, on a bad config
    print(
        f"workload: {soak.events:,} events ({soak.predictions:,} predictions, {args.flags} flags "
        f"x 3 variants, 3 guardrails each), {args.pending:,} pending, {args.rate:g} "
        f"predictions/s of event time, join ttl {args.ttl:g} s; worker log {tmp}/worker.log; "
        f"{load()}"
    )
    samples: list[Sample] = []
    async with EmbeddedBroker() as broker:
        topics = Topics.with_prefix("soak")
        await ensure_topics(broker.bootstrap, topics)
        env = None
        if args.tracemalloc is not None:
            env = tracemalloc_env(args.tracemalloc, args.tracemalloc_every, args.tracemalloc_frames)
        worker = WorkerProcess(
            broker.bootstrap,
            topics,
            config,
            tmp / "worker.log",
            env=env,
            args=["--log-level", "warning", *args.worker_arg],
        )
        pacer: Pacer | None = None
        out = None
        try:
            deadline = time.monotonic() + 120
            while True:
                status = await asyncio.to_thread(worker.health)
                join = status.get("join_stage") if status else None
                owned = len(join["partitions"]) if join else topics.predictions.partitions
                if status and status["role"] == "active" and owned == topics.predictions.partitions:
                    break
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start: see {tmp}/worker.log")
                await asyncio.sleep(0.2)
            warmup = soak.warmup(args.ttl)
            steady_at: float | None = None
            out = args.csv.open("w", newline="") if args.csv is not None else None
            writer = csv.writer(out) if out is not None else None
            if writer is not None:
                writer.writerow(Sample.__dataclass_fields__)
            pacer = Pacer(broker.bootstrap, topics, soak, args.backlog)
            thread = threading.Thread(target=pacer.run, daemon=True)
            started = time.monotonic()
            thread.start()
            last_print = started
            while True:
                if worker.proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {worker.proc.returncode}: see {tmp}")
                if pacer.error is not None:
                    raise RuntimeError("producer failed") from pacer.error
                status = await asyncio.to_thread(worker.health)
                if status is not None:
                    read = read_records(status, topics)
                    pacer.read = read
                    join = status.get("join_stage")
                    decided = int(status.get("observations", 0))
                    sample = Sample(
                        seconds=time.monotonic() - started,
                        read=read,
                        produced=pacer.produced,
                        decided=decided,
                        pending=pending(status),
                        merge=int(status.get("merge", {}).get("buffered", 0)),
                        rss_mb=rss_mb(worker.proc.pid),
                        broker_rss_mb=rss_mb(broker.pid),
                    )
                    samples.append(sample)
                    if writer is not None and out is not None:
                        writer.writerow(vars(sample).values())
                        out.flush()
                    if steady_at is None and read >= warmup:
                        steady_at = time.time()
                    if time.monotonic() - last_print >= args.print_every:
                        last_print = time.monotonic()
                        print(
                            f"  {sample.seconds:6.0f} s: read {read:,} of {soak.events:,}, "
                            f"pending {sample.pending:,}, merge {sample.merge:,}, RSS "
                            f"{sample.rss_mb:.0f} MB (broker {sample.broker_rss_mb:.0f} MB); "
                            f"{load()}",
                            flush=True,
                        )
                    emitted = int(join["observations"]) if join is not None else decided
                    if pacer.finished.is_set() and read >= soak.events and decided >= emitted:
                        break
                await asyncio.sleep(args.every)
        finally:
            if pacer is not None:
                pacer.stopping.set()
            worker.stop(timeout=30)
            if out is not None:
                out.close()
    report(samples, soak, warmup)
    if args.tracemalloc is not None:
        tracemalloc_report(args.tracemalloc, steady_at if steady_at is not None else 0.0)
    return samples


def report(samples: list[Sample], soak: Soak, warmup: int) -> None:
    """Print the figures (module doc)."""
    end = samples[-1]
    first = next((s for s in samples if s.pending >= soak.pending * 0.98), None)
    steady = [s for s in samples if s.read >= warmup]
    print(f"events: {end.read:,} read in {end.seconds:.0f} s ({end.read / end.seconds:,.0f}/s)")
    if first is not None:
        print(
            f"RSS when pending first reached {soak.pending:,} (at {first.read:,} events): "
            f"{first.rss_mb:.0f} MB"
        )
    print(f"RSS at the end: {end.rss_mb:.0f} MB; max {max(s.rss_mb for s in samples):.0f} MB")
    if len(steady) >= 2:
        start = steady[0]
        per_m = slope([s.read / 1e6 for s in steady], [s.rss_mb for s in steady])
        rate = (end.read - start.read) / (end.seconds - start.seconds)
        print(
            f"steady window ({start.read:,} .. {end.read:,} events, {len(steady)} samples): RSS "
            f"{start.rss_mb:.0f} → {end.rss_mb:.0f} MB, slope {per_m:+.2f} MB per million "
            f"events, {rate:,.0f} events/s"
        )
        half = len(steady) // 2
        if half >= 2:
            halves = [steady[: half + 1], steady[half:]]
            fits = [slope([s.read / 1e6 for s in h], [s.rss_mb for s in h]) for h in halves]
            print(
                f"  slope over its first / second half: {fits[0]:+.2f} / {fits[1]:+.2f} MB per "
                f"million events (split at {steady[half].read:,})"
            )
        marks = []
        for m in range(1, end.read // 1_000_000 + 1):
            at = next((s for s in samples if s.read >= m * 1_000_000), None)
            if at is not None:
                marks.append(f"{m}M {at.rss_mb:.0f}")
        print(f"  RSS (MB) at each million events read: {', '.join(marks)}")
        print(f"pending at its start {start.pending:,}, at the end {end.pending:,}")
        print(
            f"broker RSS {start.broker_rss_mb:.0f} → {end.broker_rss_mb:.0f} MB; merge buffer "
            f"max {max(s.merge for s in steady):,}"
        )
    else:
        print(f"no steady window: fewer than 2 samples after {warmup:,} events")
    print(load())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--pending", type=int, default=200_000)
    parser.add_argument("--flags", type=int, default=20)
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="predictions per second of event time"
    )
    parser.add_argument("--ttl", type=float, default=400.0, help="the join's ttl, seconds")
    parser.add_argument(
        "--backlog", type=int, default=300_000, help="records produced ahead of the worker"
    )
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--print-every", type=float, default=60.0, help="seconds between lines")
    parser.add_argument("--csv", type=Path, help="write every sample here")
    parser.add_argument(
        "--tracemalloc", type=Path, help="trace the worker's allocations, snapshots in this dir"
    )
    parser.add_argument("--tracemalloc-every", type=float, default=60.0)
    parser.add_argument("--tracemalloc-frames", type=int, default=4)
    parser.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="extra `driftswitch run` argument (repeatable): --worker-arg=--stage=single",
    )
    parser.add_argument(
        "--from-csv",
        type=Path,
        help="print the figures of an earlier run's --csv samples (same workload options)",
    )
    args = parser.parse_args(argv)
    if args.from_csv is not None:
        with args.from_csv.open(newline="") as f:
            rows = list(csv.DictReader(f))
        samples = [
            Sample(
                seconds=float(r["seconds"]),
                read=int(r["read"]),
                produced=int(r["produced"]),
                decided=int(r["decided"]),
                pending=int(r["pending"]),
                merge=int(r["merge"]),
                rss_mb=float(r["rss_mb"]),
                broker_rss_mb=float(r["broker_rss_mb"]),
            )
            for r in rows
        ]
        soak = Soak.for_events(args.events, args.pending, args.flags, args.rate)
        report(samples, soak, soak.warmup(args.ttl))
        return
    if args.tracemalloc is not None:
        args.tracemalloc.mkdir(parents=True, exist_ok=True)
    asyncio.run(soak_run(args))
    if args.csv is not None:
        print(f"samples: {args.csv}", file=sys.stderr)


if __name__ == "__main__":
    main()
