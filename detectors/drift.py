"""Label-free drift of a score or feature distribution against a fixed reference window.

Kinds ``psi`` (population stability index), ``js`` (Jensen–Shannon distance, base 2) and ``ks``
(Kolmogorov–Smirnov distance between the binned CDFs), all with inputs ``"distribution"``.

How it works, in bounded memory:

1. The first ``reference_size`` values form the reference. Their quantiles give ``bins`` fixed bin
   edges (so every reference bin holds about ``reference_size / bins`` values) and the reference
   is kept as bin counts only. The reference never changes afterwards, alarms included.
2. Later values are counted into the same bins over tumbling (non-overlapping) windows of
   ``window`` values. At the end of each window the statistic compares the window's histogram with
   the reference's and the detector alarms when it exceeds ``threshold``.

False alarms under repeated evaluation: each window is one test. With a per-window false-alarm
probability ``q = window / arl0`` the mean number of values between false alarms is at least
``arl0`` (windows are exchangeable under no drift; dependence through the shared reference only
lengthens the mean run, by Jensen's inequality on ``1/q``). The threshold is the ``1 − q`` quantile
of the statistic's null distribution, *calibrated by simulation on the reference itself*, in the
spirit of Alibi Detect's "expected run time" calibration: for continuous data, bin probabilities
under quantile edges are spacings of uniform order statistics, i.e. Dirichlet with the reference
bin counts as parameters (plus one on the first bin) — exact and distribution-free — and a window
is multinomial given them. So the calibration accounts for the reference's own sampling noise,
which a fixed cut-off (PSI 0.1 / 0.25) ignores: with small windows such cut-offs alarm on most
windows of an unchanged stream. Ties in the data merge bins; the same Dirichlet then acts as a
Bayesian bootstrap of the reference. Passing an explicit ``threshold`` skips the calibration (and
its guarantee).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Self, cast

import numpy as np
import numpy.typing as npt

from driftswitch.detectors.base import JSON, BaseDetector, check_kind
from driftswitch.detectors.registry import register

__all__ = [
    "JensenShannon",
    "KolmogorovSmirnov",
    "PopulationStability",
    "ReferenceDrift",
    "calibrate_threshold",
    "js_distance",
    "ks_distance",
    "psi",
]

FloatArray = npt.NDArray[np.float64]

#: Floor on bin proportions in PSI so an empty bin gives a large, finite term (common practice).
PSI_FLOOR = 1e-4
#: Simulated null windows for the calibration: at least this many, and 200 beyond the quantile.
MIN_SIMULATIONS = 20_000
MAX_SIMULATIONS = 400_000


def psi(reference: FloatArray, current: FloatArray) -> FloatArray:
    """Population stability index Σ (c − r)·ln(c / r) over the last axis of bin proportions."""
    r = np.maximum(reference, PSI_FLOOR)
    c = np.maximum(current, PSI_FLOOR)
    result: FloatArray = np.sum((c - r) * np.log(c / r), axis=-1)
    return result


def js_distance(reference: FloatArray, current: FloatArray) -> FloatArray:
    """Jensen–Shannon distance (square root of the divergence, base 2; in [0, 1])."""
    m = 0.5 * (reference + current)

    def kl(p: FloatArray) -> FloatArray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log2(p / m), 0.0)
        out: FloatArray = np.sum(terms, axis=-1)
        return out

    divergence = np.maximum(0.5 * kl(reference) + 0.5 * kl(current), 0.0)
    result: FloatArray = np.sqrt(divergence)
    return result


def ks_distance(reference: FloatArray, current: FloatArray) -> FloatArray:
    """Largest gap between the two binned cumulative distributions."""
    gap = np.cumsum(reference, axis=-1) - np.cumsum(current, axis=-1)
    result: FloatArray = np.max(np.abs(gap), axis=-1)
    return result


_STATISTICS = {"psi": psi, "js": js_distance, "ks": ks_distance}


@functools.lru_cache(maxsize=256)
def calibrate_threshold(
    statistic: str, reference_counts: tuple[int, ...], window: int, level: float, seed: int
) -> float:
    """The ``1 − level`` quantile of ``statistic`` on a null window, by seeded simulation.

    Bin probabilities are drawn from Dirichlet(reference counts, +1 on the first bin) — the exact
    law of quantile-bin probabilities for continuous data — and the window from the multinomial.
    """
    counts = np.asarray(reference_counts, dtype=np.float64)
    reference = counts / counts.sum()
    concentration = counts.copy()
    concentration[0] += 1.0
    concentration = np.maximum(concentration, 1e-3)
    simulations = int(min(MAX_SIMULATIONS, max(MIN_SIMULATIONS, math.ceil(200 / level))))
    rng = np.random.default_rng(seed)
    function = _STATISTICS[statistic]
    values = []
    chunk = 50_000
    for start in range(0, simulations, chunk):
        size = min(chunk, simulations - start)
        probabilities = rng.dirichlet(concentration, size=size)
        windows = rng.multinomial(window, probabilities).astype(np.float64) / window
        values.append(function(reference, windows))
    return float(np.quantile(np.concatenate(values), 1.0 - level, method="higher"))


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class ReferenceDrift(BaseDetector):
    """Shared machinery of ``psi``, ``js`` and ``ks``: reference, bins, windows, calibration.

    Parameters
    ----------
    reference_size
        Values forming the fixed reference (kept raw only until it is complete).
    window
        Values per tumbling evaluation window.
    bins
        Quantile bins computed from the reference.
    arl0
        False-alarm budget: the mean number of values between false alarms (> ``window``).
    threshold
        Explicit alarm threshold; ``None`` (default) calibrates it to ``arl0``.
    seed
        Seed of the calibration simulation (same reference and seed, same threshold).
    """

    two_sample: ClassVar[bool] = False
    inputs: ClassVar[frozenset[str]] = frozenset({"distribution"})
    statistic_name: ClassVar[str]

    def __init__(
        self,
        *,
        reference_size: int = 1000,
        window: int = 500,
        bins: int = 10,
        arl0: float = 100_000.0,
        threshold: float | None = None,
        seed: int = 0,
    ) -> None:
        _check_int("reference_size", reference_size, 10)
        _check_int("window", window, 10)
        _check_int("bins", bins, 2)
        if bins > reference_size // 5:
            raise ValueError(f"bins must be <= reference_size / 5 = {reference_size // 5}")
        if isinstance(arl0, bool) or not isinstance(arl0, int | float) or not arl0 > window:
            raise ValueError(f"arl0 must be a number of values > window ({window}), got {arl0!r}")
        if threshold is not None and (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not math.isfinite(threshold)
            or threshold <= 0
        ):
            raise ValueError(
                f"threshold must be a number > 0 or null (calibrate to arl0), got {threshold!r}"
            )
        _check_int("seed", seed, 0)
        self.reference_size = reference_size
        self.window = window
        self.bins = bins
        self.arl0 = float(arl0)
        self.fixed_threshold = None if threshold is None else float(threshold)
        self.seed = seed
        self._reference_values: list[float] = []
        self._edges: list[float] = []
        self._reference_counts: list[int] = []
        self._threshold = math.inf
        self._counts: list[int] = []
        self._filled = 0
        self._n = 0
        self._statistic = 0.0
        self._drift = False
        self._windows = 0
        self._alarms = 0

    @property
    def level(self) -> float:
        """Per-window false-alarm probability ``window / arl0`` the threshold is calibrated to."""
        return self.window / self.arl0

    @property
    def reference_ready(self) -> bool:
        return bool(self._edges) or bool(self._reference_counts)

    def _finish_reference(self) -> None:
        values = sorted(self._reference_values)
        m = len(values)
        cuts = [values[round(j * m / self.bins)] for j in range(1, self.bins)]
        self._edges = sorted(set(cuts))
        counts = [0] * (len(self._edges) + 1)
        for v in values:
            counts[bisect.bisect_right(self._edges, v)] += 1
        self._reference_counts = counts
        self._reference_values = []
        self._counts = [0] * len(counts)
        if self.fixed_threshold is not None:
            self._threshold = self.fixed_threshold
        else:
            self._threshold = calibrate_threshold(
                self.statistic_name, tuple(counts), self.window, self.level, self.seed
            )

    def _close_window(self) -> None:
        reference = np.asarray(self._reference_counts, dtype=np.float64)
        current = np.asarray(self._counts, dtype=np.float64)
        value = _STATISTICS[self.statistic_name](
            reference / reference.sum(), current / current.sum()
        )
        self._statistic = float(value)
        self._windows += 1
        # Strictly above: the null statistic is discrete, so P(S > its 1 − q quantile) <= q.
        self._drift = self._statistic > self._threshold
        if self._drift:
            self._alarms += 1
        self._counts = [0] * len(self._counts)
        self._filled = 0

    def update(self, x: float) -> None:
        if not math.isfinite(x):
            raise ValueError(f"detector {self.kind!r} needs finite values, got {x!r}")
        self._n += 1
        self._drift = False
        if not self.reference_ready:
            self._reference_values.append(float(x))
            if len(self._reference_values) == self.reference_size:
                self._finish_reference()
            return
        self._counts[bisect.bisect_right(self._edges, x)] += 1
        self._filled += 1
        if self._filled == self.window:
            self._close_window()

    def update_many(self, xs: Iterable[float]) -> bool:
        """Feed values in order with numpy binning; return whether any window alarmed."""
        values = np.asarray(list(xs) if not isinstance(xs, np.ndarray) else xs, dtype=np.float64)
        return self._update_many_through_alarms(cast(Sequence[float], values))

    def update_until_alarm(self, xs: Sequence[float]) -> int | None:
        """Feed values in order (numpy binning per window) up to and including the one that
        closes the first alarming window; its index, or None. The state is the one
        :meth:`update` would leave after the same values."""
        values = np.asarray(xs, dtype=np.float64)
        if values.size == 0:
            return None
        if not np.all(np.isfinite(values)):
            raise ValueError(f"detector {self.kind!r} needs finite values")
        start = 0
        if not self.reference_ready:
            take = min(self.reference_size - len(self._reference_values), values.size)
            self._reference_values.extend(values[:take].tolist())
            self._n += take
            self._drift = False
            start = take
            if len(self._reference_values) == self.reference_size:
                self._finish_reference()
        edges = np.asarray(self._edges, dtype=np.float64)
        while start < values.size:
            take = min(self.window - self._filled, values.size - start)
            binned = np.bincount(
                np.searchsorted(edges, values[start : start + take], side="right"),
                minlength=len(self._counts),
            )
            self._counts = [c + int(b) for c, b in zip(self._counts, binned, strict=True)]
            self._filled += take
            self._n += take
            start += take
            self._drift = False
            if self._filled == self.window:
                self._close_window()
                if self._drift:
                    return start - 1
        return None

    @property
    def drift_detected(self) -> bool:
        return self._drift

    @property
    def statistic(self) -> float:
        """The statistic of the last completed window (0 before the first one)."""
        return self._statistic

    @property
    def threshold(self) -> float:
        """The calibrated (or given) threshold, alarm when strictly above; ``+inf`` until the
        reference is complete."""
        return self._threshold

    @property
    def n(self) -> int:
        return self._n

    def explain(self) -> dict[str, JSON]:
        ready = self.reference_ready
        return {
            "detector": self.kind,
            "statistic": self._statistic,
            "threshold": self._threshold if ready else None,
            "n": self._n,
            "calibrated": self.fixed_threshold is None,
            "level_per_window": self.level,
            "arl0": self.arl0,
            "windows": self._windows,
            "alarms": self._alarms,
            "reference_size": self.reference_size,
            "window": self.window,
            "edges": list(self._edges),
            "reference_counts": list(self._reference_counts),
        }

    def to_state(self) -> dict[str, JSON]:
        return {
            "kind": self.kind,
            "params": {
                "reference_size": self.reference_size,
                "window": self.window,
                "bins": self.bins,
                "arl0": self.arl0,
                "threshold": self.fixed_threshold,
                "seed": self.seed,
            },
            "reference_values": list(self._reference_values),
            "edges": list(self._edges),
            "reference_counts": list(self._reference_counts),
            "calibrated_threshold": self._threshold if self.reference_ready else None,
            "counts": list(self._counts),
            "filled": self._filled,
            "n": self._n,
            "statistic": self._statistic,
            "drift": self._drift,
            "windows": self._windows,
            "alarms": self._alarms,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        check_kind(cls.kind, state)
        detector = cls(**state["params"])
        detector._reference_values = [float(v) for v in state["reference_values"]]
        detector._edges = [float(v) for v in state["edges"]]
        detector._reference_counts = [int(v) for v in state["reference_counts"]]
        if state["calibrated_threshold"] is not None:
            detector._threshold = float(state["calibrated_threshold"])
        detector._counts = [int(v) for v in state["counts"]]
        detector._filled = int(state["filled"])
        detector._n = int(state["n"])
        detector._statistic = float(state["statistic"])
        detector._drift = bool(state["drift"])
        detector._windows = int(state["windows"])
        detector._alarms = int(state["alarms"])
        return detector


@register
class PopulationStability(ReferenceDrift):
    """Population stability index of each window against the reference (conventional cut-offs
    0.1 / 0.25 hold only for large windows; the default threshold is calibrated to ``arl0``)."""

    kind: ClassVar[str] = "psi"
    statistic_name: ClassVar[str] = "psi"


@register
class JensenShannon(ReferenceDrift):
    """Jensen–Shannon distance (base 2, in [0, 1]) of each window against the reference."""

    kind: ClassVar[str] = "js"
    statistic_name: ClassVar[str] = "js"


@register
class KolmogorovSmirnov(ReferenceDrift):
    """Kolmogorov–Smirnov distance between the binned CDFs of each window and the reference.

    Binning makes it bounded-memory; use more ``bins`` (e.g. 20–50) for resolution in the tails.
    """

    kind: ClassVar[str] = "ks"
    statistic_name: ClassVar[str] = "ks"
