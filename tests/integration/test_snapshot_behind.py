"""A worker's periodic snapshots on the embedded broker: taken at once, written behind the loop.

The worker runs in this event loop (``--stage single``, entries in memory), so the test can take
a snapshot between two batches and look at what reaches the state topic.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.service.worker import Worker, WorkerSettings, state_topic
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import ACCURACY_GUARDRAILS, produce_in_event_order, until

pytestmark = pytest.mark.xdist_group("broker")

SCENARIO = Scenario(
    variants=(VariantSpec("control", weight=50), VariantSpec("candidate", weight=50)),
    requests=600,
    rate=50.0,
    label_delay=1.0,
    seed=3,
)


def test_a_snapshot_holds_the_state_when_taken_and_is_written_behind_the_loop(
    broker: EmbeddedBroker, topics: Topics
) -> None:
    """``_write_snapshot(behind=True)`` (what the loop calls) returns with the snapshot still
    being written; the loop reads on meanwhile, and the state topic then holds the offsets and
    counts of the moment it was taken. The next snapshot (here the one of the clean stop) waits
    for it, so the two reach the topic in order."""
    config = parse_config(config_yaml(SCENARIO, ACCURACY_GUARDRAILS))
    events = list(simulate(SCENARIO))
    first, later = events[:400], events[400:]
    settings = WorkerSettings(
        bootstrap=broker.bootstrap,
        topics=topics,
        group=f"{topics.flags.name}-behind",
        snapshot_interval=3600.0,  # only the snapshots taken here, and the final one
        stage="single",
    )

    async def scenario() -> tuple[bool, dict[str, dict[int, int]], Any, Any, int]:
        await ensure_topics(broker.bootstrap, [*topics.specs(), state_topic(topics)])
        worker = Worker(config, settings)
        task = asyncio.ensure_future(worker.run())
        loop = asyncio.get_running_loop()
        try:
            await until("active", lambda: worker.role == "active")
            await loop.run_in_executor(
                None, produce_in_event_order, broker.bootstrap, topics, first
            )
            await until("first read", lambda: worker.counters["records"] == len(first))
            async with worker._engine_lock:  # between two batches
                offsets = {t: dict(ps) for t, ps in worker.offsets.items()}
                await worker._write_snapshot(behind=True)
                writing = worker._writing.pending
            await loop.run_in_executor(
                None, produce_in_event_order, broker.bootstrap, topics, later
            )
            await until("later read", lambda: worker.counters["records"] == len(events))
            await worker._writing.settle()
            taken = await worker._load_snapshot()
        finally:
            worker.stop.set()
            await task
        final = await worker._load_snapshot()
        return writing, offsets, taken, final, worker.counters["snapshots"]

    writing, offsets, taken, final, snapshots = asyncio.run(scenario())
    assert writing
    assert taken is not None
    assert final is not None
    assert taken.offsets == offsets
    assert sum(o for ps in offsets.values() for o in ps.values()) == len(first)
    assert taken.counters["records"] == len(first)
    # The clean stop's snapshot came after it, with everything read.
    assert (taken.seq, final.seq) == (1, 2)
    assert final.counters["records"] == len(events)
    assert snapshots == 2
