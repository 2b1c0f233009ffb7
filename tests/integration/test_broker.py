"""The embedded broker: real records through aiokafka and librdkafka, topics, and clean exits."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from confluent_kafka import Consumer, Producer

from driftswitch.streams.contract.topics import ROLES, TopicError, Topics, TopicSpec
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.kafka.connect import seek_to_start
from driftswitch.streams.tools.broker import BrokerError, EmbeddedBroker, free_port

# Every test here starts a Tansu broker (the session's or its own).
pytestmark = pytest.mark.broker

Record = tuple[bytes, bytes]


def make_records(seed: int, n: int) -> list[Record]:
    """``n`` (key, value) pairs over 7 keys, so several records share a partition and a key."""
    rng = random.Random(seed)
    return [
        (f"req-{rng.randrange(7)}".encode(), f"{i}:{rng.random():.6f}".encode()) for i in range(n)
    ]


def by_key(records: list[Record]) -> dict[bytes, list[bytes]]:
    """Values per key in order: Kafka keeps order per partition, hence per key."""
    grouped: dict[bytes, list[bytes]] = {}
    for key, value in records:
        grouped.setdefault(key, []).append(value)
    return grouped


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    await ensure_topics(bootstrap, [TopicSpec(name=name, partitions=partitions)])


async def aio_produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def aio_consume(
    bootstrap: str, topic: str, count: int, timeout_s: float = 20.0
) -> list[Record]:
    """Read ``count`` records from the start of every partition of ``topic`` (no group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        seek_to_start(consumer, *tps)  # not the broker's named start
        got: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                got += [(m.key, m.value) for m in messages]
        return got
    finally:
        await consumer.stop()


def rdkafka_produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    errors: list[str] = []

    def report(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for key, value in records:
        producer.produce(topic, value=value, key=key, on_delivery=report)
    assert producer.flush(20.0) == 0
    assert errors == []


def rdkafka_consume(bootstrap: str, topic: str, count: int, group: str) -> list[Record]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # Tansu completes a group join only after about half the session timeout (librdkafka's
            # default 45 s means a 23 s join); a short one keeps the test fast.
            "session.timeout.ms": 3000,
            "heartbeat.interval.ms": 500,
        }
    )
    try:
        consumer.subscribe([topic])
        got: list[Record] = []
        deadline = time.monotonic() + 30.0
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            key, value = msg.key(), msg.value()
            assert key is not None
            assert value is not None
            got.append((key, value))
        return got
    finally:
        consumer.close()


def test_aiokafka_round_trip(broker: EmbeddedBroker) -> None:
    records = make_records(seed=1, n=300)

    async def run() -> list[Record]:
        await create_topic(broker.bootstrap, "it.aiokafka", partitions=3)
        await aio_produce(broker.bootstrap, "it.aiokafka", records)
        return await aio_consume(broker.bootstrap, "it.aiokafka", len(records))

    got = asyncio.run(run())
    assert len(got) == len(records)
    assert by_key(got) == by_key(records)


def test_confluent_kafka_round_trip_and_interop(broker: EmbeddedBroker) -> None:
    """librdkafka produces for aiokafka and consumes (in a group) what aiokafka produced."""
    from_rdkafka = make_records(seed=2, n=200)
    from_aiokafka = make_records(seed=3, n=200)
    asyncio.run(create_topic(broker.bootstrap, "it.rdkafka-in", partitions=2))
    asyncio.run(create_topic(broker.bootstrap, "it.rdkafka-out", partitions=2))

    rdkafka_produce(broker.bootstrap, "it.rdkafka-in", from_rdkafka)
    read_by_aiokafka = asyncio.run(aio_consume(broker.bootstrap, "it.rdkafka-in", 200))
    asyncio.run(aio_produce(broker.bootstrap, "it.rdkafka-out", from_aiokafka))
    read_by_rdkafka = rdkafka_consume(broker.bootstrap, "it.rdkafka-out", 200, group="it-rd")

    assert by_key(read_by_aiokafka) == by_key(from_rdkafka)
    assert by_key(read_by_rdkafka) == by_key(from_aiokafka)
    assert len(read_by_aiokafka) == len(read_by_rdkafka) == 200


def test_ensure_topics_creates_driftswitch_topics_once(broker: EmbeddedBroker) -> None:
    topics = Topics.with_prefix("it-ensure", partitions=3)

    async def run() -> tuple[list[str], list[str], dict[str, int], dict[str, str | None]]:
        first = await ensure_topics(broker.bootstrap, topics)
        second = await ensure_topics(broker.bootstrap, topics)
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics([s.name for s in topics.specs()])
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topics.flags.name)]
            )
        finally:
            await admin.close()
        partitions = {t["topic"]: len(t["partitions"]) for t in described}
        entries = {e[0]: e[1] for e in configs[0].resources[0][4]}
        return first, second, partitions, entries

    first, second, partitions, flag_configs = asyncio.run(run())
    names = [f"it-ensure.{role}.v1" for role in ROLES]
    assert first == names
    assert second == []
    assert partitions == {
        "it-ensure.predictions.v1": 3,
        "it-ensure.outcomes.v1": 3,
        "it-ensure.flags.v1": 1,
        "it-ensure.control.v1": 1,
        "it-ensure.deadletter.v1": 1,
        "it-ensure.observations.v1": 4,
        "it-ensure.repartition.v1": 3,
    }
    assert flag_configs["cleanup.policy"] == "compact"


def test_topics_fixture_gives_created_unique_topics(broker: EmbeddedBroker, topics: Topics) -> None:
    async def listed() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            return list(await admin.list_topics())
        finally:
            await admin.close()

    assert {s.name for s in topics.specs()} <= set(asyncio.run(listed()))
    assert topics.predictions.name != "driftswitch.predictions.v1"


def test_context_manager_stops_the_process(alive: Callable[[int], bool]) -> None:
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert alive(pid)
        assert broker.running
    assert not alive(pid)
    assert not broker.running


def test_context_manager_stops_the_process_when_the_block_raises(
    alive: Callable[[int], bool],
) -> None:
    pids: list[int] = []

    def crash_inside_block() -> None:
        with EmbeddedBroker() as broker:
            pids.append(broker.pid)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        crash_inside_block()
    assert pids
    assert not alive(pids[0])


def test_async_context_manager_stops_the_process(alive: Callable[[int], bool]) -> None:
    async def run() -> tuple[int, bool, list[str]]:
        async with EmbeddedBroker() as broker:
            await create_topic(broker.bootstrap, "it.async", partitions=1)
            await aio_produce(broker.bootstrap, "it.async", [(b"k", b"v")])
            got = await aio_consume(broker.bootstrap, "it.async", 1)
            return broker.pid, alive(broker.pid), [v.decode() for _, v in got]

    pid, was_alive, values = asyncio.run(run())
    assert was_alive
    assert values == ["v"]
    assert not alive(pid)


def wait_until_dead(pid: int, alive: Callable[[int], bool], within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_parent_killed_with_sigkill_leaves_no_broker(alive: Callable[[int], bool]) -> None:
    script = textwrap.dedent(
        """
        import time
        from driftswitch.streams.tools.broker import EmbeddedBroker
        broker = EmbeddedBroker().start()
        print(broker.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        broker_pid = int(parent.stdout.readline())
        assert alive(broker_pid)
        parent.send_signal(signal.SIGKILL)
        assert parent.wait(10) == -signal.SIGKILL
        # No cleanup code ran in the parent: only the kernel's parent-death signal stops it.
        assert wait_until_dead(broker_pid, alive)
    finally:
        parent.kill()
        parent.wait()


def test_missing_binary_from_environment_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-tansu"
    monkeypatch.setenv("CALF_TANSU_BIN", str(missing))
    with pytest.raises(BrokerError, match=r"CALF_TANSU_BIN.*no-such-tansu.*executable"):
        EmbeddedBroker().start()


def test_missing_binary_argument_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"no-such-tansu.*not an executable file"):
        EmbeddedBroker(binary=tmp_path / "no-such-tansu").start()


def test_binary_that_dies_at_startup_reports_its_output(
    tmp_path: Path, alive: Callable[[int], bool]
) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'storage engine exploded' >&2\nexit 3\n")
    fake.chmod(0o755)
    broker = EmbeddedBroker(binary=fake)
    with pytest.raises(BrokerError, match=r"(?s)exited during startup with code 3.*exploded"):
        broker.start()
    assert not broker.running


def test_taken_port_is_a_clear_error(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match=rf"port {broker.port} on 127.0.0.1 is already in use"):
        EmbeddedBroker(port=broker.port).start()
    assert broker.running


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_cli_broker_serves_and_exits_cleanly(
    stop_signal: signal.Signals, alive: Callable[[int], bool]
) -> None:
    cli = Path(sys.executable).with_name("driftswitch")
    proc = subprocess.Popen(
        [str(cli), "broker", "--create-topics"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DRIFTSWITCH_TOPIC_PREFIX": f"cli-{stop_signal.name.lower()}"},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("Kafka bootstrap: 127.0.0.1:"), lines
        bootstrap = lines[0].split()[2]
        broker_pid = int(lines[0].split("pid ")[1].split(",")[0])
        assert lines[1] == f"export DRIFTSWITCH_BROKER={bootstrap}\n"

        topic = f"cli-{stop_signal.name.lower()}.predictions.v1"
        records = make_records(seed=4, n=50)

        async def round_trip() -> list[Record]:
            await aio_produce(bootstrap, topic, records)
            return await aio_consume(bootstrap, topic, len(records))

        got = asyncio.run(round_trip())
        assert by_key(got) == by_key(records)

        proc.send_signal(stop_signal)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 0, stderr
        assert not alive(broker_pid)
    finally:
        proc.kill()
        proc.wait()


def test_ensure_topics_without_a_broker_is_a_clear_error() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(TopicError, match=f"cannot reach Kafka at {address}"):
        asyncio.run(ensure_topics(address, Topics()))
