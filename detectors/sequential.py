"""Anytime-valid comparison of a variant against its control (``compare_to``) on matured outcomes.

Three methods, chosen by ``method``:

``mixture`` (default; for 0/1 outcomes: error or correctness bits)
    A Beta-mixture likelihood ratio against the profile likelihood of the null, an e-process.
    With ``k`` ones in ``n`` outcomes per arm, the evidence against "``mean_v − mean_c = d``" is

        E(d) = B(1 + k_c, 1 + n_c − k_c) · B(1 + k_v, 1 + n_v − k_v) / max_{q} L(q, q + d),

    the marginal likelihood of both arms under uniform priors (Robbins' mixture) over the
    largest likelihood of any pair of means ``d`` apart. For the true means the mixture over
    *their* likelihood is a non-negative martingale with mean 1, and the denominator is at least
    their likelihood, so ``P(E(d_true) ever ≥ 1/α) ≤ α`` (Ville's inequality) at every sample
    size, for every split, with no normal approximation. Harm: the estimate is worse than
    ``−margin`` and ``E(−margin) ≥ 1/α`` (the profile likelihood is concave in ``d``, so every
    worse-than-margin difference is then rejected); non-inferiority likewise on the other side.
    The interval (the differences not rejected) is computed on demand by bisection. The detector
    looks on a count schedule (after each of the first 32 outcomes, then each time the total
    grows by ~6 %, ``block_length``): fixed in advance, so the guarantee holds at the looks,
    and the same stream gives the same decisions however it is batched.

``betting`` (for 0/1 outcomes)
    One confidence sequence per arm for its Bernoulli mean, by betting (Waudby-Smith & Ramdas,
    "Estimating means of bounded random variables by betting", JRSS-B 2023, the hedged capital
    process with predictable plug-in bets), each at level ``α/2``. For a candidate mean ``m`` an
    arm bets on "the mean is above ``m``" and on "below ``m``" with capitals

        K⁺(m) = Π (1 + λ⁺(m)(x − m)),   K⁻(m) = Π (1 − λ⁻(m)(x − m)),

    and ``m`` leaves the arm's interval once ``max(K⁺, K⁻)/2 ≥ 2/α``. Under the true mean both
    capitals are non-negative supermartingales, so by Ville's inequality the interval covers the
    arm's mean at *every* event simultaneously with probability at least ``1 − α/2``, however
    small the arm and however few its events (no normal approximation, no plug-in variance).
    The difference interval ``[L_v − U_c, U_v − L_c]`` then covers the difference at every
    event with probability at least ``1 − α``, for any traffic split. The intervals are running
    intersections (each new interval is intersected with the previous one, which Ville's
    inequality allows), so they only shrink.

    Implementation: capitals on a fixed grid of ``GRID_SIZE`` candidate means (denser near 0 and
    1, where rare errors need resolution), updated with numpy one *block* at a time. A block of
    an arm starts after ``s`` of its events and lasts ``max(1, s // BLOCK_SHARE)`` events; its bet
    ``λ`` is fixed when it starts, from the arm's count and variance so far (predictable, as the
    validity proof requires), so the block's factor depends only on its count of ones. Bounds are
    read when a block closes; reading less often than every event keeps the guarantee, since it
    holds at every stopping time. Grid bounds are conservative: the lower bound is the largest
    rejected grid point below the interval (the capital ``K⁺`` is non-increasing in ``m``), the
    upper bound the smallest rejected one above. The state is the list of closed blocks' counts
    and ones: plain data, replayed exactly on restore.

``asymptotic`` (for continuous metrics: latency, absolute or squared error)
    The asymptotic confidence sequence of Waudby-Smith et al. ("Time-uniform central limit
    theory and asymptotic confidence sequences", 2023), as GrowthBook and PostHog use it. With
    ``n = n_control + n_variant`` events, the difference of means ``θ̂`` and its plug-in variance
    ``S² = var_c/n_c + var_v/n_v``, the interval ``θ̂ ± w`` has half-width

        w = sqrt( S² · 2(nρ² + 1)/(nρ²) · ln( sqrt(nρ² + 1)/α ) ),
        ρ² = (−2 ln α + ln(−2 ln α + 1)) / N*,

    where ``N*`` (``tuning_n``) is the total sample size at which it is tightest. Its coverage is
    asymptotic: it needs enough events per arm for the central limit theorem (``min_samples``,
    default 30) and a variance that is not degenerate. ``p_value`` is the always-valid p-value
    of the dual mixture SPRT (Johari et al. 2017) for "no difference".

Direction: observations keep the package's meaning (1 = error, or a continuous value that is worse
when larger), so by default *lower is better*; pass ``higher_is_better=True`` when feeding e.g.
correctness bits. Everything reported is oriented as the variant's **improvement** over control,
``δ = mean_v − mean_c`` if higher is better, else ``mean_c − mean_v``: positive is better.

- ``harm``: the whole interval lies below ``−margin`` (the variant is worse by more than the
  margin). It is a level: it stays true while the evidence stands (with the mixture and betting
  methods for the rest of the comparison), and callers act on it whenever their own gates
  allow. ``drift_detected`` is the edge: true right after the update that newly declared harm.
- ``non_inferior``: the whole interval lies above ``−margin``: safe to advance a rollout.
- Until both arms have ``min_samples`` events there is no decision (interval unbounded). The
  mixture and betting methods need no minimum for validity (default 1); the asymptotic one
  does (30).

Arms are fed separately, one observation at a time or as sufficient statistics (``n`` and the sum,
plus the sum of squares for continuous metrics), so a batch costs one update. With the betting
method a batch that crosses a block boundary extends the block (its bet stays the one fixed at the
block's start, which keeps it predictable), so batched and single feeding may read bounds at
slightly different counts; both are valid. Delayed labels are fine when the delay depends on
neither the outcome nor the arm; feed only matured events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

import numpy as np
import numpy.typing as npt

from driftswitch.detectors.base import JSON, check_kind
from driftswitch.detectors.registry import register

__all__ = [
    "ARMS",
    "BLOCK_SHARE",
    "GRID",
    "GRID_SIZE",
    "METHODS",
    "Arm",
    "ArmStats",
    "BettingArm",
    "Comparison",
    "Sequential",
    "betting_bounds_many",
    "block_ends",
    "cs_bounds",
    "cs_half_width",
    "cs_rho2",
    "mixture_interval",
    "mixture_log_e",
    "mixture_log_e_equal",
    "mixture_log_numerator",
    "profile_loglik",
]

Arm = Literal["control", "variant"]
#: The two arms of a comparison: ``control`` is the ``compare_to`` variant.
ARMS: tuple[Arm, Arm] = ("control", "variant")
#: The comparison methods (module docstring).
METHODS = ("mixture", "betting", "asymptotic")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def cs_rho2(alpha: float, tuning_n: float) -> float:
    """ρ² of the asymptotic confidence sequence, tightest at ``tuning_n`` total events."""
    log_term = -2.0 * math.log(alpha)
    return (log_term + math.log(log_term + 1.0)) / tuning_n


def _half_width(s2: float, n: int, rho2: float, alpha: float) -> float:
    """Half-width for plug-in variance ``s2`` of the difference after ``n`` total events."""
    nr = n * rho2
    return math.sqrt(s2 * 2.0 * (nr + 1.0) / nr * math.log(math.sqrt(nr + 1.0) / alpha))


def cs_half_width(s2: FloatArray, n: FloatArray, alpha: float, tuning_n: float) -> FloatArray:
    """Vectorised half-width (same formula as the detector): for simulations and benchmarks.

    ``s2`` is the plug-in variance of the difference of means (``var_c/n_c + var_v/n_v``) and ``n``
    the total number of events, elementwise.
    """
    rho2 = cs_rho2(alpha, tuning_n)
    nr = n * rho2
    result: FloatArray = np.sqrt(s2 * 2.0 * (nr + 1.0) / nr * np.log(np.sqrt(nr + 1.0) / alpha))
    return result


def cs_bounds(
    n_control: FloatArray,
    sum_control: FloatArray,
    sumsq_control: FloatArray,
    n_variant: FloatArray,
    sum_variant: FloatArray,
    sumsq_variant: FloatArray,
    *,
    alpha: float = 0.05,
    tuning_n: float = 5000,
    higher_is_better: bool = False,
) -> tuple[FloatArray, FloatArray]:
    """Vectorised interval on the improvement δ from per-arm counts, sums and sums of squares.

    Elementwise the same bounds ``Sequential`` reports (up to floating-point rounding of the
    variance), for simulating many continuously monitored experiments at once.
    """
    mean_c = sum_control / n_control
    mean_v = sum_variant / n_variant
    var_c = np.maximum(sumsq_control / n_control - mean_c * mean_c, 0.0)
    var_v = np.maximum(sumsq_variant / n_variant - mean_v * mean_v, 0.0)
    effect = mean_v - mean_c if higher_is_better else mean_c - mean_v
    width = cs_half_width(
        var_c / n_control + var_v / n_variant, n_control + n_variant, alpha, tuning_n
    )
    return effect - width, effect + width


@dataclass
class ArmStats:
    """Count, mean and sum of squared deviations of one arm (Chan et al.'s mergeable form).

    Kept as mean and ``m2`` rather than raw sums so continuous metrics with large values do not
    lose precision to cancellation in ``Σx² − (Σx)²/n``.
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        """Welford's update with one observation."""
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def merge(self, n: int, mean: float, m2: float) -> None:
        """Merge a batch summarised as count, mean and squared deviations."""
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def set_bits(self, n: int, ones: int) -> None:
        """Count and moments of ``n`` 0/1 outcomes with ``ones`` ones, computed from the counts
        (so they do not depend on the order or batching of the outcomes)."""
        self.n = n
        if n:
            self.mean = ones / n
            self.m2 = ones - ones * ones / n
        else:
            self.mean = self.m2 = 0.0

    @property
    def variance(self) -> float:
        """The plug-in (maximum-likelihood) variance ``m2 / n``; p(1 − p) for error bits."""
        return max(self.m2, 0.0) / self.n if self.n else 0.0

    def to_state(self) -> dict[str, JSON]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ArmStats:
        return cls(n=int(state["n"]), mean=float(state["mean"]), m2=float(state["m2"]))


# -- Beta-mixture likelihood ratio (e-process) -------------------------------------------------


def _loglik(ones: float, n: float, q: float) -> float:
    """Bernoulli log-likelihood of ``ones`` in ``n`` at mean ``q`` (0·log 0 = 0)."""
    out = 0.0
    if ones:
        if q <= 0.0:
            return -math.inf
        out += ones * math.log(q)
    if n - ones:
        if q >= 1.0:
            return -math.inf
        out += (n - ones) * math.log1p(-q)
    return out


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def mixture_log_numerator(ones_c: int, n_c: int, ones_v: int, n_v: int) -> float:
    """Log marginal likelihood of both arms under independent uniform (Beta(1, 1)) priors."""
    return _log_beta(1 + ones_c, 1 + n_c - ones_c) + _log_beta(1 + ones_v, 1 + n_v - ones_v)


def profile_loglik(ones_c: int, n_c: int, ones_v: int, n_v: int, d: float) -> float:
    """Largest log-likelihood of both arms subject to ``mean_v − mean_c = d``.

    The log-likelihood is concave in the control's mean ``q`` (the variant's is ``q + d``), so
    its maximiser is found by bisection on the sign of the derivative (60 halvings: exact to
    double precision).
    """
    lo, hi = max(0.0, -d), min(1.0, 1.0 - d)
    if hi <= lo:
        return _loglik(ones_c, n_c, lo) + _loglik(ones_v, n_v, lo + d)
    zeros_c, zeros_v = n_c - ones_c, n_v - ones_v
    for _ in range(60):
        q = 0.5 * (lo + hi)
        slope = 0.0
        if ones_c:
            slope += ones_c / q
        if zeros_c:
            slope -= zeros_c / (1.0 - q)
        if ones_v:
            slope += ones_v / (q + d)
        if zeros_v:
            slope -= zeros_v / (1.0 - q - d)
        if slope > 0:
            lo = q
        else:
            hi = q
    q = 0.5 * (lo + hi)
    return _loglik(ones_c, n_c, q) + _loglik(ones_v, n_v, q + d)


def mixture_log_e(ones_c: int, n_c: int, ones_v: int, n_v: int, d: float) -> float:
    """Log e-value against "``mean_v − mean_c = d``": mixture over profile likelihood.

    For the true means the ratio of the mixture to *their* likelihood is a non-negative
    martingale with mean 1 (Robbins' mixture); the profile likelihood is at least that
    likelihood, so this e-value is below a test martingale and Ville's inequality bounds the
    chance that it ever reaches ``1/α`` by ``α``.
    """
    profile = profile_loglik(ones_c, n_c, ones_v, n_v, d)
    if profile == -math.inf:
        return math.inf
    return mixture_log_numerator(ones_c, n_c, ones_v, n_v) - profile


def mixture_interval(
    ones_c: int, n_c: int, ones_v: int, n_v: int, alpha: float
) -> tuple[float, float]:
    """The differences ``d = mean_v − mean_c`` not rejected at level ``alpha``, as an interval.

    The profile log-likelihood is concave in ``d``, so the rejected set is a prefix and a suffix
    of [−1, 1]; both ends are found by bisection and rounded outward (conservative).
    """
    level = math.log(1.0 / alpha)
    centre = ones_v / n_v - ones_c / n_c if n_c and n_v else 0.0

    def rejected(d: float) -> bool:
        return mixture_log_e(ones_c, n_c, ones_v, n_v, d) >= level

    bounds = []
    for end in (-1.0, 1.0):
        if not rejected(end):
            bounds.append(end)
            continue
        inside, outside = centre, end
        for _ in range(40):
            mid = 0.5 * (inside + outside)
            if rejected(mid):
                outside = mid
            else:
                inside = mid
        bounds.append(outside)
    return bounds[0], bounds[1]


def mixture_log_e_equal(
    ones_c: FloatArray, n_c: FloatArray, ones_v: FloatArray, n_v: FloatArray
) -> FloatArray:
    """Vectorised ``mixture_log_e`` at ``d = 0`` (closed form: the pooled mean maximises the
    likelihood of "no difference"), for simulating many monitored experiments at once."""
    top = int(max(float(np.max(n_c)), float(np.max(n_v)))) + 2
    # lgamma(i) = log((i − 1)!) for integer i >= 1, as a table.
    log_gamma = np.concatenate(([0.0, 0.0], np.cumsum(np.log(np.arange(1, top + 1)))))

    def log_beta(a: FloatArray, b: FloatArray) -> FloatArray:
        out: FloatArray = (
            log_gamma[a.astype(np.int64)]
            + log_gamma[b.astype(np.int64)]
            - log_gamma[(a + b).astype(np.int64)]
        )
        return out

    def xlogy(x: FloatArray, y: FloatArray) -> FloatArray:
        out: FloatArray = np.where(x > 0, x * np.log(np.where(x > 0, y, 1.0)), 0.0)
        return out

    n = n_c + n_v
    ones = ones_c + ones_v
    pooled = np.where(n > 0, ones / np.maximum(n, 1), 0.5)
    numerator = log_beta(1 + ones_c, 1 + n_c - ones_c) + log_beta(1 + ones_v, 1 + n_v - ones_v)
    result: FloatArray = numerator - (xlogy(ones, pooled) + xlogy(n - ones, 1 - pooled))
    return result


# -- betting confidence sequence per arm -------------------------------------------------------

#: Candidate means on which the capitals are kept (Chebyshev-like spacing: 0.00077 apart near
#: 1/2, finer toward 0 and 1).
GRID_SIZE = 2049
GRID: FloatArray = 0.5 * (1.0 - np.cos(np.pi * np.arange(GRID_SIZE) / (GRID_SIZE - 1)))
GRID[0], GRID[-1] = 0.0, 1.0
#: A block starting after ``s`` events of an arm lasts ``max(1, s // BLOCK_SHARE)`` events: bounds
#: are read at most ~6 % of an arm's count late.
BLOCK_SHARE = 16
#: Largest fraction of the capital staked on one event (``c`` of the hedged capital process).
BET_CAP = 0.5
_TINY = 1e-300
_CAP_UP: FloatArray = BET_CAP / np.maximum(GRID, _TINY)
_CAP_DOWN: FloatArray = BET_CAP / np.maximum(1.0 - GRID, _TINY)
_ONE_MINUS: FloatArray = 1.0 - GRID


def block_length(start: int) -> int:
    """Events in the block that starts after ``start`` events of an arm."""
    return max(1, start // BLOCK_SHARE)


def block_ends(limit: int) -> list[int]:
    """The arm counts at which single-event feeding closes a block, up to ``limit``."""
    ends: list[int] = []
    n = 0
    while True:
        n += block_length(n)
        if n > limit:
            return ends
        ends.append(n)


def _bet(start: int, ones: Any, arm_alpha: float) -> Any:
    """The predictable plug-in bet λ of a block starting after ``start`` events with ``ones``
    ones (scalar or array): sqrt(2 ln(2/α) / (σ̂² t ln(1 + t))) with t = start + 1 and
    σ̂² = (1/4 + Σ(x − x̄)²)/(start + 1), Waudby-Smith & Ramdas's choice (their σ̂² uses running
    means; any predictable variance estimate keeps validity)."""
    t = start + 1
    if start:
        p = ones / start
        var = (0.25 + start * p * (1.0 - p)) / t
    else:
        var = 0.25 + 0.0 * ones
    return np.sqrt(2.0 * math.log(2.0 / arm_alpha) / (var * t * math.log1p(t)))


def _advance(log_up: FloatArray, log_down: FloatArray, lam: Any, n: int, ones: Any) -> None:
    """Multiply the capitals by one block of ``n`` events with ``ones`` ones, in place.

    ``lam`` and ``ones`` are scalars or arrays of shape ``(runs, 1)`` against capitals of shape
    ``(runs, GRID_SIZE)``.
    """
    up = np.minimum(lam, _CAP_UP)
    down = np.minimum(lam, _CAP_DOWN)
    zeros = n - ones
    log_up += ones * np.log1p(up * _ONE_MINUS) + zeros * np.log1p(-up * GRID)
    log_down += ones * np.log1p(-down * _ONE_MINUS) + zeros * np.log1p(down * GRID)


def _bounds(log_up: FloatArray, log_down: FloatArray, threshold: float) -> tuple[Any, Any]:
    """Conservative grid bounds of the hedged interval (last axis: the grid).

    ``K⁺`` is non-increasing and ``K⁻`` non-decreasing in the candidate mean, so the rejected
    means form a prefix and a suffix of the grid.
    """
    up = log_up >= threshold
    down = log_down >= threshold
    last_up = GRID_SIZE - 1 - np.argmax(up[..., ::-1], axis=-1)
    first_down = np.argmax(down, axis=-1)
    lower = np.where(up.any(axis=-1), GRID[last_up], 0.0)
    upper = np.where(down.any(axis=-1), GRID[first_down], 1.0)
    return lower, upper


def _threshold(arm_alpha: float) -> float:
    # Hedged with weights 1/2: reject when max(K⁺, K⁻)/2 ≥ 1/α_arm.
    return math.log(2.0 / arm_alpha)


class BettingArm:
    """Betting confidence sequence for one arm's Bernoulli mean at level ``arm_alpha``.

    ``add(n, ones)`` feeds events; it returns True when a block closed (the bounds may have
    moved). ``lower`` / ``upper`` are the running-intersection bounds.
    """

    __slots__ = (
        "arm_alpha",
        "block_len",
        "blocks",
        "log_down",
        "log_up",
        "lower",
        "n",
        "ones",
        "pending_n",
        "pending_ones",
        "threshold",
        "upper",
    )

    def __init__(self, arm_alpha: float) -> None:
        self.arm_alpha = arm_alpha
        self.threshold = _threshold(arm_alpha)
        self.log_up: FloatArray = np.zeros(GRID_SIZE)
        self.log_down: FloatArray = np.zeros(GRID_SIZE)
        self.lower = 0.0
        self.upper = 1.0
        self.n = 0
        self.ones = 0
        #: Closed blocks as ``[events, ones]``: the state.
        self.blocks: list[list[int]] = []
        self.pending_n = 0
        self.pending_ones = 0
        self.block_len = block_length(0)

    def add(self, n: int, ones: int) -> bool:
        """Feed ``n`` events with ``ones`` ones; True when a block closed."""
        self.n += n
        self.ones += ones
        self.pending_n += n
        self.pending_ones += ones
        if self.pending_n < self.block_len:
            return False
        self._close()
        return True

    def _close(self) -> None:
        n, ones = self.pending_n, self.pending_ones
        start = self.n - n
        lam = _bet(start, self.ones - ones, self.arm_alpha)
        _advance(self.log_up, self.log_down, lam, n, ones)
        lower, upper = _bounds(self.log_up, self.log_down, self.threshold)
        self.lower = max(self.lower, float(lower))
        self.upper = min(self.upper, float(upper))
        self.blocks.append([n, ones])
        self.pending_n = self.pending_ones = 0
        self.block_len = block_length(self.n)

    def to_state(self) -> dict[str, JSON]:
        return {
            "blocks": [list(b) for b in self.blocks],
            "pending": [self.pending_n, self.pending_ones],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], arm_alpha: float) -> BettingArm:
        arm = cls(arm_alpha)
        for n, ones in state["blocks"]:
            arm.n += int(n)
            arm.ones += int(ones)
            arm.pending_n, arm.pending_ones = int(n), int(ones)
            arm._close()
        pending_n, pending_ones = state["pending"]
        arm.n += int(pending_n)
        arm.ones += int(pending_ones)
        arm.pending_n, arm.pending_ones = int(pending_n), int(pending_ones)
        return arm


def betting_bounds_many(bits: npt.NDArray[Any], arm_alpha: float) -> tuple[FloatArray, FloatArray]:
    """Vectorised ``BettingArm`` over independent runs fed one event at a time.

    ``bits`` has shape ``(runs, events)`` (0/1). Returns ``lower`` and ``upper`` of shape
    ``(runs, len(block_ends(events)))``: the running-intersection bounds after each block end,
    exactly what a ``BettingArm`` fed the same bits reports at those counts (same arithmetic).
    """
    runs, events = bits.shape
    ends = block_ends(events)
    cum = np.concatenate([np.zeros((runs, 1)), np.cumsum(bits, axis=1, dtype=np.float64)], axis=1)
    log_up = np.zeros((runs, GRID_SIZE))
    log_down = np.zeros((runs, GRID_SIZE))
    threshold = _threshold(arm_alpha)
    lowers = np.empty((runs, len(ends)))
    uppers = np.empty((runs, len(ends)))
    lower = np.zeros(runs)
    upper = np.ones(runs)
    start = 0
    for j, end in enumerate(ends):
        before = cum[:, start : start + 1]
        ones = cum[:, end : end + 1] - before
        lam = _bet(start, before, arm_alpha)
        _advance(log_up, log_down, lam, end - start, ones)
        lo, hi = _bounds(log_up, log_down, threshold)
        lower = np.maximum(lower, lo)
        upper = np.minimum(upper, hi)
        lowers[:, j] = lower
        uppers[:, j] = upper
        start = end
    return lowers, uppers


class Comparison:
    """A two-sample detector: fed per arm, decides about the variant relative to control.

    The streaming pipeline calls ``update(arm, x)`` or ``update_counts(arm, n, total, total_sq)``
    for each matured outcome or batch, then reads ``harm`` / ``non_inferior`` and attaches
    ``explain()`` to the flag change.
    """

    kind: ClassVar[str]
    two_sample: ClassVar[bool] = True
    inputs: ClassVar[frozenset[str]]
    supports_counts: ClassVar[bool] = True

    def update(self, arm: str, x: float) -> None:
        raise NotImplementedError

    @property
    def harm(self) -> bool:
        raise NotImplementedError

    def update_until_harm(self, arms: Sequence[int], xs: Sequence[float]) -> int | None:
        """Feed observations in order (``arms[i]``: 1 = the variant, 0 = control) up to and
        including the first after which ``harm`` holds; return its index, or None when all were
        fed without harm. The state afterwards is the one ``update`` leaves after the same
        observations; this default feeds one at a time."""
        update = self.update
        for i, (arm, x) in enumerate(zip(arms, xs, strict=True)):
            update("variant" if arm else "control", x)
            if self.harm:
                return i
        return None


def _arm(arm: str) -> Arm:
    if arm == "control":
        return "control"
    if arm == "variant":
        return "variant"
    raise ValueError(f"unknown arm {arm!r}; arms are: {', '.join(ARMS)}")


@register
class Sequential(Comparison):
    """Anytime-valid harm / non-inferiority decision for a variant versus its control.

    Parameters
    ----------
    alpha
        Error rate over the whole, continuously monitored comparison, in (0, 1): the probability
        that the interval ever fails to cover the true difference — so that harm or
        non-inferiority is ever declared wrongly — however often it is looked at.
    margin
        Non-negative tolerance in the metric's units (e.g. 0.01 = one accuracy point): harm means
        worse by more than this, non-inferiority means worse by less than this.
    higher_is_better
        False (default) for error bits and error-like metrics (latency, absolute error); True for
        accuracy/correctness bits and other metrics where larger is better.
    method
        ``mixture`` (default) or ``betting`` for 0/1 outcomes, exact at every sample size and
        split; ``asymptotic`` for continuous metrics (module docstring).
    min_samples
        Events per arm before any decision. Default 1 for ``mixture`` and ``betting`` (valid at
        every n: no minimum is needed), 30 for ``asymptotic`` (the central limit theorem needs
        some).
    tuning_n
        ``asymptotic`` only: total events (both arms) at which the interval is tightest
        (GrowthBook's default 5,000).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(3)
    >>> seq = Sequential(alpha=0.05)
    >>> for i in range(5000):
    ...     seq.update("control", float(rng.random() < 0.10))
    ...     seq.update("variant", float(rng.random() < 0.20))
    ...     if seq.harm:
    ...         print(f"harm after {i + 1} pairs, upper bound {seq.interval[1]:.4f}")
    ...         break
    harm after 318 pairs, upper bound -0.0019
    """

    kind: ClassVar[str] = "sequential"
    inputs: ClassVar[frozenset[str]] = frozenset({"bernoulli", "continuous"})

    @staticmethod
    def method_for(input_kind: str) -> str:
        """The method for a metric's input kind: mixture for 0/1 outcomes, else asymptotic."""
        return "mixture" if input_kind == "bernoulli" else "asymptotic"

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        margin: float = 0.0,
        higher_is_better: bool = False,
        method: str = "mixture",
        min_samples: int | None = None,
        tuning_n: int | None = None,
    ) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
        if (
            isinstance(margin, bool)
            or not isinstance(margin, int | float)
            or not math.isfinite(margin)
            or margin < 0
        ):
            raise ValueError(f"margin must be a finite number >= 0 (metric units), got {margin!r}")
        if not isinstance(higher_is_better, bool):
            raise ValueError(f"higher_is_better must be true or false, got {higher_is_better!r}")
        if method not in METHODS:
            raise ValueError(
                f"method must be one of {', '.join(METHODS)} (mixture or betting for 0/1 "
                f"outcomes, asymptotic for continuous metrics), got {method!r}"
            )
        exact = method != "asymptotic"
        if exact and margin >= 1:
            raise ValueError(f"margin must be below 1 for 0/1 outcomes, got {margin!r}")
        if tuning_n is not None:
            if exact:
                raise ValueError(
                    f"tuning_n applies to method 'asymptotic' only; method {method!r} needs no "
                    "tuning (remove tuning_n, or set method: asymptotic)"
                )
            if isinstance(tuning_n, bool) or not isinstance(tuning_n, int) or tuning_n < 1:
                raise ValueError(
                    f"tuning_n must be an integer >= 1 (total events), got {tuning_n!r}"
                )
        least = 1 if exact else 2
        if min_samples is not None and (
            isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < least
        ):
            raise ValueError(
                f"min_samples must be an integer >= {least} (per arm), got {min_samples!r}"
            )
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.higher_is_better = higher_is_better
        self.method = method
        self.min_samples = min_samples if min_samples is not None else (1 if exact else 30)
        self.tuning_n = tuning_n if tuning_n is not None else 5000
        self._params: dict[str, JSON] = {
            "alpha": alpha,
            "margin": margin,
            "higher_is_better": higher_is_better,
            "method": method,
            "min_samples": min_samples,
            "tuning_n": tuning_n,
        }
        self._exact = exact
        self._rho2 = cs_rho2(self.alpha, self.tuning_n)
        self._arms = {"control": ArmStats(), "variant": ArmStats()}
        #: Count of ones per arm (0/1 methods).
        self._ones = {"control": 0, "variant": 0}
        self._bets = (
            {arm: BettingArm(self.alpha / 2) for arm in ARMS} if method == "betting" else None
        )
        #: ``mixture``: total count at which the next look is due (``block_length`` schedule).
        self._next_look = 1
        self._cached: tuple[float, float] | None = None
        #: ``mixture``: the counts (ones_c, n_c, ones_v, n_v) at the last look; the interval is
        #: the one of that look (computed when read), so reading it costs nothing between looks.
        self._look: tuple[int, int, int, int] | None = None
        self._lower = -math.inf
        self._upper = math.inf
        self._harm = False
        self._non_inferior = False
        self._drift = False
        self._p_value = 1.0

    # -- feeding ---------------------------------------------------------------------------

    def update(self, arm: str, x: float) -> None:
        """Feed one matured observation of ``arm`` (``"control"`` or ``"variant"``)."""
        if not math.isfinite(x):
            raise ValueError(f"observation must be a finite number, got {x!r}")
        name = _arm(arm)
        stats = self._arms[name]
        if not self._exact:
            stats.add(float(x))
            self._evaluate()
            return
        if x != 0 and x != 1:
            raise ValueError(_NOT_BITS.format(self.method, x))
        bit = int(x)
        ones = self._ones[name] + bit
        self._ones[name] = ones
        stats.set_bits(stats.n + 1, ones)
        self._fed(name, 1, bit, stats.n == self.min_samples)

    def update_counts(self, arm: str, n: int, total: float, total_sq: float | None = None) -> bool:
        """Feed a batch of ``n`` observations of ``arm`` summing to ``total``.

        For error bits (or correctness bits) leave ``total_sq`` out: ``total`` is the count of ones
        and must lie in [0, n]. For continuous metrics (method ``asymptotic``) pass the sum of
        squares too. Returns whether this batch newly declared harm (same as ``drift_detected``
        afterwards).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        if not math.isfinite(total):
            raise ValueError(f"total must be finite, got {total!r}")
        name = _arm(arm)
        stats = self._arms[name]
        if n == 0:
            self._drift = False
            return False
        mean = total / n
        if total_sq is None or self._exact:
            if not 0 <= total <= n:
                raise ValueError(f"count of ones must lie in [0, n={n}], got {total!r}")
            if self._exact and (
                total != int(total) or (total_sq is not None and total_sq != total)
            ):
                raise ValueError(_NOT_BITS.format(self.method, f"a batch summing to {total!r}"))
            m2 = total - total * total / n
        else:
            if not math.isfinite(total_sq):
                raise ValueError(f"total_sq must be finite, got {total_sq!r}")
            m2 = max(total_sq - total * total / n, 0.0)
        reached = stats.n < self.min_samples <= stats.n + n
        if not self._exact:
            stats.merge(n, mean, m2)
            self._evaluate()
            return self._drift
        self._ones[name] += int(total)
        stats.set_bits(stats.n + n, self._ones[name])
        self._fed(name, n, int(total), reached)
        return self._drift

    def update_until_harm(self, arms: Sequence[int], xs: Sequence[float]) -> int | None:
        """As :meth:`Comparison.update_until_harm`; for ``mixture`` the batch is counted with
        numpy and the e-value computed only at the looks the schedule (or the ``min_samples``
        gate) makes inside it: the same looks, at the same observations, as one at a time."""
        if self.method != "mixture" or self._harm or not len(xs):
            return super().update_until_harm(arms, xs)
        bits = np.asarray(xs, dtype=np.float64)
        if not np.all((bits == 0) | (bits == 1)):
            return super().update_until_harm(arms, xs)  # raises where update would
        variant = np.asarray(arms, dtype=np.int64) != 0
        n = len(bits)
        nv = np.cumsum(variant)
        nc = np.arange(1, n + 1) - nv
        ov = np.cumsum(bits * variant).astype(np.int64)
        oc = np.cumsum(bits * ~variant).astype(np.int64)
        c, v = self._arms["control"], self._arms["variant"]
        c0, v0 = c.n, v.n
        oc0, ov0 = self._ones["control"], self._ones["variant"]
        start = self.n
        scheduled: list[int] = []  # totals at which the schedule looks, inside the batch
        look = self._next_look
        while look <= start + n:
            scheduled.append(look)
            look += block_length(look)
        looks = {t - start - 1 for t in scheduled}
        least = self.min_samples
        for before, counts in ((c0, nc), (v0, nv)):
            if before < least <= before + int(counts[-1]):
                looks.add(int(np.searchsorted(counts, least - before)))
        for j in sorted(looks):
            self._set_counts(c0 + int(nc[j]), oc0 + int(oc[j]), v0 + int(nv[j]), ov0 + int(ov[j]))
            self._evaluate()
            if self.harm:
                # The schedule as it stands after observation j.
                self._next_look = next((t for t in scheduled if t > start + j + 1), look)
                return j
        self._next_look = look
        last = n - 1
        self._set_counts(
            c0 + int(nc[last]), oc0 + int(oc[last]), v0 + int(nv[last]), ov0 + int(ov[last])
        )
        if last not in looks:
            self._drift = False
        return None

    def update_many_standing(self, arms: Sequence[int], xs: Sequence[float]) -> bool:
        """Feed a batch in order once harm stands, as ``update`` one at a time would, and return
        True; or feed nothing and return False when this does not apply (method other than
        ``mixture``, no harm yet, a value that is not 0/1: the caller feeds one at a time).

        For ``mixture`` harm, once shown, stands, so after every observation of the batch
        ``harm`` holds and ``drift_detected`` is False; the looks the schedule makes inside the
        batch only record the counts they saw (what ``interval`` reads). The state afterwards is
        the one ``update`` leaves."""
        c, v = self._arms["control"], self._arms["variant"]
        least = self.min_samples
        if self.method != "mixture" or not self._harm or c.n < least or v.n < least:
            return False
        n = len(xs)
        if not n:
            return True
        bits = np.asarray(xs, dtype=np.float64)
        if not np.all((bits == 0) | (bits == 1)):
            return False
        variant = np.asarray(arms, dtype=np.int64) != 0
        start = self.n
        # The looks: ``_fed`` looks at the first total at or past ``_next_look``, then schedules.
        look = max(self._next_look, start + 1)
        last_look: int | None = None
        while look <= start + n:
            last_look = look
            look += block_length(look)
        self._next_look = look
        nv = np.cumsum(variant)
        ov = np.cumsum(bits * variant)
        oc = np.cumsum(bits * ~variant)
        c0, v0 = c.n, v.n
        oc0, ov0 = self._ones["control"], self._ones["variant"]
        if last_look is not None:
            j = last_look - start - 1
            n_v = v0 + int(nv[j])
            n_c = c0 + (j + 1) - int(nv[j])
            self._look = (oc0 + int(oc[j]), n_c, ov0 + int(ov[j]), n_v)
            self._cached = None
            self._lower, self._upper = -math.inf, math.inf
            self._non_inferior = False
        last = n - 1
        self._set_counts(
            c0 + n - int(nv[last]), oc0 + int(oc[last]), v0 + int(nv[last]), ov0 + int(ov[last])
        )
        self._drift = False
        return True

    def _set_counts(self, n_c: int, ones_c: int, n_v: int, ones_v: int) -> None:
        self._ones["control"], self._ones["variant"] = ones_c, ones_v
        self._arms["control"].set_bits(n_c, ones_c)
        self._arms["variant"].set_bits(n_v, ones_v)

    def _fed(self, name: Arm, n: int, ones: int, reached: bool) -> None:
        """After 0/1 events: look when the method's schedule (or the ``min_samples`` gate) says."""
        if self._bets is not None:
            look = self._bets[name].add(n, ones)
        else:
            total = self.n
            look = total >= self._next_look
            if look:
                self._next_look = total + block_length(total)
        if look or reached:
            self._evaluate()
        else:
            self._drift = False

    def _evaluate(self) -> None:
        c, v = self._arms["control"], self._arms["variant"]
        was_harm = self._harm
        if c.n < self.min_samples or v.n < self.min_samples:
            self._lower, self._upper = -math.inf, math.inf
            self._harm = self._non_inferior = False
            self._drift = False
            return
        if self.method == "mixture":
            self._evaluate_mixture()
        elif self._bets is not None:
            bc, bv = self._bets["control"], self._bets["variant"]
            if self.higher_is_better:
                self._lower, self._upper = bv.lower - bc.upper, bv.upper - bc.lower
            else:
                self._lower, self._upper = bc.lower - bv.upper, bc.upper - bv.lower
            self._harm = self._upper < -self.margin
            self._non_inferior = self._lower > -self.margin
        else:
            diff = v.mean - c.mean
            effect = diff if self.higher_is_better else -diff
            s2 = c.variance / c.n + v.variance / v.n
            total = c.n + v.n
            width = _half_width(s2, total, self._rho2, self.alpha)
            self._lower, self._upper = effect - width, effect + width
            if s2 > 0:
                # mSPRT for θ0 = 0 with mixing variance τ² = ρ²·S²·n (the interval's dual).
                nr = total * self._rho2
                log_lambda = -0.5 * math.log1p(nr) + nr * effect * effect / (2.0 * s2 * (1.0 + nr))
                p = math.exp(-log_lambda) if log_lambda < 700 else 0.0
                self._p_value = min(self._p_value, p)
            self._harm = self._upper < -self.margin
            self._non_inferior = self._lower > -self.margin
        self._drift = self._harm and not was_harm

    def _evaluate_mixture(self) -> None:
        """One look: the e-value against "improvement = −margin" decides both questions (the
        rejected differences form the two tails of [−1, 1]). A decision, once reached, stands:
        the e-value crossed ``1/α``, which under the null happens with probability ≤ α at any
        time, so the decision is valid at the look that made it. Harm, once shown, stands;
        non-inferiority is re-read at every look (a guardrail keeps watching for harm)."""
        self._lower, self._upper = -math.inf, math.inf  # computed when read (``interval``)
        self._non_inferior = False
        c, v = self._arms["control"], self._arms["variant"]
        self._look = (self._ones["control"], c.n, self._ones["variant"], v.n)
        self._cached = None
        if self._harm:
            return
        c, v = self._arms["control"], self._arms["variant"]
        oc, ov = self._ones["control"], self._ones["variant"]
        sign = 1.0 if self.higher_is_better else -1.0
        effect = sign * (ov / v.n - oc / c.n)
        if effect == -self.margin:
            return
        log_e = mixture_log_e(oc, c.n, ov, v.n, -self.margin * sign)
        if log_e >= math.log(1.0 / self.alpha):
            if effect < -self.margin:
                self._harm = True
            else:
                self._non_inferior = True

    # -- reading ---------------------------------------------------------------------------

    @property
    def drift_detected(self) -> bool:
        """True right after the update that newly declared harm (the edge of ``harm``)."""
        return self._drift

    @property
    def harm(self) -> bool:
        """The variant is shown worse than control by more than ``margin`` (a level)."""
        return self._harm

    @property
    def non_inferior(self) -> bool:
        """The variant is shown worse by less than ``margin`` (or better): safe to advance."""
        return self._non_inferior

    @property
    def decided(self) -> bool:
        """Whether both arms have ``min_samples`` events (before that: no decision yet)."""
        return all(a.n >= self.min_samples for a in self._arms.values())

    @property
    def interval(self) -> tuple[float, float]:
        """Bounds on the improvement δ, valid at every look (unbounded before a decision).

        ``mixture``: the improvements its e-value did not reject at the last look (looks follow
        the count schedule), computed on first read after that look."""
        if self.method != "mixture" or not self.decided or self._look is None:
            return self._lower, self._upper
        if self._cached is None:
            lo, hi = mixture_interval(*self._look, self.alpha)
            self._cached = (lo, hi) if self.higher_is_better else (-hi, -lo)
        return self._cached

    @property
    def effect(self) -> float:
        """Estimated improvement δ of the variant over control (positive = better)."""
        diff = self._arms["variant"].mean - self._arms["control"].mean
        return diff if self.higher_is_better else -diff

    @property
    def p_value(self) -> float | None:
        """``asymptotic``: always-valid p-value for "no difference" (running minimum of the
        mSPRT's 1/Λ). Other methods: None (read ``interval``)."""
        return self._p_value if not self._exact else None

    @property
    def statistic(self) -> float:
        """Upper bound of the interval on δ; harm when it falls below ``threshold``."""
        return self.interval[1]

    @property
    def threshold(self) -> float:
        """``−margin``: the improvement below which the variant counts as harmful."""
        return 0.0 - self.margin

    @property
    def n(self) -> int:
        """Matured events fed, both arms together."""
        return self._arms["control"].n + self._arms["variant"].n

    def arm(self, arm: str) -> ArmStats:
        """Count, mean and squared deviations of ``arm`` (a copy)."""
        s = self._arms[_arm(arm)]
        return ArmStats(s.n, s.mean, s.m2)

    def explain(self) -> dict[str, JSON]:
        """Plain-data evidence: the interval, the estimate, both arms and the decision."""
        c, v = self._arms["control"], self._arms["variant"]
        decided = self.decided
        lower, upper = self.interval
        out: dict[str, JSON] = {
            "detector": self.kind,
            "method": _METHOD_NAMES[self.method],
            "decision": (
                "harm"
                if self._harm
                else "non_inferior"
                if self._non_inferior
                else "undecided"
                if decided
                else "too_few_samples"
            ),
            "effect": self.effect if decided else None,
            "interval": [lower, upper] if decided else None,
            "statistic": upper if decided else None,
            "threshold": self.threshold,
            "margin": self.margin,
            "alpha": self.alpha,
            "higher_is_better": self.higher_is_better,
            "p_value": self.p_value,
            "n": self.n,
            "n_control": c.n,
            "n_variant": v.n,
            "mean_control": c.mean,
            "mean_variant": v.mean,
            "min_samples": self.min_samples,
        }
        if self._bets is not None:
            for arm in ARMS:
                b = self._bets[arm]
                out[f"interval_{arm}"] = [b.lower, b.upper]
        return out

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, JSON]:
        state: dict[str, JSON] = {
            "kind": self.kind,
            "params": {k: v for k, v in self._params.items() if v is not None},
            "control": self._arms["control"].to_state(),
            "variant": self._arms["variant"].to_state(),
            "harm": self._harm,
            "drift": self._drift,
            "p_value": self._p_value,
        }
        if self._exact:
            state["ones"] = dict(self._ones)
            state["non_inferior"] = self._non_inferior
            state["next_look"] = self._next_look
            state["look"] = None if self._look is None else list(self._look)
        if self._bets is not None:
            state["bets"] = {arm: self._bets[arm].to_state() for arm in ARMS}
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        check_kind(cls.kind, state)
        params = dict(state["params"])
        # States written before the exact methods existed are asymptotic comparisons.
        params.setdefault("method", "asymptotic")
        seq = cls(**params)
        for arm in ARMS:
            seq._arms[arm] = ArmStats.from_state(state[arm])
        if seq._exact:
            seq._ones = {arm: int(state["ones"][arm]) for arm in ARMS}
            seq._next_look = int(state["next_look"])
            look = state.get("look")
            if look is not None:
                oc, nc, ov, nv = (int(x) for x in look)
                seq._look = (oc, nc, ov, nv)
        if seq._bets is not None:
            for arm in ARMS:
                seq._bets[arm] = BettingArm.from_state(state["bets"][arm], seq.alpha / 2)
        if seq.method != "mixture":
            seq._evaluate()
        seq._harm = bool(state["harm"])
        seq._non_inferior = bool(state.get("non_inferior", seq._non_inferior))
        seq._drift = bool(state["drift"])
        seq._p_value = float(state["p_value"])
        return seq


_NOT_BITS = (
    "method {!r} takes 0/1 outcomes (error or correctness bits), got {}; use method "
    "'asymptotic' for continuous metrics"
)
_METHOD_NAMES = {
    "mixture": "Beta-mixture likelihood ratio (e-process), Robbins 1970",
    "betting": "betting confidence sequence per arm (Waudby-Smith & Ramdas 2023)",
    "asymptotic": "asymptotic confidence sequence (Waudby-Smith et al. 2023)",
}
