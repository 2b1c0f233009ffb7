"""What the Bernoulli (error-bit) detectors share: argument checks, the warm-up error rate, and
pre-aggregated batches fed in a seeded exchangeable order.

:class:`~driftswitch.detectors.binary.cusum.CUSUM` and
:class:`~driftswitch.detectors.binary.glr.GLR` watch the
same input (``x = 1`` is an error) and treat their reference and batches the same way; only the
statistic differs. Private: the detectors' modules are the public API.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from driftswitch.detectors.base import JSON, BaseDetector


def exchangeable_bits(n: int, errors: int, seed: int, batch: int) -> npt.NDArray[np.int64]:
    """A uniformly random order of ``errors`` ones among ``n`` events (seeded by batch number).

    Given the counts of a batch of i.i.d. Bernoulli events, every order of its errors is equally
    likely, so a detector fed this order has exactly the run-length distribution of one fed the
    real events one by one (same ARL0, same delays), and a replay with the same seed is identical.
    """
    rng = np.random.default_rng([seed, batch])
    bits = np.zeros(n, dtype=np.int64)
    if errors:
        bits[rng.choice(n, size=errors, replace=False)] = 1
    return bits


def check_unit(name: str, value: float) -> float:
    """Validate a probability-like parameter (an accuracy, a drop): strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return float(value)


def check_arl0(arl0: float) -> float:
    """Validate a false-alarm budget (events between false alarms)."""
    if isinstance(arl0, bool) or not isinstance(arl0, int | float) or not math.isfinite(arl0):
        raise ValueError(f"arl0 must be a number of events between 10 and 1e9, got {arl0!r}")
    if not 10.0 <= arl0 <= 1e9:
        raise ValueError(f"arl0 must be between 10 and 1e9 events, got {arl0!r}")
    return float(arl0)


def check_warmup(warmup: int, given: bool, what: str) -> int:
    """Validate ``warmup``: required (≥ 2) exactly when the reference ``what`` is not given."""
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer number of events, got {warmup!r}")
    if given and warmup:
        raise ValueError(f"give either {what} or warmup > 0 to learn it, not both")
    if not given and warmup < 2:
        raise ValueError(f"give {what}, or warmup ≥ 2 events to learn it from")
    return warmup


def check_seed(seed: int) -> int:
    """Validate the seed of the order drawn for pre-aggregated batches."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def check_bit(x: float) -> int:
    """An error bit: 1 (error) or 0 (correct); anything else is a ``ValueError``."""
    if x == 1:
        return 1
    if x == 0:
        return 0
    raise ValueError(f"Bernoulli detectors take x = 1 (error) or x = 0 (correct), got {x!r}")


def check_bits(xs: Iterable[float]) -> npt.NDArray[np.float64]:
    """``xs`` as an array of error bits; any value but 0 or 1 is a ``ValueError``."""
    bits = np.asarray(list(xs) if not isinstance(xs, np.ndarray) else xs, dtype=np.float64)
    if not np.all((bits == 0) | (bits == 1)):
        bad = bits[(bits != 0) & (bits != 1)][0]
        raise ValueError(f"Bernoulli detectors take x = 1 (error) or x = 0 (correct), got {bad}")
    return bits


def learned_error_rate(errors: int, n: int) -> float:
    """Error rate learned over a warm-up: ``(errors + 0.5) / (n + 1)``.

    The half-count keeps the rate inside (0, 1) when the warm-up saw no errors (or only errors),
    where the log-likelihood ratio would otherwise be infinite.
    """
    return (errors + 0.5) / (n + 1.0)


class BernoulliDetector(BaseDetector):
    """Base of the Bernoulli detectors: warm-up, counters in the state, batches of counts.

    Subclasses set the attributes declared here in ``__init__`` and implement ``calibrated``
    and ``_calibrate(q0)`` (set the reference error rate ``q0`` and everything derived from it).
    """

    two_sample: ClassVar[bool] = False
    inputs: ClassVar[frozenset[str]] = frozenset({"bernoulli"})
    supports_counts: ClassVar[bool] = True

    _baseline: float | None
    _warmup: int
    _seed: int
    _arl0: float
    #: The calibrated false-alarm budget (larger than ``_arl0`` for a learned baseline).
    _budget: float
    _q0: float
    _n: int
    _detected: bool
    _alarms: int
    _batches: int
    _warm_errors: int

    @property
    def drift_detected(self) -> bool:
        return self._detected

    @property
    def n(self) -> int:
        return self._n

    def _explain(self, kind_fields: dict[str, JSON]) -> dict[str, JSON]:
        """:meth:`explain`'s evidence: the base fields, the baseline, ``kind_fields`` and the
        calibration (``None`` for what is not known during warm-up)."""
        out = super().explain()
        ready = self.calibrated
        out["threshold"] = self.threshold if ready else None
        out["baseline_accuracy"] = 1.0 - self._q0 if ready else None
        out.update(kind_fields)
        out.update(
            {
                "baseline_learned": self._baseline is None,
                "arl0": self._arl0,
                "arl0_calibrated": self._budget if ready else None,
                "alarms": self._alarms,
                "warming_up": not ready,
            }
        )
        return out

    @property
    @abstractmethod
    def calibrated(self) -> bool:
        """False while the baseline is still being learned (no alarm is possible yet)."""

    @abstractmethod
    def _calibrate(self, q0: float) -> None: ...

    def _warm(self, bit: int) -> None:
        """One warm-up event (already counted in ``n``); the last one calibrates the detector."""
        self._warm_errors += bit
        self._detected = False
        if self._n >= self._warmup:
            self._calibrate(learned_error_rate(self._warm_errors, self._n))

    def _counters_state(self) -> dict[str, JSON]:
        """The state entries that follow the statistic in ``to_state`` (same in every kind)."""
        return {
            "detected": self._detected,
            "alarms": self._alarms,
            "batches": self._batches,
            "warm_errors": self._warm_errors,
        }

    def _restore_counters(self, state: Mapping[str, Any]) -> None:
        """Restore ``n`` and :meth:`_counters_state`; recalibrate if the warm-up was over."""
        self._n = int(state["n"])
        self._detected = bool(state["detected"])
        self._alarms = int(state["alarms"])
        self._batches = int(state["batches"])
        self._warm_errors = int(state["warm_errors"])
        if not self.calibrated and self._baseline is None and self._n >= self._warmup:
            self._calibrate(learned_error_rate(self._warm_errors, self._warmup))

    def update_counts(self, n: int, total: float, total_sq: float | None = None) -> bool:
        """Feed ``n`` events of which ``total`` were errors (order unknown).

        The order is drawn uniformly at random (seeded, reproducible): exact in distribution for
        i.i.d. events, see :func:`exchangeable_bits`. After the call ``drift_detected`` says
        whether the batch raised an alarm.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if total != int(total) or not 0 <= total <= n:
            raise ValueError(f"total must be a whole number of errors between 0 and n={n}")
        if n == 0:
            return False
        bits = exchangeable_bits(n, int(total), self._seed, self._batches)
        self._batches += 1
        alarmed = self.update_many(bits)
        self._detected = alarmed
        return alarmed
