"""End to end: progressive rollouts through `driftswitch run` on the embedded broker.

Simulated traffic that followed the flag's weights (``simulate_following``) is produced with
confluent-kafka to the predictions and outcomes topics of a live worker subprocess. The flag
changes it publishes must be the same sequence — version, cause, action, weights — as
``driftswitch backtest`` of the same events: an equal candidate ramps to 100 % with each step's
evidence, a worse one is killed at the first step. The HTTP API shows the rollout's position.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from driftswitch.streams.backtest import run as run_backtest
from driftswitch.streams.broker import EmbeddedBroker, free_port
from driftswitch.streams.config import load_config
from driftswitch.streams.events import FlagChangeEvent, OutcomeEvent, PredictionEvent, encode
from driftswitch.streams.simulate import (
    Scenario,
    VariantSpec,
    config_yaml,
    simulate_following,
    write_jsonl,
)
from driftswitch.streams.snapshot import read_to_end
from driftswitch.streams.topics import Topics

ROLLOUT = """\
    rollout:
      variant: candidate
      steps: [10, 30, 60, 100]
      min_samples: 300
      min_duration: 30s
      margin: 0.05
      on_harm: kill
"""
Event = PredictionEvent | OutcomeEvent


def scenario(accuracy: float) -> Scenario:
    return Scenario(
        requests=12_000,
        change_at=None,
        rate=100.0,
        seed=11,
        variants=(
            VariantSpec("control", weight=90, accuracy=0.90),
            VariantSpec("candidate", weight=10, accuracy=accuracy),
        ),
    )


class Worker:
    """`driftswitch run --broker ...` as a child process on this test's topics."""

    def __init__(self, broker: EmbeddedBroker, topics: Topics, config: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        prefix = topics.flags.name.removesuffix(".flags.v1")
        env = {
            **os.environ,
            "DRIFTSWITCH_TOPIC_PREFIX": prefix,
            "DRIFTSWITCH_TOPIC_PARTITIONS": str(topics.predictions.partitions),
        }
        argv = [
            str(Path(sys.executable).with_name("driftswitch")),
            "run",
            "--config",
            str(config),
            "--broker",
            broker.bootstrap,
            "--web-port",
            str(self.port),
            "--group",
            f"{prefix}-workers",
        ]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return orjson.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def wait_for(self, what: str, cond: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited ({self.proc.returncode}):\n{self.log.read_text()}")
            status = self.get("/healthz")
            if status is not None and cond(status):
                return
            time.sleep(0.2)
        pytest.fail(f"worker: {what} not reached in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


def produce(broker: EmbeddedBroker, topics: Topics, events: list[Event]) -> None:
    """Produce the events with confluent-kafka, keyed by request id, in order, and flush."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for e in events:
        topic = topics.predictions.name if isinstance(e, PredictionEvent) else topics.outcomes.name
        while True:
            try:
                producer.produce(topic, encode(e), e.request_id.encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(30) == 0


def published(broker: EmbeddedBroker, topics: Topics) -> list[FlagChangeEvent]:
    """Every flag change on the (one-partition) flags topic, read to the end."""

    async def read() -> list[Any]:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            tp = TopicPartition(topics.flags.name, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            return (await read_to_end(consumer, [tp]))[tp]
        finally:
            await consumer.stop()

    return [FlagChangeEvent.model_validate_json(r.value) for r in asyncio.run(read())]


def sequence(changes: list[FlagChangeEvent]) -> list[tuple[Any, ...]]:
    """What must agree between the live worker and the backtest."""
    return [
        (c.version, c.cause.kind.value, c.cause.action.value, c.served_weights(), c.paused)
        for c in changes
    ]


@pytest.mark.parametrize(
    ("accuracy", "expected"),
    [
        (
            0.90,
            [
                (2, "rollout", "advance", {"control": 70, "candidate": 30}, False),
                (3, "rollout", "advance", {"control": 40, "candidate": 60}, False),
                (4, "rollout", "advance", {"control": 0, "candidate": 100}, False),
            ],
        ),
        (0.78, [(2, "rollout", "kill", {"control": 100, "candidate": 0}, False)]),
    ],
    ids=["equal-candidate-ramps-to-100", "worse-candidate-killed-at-first-step"],
)
def test_live_rollout_matches_backtest(
    broker: EmbeddedBroker,
    topics: Topics,
    workers: list[Worker],
    tmp_path: Path,
    accuracy: float,
    expected: list[tuple[Any, ...]],
) -> None:
    sc = scenario(accuracy)
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(sc) + ROLLOUT)
    config = load_config(config_path)
    events = simulate_following(sc, config)

    events_path = tmp_path / "events.jsonl"
    write_jsonl(events, events_path)
    offline = run_backtest(config, events_path)
    assert offline.bad_lines == []
    offline_changes = [o for _, o in offline.outputs if isinstance(o, FlagChangeEvent)]
    assert sequence(offline_changes) == expected

    worker = Worker(broker, topics, config_path, tmp_path / "worker.log")
    workers.append(worker)
    worker.wait_for("active", lambda s: s["role"] == "active", 60)
    produce(broker, topics, events)
    worker.wait_for("all records read", lambda s: s["records"] == len(events), 90)

    live = published(broker, topics)
    assert [(c.version, c.cause.action.value) for c in live[:1]] == [(1, "init")]
    assert sequence(live[1:]) == sequence(offline_changes)
    for step, change in enumerate(live[1:]):
        cause = change.cause
        assert cause.evidence["step"] == step  # each step's evidence travels with its change
        assert cause.samples["candidate"] >= (300 if cause.action.value == "advance" else 1)
        assert cause.interval is not None
        assert cause.detector == "sequential"

    flag = worker.get("/api/v1/flags/ranker")
    position = flag["evaluation"]["rollout"]
    assert position["variant"] == "candidate"
    assert position["status"] == ("complete" if accuracy == 0.90 else "killed")
    assert position["step"] == (3 if accuracy == 0.90 else 0)
