"""Tansu behaviours driftswitch relies on or works around, pinned so a Tansu upgrade shows up.

Each test states the behaviour and what the project does about it; see the module docstring of
:mod:`driftswitch.streams.tools.broker` and ``benchmarks/tansu_behaviour.py`` for the figures.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from driftswitch.streams.contract.topics import TopicSpec
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.tools.broker import EmbeddedBroker


async def send_batches(bootstrap: str, topic: str, sizes: list[int], key: bytes) -> list[int]:
    """One record batch per size to partition 0; returns the base offset of each batch."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    bases = []
    try:
        for n, size in enumerate(sizes):
            batch = producer.create_batch()
            for i in range(size):
                assert batch.append(key=key, value=f"{n}.{i}".encode(), timestamp=None)
            bases.append((await (await producer.send_batch(batch, topic, partition=0))).offset)
    finally:
        await producer.stop()
    return bases


async def read_until_idle(bootstrap: str, tp: TopicPartition, idle_ms: int = 500) -> list[bytes]:
    """Read a partition from the start until a fetch returns nothing (not up to end_offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        while batch := (await consumer.getmany(tp, timeout_ms=idle_ms)).get(tp, []):
            values += [m.value for m in batch]
        return values
    finally:
        await consumer.stop()


def test_end_offset_is_last_batch_base_plus_one(broker: EmbeddedBroker) -> None:
    """Kafka reports one past the last record (15 here); Tansu the last batch's base + 1.

    So "read up to end_offsets()" stops short and lag looks smaller than it is: driftswitch
    reads until idle (bootstrapping flag state, the backtest) instead.
    """
    tp = TopicPartition("quirk.end-offset", 0)

    async def run() -> tuple[list[int], int, int]:
        await ensure_topics(broker.bootstrap, [TopicSpec(name=tp.topic, partitions=1)])
        bases = await send_batches(broker.bootstrap, tp.topic, [1, 5, 5, 1, 3], b"k")
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            end = (await consumer.end_offsets([tp]))[tp]
        finally:
            await consumer.stop()
        return bases, end, len(await read_until_idle(broker.bootstrap, tp))

    bases, end, read = asyncio.run(run())
    assert bases == [0, 1, 6, 11, 12]
    assert end == 13
    assert read == 15


def test_compacted_topic_keeps_every_record(broker: EmbeddedBroker) -> None:
    """``cleanup.policy=compact`` is accepted but never applied: readers keep the last per key."""
    tp = TopicPartition("quirk.compacted", 0)

    async def run() -> list[bytes]:
        spec = TopicSpec(name=tp.topic, partitions=1, config={"cleanup.policy": "compact"})
        await ensure_topics(broker.bootstrap, [spec])
        await send_batches(broker.bootstrap, tp.topic, [1, 1, 1, 1], b"flag-a")
        return await read_until_idle(broker.bootstrap, tp)

    assert asyncio.run(run()) == [b"0.0", b"1.0", b"2.0", b"3.0"]


def test_idempotent_producer_is_refused(broker: EmbeddedBroker) -> None:
    """InitProducerId fails: producers must keep ``enable_idempotence=False`` (no exactly-once)."""

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True)
        try:
            await producer.start()
            await producer.send_and_wait("quirk.idempotent", b"x")
        finally:
            await producer.stop()

    with pytest.raises(KafkaError, match="UnknownError"):
        asyncio.run(run())


def test_consumer_group_commits_resume_and_rebalance(broker: EmbeddedBroker) -> None:
    """Scale-out relies on groups: members split the partitions, a leaver's partitions return,
    and committed offsets survive a restart.

    Tansu finishes a join only after about half the session timeout, so consumers (and this
    test) use short session timeouts against the embedded broker.
    """
    topic, group = "quirk.groups", "quirk-group"

    def member() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=2000,
            heartbeat_interval_ms=200,
        )

    async def assigned(*members: AIOKafkaConsumer, total: int) -> list[set[int]]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            parts = [{tp.partition for tp in m.assignment()} for m in members]
            if sum(map(len, parts)) == total and all(parts):
                return parts
            await asyncio.gather(*(m.getmany(timeout_ms=100) for m in members))
        return [{tp.partition for tp in m.assignment()} for m in members]

    async def run() -> tuple[list[set[int]], list[set[int]], list[set[int]], dict[int, int]]:
        await ensure_topics(broker.bootstrap, [TopicSpec(name=topic, partitions=4)])
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        for i in range(40):
            await producer.send(topic, str(i).encode(), partition=i % 4)
        await producer.flush()
        await producer.stop()

        first = member()
        await first.start()
        alone = await assigned(first, total=4)
        read = 0
        while read < 40:
            batches = await first.getmany(timeout_ms=200)
            read += sum(len(ms) for ms in batches.values())
        await first.commit({TopicPartition(topic, p): 5 + p for p in range(4)})
        second = member()
        await second.start()
        together = await assigned(first, second, total=4)
        await second.stop()
        # Wait for the rebalance after a leave before the next member leaves: a member leaving
        # mid-rebalance leaves the group stuck in Tansu (no later member is assigned anything).
        back = await assigned(first, total=4)
        await first.stop()
        resumed = member()
        await resumed.start()
        await assigned(resumed, total=4)
        positions = {tp.partition: await resumed.position(tp) for tp in resumed.assignment()}
        await resumed.stop()
        return alone, together, back, positions

    alone, together, back, positions = asyncio.run(asyncio.wait_for(run(), 60))
    assert alone == back == [{0, 1, 2, 3}]
    assert len(together[0]) == len(together[1]) == 2
    assert together[0] | together[1] == {0, 1, 2, 3}
    assert positions == {0: 5, 1: 6, 2: 7, 3: 8}


def test_generations_count_from_zero_and_aiokafka_leaves_only_from_one(
    broker: EmbeddedBroker,
) -> None:
    """Tansu numbers a group's generations from 0 (Kafka from 1). aiokafka sends LeaveGroup on
    close only from a generation above 0, so a member stopping in generation 0 stays in the
    group until its session times out, holding its partitions. ``StageMember.stop``
    (``streams/kafka/groups.py``) sends the LeaveGroup itself then
    (tests/integration/test_groups.py checks that it leaves at once).
    """
    topic, group = "quirk.generation-zero", "quirk-generation-zero"

    def member() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=500,
        )

    async def members() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        (entry,) = described.groups
        return len(entry[-1])

    async def run() -> tuple[list[int], int, int]:
        await ensure_topics(broker.bootstrap, [TopicSpec(name=topic, partitions=2)])
        first, second = member(), member()
        await asyncio.gather(first.start(), second.start())
        deadline = time.monotonic() + 60
        while not (first.assignment() and second.assignment()) and time.monotonic() < deadline:
            await asyncio.gather(*(m.getmany(timeout_ms=100) for m in (first, second)))
        generations = [m._coordinator.generation for m in (first, second)]
        before = await members()
        await second.stop()
        after = await members()  # well within the 10 s session of the member that stopped
        await first.stop()
        return generations, before, after

    generations, before, after = asyncio.run(asyncio.wait_for(run(), 90))
    assert generations == [0, 0]
    assert before == 2
    assert after == 2
