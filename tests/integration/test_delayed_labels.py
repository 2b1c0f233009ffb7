"""Delayed labels at scale: outcomes 30 minutes of event time after their predictions, at the rate
that keeps 5,000,000 join entries pending, through the join stage on its disk store.

The workload (:class:`~driftswitch.streams.tools.delayedlabels.DelayedLabels`): 5M predictions
over 30 minutes of event time fill the join; then each new prediction comes with the outcome of
the one made 30 minutes before it, so 5M entries stay pending while labels join; at the end the
last 5M predictions are still waiting. Everything is produced by confluent-kafka with its default
partitioner to 4-partition topics, from several processes. ``join.max_pending`` is 1,000: the
in-memory join would evict all but 1,000 of the waiting entries; on disk it evicts none.

This test has its own embedded broker (1.6 GB at the end), and runs in the xdist group of every
other broker test, one after another: run beside them, its load (producers, broker, join) slowed
the stage tests' processes past their deadlines in CI.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.kafka.connect import read_partitions
from driftswitch.streams.kafka.settings import as_settings
from driftswitch.streams.pipeline.observations import PREDICTED, SCORED
from driftswitch.streams.service.joinstage import JoinStage
from driftswitch.streams.service.worker import WorkerSettings, state_topic
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.delayedlabels import CONFIG, DelayedLabels, produce

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.xdist_group("broker")]

WORKLOAD = DelayedLabels(pending=5_000_000, labelled=200_000)


@pytest.fixture(scope="module")
def own_broker() -> Iterator[EmbeddedBroker]:
    """A broker of this module's own (see the module doc)."""
    with EmbeddedBroker() as started:
        yield started


def _pending(stage: JoinStage) -> int:
    return sum(stage.status()["pending"].values())


def _join_counters(stage: JoinStage) -> Counter[str]:
    """The join buffers' counters summed over the stage's partitions."""
    total: Counter[str] = Counter()
    for part in stage.parts.values():
        total.update(part.joiner.join.counters())
    return total


async def _until(what: str, cond: Any, stage: JoinStage, limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        assert loop.time() < deadline, f"{what}: not reached in {limit_s} s: {stage.status()}"
        await asyncio.sleep(0.5)


def _count(values: list[bytes]) -> dict[str, Counter[str]]:
    """Per variant: PREDICTED observations, SCORED ones, and SCORED ones whose prediction is the
    label, over the observation batches ``values``."""
    counts: dict[str, Counter[str]] = {}
    for value in values:
        for obs in orjson.loads(value)["observations"]:
            c = counts.setdefault(obs[3], Counter())
            if obs[0] == PREDICTED:
                c["predictions"] += 1
            elif obs[0] == SCORED:
                c["scored"] += 1
                c["correct"] += obs[7] == obs[9]
    return counts


@pytest.mark.timeout(3600)
def test_five_million_labels_thirty_minutes_late_join_exactly_and_none_is_evicted(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """5M predictions wait; a join stage stops with them pending and a second one continues from
    the disk stores while 200,000 labels arrive 30 minutes of event time late (each with a new
    prediction, so 5M stay pending); the accuracy counts per variant are exact, nothing is
    evicted, expired, lost or rejected, and exactly 5M entries are pending at the end."""
    w = WORKLOAD
    config = parse_config(CONFIG)
    assert config.join.max_pending * 1000 < w.pending  # the in-memory bound would bite
    bootstrap = own_broker.bootstrap
    topics = Topics.with_prefix("delayed", partitions=4)
    asyncio.run(ensure_topics(bootstrap, [*topics.specs(), state_topic(topics)]))
    settings = WorkerSettings(
        bootstrap=bootstrap, topics=topics, group="delayed", state_dir=tmp_path
    )

    async def scenario() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        got: dict[str, Any] = {}
        first = JoinStage(config, settings)
        task = asyncio.ensure_future(first.run())
        try:
            await loop.run_in_executor(None, produce, bootstrap, topics, w, 0, w.pending)
            await _until(
                "every prediction pending",
                lambda: first.ingest.accepted == w.pending and _pending(first) == w.pending,
                first,
                2400,
            )
            got["first"] = _join_counters(first)
        finally:
            first.stop.set()
            await task
        second = JoinStage(config, settings)
        task = asyncio.ensure_future(second.run())
        try:
            await _until("restored", lambda: len(second.parts) == 4, second, 300)
            got["restored_pending"] = _pending(second)
            got["lost"] = second.counters["join_entries_lost"]
            sending = loop.run_in_executor(
                None, produce, bootstrap, topics, w, w.pending, w.predictions
            )
            await sending
            await _until(
                "every label read",
                lambda: second.ingest.accepted == 2 * w.labelled,
                second,
                2400,
            )
            got["pending"] = _pending(second)
            got["second"] = _join_counters(second)
            got["rejected"] = dict(first.ingest.rejected) | dict(second.ingest.rejected)
        finally:
            second.stop.set()
            await task
        got["lost"] += second.counters["join_entries_lost"]
        return got

    got = asyncio.run(scenario())
    assert got["first"]["pending_predictions"] == w.pending
    assert got["restored_pending"] == w.pending
    assert got["lost"] == 0
    assert got["rejected"] == {}
    assert got["pending"] == w.pending
    counters = got["second"]
    assert counters["joined"] == w.labelled
    assert counters["pending_predictions"] == w.pending
    assert counters["pending_outcomes"] == 0
    for name in ("evicted", "expired", "duplicate"):
        assert counters[f"{name}_predictions"] == 0, counters
        assert counters[f"{name}_outcomes"] == 0, counters

    found = asyncio.run(read_partitions(as_settings(bootstrap), topics.observations.name))
    counts = _count([r.value for records in found.records.values() for r in records])
    assert {v: dict(c) for v, c in counts.items()} == w.expected()
