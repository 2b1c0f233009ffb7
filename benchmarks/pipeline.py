"""End-to-end pipeline benchmark: one worker's events/s, the bare-consumer ceiling, reaction time.

Run: ``.venv/bin/python benchmarks/pipeline.py [--flags 40] [--requests 3000] [--rate 20000]``

On one embedded broker, with events from :mod:`driftswitch.streams.tools.simulate` (``--flags``
flags,
each a control and a candidate whose accuracy drops from 0.90 to 0.75 at a different request):

1. **Bare consumer** (the Python ceiling): an aiokafka consumer reads the backlog with
   ``getmany``, ``json.loads`` each record and counts it in a dict (the ceiling README
   "Architecture" compares against); and again with ``orjson.loads``, a higher ceiling.
2. **Worker throughput**: ``driftswitch run`` (a subprocess) consumes the same backlog; the rate
   is records over the time from its first to its last batch (``/healthz`` polled every 20 ms),
   so the lease and start-up are not counted.
3. **Reaction time** at sustained load: on fresh topics the same events are produced at
   ``--rate`` events/s while a worker runs. For every kill, reaction = time the flag change is
   read from the flags topic minus the time the broker acknowledged the input that caused it
   (the worker names it in the change's ``driftswitch.source`` header).

Prints one line per figure. Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from driftswitch.streams.contract.events import FlagChangeEvent, PredictionEvent, encode
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
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
    bootstrap: str, topics: Topics, config: Path, total: int, log: Path
) -> float:
    worker = start_worker(bootstrap, topics, config, log)
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flags", type=int, default=40)
    parser.add_argument("--requests", type=int, default=3000, help="requests per flag")
    parser.add_argument("--rate", type=float, default=20_000, help="sustained events/s")
    args = parser.parse_args()

    config_text, records = make_events(args.flags, args.requests)
    tmp = Path(tempfile.mkdtemp(prefix="driftswitch-bench-"))
    config = tmp / "config.yaml"
    config.write_text(config_text)
    size = statistics.mean(len(v) for _, _, v in records)
    print(f"events: {len(records):,} ({args.flags} flags, mean {size:.0f} bytes/record)")
    async with EmbeddedBroker() as broker:
        backlog = Topics.with_prefix("bench-a")
        await ensure_topics(broker.bootstrap, backlog)
        await produce(broker.bootstrap, backlog, records, None)
        bare_json = await bare_consumer(broker.bootstrap, backlog, len(records), json.loads)
        print(f"bare aiokafka getmany + json.loads + dict count: {bare_json:,.0f} records/s")
        bare = await bare_consumer(broker.bootstrap, backlog, len(records), orjson.loads)
        print(f"bare aiokafka getmany + orjson.loads + dict count: {bare:,.0f} records/s")
        rate = await worker_throughput(
            broker.bootstrap, backlog, config, len(records), tmp / "worker-a.log"
        )
        print(f"worker end to end (decode, join, score, detect, publish): {rate:,.0f} events/s")
        print(
            f"worker / bare consumer: {rate / bare_json:.0%} of the json.loads ceiling "
            f"(README's), {rate / bare:.0%} of the orjson one"
        )

        live = Topics.with_prefix("bench-b")
        await ensure_topics(broker.bootstrap, live)
        delays, achieved = await reaction(
            broker.bootstrap, live, config, records, args.rate, tmp / "worker-b.log"
        )
    if not delays:
        print("reaction: no kill observed")
        return
    delays.sort()
    p50 = delays[len(delays) // 2]
    p99 = delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))]
    print(
        f"reaction at {achieved:,.0f} events/s sustained ({len(delays)} kills): "
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
