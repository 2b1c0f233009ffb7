"""Per-(flag, variant) statistics and per-guardrail detectors: from scored events to breaches.

:class:`VariantStats` keeps the numbers a status page shows (counts, accuracy, error rate, latency
quantiles, precision/recall/F1, joined/expired). :class:`Monitor` owns one guardrail's detector,
built from config with ``registry.create(detector_spec(g, flag))``, and the evidence a decision
needs (samples, event-time window).

Observations are collected per batch and fed in arrival order when the batch is flushed, with
*per-observation semantics*: the result — which observation raised an alarm, and the detector
state afterwards — is the same however the stream is cut into batches. That is what lets the live
worker (Kafka batches), a restarted worker (replay after a snapshot) and ``backtest`` (file chunks)
reach the same decisions on the same events. Detectors with their own ``update_until_alarm``
(Bernoulli ``cusum`` and ``glr``, ``psi``/``js``/``ks``, ``latency_quantile``: vectorised) take the
whole batch in one call, which stops at the first alarm and says where; the rest of the batch
follows in the next call. No detector state is saved per batch. The others (river's detectors,
``cusum_mean``) are fed one observation at a time. (Bernoulli detectors' ``update_counts`` draws a
random order inside a batch, which would make decisions depend on batch boundaries, so the
ordered batch path is used instead.) Two-sample detectors (``sequential``) take a batch in one
``update_until_harm`` call until harm shows, then one observation at a time: the order of the
arms matters for when harm is declared.

``min_samples`` gates every decision: an alarm while the variant has fewer samples is not a
breach, and the status says "no decision yet". A one-sample detector's alarm is an edge; a
two-sample comparison's harm is a level, which breaches as soon as the gates hold and again
after each ``cooldown`` while it stands.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftswitch.detectors import registry
from driftswitch.detectors.base import JSON, BaseDetector
from driftswitch.detectors.quantiles import QuantileSketch
from driftswitch.streams.config.model import FlagConfig, Guardrail, Metric

#: Labelled outcomes in the windowed accuracy of a variant.
ACCURACY_WINDOW = 1000
#: Points kept in a guardrail's trace (one per flush that fed it): the status page's chart.
TRACE_POINTS = 300
#: Relative error of the latency quantiles (a :class:`QuantileSketch`).
LATENCY_ACCURACY = 0.01

#: A trace point: event time, statistic, threshold, breaches so far.
Point = tuple[float, float | None, float | None, int]

NO_DECISION = "no decision yet"
OK = "ok"
BREACHED = "breached"


def finite(value: object) -> float | None:
    """``value`` as a float if it is a finite number, else None (JSON and pydantic need it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def plain(value: Any) -> JSON:
    """Evidence as strict JSON: non-finite floats become None, tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


class VariantStats:
    """Counters of one (flag, variant), updated per event with a few integer operations."""

    __slots__ = (
        "abs_error_sum",
        "correct",
        "errors",
        "first_ts",
        "fn",
        "fp",
        "joined",
        "labelled",
        "last_ts",
        "latency",
        "predictions",
        "regression_n",
        "score_n",
        "score_sum",
        "shadow",
        "squared_error_sum",
        "tp",
        "window",
        "window_errors",
        "window_pos",
    )

    def __init__(self) -> None:
        self.predictions = 0
        self.shadow = 0
        self.errors = 0
        self.latency = QuantileSketch(LATENCY_ACCURACY)
        self.score_n = 0
        self.score_sum = 0.0
        self.joined = 0
        self.labelled = 0
        self.correct = 0
        self.tp = 0
        self.fp = 0
        self.fn = 0
        self.regression_n = 0
        self.abs_error_sum = 0.0
        self.squared_error_sum = 0.0
        # Ring of the last ACCURACY_WINDOW correctness bits (1 = wrong), with its running sum.
        self.window = bytearray()
        self.window_pos = 0
        self.window_errors = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None

    def add_correct(self, correct: bool) -> None:
        """Count one labelled classification outcome."""
        self.labelled += 1
        bit = 0 if correct else 1
        if correct:
            self.correct += 1
        w = self.window
        if len(w) < ACCURACY_WINDOW:
            w.append(bit)
        else:
            pos = self.window_pos
            self.window_errors -= w[pos]
            w[pos] = bit
            self.window_pos = pos + 1 if pos + 1 < ACCURACY_WINDOW else 0
        self.window_errors += bit

    def summary(self, expired: int) -> dict[str, JSON]:
        """Plain-data status of this variant (``expired`` comes from the join buffer)."""
        labelled, n = self.labelled, self.predictions
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else None
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else None
        )
        window = len(self.window)
        return {
            "predictions": n,
            "served": n - self.shadow,
            "shadow": self.shadow,
            "errors": self.errors,
            "error_rate": self.errors / n if n else None,
            "joined": self.joined,
            "expired": expired,
            "labelled": labelled,
            "accuracy": self.correct / labelled if labelled else None,
            "windowed_accuracy": 1.0 - self.window_errors / window if window else None,
            "window": window,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "mae": self.abs_error_sum / self.regression_n if self.regression_n else None,
            "mse": self.squared_error_sum / self.regression_n if self.regression_n else None,
            "mean_score": self.score_sum / self.score_n if self.score_n else None,
            "latency_ms": {
                f"p{round(q * 100)}": self.latency.quantile(q) if self.latency.count else None
                for q in (0.50, 0.95, 0.99)
            },
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }

    def to_state(self) -> dict[str, JSON]:
        return {
            "predictions": self.predictions,
            "shadow": self.shadow,
            "errors": self.errors,
            "latency": self.latency.to_state(),  # plain JSON already: finite floats, ints
            "score_n": self.score_n,
            "score_sum": self.score_sum,
            "joined": self.joined,
            "labelled": self.labelled,
            "correct": self.correct,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "regression_n": self.regression_n,
            "abs_error_sum": self.abs_error_sum,
            "squared_error_sum": self.squared_error_sum,
            "window": self.window.hex(),
            "window_pos": self.window_pos,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> VariantStats:
        s = cls()
        for name in (
            "predictions",
            "shadow",
            "errors",
            "score_n",
            "joined",
            "labelled",
            "correct",
            "tp",
            "fp",
            "fn",
            "regression_n",
            "window_pos",
        ):
            setattr(s, name, int(state[name]))
        for name in ("score_sum", "abs_error_sum", "squared_error_sum"):
            setattr(s, name, float(state[name]))
        latency = state["latency"]
        if isinstance(latency, list):  # written before the sketch: [[k, count]], 2 % buckets
            s.latency = QuantileSketch(LATENCY_ACCURACY)
            s.latency.add_many(
                np.repeat(
                    [0.0 if k == -350 else 1.02 ** (k + 0.5) for k, _ in latency],
                    [c for _, c in latency],
                )
            )
        else:
            s.latency = QuantileSketch.from_state(latency)
        s.window = bytearray.fromhex(state["window"])
        s.window_errors = sum(s.window)
        s.first_ts = state["first_ts"]
        s.last_ts = state["last_ts"]
        return s


@dataclass(frozen=True, slots=True)
class Decision:
    """A guardrail breach with its evidence; :mod:`driftswitch.streams.pipeline.policy` turns it
    into
    a flag change or an alert."""

    flag: str
    guardrail: Guardrail
    #: Index, in the batch given to ``Engine.process``, of the observation that decided.
    index: int
    #: Event time of that observation.
    ts: float
    detector: str
    statistic: float | None
    threshold: float | None
    samples: dict[str, int]
    window: dict[str, JSON]
    interval: tuple[float, float] | None
    evidence: dict[str, JSON]


class Monitor:
    """One guardrail: its detector, the observations waiting for the next flush, and evidence.

    ``observe`` appends (cheap, on the hot path); ``flush`` feeds the detector in arrival order
    and returns the breaches, each tagged with the index of the deciding observation.
    """

    __slots__ = (
        "acted",
        "breaches",
        "detector",
        "flag",
        "flip",
        "guardrail",
        "kind",
        "last_breach_statistic",
        "last_breach_threshold",
        "last_breach_ts",
        "paired",
        "pending",
        "samples",
        "spec",
        "trace",
        "two_sample",
        "until_alarm",
        "window_events",
        "window_first",
        "window_last",
    )

    def __init__(self, flag: str, flag_config: FlagConfig, guardrail: Guardrail) -> None:
        from driftswitch.streams.config.model import detector_spec

        self.flag = flag
        self.guardrail = guardrail
        self.spec: dict[str, Any] = detector_spec(guardrail, flag_config)
        self.detector: Any = registry.create(self.spec)
        cls = type(self.detector)
        self.kind: str = cls.kind
        self.two_sample: bool = bool(cls.two_sample)
        #: One observation per interleaved impression, both teams at once (``interleaving``).
        self.paired = guardrail.metric is Metric.INTERLEAVING
        # Accuracy observations are error bits; a two-sample detector told that higher is better
        # (``detector_spec`` derives it from the metric) compares correctness bits instead.
        self.flip = (
            self.two_sample
            and guardrail.metric is Metric.ACCURACY
            and self.spec.get("higher_is_better") is True
        )
        one_sample = not self.two_sample and isinstance(self.detector, BaseDetector)
        #: Stops a batch at its first alarm itself: no saved state, no replay.
        self.until_alarm = (
            one_sample and cls.update_until_alarm is not BaseDetector.update_until_alarm
        )
        #: Observations since the last flush: (arm, value, batch index, ts); arm 1 = the variant,
        #: 0 = the ``compare_to`` control.
        self.pending: list[tuple[int, float, int, float]] = []
        #: Observations fed, per arm: [control, variant].
        self.samples = [0, 0]
        # Event-time window of the evidence since the last breach.
        self.window_first: float | None = None
        self.window_last: float | None = None
        self.window_events = 0
        self.breaches = 0
        self.last_breach_ts: float | None = None
        #: The recent past, one ``(event time, statistic, threshold, breaches so far)`` per flush
        #: that fed the detector, the newest last; not part of the state (a restarted worker
        #: starts afresh).
        self.trace: deque[Point] = deque(maxlen=TRACE_POINTS)
        #: The detector's statistic and threshold when it last fired (it restarts after that).
        self.last_breach_statistic: float | None = None
        self.last_breach_threshold: float | None = None
        #: Breaches that changed something (the engine counts them: a breach of a variant that
        #: is already killed, or one in cooldown, changes nothing).
        self.acted = 0

    # -- feeding ---------------------------------------------------------------------------

    def flush(self) -> list[Decision]:
        """Feed the pending observations; return the breaches in arrival order."""
        if not self.pending:
            return []
        ts = self.pending[-1][3]
        out = self._flush()
        det = self.detector
        self.trace.append((ts, finite(det.statistic), finite(det.threshold), self.breaches))
        return out

    def _flush(self) -> list[Decision]:
        pending = self.pending
        self.pending = []
        if self.two_sample:
            return self._feed_two_sample(pending)
        if self.paired:
            return self._feed_paired(pending)
        if self.until_alarm:
            return self._feed_until_alarm(pending)
        return self._feed_one_by_one(pending)

    def _account(self, pending: list[tuple[int, float, int, float]]) -> None:
        """Book a batch that raised no alarm: samples and window."""
        self.samples[1] += len(pending)
        if self.window_first is None:
            self.window_first = pending[0][3]
        self.window_last = pending[-1][3]
        self.window_events += len(pending)

    def _feed_until_alarm(self, pending: list[tuple[int, float, int, float]]) -> list[Decision]:
        """The batch in as few calls as it has alarms (plus one): each call stops at an alarm,
        which is a breach once ``min_samples`` are in, exactly as one by one."""
        det = self.detector
        least = self.guardrail.min_samples
        values = [p[1] for p in pending]
        out: list[Decision] = []
        start = 0
        while start < len(pending):
            k = det.update_until_alarm(values[start:] if start else values)
            if k is None:
                self._account(pending[start:] if start else pending)
                break
            end = start + k
            self._account(pending[start : end + 1])
            if self.samples[1] >= least:
                out.append(self._breach(pending[end]))
            start = end + 1
        return out

    def _feed_one_by_one(self, pending: list[tuple[int, float, int, float]]) -> list[Decision]:
        det = self.detector
        out: list[Decision] = []
        for obs in pending:
            det.update(obs[1])
            self._account([obs])
            if det.drift_detected and self.samples[1] >= self.guardrail.min_samples:
                out.append(self._breach(obs))
        return out

    def _feed_paired(self, pending: list[tuple[int, float, int, float]]) -> list[Decision]:
        """Interleaved impressions: harm is a level, which breaches once ``min_samples`` are in
        and again after each ``cooldown`` (event time) while it stands, so harm that shows
        before ``min_samples`` is acted on at the first impression that meets the gate."""
        det = self.detector
        least = self.guardrail.min_samples
        cooldown = self.guardrail.cooldown
        out: list[Decision] = []
        for obs in pending:
            det.update(obs[1])
            self._account([obs])
            if (
                det.harm
                and self.samples[1] >= least
                and (self.last_breach_ts is None or obs[3] >= self.last_breach_ts + cooldown)
            ):
                out.append(self._breach(obs))
        return out

    def _feed_two_sample(self, pending: list[tuple[int, float, int, float]]) -> list[Decision]:
        """Harm is a level: it breaches whenever it stands and the gates allow — the variant's
        ``min_samples`` and, after a breach, the guardrail's ``cooldown`` (in event time) — not
        only on the update that first showed it. Harm that appears before the variant has
        ``min_samples`` therefore acts at the first observation that meets the gate.

        Until harm shows, the batch goes to the detector in one ``update_until_harm`` call (no
        decision is possible before it); from the observation that shows it on, one at a time —
        or, for a detector whose harm stands for good (``update_many_standing``), in one call
        up to each observation the gates let breach (:meth:`_feed_standing`).
        """
        det = self.detector
        flip = self.flip
        start = 0
        if not det.harm:
            xs = [1.0 - p[1] for p in pending] if flip else [p[1] for p in pending]
            k = det.update_until_harm([p[0] for p in pending], xs)
            fed = pending if k is None else pending[: k + 1]
            variant = sum(p[0] for p in fed)
            self.samples[1] += variant
            self.samples[0] += len(fed) - variant
            if self.window_first is None:
                self.window_first = fed[0][3]
            self.window_last = fed[-1][3]
            self.window_events += len(fed)
            if k is None:
                return []
            out = self._gate(pending[k])
            start = k + 1
        else:
            out = []
        standing = getattr(det, "update_many_standing", None)
        if standing is not None and det.harm and start < len(pending):
            start += self._feed_standing(standing, pending[start:] if start else pending, out)
        samples = self.samples
        for obs in pending[start:] if start else pending:
            arm = obs[0]
            det.update("variant" if arm else "control", 1.0 - obs[1] if flip else obs[1])
            samples[arm] += 1
            if self.window_first is None:
                self.window_first = obs[3]
            self.window_last = obs[3]
            self.window_events += 1
            if det.harm:
                out += self._gate(obs)
        return out

    def _feed_standing(
        self, standing: Any, pending: list[tuple[int, float, int, float]], out: list[Decision]
    ) -> int:
        """Once harm stands for good (the detector's ``update_many_standing`` feeds only then),
        the batch goes in as few calls as it breaches (plus one), each up to the next
        observation the gates let breach, which then breaches on the detector's state after
        it, exactly as one at a time. Returns how many observations were fed."""
        flip = self.flip
        least = self.guardrail.min_samples
        cooldown = self.guardrail.cooldown
        samples = self.samples
        begin = 0
        n = len(pending)
        while begin < n:
            # The next observation at which the gates hold (harm holds after every one).
            s1 = samples[1]
            last = self.last_breach_ts
            hit: int | None = None
            for j in range(begin, n):
                obs = pending[j]
                s1 += obs[0]
                if s1 >= least and (last is None or obs[3] >= last + cooldown):
                    hit = j
                    break
            end = n if hit is None else hit + 1
            part = pending[begin:end]
            xs = [1.0 - p[1] for p in part] if flip else [p[1] for p in part]
            if not standing([p[0] for p in part], xs):
                return begin  # fed nothing: the caller goes on one at a time
            variant = sum(p[0] for p in part)
            samples[1] += variant
            samples[0] += len(part) - variant
            if self.window_first is None:
                self.window_first = part[0][3]
            self.window_last = part[-1][3]
            self.window_events += len(part)
            if hit is not None:
                out.append(self._breach(pending[hit]))
            begin = end
        return n

    def _gate(self, obs: tuple[int, float, int, float]) -> list[Decision]:
        """A breach at ``obs`` (harm stands) if ``min_samples`` and the cooldown allow."""
        if self.samples[1] >= self.guardrail.min_samples and (
            self.last_breach_ts is None or obs[3] >= self.last_breach_ts + self.guardrail.cooldown
        ):
            return [self._breach(obs)]
        return []

    def _breach(self, obs: tuple[int, float, int, float]) -> Decision:
        det = self.detector
        g = self.guardrail
        samples = {g.variant: self.samples[1]}
        if g.compare_to is not None:
            # A one-sample detector with `compare_to` (interleaving) sees paired observations.
            samples[g.compare_to] = self.samples[0 if self.two_sample else 1]
        interval = getattr(det, "interval", None)
        if interval is not None:
            lo, hi = finite(interval[0]), finite(interval[1])
            interval = (lo, hi) if lo is not None and hi is not None else None
        evidence = plain(det.explain())
        assert isinstance(evidence, dict)
        decision = Decision(
            flag=self.flag,
            guardrail=g,
            index=obs[2],
            ts=obs[3],
            detector=self.kind,
            statistic=finite(det.statistic),
            threshold=finite(det.threshold),
            samples=samples,
            window={
                "first_ts": self.window_first,
                "last_ts": self.window_last,
                "events": self.window_events,
            },
            interval=interval,
            evidence=evidence,
        )
        self.breaches += 1
        self.last_breach_ts = obs[3]
        self.last_breach_statistic = decision.statistic
        self.last_breach_threshold = decision.threshold
        self.window_first = None
        self.window_last = None
        self.window_events = 0
        return decision

    # -- reading ---------------------------------------------------------------------------

    def status(self) -> str:
        """``no decision yet`` below ``min_samples`` (or while the detector cannot decide),
        ``breached`` once it has fired, ``ok`` otherwise."""
        if self.breaches:
            return BREACHED
        if self.samples[1] < self.guardrail.min_samples:
            return NO_DECISION
        det = self.detector
        if self.two_sample and not getattr(det, "decided", True):
            return NO_DECISION  # an arm below the detector's own minimum
        if not getattr(det, "calibrated", True) or not getattr(det, "reference_ready", True):
            return NO_DECISION  # a CUSUM learning its baseline, a reference window filling up
        return OK

    def summary(self) -> dict[str, JSON]:
        """Plain-data status of this guardrail."""
        g = self.guardrail
        samples: dict[str, JSON] = {g.variant: self.samples[1]}
        if g.compare_to is not None:
            samples[g.compare_to] = self.samples[0 if self.two_sample else 1]
        out: dict[str, JSON] = {
            "variant": g.variant,
            "compare_to": g.compare_to,
            "metric": g.metric.value,
            "action": g.action.value,
            "detector": self.kind,
            "min_samples": g.min_samples,
            "samples": samples,
            "statistic": finite(self.detector.statistic),
            "threshold": finite(self.detector.threshold),
            "state": self.status(),
            "breaches": self.breaches,
            "acted": self.acted,
            "last_breach_ts": self.last_breach_ts,
            "last_breach_statistic": self.last_breach_statistic,
            "last_breach_threshold": self.last_breach_threshold,
        }
        interval = getattr(self.detector, "interval", None)
        if self.two_sample or interval is not None:
            out["interval"] = plain(list(interval)) if interval is not None else None
        return out

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, JSON]:
        """Plain data; the pending list must be empty (state is taken between batches)."""
        if self.pending:
            raise RuntimeError("flush before taking the state")
        return {
            "spec": plain(self.spec),
            "detector": self.detector.to_state(),
            "samples": list(self.samples),
            "window_first": self.window_first,
            "window_last": self.window_last,
            "window_events": self.window_events,
            "breaches": self.breaches,
            "last_breach_ts": self.last_breach_ts,
            "last_breach_statistic": self.last_breach_statistic,
            "last_breach_threshold": self.last_breach_threshold,
            "acted": self.acted,
        }

    def restore(self, state: Mapping[str, Any]) -> bool:
        """Continue from ``to_state`` output if it was made for the same detector spec.

        Returns False (and keeps the fresh detector) when the config changed the spec.
        """
        if state.get("spec") != plain(self.spec):
            return False
        self.detector = registry.restore(state["detector"])
        self.samples = [int(x) for x in state["samples"]]
        self.window_first = state["window_first"]
        self.window_last = state["window_last"]
        self.window_events = int(state["window_events"])
        self.breaches = int(state["breaches"])
        self.last_breach_ts = state["last_breach_ts"]
        self.last_breach_statistic = state.get("last_breach_statistic")
        self.last_breach_threshold = state.get("last_breach_threshold")
        self.acted = int(state.get("acted", 0))
        return True
