"""Measure the Tansu behaviours driftswitch's pipeline depends on, and print them.

Run: ``.venv/bin/python benchmarks/tansu_behaviour.py``. Each section starts from a fresh
embedded broker state (unique topic and group names) and prints what it saw; nothing is
asserted here (``tests/integration/test_tansu_quirks.py`` pins what the code relies on).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from confluent_kafka import Consumer, Producer

from driftswitch.streams.contract.topics import TopicSpec
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.tools.broker import EmbeddedBroker


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def startup_and_stop(rounds: int = 5) -> None:
    ready: list[float] = []
    stop: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        broker = EmbeddedBroker().start()
        ready.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        broker.stop()
        stop.append(time.perf_counter() - t1)
    print(
        f"start until Metadata answered: median {statistics.median(ready) * 1000:.0f} ms, "
        f"max {max(ready) * 1000:.0f} ms; stop (no clients): median "
        f"{statistics.median(stop) * 1000:.0f} ms over {rounds} rounds"
    )


async def admin_facts(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [
            NewTopic("bh.compacted", 3, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic("bh.plain", 5, 1),
        ]
        first = await admin.create_topics(topics)
        again = await admin.create_topics(topics[:1])
        described = await admin.describe_topics(["bh.compacted", "bh.plain"])
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, "bh.compacted")]
        )
    finally:
        await admin.close()
    print("create_topics error codes:", [e[1] for e in first.topic_errors])
    print("create_topics on an existing topic:", [(e[1], e[2]) for e in again.topic_errors])
    print("partitions:", {t["topic"]: len(t["partitions"]) for t in described})
    print(
        "DescribeConfigs bh.compacted:",
        {e[0]: e[1] for e in configs[0].resources[0][4]},
    )


async def produce_batches(bootstrap: str, topic: str, sizes: list[int], key: bytes) -> list[int]:
    """Send one record batch per size to partition 0; return each batch's base offset."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    bases: list[int] = []
    try:
        for n, size in enumerate(sizes):
            batch = producer.create_batch()
            for i in range(size):
                appended = batch.append(key=key, value=f"{n}.{i}".encode(), timestamp=None)
                if appended is None:
                    raise RuntimeError(f"batch of {size} does not fit in one record batch")
            metadata = await (await producer.send_batch(batch, topic, partition=0))
            bases.append(metadata.offset)
    finally:
        await producer.stop()
    return bases


async def offsets_and_compaction(bootstrap: str) -> None:
    await ensure_topics(
        bootstrap,
        [
            TopicSpec(name="bh.offsets", partitions=1),
            TopicSpec(name="bh.compact2", partitions=1, config={"cleanup.policy": "compact"}),
        ],
    )
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition("bh.offsets", 0)
        sizes = [1, 5, 5, 1, 3]
        bases = await produce_batches(bootstrap, "bh.offsets", sizes, b"k")
        end = (await consumer.end_offsets([tp]))[tp]
        print(
            f"batches of {sizes} got base offsets {bases}; records {sum(sizes)}, "
            f"end_offsets() = {end} (true high watermark {sum(sizes)})"
        )
        await produce_batches(bootstrap, "bh.compact2", [1, 1, 1, 1], b"same-key")
        consumer.assign([TopicPartition("bh.compact2", 0)])
        await consumer.seek_to_beginning()
        got = await consumer.getmany(timeout_ms=1000)
        values = [m.value for ms in got.values() for m in ms]
        print(f"compacted topic, 4 records for one key: {len(values)} read back")
    finally:
        await consumer.stop()


async def idempotence(bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    try:
        await asyncio.wait_for(producer.start(), 10)
        await asyncio.wait_for(producer.send_and_wait("bh.offsets", b"x"), 10)
        print("idempotent producer: works")
    except Exception as err:
        print(f"idempotent producer: fails with {type(err).__name__}: {err}")
    finally:
        await producer.stop()


async def latency(bootstrap: str, fetch_max_wait_ms: int, n: int = 200) -> None:
    """Time from send() to the record coming out of an already-polling consumer's getmany."""
    topic = f"bh.latency-{fetch_max_wait_ms}"
    await ensure_topics(bootstrap, [TopicSpec(name=topic, partitions=1)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await producer.start()
    await consumer.start()
    sent: dict[bytes, float] = {}
    seen: list[float] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_end()

        async def read() -> None:
            while len(seen) < n:
                batches = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                seen.extend(now - sent[m.value] for ms in batches.values() for m in ms)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.2)
        for i in range(n):
            value = str(i).encode()
            sent[value] = time.perf_counter()
            await producer.send_and_wait(topic, value)
            await asyncio.sleep(0.005)
        await asyncio.wait_for(reader, 30)
    finally:
        await producer.stop()
        await consumer.stop()
    ms = [s * 1000 for s in seen]
    print(
        f"produce -> getmany latency, fetch_max_wait_ms={fetch_max_wait_ms}, {n} records: "
        f"p50 {pct(ms, 0.5):.1f} ms, "
        f"p99 {pct(ms, 0.99):.1f} ms, max {max(ms):.1f} ms"
    )


async def getmany_batching(bootstrap: str, n: int = 50_000) -> None:
    await ensure_topics(bootstrap, [TopicSpec(name="bh.batching", partitions=4)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    value = b"x" * 150
    try:
        for p in range(4):
            batch = producer.create_batch()
            for i in range(n // 4):
                if batch.append(key=str(i).encode(), value=value, timestamp=None) is None:
                    await producer.send_batch(batch, "bh.batching", partition=p)
                    batch = producer.create_batch()
                    batch.append(key=str(i).encode(), value=value, timestamp=None)
            await producer.send_batch(batch, "bh.batching", partition=p)
        await producer.flush()
    finally:
        await producer.stop()
    for max_records in (None, 1000):
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        sizes: list[int] = []
        try:
            consumer.assign([TopicPartition("bh.batching", p) for p in range(4)])
            t0 = time.perf_counter()
            while sum(sizes) < n:
                got = await consumer.getmany(timeout_ms=500, max_records=max_records)
                sizes.append(sum(len(ms) for ms in got.values()))
            elapsed = time.perf_counter() - t0
        finally:
            await consumer.stop()
        print(
            f"getmany(max_records={max_records}) over {n} records of 150 B: {len(sizes)} calls, "
            f"median {statistics.median(sizes):.0f} records/call, max {max(sizes)}, "
            f"{n / elapsed:,.0f} records/s"
        )


async def wait_assigned(consumer: AIOKafkaConsumer, want: int, timeout_s: float = 60) -> float:
    t0 = time.perf_counter()
    while len(consumer.assignment()) != want and time.perf_counter() - t0 < timeout_s:
        await consumer.getmany(timeout_ms=100)
    return time.perf_counter() - t0


async def consumer_groups(bootstrap: str) -> None:
    """Join, commit, rebalance to two members and back, resume from committed offsets."""
    topic, group = "bh.groups", "bh-group"
    await ensure_topics(bootstrap, [TopicSpec(name=topic, partitions=4)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    for i in range(400):
        await producer.send(topic, str(i).encode(), partition=i % 4)
    await producer.flush()
    await producer.stop()

    def member() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=500,
        )

    a = member()
    t0 = time.perf_counter()
    await a.start()
    await wait_assigned(a, 4)
    joined = time.perf_counter() - t0
    read = 0
    while read < 200:
        got = await a.getmany(timeout_ms=200, max_records=50)
        read += sum(len(ms) for ms in got.values())
    await a.commit()
    committed = {tp.partition: await a.committed(tp) for tp in sorted(a.assignment())}
    b = member()
    t0 = time.perf_counter()
    await b.start()
    while time.perf_counter() - t0 < 60 and not (a.assignment() and b.assignment()):
        await asyncio.gather(a.getmany(timeout_ms=100), b.getmany(timeout_ms=100))
    rebalance = time.perf_counter() - t0
    split = (
        sorted(tp.partition for tp in a.assignment()),
        sorted(tp.partition for tp in b.assignment()),
    )
    t1 = time.perf_counter()
    await b.stop()
    await wait_assigned(a, 4)
    back = time.perf_counter() - t1
    await a.stop()
    c = member()
    await c.start()
    await wait_assigned(c, 4)
    positions = {tp.partition: await c.position(tp) for tp in sorted(c.assignment())}
    await c.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        listed = await admin.list_consumer_group_offsets(group)
        by_partition = {tp.partition: o.offset for tp, o in listed.items()}
        admin_offsets = f"{by_partition}"
    except Exception as err:  # report, do not stop the other measurements
        admin_offsets = f"fails: {type(err).__name__}: {err}"
    finally:
        await admin.close()
    print(f"aiokafka group (session 10 s): first join {joined:.1f} s; read {read}, committed")
    print(f"  committed() after commit: {committed}")
    print(f"  second member joins: split {split} after {rebalance:.1f} s")
    print(f"  second member leaves: first has all 4 again after {back:.1f} s")
    print(f"  restarted member resumes at {positions}")
    print(f"  admin list_consumer_group_offsets: {admin_offsets}")


def rdkafka_group_join(bootstrap: str) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce("bh.rdkafka", b"x")
    p.flush(10)
    for session_ms in (45_000, 6_000, 3_000):
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bh-rd-{session_ms}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": min(3000, session_ms // 6),
            }
        )
        consumer.subscribe(["bh.rdkafka"])
        t0 = time.perf_counter()
        msg: Any = None
        while msg is None and time.perf_counter() - t0 < 60:
            msg = consumer.poll(0.1)
        print(
            f"librdkafka group consumer, session.timeout.ms={session_ms}: first record after "
            f"{time.perf_counter() - t0:.1f} s"
        )
        consumer.close()


async def auto_create(bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait("bh.never-created", b"x"), 10)
        print("produce to a topic never created: accepted (Tansu auto-creates topics)")
    except Exception as err:
        print(f"produce to a topic never created: {type(err).__name__}")
    finally:
        await producer.stop()


def main() -> None:
    startup_and_stop()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        asyncio.run(admin_facts(bootstrap))
        asyncio.run(offsets_and_compaction(bootstrap))
        asyncio.run(idempotence(bootstrap))
        asyncio.run(auto_create(bootstrap))
        for wait_ms in (500, 100, 20):
            asyncio.run(latency(bootstrap, wait_ms))
        asyncio.run(getmany_batching(bootstrap))
        asyncio.run(consumer_groups(bootstrap))
        rdkafka_group_join(bootstrap)


if __name__ == "__main__":
    main()
