"""Multi-window GLR-CUSUM for an accuracy drop of unknown size (at least ``min_drop``).

STATISTICS.md §2 and Lai (1998): with ``s`` errors among the last ``m`` events, the generalised
log-likelihood ratio of "the error rate rose to some ``q ≥ q0 + min_drop`` ``m`` events ago" against
the reference rate ``q0`` is ``s·ln(q̂/q0) + (m-s)·ln((1-q̂)/(1-q0))`` with ``q̂ = max(s/m, q0 +
min_drop)``. The statistic is the maximum over log-spaced window lengths (a geometric grid with
ratio 1.12 from the fewest events that could reach the threshold to three times the expected
delay for the smallest drop), floored at 0; alarm when it reaches ``h``. Not knowing the size of
the drop costs about 10 % more delay than a CUSUM tuned for the right one.

Calibration: no closed form gives the ARL of this statistic, so ``h`` comes from a seeded
simulation of the detector itself on in-control streams (fresh starts, so restart semantics are
the ones measured). First-passage times of many levels ``h`` give censored-exponential ARL
estimates up to about 2·10^4 events; the form ``ARL0 ≈ C·e^h/h`` (the shape of Siegmund &
Venkatraman's 1995 GLR approximation, with a steeper polynomial factor so that extrapolating beyond
the simulated range errs on the long side) is fitted to those (one constant, ``C``) and solved for
the requested ``arl0``.
The tests and ``benchmarks/detectors.py`` check the result by simulation. Calibrations are cached
(same parameters → same ``h``, about a second the first time).

Reference, restarts and batches work as in :mod:`driftswitch.detectors.cusum`: a given
``baseline`` or one learned over ``warmup`` events and frozen; after an alarm the windows are
emptied and the statistic restarts from 0 at the next event; ``update_counts`` draws a seeded,
uniformly random order of the batch's errors (exact in distribution for i.i.d. events).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from driftswitch.detectors.base import JSON, BaseDetector
from driftswitch.detectors.cusum import (
    check_arl0,
    check_bit,
    check_warmup,
    exchangeable_bits,
    learned_error_rate,
)
from driftswitch.detectors.registry import register

_WINDOW_RATIO = 1.15
#: Shortest window: shorter ones make a handful of consecutive errors an alarm (their statistic
#: takes few, coarse values) without helping the drops worth detecting.
_SHORTEST = 30
#: Simulation budget of one calibration: streams × events per stream.
_CAL_STREAMS = 120
_CAL_LENGTH = 30_000
_CHUNK = 2048
_STEP_MARGIN = 0.3


def bernoulli_kl(p: float, q: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(q)) in nats."""
    out = 0.0
    if p > 0:
        out += p * math.log(p / q)
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q))
    return out


@lru_cache(maxsize=256)
def glr_windows(q0: float, q1: float, arl0: float) -> tuple[int, ...]:
    """Log-spaced window lengths for reference error rate ``q0`` and smallest alternative ``q1``."""
    h_est = math.log(arl0) + 1.0
    longest = max(_SHORTEST + 1, math.ceil(3.0 * h_est / bernoulli_kl(q1, q0)))
    out: list[int] = []
    m = float(_SHORTEST)
    while m < longest * _WINDOW_RATIO:
        w = min(round(m), longest)
        if not out or w > out[-1]:
            out.append(w)
        m *= _WINDOW_RATIO
    return tuple(out)


def _llr(
    s: npt.NDArray[np.float64], span: npt.NDArray[np.float64], q0: float, q1: float
) -> npt.NDArray[np.float64]:
    """Constrained log-likelihood ratio of ``s`` errors in ``span`` events (``q̂ ≥ q1``)."""
    q = np.maximum(s / span, q1)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(q < 1.0, (span - s) * np.log((1.0 - q) / (1.0 - q0)), 0.0)
    out: npt.NDArray[np.float64] = s * np.log(q / q0) + tail
    return out


@lru_cache(maxsize=64)
def _llr_table(windows: tuple[int, ...], q0: float, q1: float) -> npt.NDArray[np.float64]:
    """``llr(s, m)`` for every full window ``m`` and ``s = 0 … m``, concatenated per window."""
    parts = [
        _llr(np.arange(m + 1, dtype=np.float64), np.full(m + 1, float(m)), q0, q1) for m in windows
    ]
    return np.concatenate(parts)


def glr_path(
    hist: npt.NDArray[np.int64],
    new: npt.NDArray[np.int64],
    windows: tuple[int, ...],
    q0: float,
    q1: float,
) -> npt.NDArray[np.float64]:
    """The GLR statistic after each event of ``new``, given the events since restart ``hist``.

    ``hist`` must hold the last ``min(k, max(windows))`` events since the last restart (``k`` of
    them): a window longer than the events seen since the restart covers all of them. Full windows
    read their log-likelihood ratio from a table (integer counts), partial ones compute it.
    """
    win = np.asarray(windows, dtype=np.int64)
    table = _llr_table(windows, q0, q1)
    offsets = np.concatenate([[0], np.cumsum(win + 1)[:-1]])
    longest = int(win[-1])
    bits = np.concatenate([hist, new])
    cum = np.concatenate([[0], np.cumsum(bits)])
    out = np.empty(len(new), dtype=np.float64)
    for start in range(0, len(new), _CHUNK):
        pos = len(hist) + np.arange(start, min(start + _CHUNK, len(new))) + 1  # events in bits
        rows = slice(start, start + len(pos))
        if pos[0] >= longest:
            s = cum[pos][:, None] - cum[pos[:, None] - win[None, :]]
            out[rows] = np.maximum(table[offsets[None, :] + s].max(axis=1), 0.0)
            continue
        span = np.minimum(win[None, :], pos[:, None])
        s = cum[pos][:, None] - cum[pos[:, None] - span]
        llr = _llr(s.astype(np.float64), span.astype(np.float64), q0, q1)
        out[rows] = np.maximum(llr.max(axis=1), 0.0)
    return out


def _null_first_passages(
    q0: float, q1: float, windows: tuple[int, ...], levels: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per level: summed run lengths (censored at the stream length) and number of crossings."""
    rng = np.random.default_rng(20_240_601)
    total = np.zeros(len(levels))
    crossed = np.zeros(len(levels), dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    for _ in range(_CAL_STREAMS):
        bits = (rng.random(_CAL_LENGTH) < q0).astype(np.int64)
        peak = np.maximum.accumulate(glr_path(empty, bits, windows, q0, q1))
        # First index at which the running maximum reaches each level (sorted search).
        first = np.searchsorted(peak, levels, side="left")
        hit = first < _CAL_LENGTH
        total += np.where(hit, first + 1, _CAL_LENGTH)
        crossed += hit
    return total, crossed


@lru_cache(maxsize=64)
def glr_calibration(q0: float, q1: float, arl0: float) -> tuple[float, float]:
    """``(h, log_c)``: the threshold for ``arl0`` and the fitted constant of ``C·e^h/h``."""
    windows = glr_windows(q0, q1, arl0)
    levels = np.linspace(2.0, 12.0, 101)
    total, crossed = _null_first_passages(q0, q1, windows, levels)
    # Censored-exponential ARL estimates; keep levels with enough crossings and mean well below
    # the stream length (where the exponential approximation and the estimate are both sound).
    with np.errstate(divide="ignore"):
        arl = total / crossed
    use = (crossed >= 40) & (arl <= _CAL_LENGTH / 2.0) & (arl >= 1000.0)
    if not np.any(use):
        raise ValueError(
            f"cannot calibrate glr for q0={q0}, q1={q1}: simulation found no usable level"
        )
    # ln ARL = log_c + h - ln(h), one constant weighted by crossings (the variance of ln ARL-hat
    # is about 1/crossings). Measured over h = 3 … 12 (e.g. q0 = 0.1), ln ARL - h decreases ever
    # more slowly (roughly like -ln(h)/2 … -ln(h)/4 in that range), so the -ln(h) term makes the
    # extrapolation beyond the simulated range conservative: the ARL0 achieved is at least the
    # one requested, up to the simulation noise the tests measure.
    x = levels[use]
    wts = crossed[use].astype(np.float64)
    log_c = float(np.average(np.log(arl[use]) - x + np.log(x), weights=wts))
    # Solve log_c + h - ln(h) = ln(arl0) by Newton's method (h ≥ 1, where the left side rises).
    target = math.log(arl0) - log_c
    h = max(target, 2.0)
    for _ in range(50):
        h = max(h - (h - math.log(h) - target) / (1.0 - 1.0 / h), 1.0 + 1e-9)
    # The statistic takes discrete values (integer counts), so ln ARL rises in steps around the
    # smooth fit (measured ±0.3); the margin keeps the achieved ARL0 above the requested one.
    h += _STEP_MARGIN
    return h, log_c


@register
class GLR(BaseDetector):
    """GLR-CUSUM for an accuracy drop of at least ``min_drop`` (x = 1 is an error).

    Parameters
    ----------
    min_drop
        Smallest accuracy drop that matters (the alternative is any error rate ≥ q0 + min_drop).
    baseline
        In-control accuracy; omit it and give ``warmup`` to learn it from the first events.
    arl0
        False-alarm budget: mean number of in-control events between false alarms.
    warmup
        Events used to learn the baseline (then frozen); 0 when ``baseline`` is given.
    seed
        Seeds the order drawn for pre-aggregated batches (``update_counts``).

    Examples
    --------
    >>> import numpy as np
    >>> from driftswitch.detectors.glr import GLR
    >>> rng = np.random.default_rng(7)
    >>> errors = np.concatenate([rng.random(3000) < 0.10, rng.random(3000) < 0.20])
    >>> det = GLR(baseline=0.90, min_drop=0.05, arl0=10_000)
    >>> alarms = [i for i, x in enumerate(errors) if (det.update(int(x)), det.drift_detected)[1]]
    >>> alarms[0]  # the change is at 3000
    3141
    """

    kind: ClassVar[str] = "glr"
    two_sample: ClassVar[bool] = False
    inputs: ClassVar[frozenset[str]] = frozenset({"bernoulli"})
    supports_counts: ClassVar[bool] = True

    def __init__(
        self,
        *,
        min_drop: float,
        baseline: float | None = None,
        arl0: float = 10_000.0,
        warmup: int = 0,
        seed: int = 0,
    ) -> None:
        if (
            isinstance(min_drop, bool)
            or not isinstance(min_drop, int | float)
            or not 0.0 < min_drop < 1.0
        ):
            raise ValueError(
                f"min_drop must be an accuracy drop strictly between 0 and 1, got {min_drop!r}"
            )
        if baseline is not None:
            if isinstance(baseline, bool) or not isinstance(baseline, int | float):
                raise ValueError(
                    f"baseline must be an accuracy strictly between 0 and 1, got {baseline!r}"
                )
            if not 0.0 < baseline < 1.0:
                raise ValueError(f"baseline must be strictly between 0 and 1, got {baseline!r}")
            if baseline - min_drop <= 0.0:
                raise ValueError(
                    f"min_drop ({min_drop}) must be smaller than baseline ({baseline})"
                )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self._min_drop = float(min_drop)
        self._baseline = None if baseline is None else float(baseline)
        self._arl0 = check_arl0(arl0)
        self._warmup = check_warmup(warmup, baseline is not None, "baseline")
        self._seed = seed
        self._n = 0
        self._stat = 0.0
        self._detected = False
        self._alarms = 0
        self._batches = 0
        self._warm_errors = 0
        self._hist = np.zeros(0, dtype=np.int64)
        self._q0 = 0.0
        self._q1 = 0.0
        self._h = math.inf
        self._windows: tuple[int, ...] = ()
        if self._baseline is not None:
            self._calibrate(1.0 - self._baseline)

    def _calibrate(self, q0: float) -> None:
        q1 = min(q0 + self._min_drop, 1.0 - 1e-9)
        self._q0, self._q1 = q0, q1
        self._windows = glr_windows(q0, q1, self._arl0)
        self._h = glr_calibration(q0, q1, self._arl0)[0]

    def update(self, x: float) -> None:
        self.update_many(np.array([check_bit(x)], dtype=np.int64))

    def update_many(self, xs: Iterable[float]) -> bool:
        bits = np.asarray(list(xs) if not isinstance(xs, np.ndarray) else xs, dtype=np.float64)
        if len(bits) == 0:
            return False
        if not np.all((bits == 0) | (bits == 1)):
            bad = bits[(bits != 0) & (bits != 1)][0]
            raise ValueError(
                f"Bernoulli detectors take x = 1 (error) or x = 0 (correct), got {bad}"
            )
        ints = bits.astype(np.int64)
        start = 0
        while math.isinf(self._h) and start < len(ints):
            self._n += 1
            self._warm_errors += int(ints[start])
            self._detected = False
            start += 1
            if self._n >= self._warmup:
                self._calibrate(learned_error_rate(self._warm_errors, self._n))
        alarmed = False
        while start < len(ints):
            if self._detected:
                self._hist = self._hist[:0]
                self._stat = 0.0
            new = ints[start : start + 4 * _CHUNK]  # bounded: an alarm restarts the scan
            path = glr_path(self._hist, new, self._windows, self._q0, self._q1)
            hits = np.flatnonzero(path >= self._h)
            end = len(new) if len(hits) == 0 else int(hits[0]) + 1
            self._n += end
            self._stat = float(path[end - 1])
            keep = self._windows[-1]
            self._hist = np.concatenate([self._hist, new[:end]])[-keep:]
            self._detected = len(hits) > 0
            if self._detected:
                self._alarms += 1
                alarmed = True
            start += end
        return alarmed

    def update_counts(self, n: int, total: float, total_sq: float | None = None) -> bool:
        """Feed ``n`` events of which ``total`` were errors, in a seeded uniformly random order."""
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

    @property
    def drift_detected(self) -> bool:
        return self._detected

    @property
    def statistic(self) -> float:
        return self._stat

    @property
    def threshold(self) -> float:
        return self._h

    @property
    def n(self) -> int:
        return self._n

    def explain(self) -> dict[str, JSON]:
        out = super().explain()
        ready = not math.isinf(self._h)
        out["threshold"] = self._h if ready else None
        out.update(
            {
                "baseline_accuracy": 1.0 - self._q0 if ready else None,
                "min_drop": self._min_drop,
                "baseline_learned": self._baseline is None,
                "arl0": self._arl0,
                "alarms": self._alarms,
                "warming_up": not ready,
            }
        )
        if ready and len(self._hist):
            # The window that carries the evidence now, and its error rate.
            span = np.minimum(np.asarray(self._windows), len(self._hist))
            cum = np.concatenate([[0], np.cumsum(self._hist)])
            s = (cum[-1] - cum[len(self._hist) - span]).astype(np.float64)
            q = np.maximum(s / span, self._q1)
            with np.errstate(divide="ignore", invalid="ignore"):
                llr = s * np.log(q / self._q0) + np.where(
                    q < 1.0,
                    (span - s) * np.log((1 - np.minimum(q, 0.5 + q / 2)) / (1 - self._q0)),
                    0.0,
                )
            best = int(np.argmax(llr))
            out["window"] = int(span[best])
            out["window_error_rate"] = float(s[best] / span[best])
        return out

    def to_state(self) -> dict[str, JSON]:
        packed = np.packbits(self._hist.astype(np.uint8)).tobytes()
        return {
            "kind": self.kind,
            "params": {
                "min_drop": self._min_drop,
                "baseline": self._baseline,
                "arl0": self._arl0,
                "warmup": self._warmup,
                "seed": self._seed,
            },
            "n": self._n,
            "statistic": self._stat,
            "detected": self._detected,
            "alarms": self._alarms,
            "batches": self._batches,
            "warm_errors": self._warm_errors,
            "history_len": len(self._hist),
            "history": base64.b64encode(packed).decode("ascii"),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        det = cls(**state["params"])
        det._n = int(state["n"])
        det._stat = float(state["statistic"])
        det._detected = bool(state["detected"])
        det._alarms = int(state["alarms"])
        det._batches = int(state["batches"])
        det._warm_errors = int(state["warm_errors"])
        raw = np.frombuffer(base64.b64decode(state["history"]), dtype=np.uint8)
        det._hist = np.unpackbits(raw)[: int(state["history_len"])].astype(np.int64)
        if math.isinf(det._h) and det._baseline is None and det._n >= det._warmup:
            det._calibrate(learned_error_rate(det._warm_errors, det._warmup))
        return det
