"""Anytime-valid test of an interleaving experiment: does the variant win more often than it loses?

Each interleaved impression (``driftswitch.streams.contract.interleave``) is a win for the
variant, a loss, or a tie. Among the non-tied ones, the wins are Bernoulli(``p``) draws, and
``p = ½`` when the two rankers are equally good. The detector keeps a confidence sequence for
``p``: the set of values a beta-binomial mixture likelihood ratio has not rejected,

    M_n(p) = B(a + W, a + L) / B(a, a) / (p^W (1 − p)^L),   CS_n = {p : M_n(p) < 1/α},

with ``W`` wins and ``L`` losses after ``n = W + L`` non-tied impressions. For the true ``p``,
``M_n(p)`` is a nonnegative martingale with mean 1 (a mixture of likelihood ratios), so by
Ville's inequality the sequence covers ``p`` at every ``n`` simultaneously with probability at
least ``1 − α``: it is exact, not asymptotic, and may be checked after every impression (Robbins
1970; Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic
confidence sequences", the beta-binomial boundary). ``1/M_n(½)`` is the mixture SPRT's
always-valid p-value for "no preference".

The prior ``Beta(a, a)`` sets where the sequence is tightest: ``tuning_n`` non-tied impressions,
through the same ``ρ²`` as :mod:`driftswitch.detectors.sequential` (a normal mixture of variance
``ρ²/4`` on ``p``, matched by ``Beta(a, a)`` with ``2a + 1 = 1/ρ²``).

Observations keep the package's direction (``1`` is bad for the variant): ``0`` a win, ``1`` a
loss, ``0.5`` a tie. With ``margin`` ``m`` in win-probability units:

- ``harm``: the whole interval lies below ``½ − m`` (the variant loses more than it wins, by more
  than the margin). It is a level: it stays true while the evidence stands; ``drift_detected``
  is the edge, true right after the update that newly declared it;
- ``superior``: the whole interval lies above ``½``;
- ``non_inferior``: the whole interval lies above ``½ − m``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from driftswitch.detectors.base import JSON, BaseDetector, check_kind
from driftswitch.detectors.registry import register
from driftswitch.detectors.sequential import cs_rho2

__all__ = ["Interleaving", "log_mixture", "prior_a"]

#: Observation values: a win for the variant, a tie, a loss.
WIN, TIE, LOSS = 0.0, 0.5, 1.0


def prior_a(alpha: float, tuning_n: float) -> float:
    """The ``a`` of the ``Beta(a, a)`` mixture that is tightest at ``tuning_n`` impressions."""
    return max((1.0 / cs_rho2(alpha, tuning_n) - 1.0) / 2.0, 0.5)


def _log_beta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def log_mixture(wins: int, losses: int, p: float, a: float) -> float:
    """``ln M_n(p)``: the log mixture likelihood ratio against win probability ``p``."""
    log_lik = 0.0
    if wins:
        log_lik += wins * math.log(p) if p > 0 else -math.inf
    if losses:
        log_lik += losses * math.log1p(-p) if p < 1 else -math.inf
    return _log_beta(a + wins, a + losses) - _log_beta(a, a) - log_lik


@register
class Interleaving(BaseDetector):
    """Harm / superiority / non-inferiority from interleaved impressions (see the module doc).

    Parameters
    ----------
    alpha
        Probability that the interval ever excludes the true win probability, over the whole,
        continuously monitored experiment; in (0, 1).
    margin
        Tolerance in win-probability units in [0, 0.5): harm means a win probability below
        ``0.5 − margin``.
    tuning_n
        Non-tied impressions at which the interval is tightest (>= 10).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(7)
    >>> det = Interleaving(alpha=0.05, tuning_n=500)
    >>> for i in range(5000):
    ...     r = rng.random()  # the variant wins 30 %, loses 40 %, ties 30 %
    ...     det.update(0.0 if r < 0.3 else 1.0 if r < 0.7 else 0.5)
    ...     if det.drift_detected:
    ...         print(f"harm after {i + 1} impressions: {det.wins} wins, {det.losses} losses")
    ...         break
    harm after 1564 impressions: 503 wins, 606 losses
    """

    kind: ClassVar[str] = "interleaving"
    two_sample: ClassVar[bool] = False
    inputs: ClassVar[frozenset[str]] = frozenset({"preference"})

    def __init__(self, *, alpha: float = 0.05, margin: float = 0.0, tuning_n: int = 1000) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 0.5:
            raise ValueError(
                f"margin must be a number in [0, 0.5) (win-probability units), got {margin!r}"
            )
        if isinstance(tuning_n, bool) or not isinstance(tuning_n, int) or tuning_n < 10:
            raise ValueError(
                f"tuning_n must be an integer >= 10 (non-tied impressions), got {tuning_n!r}"
            )
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.tuning_n = tuning_n
        self._a = prior_a(self.alpha, tuning_n)
        self._log_bound = -math.log(self.alpha)
        self.wins = 0
        self.losses = 0
        self.ties = 0
        self._bounds_cache: tuple[float, float] | None = None
        self._harm = False
        self._drift = False
        self._p_value = 1.0

    # -- feeding ---------------------------------------------------------------------------

    def update(self, x: float) -> None:
        """Feed one impression: ``0`` a win for the variant, ``1`` a loss, ``0.5`` a tie."""
        if x == WIN:
            self.wins += 1
        elif x == LOSS:
            self.losses += 1
        elif x == TIE:
            self.ties += 1
            self._drift = False
            return  # a tie says nothing about which ranker is better
        else:
            raise ValueError(f"observation must be 0 (win), 1 (loss) or 0.5 (tie), got {x!r}")
        self._evaluate()

    def _evaluate(self) -> None:
        # Harm without the interval's bisection: ln M_n is convex in p with its minimum at the
        # win rate, so the interval lies below p0 exactly when the win rate is below p0 and p0
        # is excluded. The interval itself is computed when read.
        was_harm = self._harm
        w, losses = self.wins, self.losses
        p0 = 0.5 - self.margin
        self._harm = w < p0 * (w + losses) and self._excludes(p0)
        self._drift = self._harm and not was_harm
        self._bounds_cache = None
        log_m = log_mixture(w, losses, 0.5, self._a)
        self._p_value = min(self._p_value, math.exp(-log_m) if log_m < 700 else 0.0)

    def _excludes(self, p: float) -> bool:
        return log_mixture(self.wins, self.losses, p, self._a) >= self._log_bound

    def _interval(self) -> tuple[float, float]:
        if self._bounds_cache is None:
            self._bounds_cache = self._bounds()
        return self._bounds_cache

    def _bounds(self) -> tuple[float, float]:
        """The ends of ``{p : ln M_n(p) < ln(1/α)}`` by bisection (``ln M_n`` is convex in ``p``
        with its minimum, at most 0, at ``p̂ = W/n``)."""
        return self._edge(0.0), self._edge(1.0)

    def _edge(self, outside: float) -> float:
        """The end of the interval towards ``outside`` (0 or 1), bisecting from ``p̂``."""
        w, losses, a, bound = self.wins, self.losses, self._a, self._log_bound
        n = w + losses
        if n == 0:
            return outside
        inside = w / n
        if log_mixture(w, losses, outside, a) < bound:
            return outside
        for _ in range(60):
            mid = 0.5 * (inside + outside)
            if log_mixture(w, losses, mid, a) < bound:
                inside = mid
            else:
                outside = mid
        return inside

    # -- reading ---------------------------------------------------------------------------

    @property
    def drift_detected(self) -> bool:
        """True right after the update that newly declared harm."""
        return self._drift

    @property
    def harm(self) -> bool:
        """The whole interval lies below ``0.5 − margin`` (a level)."""
        return self._harm

    @property
    def superior(self) -> bool:
        """The whole interval lies above ``0.5``: the variant wins more often than it loses."""
        w = self.wins
        return w > 0.5 * (w + self.losses) and self._excludes(0.5)

    @property
    def non_inferior(self) -> bool:
        """The whole interval lies above ``0.5 − margin``."""
        w, p0 = self.wins, 0.5 - self.margin
        return w > p0 * (w + self.losses) and self._excludes(p0)

    @property
    def interval(self) -> tuple[float, float]:
        """Confidence-sequence bounds on the variant's win probability among non-tied
        impressions."""
        return self._interval()

    @property
    def win_rate(self) -> float | None:
        """Wins / (wins + losses), None before the first non-tied impression."""
        n = self.wins + self.losses
        return self.wins / n if n else None

    @property
    def p_value(self) -> float:
        """Always-valid p-value for "no preference" (running minimum of ``1/M_n(½)``)."""
        return self._p_value

    @property
    def statistic(self) -> float:
        """Upper bound of the interval; harm when it falls below ``threshold``."""
        if self._bounds_cache is not None:
            return self._bounds_cache[1]
        return self._edge(1.0)  # the lower end is not needed (bisection is the cost)

    @property
    def threshold(self) -> float:
        """``0.5 − margin``."""
        return 0.5 - self.margin

    @property
    def n(self) -> int:
        """Impressions fed, ties included."""
        return self.wins + self.losses + self.ties

    def explain(self) -> dict[str, JSON]:
        """Plain-data evidence: the counts, the interval and the decision."""
        return {
            "detector": self.kind,
            "method": "beta-binomial mixture confidence sequence on the win probability",
            "decision": (
                "harm"
                if self._harm
                else "superior"
                if self.superior
                else "non_inferior"
                if self.non_inferior
                else "undecided"
            ),
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "win_rate": self.win_rate,
            "interval": list(self.interval),
            "statistic": self.statistic,
            "threshold": self.threshold,
            "margin": self.margin,
            "alpha": self.alpha,
            "tuning_n": self.tuning_n,
            "p_value": self._p_value,
            "n": self.n,
        }

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, JSON]:
        return {
            "kind": self.kind,
            "params": {"alpha": self.alpha, "margin": self.margin, "tuning_n": self.tuning_n},
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "harm": self._harm,
            "drift": self._drift,
            "p_value": self._p_value,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        check_kind(cls.kind, state)
        det = cls(**state["params"])
        det.wins = int(state["wins"])
        det.losses = int(state["losses"])
        det.ties = int(state["ties"])
        det._harm = bool(state["harm"])
        det._drift = bool(state["drift"])
        det._p_value = float(state["p_value"])
        return det
