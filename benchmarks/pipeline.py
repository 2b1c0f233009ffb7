"""End-to-end pipeline benchmark: one worker's events/s, the bare-consumer ceilings, reaction time.

Run: ``.venv/bin/python benchmarks/pipeline.py [--flags 40] [--requests 3000] [--repeat 3]``

On one embedded broker, with events from :mod:`driftswitch.streams.tools.simulate` (``--flags``
flags, each a control and a candidate whose accuracy drops from 0.90 to 0.75 at a different
request), ``--repeat`` rounds, each on a fresh backlog of the same events:

1. **Bare consumers** (the ceilings): aiokafka ``getmany`` + ``orjson.loads`` + a dict count, and
   confluent-kafka ``consume`` + ``orjson.loads`` + a dict count, over the backlog.
2. **Join stage alone**: the backlog's batches as aiokafka returned them, already in memory, through
   the worker's ``Ingest.decode`` and ``Engine.process`` (decode, join, score, detect): no Kafka.
3. **Full worker**: ``driftswitch run`` (a subprocess) consumes the backlog; the rate is records
   over the time from its first to its last batch (``/healthz`` polled every 20 ms), so the lease
   and start-up are not counted.

Then min / median / max of each and the worker's share of the aiokafka + orjson ceiling (per round,
then the median). ``--profile`` prints cProfile's top functions of the join stage.

4. **Reaction time** at 50 % and 80 % of the worker's median rate: on fresh topics the same events
   are produced at that rate while a worker runs. For every kill, reaction = time the flag change is
   read from the flags topic minus the time the broker acknowledged the input that caused it (the
   worker names it in the change's ``driftswitch.source`` header).

Prints one line per figure and the machine's load average. Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import heapq
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent, PredictionEvent, encode
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.ingest import Ingest
from driftswitch.streams.service.worker import HEADER_SOURCE
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, simulate
from driftswitch.streams.tools.testing import WorkerProcess

GUARDRAIL = """\
    guardrails:
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}
        min_samples: 200
        action: kill
"""


def _keyed(name: str, i: int, scenario: Scenario) -> Iterator[tuple[Any, ...]]:
    """The scenario's events as merge keys; request ids made unique across flags."""
    for e in simulate(scenario):
        yield (e.ts, i, isinstance(e, PredictionEvent), f"{name}/{e.request_id}", e)


def make_events(flags: int, requests: int) -> tuple[str, list[tuple[bool, bytes, bytes]]]:
    """Config text and ``(is_prediction, key, value)`` records merged in event-time order."""
    config = ["flags:"]
    streams = []
    for i in range(flags):
        name = f"model-{i:02d}"
        config += [
            f"  {name}:",
            "    default: control",
            "    variants:",
            "      control: {weight: 50, value: v1}",
            "      candidate: {weight: 50, value: v2}",
            GUARDRAIL.rstrip("\n"),
        ]
        scenario = Scenario(
            flag=name,
            requests=requests,
            change_at=requests // 3 + (i * requests) // (3 * flags),
            rate=100.0,
            seed=i,
            variants=(
                VariantSpec("control", weight=50, accuracy=0.90),
                VariantSpec("candidate", weight=50, accuracy=0.90, accuracy_after=0.75),
            ),
        )
        streams.append(_keyed(name, i, scenario))
    records = []
    for _, _, is_pred, key, event in heapq.merge(*streams, key=lambda t: (t[0], t[1])):
        value = encode(event.model_copy(update={"request_id": key}))
        records.append((is_pred, key.encode(), value))
    return "\n".join(config) + "\n", records


async def produce(
    bootstrap: str, topics: Topics, records: list[tuple[bool, bytes, bytes]], rate: float | None
) -> dict[tuple[str, int, int], float]:
    """Produce the records (paced at ``rate``/s if given); return ack time per record."""
    acks: dict[tuple[str, int, int], float] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, max_batch_size=262144)
    await producer.start()

    def acked(fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            meta = fut.result()
            acks[(meta.topic, meta.partition, meta.offset)] = time.monotonic()

    try:
        started = time.monotonic()
        step = 500
        for i in range(0, len(records), step):
            for is_pred, key, value in records[i : i + step]:
                topic = topics.predictions.name if is_pred else topics.outcomes.name
                fut = await producer.send(topic, value, key=key)
                fut.add_done_callback(acked)
            if rate is not None:
                ahead = (i + step) / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return acks


def _partitions(topics: Topics) -> list[TopicPartition]:
    return [
        TopicPartition(spec.name, p)
        for spec in (topics.predictions, topics.outcomes)
        for p in range(spec.partitions)
    ]


async def fetch_batches(bootstrap: str, topics: Topics, total: int) -> list[list[Any]]:
    """The backlog as aiokafka's ``getmany`` returns it: one list of records per call."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    tps = _partitions(topics)
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    batches: list[list[Any]] = []
    n = 0
    try:
        while n < total:
            got = await consumer.getmany(timeout_ms=500, max_records=20_000)
            batch = [rec for recs in got.values() for rec in recs]
            if batch:
                batches.append(batch)
                n += len(batch)
    finally:
        await consumer.stop()
    return batches


def join_stage(config: Path, topics: Topics, batches: list[list[Any]], profile: bool) -> float:
    """Events/s of the worker's in-process stage (decode, join, score, detect) on fetched
    batches, CPU time of this process (no Kafka, no I/O)."""
    ingest = Ingest(topics.predictions.name, topics.outcomes.name)
    engine = Engine(load_config(config))
    total = sum(len(b) for b in batches)

    def run() -> None:
        for batch in batches:
            engine.process(ingest.decode(batch).events)

    started = time.process_time()
    if profile:
        prof = cProfile.Profile()
        prof.runcall(run)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    else:
        run()
    return total / (time.process_time() - started)


def confluent_consumer(bootstrap: str, topics: Topics, total: int) -> float:
    """Records/s of confluent-kafka ``consume`` + ``orjson.loads`` + a dict count."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as CTopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-confluent-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 16 * 1024 * 1024,
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
        }
    )
    consumer.assign(
        [CTopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in _partitions(topics)]
    )
    counts: dict[str, int] = {}
    n = 0
    first: float | None = None
    loads = orjson.loads
    try:
        deadline = time.monotonic() + 600
        while n < total and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=20_000, timeout=0.5)
            if first is None and msgs:
                first = time.monotonic()
            for msg in msgs:
                if msg.error() is not None:
                    continue
                obj = loads(msg.value())
                counts[obj["request_id"][:8]] = counts.get(obj["request_id"][:8], 0) + 1
                n += 1
    finally:
        consumer.close()
    assert first is not None
    return n / (time.monotonic() - first)


async def bare_consumer(
    bootstrap: str, topics: Topics, total: int, loads: Callable[[bytes], Any]
) -> float:
    """Records/s of getmany + ``loads`` + a dict count over the backlog."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    tps = [
        TopicPartition(spec.name, p)
        for spec in (topics.predictions, topics.outcomes)
        for p in range(spec.partitions)
    ]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    counts: dict[str, int] = {}
    n = 0
    first: float | None = None
    try:
        while n < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            if first is None and batch:
                first = time.monotonic()
            for recs in batch.values():
                for rec in recs:
                    obj = loads(rec.value)
                    counts[obj["request_id"][:8]] = counts.get(obj["request_id"][:8], 0) + 1
                n += sum(len(r) for r in batch.values())
    finally:
        await consumer.stop()
    assert first is not None
    return n / (time.monotonic() - first)


def start_worker(bootstrap: str, topics: Topics, config: Path, log: Path) -> WorkerProcess:
    return WorkerProcess(bootstrap, topics, config, log, args=["--log-level", "warning"])


async def worker_throughput(
    bootstrap: str, topics: Topics, config: Path, total: int, log: Path, spy: Path | None = None
) -> float:
    worker = start_worker(bootstrap, topics, config, log)
    sampler = None
    if spy is not None:  # py-spy's collapsed stacks of the worker while it runs
        pyspy = str(Path(sys.executable).with_name("py-spy"))
        argv = [pyspy, "record", "--pid", str(worker.proc.pid), "--format", "raw"]
        argv += ["--rate", "200", "--nonblocking", "--output", str(spy)]
        sampler = subprocess.Popen(  # noqa: ASYNC220  (started once; nothing to await)
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    try:
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.proc.returncode}: see {log}")
            status = await asyncio.to_thread(worker.health)
            records = status["records"] if status else 0
            now = time.monotonic()
            if first is None and records > 0:
                first = (now, records)
            if records >= total and first is not None:
                if records == first[1]:  # all read between two polls: nothing was measured
                    raise RuntimeError("backlog read in one poll; use more --requests")
                return (records - first[1]) / (now - first[0])
            await asyncio.sleep(0.02)
        raise RuntimeError(f"worker did not finish: see {log}")
    finally:
        worker.stop(timeout=20)
        if sampler is not None:
            sampler.wait(timeout=60)  # py-spy ends with the worker
            print_spy(spy)


async def wait_status(worker: WorkerProcess, cond: Callable[[dict[str, Any]], bool]) -> None:
    """Poll the worker's /healthz until ``cond`` holds (a child process: nothing to await)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}")
        status = await asyncio.to_thread(worker.health)
        if status is not None and cond(status):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("worker did not reach the expected state")


async def reaction(
    bootstrap: str,
    topics: Topics,
    config: Path,
    records: list[tuple[bool, bytes, bytes]],
    rate: float,
    log: Path,
) -> tuple[list[float], float]:
    worker = start_worker(bootstrap, topics, config, log)
    changes: list[tuple[float, FlagChangeEvent, str]] = []
    follower = AIOKafkaConsumer(
        topics.flags.name,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await follower.start()

    async def follow() -> None:
        async for rec in follower:
            headers = dict(rec.headers or ())
            source = headers.get(HEADER_SOURCE, b"").decode()
            changes.append(
                (time.monotonic(), FlagChangeEvent.model_validate_json(rec.value), source)
            )

    task = asyncio.ensure_future(follow())
    try:
        await wait_status(worker, lambda s: s["role"] == "active")
        started = time.monotonic()
        acks = await produce(bootstrap, topics, records, rate)
        achieved = len(records) / (time.monotonic() - started)
        await wait_status(worker, lambda s: s["records"] >= len(records))
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await follower.stop()
        worker.stop(timeout=20)
    delays = []
    for read_at, change, source in changes:
        if change.cause.action.value != "kill" or not source:
            continue
        topic, partition, offset = source.rsplit("/", 2)
        delays.append(read_at - acks[(topic, int(partition), int(offset))])
    return delays, achieved


def print_spy(path: Path | None) -> None:
    """The functions where py-spy's samples of the worker were, by own time and with callees."""
    if path is None or not path.exists():
        print("py-spy: no samples")
        return
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] for f in stack.split(";")]
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    print(f"py-spy: {total} samples of the worker; top own time, then with callees:")
    for title, table in (("own", own), ("incl.", inclusive)):
        for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:15]:
            print(f"  {title:<5} {n / total:6.1%}  {frame}")


def spread(values: list[float]) -> str:
    """min / median / max."""
    v = sorted(values)
    return f"{v[0]:,.0f} / {statistics.median(v):,.0f} / {v[-1]:,.0f}"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flags", type=int, default=40)
    parser.add_argument("--requests", type=int, default=3000, help="requests per flag")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the join stage once")
    parser.add_argument(
        "--py-spy", action="store_true", help="sample the worker with py-spy in round 1"
    )
    args = parser.parse_args()

    config_text, records = make_events(args.flags, args.requests)
    tmp = Path(tempfile.mkdtemp(prefix="driftswitch-bench-"))
    config = tmp / "config.yaml"
    config.write_text(config_text)
    size = statistics.mean(len(v) for _, _, v in records)
    total = len(records)
    print(f"events: {total:,} ({args.flags} flags, mean {size:.0f} bytes/record); {load()}")
    figures: dict[str, list[float]] = {
        "bare aiokafka + orjson": [],
        "bare confluent-kafka + orjson": [],
        "join stage alone (decode, join, score, detect; CPU)": [],
        "full worker (driftswitch run)": [],
    }
    shares: list[float] = []
    async with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        for r in range(args.repeat):
            backlog = Topics.with_prefix(f"bench-a{r}")
            await ensure_topics(bootstrap, backlog)
            await produce(bootstrap, backlog, records, None)
            bare = await bare_consumer(bootstrap, backlog, total, orjson.loads)
            confluent = await asyncio.to_thread(confluent_consumer, bootstrap, backlog, total)
            batches = await fetch_batches(bootstrap, backlog, total)
            stage = join_stage(config, backlog, batches, args.profile and r == 0)
            del batches
            spy = tmp / "worker.py-spy.txt" if args.py_spy and r == 0 else None
            rate = await worker_throughput(
                bootstrap, backlog, config, total, tmp / f"worker-a{r}.log", spy
            )
            for name, value in zip(figures, (bare, confluent, stage, rate), strict=True):
                figures[name].append(value)
            shares.append(rate / bare)
            print(
                f"round {r + 1}: aiokafka {bare:,.0f}, confluent {confluent:,.0f}, join stage "
                f"{stage:,.0f}, worker {rate:,.0f} events/s ({rate / bare:.0%}); {load()}"
            )
        print("events/s, min / median / max of", args.repeat, "rounds:")
        for name, values in figures.items():
            print(f"  {name:<52} {spread(values)}")
        print(
            f"  worker / bare aiokafka + orjson, per round: "
            f"{' '.join(f'{s:.0%}' for s in shares)} (median {statistics.median(shares):.0%})"
        )
        peak = statistics.median(figures["full worker (driftswitch run)"])
        for share in (0.5, 0.8):
            live = Topics.with_prefix(f"bench-b{round(share * 100)}")
            await ensure_topics(bootstrap, live)
            delays, achieved = await reaction(
                bootstrap, live, config, records, share * peak, tmp / f"worker-b{share}.log"
            )
            if not delays:
                print(f"reaction at {share:.0%} of the worker's rate: no kill observed")
                continue
            print(
                f"reaction at {share:.0%} of the worker's rate ({achieved:,.0f} events/s "
                f"sustained, {len(delays)} kills): p50 {percentile(delays, 0.5) * 1000:.0f} ms, "
                f"p99 {percentile(delays, 0.99) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms; "
                f"{load()}"
            )


if __name__ == "__main__":
    asyncio.run(main())
