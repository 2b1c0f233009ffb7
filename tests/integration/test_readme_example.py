"""The README's integration example, run as written against the embedded broker."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.kafka.connect import read_to_end
from driftswitch.streams.tools.broker import EmbeddedBroker

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Integrating a model service", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its integration example"
    return match.group(1)


class FakeModel:
    def __init__(self, name: str) -> None:
        self.name = name

    def rank(self, query: str) -> tuple[list[str], float]:
        return [f"{self.name}:{query}", "other"], 0.75


def read(broker: EmbeddedBroker, topic: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
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


def test_readme_example_records_events_and_assigns(
    broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example uses the default topic names; this test owns them (other tests use prefixes).
    # They exist as `driftswitch run` creates them.
    asyncio.run(ensure_topics(broker.bootstrap, Topics().specs()))
    monkeypatch.setenv("DRIFTSWITCH_BROKER", broker.bootstrap)
    namespace: dict[str, Any] = {
        "MODELS": {"control": FakeModel("v1"), "candidate": FakeModel("v2")}
    }
    exec(compile(example(), "README.md", "exec"), namespace)
    client = namespace["client"]
    try:
        # No flag state is published: the configured default serves everyone.
        results = namespace["rank"]("req-1", "user-42", "shoes")
        assert results == ["v1:shoes", "other"]
        namespace["on_click"]("req-1", "v1:shoes")
        assert client.flush(10)
        stats = client.stats()
        assert stats.sent == 2
        assert stats.dropped == 0
    finally:
        client.close()
    predictions = read(broker, "driftswitch.predictions.v1")
    outcomes = read(broker, "driftswitch.outcomes.v1")
    (prediction,) = [p for p in predictions if p["request_id"] == "req-1"]
    assert prediction["variant"] == "control"
    assert prediction["prediction"] == "v1:shoes"
    assert prediction["subject"] == "user-42"
    assert prediction["score"] == 0.75
    assert prediction["latency_ms"] >= 0
    assert [o["label"] for o in outcomes if o["request_id"] == "req-1"] == ["v1:shoes"]
