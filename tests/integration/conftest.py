"""Fixtures for the end-to-end tests that run `driftswitch run` as a subprocess.

``start_worker`` starts :class:`~driftswitch.streams.tools.testing.WorkerProcess` children on this
test's ``topics`` and stops every one of them at teardown. ``produce`` writes records with
confluent-kafka (librdkafka), a different client from the worker's aiokafka, on purpose: what the
worker reads must be what any Kafka producer writes. ``read_json`` reads a whole topic back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka.connect import read_partitions
from driftswitch.streams.kafka.settings import as_settings
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.testing import WorkerProcess


@pytest.fixture
def start_worker(broker: EmbeddedBroker, topics: Topics) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(config, log, **kwargs)``: a worker on ``topics``, stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(config: Path, log: Path, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(broker.bootstrap, topics, config, log, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def produce(broker: EmbeddedBroker) -> Callable[[list[tuple[str, bytes, bytes]]], None]:
    """``produce(records)``: ``(topic, key, value)`` records with confluent-kafka, in order,
    then flush (every record acknowledged)."""

    def send(records: list[tuple[str, bytes, bytes]]) -> None:
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        for topic, key, value in records:
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
        assert producer.flush(30) == 0

    return send


@pytest.fixture
def read_json(broker: EmbeddedBroker) -> Callable[[str], list[Any]]:
    """``read_json(topic)``: every record of every partition of ``topic``, from the beginning to
    the end (as ``read_partitions`` reads it), JSON-decoded, partition after partition."""

    def read(topic: str) -> list[Any]:
        found = asyncio.run(read_partitions(as_settings(broker.bootstrap), topic))
        return [orjson.loads(r.value) for records in found.records.values() for r in records]

    return read


@pytest.fixture
def record_artefact(request: pytest.FixtureRequest) -> Callable[[Path], None]:
    """``record_artefact(path)``: name a file this test made (a screenshot) in the run's summary,
    so a CI log says where to find it. Carried by the test's report (``user_properties``), so it
    reaches the summary from an xdist worker too."""

    def record(path: Path) -> None:
        request.node.user_properties.append(("artefact", str(path)))

    return record
