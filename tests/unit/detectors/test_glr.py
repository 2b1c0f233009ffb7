"""Calibration of the GLR-CUSUM, checked by simulation of the detector's own statistic."""

from __future__ import annotations

import numpy as np
import pytest

from driftswitch.detectors.glr import GLR, glr_calibration, glr_path, glr_windows


def _first_passages(
    q: float, q0: float, q1: float, arl0: float, streams: int, length: int, seed: int
) -> tuple[float, int]:
    """Censored-exponential mean run length from fresh starts, and the number of alarms seen."""
    h = glr_calibration(q0, q1, arl0)[0]
    windows = glr_windows(q0, q1, arl0)
    rng = np.random.default_rng(seed)
    total = 0
    crossed = 0
    for _ in range(streams):
        bits = (rng.random(length) < q).astype(np.int64)
        path = glr_path(np.zeros(0, dtype=np.int64), bits, windows, q0, q1)
        hits = np.flatnonzero(path >= h)
        if len(hits):
            total += int(hits[0]) + 1
            crossed += 1
        else:
            total += length
    return total / crossed, crossed


@pytest.mark.parametrize(("min_drop", "arl0"), [(0.10, 1e3), (0.05, 1e3), (0.10, 1e4)])
def test_simulated_arl0_is_at_least_three_quarters_of_the_budget(
    min_drop: float, arl0: float
) -> None:
    # Seeds differ from the calibration's own simulation.
    arl, crossed = _first_passages(0.10, 0.10, 0.10 + min_drop, arl0, 150, int(8 * arl0), 77)
    assert crossed > 100
    assert arl >= 0.75 * arl0
    assert arl <= 3.0 * arl0  # calibrated, not merely conservative


def test_delay_is_within_a_quarter_of_the_optimum() -> None:
    """0.90 → 0.80 at ARL0 1e3: fresh-start delay against the optimal 62 events (STATISTICS §1)."""
    delay, crossed = _first_passages(0.20, 0.10, 0.15, 1e3, 400, 2000, 78)
    assert crossed == 400
    assert delay <= 1.25 * 62 * 1.15  # the measured ARL0 here is up to ~1.5e3 (optimum ≈ 71)


def test_counts_round_trip_and_reproducible() -> None:
    a = GLR(baseline=0.90, min_drop=0.05, arl0=1_000, seed=2)
    b = GLR(baseline=0.90, min_drop=0.05, arl0=1_000, seed=2)
    for k in (5, 2, 9, 12, 1):
        a.update_counts(60, k)
    for k in (5, 2):
        b.update_counts(60, k)
    b = GLR.from_state(b.to_state())
    for k in (9, 12, 1):
        b.update_counts(60, k)
    assert a.to_state() == b.to_state()
    assert a.n == 300


def test_alarm_restarts_the_windows_but_not_the_reference() -> None:
    det = GLR(min_drop=0.05, warmup=500, arl0=1_000)
    rng = np.random.default_rng(4)
    det.update_many((rng.random(500) < 0.10).astype(np.int64))
    learned = det.explain()["baseline_accuracy"]
    assert det.update_many((rng.random(2000) < 0.40).astype(np.int64))
    assert det.explain()["baseline_accuracy"] == learned
