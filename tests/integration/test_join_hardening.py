"""The join stage hardened like the single worker, through ``driftswitch run --stage all`` on the
embedded broker (4-partition topics):

- **Poison containment.** Events that break the join (injected, as in
  ``test_poison_worker.py``: one makes ``Joiner.process`` raise, one leaves a state that no
  longer checkpoints) are dead-lettered as ``internal_error``; the process keeps running; every
  other event is counted exactly once, as ``driftswitch backtest --order event`` counts it.
- **Input the broker lost.** The input topics are recreated while the process runs (found by
  the idle check) and again while it is down (found when its partitions are assigned): it
  resumes from the start of the new data, loudly, and the decide stage counts the new data
  (positions start again at 0, in a new epoch).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from driftswitch.streams.config.model import Config, load_config
from driftswitch.streams.contract.events import (
    FlagChangeEvent,
    OutcomeEvent,
    PredictionEvent,
    encode,
)
from driftswitch.streams.contract.placement import join_partition
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline import backtest
from driftswitch.streams.pipeline.ingest import HEADER_DETAIL, HEADER_REASON
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import (
    KILL_ON_ACCURACY,
    STAGE_TEST_JOIN,
    WorkerProcess,
    event_records,
    flag_changes,
    read_topic,
    recreate_inputs,
)

pytestmark = pytest.mark.broker

SCENARIO = Scenario(
    requests=6_000,
    change_at=3_000,
    rate=100.0,
    seed=23,
    label_delay=3.0,
    label_fraction=0.9,
    variants=(
        VariantSpec("control", weight=70, accuracy=0.90),
        VariantSpec("candidate", weight=30, accuracy=0.90, accuracy_after=0.75),
    ),
)
Event = PredictionEvent | OutcomeEvent
ALL = ["--stage", "all", "--snapshot-interval", "0.2"]

SITECUSTOMIZE = '''
"""Fault injection for a test: events the join fails on, as no validated input should."""
from driftswitch.streams.pipeline import observations as _observations

_process = _observations.Joiner.process


def process(self, events, positions=None):
    if any(getattr(e, "request_id", "").startswith("explode") for e in events):
        raise RuntimeError("injected failure")
    result = _process(self, events, positions)
    if any(getattr(e, "request_id", "").startswith("corrupt") for e in events):
        self.counters["corrupt"] = 2**70  # the state can no longer be checkpointed
    return result


_observations.Joiner.process = process
'''


def _reference(config: Config, events: list[Event], path: Path) -> tuple[list[Any], Any]:
    """``driftswitch backtest --order event`` on ``events`` (written shuffled: it sorts them):
    its flag changes after version 1 and per-variant (predictions, joined) counts."""
    shuffled = list(events)
    random.Random(1).shuffle(shuffled)
    path.write_bytes(b"".join(encode(ev) + b"\n" for ev in shuffled))
    result = backtest.run(config, path, event_order=True)
    changes = [
        (c.version, c.cause.action.value, c.cause.variant)
        for _, c in result.outputs
        if isinstance(c, FlagChangeEvent)
    ]
    return changes, _counts(result.engine.snapshot())


def _counts(snapshot: Any) -> dict[str, Any]:
    return {
        f"{flag}/{v}": (s["predictions"], s["joined"])
        for flag, f in snapshot["flags"].items()
        for v, s in f["variants"].items()
    }


def _wait_counts(worker: WorkerProcess, expected: dict[str, Any], timeout: float) -> None:
    """Until the process's decide stage has counted exactly ``expected`` (it must stay up)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise AssertionError(f"the process exited:\n{worker.log.read_text()[-3000:]}")
        status = worker.health()
        engine = status.get("engine") if status else None
        if engine:
            last = _counts(engine)
            if last == expected:
                return
        time.sleep(0.5)
    raise AssertionError(
        f"counts not reached in {timeout} s: {last} != {expected}\n{worker.log.read_text()[-3000:]}"
    )


def _metrics(worker: WorkerProcess) -> str:
    with urllib.request.urlopen(f"{worker.url}/metrics", timeout=30) as r:
        return str(r.read().decode())


def _prediction(rid: str, ts: float) -> PredictionEvent:
    return PredictionEvent(request_id=rid, flag="ranker", variant="control", ts=ts, prediction=1)


def _in_partition(prefix: str, partition: int, partitions: int) -> str:
    """A request id starting with ``prefix`` whose join partition is ``partition``."""
    return next(
        rid for k in range(1000) if join_partition(rid := f"{prefix}-{k}", partitions) == partition
    )


def test_events_that_break_the_join_are_contained_and_dead_lettered(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(SCENARIO, KILL_ON_ACCURACY) + STAGE_TEST_JOIN)
    config = load_config(config_path)
    events: list[Event] = list(simulate(SCENARIO))
    n = topics.predictions.partitions
    # In two different join partitions, so that each fails on its own (module doc of
    # joinstage: a partition's recovery replays only its own input).
    explode = _prediction(_in_partition("explode", 1, n), events[2000].ts)
    corrupt = _prediction(_in_partition("corrupt", 2, n), events[4000].ts)
    good = event_records(topics, events)
    records = [*good[:2000], *event_records(topics, [explode]), *good[2000:]]
    records.insert(4001, event_records(topics, [corrupt])[0])
    # The corrupt event's only fault is the state it leaves: found at the next checkpoint,
    # after its observation was sent (joinstage module doc). It counts, and is dead-lettered.
    changes, counts = _reference(config, [*events, corrupt], tmp_path / "events.jsonl")
    assert [c[1] for c in changes] == ["kill"]

    log = tmp_path / "all.log"
    worker = start_worker(config_path, log, args=ALL, env={"PYTHONPATH": str(inject)})
    worker.wait_active()
    produce(records)
    _wait_counts(worker, counts, 240)

    published = [
        (c.version, c.cause.action.value, c.cause.variant)
        for c in flag_changes(broker.bootstrap, topics)
        if c.version > 1
    ]
    assert published == changes
    dead = read_topic(broker.bootstrap, topics.deadletter.name)
    reasons = {r.key: dict(r.headers)[HEADER_REASON].decode() for r in dead}
    assert reasons == {
        explode.request_id.encode(): "internal_error",
        corrupt.request_id.encode(): "internal_error",
    }
    details = {r.key: dict(r.headers)[HEADER_DETAIL].decode() for r in dead}
    assert details[explode.request_id.encode()].startswith("RuntimeError at ")
    assert details[corrupt.request_id.encode()].startswith("TypeError at ")
    assert all("injected" not in d for d in details.values())  # the message is not repeated
    status = worker.health()
    assert status is not None
    stage = status["join_stage"]
    assert stage["recoveries"] == 2  # one per failing partition
    assert stage["rejected"] == {"internal_error": 2}
    # The input each recovery read again from its partition's last checkpoint is not counted
    # twice in the input's disorder: every record once.
    assert sum(d["records"] for d in stage["disorder"].values()) == len(records)
    assert status["merge"]["late"] <= 1  # the corrupt event (early event time) at most
    metrics = _metrics(worker)
    assert 'driftswitch_deadletter_records_total{reason="internal_error"} 2.0' in metrics
    assert re.search(r"^driftswitch_engine_recoveries_total 2.0$", metrics, re.M)
    text = log.read_text()
    assert "restoring its last checkpoint and replaying with containment" in text
    assert worker.proc.poll() is None


def test_input_the_broker_lost_is_read_again_from_the_start_of_the_new_data(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(SCENARIO, "") + STAGE_TEST_JOIN)
    config = load_config(config_path)
    events: list[Event] = list(simulate(SCENARIO))
    # Each part has fewer records than the one before: offsets of the new data stay below
    # the old positions.
    first, second, third = events[:4000], events[4000:5000], events[5000:5600]
    log = tmp_path / "all.log"
    worker = start_worker(config_path, log, args=ALL)
    worker.wait_active()
    produce(event_records(topics, first))
    _wait_counts(worker, _reference(config, first, tmp_path / "1.jsonl")[1], 120)

    # Recreated while running: the idle check finds it.
    asyncio.run(recreate_inputs(broker.bootstrap, topics))
    produce(event_records(topics, second))
    _wait_counts(worker, _reference(config, first + second, tmp_path / "2.jsonl")[1], 120)
    status = worker.health()
    assert status is not None
    assert status["join_stage"]["input_resets"] >= 2  # a partition of each input topic at least
    assert "the topic was recreated or the broker lost its data" in log.read_text()
    worker.stop()
    assert worker.proc.returncode == 0, log.read_text()[-3000:]

    # Recreated while down: the check on assignment finds it.
    asyncio.run(recreate_inputs(broker.bootstrap, topics))
    produce(event_records(topics, third))
    worker = start_worker(config_path, log, args=ALL)
    expected = _reference(config, first + second + third, tmp_path / "3.jsonl")[1]
    _wait_counts(worker, expected, 120)
    resets = re.findall(
        r"^driftswitch_input_resets_total\{([^}]*)\} (\S+)$", _metrics(worker), re.M
    )
    assert sum(float(v) for labels, v in resets if topics.predictions.name in labels) >= 1
    assert sum(float(v) for labels, v in resets if topics.outcomes.name in labels) >= 1
    status = worker.health()
    assert status is not None
    assert status["unhealthy"] is None
    # The engine section's join counts are the join stage's (this process owns every partition).
    join = status["engine"]["join"]
    assert join["from"].startswith("join_stage")
    pending = join["pending_predictions"] + join["pending_outcomes"]
    assert pending == sum(status["join_stage"]["pending"].values()) > 0
