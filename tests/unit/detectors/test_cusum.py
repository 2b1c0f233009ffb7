"""Calibration of the CUSUM kinds: Markov-chain ARL against the optimal delays and simulation."""

from __future__ import annotations

import numpy as np
import pytest

from driftswitch.detectors.binary._bernoulli import exchangeable_bits, learned_error_rate
from driftswitch.detectors.binary.cusum import (
    CUSUM,
    bernoulli_arl,
    bernoulli_lattice,
    bernoulli_threshold,
    deployed_arl0,
    gaussian_arl,
    gaussian_threshold,
)


def _alarms(det: CUSUM) -> int:
    value = det.explain()["alarms"]
    assert isinstance(value, int)
    return value


def _lattice(baseline: float, target: float, arl0: float) -> tuple[float, float, int, int, int]:
    q0, q1 = 1 - baseline, 1 - target
    up, down = bernoulli_lattice(q0, q1, arl0)
    return q0, q1, up, down, bernoulli_threshold(q0, up, down, arl0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("baseline", "target", "arl0", "optimal"),
    [
        (0.90, 0.85, 1e3, 143),
        (0.90, 0.85, 1e4, 307),
        (0.90, 0.85, 1e5, 491),
        (0.90, 0.80, 1e3, 62),
        (0.90, 0.80, 1e4, 111),
        (0.90, 0.80, 1e5, 163),
    ],
)
def test_markov_chain_reproduces_the_optimal_delays(
    baseline: float, target: float, arl0: float, optimal: int
) -> None:
    q0, q1, up, down, h = _lattice(baseline, target, arl0)
    in_control = bernoulli_arl(q0, up, down, h)
    assert arl0 <= in_control < 1.15 * arl0  # the smallest lattice threshold reaching arl0
    assert bernoulli_arl(q0, up, down, h - 1) < arl0
    assert abs(bernoulli_arl(q1, up, down, h) - optimal) <= 0.01 * optimal + 1


def _simulated_arl(q: float, up: int, down: int, h: int, runs: int, seed: int) -> np.ndarray:
    """Run lengths from W = 0 of the lattice CUSUM, vectorised across runs."""
    rng = np.random.default_rng(seed)
    w = np.zeros(runs, dtype=np.int64)
    length = np.zeros(runs, dtype=np.int64)
    alive = np.ones(runs, dtype=bool)
    t = 0
    while alive.any():
        t += 1
        err = rng.random(runs) < q
        w = np.where(err, w + up, np.maximum(w - down, 0))
        done = alive & (w >= h)
        length[done] = t
        alive &= ~done
    return length


@pytest.mark.slow
@pytest.mark.parametrize(("baseline", "target"), [(0.90, 0.80), (0.90, 0.85)])
def test_simulated_arl0_matches_the_markov_chain(baseline: float, target: float) -> None:
    q0, q1, up, down, h = _lattice(baseline, target, 1e3)
    lengths = _simulated_arl(q0, up, down, h, runs=3000, seed=1)
    exact = bernoulli_arl(q0, up, down, h)
    # Run lengths are roughly geometric: standard error ≈ mean / sqrt(runs).
    assert abs(lengths.mean() - exact) < 4 * exact / np.sqrt(len(lengths))
    assert lengths.mean() >= 0.75 * 1e3
    delay = _simulated_arl(q1, up, down, h, runs=3000, seed=2).mean()
    assert abs(delay - bernoulli_arl(q1, up, down, h)) < 0.05 * delay


def test_detector_alarms_where_the_chain_says() -> None:
    """The detector object runs the same lattice: its run lengths match the simulation above."""
    det = CUSUM(baseline=0.90, target=0.80, arl0=1_000)
    rng = np.random.default_rng(3)
    bits = (rng.random(400_000) < 0.10).astype(np.int64)
    for start in range(0, len(bits), 10_000):
        det.update_many(bits[start : start + 10_000])
    alarms = _alarms(det)
    q0, _, up, down, h = _lattice(0.90, 0.80, 1e3)
    exact = bernoulli_arl(q0, up, down, h)
    measured = len(bits) / alarms
    assert abs(measured - exact) < 4 * exact / np.sqrt(alarms)


@pytest.mark.slow
def test_batched_counts_keep_the_run_length_distribution() -> None:
    """Counts are expanded in a uniformly random order: same ARL0 as per-event feeding."""
    det = CUSUM(baseline=0.90, target=0.80, arl0=1_000, seed=4)
    rng = np.random.default_rng(5)
    batches = rng.binomial(50, 0.10, size=8000)
    for k in batches.tolist():
        det.update_counts(50, k)
    alarms = _alarms(det)
    q0, _, up, down, h = _lattice(0.90, 0.80, 1e3)
    exact = bernoulli_arl(q0, up, down, h)
    assert abs(50 * len(batches) / alarms - exact) < 4 * exact / np.sqrt(alarms)


def test_counts_are_reproducible_and_round_trip() -> None:
    a = CUSUM(baseline=0.90, target=0.80, arl0=1_000, seed=9)
    b = CUSUM(baseline=0.90, target=0.80, arl0=1_000, seed=9)
    for k in (3, 9, 14, 2, 20):
        a.update_counts(40, k)
    for k in (3, 9):
        b.update_counts(40, k)
    b = CUSUM.from_state(b.to_state())
    for k in (14, 2, 20):
        b.update_counts(40, k)
    assert a.to_state() == b.to_state()
    assert exchangeable_bits(40, 14, 9, 2).sum() == 14


def test_learned_baseline_is_frozen_after_warmup() -> None:
    det = CUSUM(drop=0.10, warmup=1000, arl0=1_000)
    rng = np.random.default_rng(6)
    det.update_many((rng.random(1000) < 0.10).astype(np.int64))
    learned = det.explain()["baseline_accuracy"]
    assert learned == pytest.approx(0.90, abs=0.02)
    det.update_many((rng.random(3000) < 0.30).astype(np.int64))
    assert det.explain()["baseline_accuracy"] == learned
    assert _alarms(det) > 0


@pytest.mark.slow
def test_gaussian_threshold_against_simulation() -> None:
    h = gaussian_threshold(1.0, 1e3)
    assert gaussian_arl(0.0, 1.0, h) == pytest.approx(1e3, rel=1e-6)
    rng = np.random.default_rng(8)
    runs = 2000
    w = np.zeros(runs)
    length = np.zeros(runs)
    alive = np.ones(runs, dtype=bool)
    t = 0
    while alive.any():
        t += 1
        w = np.maximum(0.0, w + rng.normal(size=runs) - 0.5)
        done = alive & (w >= h)
        length[done] = t
        alive &= ~done
    assert abs(length.mean() - 1e3) < 4 * 1e3 / np.sqrt(runs)


@pytest.mark.slow
def test_learned_baselines_keep_the_mean_false_alarm_rate_within_the_budget() -> None:
    """500 seeded deployments, each learning its baseline from its own 300-event warm-up at
    accuracy 0.9 (drop 0.1, ARL0 1e3); each one's real ARL0 comes from the exact chain. The
    mean false-alarm rate stays within 1.25× the budget; calibrating as if the learned baseline
    were exact breaks it (the same deployments, the uncorrected threshold)."""
    q0, drop, warmup, arl0 = 0.10, 0.10, 300, 1e3
    errors = np.random.default_rng(11).binomial(warmup, q0, size=500)
    ratio: dict[int, tuple[float, float]] = {}
    for k in np.unique(errors).tolist():
        qh = learned_error_rate(k, warmup)
        up, down = bernoulli_lattice(qh, qh + drop, arl0)
        naive = bernoulli_arl(q0, up, down, bernoulli_threshold(qh, up, down, arl0))
        ratio[k] = (arl0 / deployed_arl0(q0, k, warmup, drop, arl0), arl0 / naive)
    corrected = np.array([ratio[k][0] for k in errors.tolist()])
    uncorrected = np.array([ratio[k][1] for k in errors.tolist()])
    assert uncorrected.mean() > 1.25
    assert corrected.mean() <= 1.25
    assert corrected.mean() >= 0.6  # absorbs the error, without a blanket over-correction
    assert np.mean(corrected > 2) < np.mean(uncorrected > 2)
