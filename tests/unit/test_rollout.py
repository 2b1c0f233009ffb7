"""The rollout state machine (streams/pipeline/rollout.py): gates, harm, hold, pause, shadow
promotion,
its config rules, its state round trip, and the assignment guarantee of its weights."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest

from driftswitch.streams.config.model import Config, parse_config
from driftswitch.streams.contract.assign import Fractional
from driftswitch.streams.contract.errors import ConfigError
from driftswitch.streams.contract.events import Action, AlertEvent, CauseKind, FlagChangeEvent
from driftswitch.streams.pipeline.rollout import (
    COMPLETE,
    ENDED,
    KILLED,
    STOPPED,
    Rollout,
    phase_alpha,
)
from driftswitch.streams.pipeline.transitions import initial_state

T0 = 1_767_225_600.0


def config(rollout: str, variants: str | None = None) -> Config:
    variants = variants or "control: {weight: 90, value: v1}, candidate: {weight: 10, value: v2}"
    return parse_config(
        f"""
flags:
  ranker:
    default: control
    variants: {{{variants}}}
    rollout: {{{rollout}}}
"""
    )


def machine(cfg: Config) -> tuple[Rollout, FlagChangeEvent]:
    flag = cfg.flags["ranker"]
    assert flag.rollout is not None
    return Rollout("ranker", flag, flag.rollout), initial_state("ranker", flag, T0)


def stream(
    p_control: float, p_candidate: float, n: int, seed: int, start: float = T0, gap: float = 0.1
) -> Iterable[tuple[int, float, float]]:
    """``n`` alternating (arm, error bit, ts) observations, one every ``gap`` seconds."""
    rng = random.Random(seed)
    for i in range(n):
        arm = i % 2
        p = p_candidate if arm else p_control
        yield arm, float(rng.random() >= p), start + i * gap


class Driver:
    """Feeds a rollout and applies its changes to the flag state, as the engine does."""

    def __init__(self, rollout: Rollout, state: FlagChangeEvent) -> None:
        self.rollout = rollout
        self.state = state
        self.outputs: list[FlagChangeEvent | AlertEvent] = []
        self.ts = 0.0

    def feed(self, observations: Iterable[tuple[int, float, float]], until: int = 0) -> None:
        """Feed in order; with ``until``, stop once that many flag changes were made."""
        for arm, x, ts in observations:
            if until and len(self.changes()) >= until:
                return
            self.ts = ts
            for out in self.rollout.observe(self.state, arm, x, ts):
                if isinstance(out, FlagChangeEvent):
                    self.state = out
                self.outputs.append(out)

    def changes(self) -> list[FlagChangeEvent]:
        return [o for o in self.outputs if isinstance(o, FlagChangeEvent)]


GOOD = "variant: candidate, steps: [10, 30, 60, 100], min_samples: 300, margin: 0.05"


def test_equal_candidate_advances_through_every_step_with_evidence() -> None:
    d = Driver(*machine(config(GOOD)))
    d.feed(stream(0.9, 0.9, 20_000, seed=1))
    changes = d.changes()
    assert [(c.version, c.cause.action) for c in changes] == [
        (2, Action.ADVANCE),
        (3, Action.ADVANCE),
        (4, Action.ADVANCE),
    ]
    assert [c.served_weights() for c in changes] == [
        {"control": 70, "candidate": 30},
        {"control": 40, "candidate": 60},
        {"control": 0, "candidate": 100},
    ]
    for step, c in enumerate(changes):
        cause = c.cause
        assert cause.kind is CauseKind.ROLLOUT
        assert (cause.variant, cause.compare_to, cause.detector) == (
            "candidate",
            "control",
            "sequential",
        )
        assert cause.samples["candidate"] >= 300
        assert cause.interval is not None
        assert cause.interval[0] > -0.05
        assert cause.statistic == cause.interval[0]
        assert cause.threshold == -0.05
        assert cause.evidence["step"] == step
        assert cause.evidence["to_step"] == step + 1
        gates = cause.evidence["gates"]
        assert isinstance(gates, dict)
        assert gates["non_inferior"] is True
        assert gates["samples"] == cause.samples["candidate"]
        # α spent over an unbounded number of phases: phase k gets α·6/(π²k²).
        assert cause.evidence["phase"] == step + 1
        assert cause.evidence["alpha"] == pytest.approx(0.05 * 6 / (math.pi**2 * (step + 1) ** 2))
    assert d.rollout.status == COMPLETE
    # Complete: more evidence changes nothing.
    before = len(d.outputs)
    d.feed(stream(0.9, 0.9, 2_000, seed=2, start=d.ts + 1))
    assert len(d.outputs) == before


def test_min_duration_delays_the_advance_to_the_first_observation_after_it() -> None:
    cfg = config(GOOD + ", min_duration: 30m")
    d = Driver(*machine(cfg))
    d.feed(stream(0.9, 0.9, 20_000, seed=1))  # 2,000 s of observations
    first = d.changes()[0]
    # Without the duration gate the same data advanced much earlier (previous test).
    quick = Driver(*machine(config(GOOD)))
    quick.feed(stream(0.9, 0.9, 20_000, seed=1))
    assert quick.changes()[0].ts < T0 + 1800
    assert first.ts == pytest.approx(T0 + 1800)  # the first observation at 30 minutes
    gates = first.cause.evidence["gates"]
    assert isinstance(gates, dict)
    assert gates["elapsed"] == pytest.approx(1800)


def test_harm_kills_the_candidate_and_ends_the_rollout() -> None:
    d = Driver(*machine(config(GOOD)))
    d.feed(stream(0.9, 0.7, 5_000, seed=3))
    (kill,) = d.changes()
    assert kill.cause.action is Action.KILL
    assert kill.cause.kind is CauseKind.ROLLOUT
    assert kill.variants["candidate"].killed
    assert kill.variants["candidate"].weight == 0
    assert kill.variants["control"].weight == 100
    assert kill.cause.interval is not None
    assert kill.cause.interval[1] < -0.05
    assert kill.cause.statistic == kill.cause.interval[1]
    assert d.rollout.status == KILLED


def test_harm_with_previous_goes_back_one_step_then_out_of_traffic() -> None:
    d = Driver(*machine(config(GOOD + ", on_harm: previous")))
    d.feed(stream(0.9, 0.9, 8_000, seed=1), until=2)
    assert [c.served_weights()["candidate"] for c in d.changes()] == [30, 60]
    d.feed(stream(0.9, 0.6, 20_000, seed=4, start=d.ts + 0.1))
    changes = d.changes()[2:]
    assert [(c.cause.action, c.served_weights()["candidate"]) for c in changes] == [
        (Action.ROLLBACK, 30),
        (Action.ROLLBACK, 10),
        (Action.ROLLBACK, 0),
    ]
    assert [c.cause.evidence["to_step"] for c in changes] == [1, 0, -1]
    assert not changes[-1].variants["candidate"].killed
    assert changes[-1].variants["control"].weight == 100
    assert d.rollout.status == STOPPED


def test_alpha_is_spent_over_phases_that_never_reset() -> None:
    # Phase k gets α·6/(π²k²): the levels of any number of phases add up to at most α.
    assert sum(phase_alpha(0.05, k) for k in range(1, 200_000)) == pytest.approx(0.05, rel=1e-5)
    assert sum(phase_alpha(0.05, k) for k in range(1, 200_000)) < 0.05
    d = Driver(*machine(config(GOOD + ", on_harm: previous")))
    d.feed(stream(0.9, 0.9, 8_000, seed=1), until=2)
    d.feed(stream(0.9, 0.6, 20_000, seed=4, start=d.ts + 0.1))
    changes = d.changes()
    # advance, advance, then three rollbacks: every decision in a phase of its own, and a
    # rollback does not return to an earlier phase's budget.
    assert [c.cause.evidence["phase"] for c in changes] == [1, 2, 3, 4, 5]
    assert [c.cause.evidence["alpha"] for c in changes] == [
        pytest.approx(phase_alpha(0.05, k)) for k in range(1, 6)
    ]
    assert d.rollout.status == STOPPED  # out of traffic: no phase after the fifth
    saved = d.rollout.to_state()
    assert saved["phase"] == 5
    rollout, _ = machine(config(GOOD + ", on_harm: previous"))
    assert rollout.restore(saved)
    assert rollout.phase == 5


def test_a_restart_without_snapshot_continues_after_the_published_phase() -> None:
    cfg = config(GOOD)
    d = Driver(*machine(cfg))
    d.feed(stream(0.9, 0.9, 8_000, seed=1), until=2)
    published = d.changes()[-1]
    assert published.cause.evidence["phase"] == 2
    fresh, _ = machine(cfg)
    fresh.align(published)  # a worker that lost its snapshot adopts the flags topic
    assert (fresh.step, fresh.phase) == (2, 4)  # phase 3 may have been begun by the first
    assert fresh.alpha == pytest.approx(phase_alpha(0.05, 4))


def test_the_step_that_leaves_control_no_traffic_ends_the_comparison() -> None:
    # At 100 % the control only receives late outcomes of earlier predictions: no comparison
    # there (the one-sample guardrails watch the candidate), so no decision from that stale
    # sample, however bad the candidate's outcomes look against it.
    plan = "variant: candidate, steps: [10, 100], min_samples: 300, margin: 0.05"
    d = Driver(*machine(config(plan)))
    d.feed(stream(0.9, 0.9, 8_000, seed=1), until=1)
    assert d.state.served_weights() == {"control": 0, "candidate": 100}
    assert d.rollout.status == COMPLETE
    d.feed(stream(0.9, 0.3, 4_000, seed=2, start=d.ts + 0.1))
    assert len(d.changes()) == 1
    assert d.outputs[-1] is d.changes()[0]
    summary = d.rollout.summary(paused=False)
    assert summary["comparison"] == "ended: compare_to gets no traffic"
    # With a holdout (last step 95: control keeps 5 %) the comparison goes on and kills.
    h = Driver(*machine(config(plan.replace("100", "95"))))
    h.feed(stream(0.9, 0.9, 8_000, seed=1), until=1)
    assert h.state.served_weights() == {"control": 5, "candidate": 95}
    h.feed(stream(0.9, 0.3, 4_000, seed=2, start=h.ts + 0.1))
    assert [c.cause.action for c in h.changes()] == [Action.ADVANCE, Action.KILL]


def test_inconclusive_step_holds_and_warns_and_resume_restarts_the_clock() -> None:
    cfg = config(GOOD + ", max_duration: 2m")
    d = Driver(*machine(cfg))
    # Sparse data: too little in two minutes to show non-inferiority within 5 points.
    d.feed(stream(0.9, 0.9, 600, seed=5, gap=1.0))
    hold, warn = d.outputs
    assert isinstance(hold, FlagChangeEvent)
    assert isinstance(warn, AlertEvent)
    assert hold.cause.action is Action.HOLD
    assert hold.paused
    assert hold.cause.kind is CauseKind.ROLLOUT
    assert hold.served_weights() == {"control": 90, "candidate": 10}  # weights unchanged
    assert hold.ts == pytest.approx(T0 + 121)
    assert warn.cause.action is Action.WARN
    assert warn.flag_version == hold.version
    assert (warn.guardrail, warn.variant) == ("rollout", "candidate")
    # Paused: plenty of evidence later still advances nothing.
    d.feed(stream(0.9, 0.9, 6_000, seed=6, start=d.ts + 1))
    assert len(d.outputs) == 2
    # An operator resumes: the step starts its clock again and advances on evidence.
    d.state = d.state.model_copy(update={"paused": False, "version": d.state.version + 1})
    d.feed(stream(0.9, 0.9, 6_000, seed=7, start=d.ts + 1, gap=0.01))
    assert d.outputs[2].cause.action is Action.ADVANCE


def test_manual_pause_blocks_advances_until_resumed() -> None:
    rollout, state = machine(config(GOOD))
    d = Driver(rollout, state.model_copy(update={"paused": True}))
    d.feed(stream(0.9, 0.9, 8_000, seed=1))
    assert d.outputs == []
    d.state = d.state.model_copy(update={"paused": False})
    d.feed(stream(0.9, 0.9, 1_000, seed=8, start=d.ts + 1))
    assert [c.cause.action for c in d.changes()] == [Action.ADVANCE]


def test_harm_acts_even_while_paused() -> None:
    rollout, state = machine(config(GOOD))
    d = Driver(rollout, state.model_copy(update={"paused": True}))
    d.feed(stream(0.9, 0.7, 5_000, seed=3))
    assert [c.cause.action for c in d.changes()] == [Action.KILL]
    assert d.changes()[0].paused


def test_a_killed_candidate_ends_the_rollout() -> None:
    rollout, state = machine(config(GOOD))
    variants = dict(state.variants)
    variants["candidate"] = variants["candidate"].model_copy(update={"killed": True, "weight": 0})
    variants["control"] = variants["control"].model_copy(update={"weight": 100})
    d = Driver(rollout, state.model_copy(update={"variants": variants, "version": 2}))
    d.feed(stream(0.9, 0.9, 8_000, seed=1))
    assert d.outputs == []
    assert rollout.status == ENDED


SHADOW = (
    "control: {weight: 100, value: v1}, candidate: {weight: 0, value: v2, shadow: true}",
    "variant: candidate, steps: [5, 50], min_samples: 300, margin: 0.05, promote_shadow: true",
)


def test_shadow_is_promoted_to_the_first_step_when_non_inferior() -> None:
    variants, plan = SHADOW
    d = Driver(*machine(config(plan, variants)))
    assert d.rollout.step == -1
    d.feed(stream(0.9, 0.9, 4_000, seed=9))
    promote = d.changes()[0]
    assert promote.cause.action is Action.ADVANCE
    assert promote.served_weights() == {"control": 95, "candidate": 5}
    assert promote.cause.evidence["step"] == -1
    assert promote.cause.evidence["to_step"] == 0
    assert promote.cause.evidence["percent"] == 0
    assert promote.cause.samples["candidate"] >= 300
    assert "shadow" in (promote.cause.reason or "")


def test_a_harmful_shadow_is_killed_and_never_promoted() -> None:
    variants, plan = SHADOW
    d = Driver(*machine(config(plan, variants)))
    d.feed(stream(0.9, 0.7, 8_000, seed=3))
    (kill,) = d.changes()
    assert kill.cause.action is Action.KILL
    assert kill.served_weights() == {"control": 100, "candidate": 0}
    assert kill.variants["candidate"].killed


def test_state_round_trip_continues_exactly() -> None:
    cfg = config(GOOD + ", max_duration: 1h")
    whole = Driver(*machine(cfg))
    obs = list(stream(0.9, 0.9, 12_000, seed=1))
    whole.feed(obs)
    first = Driver(*machine(cfg))
    first.feed(obs[:5_001])
    saved = first.rollout.to_state()
    rollout, _ = machine(cfg)
    assert rollout.restore(saved)
    second = Driver(rollout, first.state)
    second.feed(obs[5_001:])
    assert first.outputs + second.outputs == whole.outputs
    # A changed plan starts afresh.
    other, _ = machine(config(GOOD.replace("300", "400")))
    assert not other.restore(saved)


@pytest.mark.slow
def test_ramp_moves_users_only_toward_the_candidate() -> None:
    """flagd fractional assignment of 20,000 users through the whole ramp (contract/assign.py)."""
    variants = (
        "other: {weight: 10, value: v3}, control: {weight: 80, value: v1}, "
        "candidate: {weight: 10, value: v2}"
    )
    rollout, start = machine(config(GOOD.replace("100]", "90]"), variants))
    d = Driver(rollout, start)
    d.feed(stream(0.9, 0.9, 20_000, seed=1))
    states = [start, *d.changes()]
    assert [s.served_weights()["candidate"] for s in states] == [10, 30, 60, 90]
    keys = [f"user-{i}" for i in range(20_000)]
    before = {k: Fractional.from_event(states[0]).variant(k) for k in keys}
    for s in states[1:]:
        after = {k: Fractional.from_event(s).variant(k) for k in keys}
        moved = {(before[k], after[k]) for k in keys if before[k] != after[k]}
        assert moved == {("control", "candidate")}
        share = sum(v == "candidate" for v in after.values()) / len(keys)
        assert share == pytest.approx(s.served_weights()["candidate"] / 100, abs=0.015)
        assert all(after[k] == "other" for k in keys if before[k] == "other")
        before = after


@pytest.mark.parametrize(
    ("rollout", "variants", "problem"),
    [
        ("variant: nosuch, steps: [10]", None, "rollout.variant: variant 'nosuch' does not exist"),
        ("variant: control, steps: [90]", None, "cannot be compared to itself"),
        ("variant: candidate, compare_to: x, steps: [10]", None, "variant 'x' does not exist"),
        ("variant: candidate, steps: [10, 10, 20]", None, "steps[1]: steps must increase"),
        ("variant: candidate, steps: [5, 20]", None, "steps[0]: the first step (5) must equal"),
        ("variant: candidate, steps: [10], metric: score", None, "rollout.metric: a rollout"),
        (
            "variant: candidate, steps: [10], min_duration: 1h, max_duration: 10m",
            None,
            "max_duration must be at least min_duration",
        ),
        ("variant: candidate, steps: [10], promote_shadow: true", None, "is not a shadow"),
        (
            "variant: candidate, steps: [5]",
            "control: {weight: 100, value: v1}, candidate: {weight: 0, value: v2, shadow: true}",
            "set `promote_shadow: true`",
        ),
        (
            "variant: candidate, steps: [10, 100]",
            "control: {weight: 80, value: v1}, candidate: {weight: 10, value: v2}, "
            "other: {weight: 10, value: v3}",
            "steps[1]: the last step (100) leaves no room",
        ),
        (
            "variant: candidate, compare_to: other, steps: [10]",
            "candidate: {weight: 10, value: v2}, control: {weight: 80, value: v1}, "
            "other: {weight: 10, value: v3}",
            "must be neighbours in the assignment order",
        ),
    ],
    ids=[
        "unknown-variant",
        "candidate-is-default",
        "unknown-compare-to",
        "steps-not-increasing",
        "first-step-not-weight",
        "metric-without-comparison",
        "max-below-min-duration",
        "promote-non-shadow",
        "shadow-without-promote",
        "last-step-too-big",
        "not-neighbours",
    ],
)
def test_config_problems_name_the_path(rollout: str, variants: str | None, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(rollout, variants)
    assert any(problem in p and "flags.ranker.rollout" in p for p in err.value.problems), (
        err.value.problems
    )
    assert all(p.startswith("<config>:") for p in err.value.problems)
