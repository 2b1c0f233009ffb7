"""Engine: a degrading candidate gets killed with the right cause; decisions do not depend on
batch boundaries or on a restart through to_state/from_state; bad input is rejected, not raised."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftswitch.streams.config.model import Config, parse_config
from driftswitch.streams.contract.events import (
    Action,
    AlertEvent,
    CauseKind,
    FlagChangeEvent,
    OutcomeEvent,
    PredictionEvent,
    VariantState,
)
from driftswitch.streams.pipeline.engine import Engine, Event, Result
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import ENGINE_GUARDRAILS

GUARDRAILS = ENGINE_GUARDRAILS

SCENARIO = Scenario(
    variants=(
        VariantSpec("control", weight=50, accuracy=0.9),
        VariantSpec("candidate", weight=50, accuracy=0.9, accuracy_after=0.7),
        VariantSpec("shadow", accuracy=0.85, error_rate=0.02, shadow=True),
    ),
    requests=2000,
    change_at=600,
    rate=50.0,
    label_delay=3.0,
    label_fraction=0.95,
    seed=11,
)


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(config_yaml(SCENARIO, GUARDRAILS))


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(simulate(SCENARIO))


def _outputs(results: Sequence[tuple[int, Result]]) -> list[tuple[int, dict[str, Any]]]:
    return [
        (offset + e.index, e.event.model_dump(mode="json"))
        for offset, r in results
        for e in r.outputs
    ]


def _run(
    config: Config, events: list[Event], cuts: Sequence[int], restart: bool
) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]:
    engine = Engine(config)
    bounds = [0, *sorted(set(cuts)), len(events)]
    results = []
    for lo, hi in itertools.pairwise(bounds):
        results.append((lo, engine.process(events[lo:hi])))
        if restart:
            engine = Engine.from_state(config, json.loads(json.dumps(engine.to_state())))
    return _outputs(results), json.loads(json.dumps(engine.to_state()))


def test_a_degrading_candidate_is_killed_with_the_evidence(
    config: Config, events: list[Event]
) -> None:
    engine = Engine(config)
    result = engine.process(events)
    assert result.rejections == []
    kills = [
        e
        for e in result.outputs
        if isinstance(e.event, FlagChangeEvent)
        and e.event.cause.action is Action.KILL
        and e.event.cause.variant == "candidate"
    ]
    assert len(kills) == 1
    kill = kills[0]
    event = kill.event
    assert isinstance(event, FlagChangeEvent)
    trigger = events[kill.index]
    assert isinstance(trigger, OutcomeEvent)  # a label decided it
    assert event.ts == trigger.ts
    assert event.ts > SCENARIO.start_ts + SCENARIO.change_at / SCENARIO.rate  # after the change
    cause = event.cause
    assert (cause.kind, cause.guardrail, cause.metric, cause.detector) == (
        CauseKind.DETECTOR,
        "candidate-accuracy",
        "accuracy",
        "cusum",
    )
    assert cause.statistic is not None
    assert cause.threshold is not None
    assert cause.statistic >= cause.threshold
    assert cause.samples["candidate"] >= 100
    assert cause.window is not None
    assert cause.window["last_ts"] == trigger.ts
    assert event.variants["candidate"] == VariantState(weight=0, killed=True, value="candidate")
    assert event.variants["control"].weight == 100
    assert engine.state("ranker") == event or engine.state("ranker").version > event.version
    # The exact, seeded decision (recomputed whenever the simulator or the detector changes).
    assert (kill.index, cause.samples) == (3123, {"candidate": 371})


def test_the_comparison_against_control_warns_with_its_interval(
    config: Config, events: list[Event]
) -> None:
    result = Engine(config).process(events)
    alerts = [e.event for e in result.outputs if isinstance(e.event, AlertEvent)]
    assert [a.guardrail for a in alerts] == ["candidate-vs-control"]
    interval = alerts[0].cause.interval
    assert interval is not None
    assert interval[1] < 0
    assert set(alerts[0].cause.samples) == {"candidate", "control"}


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 4 * SCENARIO.requests), max_size=4))
def test_restart_and_batch_boundaries_change_nothing(
    config: Config, events: list[Event], cuts: list[int]
) -> None:
    expected = _run(config, events, [], restart=False)
    assert _run(config, events, cuts, restart=True) == expected
    assert _run(config, events, cuts, restart=False) == expected


def test_tiny_batches_decide_like_one_batch(config: Config, events: list[Event]) -> None:
    every_7 = list(range(7, len(events), 7))
    assert _run(config, events, every_7, restart=False) == _run(config, events, [], False)


def _flag(engine: Engine) -> Any:
    snap: Any = engine.snapshot()
    return snap["flags"]["ranker"]


def _prediction(rid: str, flag: str = "ranker", variant: str = "control", **kw: Any) -> Event:
    return PredictionEvent(
        request_id=rid,
        flag=flag,
        variant=variant,
        ts=kw.pop("ts", 1.0),
        prediction="relevant",
        **kw,
    )


def test_unknown_flags_variants_and_duplicates_are_rejected_with_reasons(
    config: Config,
) -> None:
    engine = Engine(config)
    result = engine.process(
        [
            _prediction("a"),
            _prediction("b", flag="search"),
            _prediction("c", variant="champion"),
            OutcomeEvent(request_id="d", ts=1.0, label="x", flag="search"),
            OutcomeEvent(request_id="e", ts=1.0, label="x", flag="ranker", variant="nope"),
            _prediction("a"),
            OutcomeEvent(request_id="a", ts=2.0, label="relevant"),
            OutcomeEvent(request_id="a", ts=2.0, label="relevant"),
        ],
        positions=[f"off-{i}" for i in range(8)],
    )
    assert [(r.index, r.reason, r.position) for r in result.rejections] == [
        (1, "unknown_flag", "off-1"),
        (2, "unknown_variant", "off-2"),
        (3, "unknown_flag", "off-3"),
        (4, "unknown_variant", "off-4"),
        (5, "duplicate", "off-5"),
        (7, "duplicate", "off-7"),
    ]
    odd = engine.process([cast(Any, engine.state("ranker"))])
    assert [(r.index, r.reason) for r in odd.rejections] == [(0, "unsupported_event")]
    control = _flag(engine)["variants"]["control"]
    assert (control["predictions"], control["joined"], control["accuracy"]) == (1, 1, 1.0)
    assert engine.counters["duplicate"] == 2


def test_min_samples_gates_decisions_and_shows_no_decision_yet(events: list[Event]) -> None:
    strict = parse_config(
        config_yaml(SCENARIO, GUARDRAILS.replace("min_samples: 100", "min_samples: 100000"))
    )
    engine = Engine(strict)
    outputs = engine.process(events).outputs
    assert not any(e.event.cause.guardrail == "candidate-accuracy" for e in outputs)
    guardrail = _flag(engine)["guardrails"]["candidate-accuracy"]
    assert guardrail["state"] == "no decision yet"


def test_status_before_and_after(config: Config, events: list[Event]) -> None:
    engine = Engine(config)
    snap = _flag(engine)
    assert {g["state"] for g in snap["guardrails"].values()} == {"no decision yet"}
    engine.process(events)
    assert json.loads(json.dumps(engine.snapshot(), allow_nan=False)) == engine.snapshot()
    snap = _flag(engine)
    assert snap["guardrails"]["candidate-accuracy"]["state"] == "breached"
    shadow = snap["variants"]["shadow"]
    assert shadow["shadow"] is True
    assert shadow["predictions"] == SCENARIO.requests
    assert shadow["errors"] > 0
    assert shadow["labelled"] > 0
    assert snap["variants"]["candidate"]["killed"] is True


def test_adopt_takes_only_newer_versions(config: Config) -> None:
    engine = Engine(config)
    current = engine.state("ranker")
    manual = current.model_copy(update={"version": 5, "actor": "alice"})
    assert engine.adopt(manual)
    assert not engine.adopt(current)
    assert not engine.adopt(manual.model_copy(update={"flag": "unknown"}))
    assert engine.state("ranker").version == 5
    assert [s.version for s in engine.initial_states()] == [1]


EVERY_KIND = """\
      - {name: g-psi, variant: candidate, metric: score, action: warn,
         detector: {kind: psi, reference_size: 200, window: 100}}
      - {name: g-ks, variant: candidate, metric: score, action: warn, detector: {kind: ks}}
      - {name: g-lq, variant: candidate, metric: latency_ms, action: warn,
         detector: {kind: latency_quantile, threshold: 30, window: 100}}
      - {name: g-adwin, variant: candidate, metric: accuracy, action: warn,
         detector: {kind: adwin, delta: 0.05}}
      - {name: g-glr, variant: candidate, metric: accuracy, action: hold,
         detector: {kind: glr, min_drop: 0.1, baseline: 0.9}}
      - {name: g-ph, variant: shadow, metric: error_rate, action: warn,
         detector: {kind: page_hinkley}}
      - {name: g-seq-latency, variant: candidate, compare_to: control, metric: latency_ms,
         action: warn, detector: {kind: sequential}}
"""


@pytest.mark.slow
def test_every_detector_family_decides_the_same_across_restarts(events: list[Event]) -> None:
    config = parse_config(config_yaml(SCENARIO, EVERY_KIND))
    cuts = list(range(900, len(events), 900))
    expected = _run(config, events, [], restart=False)
    assert _run(config, events, cuts, restart=True) == expected
    fired = {out["cause"]["guardrail"] for _, out in expected[0]}
    assert {"g-glr", "g-adwin"} <= fired


def test_an_overflowing_regression_error_neither_crashes_nor_poisons_the_statistics() -> None:
    config = parse_config(
        """
flags:
  price:
    default: a
    task: regression
    variants:
      a: {weight: 50, value: 1}
      b: {weight: 50, value: 2}
    guardrails:
      - {name: mse, variant: b, metric: squared_error, action: warn, min_samples: 1,
         detector: {kind: cusum_mean, shift: 1.0, mean: 1.0, std: 1.0, arl0: 1000}}
"""
    )
    engine = Engine(config)
    # Validation now refuses numbers beyond 2^63 (events.py): built without it, the engine
    # still copes.
    events: list[Event] = [
        PredictionEvent.model_construct(
            request_id="r1",
            flag="price",
            variant="b",
            ts=1.0,
            prediction=1e200,
            score=None,
            latency_ms=None,
            error=None,
            served=True,
        ),
        OutcomeEvent(request_id="r1", ts=2.0, label=0),
        PredictionEvent(request_id="r2", flag="price", variant="b", ts=3.0, prediction=3.0),
        OutcomeEvent(request_id="r2", ts=4.0, label=2.0),
    ]
    result = engine.process(events)
    assert result.rejections == []
    stats = engine.snapshot()["flags"]["price"]["variants"]["b"]
    assert stats["mse"] == 1.0  # only the scoreable pair counts
    json.dumps(engine.to_state(), allow_nan=False)  # still strict JSON


def test_comparison_harm_is_a_level_that_acts_at_the_gate_and_after_each_cooldown() -> None:
    """Harm shown before ``min_samples`` is not dropped: it breaches at the first observation
    that meets the gate, and again after every ``cooldown`` while it stands."""
    from driftswitch.streams.pipeline.monitor import Monitor

    cfg = parse_config(
        """
flags:
  ranker:
    default: control
    variants: {control: {weight: 90, value: a}, candidate: {weight: 10, value: b}}
    guardrails:
      - name: vs-control
        variant: candidate
        compare_to: control
        metric: accuracy
        detector: {kind: sequential}
        min_samples: 50
        cooldown: 10s
        action: warn
"""
    )
    flag = cfg.flags["ranker"]
    mon = Monitor("ranker", flag, flag.guardrails[0])
    # Error bits: the control always right, the candidate always wrong, one pair per second.
    for i in range(200):
        mon.pending.append((0, 0.0, 2 * i, float(i)))
        mon.pending.append((1, 1.0, 2 * i + 1, float(i)))
    breaches = mon.flush()
    assert mon.detector.harm
    # Harm stood long before 50 candidate samples; the first breach is at the gate, the next
    # ones 10 s (the cooldown) apart while harm stands (at the control's observation of that
    # second, which comes first).
    assert [b.samples["candidate"] for b in breaches][:3] == [50, 59, 69]
    assert [b.ts for b in breaches] == [49.0 + 10 * k for k in range(len(breaches))]
    assert len(breaches) == 16  # ts 49, 59, ..., 199
    assert all(b.interval is not None and b.interval[1] < 0 for b in breaches)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    least=st.integers(1, 300),
    cooldown=st.sampled_from(["0s", "1s", "7s", "1h"]),
    cuts=st.lists(st.integers(1, 1999), max_size=6),
)
def test_comparison_harm_standing_decides_in_batches_as_one_at_a_time(
    seed: int, least: int, cooldown: str, cuts: list[int]
) -> None:
    """Once a comparison's harm stands, batches go to the detector up to each breach
    (``update_many_standing``): the same breaches, with the same evidence, and the same state
    as feeding one observation at a time, wherever the batches are cut."""
    import random

    from driftswitch.detectors.sequential import Sequential
    from driftswitch.streams.pipeline.monitor import Monitor

    cfg = parse_config(
        f"""
flags:
  ranker:
    default: control
    variants: {{control: {{weight: 90, value: a}}, candidate: {{weight: 10, value: b}}}}
    guardrails:
      - name: vs-control
        variant: candidate
        compare_to: control
        metric: accuracy
        detector: {{kind: sequential}}
        min_samples: {least}
        cooldown: {cooldown}
        action: warn
"""
    )
    flag = cfg.flags["ranker"]
    rng = random.Random(seed)
    pending = []
    for i in range(2000):
        arm = int(rng.random() < 0.3)
        pending.append((arm, float(rng.random() < (0.5 if arm else 0.1)), i, i / 20))

    def run(batched: bool) -> tuple[list[Any], Any]:
        mon = Monitor("ranker", flag, flag.guardrails[0])
        if not batched:
            mon.detector.update_many_standing = lambda arms, xs: False
        assert isinstance(mon.detector, Sequential)
        breaches = []
        for lo, hi in itertools.pairwise([0, *sorted(set(cuts)), len(pending)]):
            mon.pending.extend(pending[lo:hi])
            breaches += mon.flush()
        return breaches, mon.to_state()

    got, want = run(True), run(False)
    assert got == want
    assert len(want[0]) >= 1
