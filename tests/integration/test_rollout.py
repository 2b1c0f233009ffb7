"""End to end: progressive rollouts through `driftswitch run` on the embedded broker.

Simulated traffic that followed the flag's weights (``simulate_following``) is produced with
confluent-kafka to the 4-partition predictions and outcomes topics, and a worker subprocess
(``driftswitch run``: both stages, deciding in event-time order whatever the partitions' read
skew) reads it. The flag changes it publishes must be the same sequence — version, cause,
action, weights — as ``driftswitch backtest --order event`` of the same events: an equal
candidate ramps to 100 % with each step's evidence, a worse one is killed at the first step.
The HTTP API shows the rollout's position.

The events are on the topics before the worker starts. A join partition with nothing to read
for ``join.idle_after`` stops holding the merge back, so events produced once the worker's
partitions had fallen idle could be decided late, out of event-time order (the config's
``idle_after`` documents it); the exact comparison needs none late, which the test checks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent, OutcomeEvent, PredictionEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline.backtest import run as run_backtest
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import (
    Scenario,
    VariantSpec,
    config_yaml,
    simulate_following,
    write_jsonl,
)
from driftswitch.streams.tools.testing import WorkerProcess, event_records, flag_changes

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
        # As in tests/unit/test_rollout_backtest.py: the exact comparison needs ~30,000 requests
        # for an equal candidate to show non-inferiority at every step.
        requests=30_000,
        change_at=None,
        rate=100.0,
        seed=11,
        variants=(
            VariantSpec("control", weight=90, accuracy=0.90),
            VariantSpec("candidate", weight=10, accuracy=accuracy),
        ),
    )


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
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
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
    offline = run_backtest(config, events_path, event_order=True)
    assert offline.bad_lines == []
    offline_changes = [o for _, o in offline.outputs if isinstance(o, FlagChangeEvent)]
    assert sequence(offline_changes) == expected

    produce(event_records(topics, events))
    worker = start_worker(config_path, tmp_path / "worker.log")
    worker.wait_active()
    worker.wait_caught_up(len(events), 300)
    status = worker.health()
    assert status is not None
    assert status["merge"]["late"] == 0

    live = flag_changes(broker.bootstrap, topics)
    assert [(c.version, c.cause.action.value) for c in live[:1]] == [(1, "init")]
    assert sequence(live[1:]) == sequence(offline_changes), worker.health()
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
