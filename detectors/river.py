"""river's drift detectors by name, fed the driftswitch meaning of an observation.

Every wrapper takes ``x = 1`` for an error (Bernoulli) or a value that is worse when larger
(continuous) and translates river's polarity quirks (tests/unit/detectors/test_river.py):

- ``page_hinkley`` always runs river's ``PageHinkley(mode="up")``: only an *increase* of the error
  rate (or of the metric) is a degradation;
- ``fhddm`` alarms when the windowed mean *drops*, whatever its docstring says, so it is fed
  ``1 - x`` (1 = correct prediction);
- the others (``adwin``, ``kswin``, ``ddm``, ``eddm``, ``hddm_a``, ``hddm_w``) take error bits
  as they are.

Every river detector **resets itself** on the update after an alarm: it forgets its reference and
starts learning a new one from the post-change data. A false alarm can therefore hide a real
change that follows it, and a persistent degradation raises only one alarm. Prefer ``cusum``/``glr``
(fixed reference) for guardrails; these wrappers exist for comparison and for users who know them.

State: river detectors have no ``to_dict``. ``to_state`` embeds ``pickle.dumps(detector,
protocol=5)`` as base64 text together with the river version; ``from_state`` refuses a state
pickled under another river version (the pickled internals, including ADWIN's Rust core, are
private to that version). Unpickling executes code: restore only states this service wrote.

river is untyped and slow to import (~1.5 s), so it is imported on first use and handled as
``Any`` at this boundary only.

river exposes no public statistic for most detectors, so ``statistic`` and ``threshold`` read the
detectors' private attributes (``_p_min``, ``_error_distances``, ...). Those, like the pickled
state, may change in any river release: ``pyproject.toml`` therefore pins river to the one minor
version these wrappers are tested with (tests/unit/detectors/test_river.py).
"""

from __future__ import annotations

import base64
import importlib
import math
import pickle
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from driftswitch.detectors.base import JSON, BaseDetector, check_kind
from driftswitch.detectors.registry import register

__all__ = [
    "ADWIN",
    "DDM",
    "EDDM",
    "FHDDM",
    "HDDM_A",
    "HDDM_W",
    "KSWIN",
    "PageHinkley",
    "RiverDetector",
    "river_version",
]


def _river_module(name: str) -> Any:
    """Import a river module lazily (``river.drift`` alone takes over a second to import)."""
    return importlib.import_module(name)


def river_version() -> str:
    """The installed river version, which pickled detector states are tied to."""
    return str(_river_module("river").__version__)


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def _check_probability(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class RiverDetector(BaseDetector):
    """Common machinery: one river detector, its parameters, our count and the pickled state.

    Subclasses set ``river_class`` (``"module:Class"``), validate their keyword parameters, store
    them in ``self._params`` and build the river object with ``_build``. ``statistic`` and
    ``threshold`` expose what each river detector compares internally; where the detector has no
    such quantity yet (warm-up), ``threshold`` is ``+inf`` and ``explain`` reports it as ``None``.
    """

    two_sample: ClassVar[bool] = False
    inputs: ClassVar[frozenset[str]] = frozenset({"bernoulli"})
    river_class: ClassVar[str]
    #: Whether river's detector expects 1 = correct (FHDDM) rather than 1 = error.
    flip: ClassVar[bool] = False

    def __init__(self, params: dict[str, JSON]) -> None:
        self._params = params
        self._n = 0
        self._alarms = 0
        self._detector: Any = self._build()

    def _river_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for river's constructor (defaults: our parameters as named)."""
        return dict(self._params)

    def _build(self) -> Any:
        module, name = self.river_class.split(":")
        return getattr(_river_module(module), name)(**self._river_kwargs())

    def _check_input(self, x: float) -> float:
        if "continuous" not in self.inputs and x not in (0, 1):
            raise ValueError(
                f"detector {self.kind!r} takes error bits: x must be 0 or 1, got {x!r}"
            )
        if not math.isfinite(x):
            raise ValueError(f"detector {self.kind!r} needs a finite value, got {x!r}")
        return 1 - x if self.flip else x

    def update(self, x: float) -> None:
        value = self._check_input(x)
        self._detector.update(value)
        self._n += 1
        if self.drift_detected:
            self._alarms += 1

    @property
    def drift_detected(self) -> bool:
        return bool(self._detector.drift_detected)

    @property
    def n(self) -> int:
        return self._n

    @property
    def alarms(self) -> int:
        """Alarms raised so far (river resets itself after each one)."""
        return self._alarms

    def explain(self) -> dict[str, JSON]:
        return {
            "detector": self.kind,
            "statistic": _finite_or_none(self.statistic),
            "threshold": _finite_or_none(self.threshold),
            "n": self.n,
            "alarms": self._alarms,
            "params": dict(self._params),
            "river_version": river_version(),
            "resets_after_alarm": True,
        }

    def to_state(self) -> dict[str, JSON]:
        blob = pickle.dumps(self._detector, protocol=5)
        return {
            "kind": self.kind,
            "params": dict(self._params),
            "n": self._n,
            "alarms": self._alarms,
            "river_version": river_version(),
            "pickle": base64.b64encode(blob).decode("ascii"),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        check_kind(cls.kind, state)
        pickled_under = state.get("river_version")
        if pickled_under != river_version():
            raise ValueError(
                f"{cls.kind!r} state was pickled under river {pickled_under!r} but river "
                f"{river_version()} is installed; river detector states only restore under the "
                "same river version"
            )
        restored = pickle.loads(base64.b64decode(state["pickle"]))
        module, name = cls.river_class.split(":")
        expected = getattr(_river_module(module), name)
        if type(restored) is not expected:
            raise ValueError(f"{cls.kind!r} state holds a {type(restored).__name__}, not {name}")
        detector = cls(**state["params"])
        detector._detector = restored
        detector._n = int(state["n"])
        detector._alarms = int(state["alarms"])
        return detector


@register
class ADWIN(RiverDetector):
    """ADWIN adaptive windowing (Bifet & Gavaldà 2007), river's ``drift.ADWIN``.

    ``statistic`` is ADWIN's estimate (the error rate over its adaptive window, of ``width``
    events). ADWIN has no single threshold: it alarms when some split of its window has means
    differing by more than a Hoeffding-type bound at confidence ``delta``, so ``threshold`` is
    ``+inf``. Accepts error bits and continuous values. ``delta=0.05`` is close to optimal at an
    ARL0 of about 2e5 events (``benchmarks/detectors.py``).

    river's ADWIN is two-sided; a guardrail only wants degradations, so a cut after which the
    estimate went *down* (an improvement) is not reported as drift (``improvements`` counts them).
    river still drops the old part of its window and resets on the next update, as it always does.
    """

    kind: ClassVar[str] = "adwin"
    inputs: ClassVar[frozenset[str]] = frozenset({"bernoulli", "continuous"})
    river_class: ClassVar[str] = "river.drift:ADWIN"

    def __init__(
        self,
        *,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        _check_probability("delta", delta)
        _check_count("clock", clock, 1)
        _check_count("max_buckets", max_buckets, 2)
        _check_count("min_window_length", min_window_length, 1)
        _check_count("grace_period", grace_period, 1)
        self._improvement = False
        self._improvements = 0
        super().__init__(
            {
                "delta": delta,
                "clock": clock,
                "max_buckets": max_buckets,
                "min_window_length": min_window_length,
                "grace_period": grace_period,
            }
        )

    def update(self, x: float) -> None:
        value = self._check_input(x)
        d = self._detector
        # river resets itself on the update after an alarm: the estimate to compare against is
        # then that of an empty window, and a fresh window cannot alarm on its first value.
        before = 0.0 if d.drift_detected else float(d.estimation)
        d.update(value)
        self._n += 1
        self._improvement = bool(d.drift_detected) and float(d.estimation) < before
        if self._improvement:
            self._improvements += 1
        elif d.drift_detected:
            self._alarms += 1

    @property
    def drift_detected(self) -> bool:
        return bool(self._detector.drift_detected) and not self._improvement

    @property
    def statistic(self) -> float:
        return float(self._detector.estimation)

    @property
    def threshold(self) -> float:
        return math.inf

    @property
    def width(self) -> int:
        """Events in ADWIN's current window."""
        return int(self._detector.width)

    def explain(self) -> dict[str, JSON]:
        return {
            **super().explain(),
            "estimation": self.statistic,
            "width": self.width,
            "improvements": self._improvements,
        }

    def to_state(self) -> dict[str, JSON]:
        return {
            **super().to_state(),
            "improvement": self._improvement,
            "improvements": self._improvements,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        detector = super().from_state(state)
        detector._improvement = bool(state["improvement"])
        detector._improvements = int(state["improvements"])
        return detector


@register
class PageHinkley(RiverDetector):
    """Page–Hinkley test (Page 1954), river's ``drift.PageHinkley`` in ``mode="up"``.

    ``statistic`` is the upward Page–Hinkley statistic ``m_n − min_k m_k`` with
    ``m_n = Σ (x_i − x̄_i − delta)`` (exponentially faded by ``alpha``); it alarms when the
    statistic exceeds ``threshold`` (river's λ) after ``min_instances`` events.
    """

    kind: ClassVar[str] = "page_hinkley"
    inputs: ClassVar[frozenset[str]] = frozenset({"bernoulli", "continuous"})
    river_class: ClassVar[str] = "river.drift:PageHinkley"

    def __init__(
        self,
        *,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
    ) -> None:
        _check_count("min_instances", min_instances, 1)
        if isinstance(delta, bool) or not isinstance(delta, int | float) or delta < 0:
            raise ValueError(f"delta must be a number >= 0, got {delta!r}")
        _check_positive("threshold", threshold)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha <= 1:
            raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
        super().__init__(
            {
                "min_instances": min_instances,
                "delta": delta,
                "threshold": threshold,
                "alpha": alpha,
            }
        )

    def _river_kwargs(self) -> dict[str, Any]:
        return {**self._params, "mode": "up"}

    @property
    def statistic(self) -> float:
        d = self._detector
        if d._x_mean.n == 0:
            return 0.0
        return float(d._sum_increase - d._min_increase)

    @property
    def threshold(self) -> float:
        return float(self._detector.threshold)


@register
class KSWIN(RiverDetector):
    """Kolmogorov–Smirnov windowing (Raab et al. 2020), river's ``drift.KSWIN``.

    Compares the last ``stat_size`` values with ``stat_size`` values sampled from the rest of a
    ``window_size`` window. ``statistic`` is the last KS p-value (1.0 until the window is full) and
    the detector alarms when it falls to ``threshold`` = ``alpha`` or below (with a KS distance
    above 0.1). ``seed`` fixes the sampling so runs are reproducible. Unsuited to Bernoulli streams
    (it missed 39 of 50 changes of the error rate in our runs) and slow (~260 µs per update).
    """

    kind: ClassVar[str] = "kswin"
    inputs: ClassVar[frozenset[str]] = frozenset({"bernoulli", "continuous"})
    river_class: ClassVar[str] = "river.drift:KSWIN"

    def __init__(
        self, *, alpha: float = 0.005, window_size: int = 100, stat_size: int = 30, seed: int = 0
    ) -> None:
        _check_probability("alpha", alpha)
        _check_count("stat_size", stat_size, 1)
        _check_count("window_size", window_size, 2 * stat_size)
        _check_count("seed", seed, 0)
        super().__init__(
            {"alpha": alpha, "window_size": window_size, "stat_size": stat_size, "seed": seed}
        )

    @property
    def statistic(self) -> float:
        d = self._detector
        if d.n < d.window_size:
            return 1.0
        return float(d.p_value)

    @property
    def threshold(self) -> float:
        return float(self._detector.alpha)


@register
class DDM(RiverDetector):
    """Drift Detection Method (Gama et al. 2004), river's ``drift.binary.DDM``.

    ``statistic`` is ``p + s`` (error rate since the last reset plus its standard error) and
    ``threshold`` is ``p_min + drift_threshold · s_min``; ``+inf`` during the ``warm_start``.
    Its delay grows with the stream's age (tests/unit/detectors/test_river.py).
    """

    kind: ClassVar[str] = "ddm"
    river_class: ClassVar[str] = "river.drift.binary:DDM"

    def __init__(
        self, *, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0
    ) -> None:
        _check_count("warm_start", warm_start, 1)
        _check_positive("warning_threshold", warning_threshold)
        _check_positive("drift_threshold", drift_threshold)
        if drift_threshold < warning_threshold:
            raise ValueError(
                f"drift_threshold ({drift_threshold}) must be >= warning_threshold "
                f"({warning_threshold})"
            )
        super().__init__(
            {
                "warm_start": warm_start,
                "warning_threshold": warning_threshold,
                "drift_threshold": drift_threshold,
            }
        )

    @property
    def statistic(self) -> float:
        d = self._detector
        n = d._p.n
        if n == 0:
            return 0.0
        p = d._p.get()
        return float(p + math.sqrt(p * (1 - p) / n))

    @property
    def threshold(self) -> float:
        d = self._detector
        if d._p_min is None:
            return math.inf
        return float(d._p_min + d.drift_threshold * d._s_min)


@register
class EDDM(RiverDetector):
    """Early Drift Detection Method (Baena-García et al. 2006), river's ``drift.binary.EDDM``.

    Watches the distance between consecutive errors. ``statistic`` is the level
    ``(μ' + 2σ') / max(μ' + 2σ')`` of that distance (1.0 until defined); the detector alarms when
    it falls below ``threshold`` = ``beta``. Raises many false alarms
    (tests/unit/detectors/test_river.py).
    """

    kind: ClassVar[str] = "eddm"
    river_class: ClassVar[str] = "river.drift.binary:EDDM"

    def __init__(self, *, warm_start: int = 30, alpha: float = 0.95, beta: float = 0.9) -> None:
        _check_count("warm_start", warm_start, 1)
        _check_probability("alpha", alpha)
        _check_probability("beta", beta)
        if alpha < beta:
            raise ValueError(f"alpha ({alpha}) must be >= beta ({beta})")
        super().__init__({"warm_start": warm_start, "alpha": alpha, "beta": beta})

    @property
    def statistic(self) -> float:
        d = self._detector
        if d._p2s_prime_max <= 0 or d._error_distances.mean.n == 0:
            return 1.0
        p2s = d._error_distances.mean.get() + 2 * d._error_distances.get() ** 0.5
        return float(p2s / d._p2s_prime_max)

    @property
    def threshold(self) -> float:
        return float(self._detector.beta)


@register
class HDDM_A(RiverDetector):  # noqa: N801 - the paper's name
    """Hoeffding drift detection, averages test (Frías-Blanco et al. 2015), river's ``HDDMA``.

    ``statistic`` is the increase of the error rate over its lowest confident value
    (``mean − mean at the cut point``); ``threshold`` is the Hoeffding bound at
    ``drift_confidence`` for the current sample sizes (``+inf`` with no cut point yet).
    One-sided: only an increase of the error rate alarms.
    """

    kind: ClassVar[str] = "hddm_a"
    river_class: ClassVar[str] = "river.drift.binary:HDDMA"

    def __init__(
        self, *, drift_confidence: float = 0.001, warning_confidence: float = 0.005
    ) -> None:
        _check_probability("drift_confidence", drift_confidence)
        _check_probability("warning_confidence", warning_confidence)
        super().__init__(
            {"drift_confidence": drift_confidence, "warning_confidence": warning_confidence}
        )

    def _river_kwargs(self) -> dict[str, Any]:
        return {**self._params, "two_sided_test": False}

    @property
    def statistic(self) -> float:
        d = self._detector
        if d._z.n == 0:
            return 0.0
        return float(d._z.get() - d._x_min.get())

    @property
    def threshold(self) -> float:
        d = self._detector
        n_z, n_x = d._z.n, d._x_min.n
        if n_z == 0 or n_x == n_z:
            return math.inf
        m = (n_z - n_x) / n_x / n_z
        return math.sqrt(m / 2 * math.log(2.0 / d.drift_confidence))


@register
class HDDM_W(RiverDetector):  # noqa: N801 - the paper's name
    """Hoeffding drift detection, EWMA test (Frías-Blanco et al. 2015), river's ``HDDMW``.

    ``statistic`` is the EWMA error rate after the cut point minus the one before it; ``threshold``
    is McDiarmid's bound at ``drift_confidence`` (``+inf`` until both parts have data).
    One-sided: only an increase of the error rate alarms.
    """

    kind: ClassVar[str] = "hddm_w"
    river_class: ClassVar[str] = "river.drift.binary:HDDMW"

    def __init__(
        self,
        *,
        drift_confidence: float = 0.001,
        warning_confidence: float = 0.005,
        lambda_val: float = 0.05,
    ) -> None:
        _check_probability("drift_confidence", drift_confidence)
        _check_probability("warning_confidence", warning_confidence)
        _check_probability("lambda_val", lambda_val)
        super().__init__(
            {
                "drift_confidence": drift_confidence,
                "warning_confidence": warning_confidence,
                "lambda_val": lambda_val,
            }
        )

    def _river_kwargs(self) -> dict[str, Any]:
        return {**self._params, "two_sided_test": False}

    @property
    def statistic(self) -> float:
        d = self._detector
        if not (d._s1_incr.is_init and d._s2_incr.is_init):
            return 0.0
        return float(d._s2_incr.ewma - d._s1_incr.ewma)

    @property
    def threshold(self) -> float:
        d = self._detector
        if not (d._s1_incr.is_init and d._s2_incr.is_init):
            return math.inf
        ibc = d._s1_incr.ibc + d._s2_incr.ibc
        return math.sqrt(ibc * math.log(1 / d.drift_confidence) / 2)


@register
class FHDDM(RiverDetector):
    """Fast Hoeffding drift detection (Pesaranghader & Viktor 2016), river's ``FHDDM``.

    river's FHDDM alarms when the accuracy over a sliding window drops below its maximum by more
    than a Hoeffding bound, so this wrapper feeds it ``1 − x`` (1 = correct). ``statistic`` is that
    drop (``max accuracy − current accuracy`` over ``sliding_window_size`` events, 0 until the
    window is full) and ``threshold`` the bound ``sqrt(ln(1/confidence_level) / (2·size))``.
    """

    kind: ClassVar[str] = "fhddm"
    river_class: ClassVar[str] = "river.drift.binary:FHDDM"
    flip: ClassVar[bool] = True

    def __init__(
        self,
        *,
        sliding_window_size: int = 100,
        confidence_level: float = 0.000001,
        short_window_size: int | None = None,
    ) -> None:
        _check_count("sliding_window_size", sliding_window_size, 2)
        _check_probability("confidence_level", confidence_level)
        if short_window_size is not None:
            _check_count("short_window_size", short_window_size, 1)
            if short_window_size >= sliding_window_size:
                raise ValueError(
                    f"short_window_size ({short_window_size}) must be < sliding_window_size "
                    f"({sliding_window_size}) or null"
                )
        self._statistic = 0.0
        super().__init__(
            {
                "sliding_window_size": sliding_window_size,
                "confidence_level": confidence_level,
                "short_window_size": short_window_size,
            }
        )

    def update(self, x: float) -> None:
        d = self._detector
        size = d.sliding_window_size
        # river drops the accuracy it tested right after testing it, so recompute it here:
        # a full window is the current n_one (after a reset river starts from an empty window).
        reset = d.drift_detected
        before = 0 if reset else d.n_one
        filled = 0 if reset else len(d._sliding_window)
        super().update(x)
        if filled + 1 >= size:
            accuracy = (before + (1 - x)) / size
            self._statistic = float(d._u_max - accuracy)
        else:
            self._statistic = 0.0

    @property
    def statistic(self) -> float:
        return self._statistic

    @property
    def threshold(self) -> float:
        return float(self._detector._epsilon)

    def to_state(self) -> dict[str, JSON]:
        return {**super().to_state(), "statistic": self._statistic}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        detector = super().from_state(state)
        detector._statistic = float(state["statistic"])
        return detector
