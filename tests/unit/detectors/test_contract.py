"""The contract every registered one-sample detector honours (detectors/base.py).

One suite, parametrised over ``registry.kinds()`` (two-sample kinds, ``two_sample = True``, have
their own contract in their test files):

- a constant stream never alarms;
- a seeded stream with a change alarms first at a golden index;
- bad parameters are rejected with a ``ValueError`` whose message says what is allowed;
- ``to_state`` → JSON → ``registry.restore`` continues exactly like the original, wherever the
  stream is cut (Hypothesis).

Every one-sample kind needs an entry in ``CASES``; a kind without one fails the suite.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftswitch.detectors import registry


def bernoulli_stream(
    seed: int, before: float, after: float, change: int = 3000, n: int = 6000
) -> list[float]:
    """Error bits: error rate ``before`` up to ``change``, ``after`` from then on (seeded)."""
    rng = np.random.default_rng(seed)
    rate = np.where(np.arange(n) < change, before, after)
    return (rng.random(n) < rate).astype(float).tolist()


def gaussian_stream(
    seed: int, mean: float, std: float, new_mean: float, change: int = 2000, n: int = 4000
) -> list[float]:
    """Normal values with a mean shift at ``change`` (seeded)."""
    rng = np.random.default_rng(seed)
    loc = np.where(np.arange(n) < change, mean, new_mean)
    return rng.normal(loc, std).tolist()


@dataclass(frozen=True)
class Case:
    """How to exercise one detector kind."""

    #: Constructor parameters (without ``kind``).
    params: dict[str, Any]
    #: A seeded stream with a change the detector must find.
    stream: Callable[[], list[float]]
    #: Index (0-based) of the event after which ``drift_detected`` is first true.
    first_alarm: int
    #: The value of the constant stream that must never alarm.
    constant: float = 0.0
    #: Parameter sets that must be rejected, each with a regex the ValueError message matches.
    bad: tuple[tuple[dict[str, Any], str], ...] = field(default_factory=tuple)


CASES: dict[str, Case] = {
    "cusum": Case(
        params={"baseline": 0.90, "target": 0.80, "arl0": 10_000},
        stream=lambda: bernoulli_stream(11, 0.10, 0.20),
        first_alarm=3048,
        bad=(
            ({"baseline": 1.2, "target": 0.8}, "baseline must be strictly between 0 and 1"),
            ({"baseline": 0.8, "target": 0.9}, r"target \(0.9\) must be below baseline"),
            ({"baseline": 0.9}, "exactly one of target"),
            ({"baseline": 0.9, "target": 0.8, "arl0": 1}, "arl0 must be between 10 and 1e9"),
            ({"target": 0.8}, "target needs a given baseline"),
            ({"drop": 0.1}, "give baseline, or warmup"),
            ({"baseline": 0.9, "target": 0.8, "warmup": 100}, "either baseline or warmup"),
        ),
    ),
    "cusum_mean": Case(
        params={"mean": 100.0, "std": 10.0, "shift": 0.5, "arl0": 10_000},
        stream=lambda: gaussian_stream(5, 100.0, 10.0, 106.0),
        first_alarm=2022,
        constant=100.0,
        bad=(
            ({"shift": 0.0, "mean": 0.0, "std": 1.0}, r"shift must be .* in \(0, 10\]"),
            ({"shift": 1.0, "mean": 0.0}, "give both mean and std"),
            ({"shift": 1.0, "mean": 0.0, "std": -1.0}, "std must be a positive"),
            ({"shift": 1.0}, "give mean and std, or warmup"),
        ),
    ),
    "glr": Case(
        params={"baseline": 0.90, "min_drop": 0.05, "arl0": 10_000},
        stream=lambda: bernoulli_stream(11, 0.10, 0.20),
        first_alarm=3054,
        bad=(
            ({"min_drop": 0.0, "baseline": 0.9}, "min_drop must be an accuracy drop"),
            ({"min_drop": 0.95, "baseline": 0.9}, r"min_drop \(0.95\) must be smaller"),
            ({"min_drop": 0.05, "baseline": 0.9, "arl0": 5}, "arl0 must be between"),
            ({"min_drop": 0.05}, "give baseline, or warmup"),
            ({"min_drop": 0.05, "warmup": 1}, "warmup ≥ 2"),
        ),
    ),
    # river detectors (detectors/river.py): default parameters, error bits, river's own behaviour.
    "adwin": Case(
        params={},
        stream=lambda: bernoulli_stream(11, 0.10, 0.20),
        first_alarm=3263,
        bad=(({"delta": 2}, r"delta must be a number in \(0, 1\)"),),
    ),
    "page_hinkley": Case(
        params={},
        stream=lambda: bernoulli_stream(11, 0.10, 0.20),
        first_alarm=3436,
        bad=(({"threshold": 0}, "threshold must be a number > 0"),),
    ),
    "ddm": Case(
        params={},
        stream=lambda: bernoulli_stream(11, 0.10, 0.20),
        first_alarm=60,  # a false alarm in the young stream
        bad=(({"drift_threshold": 1.0}, r"drift_threshold \(1.0\) must be >= warning_threshold"),),
    ),
    "eddm": Case(
        params={},
        stream=lambda: bernoulli_stream(11, 0.10, 0.20),
        first_alarm=239,  # EDDM raises many false alarms
        bad=(({"alpha": 0.8, "beta": 0.9}, r"alpha \(0.8\) must be >= beta \(0.9\)"),),
    ),
    "hddm_a": Case(
        params={},
        stream=lambda: bernoulli_stream(11, 0.10, 0.20),
        first_alarm=3275,
        bad=(({"drift_confidence": 0}, r"drift_confidence must be a number in \(0, 1\)"),),
    ),
    "hddm_w": Case(
        params={},
        stream=lambda: bernoulli_stream(11, 0.10, 0.30),
        first_alarm=3065,
        bad=(({"lambda_val": 1.5}, r"lambda_val must be a number in \(0, 1\)"),),
    ),
    "fhddm": Case(
        params={},
        stream=lambda: bernoulli_stream(11, 0.10, 0.30),
        first_alarm=3068,
        bad=(({"short_window_size": 100}, "short_window_size .* must be < sliding_window_size"),),
    ),
    "kswin": Case(  # ~600 µs per update: a short continuous stream
        params={"seed": 1, "alpha": 0.0001},
        stream=lambda: gaussian_stream(7, 0.0, 1.0, 3.0, change=300, n=500),
        first_alarm=311,
        bad=(({"window_size": 40}, "window_size must be an integer >= 60"),),
    ),
    # Label-free drift (detectors/drift.py): first window after the shift at 2,000.
    "psi": Case(
        params={"reference_size": 500, "window": 100, "arl0": 10_000},
        stream=lambda: gaussian_stream(5, 0.0, 1.0, 0.5),
        first_alarm=2099,
        bad=(({"arl0": 50}, r"arl0 must be a number of values > window \(500\)"),),
    ),
    "js": Case(
        params={"reference_size": 500, "window": 100, "arl0": 10_000},
        stream=lambda: gaussian_stream(5, 0.0, 1.0, 0.5),
        first_alarm=2099,
        bad=(({"bins": 1}, "bins must be an integer >= 2"),),
    ),
    "ks": Case(
        params={"reference_size": 500, "window": 100, "arl0": 10_000},
        stream=lambda: gaussian_stream(5, 0.0, 1.0, 0.5),
        first_alarm=2099,
        bad=(({"threshold": -1}, "threshold must be a number > 0 or null"),),
    ),
    # Interleaved impressions (1 = a loss for the variant): even, then losing 70 % from 3,000.
    "interleaving": Case(
        params={"alpha": 0.01, "tuning_n": 1000},
        stream=lambda: bernoulli_stream(11, 0.5, 0.7),
        first_alarm=3336,
        bad=(({"tuning_n": 3}, "tuning_n must be an integer >= 10"),),
    ),
    # p99 of N(100, 10) ≈ 123 → N(130, 10) ≈ 153 against 140: the first all-new window.
    "latency_quantile": Case(
        params={"threshold": 140.0, "window": 200},
        stream=lambda: gaussian_stream(3, 100.0, 10.0, 130.0),
        first_alarm=2199,
        constant=100.0,
        bad=(
            ({"threshold": 0}, "threshold must be a number > 0"),
            ({"threshold": 140.0, "quantile": 99}, r"quantile must be a number in \(0, 1\)"),
        ),
    ),
}


def _one_sample_kinds() -> list[str]:
    return [k for k in registry.kinds() if not registry.detector_class(k).two_sample]


ONE_SAMPLE = _one_sample_kinds()
#: Kinds whose long runs (GLR's window scan, KSWIN's KS test, HDDM's bounds, the Gaussian CUSUM's
#: calibration) make these checks slow: they run in the full suite, not with -m "not slow".
SLOW_KINDS = frozenset({"glr", "kswin", "hddm_a", "hddm_w", "cusum_mean"})
ONE_SAMPLE_PARAMS = [
    pytest.param(k, marks=pytest.mark.slow) if k in SLOW_KINDS else k for k in ONE_SAMPLE
]
#: The interleaving detector's statistic is its interval's upper end, found by bisection each time
#: it is read; the round trip reads it after every event, so that check is slow too.
ROUND_TRIP_PARAMS = [
    pytest.param(k, marks=pytest.mark.slow) if k in SLOW_KINDS | {"interleaving"} else k
    for k in ONE_SAMPLE
]


def _case(kind: str) -> Case:
    if kind not in CASES:
        pytest.fail(f"registered detector kind {kind!r} has no entry in CASES (test_contract.py)")
    return CASES[kind]


def _build(kind: str) -> Any:
    return registry.create({"kind": kind, **_case(kind).params})


def test_every_one_sample_kind_has_a_case() -> None:
    assert sorted(set(ONE_SAMPLE) - set(CASES)) == []
    assert sorted(set(CASES) - set(ONE_SAMPLE)) == []


@pytest.mark.parametrize("kind", ONE_SAMPLE_PARAMS)
def test_constant_stream_never_alarms(kind: str) -> None:
    det = _build(kind)
    value = _case(kind).constant
    alarms = []
    for i in range(5000):
        det.update(value)
        if det.drift_detected:
            alarms.append(i)
    assert alarms == []
    assert det.n == 5000


@pytest.mark.parametrize("kind", ONE_SAMPLE_PARAMS)
def test_golden_first_alarm(kind: str) -> None:
    case = _case(kind)
    det = _build(kind)
    first = None
    for i, x in enumerate(case.stream()):
        det.update(x)
        if det.drift_detected:
            first = i
            break
    assert first == case.first_alarm
    evidence = det.explain()
    assert evidence["detector"] == kind
    json.dumps(evidence)  # plain data


@pytest.mark.parametrize("kind", ONE_SAMPLE)
def test_bad_parameters_are_rejected(kind: str) -> None:
    case = _case(kind)
    assert case.bad, f"{kind}: list at least one rejected parameter set"
    for params, pattern in case.bad:
        with pytest.raises(ValueError, match=pattern):
            registry.create({"kind": kind, **params})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) bogus .* allowed: "):
        registry.create({"kind": kind, **case.params, "bogus": 1})


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("kind", ROUND_TRIP_PARAMS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_state_round_trip_continues_exactly(kind: str, data: st.DataObject) -> None:
    case = _case(kind)
    stream = case.stream()
    # Cut anywhere, including before the change, right after the first alarm and near the end.
    cut = data.draw(st.integers(0, len(stream) - 1), label="cut")
    original = _build(kind)
    for x in stream[:cut]:
        original.update(x)
    restored = registry.restore(json.loads(json.dumps(original.to_state())))
    assert type(restored) is type(original)
    assert restored.n == original.n
    for x in stream[cut:]:
        original.update(x)
        restored.update(x)
        assert restored.drift_detected == original.drift_detected
        assert _same(restored.statistic, original.statistic)
        assert _same(restored.threshold, original.threshold)
        assert restored.n == original.n
    assert json.dumps(restored.to_state()) == json.dumps(original.to_state())


@pytest.mark.parametrize("kind", ONE_SAMPLE_PARAMS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_update_until_alarm_stops_where_one_by_one_alarms(kind: str, data: st.DataObject) -> None:
    """Batches cut anywhere (a few long ones, or many short ones): each call stops at the first
    alarm and reports its index, and the state after every call — at an alarm or at the end of
    a batch — is the one ``update`` leaves after the same observations."""
    stream = _case(kind).stream()
    if data.draw(st.booleans(), label="short batches"):
        step = data.draw(st.integers(1, 24), label="step")
        cuts = list(range(step, len(stream), step))
    else:
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=6))))
    ends = {hi - 1 for hi in [*cuts, len(stream)]}
    one = _build(kind)
    want = []
    states: dict[int, str] = {}
    for i, x in enumerate(stream):
        one.update(x)
        if one.drift_detected:
            want.append(i)
        if one.drift_detected or i in ends:
            states[i] = json.dumps(one.to_state())
    batched = _build(kind)
    got: list[int] = []
    for lo, hi in itertools.pairwise([0, *cuts, len(stream)]):
        start = lo
        while start < hi:
            k = batched.update_until_alarm(stream[start:hi])
            if k is None:
                assert not batched.drift_detected
                assert json.dumps(batched.to_state()) == states[hi - 1], hi - 1
                break
            assert batched.drift_detected
            got.append(start + k)
            assert json.dumps(batched.to_state()) == states[start + k], start + k
            start += k + 1
    assert got == want
    assert batched.n == one.n
