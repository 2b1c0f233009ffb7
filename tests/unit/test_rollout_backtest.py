"""Rollouts through the engine and ``backtest`` on simulated traffic that follows the flag.

The events come from :func:`~driftswitch.streams.tools.simulate.simulate_following` (clients serve
the
flag's live weights), are written to JSON Lines and replayed by ``backtest``: a candidate as good
as control ramps to 100 % with each step's evidence; a worse one is killed (or rolled back) at the
first step where the evidence suffices; a shadow is promoted and ramped. The engine's rollout
state survives ``to_state``/``from_state`` and does not depend on batch boundaries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from driftswitch.streams.config.model import Config, parse_config
from driftswitch.streams.contract.events import (
    Action,
    AlertEvent,
    CauseKind,
    FlagChangeEvent,
    OutcomeEvent,
    PredictionEvent,
)
from driftswitch.streams.pipeline.backtest import run
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.tools.simulate import (
    Scenario,
    VariantSpec,
    config_yaml,
    simulate_following,
    write_jsonl,
)

#: Whole rollouts replayed through the backtest: simulations, run in the full suite only.
pytestmark = pytest.mark.slow

ROLLOUT = """\
    rollout:
      variant: candidate
      steps: [10, 30, 60, 100]
      min_samples: 300
      min_duration: 30s
      margin: 0.05
      on_harm: {on_harm}
"""
Event = PredictionEvent | OutcomeEvent


def scenario(accuracy: float, seed: int = 11, shadow: bool = False) -> Scenario:
    return Scenario(
        # 30,000 requests at 100/s: enough for an equal candidate to show non-inferiority (margin
        # 0.05) at every step with the exact comparison and the spent α of later phases.
        requests=30_000,
        change_at=None,
        rate=100.0,
        seed=seed,
        variants=(
            VariantSpec("control", weight=90, accuracy=0.90),
            VariantSpec("candidate", weight=10, accuracy=accuracy, shadow=shadow),
        ),
    )


def rollout_config(sc: Scenario, on_harm: str = "kill") -> Config:
    return parse_config(config_yaml(sc) + ROLLOUT.format(on_harm=on_harm))


def replay(cfg: Config, events: list[Event], path: Path) -> list[FlagChangeEvent | AlertEvent]:
    write_jsonl(events, path)
    result = run(cfg, path)
    assert result.bad_lines == []
    return [out for _, out in result.outputs]


def test_equal_candidate_ramps_to_100_with_each_steps_evidence(tmp_path: Path) -> None:
    sc = scenario(0.90)
    cfg = rollout_config(sc)
    outputs = replay(cfg, simulate_following(sc, cfg), tmp_path / "events.jsonl")
    assert all(isinstance(o, FlagChangeEvent) for o in outputs)
    assert [(o.cause.kind, o.cause.action) for o in outputs] == [
        (CauseKind.ROLLOUT, Action.ADVANCE)
    ] * 3
    assert [o.served_weights() for o in outputs if isinstance(o, FlagChangeEvent)] == [
        {"control": 70, "candidate": 30},
        {"control": 40, "candidate": 60},
        {"control": 0, "candidate": 100},
    ]
    for step, o in enumerate(outputs):
        c = o.cause
        assert c.evidence["step"] == step
        assert c.samples["candidate"] >= 300
        assert c.interval is not None
        assert c.interval[0] > -0.05
        gates = c.evidence["gates"]
        assert isinstance(gates, dict)
        elapsed = gates["elapsed"]
        assert isinstance(elapsed, float)
        assert elapsed >= 30.0


@pytest.mark.parametrize(
    ("on_harm", "actions"),
    [("kill", [Action.KILL]), ("previous", [Action.ROLLBACK])],
    ids=["kill", "previous"],
)
def test_worse_candidate_is_rolled_back_at_the_first_step(
    tmp_path: Path, on_harm: str, actions: list[Action]
) -> None:
    sc = scenario(0.78)
    cfg = rollout_config(sc, on_harm)
    events = simulate_following(sc, cfg)
    outputs = replay(cfg, events, tmp_path / "events.jsonl")
    assert [o.cause.action for o in outputs] == actions
    (change,) = outputs
    assert isinstance(change, FlagChangeEvent)
    assert change.served_weights() == {"control": 100, "candidate": 0}
    assert change.variants["candidate"].killed is (on_harm == "kill")
    assert change.cause.evidence["step"] == 0  # evidence sufficed at the first step
    assert change.cause.interval is not None
    assert change.cause.interval[1] < -0.05
    # The candidate's traffic stopped there: no candidate prediction after the decision.
    last = max(e.ts for e in events if isinstance(e, PredictionEvent) and e.variant == "candidate")
    # The simulated clients follow within one engine batch (500 events: under 5 s here).
    assert change.ts - 60 < last <= change.ts + 5.0


def test_shadow_is_promoted_then_ramped(tmp_path: Path) -> None:
    sc = scenario(0.90, shadow=True)
    text = config_yaml(sc) + ROLLOUT.format(on_harm="kill").replace(
        "steps: [10, 30, 60, 100]", "steps: [10, 30, 60, 100]\n      promote_shadow: true"
    )
    cfg = parse_config(text)
    outputs = replay(cfg, simulate_following(sc, cfg), tmp_path / "events.jsonl")
    weights = [o.served_weights()["candidate"] for o in outputs if isinstance(o, FlagChangeEvent)]
    assert weights[:2] == [10, 30]
    assert outputs[0].cause.evidence["step"] == -1
    assert "shadow" in (outputs[0].cause.reason or "")


@pytest.fixture(scope="module")
def good() -> tuple[Config, list[Event]]:
    sc = scenario(0.90, seed=5)
    cfg = rollout_config(sc)
    return cfg, simulate_following(sc, cfg)


def test_decisions_do_not_depend_on_batches_or_restarts(good: tuple[Config, list[Event]]) -> None:
    cfg, events = good
    whole = Engine(cfg)
    expected = [e.event for e in whole.process(events).outputs]
    assert len(expected) == 3
    engine = Engine(cfg)
    got = []
    for start in range(0, len(events), 777):
        got += [e.event for e in engine.process(events[start : start + 777]).outputs]
        if start == 777 * 40:  # between the first and second advance: a restart from JSON
            state = orjson.loads(orjson.dumps(engine.to_state()))
            engine = Engine.from_state(cfg, state)
            assert orjson.loads(orjson.dumps(engine.to_state())) == state
    assert got == expected


def test_snapshot_shows_the_rollout_position(good: tuple[Config, list[Event]]) -> None:
    cfg, events = good
    engine = Engine(cfg)
    engine.process(events[:9_000])
    snap: Any = engine.snapshot()
    position = snap["flags"]["ranker"]["rollout"]
    assert position["variant"] == "candidate"
    assert position["compare_to"] == "control"
    assert position["status"] == "running"
    assert position["step"] == engine.state("ranker").version - 1
    assert position["percent"] == engine.state("ranker").served_weights()["candidate"]
    assert position["steps"] == [10, 30, 60, 100]
    assert position["gates"]["min_samples"] == 300
    assert position["samples"]["candidate"] == position["gates"]["samples"]
    assert position["paused"] is False
    orjson.dumps(snap)  # strict JSON


def test_a_guardrail_kill_ends_the_rollout(good: tuple[Config, list[Event]]) -> None:
    sc = scenario(0.90, seed=5)
    guardrail = """\
    guardrails:
      - name: candidate-errors
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.99, target: 0.90, arl0: 1000}
        min_samples: 50
        action: kill
"""
    cfg = parse_config(config_yaml(sc) + ROLLOUT.format(on_harm="kill") + guardrail)
    _, events = good
    engine = Engine(cfg)
    outputs = [e.event for e in engine.process(events).outputs]
    # The guardrail expects 99 % accuracy of a 90 % candidate: it kills it early, and the
    # rollout never advances after that.
    assert outputs[0].cause.kind is CauseKind.DETECTOR
    assert outputs[0].cause.action is Action.KILL
    assert all(o.cause.kind is not CauseKind.ROLLOUT for o in outputs)
    snap: Any = engine.snapshot()
    assert snap["flags"]["ranker"]["rollout"]["status"] == "ended"


def test_operator_pause_resume_and_kill_steer_the_rollout(
    good: tuple[Config, list[Event]],
) -> None:
    """The control interface (Engine.apply_command): pause stops advances, resume re-enables
    them, a manual kill of the candidate ends the rollout."""
    from driftswitch.streams.contract.commands import Command

    cfg, events = good
    engine = Engine(cfg)
    pause = Command(action="pause", flag="ranker", actor="alice", reason="investigating")
    assert engine.apply_command(pause, ts=events[0].ts) is not None
    paused = [e.event for e in engine.process(events[:28_000]).outputs]
    assert paused == []  # enough evidence for an advance, but paused
    snap: Any = engine.snapshot()
    assert snap["flags"]["ranker"]["rollout"]["paused"] is True
    assert snap["flags"]["ranker"]["rollout"]["gates"]["non_inferior"] is True
    resume = Command(action="resume", flag="ranker", actor="alice", reason="all clear")
    assert engine.apply_command(resume, ts=events[28_000].ts) is not None
    # Resuming restarts the step's clock: the advance waits out min_duration (30 s) again.
    resumed = [e.event for e in engine.process(events[28_000:40_000]).outputs]
    assert resumed[0].cause.action is Action.ADVANCE
    assert resumed[0].ts >= events[28_000].ts + 30
    kill = Command(action="kill", flag="ranker", variant="candidate", actor="bob", reason="x")
    assert engine.apply_command(kill, ts=events[40_000].ts) is not None
    after = [e.event for e in engine.process(events[40_000:]).outputs]
    assert after == []
    snap = engine.snapshot()
    assert snap["flags"]["ranker"]["rollout"]["status"] == "ended"


def test_adopting_a_published_state_resumes_at_its_step(
    good: tuple[Config, list[Event]],
) -> None:
    """A worker without a snapshot adopts the flags topic: the rollout continues from there."""
    cfg, events = good
    first = Engine(cfg)
    changes = [e.event for e in first.process(events[:28_000]).outputs]
    assert changes[-1].served_weights()["candidate"] == 30
    restarted = Engine(cfg)
    assert isinstance(changes[-1], FlagChangeEvent)
    assert restarted.adopt(changes[-1])
    snap: Any = restarted.snapshot()
    assert (
        snap["flags"]["ranker"]["rollout"]["step"],
        snap["flags"]["ranker"]["rollout"]["percent"],
    ) == (1, 30)
    # A new phase: the published change was decided in phase 1, the first worker may have run
    # phase 2, so the restarted one spends from phase 3 on.
    assert snap["flags"]["ranker"]["rollout"]["phase"] == 3
    later = [e.event for e in restarted.process(events[28_000:]).outputs]
    # The next advance goes from 30 to 60, not from the config's first step.
    assert isinstance(later[0], FlagChangeEvent)
    assert later[0].version == changes[-1].version + 1
    assert later[0].served_weights() == {"control": 40, "candidate": 60}
    assert later[0].cause.evidence["step"] == 1


def test_a_changed_plan_starts_at_the_live_weights(good: tuple[Config, list[Event]]) -> None:
    """Config reload (Engine.reconfigure) with a new plan keeps the weights in force."""
    cfg, events = good
    engine = Engine(cfg)
    engine.process(events[:28_000])
    assert engine.state("ranker").served_weights()["candidate"] == 30
    text = config_yaml(scenario(0.90, seed=5)) + ROLLOUT.format(on_harm="previous")
    engine.reconfigure(parse_config(text))
    snap: Any = engine.snapshot()
    position = snap["flags"]["ranker"]["rollout"]
    assert (position["step"], position["percent"], position["on_harm"]) == (1, 30, "previous")
    assert position["samples"] == {"candidate": 0, "control": 0}  # a fresh comparison
