"""The soak workload (``benchmarks/soak.py``): a steady pending count, a valid config and records
the worker accepts, and the RSS slope's least squares."""

from __future__ import annotations

from collections import Counter

import pytest

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.events import OutcomeEvent, PredictionEvent, decode_line
from driftswitch.streams.pipeline.join import JoinBuffer
from driftswitch.streams.tools.soak import VARIANTS, Soak, slope


def test_each_outcome_comes_right_after_the_prediction_pending_places_later() -> None:
    soak = Soak(predictions=50, pending=7)
    order = list(soak.order(0, soak.predictions))
    assert len(order) == soak.events == 50 + 43
    last_prediction = -1
    for is_prediction, i in order:
        if is_prediction:
            last_prediction = i
        else:
            assert last_prediction == i + soak.pending
    outcomes = Counter(i for is_prediction, i in order if not is_prediction)
    assert sorted(outcomes) == list(range(50 - 7))
    assert set(outcomes.values()) == {1}


def test_ranges_concatenate_to_the_whole_workload() -> None:
    soak = Soak(predictions=30, pending=4)
    whole = list(soak.records(0, 30))
    assert list(soak.records(0, 11)) + list(soak.records(11, 100)) == whole


def test_for_events_sizes_the_workload_to_the_events_asked_for() -> None:
    for events, pending in ((10_000_000, 200_000), (500_001, 50_000), (14, 7)):
        soak = Soak.for_events(events, pending, flags=3, rate=10.0)
        assert soak.events in (events, events + 1)
        assert soak.pending == pending
    with pytest.raises(ValueError, match="at least twice"):
        Soak.for_events(10, 6, flags=1, rate=1.0)


def test_the_join_holds_exactly_pending_predictions_from_the_first_outcome_on() -> None:
    soak = Soak(predictions=3_000, pending=400, flags=3, rate=50.0)
    ttl = 20.0  # seconds of event time: longer than the label delay (400 / 50 = 8 s)
    join = JoinBuffer(ttl=ttl, max_pending=1_000_000)
    held = []
    for _, _, value in soak.records(0, soak.predictions):
        event = decode_line(value)
        if isinstance(event, PredictionEvent):
            assert join.add_prediction(event.request_id, event.ts, event.variant, None) is None
            held.append(join.pending_predictions)
        else:
            assert isinstance(event, OutcomeEvent)
            assert join.add_outcome(event.request_id, event.ts, event.label) is not None
            assert join.pending_outcomes == 0
    # After prediction i (0-based), i + 1 predictions are held until the first outcome.
    assert held[: soak.pending] == list(range(1, soak.pending + 1))
    assert set(held[soak.pending :]) == {soak.pending + 1}  # before its outcome joins one
    assert join.pending_predictions == soak.pending
    assert join.joined == soak.predictions - soak.pending
    counters = join.counters()
    assert counters["expired_predictions"] == counters["evicted_predictions"] == 0
    # The joined ids are kept ttl seconds of event time after their outcome: warmup counts
    # the records until both that and the pending count are at their steady size.
    steady = soak.pending + round(ttl * soak.rate)
    assert soak.warmup(ttl) == steady + steady - soak.pending


def test_variants_follow_their_weights_and_labels_their_accuracy() -> None:
    soak = Soak(predictions=40_000, pending=10, flags=4)
    counts = Counter(soak.variant(i) for i in range(soak.predictions))
    for name, weight in VARIANTS:
        assert counts[name] / soak.predictions == pytest.approx(weight / 100, abs=0.01)
    first_half = range(soak.predictions // 2)
    right = sum(soak.label(i) == i & 1 for i in first_half)
    assert right / len(first_half) == pytest.approx(0.90, abs=0.01)
    # The first flag's candidate drifts in the second half; the other flags do not.
    second = range(soak.predictions // 2, soak.predictions)
    drifted = [i for i in second if i % soak.flags == 0 and soak.variant(i) == "candidate"]
    steady = [i for i in second if i % soak.flags == 1 and soak.variant(i) == "candidate"]
    assert sum(soak.label(i) == i & 1 for i in drifted) / len(drifted) == pytest.approx(
        0.75, abs=0.03
    )
    assert sum(soak.label(i) == i & 1 for i in steady) / len(steady) == pytest.approx(
        0.90, abs=0.03
    )


def test_the_config_parses_with_every_flag_and_its_guardrails() -> None:
    config = parse_config(Soak(predictions=10, pending=2, flags=5).config(ttl=400))
    assert sorted(config.flags) == [f"model-{f:02d}" for f in range(5)]
    assert config.join.ttl == 400
    for flag in config.flags.values():
        assert sorted(flag.variants) == sorted(name for name, _ in VARIANTS)
        assert [g.name for g in flag.guardrails] == [
            "candidate-accuracy",
            "candidate-vs-control",
            "challenger-latency",
        ]


def test_slope_is_the_least_squares_fit() -> None:
    xs = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert slope(xs, [5.0 + 2.5 * x for x in xs]) == pytest.approx(2.5)
    assert slope(xs, [7.0] * 5) == 0.0
    # Noise around a line: the fit of (0,1) (1,3) (2,2) (3,5) is 1.1 per unit.
    assert slope([0, 1, 2, 3], [1, 3, 2, 5]) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="two or more"):
        slope([1.0], [2.0])
    with pytest.raises(ValueError, match="distinct"):
        slope([1.0, 1.0], [2.0, 3.0])
