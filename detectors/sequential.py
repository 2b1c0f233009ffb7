"""Anytime-valid comparison of a variant against its control (``compare_to``) on matured outcomes.

The interval is the asymptotic confidence sequence of Waudby-Smith et al. ("Time-uniform central
limit theory and asymptotic confidence sequences", 2023), as GrowthBook and PostHog use it
(STATISTICS.md §4). With ``n = n_control + n_variant`` events, the difference of means ``θ̂`` and
its plug-in variance ``S² = var_c/n_c + var_v/n_v``, the interval ``θ̂ ± w`` has half-width

    w = sqrt( S² · 2(nρ² + 1)/(nρ²) · ln( sqrt(nρ² + 1)/α ) ),
    ρ² = (−2 ln α + ln(−2 ln α + 1)) / N*,

where ``N*`` (``tuning_n``) is the total sample size at which it is tightest. It covers the true
difference at *every* look simultaneously with probability about ``1 − α``, so it may be checked
after every event or batch without inflating false positives (a z-test re-checked every 100 pairs
gives 41.6 % false positives at nominal 5 %). This interval is exactly the set of ``θ0`` that the
mixture SPRT (Johari et al. 2017) with a normal mixing variance ``τ² = ρ²·S²·n`` does not reject,
so ``p_value`` reports that mSPRT's always-valid p-value for "no difference"
(``min_k 1/Λ_k``).

Direction: observations keep the package's meaning (1 = error, or a continuous value that is worse
when larger), so by default *lower is better*; pass ``higher_is_better=True`` when feeding e.g.
correctness bits. Everything reported is oriented as the variant's **improvement** over control,
``δ = mean_v − mean_c`` if higher is better, else ``mean_c − mean_v``: positive is better.

- ``harm``: the whole interval lies below ``−margin`` (the variant is worse by more than the
  margin): drives kill/rollback. ``drift_detected`` is edge-triggered: true right after the
  update that newly declared harm.
- ``non_inferior``: the whole interval lies above ``−margin``: safe to advance a rollout.
- Until both arms have ``min_samples`` events there is no decision (interval unbounded).

Arms are fed separately, one observation at a time or as sufficient statistics (``n`` and the sum,
plus the sum of squares for continuous metrics), so a batch costs one update. Delayed labels are
fine when the delay depends on neither the outcome nor the arm; feed only matured events.
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
    "Arm",
    "ArmStats",
    "Comparison",
    "Sequential",
    "cs_bounds",
    "cs_half_width",
    "cs_rho2",
]

Arm = Literal["control", "variant"]
#: The two arms of a comparison: ``control`` is the ``compare_to`` variant.
ARMS: tuple[Arm, Arm] = ("control", "variant")

FloatArray = npt.NDArray[np.float64]


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


class Comparison:
    """A two-sample detector: fed per arm, decides about the variant relative to control.

    The streaming pipeline calls ``update(arm, x)`` or ``update_counts(arm, n, total, total_sq)``
    for each matured outcome or batch, then reads ``harm`` / ``non_inferior`` and, on
    ``drift_detected``, attaches ``explain()`` to the flag change.
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


@register
class Sequential(Comparison):
    """Anytime-valid harm / non-inferiority decision for a variant versus its control.

    Parameters
    ----------
    alpha
        Error rate of the confidence sequence over the whole, continuously monitored experiment,
        in (0, 1).
    margin
        Non-negative tolerance in the metric's units (e.g. 0.01 = one accuracy point): harm means
        worse by more than this, non-inferiority means worse by less than this.
    tuning_n
        Total events (both arms) at which the interval is tightest (GrowthBook's default 5,000).
    higher_is_better
        False (default) for error bits and error-like metrics (latency, absolute error); True for
        accuracy/correctness bits and other metrics where larger is better.
    min_samples
        Events per arm before any decision (the interval relies on the central limit theorem).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(3)
    >>> seq = Sequential(alpha=0.05)
    >>> for i in range(5000):
    ...     seq.update("control", float(rng.random() < 0.10))
    ...     seq.update("variant", float(rng.random() < 0.20))
    ...     if seq.drift_detected:
    ...         print(f"harm after {i + 1} pairs, upper bound {seq.interval[1]:.4f}")
    ...         break
    harm after 273 pairs, upper bound -0.0014
    """

    kind: ClassVar[str] = "sequential"
    inputs: ClassVar[frozenset[str]] = frozenset({"bernoulli", "continuous"})

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        margin: float = 0.0,
        tuning_n: int = 5000,
        higher_is_better: bool = False,
        min_samples: int = 30,
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
        if isinstance(tuning_n, bool) or not isinstance(tuning_n, int) or tuning_n < 1:
            raise ValueError(f"tuning_n must be an integer >= 1 (total events), got {tuning_n!r}")
        if not isinstance(higher_is_better, bool):
            raise ValueError(f"higher_is_better must be true or false, got {higher_is_better!r}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 2:
            raise ValueError(f"min_samples must be an integer >= 2 (per arm), got {min_samples!r}")
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.tuning_n = tuning_n
        self.higher_is_better = higher_is_better
        self.min_samples = min_samples
        self._rho2 = cs_rho2(self.alpha, tuning_n)
        self._arms = {"control": ArmStats(), "variant": ArmStats()}
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
        self._arms[_arm(arm)].add(float(x))
        self._evaluate()

    def update_counts(self, arm: str, n: int, total: float, total_sq: float | None = None) -> bool:
        """Feed a batch of ``n`` observations of ``arm`` summing to ``total``.

        For error bits (or correctness bits) leave ``total_sq`` out: ``total`` is the count of ones
        and must lie in [0, n]. For continuous metrics pass the sum of squares too. Returns whether
        this batch newly declared harm (same as ``drift_detected`` afterwards).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        if not math.isfinite(total):
            raise ValueError(f"total must be finite, got {total!r}")
        stats = self._arms[_arm(arm)]
        if n == 0:
            self._drift = False
            return False
        mean = total / n
        if total_sq is None:
            if not 0 <= total <= n:
                raise ValueError(f"count of ones must lie in [0, n={n}], got {total!r}")
            m2 = total - total * total / n
        else:
            if not math.isfinite(total_sq):
                raise ValueError(f"total_sq must be finite, got {total_sq!r}")
            m2 = max(total_sq - total * total / n, 0.0)
        stats.merge(n, mean, m2)
        self._evaluate()
        return self._drift

    def _evaluate(self) -> None:
        c, v = self._arms["control"], self._arms["variant"]
        was_harm = self._harm
        if c.n < self.min_samples or v.n < self.min_samples:
            self._lower, self._upper = -math.inf, math.inf
            self._harm = False
            self._drift = False
            return
        diff = v.mean - c.mean
        effect = diff if self.higher_is_better else -diff
        s2 = c.variance / c.n + v.variance / v.n
        total = c.n + v.n
        width = _half_width(s2, total, self._rho2, self.alpha)
        self._lower, self._upper = effect - width, effect + width
        self._harm = self._upper < -self.margin
        self._drift = self._harm and not was_harm
        if s2 > 0:
            # mSPRT for θ0 = 0 with mixing variance τ² = ρ²·S²·n (the interval's dual).
            nr = total * self._rho2
            log_lambda = -0.5 * math.log1p(nr) + nr * effect * effect / (2.0 * s2 * (1.0 + nr))
            self._p_value = min(self._p_value, math.exp(-log_lambda) if log_lambda < 700 else 0.0)

    # -- reading ---------------------------------------------------------------------------

    @property
    def drift_detected(self) -> bool:
        """True right after the update that newly declared harm."""
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
    def p_value(self) -> float:
        """Always-valid p-value for "no difference" (running minimum of the mSPRT's 1/Λ)."""
        return self._p_value

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
        return {
            "detector": self.kind,
            "method": "asymptotic confidence sequence (Waudby-Smith et al. 2023)",
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
            "p_value": self._p_value,
            "n": self.n,
            "n_control": c.n,
            "n_variant": v.n,
            "mean_control": c.mean,
            "mean_variant": v.mean,
            "min_samples": self.min_samples,
        }

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, JSON]:
        return {
            "kind": self.kind,
            "params": {
                "alpha": self.alpha,
                "margin": self.margin,
                "tuning_n": self.tuning_n,
                "higher_is_better": self.higher_is_better,
                "min_samples": self.min_samples,
            },
            "control": self._arms["control"].to_state(),
            "variant": self._arms["variant"].to_state(),
            "harm": self._harm,
            "drift": self._drift,
            "p_value": self._p_value,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        if state.get("kind") != cls.kind:
            raise ValueError(f"state of kind {state.get('kind')!r} given to {cls.kind!r}")
        seq = cls(**state["params"])
        for arm in ARMS:
            seq._arms[arm] = ArmStats.from_state(state[arm])
        seq._evaluate()
        seq._harm = bool(state["harm"])
        seq._drift = bool(state["drift"])
        seq._p_value = float(state["p_value"])
        return seq
