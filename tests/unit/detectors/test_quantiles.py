"""Streaming quantile sketch (relative-error guarantee, bounded memory) and `latency_quantile`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftswitch.detectors import registry
from driftswitch.detectors.quantiles import LatencyQuantile, QuantileSketch


@pytest.mark.parametrize("accuracy", [0.01, 0.005, 0.05], ids=["1%", "0.5%", "5%"])
@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: rng.lognormal(4.0, 1.0, 50_000),
        lambda rng: rng.pareto(1.5, 50_000) * 10.0,
        lambda rng: rng.exponential(0.02, 50_000),
    ],
    ids=["lognormal", "pareto", "exponential-seconds"],
)
def test_quantiles_within_the_stated_relative_error(
    accuracy: float, draw: Callable[[np.random.Generator], np.ndarray]
) -> None:
    rng = np.random.default_rng(17)
    values = draw(rng)
    sketch = QuantileSketch(relative_accuracy=accuracy)
    sketch.add_many(values)
    for q in (0.5, 0.9, 0.95, 0.99, 0.999):
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(sketch.quantile(q) - exact) <= accuracy * exact * (1 + 1e-9)


def test_memory_is_bounded_by_the_value_range_not_the_count() -> None:
    rng = np.random.default_rng(3)
    sketch = QuantileSketch(relative_accuracy=0.01)
    for _ in range(20):
        sketch.add_many(rng.lognormal(4.0, 1.0, 50_000))
    assert sketch.count == 1_000_000
    # Values spanning ~e^±5 around e^4 fit in ~ln(e^10)/ln(1.0202) ≈ 500 buckets.
    assert sketch.buckets < 600
    assert len(json.dumps(sketch.to_state())) < 15_000


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=0.0, max_value=1e9, allow_nan=False), min_size=1, max_size=200
    ),
    q=st.floats(min_value=0.0, max_value=1.0),
)
def test_add_and_add_many_agree_and_respect_the_bound(values: list[float], q: float) -> None:
    single, batch = QuantileSketch(), QuantileSketch()
    for v in values:
        single.add(v)
    batch.add_many(values)
    exact = float(np.quantile(np.asarray(values), q, method="lower"))
    for sketch in (single, batch):
        estimate = sketch.quantile(q)
        if exact <= sketch.min_value:
            assert estimate <= sketch.min_value * 1.02
        else:
            assert abs(estimate - exact) <= 0.01 * exact * (1 + 1e-9) + 1e-12
    assert single.quantile(q) == pytest.approx(batch.quantile(q), rel=0.0201)


def test_every_path_puts_every_value_in_the_same_bucket_however_batched() -> None:
    """Values on and next to bucket bounds, and random ones, counted one by one, in small
    batches (counted one by one inside add_many) and in large ones (numpy): the same counts, so
    a live worker's small batches and a backtest's large ones give the same sketch."""
    rng = np.random.default_rng(5)
    probe = QuantileSketch()
    bounds = [probe.min_value * probe._gamma**k for k in range(0, probe._max_key + 1, 7)]
    values = [0.0, probe.min_value, probe.max_value, probe.max_value * 10]
    for b in bounds:
        values += [b, math.nextafter(b, math.inf), math.nextafter(b, 0.0)]
    values += rng.lognormal(4.0, 3.0, 5_000).tolist()
    rng.shuffle(values)
    one, small, large, array = (QuantileSketch() for _ in range(4))
    for v in values:
        one.add(v)
    for i in range(0, len(values), 7):
        small.add_many(values[i : i + 7])
    large.add_many(values)
    array.add_many(np.asarray(values))
    assert one.to_state() == small.to_state() == large.to_state() == array.to_state()
    assert one.count == len(values)


def test_a_bucket_holds_the_values_up_to_its_bound() -> None:
    sketch = QuantileSketch(relative_accuracy=0.01)
    bound = sketch.min_value * sketch._gamma**100  # bucket 100's upper bound
    for x, key in ((bound, 100), (math.nextafter(bound, math.inf), 101), (sketch.min_value, 0)):
        for add in (
            sketch.add,
            lambda v: sketch.add_many([v]),
            lambda v: sketch.add_many([v] * 80),
        ):
            before = dict(sketch._counts)
            add(x)
            assert {k for k in sketch._counts if sketch._counts[k] != before.get(k)} == {key}


def test_merge_is_exact() -> None:
    rng = np.random.default_rng(8)
    a_values, b_values = rng.lognormal(3, 1, 1000), rng.lognormal(5, 1, 1000)
    a, b, both = QuantileSketch(), QuantileSketch(), QuantileSketch()
    a.add_many(a_values)
    b.add_many(b_values)
    both.add_many(np.concatenate([a_values, b_values]))
    a.merge(b)
    assert a.to_state() == both.to_state()
    with pytest.raises(ValueError, match="same accuracy and range"):
        a.merge(QuantileSketch(relative_accuracy=0.02))


def test_sketch_rejects_negative_and_non_finite_values() -> None:
    sketch = QuantileSketch()
    with pytest.raises(ValueError, match="finite values >= 0"):
        sketch.add(-1.0)
    with pytest.raises(ValueError, match="finite values >= 0"):
        sketch.add_many([1.0, math.inf])
    assert sketch.count == 0
    assert math.isnan(sketch.quantile(0.5))


def _latency_stream(seed: int, change_at: int, factor: float, count: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(4.0, 0.4, count)  # p99 ≈ 138 ms
    values[change_at:] *= factor
    return values


def test_p99_regression_alarms_at_golden_index() -> None:
    values = _latency_stream(1, 6000, 1.6, 12_000)
    detector = registry.create({"kind": "latency_quantile", "threshold": 200.0, "window": 1000})
    alarms = []
    for i, x in enumerate(values):
        detector.update(float(x))
        if detector.drift_detected:
            alarms.append(i)
    assert alarms == [6999, 7999, 8999, 9999, 10999, 11999]
    evidence = detector.explain()
    last = evidence["last_window"]
    assert isinstance(last, dict)
    assert last["count"] == 1000
    assert evidence["alarms"] == 6
    json.dumps(evidence)


def test_steady_latency_under_the_slo_never_alarms() -> None:
    detector = LatencyQuantile(threshold=200.0, window=1000)
    assert not detector.update_many(_latency_stream(2, 0, 1.0, 50_000))
    assert 120 < detector.statistic < 160


def test_update_many_matches_update() -> None:
    values = _latency_stream(4, 3000, 1.5, 8000)
    single = LatencyQuantile(threshold=190.0, quantile=0.95, window=700)
    batched = LatencyQuantile(threshold=190.0, quantile=0.95, window=700)
    for start in range(0, len(values), 333):
        chunk = values[start : start + 333]
        hit = False
        for x in chunk:
            single.update(float(x))
            hit = hit or single.drift_detected
        assert batched.update_many(chunk) == hit
    assert batched.to_state() == single.to_state()


@settings(max_examples=20, deadline=None)
@given(cut=st.integers(min_value=0, max_value=3000))
def test_state_round_trip_continues_exactly(cut: int) -> None:
    values = _latency_stream(5, 1500, 1.7, 3000).tolist()
    original = LatencyQuantile(threshold=200.0, quantile=0.99, window=250)
    for x in values[:cut]:
        original.update(x)
    restored = registry.restore(json.loads(json.dumps(original.to_state())))
    for x in values[cut:]:
        original.update(x)
        restored.update(x)
        assert restored.drift_detected == original.drift_detected
        assert restored.statistic == original.statistic
    assert restored.to_state() == original.to_state()
    assert restored.explain() == original.explain()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "needs parameter(s) threshold"),
        ({"threshold": 0}, "threshold must be a number > 0"),
        ({"threshold": 100, "quantile": 99}, "quantile must be a number in (0, 1)"),
        ({"threshold": 100, "window": 0}, "window must be an integer >= 1"),
        ({"threshold": 100, "relative_accuracy": 0.5}, "relative_accuracy must lie in (0, 0.1]"),
        ({"threshold": 100, "percentile": 99}, "unknown parameter(s) percentile"),
    ],
    ids=["missing", "threshold", "quantile", "window", "accuracy", "unknown"],
)
def test_bad_parameters_are_rejected(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        registry.create({"kind": "latency_quantile", **params})
