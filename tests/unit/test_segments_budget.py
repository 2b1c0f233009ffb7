"""A per-segment guardrail keeps the guardrail's false-alarm budget (docs/statistics.md,
"Per-segment guardrails"): null streams over 20 segments, 200 seeded runs each.

- ``cusum`` (``arl0``): the segments partition the observations and each detector's ``arl0``
  counts its own, so the false alarms of all segments add up to at most observations / ``arl0``
  per run, the budget of one flag-wide detector.
- ``sequential`` (``alpha``): each of the S = ``max_segments + 1`` detectors runs at
  ``alpha / S``, so the share of runs with any false alarm stays at most ``alpha``. (The
  asymptotic method, tightest at 600 events, keeps 200 runs fast; at 300 events per arm and
  segment a confidence sequence is conservative, so this bound holds with a wide margin.)

The bounds are checked with a one-sided margin of three standard errors of the count (the
budget is an expectation); the measured figures are printed (``-s``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.pipeline.segments import SegmentMonitor

RUNS = 200
SEGMENTS = 20

CONFIG = """
flags:
  ranker:
    default: control
    variants:
      control:   {weight: 50, value: v1}
      candidate: {weight: 50, value: v2}
    guardrails:
      - name: g
        variant: candidate
        metric: accuracy
        DETECTOR
        min_samples: 0
        cooldown: 0s
        segment_by: [attributes.region]
        max_segments: 20
        action: kill
"""


def monitor(detector: str) -> SegmentMonitor:
    config = parse_config(CONFIG.replace("DETECTOR", detector), "budget.yaml")
    flag = config.flags["ranker"]
    return SegmentMonitor("ranker", flag, flag.guardrails[0], ("region",))


def regions(rng: np.random.Generator, n: int) -> list[list[str | None]]:
    return [[f"r{int(k)}"] for k in rng.integers(0, SEGMENTS, size=n)]


@pytest.mark.slow
def test_cusum_segments_stay_within_the_arl0_budget() -> None:
    arl0, n, batch = 5_000, 20_000, 1_000
    alarms = []
    for seed in range(RUNS):
        rng = np.random.default_rng(seed)
        mon = monitor(f"detector: {{kind: cusum, baseline: 0.90, target: 0.80, arl0: {arl0}}}")
        errors = (rng.random(n) >= 0.90).astype(float)  # the null: accuracy 0.90 everywhere
        where = regions(rng, n)
        count = 0
        for start in range(0, n, batch):
            for i in range(start, start + batch):
                mon.add(where[i], 1, float(errors[i]), i, float(i))
            count += len(mon.flush())
        assert len(mon.segments) == SEGMENTS
        alarms.append(count)
    budget = RUNS * n / arl0  # false alarms one flag-wide detector is allowed over all runs
    total = sum(alarms)
    print(
        f"\ncusum, {SEGMENTS} segments, {RUNS} runs of {n:,}: {total} false alarms, "
        f"budget {budget:g}"
    )
    assert total <= budget + 3 * math.sqrt(budget)


@pytest.mark.slow
def test_sequential_segments_stay_within_alpha() -> None:
    alpha, n = 0.05, 12_000
    runs_with_alarm = 0
    for seed in range(RUNS):
        rng = np.random.default_rng(10_000 + seed)
        mon = monitor(
            "compare_to: control\n        detector: {kind: sequential, method: asymptotic, "
            f"tuning_n: 600, min_samples: 30, alpha: {alpha}}}"
        )
        assert mon.spec["alpha"] == pytest.approx(alpha / (SEGMENTS + 1))
        ones = (rng.random(n) < 0.90).astype(float)  # both arms right 90 % of the time
        where = regions(rng, n)
        count = 0
        for start in range(0, n, 1_000):
            for i in range(start, start + 1_000):
                # Observations are error bits; arm 1 = candidate, 0 = control, alternating.
                mon.add(where[i], i % 2, 1.0 - float(ones[i]), i, float(i))
            count += len(mon.flush())
        runs_with_alarm += count > 0
    allowed = RUNS * alpha
    print(f"\nsequential, {SEGMENTS} segments: {runs_with_alarm}/{RUNS} runs false-alarmed")
    assert runs_with_alarm <= allowed + 3 * math.sqrt(RUNS * alpha * (1 - alpha))
