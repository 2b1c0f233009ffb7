"""A broker that lost its data: input topics deleted and created again under the same names while
the worker was down. The worker's snapshot offsets are then beyond the new data; it must resume
from the start of the new data, loudly, instead of silently skipping it."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka.settings import as_settings
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import WorkerProcess, event_records, recreate_inputs

pytestmark = pytest.mark.broker
#: Runs ``--stage single`` on purpose: the single worker's data-loss check (the join
#: stage's: test_join_hardening.py).
SINGLE = ["--stage", "single"]

SCENARIO = Scenario(
    requests=3_000,
    rate=100.0,
    seed=5,
    variants=(VariantSpec("control", weight=50), VariantSpec("candidate", weight=50)),
)


async def end_offsets(bootstrap: str, topics: Topics) -> dict[tuple[str, int], int]:
    """``{(topic, partition): offset after the last record}`` of both input topics, read."""
    ends: dict[tuple[str, int], int] = {}
    for spec in (topics.predictions, topics.outcomes):
        read = await kafka.read_partitions(as_settings(bootstrap), spec.name)
        ends.update({(tp.topic, tp.partition): o for tp, o in read.next_offsets.items()})
    return ends


def test_input_recreated_while_down_is_read_from_the_start_of_the_new_data(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    config = tmp_path / "ranker.yaml"
    config.write_text(config_yaml(SCENARIO, ""))
    records = event_records(topics, list(simulate(SCENARIO)))
    old, new = records[:4000], records[4000:5000]  # fewer new records than the old offsets
    log = tmp_path / "worker.log"
    worker = start_worker(config, log, args=[*SINGLE, "--snapshot-interval", "0.2"])
    worker.wait_active()
    produce(old)
    worker.wait_for("old data read", lambda s: s["records"] == len(old), 60)
    worker.stop()

    asyncio.run(recreate_inputs(broker.bootstrap, topics))
    produce(new)
    worker = start_worker(config, log, args=[*SINGLE, "--snapshot-interval", "0.2"])
    worker.wait_active()
    # Every new record is read: none skipped because the old offsets were higher.
    worker.wait_for("new data read", lambda s: s["records"] == len(old) + len(new), 60)
    text = log.read_text()
    assert "the topic was recreated or the broker lost its data" in text
    with urllib.request.urlopen(f"{worker.url}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    resets = re.findall(r"^driftswitch_input_resets_total\{[^}]*\} (\S+)$", metrics, re.M)
    assert resets
    assert sum(float(x) for x in resets) >= 2  # at least one partition of each input topic
    status = worker.health() or {}  # None unless it answers 200
    assert status["unhealthy"] is None


def test_input_recreated_while_running_is_detected_when_idle(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    config = tmp_path / "ranker.yaml"
    config.write_text(config_yaml(SCENARIO, ""))
    records = event_records(topics, list(simulate(SCENARIO)))
    old, new = records[:4000], records[4000:5000]
    log = tmp_path / "worker.log"
    worker = start_worker(config, log, args=[*SINGLE, "--snapshot-interval", "0.2"])
    worker.wait_active()
    produce(old)
    worker.wait_for("old data read", lambda s: s["records"] == len(old), 60)

    asyncio.run(recreate_inputs(broker.bootstrap, topics))
    produce(new)
    # The idle check (every 5 s) finds the positions beyond the new data and resets them.
    worker.wait_for("new data read", lambda s: s["records"] == len(old) + len(new), 90)
    assert "the topic was recreated or the broker lost its data" in log.read_text()


def test_input_recreated_and_refilled_past_the_old_offsets_is_detected_by_identity(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    config = tmp_path / "ranker.yaml"
    config.write_text(config_yaml(SCENARIO, ""))
    records = event_records(topics, list(simulate(SCENARIO)))
    # Three times as many new records as old ones: every partition's new data reaches past the
    # old offset, so offsets alone look fine; only the record at the old position differs.
    old, new = records[:1500], records[1500:6000]
    log = tmp_path / "worker.log"
    worker = start_worker(config, log, args=[*SINGLE, "--snapshot-interval", "0.2"])
    worker.wait_active()
    produce(old)
    worker.wait_for("old data read", lambda s: s["records"] == len(old), 60)
    positions = (worker.health() or {})["offsets"]
    worker.stop()

    asyncio.run(recreate_inputs(broker.bootstrap, topics))
    produce(new)
    ends = asyncio.run(end_offsets(broker.bootstrap, topics))
    for topic, parts in positions.items():
        for p, offset in parts.items():
            if topic != topics.control.name:
                assert ends[(topic, int(p))] > offset  # refilled past the old position
    worker = start_worker(config, log, args=[*SINGLE, "--snapshot-interval", "0.2"])
    worker.wait_active()
    # Every new record is read: the old offsets would have skipped the first ones.
    worker.wait_for("new data read", lambda s: s["records"] == len(old) + len(new), 60)
    text = log.read_text()
    assert "is not the one consumed there: the topic was recreated" in text
    with urllib.request.urlopen(f"{worker.url}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    resets = re.findall(r"^driftswitch_input_resets_total\{[^}]*\} (\S+)$", metrics, re.M)
    assert sum(float(x) for x in resets) >= 2  # at least one partition of each input topic
    # The control topic was not recreated: its mark matched and it was left alone.
    assert f"input {topics.control.name}[" not in text
