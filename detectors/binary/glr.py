"""Multi-window GLR-CUSUM for an accuracy drop of unknown size (at least ``min_drop``).

Lai (1998): with ``s`` errors among the last ``m`` events, the generalised
log-likelihood ratio of "the error rate rose to some ``q ≥ q0 + min_drop`` ``m`` events ago" against
the reference rate ``q0`` is ``s·ln(q̂/q0) + (m-s)·ln((1-q̂)/(1-q0))`` with ``q̂ = max(s/m, q0 +
min_drop)``. The windows form a geometric grid (ratio 1.15) from 30 events to three times the
expected delay ``m*`` of the smallest drop.

Each window's ratio is compared with its own share of the false-alarm budget: the statistic is the
maximum over windows of ``llr_m - max(0, ln(m*/m))`` (a weighted GLR, weight ``∝ min(m, m*)``),
floored at 0; alarm when it reaches ``h``. In-control, every window scale raises false alarms at
about the same rate, so an unweighted maximum pays for the short windows (useful only for large
drops, which gather evidence fast) with the delay of the smallest drop (see :func:`glr_penalty`).
Measured at ARL0 ≈ 10^5 (q0 = 0.1, min_drop = 0.05, change at 4,500 events): the weights cut the
delay to 0.85 from 572 to 484 events, leave 0.80 at 160 and cost 0.70 53 → 57, 0.50 21 → 24.

Calibration: no closed form gives the ARL of this statistic, so ``h`` comes from a seeded
simulation of the detector itself on in-control streams (fresh starts, so restart semantics are
the ones measured), directly up to an ARL of 3·10^4 and by a conservative extrapolation beyond
(:func:`glr_calibration`). The tests and ``benchmarks/detectors.py`` check the result by
simulation. Calibrations are cached (same parameters → same ``h``, up to a few seconds the first
time).

Reference, restarts and batches work as in :mod:`driftswitch.detectors.binary.cusum`: a given
``baseline`` or one learned over ``warmup`` events and frozen; after an alarm the windows are
emptied and the statistic restarts from 0 at the next event; ``update_counts`` draws a seeded,
uniformly random order of the batch's errors (exact in distribution for i.i.d. events). Single
events and small batches update the window sums incrementally; larger batches are vectorised
(:func:`glr_path`); both compute the same numbers.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from driftswitch.detectors.base import JSON
from driftswitch.detectors.binary._bernoulli import (
    BernoulliDetector,
    check_arl0,
    check_bit,
    check_bits,
    check_seed,
    check_unit,
    check_warmup,
)
from driftswitch.detectors.binary.cusum import bernoulli_lattice, learned_budget
from driftswitch.detectors.registry import register

_WINDOW_RATIO = 1.15
#: Shortest window: shorter ones make a handful of consecutive errors an alarm (their statistic
#: takes few, coarse values) without helping the drops worth detecting.
_SHORTEST = 30
#: Calibration: simulated streams, the largest ARL simulated directly, and the aim above the
#: budget that absorbs the simulation noise (about ±1/sqrt(streams) in ARL) and the steps of ARL
#: in ``h`` (the statistic takes discrete values).
_CAL_STREAMS = 120
_CAL_REACH = 30_000.0
_CAL_AIM = 1.0
_CHUNK = 2048
#: Updates of at most this many events take the incremental single-event path.
_STEP_MAX = 16


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


def glr_penalty(span: npt.ArrayLike, longest: int) -> npt.NDArray[np.float64]:
    """Extra threshold of a window of ``span`` events: ``max(0, ln(m*/span))``, ``m* = longest/3``.

    ``m*`` is the expected detection scale of the smallest drop (the longest window is three times
    it). Window ``m`` alarms at ``h + penalty``, i.e. it carries a weight ``∝ min(m, m*)`` of the
    false-alarm budget. A nat of threshold costs ``1/KL`` events of delay, and the short windows
    serve large drops (large KL), so moving budget from them to the windows of the smallest drop
    minimises the delay summed over a log-uniform range of drop sizes (Lagrange: weight ∝ scale).
    """
    out: npt.NDArray[np.float64] = np.maximum(
        np.log((longest / 3.0) / np.asarray(span, dtype=np.float64)), 0.0
    )
    return out


@lru_cache(maxsize=64)
def _llr_table(windows: tuple[int, ...], q0: float, q1: float) -> npt.NDArray[np.float64]:
    """Penalised ``llr(s, m)`` for every full window ``m`` and ``s = 0 … m``, per window."""
    pen = glr_penalty(np.asarray(windows), windows[-1])
    parts = [
        _llr(np.arange(m + 1, dtype=np.float64), np.full(m + 1, float(m)), q0, q1) - pen[i]
        for i, m in enumerate(windows)
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
        out[rows] = _partial_path(cum, pos, win, table, offsets, q0, q1)
    return out


def _partial_path(
    cum: npt.NDArray[np.int64],
    pos: npt.NDArray[np.int64],
    win: npt.NDArray[np.int64],
    table: npt.NDArray[np.float64],
    offsets: npt.NDArray[np.int64],
    q0: float,
    q1: float,
) -> npt.NDArray[np.float64]:
    """The statistic at event counts ``pos`` since restart, some below the longest window.

    Windows not longer than ``pos`` read the table; the longer ones all cover the ``pos`` events
    seen, so they share one value, computed with the penalty of a ``pos``-event window.
    """
    full = win[None, :] <= pos[:, None]
    s = np.where(full, cum[pos][:, None] - cum[np.maximum(pos[:, None] - win[None, :], 0)], 0)
    best = np.where(full, table[offsets[None, :] + s], -np.inf).max(axis=1)
    k = pos.astype(np.float64)
    rest = _llr(cum[pos].astype(np.float64), k, q0, q1) - glr_penalty(k, int(win[-1]))
    rest = np.where(pos < win[-1], rest, -np.inf)
    out: npt.NDArray[np.float64] = np.maximum(np.maximum(best, rest), 0.0)
    return out


def _null_first_passages(
    q0: float,
    q1: float,
    windows: tuple[int, ...],
    levels: npt.NDArray[np.float64],
    streams: int,
    length: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per level: summed run lengths (censored at the stream length) and number of crossings."""
    rng = np.random.default_rng(20_240_601)
    total = np.zeros(len(levels))
    crossed = np.zeros(len(levels), dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    for _ in range(streams):
        bits = (rng.random(length) < q0).astype(np.int64)
        peak = np.maximum.accumulate(glr_path(empty, bits, windows, q0, q1))
        # First index at which the running maximum reaches each level (sorted search).
        first = np.searchsorted(peak, levels, side="left")
        hit = first < length
        total += np.where(hit, first + 1, length)
        crossed += hit
    return total, crossed


@lru_cache(maxsize=64)
def glr_calibration(q0: float, q1: float, arl0: float) -> tuple[float, float]:
    """``(h, slope)``: the threshold for ``arl0`` and the fitted slope of ``ln ARL`` in ``h``.

    Fresh-start first passages of the detector's own statistic on simulated in-control streams
    (``_CAL_STREAMS`` streams of three times ``min(arl0, _CAL_REACH)`` events) give
    censored-exponential ARL estimates for a fine grid of levels. ``ln ARL`` is fitted linear in
    ``h`` over the top decade of the usable estimates (weights: crossings, the inverse variance of
    ``ln ARL``-hat) and solved for ``_CAL_AIM · arl0``: an interpolation up to ``_CAL_REACH``.
    Beyond it the line is not extended: measured over ``h`` = 1 … 10 (q0 = 0.1), the slope of
    ``ln ARL`` in ``h`` grows with ``h`` (0.65 around ARL 10^4, 0.9 around 10^6; the tail tends
    to ``e^h``), so a straight line would overestimate ``h`` (and the ARL0 achieved). The
    extrapolation follows ``ln ARL = c + h + b·ln h`` instead, matched to the line's value and
    slope at the top of the fit (in the code below).
    """
    windows = glr_windows(q0, q1, arl0)
    reach = min(arl0, _CAL_REACH)
    length = math.ceil(3.0 * reach)
    levels = np.arange(1, 400, dtype=np.float64) * 0.05
    total, crossed = _null_first_passages(q0, q1, windows, levels, _CAL_STREAMS, length)
    with np.errstate(divide="ignore"):
        arl = total / crossed
    # Enough crossings for a sound estimate, and a mean well inside the stream length.
    use = (crossed >= _CAL_STREAMS // 2) & (arl <= length / 2.0)
    top = float(arl[use].max()) if np.any(use) else 0.0
    use &= arl >= top / 10.0
    if np.count_nonzero(use) < 3 or not np.any(arl[use] < arl[use].max()):
        raise ValueError(
            f"cannot calibrate glr for q0={q0}, q1={q1}: simulation found no usable levels"
        )
    slope, icpt = np.polyfit(levels[use], np.log(arl[use]), 1, w=np.sqrt(crossed[use]))
    slope, icpt = float(slope), float(icpt)
    goal = math.log(_CAL_AIM * arl0)
    h_top = float(levels[use][-1])
    top_fit = icpt + slope * h_top
    if goal <= top_fit or slope >= 1.0:
        h = (goal - icpt) / slope
    else:
        # Beyond the simulated range the slope keeps growing: the tail of the statistic is e^-h
        # times a power of h, so ln ARL = c + h + b·ln h, whose slope 1 + b/h tends to 1. Anchor
        # it at the top of the fit (value and slope) and solve; a straight line would overshoot.
        b = (slope - 1.0) * h_top
        h = h_top + (goal - top_fit)
        for _ in range(50):  # Newton on f(h) = h - h_top + b·ln(h/h_top) - (goal - top_fit)
            f = h - h_top + b * math.log(h / h_top) - (goal - top_fit)
            h -= f / (1.0 + b / h)
        slope = 1.0 + b / h
    return max(h, float(levels[0])), slope


@register
class GLR(BernoulliDetector):
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
    >>> from driftswitch.detectors.binary.glr import GLR
    >>> rng = np.random.default_rng(7)
    >>> errors = np.concatenate([rng.random(3000) < 0.10, rng.random(3000) < 0.20])
    >>> det = GLR(baseline=0.90, min_drop=0.05, arl0=10_000)
    >>> alarms = [i for i, x in enumerate(errors) if (det.update(int(x)), det.drift_detected)[1]]
    >>> alarms[0]  # the change is at 3000
    3133
    """

    kind: ClassVar[str] = "glr"

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
            baseline = check_unit("baseline", baseline)
            if baseline - min_drop <= 0.0:
                raise ValueError(
                    f"min_drop ({min_drop}) must be smaller than baseline ({baseline})"
                )
        self._min_drop = float(min_drop)
        self._baseline = None if baseline is None else float(baseline)
        self._arl0 = check_arl0(arl0)
        self._warmup = check_warmup(warmup, baseline is not None, "baseline")
        self._seed = check_seed(seed)
        self._n = 0
        self._stat = 0.0
        self._detected = False
        self._alarms = 0
        self._batches = 0
        self._warm_errors = 0
        # Events since the last restart: a ring buffer of the last ``longest`` of them, their count
        # ``k`` and, per window, the errors among its last ``min(m, k)`` events (kept incrementally
        # for single-event updates; batches recompute them from the history).
        self._ring = np.zeros(0, dtype=np.int64)
        self._k = 0
        self._sums = np.zeros(0, dtype=np.int64)
        self._win = np.zeros(0, dtype=np.int64)
        self._offsets = np.zeros(0, dtype=np.int64)
        self._table = np.zeros(0, dtype=np.float64)
        self._q0 = 0.0
        self._q1 = 0.0
        self._h = math.inf
        self._budget = self._arl0
        self._windows: tuple[int, ...] = ()
        if self._baseline is not None:
            self._calibrate(1.0 - self._baseline)

    def _calibrate(self, q0: float) -> None:
        q1 = min(q0 + self._min_drop, 1.0 - 1e-9)
        self._q0, self._q1 = q0, q1
        self._windows = glr_windows(q0, q1, self._arl0)
        self._budget = self._arl0
        if self._baseline is None:
            # A learned q0 carries its estimation error; borrow the inflation of the CUSUM for the
            # same q0 and smallest drop (exact chain), which watches the same likelihood ratio at
            # the boundary of the GLR's alternatives. Measured in benchmarks/detectors.py.
            up, down = bernoulli_lattice(q0, q1, self._arl0)
            self._budget = learned_budget(q0, up, down, self._arl0, self._warmup)
        self._h = glr_calibration(q0, q1, self._budget)[0]
        self._win = np.asarray(self._windows, dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._win + 1)[:-1]])
        self._table = _llr_table(self._windows, q0, q1)
        self._load(np.zeros(0, dtype=np.int64))

    @property
    def calibrated(self) -> bool:
        """False while the baseline is still being learned (no alarm is possible yet)."""
        return not math.isinf(self._h)

    def _history(self) -> npt.NDArray[np.int64]:
        """The last ``min(k, longest)`` events since the restart, oldest first."""
        size = len(self._ring)
        if self._k <= size:
            return self._ring[: self._k].copy()
        return self._ring[np.arange(self._k - size, self._k) % size]

    def _load(self, hist: npt.NDArray[np.int64]) -> None:
        """Set the events since the restart to ``hist`` (at most ``longest`` of them)."""
        self._ring = np.zeros(self._windows[-1], dtype=np.int64)
        self._ring[: len(hist)] = hist
        self._k = len(hist)
        cum = np.concatenate([[0], np.cumsum(hist, dtype=np.int64)])
        self._sums = cum[-1] - cum[len(hist) - np.minimum(self._win, len(hist))]

    def _step(self, x: int) -> bool:
        """One event, incrementally: same statistic as :func:`glr_path` (same table, same ops)."""
        if self._detected:
            self._ring[:] = 0
            self._k = 0
            self._sums[:] = 0
        size = len(self._ring)
        k = self._k + 1
        win = self._win
        # Window m loses event k - m (stored at (k - m - 1) mod size) when it was full already.
        if k > size:
            self._sums += x - self._ring[(k - 1 - win) % size]
        else:
            self._sums += x - np.where(win < k, self._ring[(k - 1 - win) % size], 0)
        self._ring[(k - 1) % size] = x
        self._k = k
        if k >= size:
            value = float(self._table[self._offsets + self._sums].max())
        else:
            full = win <= k
            best = (
                float(self._table[self._offsets[full] + self._sums[full]].max())
                if full[0]
                else -math.inf
            )
            span = np.array([float(k)])
            rest = _llr(self._sums[-1:].astype(np.float64), span, self._q0, self._q1)
            rest = rest - glr_penalty(span, size)
            value = max(best, float(rest[0]))
        self._stat = max(value, 0.0)
        self._n += 1
        self._detected = self._stat >= self._h
        if self._detected:
            self._alarms += 1
        return self._detected

    def update(self, x: float) -> None:
        bit = check_bit(x)
        if math.isinf(self._h):
            self.update_many(np.array([bit], dtype=np.int64))
        else:
            self._step(bit)

    def update_many(self, xs: Iterable[float]) -> bool:
        bits = check_bits(xs)
        if len(bits) == 0:
            return False
        ints = bits.astype(np.int64)
        start = 0
        while not self.calibrated and start < len(ints):
            self._n += 1
            self._warm(int(ints[start]))
            start += 1
        alarmed = False
        if len(ints) - start <= _STEP_MAX:
            for x in ints[start:].tolist():
                alarmed = self._step(x) or alarmed
            return alarmed
        hist = self._history()
        while start < len(ints):
            if self._detected:
                hist = hist[:0]
                self._stat = 0.0
            new = ints[start : start + 4 * _CHUNK]  # bounded: an alarm restarts the scan
            path = glr_path(hist, new, self._windows, self._q0, self._q1)
            hits = np.flatnonzero(path >= self._h)
            end = len(new) if len(hits) == 0 else int(hits[0]) + 1
            self._n += end
            self._stat = float(path[end - 1])
            hist = np.concatenate([hist, new[:end]])[-self._windows[-1] :]
            self._detected = len(hits) > 0
            if self._detected:
                self._alarms += 1
                alarmed = True
            start += end
        self._load(hist)
        return alarmed

    def update_until_alarm(self, xs: Sequence[float]) -> int | None:
        """Feed events in order up to and including the first alarm; its index, or None.

        The warm-up and short batches go one event at a time; longer ones through
        :func:`glr_path` (vectorised), stopping at the first crossing: the state is the one
        :meth:`update` would leave after the same events.
        """
        ints = check_bits(xs).astype(np.int64)
        start = 0
        while not self.calibrated and start < len(ints):  # no alarm while learning
            self._n += 1
            self._warm(int(ints[start]))
            start += 1
        if len(ints) - start <= _STEP_MAX:
            for i, x in enumerate(ints[start:].tolist()):
                if self._step(x):
                    return start + i
            return None
        hist = self._history()
        while start < len(ints):
            if self._detected:
                hist = hist[:0]
                self._stat = 0.0
                self._detected = False
            new = ints[start : start + 4 * _CHUNK]
            path = glr_path(hist, new, self._windows, self._q0, self._q1)
            hits = np.flatnonzero(path >= self._h)
            end = len(new) if len(hits) == 0 else int(hits[0]) + 1
            self._n += end
            self._stat = float(path[end - 1])
            hist = np.concatenate([hist, new[:end]])[-self._windows[-1] :]
            start += end
            if len(hits):
                self._detected = True
                self._alarms += 1
                self._load(hist)
                return start - 1
        self._load(hist)
        return None

    @property
    def statistic(self) -> float:
        return self._stat

    @property
    def threshold(self) -> float:
        return self._h

    def explain(self) -> dict[str, JSON]:
        out = self._explain({"min_drop": self._min_drop})
        if self.calibrated and self._k:
            # The window that carries the evidence now (penalised statistic), and its error rate.
            span = np.minimum(self._win, self._k).astype(np.float64)
            s = self._sums.astype(np.float64)
            llr = _llr(s, span, self._q0, self._q1) - glr_penalty(span, len(self._ring))
            best = int(np.argmax(llr))
            out["window"] = int(span[best])
            out["window_error_rate"] = float(s[best] / span[best])
        return out

    def to_state(self) -> dict[str, JSON]:
        hist = self._history() if len(self._ring) else np.zeros(0, dtype=np.int64)
        packed = np.packbits(hist.astype(np.uint8)).tobytes()
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
            **self._counters_state(),
            "history_len": len(hist),
            "history": base64.b64encode(packed).decode("ascii"),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        det = cls(**state["params"])
        det._stat = float(state["statistic"])
        det._restore_counters(state)
        raw = np.frombuffer(base64.b64decode(state["history"]), dtype=np.uint8)
        hist = np.unpackbits(raw)[: int(state["history_len"])].astype(np.int64)
        if len(det._ring):
            det._load(hist)
        return det
