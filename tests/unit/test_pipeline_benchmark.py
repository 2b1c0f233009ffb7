"""``benchmarks/pipeline.py``'s rule for a sustained live rate: the lag may not grow."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from driftswitch.streams.tools.testing import load_file

bench = load_file(Path(__file__).parents[2] / "benchmarks" / "pipeline.py", "pipeline_benchmark")


def _run(lags: list[tuple[float, int]], offered: float) -> object:
    return bench.Reaction(
        delays=[],
        in_worker=[],
        offered=offered,
        max_lag=max(lag for _, lag in lags),
        lags=lags,
        batch=0.0,
        snapshots=0,
        late=0,
        cpu={},
        input_acks=[],
    )


def test_growth_is_the_lag_slope_in_seconds_of_input_after_the_warm_up() -> None:
    rate = 10_000.0
    # 3 % short of the rate: 300 records more behind every second; the warm-up is left out.
    lags = [(t, 50_000 if t < bench.LAG_WARMUP else int(300 * t)) for t in range(-2, 16)]
    assert bench.lag_growth(lags, rate) == pytest.approx(0.03)
    assert math.isnan(bench.lag_growth(lags[:5], rate))


def test_a_lag_under_the_limit_that_grows_is_not_sustained() -> None:
    rate = 10_000.0
    flat = [(float(t), 2_000 + (1_500 if t % 3 == 0 else 0)) for t in range(16)]
    growing = [(float(t), 400 * t) for t in range(16)]  # 0.6 s of input at the end
    kept = bench.Probe(rate, _run(flat, rate), rate)
    behind = bench.Probe(rate, _run(growing, rate), rate)
    assert kept.sustained
    assert behind.run.max_lag <= behind.lag_limit
    assert not behind.sustained
    assert not bench.Probe(rate, _run(flat, 0.9 * rate), rate).sustained  # not offered
