"""End to end: progressive rollouts through `driftswitch run` on the embedded broker.

Simulated traffic that followed the flag's weights (``simulate_following``) is produced with
confluent-kafka to the predictions and outcomes topics of a live worker subprocess. The flag
changes it publishes must be the same sequence — version, cause, action, weights — as
``driftswitch backtest`` of the same events: an equal candidate ramps to 100 % with each step's
evidence, a worse one is killed at the first step. The HTTP API shows the rollout's position.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent, OutcomeEvent, PredictionEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
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

#: ``--stage single``: the single worker decides in arrival order, and this test compares it with
#: ``driftswitch backtest`` in file order (the stages decide like ``--order event``).
SINGLE = ["--stage", "single"]
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


@pytest.fixture
def topics(broker: EmbeddedBroker) -> Topics:
    """One partition per topic, so the worker reads events in the order backtest replays them.

    With several partitions the worker consumes them with some skew (one partition's batch runs
    ahead of another's), and a rollout's event-time gates can then fall differently near the
    end of a finite stream: replaying these scenarios through the engine in skewed batch orders
    (8 partitions, random batch sizes) left out the final advance in 5 of 10 orders. Decisions
    in the middle of a long stream agree; the exact-sequence comparison needs the same order.
    """
    prefix = f"rollout-{secrets.token_hex(4)}"
    created = Topics.with_prefix(prefix, partitions=1)
    asyncio.run(ensure_topics(broker.bootstrap, created))
    return created


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
    offline = run_backtest(config, events_path)
    assert offline.bad_lines == []
    offline_changes = [o for _, o in offline.outputs if isinstance(o, FlagChangeEvent)]
    assert sequence(offline_changes) == expected

    worker = start_worker(config_path, tmp_path / "worker.log", args=SINGLE)
    worker.wait_active()
    produce(event_records(topics, events))
    worker.wait_for("all records read", lambda s: s["records"] == len(events), 240)

    live = flag_changes(broker.bootstrap, topics)
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
