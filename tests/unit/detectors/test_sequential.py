"""The two-sample `sequential` detector: validity under continuous monitoring, decisions, state."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftswitch.detectors import registry
from driftswitch.detectors.sequential import (
    BettingArm,
    Sequential,
    betting_bounds_many,
    block_ends,
    cs_bounds,
)


def _monitored_aa(
    rng: np.random.Generator,
    runs: int,
    horizon: int,
    every: int,
    draw: str,
    min_samples: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ``runs`` A/A experiments looked at every ``every`` pairs up to ``horizon`` pairs.

    Returns, per run, whether the interval ever excluded 0 and whether harm was ever declared.
    """
    looks = np.arange(every, horizon + 1, every)
    looks = looks[looks >= min_samples]
    excluded = np.zeros(runs, dtype=bool)
    harmed = np.zeros(runs, dtype=bool)
    chunk = 250
    for start in range(0, runs, chunk):
        size = min(chunk, runs - start)
        sums, sumsqs = [], []
        for _arm in range(2):
            if draw == "bernoulli":
                x = (rng.random((size, horizon)) < 0.10).astype(np.float64)
            else:  # latency-like: lognormal milliseconds
                x = rng.lognormal(mean=3.0, sigma=0.5, size=(size, horizon))
            sums.append(np.cumsum(x, axis=1)[:, looks - 1])
            sumsqs.append(np.cumsum(x * x, axis=1)[:, looks - 1])
        n = np.broadcast_to(looks.astype(np.float64), sums[0].shape)
        lower, upper = cs_bounds(n, sums[0], sumsqs[0], n, sums[1], sumsqs[1], alpha=0.05)
        excluded[start : start + size] = ((lower > 0) | (upper < 0)).any(axis=1)
        harmed[start : start + size] = (upper < 0).any(axis=1)
    return excluded, harmed


def test_asymptotic_aa_false_positive_rate_bernoulli_under_continuous_monitoring() -> None:
    # 2,000 A/A runs at 90 % accuracy, looked at after every 4 pairs up to 4,000 pairs (1,000
    # looks each): the asymptotic interval excludes "no difference" in at most 5 % of runs when
    # both arms are equal and large (its weak spot, small or lopsided arms, is what the betting
    # method fixes: benchmarks/comparison.py).
    excluded, harmed = _monitored_aa(
        np.random.default_rng(20240601), 2000, 4000, 4, draw="bernoulli"
    )
    assert excluded.mean() <= 0.05
    assert harmed.mean() <= excluded.mean()
    assert excluded.mean() > 0.005  # the test can fail: the interval is not vacuous


def test_aa_false_positive_rate_continuous_under_continuous_monitoring() -> None:
    excluded, _ = _monitored_aa(np.random.default_rng(7), 1000, 2000, 4, draw="lognormal")
    assert excluded.mean() <= 0.05


def test_naive_peeking_would_fail_the_same_check() -> None:
    # The same simulation with a fixed-sample 95 % z-interval re-checked at every look: the
    # inflation the confidence sequence exists to prevent (STATISTICS.md §4).
    rng = np.random.default_rng(20240601)
    runs, horizon, every = 1000, 4000, 4
    looks = np.arange(every, horizon + 1, every)
    looks = looks[looks >= 30]
    a = np.cumsum(rng.random((runs, horizon)) < 0.10, axis=1)[:, looks - 1]
    b = np.cumsum(rng.random((runs, horizon)) < 0.10, axis=1)[:, looks - 1]
    pa, pb = a / looks, b / looks
    se = np.sqrt((pa * (1 - pa) + pb * (1 - pb)) / looks)
    naive = (np.abs(pb - pa) > 1.96 * se).any(axis=1).mean()
    assert naive > 0.2


def test_vectorised_bounds_match_the_detector() -> None:
    rng = random.Random(11)
    seq = Sequential(alpha=0.05, margin=0.01, method="asymptotic")
    sums = [0.0, 0.0]
    for i in range(1, 2001):
        xc, xv = float(rng.random() < 0.1), float(rng.random() < 0.13)
        seq.update("control", xc)
        seq.update("variant", xv)
        sums[0] += xc
        sums[1] += xv
        if i >= 30 and i % 97 == 0:
            n = np.array([float(i)])
            lo, hi = cs_bounds(
                n, np.array([sums[0]]), np.array([sums[0]]), n, np.array([sums[1]]),
                np.array([sums[1]]),
            )  # fmt: skip
            assert seq.interval == pytest.approx((lo[0], hi[0]), abs=1e-12)


def _pairs(seed: int, p_control: float, p_variant: float, count: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [
        (float(rng.random() < p_control), float(rng.random() < p_variant)) for _ in range(count)
    ]


def _first_harm(seq: Sequential, pairs: list[tuple[float, float]]) -> int | None:
    for i, (xc, xv) in enumerate(pairs, start=1):
        seq.update("control", xc)
        seq.update("variant", xv)
        if seq.harm:
            return i
    return None


def test_clearly_worse_arm_is_declared_harmful_at_golden_pair_count() -> None:
    # Accuracy 0.90 (control) versus 0.80 (variant), error bits: with the betting interval harm
    # stands after exactly 717 pairs (the asymptotic interval, below, after 342).
    seq = Sequential()
    assert _first_harm(seq, _pairs(42, 0.10, 0.20, 5000)) == 717
    assert seq.harm
    evidence = seq.explain()
    assert evidence["decision"] == "harm"
    interval = evidence["interval"]
    assert isinstance(interval, list)
    assert interval[1] < 0
    assert evidence["n_control"] == evidence["n_variant"] == 717
    assert evidence["p_value"] is None
    json.dumps(evidence)


def test_asymptotic_method_keeps_its_golden_pair_count() -> None:
    seq = Sequential(method="asymptotic")
    assert _first_harm(seq, _pairs(42, 0.10, 0.20, 5000)) == 342
    assert seq.explain()["method"] == "asymptotic confidence sequence (Waudby-Smith et al. 2023)"


@pytest.mark.parametrize("value", [0.0, 1.0], ids=["all-correct", "all-errors"])
def test_equal_constant_arms_never_declare_harm(value: float) -> None:
    seq = Sequential()
    for _ in range(10_000):
        seq.update("control", value)
        seq.update("variant", value)
        assert not seq.drift_detected
        assert not seq.harm
    lower, upper = seq.interval
    assert lower < 0 < upper
    assert upper - lower < 0.002  # 10,000 identical outcomes pin each arm's mean down


def test_equal_constant_latency_never_declares_harm() -> None:
    seq = Sequential(method="asymptotic")
    for _ in range(10_000):
        seq.update("control", 250.0)
        seq.update("variant", 250.0)
        assert not seq.harm
    assert seq.interval == (0.0, 0.0)


@pytest.mark.slow
def test_betting_aa_never_harms_more_than_alpha_even_with_a_tiny_arm() -> None:
    # The asymptotic interval's failure case: control at 1 % of traffic, accuracy 0.99 (A/A harm
    # 73 % of runs there). 400 seeded runs of 8,000 events, the betting interval looked at
    # after every block: harm (upper bound of the improvement below 0) at most α = 5 %, with
    # the binomial 99.9 % upper allowance for 400 runs (5 % + 3.1 sd).
    rng = np.random.default_rng(20261129)
    runs, events, share = 400, 8_000, 0.01
    n_control = rng.binomial(events, share, runs)
    bits_control = (rng.random((runs, int(n_control.max()))) < 0.01).astype(np.float64)
    bits_variant = (rng.random((runs, events)) < 0.01).astype(np.float64)
    lo_c, _ = betting_bounds_many(bits_control, 0.025)
    _, hi_v = betting_bounds_many(bits_variant, 0.025)
    # The intervals only shrink, so harm at any time <=> harm at the end of the run.
    ends_c = np.array(block_ends(int(n_control.max())))
    ends_v = np.array(block_ends(events))
    last_c = np.searchsorted(ends_c, n_control, side="right") - 1
    last_v = np.searchsorted(ends_v, events - n_control, side="right") - 1
    idx = np.arange(runs)
    lower_c = np.where(last_c >= 0, lo_c[idx, np.maximum(last_c, 0)], 0.0)
    upper_v = hi_v[idx, last_v]
    harm = lower_c - upper_v > 0  # improvement (error bits) = mean_c - mean_v; upper < 0
    assert harm.mean() <= 0.05 + 3.1 * math.sqrt(0.05 * 0.95 / runs)
    # and the intervals are not vacuous: the variant's (large) arm is pinned near 0.01
    assert np.median(upper_v) < 0.02


def test_betting_arm_matches_the_vectorised_simulation() -> None:
    rng = np.random.default_rng(3)
    bits = (rng.random((3, 700)) < 0.1).astype(np.float64)
    lower, upper = betting_bounds_many(bits, 0.025)
    ends = block_ends(700)
    for run in range(3):
        arm = BettingArm(0.025)
        seen = []
        for i, b in enumerate(bits[run], start=1):
            if arm.add(1, int(b)):
                seen.append((i, arm.lower, arm.upper))
        assert [s[0] for s in seen] == ends
        assert [s[1] for s in seen] == pytest.approx(list(lower[run]), abs=1e-12)
        assert [s[2] for s in seen] == pytest.approx(list(upper[run]), abs=1e-12)


def test_betting_rejects_values_that_are_not_bits() -> None:
    seq = Sequential()
    with pytest.raises(ValueError, match="method 'betting' takes 0/1 outcomes"):
        seq.update("control", 0.5)
    with pytest.raises(ValueError, match="method 'betting' takes 0/1 outcomes"):
        seq.update_counts("control", 4, 2.5)
    assert seq.n == 0


def test_correctness_bits_with_higher_is_better_decide_identically() -> None:
    pairs = _pairs(42, 0.10, 0.20, 5000)
    flipped = [(1 - c, 1 - v) for c, v in pairs]
    assert _first_harm(Sequential(higher_is_better=True), flipped) == _first_harm(
        Sequential(), pairs
    )


def test_better_variant_is_never_harmful_and_becomes_non_inferior() -> None:
    seq = Sequential(margin=0.01)
    pairs = _pairs(5, 0.15, 0.10, 20_000)
    assert _first_harm(seq, pairs) is None
    assert seq.non_inferior
    assert seq.effect > 0
    assert seq.explain()["decision"] == "non_inferior"


def test_equal_arms_become_non_inferior_within_the_margin() -> None:
    seq = Sequential(margin=0.02)
    non_inferior_at = None
    for i, (xc, xv) in enumerate(_pairs(8, 0.10, 0.10, 20_000), start=1):
        seq.update("control", xc)
        seq.update("variant", xv)
        if non_inferior_at is None and seq.non_inferior:
            non_inferior_at = i
    assert non_inferior_at is not None
    assert non_inferior_at < 20_000
    assert not seq.harm


def test_no_decision_before_min_samples() -> None:
    seq = Sequential(min_samples=50)
    assert Sequential().min_samples == 1  # the betting interval is valid at every n
    assert Sequential(method="asymptotic").min_samples == 30
    for _ in range(49):
        seq.update("control", 0.0)
        seq.update("variant", 1.0)
    assert not seq.decided
    assert not seq.harm
    assert not seq.non_inferior
    assert seq.interval == (-math.inf, math.inf)
    assert seq.explain()["decision"] == "too_few_samples"
    seq.update("control", 0.0)
    seq.update("variant", 1.0)
    assert seq.decided
    assert seq.drift_detected


def test_counts_of_one_match_single_observations_exactly() -> None:
    pairs = _pairs(3, 0.10, 0.20, 2000)
    single, batched = Sequential(), Sequential()
    for xc, xv in pairs:
        single.update("control", xc)
        single.update("variant", xv)
        batched.update_counts("control", 1, xc)
        batched.update_counts("variant", 1, xv)
        assert batched.interval == single.interval
        assert batched.harm == single.harm


def test_betting_batches_extend_blocks_and_still_decide() -> None:
    # A batch that crosses a block boundary extends the block (its bet was fixed at the block's
    # start): bounds are read at other counts than with single feeding, both valid.
    pairs = _pairs(3, 0.10, 0.20, 3000)
    batched = Sequential()
    for start in range(0, len(pairs), 50):
        block = pairs[start : start + 50]
        batched.update_counts("control", len(block), sum(c for c, _ in block))
        batched.update_counts("variant", len(block), sum(v for _, v in block))
    single = Sequential()
    assert _first_harm(single, pairs) is not None
    assert batched.harm
    assert batched.n == 6000
    lo, hi = batched.interval
    assert lo < batched.effect < hi


def test_asymptotic_counts_match_single_observations() -> None:
    pairs = _pairs(3, 0.10, 0.20, 3000)
    single, batched = Sequential(method="asymptotic"), Sequential(method="asymptotic")
    alarm_batches = []
    for start in range(0, len(pairs), 50):
        block = pairs[start : start + 50]
        for xc, xv in block:
            single.update("control", xc)
            single.update("variant", xv)
        batched.update_counts("control", len(block), sum(c for c, _ in block))
        if batched.update_counts("variant", len(block), sum(v for _, v in block)):
            alarm_batches.append(start)
        assert batched.interval == pytest.approx(single.interval, rel=1e-9, abs=1e-12)
    assert batched.n == single.n == 6000
    assert len(alarm_batches) >= 1


def test_continuous_counts_with_sums_of_squares() -> None:
    rng = np.random.default_rng(4)
    control = rng.lognormal(3.0, 0.5, 4000)
    variant = rng.lognormal(3.2, 0.5, 4000)  # ~22 % slower
    single, batched = Sequential(method="asymptotic"), Sequential(method="asymptotic")
    for xc, xv in zip(control, variant, strict=True):
        single.update("control", float(xc))
        single.update("variant", float(xv))
    for arm, x in (("control", control), ("variant", variant)):
        for block in np.split(x, 40):
            batched.update_counts(arm, len(block), float(block.sum()), float((block**2).sum()))
    assert batched.interval == pytest.approx(single.interval, rel=1e-9)
    assert single.harm
    assert single.effect == pytest.approx(float(control.mean() - variant.mean()))


def test_p_value_is_below_alpha_when_the_interval_excludes_zero() -> None:
    seq = Sequential(method="asymptotic")
    assert _first_harm(seq, _pairs(42, 0.10, 0.20, 5000)) is not None
    assert seq.p_value <= 0.05


@settings(max_examples=25, deadline=None)
@given(cut=st.integers(min_value=0, max_value=600), batch=st.booleans())
def test_state_round_trip_continues_exactly(cut: int, batch: bool) -> None:
    pairs = _pairs(42, 0.10, 0.20, 600)
    seq = Sequential(margin=0.01)
    for xc, xv in pairs[:cut]:
        seq.update("control", xc)
        seq.update("variant", xv)
    restored = registry.restore(json.loads(json.dumps(seq.to_state())))
    assert isinstance(restored, Sequential)
    assert restored.explain() == seq.explain()
    for xc, xv in pairs[cut:]:
        for s in (seq, restored):
            if batch:
                s.update_counts("control", 1, xc)
                s.update_counts("variant", 1, xv)
            else:
                s.update("control", xc)
                s.update("variant", xv)
        assert restored.explain() == seq.explain()
        assert restored.drift_detected == seq.drift_detected
    assert restored.to_state() == seq.to_state()


def test_registered_as_two_sample() -> None:
    cls = registry.detector_class("sequential")
    assert cls.two_sample is True
    seq = registry.create({"kind": "sequential", "alpha": 0.01, "margin": 0.005})
    assert isinstance(seq, Sequential)
    assert seq.to_state()["kind"] == "sequential"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"alpha": 0}, "alpha must be a number in (0, 1)"),
        ({"alpha": 1.5}, "alpha must be a number in (0, 1)"),
        ({"margin": -0.01}, "margin must be a finite number >= 0"),
        ({"method": "asymptotic", "tuning_n": 0}, "tuning_n must be an integer >= 1"),
        ({"tuning_n": 5000}, "tuning_n applies to method 'asymptotic' only"),
        ({"higher_is_better": "yes"}, "higher_is_better must be true or false"),
        ({"min_samples": 0}, "min_samples must be an integer >= 1"),
        ({"method": "asymptotic", "min_samples": 1}, "min_samples must be an integer >= 2"),
        ({"method": "bayes"}, "method must be one of betting, asymptotic"),
        ({"tuning": 5}, "unknown parameter(s) tuning"),
    ],
    ids=[
        "alpha-0",
        "alpha-big",
        "margin",
        "tuning",
        "tuning-betting",
        "direction",
        "min-samples",
        "min-samples-asymptotic",
        "method",
        "unknown",
    ],
)
def test_bad_parameters_are_rejected(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        registry.create({"kind": "sequential", **params})


def test_bad_inputs_are_rejected() -> None:
    seq = Sequential()
    with pytest.raises(ValueError, match="unknown arm 'treatment'; arms are: control, variant"):
        seq.update("treatment", 1.0)
    with pytest.raises(ValueError, match="finite"):
        seq.update("control", math.nan)
    with pytest.raises(ValueError, match=r"count of ones must lie in \[0, n=10\]"):
        seq.update_counts("control", 10, 11)
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        seq.update_counts("control", -1, 0)
    assert seq.n == 0


def test_docstring_example_holds() -> None:
    import doctest

    import driftswitch.detectors.sequential as module

    assert doctest.testmod(module).failed == 0
