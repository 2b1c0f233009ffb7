"""Streaming latency quantiles in bounded memory, and a detector on a windowed quantile.

``QuantileSketch`` is a log-bucketed histogram in the manner of DDSketch (Masson, Rim & Lee,
"DDSketch: a fast and fully-mergeable quantile sketch with relative-error guarantees", VLDB 2019):
a value ``x`` in ``(min_value, max_value]`` falls in bucket ``k = ceil(log_γ(x / min_value))`` with
``γ = (1 + a)/(1 − a)`` and is reported as ``2·min_value·γ^k/(γ + 1)``, which is within relative
error ``a`` (``relative_accuracy``) of every value in the bucket. So any quantile estimate is within
relative error ``a`` of the true (lower) sample quantile, however skewed the data. Values at or
below ``min_value`` are reported as 0 (absolute error at most ``min_value``); values above
``max_value`` are clamped to it. Memory is one counter per non-empty bucket, at most
``log_γ(max_value / min_value) + 1`` — about 2,800 for ``a = 0.01`` over 1e-6 … 1e18 — whatever the
number of values; sketches merge exactly by adding counters.

``latency_quantile`` alarms when a quantile (default p99) of a tumbling window of values exceeds a
threshold in the metric's units (an SLO such as "p99 latency ≤ 250 ms").
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Self, cast

import numpy as np

from driftswitch.detectors.base import JSON, BaseDetector, check_kind
from driftswitch.detectors.registry import register

__all__ = ["LatencyQuantile", "QuantileSketch"]


#: Below this many values, ``QuantileSketch.add_many`` counts them one by one (no numpy).
SMALL_BATCH = 64


@functools.lru_cache(maxsize=64)
def _bounds(min_value: float, gamma: float, max_key: int) -> tuple[list[float], Any]:
    """The upper bound ``min_value·γ^k`` of every bucket ``k`` (0 … ``max_key``), as a list and
    as a read-only numpy array: shared by the sketches of one accuracy and range."""
    bounds = [min_value * gamma**k for k in range(max_key + 1)]
    array = np.array(bounds, dtype=np.float64)
    array.setflags(write=False)
    return bounds, array


class QuantileSketch:
    """Relative-error quantile sketch over non-negative values (log-bucketed histogram).

    Examples
    --------
    >>> sketch = QuantileSketch(relative_accuracy=0.01)
    >>> sketch.add_many(range(1, 1001))
    >>> round(sketch.quantile(0.5), 1), round(sketch.quantile(0.99), 1)
    (500.2, 987.5)
    """

    def __init__(
        self,
        relative_accuracy: float = 0.01,
        min_value: float = 1e-6,
        max_value: float = 1e18,
    ) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must lie in (0, 1), got {relative_accuracy!r}")
        if not 0 < min_value < max_value or not math.isfinite(max_value):
            raise ValueError(
                f"need 0 < min_value < max_value < inf, got {min_value!r} and {max_value!r}"
            )
        self.relative_accuracy = float(relative_accuracy)
        self.min_value = float(min_value)
        self.max_value = float(max_value)
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        top = math.log(self.max_value / self.min_value) / math.log(self._gamma)
        self._max_key = max(1, math.ceil(top))
        self._bounds, self._bounds_array = _bounds(self.min_value, self._gamma, self._max_key)
        self._counts: dict[int, int] = {}
        self._count = 0

    def _key(self, x: float) -> int:
        """The bucket of ``x``: the first ``k`` with ``x <= min_value·γ^k`` (0 at or below
        ``min_value``), at most the last bucket. Found by comparing with the buckets' bounds,
        not by taking a logarithm, so that ``add`` and ``add_many`` (numpy, whose ``log`` may
        round differently from the C library's) put every value in the same bucket: the
        counts never depend on how the values were batched."""
        return min(bisect_left(self._bounds, x), self._max_key)

    def _value(self, key: int) -> float:
        if key == 0:
            return 0.0
        return min(2.0 * self.min_value * self._gamma**key / (self._gamma + 1.0), self.max_value)

    @staticmethod
    def _check(x: float) -> None:
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"quantile sketch takes finite values >= 0, got {x!r}")

    def add(self, x: float) -> None:
        """Count one value."""
        self._check(x)
        key = self._key(x)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._count += 1

    def add_many(self, xs: Iterable[float]) -> None:
        """Count many values at once (the same buckets as ``add``): one by one below
        :data:`SMALL_BATCH` values, where numpy's fixed cost per call is most of the work (a
        live worker's batches are small), with numpy above."""
        if not isinstance(xs, np.ndarray):
            xs = list(xs)
            if len(xs) < SMALL_BATCH:
                # Converted and checked as numpy does, all before any is counted.
                floats = [float(x) for x in xs]
                for x in floats:
                    self._check(x)
                table = self._counts
                for x in floats:
                    key = self._key(x)
                    table[key] = table.get(key, 0) + 1
                self._count += len(floats)
                return
        values = np.asarray(xs, dtype=np.float64)
        if values.size == 0:
            return
        if not bool(np.all(np.isfinite(values) & (values >= 0))):
            raise ValueError("quantile sketch takes finite values >= 0")
        keys = np.minimum(np.searchsorted(self._bounds_array, values, side="left"), self._max_key)
        unique, counts = np.unique(keys, return_counts=True)
        for key, count in zip(unique.tolist(), counts.tolist(), strict=True):
            self._counts[key] = self._counts.get(key, 0) + count
        self._count += int(values.size)

    def merge(self, other: QuantileSketch) -> None:
        """Add another sketch's counts (same accuracy and range): exact, order-free."""
        if (other.relative_accuracy, other.min_value, other.max_value) != (
            self.relative_accuracy,
            self.min_value,
            self.max_value,
        ):
            raise ValueError("can only merge sketches with the same accuracy and range")
        for key, count in other._counts.items():
            self._counts[key] = self._counts.get(key, 0) + count
        self._count += other._count

    @property
    def count(self) -> int:
        """Values counted."""
        return self._count

    @property
    def buckets(self) -> int:
        """Non-empty buckets (the sketch's memory)."""
        return len(self._counts)

    def quantile(self, q: float) -> float:
        """Estimate of the lower ``q``-quantile (the value of rank ``floor(q·(count − 1))``)."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile must lie in [0, 1], got {q!r}")
        if self._count == 0:
            return math.nan
        rank = math.floor(q * (self._count - 1))
        seen = 0
        for key in sorted(self._counts):
            seen += self._counts[key]
            if seen > rank:
                return self._value(key)
        raise AssertionError("unreachable: ranks are below the total count")

    def clear(self) -> None:
        self._counts = {}
        self._count = 0

    def to_state(self) -> dict[str, JSON]:
        return {
            "relative_accuracy": self.relative_accuracy,
            "min_value": self.min_value,
            "max_value": self.max_value,
            "buckets": [[key, self._counts[key]] for key in sorted(self._counts)],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> QuantileSketch:
        sketch = cls(
            relative_accuracy=float(state["relative_accuracy"]),
            min_value=float(state["min_value"]),
            max_value=float(state["max_value"]),
        )
        sketch._counts = {int(key): int(count) for key, count in state["buckets"]}
        sketch._count = sum(sketch._counts.values())
        return sketch


@register
class LatencyQuantile(BaseDetector):
    """Alarm when a quantile of a tumbling window of values exceeds ``threshold``.

    Parameters
    ----------
    threshold
        Alarm level in the metric's units (e.g. 250 for "p99 latency above 250 ms").
    quantile
        Which quantile, in (0, 1): 0.5, 0.95 and 0.99 are the usual ones.
    window
        Values per tumbling window; the quantile is evaluated when a window completes.
    relative_accuracy
        Relative error of the quantile estimate (the sketch's ``a``).

    ``statistic`` is the estimated quantile of the last completed window (0 before the first);
    the alarm is edge-triggered per window: every window whose quantile exceeds the threshold
    raises one. Nothing resets: each window is judged on its own values.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(1)
    >>> det = LatencyQuantile(threshold=200.0, quantile=0.99, window=500)
    >>> for i in range(5000):
    ...     det.update(rng.lognormvariate(4.0, 0.4) * (1.6 if i >= 3000 else 1.0))
    ...     if det.drift_detected:
    ...         print(f"p99 {det.statistic:.0f} ms > 200 ms at value {i}")
    ...         break
    p99 225 ms > 200 ms at value 3499
    """

    kind: ClassVar[str] = "latency_quantile"
    two_sample: ClassVar[bool] = False
    inputs: ClassVar[frozenset[str]] = frozenset({"continuous"})

    def __init__(
        self,
        *,
        threshold: float,
        quantile: float = 0.99,
        window: int = 1000,
        relative_accuracy: float = 0.01,
    ) -> None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not math.isfinite(threshold)
            or threshold <= 0
        ):
            raise ValueError(f"threshold must be a number > 0 (metric units), got {threshold!r}")
        if (
            isinstance(quantile, bool)
            or not isinstance(quantile, int | float)
            or not 0 < quantile < 1
        ):
            raise ValueError(f"quantile must be a number in (0, 1), e.g. 0.99, got {quantile!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if (
            isinstance(relative_accuracy, bool)
            or not isinstance(relative_accuracy, int | float)
            or not 0 < relative_accuracy <= 0.1
        ):
            raise ValueError(f"relative_accuracy must lie in (0, 0.1], got {relative_accuracy!r}")
        self._threshold = float(threshold)
        self.quantile = float(quantile)
        self.window = window
        self.relative_accuracy = float(relative_accuracy)
        self._sketch = QuantileSketch(relative_accuracy=self.relative_accuracy)
        self._n = 0
        self._statistic = 0.0
        self._last: dict[str, JSON] = {}
        self._drift = False
        self._windows = 0
        self._alarms = 0

    def _close_window(self) -> None:
        sketch = self._sketch
        self._statistic = sketch.quantile(self.quantile)
        self._last = {
            "p50": sketch.quantile(0.5),
            "p95": sketch.quantile(0.95),
            "p99": sketch.quantile(0.99),
            "count": sketch.count,
        }
        self._windows += 1
        self._drift = self._statistic > self._threshold
        if self._drift:
            self._alarms += 1
        sketch.clear()

    def update(self, x: float) -> None:
        self._sketch.add(x)
        self._n += 1
        self._drift = False
        if self._sketch.count == self.window:
            self._close_window()

    def update_many(self, xs: Iterable[float]) -> bool:
        """Feed values in order (numpy bucketing per window); return whether any window alarmed."""
        values = np.asarray(xs if isinstance(xs, np.ndarray) else list(xs), dtype=np.float64)
        return self._update_many_through_alarms(cast(Sequence[float], values))

    def update_until_alarm(self, xs: Sequence[float]) -> int | None:
        """Feed values in order (numpy bucketing per window) up to and including the one that
        closes the first alarming window; its index, or None. The state is the one
        :meth:`update` would leave after the same values."""
        values = np.asarray(xs, dtype=np.float64)
        start = 0
        while start < values.size:
            take = min(self.window - self._sketch.count, values.size - start)
            self._sketch.add_many(values[start : start + take])
            self._n += take
            start += take
            self._drift = False
            if self._sketch.count == self.window:
                self._close_window()
                if self._drift:
                    return start - 1
        return None

    @property
    def drift_detected(self) -> bool:
        return self._drift

    @property
    def statistic(self) -> float:
        """The estimated quantile of the last completed window (0 before the first)."""
        return self._statistic

    @property
    def threshold(self) -> float:
        """The alarm level: an alarm when ``statistic`` is strictly above it."""
        return self._threshold

    @property
    def n(self) -> int:
        return self._n

    def explain(self) -> dict[str, JSON]:
        return {
            "detector": self.kind,
            "statistic": self._statistic,
            "threshold": self._threshold,
            "n": self._n,
            "quantile": self.quantile,
            "relative_accuracy": self.relative_accuracy,
            "window": self.window,
            "windows": self._windows,
            "alarms": self._alarms,
            "last_window": dict(self._last),
        }

    def to_state(self) -> dict[str, JSON]:
        return {
            "kind": self.kind,
            "params": {
                "threshold": self._threshold,
                "quantile": self.quantile,
                "window": self.window,
                "relative_accuracy": self.relative_accuracy,
            },
            "sketch": self._sketch.to_state(),
            "n": self._n,
            "statistic": self._statistic,
            "last_window": dict(self._last),
            "drift": self._drift,
            "windows": self._windows,
            "alarms": self._alarms,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        check_kind(cls.kind, state)
        detector = cls(**state["params"])
        detector._sketch = QuantileSketch.from_state(state["sketch"])
        detector._n = int(state["n"])
        detector._statistic = float(state["statistic"])
        detector._last = dict(state["last_window"])
        detector._drift = bool(state["drift"])
        detector._windows = int(state["windows"])
        detector._alarms = int(state["alarms"])
        return detector
