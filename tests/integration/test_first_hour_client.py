"""The client's lifecycle against the real broker: a client that is never closed still delivers
what it recorded when the interpreter exits, and wait_ready returns once the state is read."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import orjson

from driftswitch.streams.client import DriftswitchClient
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka.connect import read_to_end
from driftswitch.streams.tools.broker import EmbeddedBroker


def read_values(bootstrap: str, topic: str) -> list[dict[str, object]]:
    async def go() -> list[dict[str, object]]:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or [0]]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            records = await read_to_end(consumer, tps)
            return [orjson.loads(r.value) for tp in tps for r in records[tp]]
        finally:
            await consumer.stop()

    return asyncio.run(go())


def test_an_unclosed_client_delivers_its_events_at_interpreter_exit(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    prefix = topics.predictions.name.rsplit(".predictions", 1)[0]
    code = f"""
        import logging
        logging.basicConfig(level=logging.INFO)
        from driftswitch.streams.client import DriftswitchClient
        from driftswitch.streams.contract.topics import Topics

        topics = Topics.with_prefix({prefix!r}, partitions=4)
        client = DriftswitchClient({broker.bootstrap!r}, topics=topics)
        client.start()
        for i in range(10):
            client.record_prediction(f"exit-{{i}}", "ranker", "control", 1)
        # the script ends here: no close(), no flush()
        """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "lost" not in result.stderr
    sent = read_values(broker.bootstrap, topics.predictions.name)
    assert sorted(str(p["request_id"]) for p in sent) == [f"exit-{i}" for i in range(10)]


def test_start_returns_at_once_and_wait_ready_waits_for_the_state(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    client = DriftswitchClient(broker.bootstrap, topics=topics, defaults={"ranker": "control"})
    with client:
        assert client.variant("ranker", "user-1") == "control"  # served before any state
        assert client.wait_ready(30)
        assert client.bootstrapped
        assert client.start() is True  # already started: reports readiness
    assert client.stats().buffered == 0
