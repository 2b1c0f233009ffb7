"""Label-free drift detectors (psi, js, ks): calibrated false-alarm rate, power, batching, state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftswitch.detectors import registry
from driftswitch.detectors.drift import ReferenceDrift, js_distance, ks_distance, psi

KINDS = ["psi", "js", "ks"]


def _make(kind: str, **params: object) -> ReferenceDrift:
    detector = registry.create({"kind": kind, **params})
    assert isinstance(detector, ReferenceDrift)
    return detector


def _false_alarm_rate(kind: str, detectors: int, windows: int, **params: object) -> float:
    """Fraction of windows that alarmed on unchanged streams, over independent references."""
    alarms = 0
    for seed in range(detectors):
        rng = np.random.default_rng(1000 + seed)
        detector = _make(kind, **params)
        detector.update_many(rng.beta(2.0, 5.0, size=detector.reference_size))  # score-like
        for _ in range(windows):
            alarms += detector.update_many(rng.beta(2.0, 5.0, size=detector.window))
        assert detector.explain()["windows"] == windows
    return alarms / (detectors * windows)


@pytest.mark.parametrize("kind", KINDS)
def test_calibrated_false_alarm_rate_meets_the_budget(kind: str) -> None:
    # arl0 = 1,000 values with windows of 100: at most 10 % of windows may alarm under no drift,
    # measured over 50 independent references × 100 windows (5,000 evaluations).
    rate = _false_alarm_rate(kind, 50, 100, reference_size=500, window=100, arl0=1000)
    measured_arl0 = 100 / rate
    assert measured_arl0 >= 0.9 * 1000
    assert rate > 0.05  # calibrated, not vacuous: close to the 10 % budget


def test_fixed_conventional_psi_cutoff_alarms_on_most_small_windows() -> None:
    # Why calibrate: PSI > 0.1 on 100-value windows flags a large share of unchanged windows.
    rate = _false_alarm_rate("psi", 10, 50, reference_size=500, window=100, threshold=0.1)
    assert rate > 0.3


@pytest.mark.parametrize(("kind", "expected"), [("psi", 2299), ("js", 2299), ("ks", 1099)])
def test_shift_is_detected_at_golden_index(kind: str, expected: int) -> None:
    rng = np.random.default_rng(42)
    stream = np.concatenate([rng.normal(0.0, 1.0, 1000), rng.normal(0.25, 1.0, 3000)])
    # A quarter-standard-deviation shift at value 1,000; windows end at 699, 899, 1099, ...
    detector = _make(kind, reference_size=500, window=200, arl0=20_000)
    first = None
    for i, x in enumerate(stream):
        detector.update(float(x))
        if detector.drift_detected:
            first = i
            break
    assert first == expected
    assert detector.statistic > detector.threshold


@pytest.mark.parametrize("kind", KINDS)
def test_constant_stream_never_alarms(kind: str) -> None:
    detector = _make(kind, reference_size=200, window=50, arl0=1000)
    assert not detector.update_many([0.5] * 5000)
    assert detector.statistic == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_update_many_matches_update(kind: str) -> None:
    rng = np.random.default_rng(9)
    stream = np.concatenate([rng.normal(0, 1, 1500), rng.normal(0.4, 1.3, 1500)])
    single = _make(kind, reference_size=300, window=100, arl0=5000)
    batched = _make(kind, reference_size=300, window=100, arl0=5000)
    alarms_single = []
    alarms_batched = []
    for start in range(0, len(stream), 137):
        chunk = stream[start : start + 137]
        hit = False
        for x in chunk:
            single.update(float(x))
            hit = hit or single.drift_detected
        alarms_single.append(hit)
        alarms_batched.append(batched.update_many(chunk))
        assert batched.drift_detected == single.drift_detected
    assert alarms_batched == alarms_single
    assert any(alarms_single)
    assert batched.to_state() == single.to_state()


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(KINDS), cut=st.integers(min_value=0, max_value=1200))
def test_state_round_trip_continues_exactly(kind: str, cut: int) -> None:
    rng = np.random.default_rng(5)
    stream = np.concatenate([rng.normal(0, 1, 600), rng.normal(0.8, 1, 600)]).tolist()
    original = _make(kind, reference_size=200, window=50, arl0=1000)
    for x in stream[:cut]:
        original.update(x)
    restored = registry.restore(json.loads(json.dumps(original.to_state())))
    for x in stream[cut:]:
        original.update(x)
        restored.update(x)
        assert restored.drift_detected == original.drift_detected
        assert restored.statistic == original.statistic
    assert restored.to_state() == original.to_state()


def test_statistics_on_known_histograms() -> None:
    r = np.array([0.5, 0.5])
    c = np.array([0.25, 0.75])
    assert float(psi(r, c)) == pytest.approx(0.25 * math.log(0.5) * -1 + 0.25 * math.log(1.5))
    assert float(ks_distance(r, c)) == pytest.approx(0.25)
    assert float(js_distance(r, r)) == 0.0
    assert float(js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0]))) == pytest.approx(1.0)


def test_memory_is_bounded_after_the_reference() -> None:
    detector = _make("psi", reference_size=100, window=50, bins=10, arl0=1000)
    detector.update_many(np.random.default_rng(0).normal(size=10_000))
    state = detector.to_state()
    assert state["reference_values"] == []
    edges = state["edges"]
    assert isinstance(edges, list)
    assert len(edges) == 9
    assert len(json.dumps(state)) < 2000


def test_threshold_unknown_until_reference_complete() -> None:
    detector = _make("js", reference_size=100, window=50, arl0=1000)
    detector.update_many([0.1] * 99)
    assert detector.threshold == math.inf
    assert detector.explain()["threshold"] is None
    detector.update(0.2)
    assert math.isfinite(detector.threshold)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window": 5}, "window must be an integer >= 10"),
        ({"bins": 1}, "bins must be an integer >= 2"),
        ({"reference_size": 100, "bins": 30}, "bins must be <= reference_size / 5 = 20"),
        ({"arl0": 400, "window": 500}, r"arl0 must be a number of values > window \(500\)"),
        ({"threshold": -1}, "threshold must be a number > 0 or null"),
        ({"alpha": 0.05}, r"unknown parameter\(s\) alpha"),
    ],
    ids=["window", "bins", "bins-vs-reference", "arl0", "threshold", "unknown"],
)
def test_bad_parameters_are_rejected(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry.create({"kind": "psi", **params})


def test_non_finite_values_are_rejected() -> None:
    detector = _make("ks")
    with pytest.raises(ValueError, match="finite"):
        detector.update(math.nan)
    with pytest.raises(ValueError, match="finite"):
        detector.update_many([1.0, math.inf])
