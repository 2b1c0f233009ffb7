"""End-to-end pipeline benchmark: one worker's events/s, the bare-consumer ceilings, reaction time.

Run: ``.venv/bin/python benchmarks/pipeline.py [--flags 40] [--requests 3000] [--repeat 3]``
(``--help`` lists the other options)

On one embedded broker, with events from :mod:`driftswitch.streams.tools.simulate` (``--flags``
flags, each a control and a candidate whose accuracy drops from 0.90 to 0.75 at a different
request), ``--repeat`` rounds, each on a fresh backlog of the same events:

1. **Bare consumers** (the ceilings): aiokafka ``getmany`` + ``orjson.loads`` + a dict count, and
   confluent-kafka ``consume`` + ``orjson.loads`` + a dict count, over the backlog.
2. **Join stage alone**: the backlog's batches as aiokafka returned them, already in memory, through
   the worker's ``Ingest.decode`` and ``Engine.process`` (decode, join, score, detect): no Kafka.
   And what the join stage of ``--stage all`` does itself with the same batches
   (:func:`join_stage_own`): per partition, decode, join with the inputs' positions
   (``Joiner(track=True)``) and encode the observations as one batch record; the rest of the
   worker's time is Kafka, checkpoints and the decide stage.
3. **Full worker**: ``driftswitch run`` (a subprocess, with ``--worker-arg`` options such as
   ``--worker-arg=--stage=single``) is started on the same backlog and reads it from the start,
   as the bare consumers did. Its ``/healthz`` is polled every ``--poll`` s, and the rate is
   taken between the polls at which 10 % and 90 % of the input was decided
   (:func:`steady_rate`): start-up, the lease and the wait for the last watermarks at the end
   are outside that window. The worker answers a poll between batches, and each answer
   serialises the engine's view of every flag (a few ms). (Until 2026-11-30 the records were
   produced onto the running worker instead, and the rate ran to the end: the benchmark's
   producer shared the 2 cores with it, and the end's ``join.idle_after`` wait was counted.)

Then min / median / max of each and the worker's share of the aiokafka + orjson ceiling (per round,
then the median). ``--profile`` prints cProfile's top functions of the join stage; ``--py-spy``
samples the worker of round 1, or with ``--repeat 0`` of the first reaction run, from the moment
it is active (py-spy, from the ``dev`` extra).

4. **Reaction time** at ``--shares`` (default 50 % and 80 %) of the worker's median rate (or of
   ``--peak``): on fresh topics the same events are produced at that rate while a worker runs,
   each stamped with the time it is sent (:func:`restamp`: event time runs at the wall clock's
   speed, as in a live service).
   The producer is confluent-kafka (librdkafka batches and sends from its own threads), in a thread,
   paced in steps of about 1 ms of records, so the rate asked for is really offered; the rate
   reached is printed. It lingers librdkafka's default 5 ms (``--linger-ms``; 2 ms until 2026-11-30,
   when the embedded broker took most of a core for the input alone). For every kill, reaction = the
   time the flag change is read from the flags topic minus the time the broker acknowledged the
   input that caused it (the worker names it in the change's ``driftswitch.source`` header; the
   acknowledgement time is the record's create time plus librdkafka's produce-to-ack latency). The
   part of it spent before the worker sent the change (its create time, stamped by the worker's
   producer) is printed too, and the input's produce → broker acknowledgement latency (librdkafka's
   per-record figure), with the worker's mean records per batch, its snapshots and its largest lag
   (acknowledged minus processed records, sampled every second; ``--show-lag`` prints every sample),
   the lag's growth (:func:`lag_growth`), the observations the decide stage applied late, and the
   CPU that the broker, the worker and this process (the producer and the followers) used while the
   records were produced, in cores (:func:`cores`). ``--worker-arg`` passes options to ``driftswitch
   run`` (throughput and reaction runs), e.g. ``--worker-arg=--snapshot-interval=60``;
   ``--allowed-lateness`` sets the worker's ``join.allowed_lateness`` (default 0.5 s: a decision
   waits until every join partition has read events that much later, the floor of every reaction
   time). ``--bare-follower`` adds a control: a bare aiokafka consumer (the join stage's fetch wait)
   follows the same input, and its ack → consumed delay is printed for every record and for the
   kills' deciding records: what the broker alone takes to hand the same records to a consumer,
   beside the worker's reaction. ``--runs N`` makes N reaction runs per share and pools their kills
   as well: a run has 40 kills (one per flag), so its p99 is its slowest kill, and the pooled p99 of
   10 runs is the fifth slowest of 400. Each run also prints the input's disorder as the join
   stage counted it (``/healthz`` ``join_stage.disorder``: records behind the newest event time
   of their partition, the furthest, and those beyond ``join.allowed_lateness``).

5. **The highest sustained live rate** (``--search``): what "the maximum" of the reaction runs
   should be. The backlog rate of step 3 is not it: a live worker reads small batches and
   shares the 2 cores with the benchmark's producer as well as the broker. :func:`search` runs
   reaction runs of ``--seconds`` (15 s) each, from the backlog rate (or ``--peak``) doubling until
   one is not sustained, then ``--search-steps`` (3) bisections. A run is sustained when the
   worker's lag never exceeded ``--lag-limit`` (1 s) of input and did not grow (its slope over
   the run under :data:`LAG_GROWTH` seconds of input per second, :func:`lag_growth`): above the
   worker's capacity the lag grows by the excess rate for as long as the run lasts, so the
   limit alone let a 15 s run pass at up to 1/15 above capacity. The reaction runs at
   ``--shares`` then take their share of the rate found, and last as long as a search run.

Every live run (reaction and search) gets an embedded broker of its own, started for it: the
embedded broker keeps every record in memory and its fetches slow down as its log grows, so a
run on the broker that already held the earlier runs' millions of records measured them too
(acknowledgements up to 2.4 s at p99 in the last runs of a search).

Prints one line per figure, the machine's load average and, after each round, the machine's speed
on a fixed workload (``machine_speed`` in ``streams/tools/testing.py``), so that rounds and days
can be set side by side. Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import heapq
import math
import multiprocessing
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent, PredictionEvent, encode
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.kafka.connect import seek_to_start
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.ingest import Ingest
from driftswitch.streams.pipeline.merge import Batch, encode_batch
from driftswitch.streams.pipeline.observations import Joiner
from driftswitch.streams.service.joinstage import OUTCOMES, PREDICTIONS
from driftswitch.streams.service.worker import HEADER_SOURCE
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.procstat import cpu_seconds
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, simulate
from driftswitch.streams.tools.soak import slope
from driftswitch.streams.tools.testing import WorkerProcess, machine_speed

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


def restamp(
    records: list[tuple[bool, bytes, bytes]], rate: float, start: float
) -> list[tuple[bool, bytes, bytes]]:
    """The records with their event times moved so that, produced at ``rate`` records/s from
    ``start`` (wall clock, ``time.time()``; :func:`produce` with the same ``start`` paces record
    ``i`` to ``start + i / rate``), each is stamped when it is produced, as a live service stamps
    its predictions and outcomes: record ``i`` at ``start + i / rate``. A decision waits for
    event time (``join.allowed_lateness``, the watermarks), so event time must run at the wall
    clock's speed. An earlier version stretched the simulated times (100 requests per second
    per flag, whose density varies) linearly over the run: where predictions and outcomes
    overlap, event time ran slower than the wall clock, and decisions there waited up to 2 s
    longer. The next stamped from the moment the restamping began, and re-encoding 240,000
    records takes about 2.5 s: every record was stamped that much before it was sent (a
    uniform shift, which moves the watermarks with it and changes no reaction time, but each
    event's ``ts`` was not its send time). ``start`` must therefore lie after this function
    returns (:func:`start_after`). The order of the records and every count are unchanged (the
    records are in event-time order, so each outcome still follows its prediction)."""
    out = []
    for i, (is_pred, key, value) in enumerate(records):
        doc = orjson.loads(value)
        doc["ts"] = round(start + i / rate, 6)
        out.append((is_pred, key, orjson.dumps(doc)))
    return out


def start_after(records: int) -> float:
    """A wall-clock start for :func:`restamp` and :func:`produce` that leaves time to restamp
    ``records`` records first (about 10 µs each here; 25 µs allowed, plus half a second)."""
    return time.time() + 0.5 + 25e-6 * records


#: The paced producer's ``linger.ms``: librdkafka's default (and the driftswitch client's
#: ``linger_s``), what a model service's producer uses unless tuned. Until 2026-11-30 it was
#: 2 ms: 0.91-1.03 of a core for the embedded broker alone at 34,387 events/s, against
#: 0.53-0.83 at 5 ms (``benchmarks/broker_follow.py --rate 34387 --fetch-wait-ms 20``).
#: ``--linger-ms`` sets it for a run.
LINGER_MS = 5


def produce(
    bootstrap: str,
    topics: Topics,
    records: list[tuple[bool, bytes, bytes]],
    rate: float | None,
    acks: dict[tuple[str, int, int], float] | None = None,
    latencies: list[float] | None = None,
    start: float | None = None,
) -> tuple[dict[tuple[str, int, int], float], float]:
    """Produce the records, paced at ``rate``/s if given, with confluent-kafka (librdkafka batches
    and sends from its own threads, so the Python side only enqueues: this offers 80 % of a
    worker's rate even on a busy machine, where an aiokafka producer in the benchmark's event loop
    could not).

    Returns the broker's acknowledgement time of every record (wall clock, ``time.time()``: the
    record's create time plus librdkafka's measured produce-to-ack latency, so it does not depend
    on when the delivery callback happens to run; into ``acks`` if given, as they come) and the
    rate offered (records over the time from the first to the last ``produce`` call). With
    ``latencies``, each record's produce-to-ack latency (seconds) is appended to it. With
    ``start`` (wall clock, as given to :func:`restamp`), the first record is sent at ``start``
    and record ``i`` paced to ``start + i / rate``; a start already past is an error, since the
    records would then be stamped before they are sent.
    """
    from confluent_kafka import Producer

    if acks is None:
        acks = {}
    failed: list[str] = []

    def acked(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(str(err))
            return
        _, created_ms = msg.timestamp()
        acks[(msg.topic(), msg.partition(), msg.offset())] = created_ms / 1000 + msg.latency()
        if latencies is not None:
            latencies.append(msg.latency())

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": LINGER_MS,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_097_151,
            # librdkafka's default (CRC-32 of the key), which is where driftswitch's join stage
            # and client place a request id: with --stage all nothing is re-routed.
            "partitioner": "consistent_random",
        }
    )
    predictions, outcomes = topics.predictions.name, topics.outcomes.name
    # Paced: about 1 ms worth of records per step; unpaced: large steps.
    step = max(1, round(rate / 1000)) if rate is not None else 5_000
    send = producer.produce
    if start is not None:
        wait = start - time.time()
        if wait < 0:
            raise RuntimeError(f"the records were stamped to start {-wait:.2f} s ago")
        time.sleep(wait)
    started = time.monotonic()
    for i in range(0, len(records), step):
        for is_pred, key, value in records[i : i + step]:
            send(predictions if is_pred else outcomes, value, key, on_delivery=acked)
        producer.poll(0)
        if rate is not None:
            ahead = (i + step) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    offered = len(records) / (time.monotonic() - started)
    left = producer.flush(120)
    if left or failed:
        raise RuntimeError(f"{left} records not acknowledged, {len(failed)} failed: {failed[:3]}")
    return acks, offered


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
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    tps = _partitions(topics)
    consumer.assign(tps)
    seek_to_start(consumer, *tps)  # as the worker reads: from offset 0
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


def join_stage_own(config: Path, topics: Topics, batches: list[list[Any]]) -> float:
    """Events/s of what the worker's join stage does itself with the fetched batches, CPU time
    of this process (no Kafka): per partition, its predictions then its outcomes decoded
    (``Ingest.decode``), joined with their input positions by that partition's
    ``Joiner(track=True)``, and the observations encoded as one batch record
    (``encode_batch``). The records are split by partition before the clock starts (the
    consumer hands them out so). A best case: ``JoinStage._process_partition`` also checks
    event times against the clock (``reject_future``), counts the input's disorder, checks
    each record's join partition and keeps the batch for the decide stage."""
    loaded = load_config(config)
    ingest = Ingest(topics.predictions.name, topics.outcomes.name)
    predictions = topics.predictions.name
    split: list[list[tuple[int, list[Any], int]]] = []
    for batch in batches:
        parts: dict[int, tuple[list[Any], list[Any]]] = {}
        for rec in batch:
            parts.setdefault(rec.partition, ([], []))[rec.topic != predictions].append(rec)
        split.append([(p, [*preds, *outs], len(preds)) for p, (preds, outs) in parts.items()])
    joiners = {p: Joiner(loaded, track=True) for p in range(topics.predictions.partitions)}
    total = sum(len(b) for b in batches)
    started = time.process_time()
    for parts_of_batch in split:
        for p, own, n in parts_of_batch:
            decoded = ingest.decode(own)
            index = decoded.index
            cut = bisect_left(index, n)
            positions = [(PREDICTIONS, own[j].offset) for j in index[:cut]]
            positions += [(OUTCOMES, own[j].offset) for j in index[cut:]]
            observations, _ = joiners[p].process(decoded.events, positions)
            encode_batch(
                Batch(p, {PREDICTIONS: own[-1].offset + 1}, 0.0, False, observations, "run")
            )
    return total / (time.process_time() - started)


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
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as CTopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-confluent-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 16 * 1024 * 1024,
            "max.partition.fetch.bytes": 4 * 1024 * 1024,
        }
    )
    # From offset 0, as the worker reads (seek_to_start), not the start the broker names.
    consumer.assign([CTopicPartition(tp.topic, tp.partition, 0) for tp in _partitions(topics)])
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
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                obj = loads(value)
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
        auto_offset_reset="earliest",
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
    seek_to_start(consumer, *tps)  # as the worker reads: from offset 0
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


async def worker_throughput(
    bootstrap: str,
    topics: Topics,
    config: Path,
    total: int,
    log: Path,
    poll: float,
    worker_args: list[str],
    spy: Path | None = None,
) -> tuple[float, float]:
    """Records/s that ``driftswitch run`` sustains over the backlog the bare consumers read
    (``total`` records already on ``topics``), and records per CPU-second of its process over
    the same span (utime + stime).

    The worker starts on those topics and reads them from the start, as the bare consumers do.
    Its ``/healthz`` is polled every ``poll`` s from the moment it answers, and the rate is taken
    over the steady middle of the run: from the poll at which 10 % of the input was decided to the
    one at which 90 % was (:func:`steady_rate`). Start-up, the group join and the lease come
    before that window; the end, where the last observations wait ``join.idle_after`` for the
    input to fall idle before their watermark lets them through, after it. "Decided" is the
    decide stage's count of applied observations as a share of all the join stage emits (known
    at the end), with both stages in one process; the records read with ``--stage single``.
    Each poll costs the worker a few ms (the engine's view of every flag is serialised), which
    is why ``poll`` is not tiny."""
    worker = WorkerProcess(
        bootstrap,
        topics,
        config,
        log,
        args=["--log-level", "warning", *worker_args],
    )
    sampler = None
    # (monotonic time, CPU seconds of the worker, its status) per poll.
    polls: list[tuple[float, float, dict[str, Any]]] = []
    try:
        await wait_status(worker, lambda s: True, every=poll)
        sampler = sample(worker, spy)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.proc.returncode}: see {log}")
            status = await asyncio.to_thread(worker.health)
            if status is not None:
                polls.append((time.monotonic(), cpu_seconds(worker.proc.pid), status))
                if done(status, topics, total):
                    resets = status["input_resets"] + (status.get("join_stage") or {}).get(
                        "input_resets", 0
                    )
                    if resets:  # the backlog is never lost: a reset is a fault of the worker
                        raise RuntimeError(f"the worker reset {resets} input partitions: {log}")
                    join = status.get("join_stage")
                    if join is not None and join["observation_records"]:
                        sent = join["observation_records"]
                        local = join["observation_records_local"] / sent
                        acked = join.get("observation_records_acked", 0) / sent
                        print(
                            f"  observation records the decide stage took from memory: {local:.0%}"
                            f" ({acked:.0%} on their acknowledgement); records per batch: join"
                            f" stage {join['records'] / max(join['batches'], 1):,.0f}, decide"
                            f" stage {status['records'] / max(status['batches'], 1):,.1f}"
                            f" ({status['observations'] / max(status['batches'], 1):,.0f}"
                            " observations)"
                        )
                    return steady_rate(polls, topics, total)
            await asyncio.sleep(poll)
        raise RuntimeError(f"worker did not finish: see {log}")
    finally:
        worker.stop(timeout=20)
        if sampler is not None:
            sampler.wait(timeout=60)  # py-spy ends with the worker
            print_spy(spy)


def steady_rate(
    polls: list[tuple[float, float, dict[str, Any]]], topics: Topics, total: int
) -> tuple[float, float]:
    """Input records/s, and per CPU-second of the worker, between the polls at which 10 % and
    90 % of the work was done: with both stages, the share of the join stage's observations (the
    last poll's count: all of them) the decide stage had applied; with one stage, of the
    records read. Each end is the first poll at or past its mark, and the records counted are
    the share done between them times ``total``."""
    last = polls[-1][2]
    join = last.get("join_stage")

    def share(status: dict[str, Any]) -> float:
        if join is None:
            return processed(status, topics) / total
        return float(status.get("observations", 0)) / float(join["observations"])

    lo = next(p for p in polls if share(p[2]) >= 0.1)
    hi = next(p for p in polls if share(p[2]) >= 0.9)
    if hi is lo:
        raise RuntimeError("10 % to 90 % of the input within one poll: poll more often")
    records = (share(hi[2]) - share(lo[2])) * total
    return records / (hi[0] - lo[0]), records / (hi[1] - lo[1])


def sample(worker: WorkerProcess, spy: Path | None) -> subprocess.Popen[bytes] | None:
    """Start py-spy on the worker (collapsed stacks into ``spy``, until the worker ends), once it
    is active: start-up and imports are not what is measured."""
    if spy is None:
        return None
    pyspy = str(Path(sys.executable).with_name("py-spy"))
    argv = [pyspy, "record", "--pid", str(worker.proc.pid), "--format", "raw"]
    argv += ["--rate", "200", "--nonblocking", "--output", str(spy)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def follow_input(
    bootstrap: str, topics: Topics, wait_ms: int, consumed: dict[tuple[str, int, int], float]
) -> None:
    """A bare consumer following the input topics from their start (``wait_ms``: its fetch
    wait): when each record reached it, wall clock, into ``consumed`` (until cancelled)."""
    consumer = AIOKafkaConsumer(
        topics.predictions.name,
        topics.outcomes.name,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=wait_ms,
    )
    await consumer.start()
    try:
        while True:
            got = await consumer.getmany(timeout_ms=100, max_records=20_000)
            now = time.time()
            for tp, records in got.items():
                for rec in records:
                    consumed[(tp.topic, tp.partition, rec.offset)] = now
    finally:
        await consumer.stop()


def ready(status: dict[str, Any], partitions: int) -> bool:
    """The worker is active and, with both stages in one process, its join stage owns all
    ``partitions`` input partitions."""
    join = status.get("join_stage")
    owned = len(join["partitions"]) if join is not None else partitions
    return bool(status["role"] == "active" and owned == partitions)


def processed(status: dict[str, Any], topics: Topics) -> int:
    """Input records the process has consumed: the worker's (``--stage single``) or, with both
    stages in one process (``--stage all``), how far the join stage has read the input topics
    (its ``records`` also count re-routed records and markers)."""
    join = status.get("join_stage")
    if join is None:
        return int(status["records"])
    inputs = (topics.predictions.name, topics.outcomes.name)
    return sum(o for read in join["read"].values() for t, o in read.items() if t in inputs)


def done(status: dict[str, Any], topics: Topics, total: int) -> bool:
    """Every one of ``total`` input records is consumed and, with both stages, every observation
    the join stage emitted is applied by the decide stage."""
    join = status.get("join_stage")
    if processed(status, topics) < total:
        return False
    return join is None or status.get("observations", 0) >= join["observations"]


async def wait_status(
    worker: WorkerProcess, cond: Callable[[dict[str, Any]], bool], every: float = 0.1
) -> None:
    """Poll the worker's /healthz until ``cond`` holds (a child process: nothing to await)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}")
        status = await asyncio.to_thread(worker.health)
        if status is not None and cond(status):
            return
        await asyncio.sleep(every)
    raise RuntimeError("worker did not reach the expected state")


@dataclass
class Reaction:
    """One reaction run: delays of the kills, the rate offered, and what the worker did."""

    delays: list[float]
    #: Per kill, deciding event's ack → the flag change's create time (the worker's producer
    #: stamps it when the worker sends it): fetching, waiting for and processing batches.
    in_worker: list[float]
    offered: float
    #: Largest (records acknowledged - records processed) in the once-a-second samples.
    max_lag: int
    #: Those samples: (seconds since the first record was due, lag in records).
    lags: list[tuple[float, int]]
    #: Input records per batch (the join stage's, with both stages in one process), mean over
    #: the run.
    batch: float
    snapshots: int
    #: Observations the decide stage applied late (after its release had passed them).
    late: int
    #: CPU used while the records were produced, in cores (CPU-seconds per second), per process:
    #: ``broker``, ``worker`` and ``benchmark`` (this process: the producer and the followers).
    cpu: dict[str, float]
    #: The input's produce → broker acknowledgement latency, per record (seconds).
    input_acks: list[float]
    #: With a bare follower (``--bare-follower``): each input record's ack → consumed delay for
    #: a bare aiokafka consumer following the same topics (seconds), and the same at the kills'
    #: deciding records.
    bare: list[float] = field(default_factory=list)
    bare_at_kills: list[float] = field(default_factory=list)
    #: The join stage's ``/healthz`` ``disorder`` per input topic (how far behind the newest
    #: event time of its partition each record came); empty for ``--stage single``.
    disorder: dict[str, Any] = field(default_factory=dict)


async def reaction(
    bootstrap: str,
    topics: Topics,
    config: Path,
    records: list[tuple[bool, bytes, bytes]],
    rate: float,
    log: Path,
    worker_args: list[str],
    show_lag: bool = False,
    spy: Path | None = None,
    bare_follower: bool = False,
    *,
    broker_pid: int | None = None,
) -> Reaction:
    worker = WorkerProcess(
        bootstrap,
        topics,
        config,
        log,
        args=["--log-level", "warning", *worker_args],
    )
    changes: list[tuple[float, float, FlagChangeEvent, str]] = []
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
            event = FlagChangeEvent.model_validate_json(rec.value)
            changes.append((time.time(), rec.timestamp / 1000, event, source))

    task = asyncio.ensure_future(follow())
    consumed: dict[tuple[str, int, int], float] = {}
    tailing = None
    if bare_follower:  # the join stage's fetch wait
        tailing = asyncio.ensure_future(follow_input(bootstrap, topics, 100, consumed))
    max_lag = 0
    lags: list[tuple[float, int]] = []
    #: (wall time, CPU-seconds per process) at each sample once the records are due.
    used: list[tuple[float, dict[str, float]]] = []
    sampler = None
    try:
        await wait_status(worker, lambda s: ready(s, topics.predictions.partitions))
        sampler = sample(worker, spy)
        acked: dict[tuple[str, int, int], float] = {}
        latencies: list[float] = []
        start = start_after(len(records))
        stamped = restamp(records, rate, start)
        producing = asyncio.ensure_future(
            asyncio.to_thread(produce, bootstrap, topics, stamped, rate, acked, latencies, start)
        )
        # Progress once a second: /healthz serialises the engine's view of every flag (a few
        # ms of the worker's loop), so it is not polled often while the figure is taken.
        while not producing.done():
            await asyncio.wait({producing}, timeout=1.0)
            status = await asyncio.to_thread(worker.health)
            if status is not None:  # acknowledged by the broker, not yet processed
                lag = len(acked) - processed(status, topics)
                max_lag = max(max_lag, lag)
                lags.append((time.time() - start, lag))
                if show_lag:
                    print(f"    lag {lag:,} ({len(acked):,} acked)")
            if time.time() >= start:
                pids = {"worker": worker.proc.pid, "benchmark": os.getpid()}
                if broker_pid is not None:
                    pids["broker"] = broker_pid
                used.append((time.time(), {k: cpu_seconds(pid) for k, pid in pids.items()}))
        acks, offered = producing.result()
        await wait_status(worker, lambda s: done(s, topics, len(records)), every=0.5)
        await asyncio.sleep(0.5)
        status = worker.health() or {}
    finally:
        task.cancel()
        await follower.stop()
        if tailing is not None:
            tailing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tailing
        worker.stop(timeout=20)
        if sampler is not None:
            sampler.wait(timeout=60)
            print_spy(spy)
    delays, in_worker, bare_at_kills = [], [], []
    for read_at, created, change, source in changes:
        if change.cause.action.value != "kill" or not source:
            continue
        topic, partition, offset = source.rsplit("/", 2)
        key = (topic, int(partition), int(offset))
        acked_at = acks[key]
        delays.append(read_at - acked_at)
        in_worker.append(created - acked_at)
        if key in consumed:
            bare_at_kills.append(consumed[key] - acked_at)
    # With both stages in one process the top-level batches are the decide stage's, of
    # observation records: the input's records per batch are the join stage's.
    reader = status.get("join_stage", status)
    return Reaction(
        delays,
        in_worker,
        offered,
        max_lag,
        lags,
        reader.get("records", 0) / max(1, reader.get("batches", 1)),
        status.get("snapshots_written", 0),
        status.get("merge", {}).get("late", 0),
        cores(used),
        latencies,
        [consumed[k] - at for k, at in acks.items() if k in consumed],
        bare_at_kills,
        status.get("join_stage", {}).get("disorder", {}),
    )


async def live_reaction(topics: Topics, *args: Any) -> Reaction:
    """:func:`reaction` (with ``args`` after its bootstrap and topics) on an embedded broker
    started for this run alone (module doc)."""
    async with EmbeddedBroker() as fresh:
        await ensure_topics(fresh.bootstrap, topics)
        return await reaction(fresh.bootstrap, topics, *args, broker_pid=fresh.pid)


def cores(used: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Per process, the CPU-seconds per second between the first and the last of ``used``
    (``(wall time, CPU-seconds per process)``); empty with fewer than two samples."""
    if len(used) < 2 or used[-1][0] <= used[0][0]:
        return {}
    (t0, first), (t1, last) = used[0], used[-1]
    return {k: (last[k] - first[k]) / (t1 - t0) for k in first}


#: The first seconds of a live run's lag samples that :func:`lag_growth` leaves out: the worker's
#: first fetches and the producer's start.
LAG_WARMUP = 2.0
#: A live run is sustained only if its lag grew by less than this many seconds of input per
#: second of the run (:func:`lag_growth`): a worker 2 % short of the rate fails it.
LAG_GROWTH = 0.02


def lag_growth(lags: list[tuple[float, int]], rate: float) -> float:
    """How fast the lag grew over a live run, in seconds of input per second: the least-squares
    slope of ``lags`` (``(seconds into the run, records)``, the first :data:`LAG_WARMUP` seconds
    left out) divided by ``rate``; NaN with fewer than 3 samples.

    Below the worker's capacity the lag goes up and down with batches and pauses but does not
    trend; at a rate ``x`` above it, the lag grows by ``x / rate`` seconds of input per second
    for as long as the run lasts."""
    points = [(t, lag / rate) for t, lag in lags if t >= LAG_WARMUP]
    if len(points) < 3:
        return math.nan
    return slope([t for t, _ in points], [lag for _, lag in points])


@dataclass
class Probe:
    """One run of the rate search (:func:`search`): a reaction run at ``rate``."""

    rate: float
    run: Reaction
    #: The largest lag the worker may reach and still count as keeping up, records.
    lag_limit: float

    @property
    def offered_ok(self) -> bool:
        """The producer really offered the rate (within 3 %)."""
        return self.run.offered >= 0.97 * self.rate

    @property
    def growth(self) -> float:
        """The lag's growth over the run (:func:`lag_growth`)."""
        return lag_growth(self.run.lags, self.rate)

    @property
    def sustained(self) -> bool:
        """The worker kept up: its lag stayed within the limit all the run and did not grow
        (by less than :data:`LAG_GROWTH`; a lag that grows would pass the limit in a longer
        run). Without the growth test, a 15 s run ``x`` above capacity passes a 1 s limit
        for any ``x`` up to 1/15 of the rate."""
        return self.offered_ok and self.run.max_lag <= self.lag_limit and self.growth < LAG_GROWTH


async def search(
    config: Path,
    events: Callable[[int], list[tuple[bool, bytes, bytes]]],
    start: float,
    seconds: float,
    lag_seconds: float,
    steps: int,
    tmp: Path,
    worker_args: list[str],
) -> float:
    """The highest rate at which a live ``driftswitch run`` keeps up: reaction runs of
    ``seconds`` each (``events(n)``: a set of about ``n`` records), from
    ``start`` doubling until one is not sustained, then ``steps`` bisections between the
    highest sustained rate and the lowest one not sustained.

    A run is sustained when the worker's lag (records the broker acknowledged and the worker
    had not read yet, sampled every second) never exceeded ``lag_seconds`` seconds of input and
    did not grow (:func:`lag_growth` under :data:`LAG_GROWTH`): above its capacity the lag
    grows for as long as the run lasts (by the excess rate times the run's length), below it
    the lag stays at what a batch or two hold. (Until 2026-11-30 the limit alone decided, which
    let a 15 s run pass at up to 1/15 above capacity.) Runs shorter than about 5 s have too
    few samples to show a trend and are never sustained. A rate the producer could not offer
    ends the search upwards: what the worker can do above it is not measured.
    Returns the highest sustained rate (0 if none was)."""
    good, bad = 0.0, math.inf
    rate, k = start, 0
    while True:
        k += 1
        topics = Topics.with_prefix(f"bench-s{k}")
        records = events(math.ceil(rate * seconds))
        run = await live_reaction(
            topics, config, records, rate, tmp / f"worker-s{k}.log", worker_args
        )
        probe = Probe(rate, run, lag_seconds * rate)
        if probe.sustained:
            good, verdict = rate, "sustained"
        else:
            bad = rate
            verdict = "not sustained" if probe.offered_ok else "the producer fell short"
        d = run.delays or [math.nan]
        print(
            f"  search {k}: {rate:,.0f} events/s asked, {run.offered:,.0f} offered, "
            f"{len(records):,} records: max lag {run.max_lag:,} ({run.max_lag / rate:.2f} s of "
            f"input, growing {probe.growth:+.3f} s/s), reaction p50 "
            f"{percentile(d, 0.5) * 1000:.0f} ms, p99 "
            f"{percentile(d, 0.99) * 1000:.0f} ms ({len(run.delays)} kills): {verdict}; {load()}"
        )
        if math.isinf(bad):
            rate *= 2  # still growing
            continue
        if steps <= 0:
            break
        steps -= 1
        rate = (good + bad) / 2
    return good


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
    global LINGER_MS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flags", type=int, default=40)
    parser.add_argument(
        "--requests", type=int, default=12500, help="requests per flag (12,500: 1M events)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the join stage once")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="py-spy the worker in round 1 (--repeat 0: in the first reaction run)",
    )
    parser.add_argument(
        "--py-spy-out",
        type=Path,
        metavar="FILE",
        help="with --py-spy: write py-spy's raw collapsed stacks to FILE (kept after the run)",
    )
    parser.add_argument(
        "--poll", type=float, default=0.2, help="seconds between /healthz polls of the worker"
    )
    parser.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="extra `driftswitch run` argument (repeatable): --worker-arg=--snapshot-interval=5",
    )
    parser.add_argument(
        "--peak",
        type=float,
        help="the worker's maximum rate for the reaction runs (default: measured)",
    )
    parser.add_argument(
        "--shares",
        default="0.5,0.8",
        help='reaction runs at these fractions of the peak ("" for none)',
    )
    parser.add_argument(
        "--show-lag", action="store_true", help="print the worker's lag every second (reaction)"
    )
    parser.add_argument(
        "--bare-follower",
        action="store_true",
        help="reaction runs: a bare aiokafka consumer follows the input too (the broker's own "
        "ack → consumed delay for the same records, beside the worker's reaction)",
    )
    parser.add_argument(
        "--search",
        action="store_true",
        help="find the highest rate a live worker keeps up with (reaction runs, see search()); "
        "the reaction runs' shares are then of that rate",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="length of each search and reaction run (default: 15 s for search runs; reaction "
        "runs then last as long, and without a search send the whole event set)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="reaction runs per share, each on a broker and topics of its own; with more than "
        "one, their kills are pooled too (40 kills make a run's p99 its slowest kill)",
    )
    parser.add_argument(
        "--lag-limit",
        type=float,
        default=1.0,
        help="a search run is sustained if the worker's lag stays within this many seconds "
        "of input (and does not grow: LAG_GROWTH)",
    )
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=LINGER_MS,
        help=f"linger.ms of the paced producer (default {LINGER_MS}: librdkafka's)",
    )
    parser.add_argument("--search-steps", type=int, default=3, help="bisections once a rate fails")
    parser.add_argument(
        "--allowed-lateness",
        help="the worker's join.allowed_lateness (default: the config's default, 0.5 s), e.g. "
        "250ms: how long a decision waits for every join partition to pass its event time",
    )
    args = parser.parse_args()
    LINGER_MS = args.linger_ms

    config_text, records = make_events(args.flags, args.requests)
    if args.allowed_lateness:
        config_text += f"join:\n  allowed_lateness: {args.allowed_lateness}\n"
    tmp = Path(tempfile.mkdtemp(prefix="driftswitch-bench-"))
    config = tmp / "config.yaml"
    config.write_text(config_text)
    size = statistics.mean(len(v) for _, _, v in records)
    total = len(records)
    print(f"events: {total:,} ({args.flags} flags, mean {size:.0f} bytes/record); {load()}")
    print(f"machine: {machine_speed() / 1e6:.2f}M reference operations per CPU-second")
    figures: dict[str, list[float]] = {
        "bare aiokafka + orjson": [],
        "bare confluent-kafka + orjson": [],
        "join stage alone (decode, join, score, detect; CPU)": [],
        "the join stage's own work (decode, join, encode; CPU)": [],
        "full worker (driftswitch run)": [],
        "full worker, per CPU-second of its process": [],
    }
    shares: list[float] = []
    async with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        for r in range(args.repeat):
            backlog = Topics.with_prefix(f"bench-a{r}")
            await ensure_topics(bootstrap, backlog)
            await asyncio.to_thread(produce, bootstrap, backlog, records, None)
            bare = await bare_consumer(bootstrap, backlog, total, orjson.loads)
            confluent = await asyncio.to_thread(confluent_consumer, bootstrap, backlog, total)
            batches = await fetch_batches(bootstrap, backlog, total)
            stage = join_stage(config, backlog, batches, args.profile and r == 0)
            own = join_stage_own(config, backlog, batches)
            del batches
            spy = (args.py_spy_out or tmp / "worker.py-spy.txt") if args.py_spy and r == 0 else None
            rate, per_cpu = await worker_throughput(
                bootstrap,
                backlog,
                config,
                total,
                tmp / f"worker-a{r}.log",
                args.poll,
                args.worker_arg,
                spy,
            )
            measured = (bare, confluent, stage, own, rate, per_cpu)
            for name, value in zip(figures, measured, strict=True):
                figures[name].append(value)
            shares.append(rate / bare)
            print(
                f"round {r + 1}: aiokafka {bare:,.0f}, confluent {confluent:,.0f}, join stage "
                f"{stage:,.0f} (its own work {own:,.0f}), worker {rate:,.0f} events/s "
                f"({rate / bare:.0%}; {per_cpu:,.0f} per CPU-second of its process); {load()}; "
                f"machine {machine_speed() / 1e6:.2f}M"
            )
        if args.repeat:
            print("events/s, min / median / max of", args.repeat, "rounds:")
            for name, values in figures.items():
                print(f"  {name:<54} {spread(values)}")
            print(
                f"  worker / bare aiokafka + orjson, per round: "
                f"{' '.join(f'{s:.0%}' for s in shares)} (median {statistics.median(shares):.0%})"
            )
        peak = args.peak or statistics.median(figures["full worker (driftswitch run)"])

        def events(n: int) -> list[tuple[bool, bytes, bytes]]:
            """About ``n`` records: a set made for that many, with as many requests per flag as
            ``n`` needs. Not a prefix of a longer set: there the drifts sit at other points of
            the run, and a kill decided near its end waits for the input to fall idle
            (``join.idle_after``) before the watermark lets it through. Made anew for each run
            and not kept: a set of 600k records takes about 2.5 GB while it is made."""
            requests = math.ceil(args.requests * n / len(records))
            if requests == args.requests:
                return records
            # In a child process: what making them allocates stays there (kept in this
            # process, its peaks took the benchmark past 20 GB over a search).
            fork = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(1, mp_context=fork) as pool:
                return pool.submit(make_events, args.flags, requests).result()[1]

        if args.search:
            args.seconds = args.seconds or 15.0  # the reaction runs below last as long
            print(
                f"searching the highest sustained live rate from {peak:,.0f} events/s "
                f"({args.seconds:.0f} s runs; sustained: lag within {args.lag_limit} s of "
                f"input, growing by less than {LAG_GROWTH} s per s)"
            )
            found = await search(
                config,
                events,
                peak,
                args.seconds,
                args.lag_limit,
                args.search_steps,
                tmp,
                args.worker_arg,
            )
            print(f"highest sustained live rate: {found:,.0f} events/s")
            peak = found
        for share in (float(x) for x in args.shares.split(",") if x.strip()):
            pooled: list[float] = []
            maxima: list[float] = []
            for n in range(args.runs):
                live = Topics.with_prefix(f"bench-b{round(share * 100)}-{n}")
                run = await live_reaction(
                    live,
                    config,
                    # As long as --seconds (search runs), else the whole set.
                    events(math.ceil(share * peak * args.seconds)) if args.seconds else records,
                    share * peak,
                    tmp / f"worker-b{share}-{n}.log",
                    args.worker_arg,
                    args.show_lag,
                    # --py-spy samples the first reaction run's worker when no round ran.
                    (args.py_spy_out or tmp / "reaction.py-spy.txt")
                    if args.py_spy and not args.repeat and not n
                    else None,
                    args.bare_follower,
                )
                head = (
                    f"reaction at {share:.0%} of {peak:,.0f} events/s ({run.offered:,.0f} offered; "
                    f"worker: {run.batch:,.0f} records/batch, {run.snapshots} snapshots, max lag "
                    f"{run.max_lag:,}, growing {lag_growth(run.lags, share * peak):+.3f} s/s, "
                    f"{run.late:,} observations late; CPU in cores: "
                    f"{', '.join(f'{k} {v:.2f}' for k, v in sorted(run.cpu.items()))})"
                )
                if not run.delays:
                    print(f"{head}: no kill observed")
                    continue
                d = run.delays
                pooled += d
                maxima.append(max(d))
                print(
                    f"{head}, {len(d)} kills: p50 {percentile(d, 0.5) * 1000:.0f} ms, "
                    f"p99 {percentile(d, 0.99) * 1000:.0f} ms, max {max(d) * 1000:.0f} ms; {load()}"
                )
                w = run.in_worker
                print(
                    f"  of which ack → flag change sent by the worker: p50 "
                    f"{percentile(w, 0.5) * 1000:.0f} ms, p99 {percentile(w, 0.99) * 1000:.0f} ms"
                )
                a = run.input_acks
                print(
                    f"  the input's produce → broker ack: p50 {percentile(a, 0.5) * 1000:.1f} ms, "
                    f"p99 {percentile(a, 0.99) * 1000:.1f} ms"
                )
                if run.disorder:
                    got = run.disorder.values()
                    print(
                        f"  the input's disorder: {sum(d['behind'] for d in got):,} of "
                        f"{sum(d['records'] for d in got):,} records behind the newest event time"
                        f" of their partition, the furthest by "
                        f"{max(d['max_seconds'] for d in got) * 1000:.1f} ms, "
                        f"{sum(d['beyond_lateness'] for d in got):,} by more than "
                        "join.allowed_lateness"
                    )
                if run.bare:
                    b, k = run.bare, run.bare_at_kills or [math.nan]
                    print(
                        f"  a bare consumer following the same input, ack → consumed: every "
                        f"record p50 {percentile(b, 0.5) * 1000:.0f} ms, p99 "
                        f"{percentile(b, 0.99) * 1000:.0f} ms, p99.9 "
                        f"{percentile(b, 0.999) * 1000:.0f} ms, max {max(b) * 1000:.0f} ms; "
                        f"the kills' deciding records p50 "
                        f"{percentile(k, 0.5) * 1000:.0f} ms, max {max(k) * 1000:.0f} ms"
                    )
            if args.runs > 1 and pooled:
                print(
                    f"reaction at {share:.0%}, {args.runs} runs pooled ({len(pooled)} kills): "
                    f"p50 {percentile(pooled, 0.5) * 1000:.0f} ms, p99 "
                    f"{percentile(pooled, 0.99) * 1000:.0f} ms; slowest kill per run "
                    f"{', '.join(f'{m * 1000:.0f}' for m in maxima)} ms "
                    f"({sum(m < 1.0 for m in maxima)} of {len(maxima)} under 1 s)"
                )


if __name__ == "__main__":
    asyncio.run(main())
