"""Anytime-valid comparison of a variant against its control (``compare_to``) on matured outcomes.

Two methods, chosen by ``method``:

``betting`` (default; for 0/1 outcomes: error or correctness bits)
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
  margin). It is a level: it stays true while the evidence stands (with the betting method:
  for good, since the interval only shrinks), and callers act on it whenever their own gates
  allow. ``drift_detected`` is the edge: true right after the update that newly declared harm.
- ``non_inferior``: the whole interval lies above ``−margin``: safe to advance a rollout.
- Until both arms have ``min_samples`` events there is no decision (interval unbounded). The
  betting method needs no minimum for validity (default 1); the asymptotic one does (30).

Arms are fed separately, one observation at a time or as sufficient statistics (``n`` and the sum,
plus the sum of squares for continuous metrics), so a batch costs one update. With the betting
method a batch that crosses a block boundary extends the block (its bet stays the one fixed at the
block's start, which keeps it predictable), so batched and single feeding may read bounds at
slightly different counts; both are valid. Delayed labels are fine when the delay depends on
neither the outcome nor the arm; feed only matured events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

import numpy as np
import numpy.typing as npt

from driftswitch.detectors.base import JSON
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
]

Arm = Literal["control", "variant"]
#: The two arms of a comparison: ``control`` is the ``compare_to`` variant.
ARMS: tuple[Arm, Arm] = ("control", "variant")
#: The comparison methods (module docstring).
METHODS = ("betting", "asymptotic")

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

    @property
    def variance(self) -> float:
        """The plug-in (maximum-likelihood) variance ``m2 / n``; p(1 − p) for error bits."""
        return max(self.m2, 0.0) / self.n if self.n else 0.0

    def to_state(self) -> dict[str, JSON]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ArmStats:
        return cls(n=int(state["n"]), mean=float(state["mean"]), m2=float(state["m2"]))


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


def _arm(arm: str) -> Arm:
    if arm == "control":
        return "control"
    if arm == "variant":
        return "variant"
    raise ValueError(f"unknown arm {arm!r}; arms are: {', '.join(ARMS)}")


def method_for(input_kind: str) -> str:
    """The default method for a metric's input kind: betting for 0/1 outcomes, else asymptotic."""
    return "betting" if input_kind == "bernoulli" else "asymptotic"


@register
class Sequential(Comparison):
    """Anytime-valid harm / non-inferiority decision for a variant versus its control.

    Parameters
    ----------
    alpha
        Error rate of the interval over the whole, continuously monitored experiment, in (0, 1):
        the probability that it ever fails to cover the true difference, however often it is
        looked at.
    margin
        Non-negative tolerance in the metric's units (e.g. 0.01 = one accuracy point): harm means
        worse by more than this, non-inferiority means worse by less than this.
    higher_is_better
        False (default) for error bits and error-like metrics (latency, absolute error); True for
        accuracy/correctness bits and other metrics where larger is better.
    method
        ``betting`` (default): exact at every sample size and split, for 0/1 outcomes.
        ``asymptotic``: for continuous metrics (module docstring).
    min_samples
        Events per arm before any decision. Default 1 for ``betting`` (valid at every n: no
        minimum is needed), 30 for ``asymptotic`` (the central limit theorem needs some).
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
    harm after 350 pairs, upper bound -0.0022
    """

    kind: ClassVar[str] = "sequential"
    inputs: ClassVar[frozenset[str]] = frozenset({"bernoulli", "continuous"})

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        margin: float = 0.0,
        higher_is_better: bool = False,
        method: str = "betting",
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
                f"method must be one of {', '.join(METHODS)} (betting for 0/1 outcomes, "
                f"asymptotic for continuous metrics), got {method!r}"
            )
        betting = method == "betting"
        if tuning_n is not None:
            if betting:
                raise ValueError(
                    "tuning_n applies to method 'asymptotic' only; the betting interval needs no "
                    "tuning (remove tuning_n, or set method: asymptotic)"
                )
            if isinstance(tuning_n, bool) or not isinstance(tuning_n, int) or tuning_n < 1:
                raise ValueError(
                    f"tuning_n must be an integer >= 1 (total events), got {tuning_n!r}"
                )
        least = 1 if betting else 2
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
        self.min_samples = min_samples if min_samples is not None else (1 if betting else 30)
        self.tuning_n = tuning_n if tuning_n is not None else 5000
        self._params: dict[str, JSON] = {
            "alpha": alpha,
            "margin": margin,
            "higher_is_better": higher_is_better,
            "method": method,
            "min_samples": min_samples,
            "tuning_n": tuning_n,
        }
        self._rho2 = cs_rho2(self.alpha, self.tuning_n)
        self._arms = {"control": ArmStats(), "variant": ArmStats()}
        self._bets = {arm: BettingArm(self.alpha / 2) for arm in ARMS} if betting else None
        self._lower = -math.inf
        self._upper = math.inf
        self._harm = False
        self._drift = False
        self._p_value = 1.0

    # -- feeding ---------------------------------------------------------------------------

    def update(self, arm: str, x: float) -> None:
        """Feed one matured observation of ``arm`` (``"control"`` or ``"variant"``)."""
        if not math.isfinite(x):
            raise ValueError(f"observation must be a finite number, got {x!r}")
        name = _arm(arm)
        if self._bets is None:
            self._arms[name].add(float(x))
            self._evaluate()
            return
        if x != 0 and x != 1:
            raise ValueError(_NOT_BITS.format(x))
        stats = self._arms[name]
        stats.add(float(x))
        if self._bets[name].add(1, int(x)) or stats.n == self.min_samples:
            self._evaluate()
        else:
            self._drift = False

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
        if total_sq is None or self._bets is not None:
            if not 0 <= total <= n:
                raise ValueError(f"count of ones must lie in [0, n={n}], got {total!r}")
            if self._bets is not None and (
                total != int(total) or (total_sq is not None and total_sq != total)
            ):
                raise ValueError(_NOT_BITS.format(f"a batch summing to {total!r}"))
            m2 = total - total * total / n
        else:
            if not math.isfinite(total_sq):
                raise ValueError(f"total_sq must be finite, got {total_sq!r}")
            m2 = max(total_sq - total * total / n, 0.0)
        reached = stats.n < self.min_samples <= stats.n + n
        stats.merge(n, mean, m2)
        if self._bets is None or self._bets[name].add(n, int(total)) or reached:
            self._evaluate()
        else:
            self._drift = False
        return self._drift

    def _evaluate(self) -> None:
        c, v = self._arms["control"], self._arms["variant"]
        was_harm = self._harm
        if c.n < self.min_samples or v.n < self.min_samples:
            self._lower, self._upper = -math.inf, math.inf
            self._harm = False
            self._drift = False
            return
        if self._bets is not None:
            bc, bv = self._bets["control"], self._bets["variant"]
            if self.higher_is_better:
                self._lower, self._upper = bv.lower - bc.upper, bv.upper - bc.lower
            else:
                self._lower, self._upper = bc.lower - bv.upper, bc.upper - bv.lower
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
        self._drift = self._harm and not was_harm

    # -- reading ---------------------------------------------------------------------------

    @property
    def drift_detected(self) -> bool:
        """True right after the update that newly declared harm (the edge of ``harm``)."""
        return self._drift

    @property
    def harm(self) -> bool:
        """The whole interval lies below ``−margin``: the variant is worse by more than that."""
        return self._harm

    @property
    def non_inferior(self) -> bool:
        """The whole interval lies above ``−margin``: safe to advance a rollout."""
        return self._lower > -self.margin

    @property
    def decided(self) -> bool:
        """Whether both arms have ``min_samples`` events (before that: no decision yet)."""
        return all(a.n >= self.min_samples for a in self._arms.values())

    @property
    def interval(self) -> tuple[float, float]:
        """The confidence-sequence bounds on the improvement δ (unbounded before a decision)."""
        return self._lower, self._upper

    @property
    def effect(self) -> float:
        """Estimated improvement δ of the variant over control (positive = better)."""
        diff = self._arms["variant"].mean - self._arms["control"].mean
        return diff if self.higher_is_better else -diff

    @property
    def p_value(self) -> float | None:
        """``asymptotic``: always-valid p-value for "no difference" (running minimum of the
        mSPRT's 1/Λ). ``betting``: None (read the interval)."""
        return None if self._bets is not None else self._p_value

    @property
    def statistic(self) -> float:
        """Upper bound of the interval on δ; harm when it falls below ``threshold``."""
        return self._upper

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
        out: dict[str, JSON] = {
            "detector": self.kind,
            "method": (
                "betting confidence sequence per arm (Waudby-Smith & Ramdas 2023)"
                if self._bets is not None
                else "asymptotic confidence sequence (Waudby-Smith et al. 2023)"
            ),
            "decision": (
                "harm"
                if self._harm
                else "non_inferior"
                if self.non_inferior
                else "undecided"
                if decided
                else "too_few_samples"
            ),
            "effect": self.effect if decided else None,
            "interval": [self._lower, self._upper] if decided else None,
            "statistic": self._upper if decided else None,
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
        if self._bets is not None:
            state["bets"] = {arm: self._bets[arm].to_state() for arm in ARMS}
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        if state.get("kind") != cls.kind:
            raise ValueError(f"state of kind {state.get('kind')!r} given to {cls.kind!r}")
        params = dict(state["params"])
        # States written before the betting method existed are asymptotic comparisons.
        params.setdefault("method", "asymptotic")
        seq = cls(**params)
        for arm in ARMS:
            seq._arms[arm] = ArmStats.from_state(state[arm])
        if seq._bets is not None:
            for arm in ARMS:
                seq._bets[arm] = BettingArm.from_state(state["bets"][arm], seq.alpha / 2)
        seq._evaluate()
        seq._harm = bool(state["harm"])
        seq._drift = bool(state["drift"])
        seq._p_value = float(state["p_value"])
        return seq


_NOT_BITS = (
    "method 'betting' takes 0/1 outcomes (error or correctness bits), got {}; use method "
    "'asymptotic' for continuous metrics"
)
