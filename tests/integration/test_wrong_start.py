"""A broker that names a wrong start for a partition: every reader that starts at the beginning
still reads every record.

The embedded broker once answered a ListOffsets "earliest" with 6,955 for a partition that held
records from offset 0, and a join stage that sought there skipped 6,955 records without a word
(``seek_to_start`` in ``streams/kafka/connect.py``). That answer could not be had on demand, so
a proxy in front of the embedded broker gives it: every "earliest" it passes on comes back
:data:`PAST` offsets later, past every record these tests write. A reader that trusts the
broker's start reads nothing (the first test shows the proxy telling that lie); one that reads
from offset 0 reads everything, and never asks.

Readers covered: ``read_partitions`` (the snapshots', checkpoints' and flags' restore), the
Python client's flags, and a worker of each kind that reads its inputs from the start: both
stages in one process, and the one-step worker; each restarted once, from its snapshots, and
once after the broker lost its input (the data-loss policy reads the new data from its start).
"""

from __future__ import annotations

import asyncio
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from aiokafka.protocol import offset as protocol

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent, PredictionEvent, encode
from driftswitch.streams.contract.topics import Topics, TopicSpec
from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.kafka.settings import as_settings
from driftswitch.streams.pipeline import backtest
from driftswitch.streams.service.worker import read_flags
from driftswitch.streams.tools.broker import EmbeddedBroker, free_port
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import (
    WorkerProcess,
    produce_in_event_order,
    recreate_inputs,
)

pytestmark = pytest.mark.broker

#: How far past the true start the proxy names a partition's start.
PAST = 1_000_000
LIST_OFFSETS = 2
EARLIEST = -2

SCENARIO = Scenario(
    requests=2_000,
    rate=100.0,
    seed=11,
    label_delay=2.0,
    variants=(VariantSpec("control", weight=60), VariantSpec("candidate", weight=40)),
)


async def _frame(reader: asyncio.StreamReader) -> bytes:
    """One Kafka frame's payload (after its 4-byte size)."""
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _earliest_asked(frame: bytes) -> set[tuple[str, int]] | None:
    """The partitions a ListOffsets request (v0-v3, aiokafka's) asks the start of; None for a
    version this proxy does not read."""
    _, version, _, client_len = struct.unpack_from(">hhih", frame)
    if not 0 <= version <= 3:
        return None
    body = BytesIO(frame[10 + max(client_len, 0) :])
    decoded = protocol.OffsetRequest_v0.SCHEMA.decode(body) if version == 0 else None
    if version == 1:
        decoded = protocol.OffsetRequest_v1.SCHEMA.decode(body)
    elif version >= 2:
        decoded = protocol.OffsetRequest_v2.SCHEMA.decode(body)
    assert decoded is not None
    return {
        (topic, part[0]) for topic, parts in decoded[-1] for part in parts if part[1] == EARLIEST
    }


def _named_later(frame: bytes, version: int, asked: set[tuple[str, int]]) -> tuple[bytes, int]:
    """The ListOffsets answer ``frame`` with each start ``asked`` for moved :data:`PAST` on, and
    how many were moved."""
    schema = (
        protocol.OffsetResponse_v0.SCHEMA
        if version == 0
        else protocol.OffsetResponse_v1.SCHEMA
        if version == 1
        else protocol.OffsetResponse_v2.SCHEMA
    )
    head, decoded = frame[:4], schema.decode(BytesIO(frame[4:]))
    moved = 0
    topics = []
    for topic, parts in decoded[-1]:
        answers = []
        for part in parts:
            if (topic, part[0]) in asked and part[1] == 0:
                if version == 0:
                    part = (*part[:2], [o + PAST for o in part[2]])
                else:
                    part = (*part[:3], part[3] + PAST)
                moved += 1
            answers.append(part)
        topics.append((topic, answers))
    return head + schema.encode((*decoded[:-1], topics)), moved


@dataclass
class WrongStartProxy:
    """A Kafka-protocol proxy to the broker on port ``target`` that answers every partition
    start asked through it (ListOffsets, timestamp -2) :data:`PAST` offsets too late; every
    other request and answer passes unchanged. ``lies`` counts the starts it moved;
    ``unread`` holds ListOffsets versions it passed on without reading."""

    target: int
    port: int = field(default_factory=free_port)
    lies: int = 0
    unread: set[int] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        serving = asyncio.start_server(self._client, "127.0.0.1", self.port)
        self._server = asyncio.run_coroutine_threadsafe(serving, self._loop).result(10)

    def stop(self) -> None:
        """Close the listener and every connection, then the loop."""

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        #: correlation id -> (ListOffsets version, partitions whose start it asks)
        asked: dict[int, tuple[int, set[tuple[str, int]]]] = {}

        async def requests() -> None:
            while True:
                frame = await _frame(reader)
                api_key, version, correlation = struct.unpack_from(">hhi", frame)
                if api_key == LIST_OFFSETS:
                    starts = _earliest_asked(frame)
                    if starts is None:
                        self.unread.add(version)
                    elif starts:
                        asked[correlation] = version, starts
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()

        async def answers() -> None:
            while True:
                frame = await _frame(up_reader)
                (correlation,) = struct.unpack_from(">i", frame)
                if correlation in asked:
                    frame, moved = _named_later(frame, *asked.pop(correlation))
                    self.lies += moved
                writer.write(struct.pack(">i", len(frame)) + frame)
                await writer.drain()

        tasks = [asyncio.ensure_future(t()) for t in (requests, answers)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            # A side that closed ends both (IncompleteReadError, a reset): nothing to report.
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            up_writer.close()


@dataclass(frozen=True)
class Lying:
    proxy: WrongStartProxy
    bootstrap: str  # the proxy's address, which the broker advertises


@pytest.fixture(scope="module")
def lying() -> Iterator[Lying]:
    """The embedded broker behind a :class:`WrongStartProxy` (which it advertises), checked to
    tell its lie before the tests use it and to have read every ListOffsets after them."""
    port = free_port()
    proxy = WrongStartProxy(target=port)
    proxy.start()
    address = f"127.0.0.1:{proxy.port}"
    try:
        with EmbeddedBroker(port=port, advertised=address):
            asyncio.run(_probe(address))
            yield Lying(proxy, address)
            assert proxy.unread == set()  # aiokafka asked in versions the proxy reads
    finally:
        proxy.stop()


async def _probe(bootstrap: str) -> None:
    """The proxy names a start :data:`PAST` the true one."""
    name = f"wrongstart-probe-{secrets.token_hex(3)}"
    await ensure_topics(bootstrap, [TopicSpec(name=name, partitions=1)])
    async with kafka.consuming(as_settings(bootstrap), enable_auto_commit=False) as consumer:
        tp = kafka.topic_partition(name, 0)
        assert await consumer.beginning_offsets([tp]) == {tp: PAST}


def new_topics(bootstrap: str) -> Topics:
    made = Topics.with_prefix(f"wrongstart-{secrets.token_hex(3)}", partitions=4)
    asyncio.run(ensure_topics(bootstrap, made))
    return made


async def _produce(bootstrap: str, topic: str, records: list[tuple[int, bytes]]) -> None:
    producer = await kafka.open_producer(as_settings(bootstrap))
    try:
        for partition, value in records:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await kafka.stop_quietly(producer)


def test_the_proxy_names_a_start_past_every_record(lying: Lying) -> None:
    """The fault is real: through the proxy the broker names a start past every record, and a
    reader that seeks there reads nothing; from offset 0 it reads everything."""
    name = f"wrongstart-{secrets.token_hex(3)}"
    asyncio.run(ensure_topics(lying.bootstrap, [TopicSpec(name=name, partitions=1)]))
    asyncio.run(_produce(lying.bootstrap, name, [(0, b"r%d" % i) for i in range(5)]))

    async def read(trusting: bool) -> tuple[int, list[int]]:
        async with kafka.consuming(
            as_settings(lying.bootstrap), enable_auto_commit=False, auto_offset_reset="earliest"
        ) as consumer:
            tp = kafka.topic_partition(name, 0)
            consumer.assign([tp])
            named = (await consumer.beginning_offsets([tp]))[tp]
            if trusting:
                await consumer.seek_to_beginning(tp)
            else:
                kafka.seek_to_start(consumer, tp)
            read = await kafka.read_to_end(consumer, [tp], idle_ms=100)
            return named, [r.offset for r in read[tp]]

    before = lying.proxy.lies
    assert asyncio.run(read(trusting=True)) == (PAST, [])
    assert asyncio.run(read(trusting=False)) == (PAST, [0, 1, 2, 3, 4])
    assert lying.proxy.lies - before >= 3  # the two beginning_offsets and seek_to_beginning


def flag_state(flag: str, version: int) -> FlagChangeEvent:
    return FlagChangeEvent.model_validate(
        {
            "flag": flag,
            "version": version,
            "variants": {
                "control": {"weight": 50, "value": "model-a"},
                "candidate": {"weight": 50, "value": "model-b"},
            },
            "default_variant": "control",
            "cause": {"kind": "config", "action": "init"},
            "ts": 1_767_225_600.0 + version,
            "actor": "driftswitch",
        }
    )


def test_partition_reads_and_the_client_read_every_record(lying: Lying) -> None:
    topics = new_topics(lying.bootstrap)
    # Partitions 0 and 1 of a 4-partition topic get records, 2 and 3 stay empty.
    topic = topics.predictions.name
    asyncio.run(_produce(lying.bootstrap, topic, [(i % 2, b"r%d" % i) for i in range(6)]))
    states = [flag_state(f"flag-{i}", 1) for i in range(6)]
    asyncio.run(_produce(lying.bootstrap, topics.flags.name, [(0, encode(s)) for s in states]))

    read = asyncio.run(kafka.read_partitions(as_settings(lying.bootstrap), topic))
    assert {tp.partition: [r.value for r in recs] for tp, recs in read.records.items()} == {
        0: [b"r0", b"r2", b"r4"],
        1: [b"r1", b"r3", b"r5"],
        2: [],
        3: [],
    }
    assert {tp.partition: o for tp, o in read.next_offsets.items()} == {0: 3, 1: 3, 2: 0, 3: 0}
    flags = asyncio.run(read_flags(lying.bootstrap, topics.flags.name))
    assert flags == {s.flag: s for s in states}

    client = DriftswitchClient(lying.bootstrap, topics=topics)
    try:
        assert client.start(wait_s=30.0)
        assert client.wait_bootstrapped(30.0)
        assert client.flag_states() == {s.flag: s for s in states}
    finally:
        client.close(timeout_s=2.0)


def _counts(engine: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {
        f"{flag}/{v}": (s["predictions"], s["joined"])
        for flag, f in engine["flags"].items()
        for v, s in f["variants"].items()
    }


def _wait(worker: WorkerProcess, what: str, done: Callable[[dict[str, Any]], bool]) -> None:
    """Until ``done(status)``; at most 75 s, so that three waits fit in a test's timeout."""
    deadline = time.monotonic() + 75
    status: Any = None
    while time.monotonic() < deadline:
        status = worker.health()
        if status is not None and status.get("engine") and done(status):
            return
        time.sleep(0.3)
    raise AssertionError(f"{what}: not in 75 s: {status}\n{worker.log.read_text()[-3000:]}")


def _read_to(status: dict[str, Any], stage: str, topics: Topics) -> dict[str, int]:
    """How far the worker has read each input topic, over its partitions."""
    if stage == "single":
        positions = [status["offsets"]]
    else:
        positions = [
            {t: {"": o} for t, o in read.items()} for read in status["join_stage"]["read"].values()
        ]
    return {
        name: sum(o for read in positions for o in read.get(name, {}).values())
        for name in (topics.predictions.name, topics.outcomes.name)
    }


@pytest.mark.parametrize("stage", ["all", "single"])
def test_a_worker_reads_its_inputs_and_snapshots_from_offset_zero(
    lying: Lying, tmp_path: Path, stage: str
) -> None:
    """Every prediction and outcome is counted once, and a restart resumes from the snapshots it
    wrote (counting nothing again), though every start the broker named was past the records."""
    topics = new_topics(lying.bootstrap)
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(SCENARIO, ""))
    events = list(simulate(SCENARIO))
    events_path = tmp_path / "events.jsonl"
    events_path.write_bytes(b"".join(encode(ev) + b"\n" for ev in events))
    expected = _counts(
        backtest.run(load_config(config_path), events_path, event_order=True).engine.snapshot()
    )
    predictions = sum(isinstance(ev, PredictionEvent) for ev in events)
    totals = {topics.predictions.name: predictions, topics.outcomes.name: len(events) - predictions}
    produce_in_event_order(lying.bootstrap, topics, events)
    args = ["--stage", stage, "--snapshot-interval", "0.3"]
    log = tmp_path / "worker.log"

    worker = WorkerProcess(lying.bootstrap, topics, config_path, log, args=args)
    try:
        worker.wait_active()
        _wait(worker, "every event counted", lambda s: _counts(s["engine"]) == expected)
    finally:
        worker.stop()

    again = WorkerProcess(lying.bootstrap, topics, config_path, log, args=args)
    try:
        again.wait_active()
        _wait(again, "every input read again", lambda s: _read_to(s, stage, topics) == totals)
        if stage == "all":
            ends = asyncio.run(
                kafka.read_partitions(as_settings(lying.bootstrap), topics.observations.name)
            ).next_offsets
            end = {str(tp.partition): o for tp, o in ends.items()}
            _wait(
                again,
                "every observation record read",
                lambda s: all(
                    s["offsets"][topics.observations.name].get(p, 0) >= o for p, o in end.items()
                ),
            )
        status = again.health()
        assert status is not None
        # Resumed from the snapshot it wrote, and counted nothing twice with everything read.
        assert status["resumed_from_snapshot"] is not None
        assert _counts(status["engine"]) == expected
        assert _resets(status) == 0  # nothing taken for lost data
    finally:
        again.stop()


def _resets(status: dict[str, Any]) -> int:
    """Input partitions the worker (and its join stage) found lost since it started."""
    join = status.get("join_stage") or {}
    return int(status["input_resets"]) + int(join.get("input_resets", 0))


def _predicted(status: dict[str, Any]) -> int:
    return sum(
        v["predictions"] for f in status["engine"]["flags"].values() for v in f["variants"].values()
    )


@pytest.mark.parametrize("stage", ["all", "single"])
def test_input_the_broker_lost_is_read_again_from_offset_zero(
    lying: Lying, tmp_path: Path, stage: str
) -> None:
    """The input topics deleted and created again while the worker was down: its positions are
    beyond the new data, and it reads the new data from its start, all of it."""
    topics = new_topics(lying.bootstrap)
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(SCENARIO, ""))
    events = list(simulate(SCENARIO))
    old, new = events[:2000], events[2000:2600]  # fewer new records than the old offsets
    predictions = [sum(isinstance(e, PredictionEvent) for e in part) for part in (old, new)]
    args = ["--stage", stage, "--snapshot-interval", "0.3"]
    log = tmp_path / "worker.log"
    produce_in_event_order(lying.bootstrap, topics, old)
    worker = WorkerProcess(lying.bootstrap, topics, config_path, log, args=args)
    try:
        worker.wait_active()
        _wait(worker, "the old data counted", lambda s: _predicted(s) == predictions[0])
    finally:
        worker.stop()

    asyncio.run(recreate_inputs(lying.bootstrap, topics))
    produce_in_event_order(lying.bootstrap, topics, new)
    again = WorkerProcess(lying.bootstrap, topics, config_path, log, args=args)
    try:
        again.wait_active()
        _wait(again, "the new data counted", lambda s: _predicted(s) == sum(predictions))
        status = again.health()
        assert status is not None
        # Both input topics' partitions that held old data (4 each) found lost, once.
        assert _resets(status) == 8
    finally:
        again.stop()
    assert "the topic was recreated or the broker lost its data" in log.read_text()
