"""The two-sample `sequential` detector: validity under continuous monitoring, decisions, state."""

from __future__ import annotations

import itertools
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
    mixture_log_e,
    mixture_log_e_equal,
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
    # inflation the confidence sequence exists to prevent.
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
    # Accuracy 0.90 (control) versus 0.80 (variant), error bits: with the mixture e-value (the
    # default) harm stands after exactly 580 pairs (the betting interval: 717, the asymptotic
    # interval: 342).
    seq = Sequential()
    assert _first_harm(seq, _pairs(42, 0.10, 0.20, 5000)) == 580
    assert seq.harm
    evidence = seq.explain()
    assert evidence["decision"] == "harm"
    interval = evidence["interval"]
    assert isinstance(interval, list)
    assert interval[1] < 0
    assert evidence["n_control"] == evidence["n_variant"] == 580
    assert evidence["p_value"] is None
    json.dumps(evidence)


def test_other_methods_keep_their_golden_pair_counts() -> None:
    seq = Sequential(method="asymptotic")
    assert _first_harm(seq, _pairs(42, 0.10, 0.20, 5000)) == 342
    assert _first_harm(Sequential(method="betting"), _pairs(42, 0.10, 0.20, 5000)) == 717
    assert seq.explain()["method"] == "asymptotic confidence sequence (Waudby-Smith et al. 2023)"


@pytest.mark.parametrize("method", ["mixture", "betting"])
@pytest.mark.parametrize("value", [0.0, 1.0], ids=["all-correct", "all-errors"])
def test_equal_constant_arms_never_declare_harm(value: float, method: str) -> None:
    seq = Sequential(method=method)
    for _ in range(10_000):
        seq.update("control", value)
        seq.update("variant", value)
        assert not seq.drift_detected
        assert not seq.harm
    lower, upper = seq.interval
    assert lower < 0 < upper
    assert upper - lower < 0.005  # 10,000 identical outcomes pin both means down


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


@pytest.mark.slow
def test_mixture_aa_never_harms_more_than_alpha_at_any_split() -> None:
    # 1,000 seeded A/A runs of 20,000 events per case, looked at on the detector's schedule
    # (every block of the total count); harm in at most α = 5 % plus 3.1 binomial sd.
    rng = np.random.default_rng(20261130)
    runs, events = 1000, 20_000
    looks = np.array(block_ends(events))
    for share, accuracy in ((0.01, 0.99), (0.05, 0.9), (0.99, 0.99), (0.5, 0.5)):
        variant = rng.random((runs, events)) < share
        error = rng.random((runs, events)) >= accuracy
        n_v = np.cumsum(variant, axis=1)[:, looks - 1].astype(np.float64)
        ones_v = np.cumsum(variant & error, axis=1)[:, looks - 1].astype(np.float64)
        ones_all = np.cumsum(error, axis=1)[:, looks - 1].astype(np.float64)
        n_c = looks - n_v
        ones_c = ones_all - ones_v
        log_e = mixture_log_e_equal(ones_c, n_c, ones_v, n_v)
        worse = ones_v * n_c > ones_c * n_v  # variant's error rate above control's
        both = (n_c > 0) & (n_v > 0)
        harm = ((log_e >= math.log(1 / 0.05)) & worse & both).any(axis=1)
        assert harm.mean() <= 0.05 + 3.1 * math.sqrt(0.05 * 0.95 / runs), (share, accuracy)


def test_vectorised_mixture_matches_the_scalar_e_value() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        n_c, n_v = (int(x) for x in rng.integers(1, 500, 2))
        ones_c, ones_v = int(rng.integers(0, n_c + 1)), int(rng.integers(0, n_v + 1))
        vector = mixture_log_e_equal(*(np.array([float(x)]) for x in (ones_c, n_c, ones_v, n_v)))
        assert vector[0] == pytest.approx(mixture_log_e(ones_c, n_c, ones_v, n_v, 0.0), abs=1e-9)


@pytest.mark.parametrize("margin", [0.0, 0.02])
def test_mixture_harm_agrees_with_its_interval(margin: float) -> None:
    seq = Sequential(margin=margin)
    for xc, xv in _pairs(9, 0.10, 0.25, 3000):
        seq.update("control", xc)
        seq.update("variant", xv)
        if seq.harm:
            break
    assert seq.harm
    assert seq.interval[1] < -margin
    lower, upper = seq.interval
    assert lower < seq.effect < upper


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


@pytest.mark.parametrize("method", ["mixture", "betting"])
def test_exact_methods_reject_values_that_are_not_bits(method: str) -> None:
    seq = Sequential(method=method)
    with pytest.raises(ValueError, match=f"method '{method}' takes 0/1 outcomes"):
        seq.update("control", 0.5)
    with pytest.raises(ValueError, match=f"method '{method}' takes 0/1 outcomes"):
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
    assert Sequential().min_samples == 1  # the exact methods are valid at every n
    assert Sequential(method="betting").min_samples == 1
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


@pytest.mark.parametrize("method", ["mixture", "betting"])
def test_counts_of_one_match_single_observations_exactly(method: str) -> None:
    pairs = _pairs(3, 0.10, 0.20, 2000)
    single, batched = Sequential(method=method), Sequential(method=method)
    for xc, xv in pairs:
        single.update("control", xc)
        single.update("variant", xv)
        batched.update_counts("control", 1, xc)
        batched.update_counts("variant", 1, xv)
        b, o = batched.to_state(), single.to_state()
        for key in ("ones", "next_look", "bets", "harm", "non_inferior"):
            assert b.get(key) == o.get(key)
    assert batched.interval == single.interval


@pytest.mark.parametrize("method", ["mixture", "betting"])
def test_batches_look_less_often_and_still_decide(method: str) -> None:
    # Betting: a batch that crosses a block boundary extends the block (its bet was fixed at the
    # block's start). Mixture: one look per batch that reaches the next scheduled look. Either
    # way the looks fall at other counts than with single feeding; both are valid.
    pairs = _pairs(3, 0.10, 0.20, 3000)
    batched = Sequential(method=method)
    for start in range(0, len(pairs), 50):
        block = pairs[start : start + 50]
        batched.update_counts("control", len(block), sum(c for c, _ in block))
        batched.update_counts("variant", len(block), sum(v for _, v in block))
    single = Sequential(method=method)
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
@given(
    cut=st.integers(min_value=0, max_value=600),
    batch=st.booleans(),
    method=st.sampled_from(["mixture", "betting", "asymptotic"]),
)
def test_state_round_trip_continues_exactly(cut: int, batch: bool, method: str) -> None:
    pairs = _pairs(42, 0.10, 0.20, 600)
    seq = Sequential(margin=0.01, method=method)
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
        assert restored.to_state() == seq.to_state()
        assert (restored.harm, restored.non_inferior) == (seq.harm, seq.non_inferior)
        assert restored.drift_detected == seq.drift_detected
    assert restored.explain() == seq.explain()


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
        ({"margin": 1.0}, "margin must be below 1 for 0/1 outcomes"),
        ({"higher_is_better": "yes"}, "higher_is_better must be true or false"),
        ({"min_samples": 0}, "min_samples must be an integer >= 1"),
        ({"method": "asymptotic", "min_samples": 1}, "min_samples must be an integer >= 2"),
        ({"method": "bayes"}, "method must be one of mixture, betting, asymptotic"),
        ({"tuning": 5}, "unknown parameter(s) tuning"),
    ],
    ids=[
        "alpha-0",
        "alpha-big",
        "margin",
        "tuning",
        "tuning-exact",
        "margin-bits",
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


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    worse=st.floats(0.0, 0.3),
    least=st.integers(1, 60),
    cuts=st.lists(st.integers(1, 2999), max_size=8),
    counts_at=st.integers(0, 3000),
)
def test_update_until_harm_matches_one_at_a_time(
    seed: int, worse: float, least: int, cuts: list[int], counts_at: int
) -> None:
    """Batches cut anywhere (after an optional ``update_counts`` batch that moves the look
    schedule off its one-at-a-time grid): harm at the same observation, the same state."""
    rng = random.Random(seed)
    arms = [int(rng.random() < 0.3) for _ in range(3000)]
    xs = [float(rng.random() < (0.1 + worse if a else 0.1)) for a in arms]
    one = Sequential(alpha=0.05, min_samples=least)
    batched = Sequential(alpha=0.05, min_samples=least)
    if counts_at:
        for det in (one, batched):
            det.update_counts("control", counts_at // 3, float(counts_at // 30))
    want = None
    for i, (a, x) in enumerate(zip(arms, xs, strict=True)):
        one.update("variant" if a else "control", x)
        if one.harm:
            want = i
            break
    got = None
    for lo, hi in itertools.pairwise([0, *sorted(set(cuts)), len(xs)]):
        k = batched.update_until_harm(arms[lo:hi], xs[lo:hi])
        if k is not None:
            got = lo + k
            break
    assert got == want
    assert batched.to_state() == one.to_state()
    assert batched.explain() == one.explain()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    least=st.integers(1, 60),
    cuts=st.lists(st.integers(1, 2999), max_size=8),
    counts_at=st.integers(0, 3000),
)
def test_update_many_standing_matches_one_at_a_time(
    seed: int, least: int, cuts: list[int], counts_at: int
) -> None:
    """Once harm stands, batches cut anywhere (after an optional ``update_counts`` batch that
    moves the look schedule off its one-at-a-time grid) leave the state, evidence and reads
    ``update`` leaves after every batch; before harm it feeds nothing."""
    rng = random.Random(seed)
    arms = [int(rng.random() < 0.3) for _ in range(6000)]
    xs = [float(rng.random() < (0.4 if a else 0.1)) for a in arms]
    one = Sequential(alpha=0.05, min_samples=least)
    batched = Sequential(alpha=0.05, min_samples=least)
    if counts_at:
        for det in (one, batched):
            det.update_counts("control", counts_at // 3, float(counts_at // 30))
    assert not batched.update_many_standing(arms[:10], xs[:10])
    k = batched.update_until_harm(arms, xs)
    assert k is not None, "the variant is far worse: harm shows"
    for a, x in zip(arms[: k + 1], xs[: k + 1], strict=True):
        one.update("variant" if a else "control", x)
    assert batched.to_state() == one.to_state()
    rest = k + 1
    assert batched.update_many_standing([1, 0], [0.5, 1.0]) is False  # not 0/1: nothing fed
    assert batched.to_state() == one.to_state()
    for lo, hi in itertools.pairwise([0, *sorted({c % 3000 for c in cuts}), 3000]):
        assert batched.update_many_standing(arms[rest + lo : rest + hi], xs[rest + lo : rest + hi])
        for a, x in zip(arms[rest + lo : rest + hi], xs[rest + lo : rest + hi], strict=True):
            one.update("variant" if a else "control", x)
        assert batched.to_state() == one.to_state()
        assert batched.explain() == one.explain()
        assert (batched.harm, batched.drift_detected, batched.interval, batched.statistic) == (
            one.harm,
            one.drift_detected,
            one.interval,
            one.statistic,
        )
    assert Sequential(method="betting").update_many_standing([1], [1.0]) is False
