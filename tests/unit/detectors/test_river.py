"""river detectors by name: one meaning of x (1 = error), polarity quirks, evidence, state."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftswitch.detectors import registry
from driftswitch.detectors.river import ADWIN, RiverDetector, river_version

RIVER_KINDS = ["adwin", "ddm", "eddm", "fhddm", "hddm_a", "hddm_w", "kswin", "page_hinkley"]


def _bits(seed: int, p_before: float, p_after: float, change: int, count: int) -> list[int]:
    """Error bits: error rate ``p_before`` until ``change``, then ``p_after``."""
    rng = random.Random(seed)
    return [int(rng.random() < (p_before if i < change else p_after)) for i in range(count)]


def _alarms(kind: str, xs: list[int] | list[float], **params: object) -> list[int]:
    detector = registry.create({"kind": kind, **params})
    found = []
    for i, x in enumerate(xs):
        detector.update(x)
        if detector.drift_detected:
            found.append(i)
    return found


def test_every_river_kind_is_registered() -> None:
    kinds = registry.kinds()
    for kind in RIVER_KINDS:
        assert kind in kinds
        assert registry.detector_class(kind).two_sample is False


# Accuracy 0.90 → 0.80 at event 4,000 (error bits), seed 2024: river's measured behaviour.
DEGRADATION = {
    "adwin": [4255],
    "ddm": [42, 1059, 4503],  # DDM alarms early in a young stream
    "eddm": [388, 729, 1078, 1482, 1845, 3936, 4127, 4277, 4453],  # many false alarms
    "fhddm": [4613],
    "hddm_a": [4539],
    "hddm_w": [9262],
    "page_hinkley": [4406],
}


@pytest.mark.parametrize("kind", sorted(DEGRADATION))
def test_accuracy_drop_golden_alarms(kind: str) -> None:
    assert _alarms(kind, _bits(2024, 0.10, 0.20, 4000, 10_000)) == DEGRADATION[kind]


@pytest.mark.parametrize("kind", ["adwin", "fhddm", "hddm_a", "hddm_w", "page_hinkley"])
def test_an_improvement_is_not_drift(kind: str) -> None:
    # Error rate 0.20 → 0.05: the model got better; a guardrail must stay quiet.
    assert _alarms(kind, _bits(2024, 0.20, 0.05, 4000, 10_000)) == []


def test_fhddm_is_fed_correctness_as_river_needs() -> None:
    # river's own FHDDM fed error bits alarms on the improvement and misses the degradation:
    # the wrapper flips x so that both behave as the other detectors do.
    from river.drift import binary

    raw = binary.FHDDM()
    raw_alarms = []
    for i, x in enumerate(_bits(2024, 0.20, 0.05, 4000, 10_000)):
        raw.update(x)
        if raw.drift_detected:
            raw_alarms.append(i)
    assert raw_alarms != []
    assert _alarms("fhddm", _bits(2024, 0.20, 0.05, 4000, 10_000)) == []
    assert _alarms("fhddm", _bits(2024, 0.10, 0.20, 4000, 10_000)) == [4613]


def test_adwin_counts_suppressed_improvements() -> None:
    detector = registry.create({"kind": "adwin"})
    detector.update_many(_bits(2024, 0.20, 0.05, 4000, 10_000))
    assert detector.explain()["improvements"] == 1
    assert detector.explain()["alarms"] == 0


@pytest.mark.parametrize("kind", RIVER_KINDS)
def test_constant_correct_stream_never_alarms(kind: str) -> None:
    assert _alarms(kind, [0] * (1000 if kind == "kswin" else 5000)) == []


@pytest.mark.slow
def test_kswin_misses_a_bernoulli_accuracy_drop() -> None:
    # KSWIN (~600 µs per update) compares windows of 0/1 values: the KS test barely moves.
    assert _alarms("kswin", _bits(2024, 0.10, 0.20, 1000, 3000)) == []


def test_river_resets_itself_after_an_alarm() -> None:
    detector = registry.create({"kind": "adwin"})
    assert isinstance(detector, ADWIN)
    xs = _bits(2024, 0.10, 0.20, 4000, 4256)
    assert detector.update_many(xs)
    assert detector.drift_detected
    width_at_alarm = detector.width
    detector.update(0)
    assert detector.width == 1
    assert width_at_alarm > 1
    assert detector.n == 4257


@pytest.mark.parametrize("kind", ["page_hinkley", "ddm", "hddm_a", "hddm_w", "fhddm"])
def test_statistic_crosses_threshold_at_the_alarm(kind: str) -> None:
    detector = registry.create({"kind": kind})
    for x in _bits(2024, 0.10, 0.20, 4000, 10_000):
        detector.update(x)
        if detector.drift_detected:
            assert detector.statistic >= detector.threshold
            break
    else:
        pytest.fail(f"{kind} never alarmed")


@pytest.mark.slow
def test_kswin_and_eddm_alarm_below_their_threshold() -> None:
    eddm = registry.create({"kind": "eddm"})
    for x in _bits(2024, 0.10, 0.20, 4000, 10_000):
        eddm.update(x)
        if eddm.drift_detected:
            assert eddm.statistic < eddm.threshold
            break
    kswin = registry.create({"kind": "kswin", "seed": 3})
    rng = random.Random(3)
    alarms = []
    for i in range(2000):
        kswin.update(rng.gauss(0.0, 1.0) + (3.0 if i >= 1000 else 0.0))
        if kswin.drift_detected:
            assert kswin.statistic <= kswin.threshold
            alarms.append(i)
    # One false alarm before the 3-sigma shift at 1,000 (alpha=0.005 per test, every update),
    # detection 16 values after it, then re-detections as river re-learns after each reset.
    assert alarms == [477, 1016, 1215, 1425, 1867]


@pytest.mark.parametrize("kind", ["ddm", "eddm", "fhddm", "hddm_a", "hddm_w"])
def test_binary_detectors_reject_non_bits(kind: str) -> None:
    detector = registry.create({"kind": kind})
    with pytest.raises(ValueError, match=r"takes error bits: x must be 0 or 1, got 0\.5"):
        detector.update(0.5)
    assert detector.n == 0


@pytest.mark.parametrize(
    "kind", ["adwin", pytest.param("kswin", marks=pytest.mark.slow), "page_hinkley"]
)
def test_continuous_kinds_take_values(kind: str) -> None:
    rng = random.Random(5)
    values = [rng.gauss(100.0, 10.0) + (40.0 if i >= 2000 else 0.0) for i in range(4000)]
    found = _alarms(kind, values)
    assert found
    assert found[-1] >= 2000
    assert "continuous" in registry.detector_class(kind).inputs


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(RIVER_KINDS), cut=st.integers(min_value=0, max_value=3000))
def test_state_round_trip_continues_exactly(kind: str, cut: int) -> None:
    xs = _bits(99, 0.10, 0.30, 1500, 3000)
    if kind == "kswin":  # slow: keep it to 150 updates past the first full window
        xs, cut = xs[:250], min(cut, 250)
    original = registry.create({"kind": kind})
    for x in xs[:cut]:
        original.update(x)
    restored = registry.restore(json.loads(json.dumps(original.to_state())))
    assert type(restored) is type(original)
    for x in xs[cut:]:
        original.update(x)
        restored.update(x)
        assert restored.drift_detected == original.drift_detected
        assert restored.statistic == original.statistic
        assert restored.threshold == original.threshold
    assert restored.n == original.n
    assert restored.explain() == original.explain()


def test_state_from_another_river_version_is_refused() -> None:
    detector = registry.create({"kind": "adwin"})
    detector.update_many([0, 1, 0])
    state = detector.to_state()
    assert state["river_version"] == river_version()
    state["river_version"] = "0.19.0"
    with pytest.raises(ValueError, match=r"pickled under river '0\.19\.0' but river .* installed"):
        registry.restore(state)


def test_state_of_another_kind_is_refused() -> None:
    state = registry.create({"kind": "ddm"}).to_state()
    state["kind"] = "eddm"
    with pytest.raises(ValueError, match="holds a DDM, not EDDM"):
        registry.restore(state)


@pytest.mark.parametrize("kind", RIVER_KINDS)
def test_explain_is_plain_json(kind: str) -> None:
    detector = registry.create({"kind": kind})
    assert isinstance(detector, RiverDetector)
    detector.update_many(_bits(1, 0.1, 0.1, 0, 500))
    evidence = detector.explain()
    assert json.loads(json.dumps(evidence, allow_nan=False)) == evidence
    assert evidence["detector"] == kind
    assert evidence["resets_after_alarm"] is True


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "adwin", "delta": 2}, r"delta must be a number in \(0, 1\), got 2"),
        ({"kind": "adwin", "window": 10}, r"unknown parameter\(s\) window .* allowed: delta"),
        ({"kind": "page_hinkley", "threshold": 0}, "threshold must be a number > 0"),
        ({"kind": "page_hinkley", "mode": "down"}, r"unknown parameter\(s\) mode"),
        ({"kind": "kswin", "window_size": 40}, "window_size must be an integer >= 60"),
        ({"kind": "ddm", "drift_threshold": 1.0}, r"drift_threshold \(1.0\) must be >= warning"),
        ({"kind": "eddm", "alpha": 0.8}, r"alpha \(0.8\) must be >= beta \(0.9\)"),
        ({"kind": "hddm_a", "drift_confidence": 0}, "drift_confidence must be a number in"),
        ({"kind": "hddm_w", "lambda_val": 1.5}, "lambda_val must be a number in"),
        ({"kind": "fhddm", "short_window_size": 100}, "short_window_size .* must be <"),
        ({"kind": "fhddm", "sliding_window_size": "big"}, "sliding_window_size must be an"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_parameters_are_rejected(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry.create(spec)
