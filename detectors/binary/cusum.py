"""Page's CUSUM for a known change, calibrated exactly from a false-alarm budget.

Two kinds:

``cusum``
    Bernoulli CUSUM on error bits (``x = 1`` is an error) for a drop from ``baseline`` accuracy to
    ``target`` accuracy (or ``baseline - drop``). With error rates
    ``q0 = 1 - baseline`` and ``q1 = 1 - target`` each event adds ``x·ln(q1/q0) +
    (1-x)·ln((1-q1)/(1-q0))`` to ``W``, floored at 0; alarm when ``W ≥ h``. Page's CUSUM attains
    Lorden's bound on the worst-case delay (Moustakides 1986), so this is the detector to use when
    the size of the drop that matters is known.

``cusum_mean``
    Gaussian mean-shift CUSUM for continuous metrics that get worse as they grow (latency,
    absolute error): ``z = (x - mean) / std``, each event adds ``shift·z - shift²/2`` (the
    log-likelihood ratio of N(shift, 1) against N(0, 1)); ``shift`` is in units of the reference
    standard deviation.

Calibration: both take ``arl0``, the average number of in-control events between false alarms,
and derive ``h`` from it. For ``cusum`` the two increments are scaled to integers whose ratio
matches ``ln(q1/q0) : ln((1-q0)/(1-q1))`` to better than 0.5 %, so ``W`` lives on an integer
lattice and is *exactly* a finite Markov chain: its ARL is the solution of a linear system
(Reynolds & Stoumbos 1999), and ``h`` is the smallest lattice threshold whose in-control ARL is
at least ``arl0``. For ``cusum_mean`` ``W`` is continuous; its ARL comes from Brook & Evans' (1972)
discretised chain with a fine grid (error well under 1 %). Calibrations are cached per parameter
set, so building a detector is cheap after the first one.

Reference: a given ``baseline`` (``mean``/``std``), or one estimated over the first ``warmup``
events and then frozen. A learned ``cusum`` baseline is off by its estimation error, which would
raise the mean false-alarm rate over deployments well above the budget (1.4× for a drop of 0.1
at ARL0 1e4, learned over 1,000 events at accuracy 0.9); the threshold is calibrated for an
inflated budget that absorbs it (:func:`learned_budget`, shown as ``arl0_calibrated`` by
``explain()``; :func:`deployed_arl0` gives the real ARL0 of one deployment). An alarm never
changes the reference (a detector that re-learns its reference after a false alarm can absorb a
real change that follows). After an alarm ``W`` restarts from 0 on the next event, so the
measured ARL0 is the mean number of events between false alarms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from driftswitch.detectors.base import JSON, BaseDetector
from driftswitch.detectors.binary._bernoulli import (
    BernoulliDetector,
    check_arl0,
    check_bit,
    check_bits,
    check_seed,
    check_unit,
    check_warmup,
    learned_error_rate,
)
from driftswitch.detectors.registry import register

#: Largest lattice threshold (states of the Markov chain) the Bernoulli calibration allows: keeps
#: one dense solve around 0.1 s while the increment ratio stays within 0.5 % of the exact one.
_MAX_STATES = 1600
#: Grid cells of the Brook–Evans chain for the Gaussian CUSUM.
_GAUSS_CELLS = 400


# --------------------------------------------------------------------------------------------
# Bernoulli CUSUM on an integer lattice: exact ARL by a Markov chain
# --------------------------------------------------------------------------------------------


def bernoulli_llr(q0: float, q1: float) -> tuple[float, float]:
    """The log-likelihood ratio of an error and of a correct event (nats), q0 → q1."""
    return math.log(q1 / q0), math.log((1.0 - q1) / (1.0 - q0))


@lru_cache(maxsize=256)
def bernoulli_lattice(q0: float, q1: float, arl0: float) -> tuple[int, int]:
    """Integer increments ``(up, down)``: an error adds ``up``, a correct event subtracts ``down``.

    ``up/down`` approximates ``ln(q1/q0) / ln((1-q0)/(1-q1))`` as closely as possible while the
    threshold (about ``ln(arl0)`` nats) stays within ``_MAX_STATES`` lattice steps.
    """
    up_llr, down_llr = bernoulli_llr(q0, q1)
    ratio = up_llr / -down_llr
    h_guess = math.log(max(arl0, 10.0)) + 2.0  # nats, a generous upper estimate of h
    best: tuple[float, int, int] | None = None
    for down in range(1, 200):
        up = max(1, round(ratio * down))
        states = h_guess * down / -down_llr
        if states > _MAX_STATES and best is not None:
            break
        err = abs(up / down - ratio) / ratio
        if best is None or err < best[0] - 1e-12:
            best = (err, up, down)
        if err < 1e-4:
            break
    assert best is not None
    return best[1], best[2]


def bernoulli_arl(q: float, up: int, down: int, threshold: int) -> float:
    """Exact expected run length from ``W = 0`` of the lattice CUSUM with error rate ``q``.

    States ``0 … threshold-1``; an error moves ``i → i + up`` (absorbing at ``≥ threshold``), a
    correct event ``i → max(0, i - down)``. Solves ``(I - P) L = 1`` for the mean absorption time.
    """
    if threshold <= 0:
        return 1.0
    size = threshold
    idx = np.arange(size)
    mat = np.eye(size)
    hi = idx + up
    inside = hi < size
    np.subtract.at(mat, (idx[inside], hi[inside]), q)
    lo = np.maximum(idx - down, 0)
    np.subtract.at(mat, (idx, lo), 1.0 - q)
    arl = np.linalg.solve(mat, np.ones(size))
    return float(arl[0])


@lru_cache(maxsize=256)
def bernoulli_threshold(q0: float, up: int, down: int, arl0: float) -> int:
    """The smallest lattice threshold whose in-control ARL (error rate ``q0``) is ≥ ``arl0``."""
    memo: dict[int, float] = {}

    def arl(t: int) -> float:
        if t not in memo:
            memo[t] = bernoulli_arl(q0, up, down, t)
        return memo[t]

    # ln ARL grows about linearly in the threshold: bracket with secant steps, then bisect.
    lo, hi = 0, max(up, down)
    while arl(hi) < arl0:
        lo = hi
        slope = (math.log(arl(hi)) - math.log(max(arl(lo), 1.0))) / max(hi - lo, 1)
        step = (math.log(arl0) - math.log(arl(hi))) / slope if slope > 0 else hi
        hi = hi + max(1, min(int(step * 1.1) + 1, 4 * hi + 1))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if arl(mid) >= arl0:
            hi = mid
        else:
            lo = mid
    return hi


def _lindley(
    w0: int, steps: npt.NDArray[np.int64], threshold: int
) -> tuple[int, list[int], npt.NDArray[np.int64]]:
    """Run ``W = max(0, W + step)`` over ``steps`` with alarms at ``W ≥ threshold``.

    After an alarm ``W`` restarts from 0 at the next step. Returns the final ``W`` (the value at
    the alarm if the last step alarmed), the indices of alarming steps and the path of ``W``.
    Vectorised: ``W_t = S_t - min(-w0, min_{j≤t} S_j)`` with ``S`` the partial sums.
    """
    alarms: list[int] = []
    path = np.empty(len(steps), dtype=np.int64)
    start = 0
    w = w0
    while start < len(steps):
        # A bounded slice: an alarm restarts the scan, so long batches stay linear in their length.
        part = np.cumsum(steps[start : start + 8192])
        floor = np.minimum(np.minimum.accumulate(part), -w)
        ws = part - floor
        hits = np.flatnonzero(ws >= threshold)
        if len(hits) == 0:
            path[start : start + len(ws)] = ws
            w = int(ws[-1])
            start += len(ws)
            continue
        end = start + int(hits[0])
        path[start : end + 1] = ws[: hits[0] + 1]
        alarms.append(end)
        w = int(ws[hits[0]])
        start = end + 1
        if start < len(steps):
            w = 0
    return w, alarms, path


def learned_budget(q0: float, up: int, down: int, arl0: float, warmup: int) -> float:
    """The budget to calibrate for when ``q0`` was learned from ``warmup`` events.

    A learned error rate is off by about ``sd = sqrt(q0(1-q0)/(warmup+1))``, and the real ARL0
    depends on it exponentially: a reference set too low makes every ordinary error look like
    evidence. Over deployments (independent warm-ups), ``ln ARL0`` under the true rate is then
    spread by about ``c·sd`` around the requested value, where ``c`` is the slope of ``ln ARL`` in
    the error rate (from the exact chain at ``q0 ± sd``), and the *mean* false-alarm rate
    ``E[1/ARL0]`` is ``exp((c·sd)²/2)`` times the budget (log-normal mean). Calibrating for
    ``arl0 · exp((c·sd)²/2)`` brings the mean false-alarm rate back to the budget; ``c`` grows with
    the threshold, so the factor is recomputed once at the inflated threshold.
    """
    sd = math.sqrt(q0 * (1.0 - q0) / (warmup + 1.0))
    lo, hi = max(q0 - sd, q0 / 2.0), min(q0 + sd, (1.0 + q0) / 2.0)
    target = arl0
    for _ in range(2):
        h = bernoulli_threshold(q0, up, down, target)
        spread = (
            (math.log(bernoulli_arl(lo, up, down, h)) - math.log(bernoulli_arl(hi, up, down, h)))
            / (hi - lo)
            * sd
        )
        target = arl0 * math.exp(spread * spread / 2.0)
    return target


@register
class CUSUM(BernoulliDetector):
    """Bernoulli CUSUM for an accuracy drop from ``baseline`` to ``target`` (x = 1 is an error).

    Parameters
    ----------
    baseline
        In-control accuracy; omit it and give ``warmup`` to learn it from the first events.
    target
        Accuracy after the change to detect (below the baseline). Give this or ``drop``.
    drop
        Size of the accuracy drop to detect (``target = baseline - drop``); use it with ``warmup``.
    arl0
        False-alarm budget: mean number of in-control events between false alarms.
    warmup
        Events used to learn the baseline (then frozen); 0 when ``baseline`` is given.
    seed
        Seeds the order drawn for pre-aggregated batches (``update_counts``).

    Examples
    --------
    >>> import numpy as np
    >>> from driftswitch.detectors.binary.cusum import CUSUM
    >>> rng = np.random.default_rng(7)
    >>> errors = np.concatenate([rng.random(3000) < 0.10, rng.random(3000) < 0.20])
    >>> det = CUSUM(baseline=0.90, target=0.80, arl0=10_000)
    >>> alarms = [i for i, x in enumerate(errors) if (det.update(int(x)), det.drift_detected)[1]]
    >>> alarms[0]  # the change is at 3000
    3141
    """

    kind: ClassVar[str] = "cusum"

    def __init__(
        self,
        *,
        baseline: float | None = None,
        target: float | None = None,
        drop: float | None = None,
        arl0: float = 10_000.0,
        warmup: int = 0,
        seed: int = 0,
    ) -> None:
        if baseline is not None:
            baseline = check_unit("baseline", baseline)
        if (target is None) == (drop is None):
            raise ValueError("give exactly one of target (accuracy after the change) or drop")
        if target is not None:
            target = check_unit("target", target)
            if baseline is not None and target >= baseline:
                raise ValueError(
                    f"target ({target}) must be below baseline ({baseline}): "
                    "the detector looks for an accuracy drop"
                )
            if baseline is None:
                raise ValueError("target needs a given baseline; with warmup give drop instead")
        if drop is not None:
            drop = check_unit("drop", drop)
            if baseline is not None and baseline - drop <= 0.0:
                raise ValueError(f"drop ({drop}) must be smaller than baseline ({baseline})")
        self._baseline = baseline
        self._target = target
        self._drop = drop
        self._arl0 = check_arl0(arl0)
        self._warmup = check_warmup(warmup, baseline is not None, "baseline")
        self._seed = check_seed(seed)
        self._n = 0
        self._w = 0
        self._detected = False
        self._alarms = 0
        self._batches = 0
        self._warm_errors = 0
        self._q0 = 0.0
        self._q1 = 0.0
        self._up = 0
        self._down = 0
        self._h = 0
        self._budget = self._arl0
        if baseline is not None:
            self._calibrate(1.0 - baseline)

    def _calibrate(self, q0: float) -> None:
        if self._target is not None:
            q1 = 1.0 - self._target
        else:
            assert self._drop is not None
            q1 = min(q0 + self._drop, 1.0 - 1e-9)
        if q1 <= q0:
            raise ValueError(f"target error rate {q1} must exceed the baseline error rate {q0}")
        self._q0, self._q1 = q0, q1
        self._up, self._down = bernoulli_lattice(q0, q1, self._arl0)
        self._budget = self._arl0
        if self._baseline is None:
            self._budget = learned_budget(q0, self._up, self._down, self._arl0, self._warmup)
        self._h = bernoulli_threshold(q0, self._up, self._down, self._budget)

    @property
    def _scale(self) -> float:
        # Lattice units per nat: a correct event subtracts exactly ln((1-q0)/(1-q1)) nats.
        return self._down / -bernoulli_llr(self._q0, self._q1)[1]

    @property
    def calibrated(self) -> bool:
        """False while the baseline is still being learned (no alarm is possible yet)."""
        return self._h > 0

    def update(self, x: float) -> None:
        bit = check_bit(x)
        self._n += 1
        if not self._h:
            self._warm(bit)
            return
        w = 0 if self._detected else self._w
        w = w + self._up if bit else max(0, w - self._down)
        self._w = w
        self._detected = w >= self._h
        if self._detected:
            self._alarms += 1

    def update_many(self, xs: Iterable[float]) -> bool:
        bits = check_bits(xs)
        if len(bits) == 0:
            return False
        alarmed = False
        start = 0
        while not self._h and start < len(bits):
            self.update(float(bits[start]))
            start += 1
        if start < len(bits):
            alarmed = self._run(bits[start:].astype(np.int64))
        return alarmed

    def update_until_alarm(self, xs: Sequence[float]) -> int | None:
        bits = check_bits(xs)
        start = 0
        while not self._h and start < len(bits):  # no alarm while the baseline is learned
            self.update(float(bits[start]))
            start += 1
        if start == len(bits):
            return None
        rest = bits[start:].astype(np.int64)
        steps = np.where(rest == 1, self._up, -self._down).astype(np.int64)
        w, alarms, path = _lindley(0 if self._detected else self._w, steps, self._h)
        if alarms:
            first = alarms[0]
            self._n += first + 1
            self._w = int(path[first])
            self._alarms += 1
            self._detected = True
            return start + first
        self._n += len(rest)
        self._w = w
        self._detected = False
        return None

    def _run(self, bits: npt.NDArray[np.int64]) -> bool:
        steps = np.where(bits == 1, self._up, -self._down).astype(np.int64)
        w0 = 0 if self._detected else self._w
        w, alarms, _ = _lindley(w0, steps, self._h)
        self._n += len(bits)
        self._w = w
        self._alarms += len(alarms)
        self._detected = bool(alarms) and alarms[-1] == len(bits) - 1
        return bool(alarms)

    @property
    def statistic(self) -> float:
        """``W`` in nats (0 during warm-up)."""
        return self._w / self._scale if self._h else 0.0

    @property
    def threshold(self) -> float:
        """``h`` in nats (infinite during warm-up: no alarm is possible)."""
        return self._h / self._scale if self._h else math.inf

    def explain(self) -> dict[str, JSON]:
        return self._explain({"target_accuracy": 1.0 - self._q1 if self._h else None})

    def to_state(self) -> dict[str, JSON]:
        return {
            "kind": self.kind,
            "params": {
                "baseline": self._baseline,
                "target": self._target,
                "drop": self._drop,
                "arl0": self._arl0,
                "warmup": self._warmup,
                "seed": self._seed,
            },
            "n": self._n,
            "w": self._w,
            **self._counters_state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        det = cls(**state["params"])
        det._w = int(state["w"])
        det._restore_counters(state)
        return det


def deployed_arl0(q_true: float, errors: int, warmup: int, drop: float, arl0: float) -> float:
    """The real in-control ARL0 of a ``cusum`` whose baseline was learned from ``errors`` errors
    in ``warmup`` events, on a stream whose true error rate is ``q_true`` (exact, by the chain).

    One call is one deployment; over warm-ups drawn from ``Binomial(warmup, q_true)`` the mean of
    ``arl0 / deployed_arl0(...)`` is the false-alarm rate relative to the budget.
    """
    det = CUSUM(drop=drop, warmup=warmup, arl0=arl0)
    det._calibrate(learned_error_rate(errors, warmup))
    return bernoulli_arl(q_true, det._up, det._down, det._h)


# --------------------------------------------------------------------------------------------
# Gaussian mean-shift CUSUM: Brook–Evans chain
# --------------------------------------------------------------------------------------------


def _phi(z: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """Standard normal CDF (numpy has no erf; math.erf over a small vector is fast enough)."""
    return np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in z.tolist()])


def gaussian_arl(mu: float, shift: float, h: float, cells: int = _GAUSS_CELLS) -> float:
    """ARL from 0 of ``W = max(0, W + shift·z - shift²/2)``, ``z ~ N(mu, 1)``, alarm at ``W ≥ h``.

    Brook & Evans (1972): ``[0, h)`` cut into ``cells`` cells, each represented by its midpoint
    (the first cell also holds the atom at 0); the mean absorption time solves ``(I - P) L = 1``.
    Transition probabilities depend only on ``j - i``, so ``2·cells`` normal CDFs suffice.
    """
    width = h / cells
    mean = shift * mu - shift * shift / 2.0
    sd = shift
    # Probability that the increment lands below the upper edge of cell j from cell i's midpoint:
    # upper edge of j minus midpoint of i = (j - i + 0.5)·width, for j - i in -cells..cells.
    d = np.arange(-cells, cells + 1)
    cdf = _phi(((d + 0.5) * width - mean) / sd)
    i = np.arange(cells)[:, None]
    j = np.arange(cells)[None, :]
    upper = cdf[(j - i) + cells]
    lower = np.where(j == 0, 0.0, cdf[np.clip(j - i - 1 + cells, 0, 2 * cells)])
    trans = upper - lower
    # Cell 0 collects every landing below its upper edge, including W + step ≤ 0.
    arl = np.linalg.solve(np.eye(cells) - trans, np.ones(cells))
    return float(arl[0])


@lru_cache(maxsize=256)
def gaussian_threshold(shift: float, arl0: float) -> float:
    """The ``h`` (nats) at which the Gaussian CUSUM's in-control ARL equals ``arl0``."""
    lo, hi = 0.0, 1.0
    while gaussian_arl(0.0, shift, hi) < arl0:
        lo, hi = hi, hi * 2.0
    # Bisection on a monotone function; 30 steps give h to ~1e-8 relative.
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if gaussian_arl(0.0, shift, mid) >= arl0:
            hi = mid
        else:
            lo = mid
    return hi


@register
class CUSUMMean(BaseDetector):
    """Gaussian mean-shift CUSUM for continuous metrics that get worse as they grow.

    Parameters
    ----------
    shift
        Increase of the mean to detect, in units of the reference standard deviation.
    mean, std
        Reference mean and standard deviation; omit both and give ``warmup`` to learn them.
    arl0
        False-alarm budget: mean number of in-control events between false alarms.
    warmup
        Events used to learn ``mean`` and ``std`` (then frozen); 0 when they are given.

    The calibration assumes roughly Gaussian values; for skewed metrics (latency) feed a
    transform that makes them so (e.g. log latency) or expect a different false-alarm rate.

    Examples
    --------
    >>> import numpy as np
    >>> from driftswitch.detectors.binary.cusum import CUSUMMean
    >>> rng = np.random.default_rng(3)
    >>> xs = np.concatenate([rng.normal(100, 10, 2000), rng.normal(105, 10, 2000)])
    >>> det = CUSUMMean(mean=100.0, std=10.0, shift=0.5, arl0=10_000)
    >>> alarms = [i for i, x in enumerate(xs) if (det.update(float(x)), det.drift_detected)[1]]
    >>> alarms[0]  # the change is at 2000
    2038
    """

    kind: ClassVar[str] = "cusum_mean"
    two_sample: ClassVar[bool] = False
    inputs: ClassVar[frozenset[str]] = frozenset({"continuous"})

    def __init__(
        self,
        *,
        shift: float,
        mean: float | None = None,
        std: float | None = None,
        arl0: float = 10_000.0,
        warmup: int = 0,
    ) -> None:
        if isinstance(shift, bool) or not isinstance(shift, int | float) or not 0 < shift <= 10:
            raise ValueError(
                f"shift must be a number of standard deviations in (0, 10], got {shift!r}"
            )
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (and warmup to learn them)")
        if mean is not None and (
            isinstance(mean, bool) or not isinstance(mean, int | float) or not math.isfinite(mean)
        ):
            raise ValueError(f"mean must be a finite number, got {mean!r}")
        if std is not None and (
            isinstance(std, bool) or not isinstance(std, int | float) or not 0 < std < math.inf
        ):
            raise ValueError(f"std must be a positive finite number, got {std!r}")
        self._shift = float(shift)
        self._mean_given = None if mean is None else float(mean)
        self._std_given = None if std is None else float(std)
        self._arl0 = check_arl0(arl0)
        self._warmup = check_warmup(warmup, mean is not None, "mean and std")
        self._h = gaussian_threshold(self._shift, self._arl0)
        self._mean = self._mean_given if self._mean_given is not None else 0.0
        self._std = self._std_given if self._std_given is not None else 0.0
        self._ready = mean is not None
        self._n = 0
        self._w = 0.0
        self._detected = False
        self._alarms = 0
        # Welford accumulators for the warm-up.
        self._wn = 0
        self._wmean = 0.0
        self._wm2 = 0.0

    def update(self, x: float) -> None:
        if not math.isfinite(x):
            raise ValueError(f"continuous detectors take finite values, got {x!r}")
        self._n += 1
        if not self._ready:
            self._warm(float(x))
            return
        w = 0.0 if self._detected else self._w
        z = (x - self._mean) / self._std
        w = max(0.0, w + self._shift * (z - self._shift / 2.0))
        self._w = w
        self._detected = w >= self._h
        if self._detected:
            self._alarms += 1

    def _warm(self, x: float) -> None:
        self._detected = False
        self._wn += 1
        delta = x - self._wmean
        self._wmean += delta / self._wn
        self._wm2 += delta * (x - self._wmean)
        if self._wn >= self._warmup:
            self._mean = self._wmean
            var = self._wm2 / (self._wn - 1)
            # A constant warm-up has no spread: fall back to a tiny positive std so that any later
            # increase is visible, instead of dividing by zero.
            self._std = math.sqrt(var) if var > 0 else max(abs(self._wmean) * 1e-9, 1e-12)
            self._ready = True

    @property
    def drift_detected(self) -> bool:
        return self._detected

    @property
    def statistic(self) -> float:
        return self._w

    @property
    def threshold(self) -> float:
        return self._h

    @property
    def n(self) -> int:
        return self._n

    def explain(self) -> dict[str, JSON]:
        out = super().explain()
        out.update(
            {
                "reference_mean": self._mean if self._ready else None,
                "reference_std": self._std if self._ready else None,
                "reference_learned": self._mean_given is None,
                "shift_std": self._shift,
                "arl0": self._arl0,
                "alarms": self._alarms,
                "warming_up": not self._ready,
            }
        )
        return out

    def to_state(self) -> dict[str, JSON]:
        return {
            "kind": self.kind,
            "params": {
                "shift": self._shift,
                "mean": self._mean_given,
                "std": self._std_given,
                "arl0": self._arl0,
                "warmup": self._warmup,
            },
            "n": self._n,
            "w": self._w,
            "detected": self._detected,
            "alarms": self._alarms,
            "ready": self._ready,
            "ref_mean": self._mean,
            "ref_std": self._std,
            "warm": [self._wn, self._wmean, self._wm2],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        det = cls(**state["params"])
        det._n = int(state["n"])
        det._w = float(state["w"])
        det._detected = bool(state["detected"])
        det._alarms = int(state["alarms"])
        det._ready = bool(state["ready"])
        det._mean = float(state["ref_mean"])
        det._std = float(state["ref_std"])
        wn, wmean, wm2 = state["warm"]
        det._wn, det._wmean, det._wm2 = int(wn), float(wmean), float(wm2)
        return det
