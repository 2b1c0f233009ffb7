"""Per-segment guardrails: one detector per segment value, and kills that act on one segment.

A guardrail with ``segment_by: [attributes.region]`` watches every value of the attribute on its
own (every combination of values, for several attributes). :class:`SegmentMonitor` keeps a
:class:`~driftswitch.streams.pipeline.monitor.Monitor` per segment, created when the segment's
first observation arrives, in arrival order, so the worker, a restarted worker and ``backtest``
build the same segments and decide alike.

Bounds. At most ``max_segments`` segments get their own detector; observations of later values,
and of predictions whose attribute is missing, not a string, or longer than
:data:`MAX_VALUE_LENGTH`, go to one ``other`` bucket (counted as ``overflow`` and ``invalid``). A
prediction carries into the join only the attribute values some guardrail of its flag segments by
(:func:`extract`), each at most :data:`MAX_VALUE_LENGTH` characters, so the join's memory stays
bounded by its ``max_pending`` whatever the attributes hold.

False-alarm budget (docs/statistics.md, "Per-segment guardrails"). Segments partition the
guardrail's observations. A one-sample detector's ``arl0`` counts its own observations, so with
``arl0`` per segment the false alarms of all segments add up to (observations) / ``arl0``, the
guardrail's budget: the spec is kept as it is. A comparison's ``alpha`` is a probability of any
false alarm over the whole run; with S = ``max_segments + 1`` detectors (the ``other`` bucket
included) each gets ``alpha / S`` (Bonferroni), so the chance that any segment false-alarms stays
at most ``alpha``.

Acting. A breach is a :class:`SegmentDecision`; :func:`apply` turns it into a flag change that
adds a :class:`~driftswitch.streams.contract.events.SegmentOverride` (the segment's users get the
default variant, everyone else keeps the weights), an alert, or a hold. The ``other`` bucket's
kill covers everyone outside the segments tracked at that moment. Cooldowns are per guardrail and
segment. :func:`restore` removes an override (``restore`` with a segment).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driftswitch.detectors import registry
from driftswitch.detectors.base import JSON
from driftswitch.streams.config.model import (
    FlagConfig,
    Guardrail,
    GuardrailAction,
    detector_spec,
    segment_names,
)
from driftswitch.streams.contract.events import (
    Action,
    AlertEvent,
    Cause,
    FlagChangeEvent,
    Output,
    Segment,
    SegmentOverride,
)
from driftswitch.streams.contract.targeting import evaluate
from driftswitch.streams.pipeline.monitor import (
    BREACHED,
    NO_DECISION,
    OK,
    TRACE_POINTS,
    Decision,
    Monitor,
    Point,
    finite,
    plain,
)
from driftswitch.streams.pipeline.policy import Cooldowns, cause_of
from driftswitch.streams.pipeline.transitions import next_state

#: Longest attribute value that forms a segment; longer values count in ``other``.
MAX_VALUE_LENGTH = 128
#: The label of the bucket for overflow and invalid values.
OTHER = "other"

#: A segment's key: its values in ``segment_by`` order; ``()`` is the ``other`` bucket.
Key = tuple[str, ...]
OTHER_KEY: Key = ()
#: What a prediction carries into the join: one value per field of :func:`fields` (None when
#: missing, not a string or too long).
Values = list[str | None]


def fields(flag: FlagConfig) -> tuple[str, ...]:
    """The attribute names the flag's guardrails segment by, in config order, each once."""
    out: dict[str, None] = {}
    for g in flag.guardrails:
        for name in segment_names(g.segment_by or []):
            out[name] = None
    return tuple(out)


def extract(attributes: Mapping[str, Any], names: Sequence[str]) -> Values:
    """The values of ``names`` in a prediction's attributes, as :data:`Values`."""
    out: Values = []
    for name in names:
        v = attributes.get(name)
        out.append(v if type(v) is str and len(v) <= MAX_VALUE_LENGTH else None)
    return out


def label(segment: Mapping[str, str] | None) -> str:
    """``region=jp`` (``region=jp,plan=pro``), or ``other``."""
    if not segment:
        return OTHER
    return ",".join(f"{k}={v}" for k, v in segment.items())


def split_spec(spec: Mapping[str, Any], segments: int) -> dict[str, Any]:
    """A segment's detector spec: ``alpha / segments`` for a comparison, else ``spec`` itself
    (see the module doc for why ``arl0`` stays)."""
    out = dict(spec)
    kind = str(spec["kind"])
    cls = registry.detector_class(kind)
    params = registry.parameters(kind)
    if cls.two_sample and "alpha" in params:
        alpha = out.get("alpha", params["alpha"].default)
        out["alpha"] = float(alpha) / segments
    return out


@dataclass(frozen=True, slots=True)
class SegmentDecision(Decision):
    """A breach in one segment: ``segment`` is None for the ``other`` bucket, whose kill covers
    everyone outside ``tracked`` (the segments with their own detector at that moment)."""

    segment: Segment | None = None
    tracked: tuple[Segment, ...] = ()


class SegmentMonitor:
    """A guardrail watched per segment: a :class:`Monitor` per segment value (module doc).

    The engine calls :meth:`add` with the values a prediction carried; :meth:`flush`,
    :meth:`summary`, :meth:`to_state` and :meth:`restore` work like :class:`Monitor`'s.
    """

    def __init__(
        self, flag: str, flag_config: FlagConfig, guardrail: Guardrail, field_order: Sequence[str]
    ) -> None:
        assert guardrail.segment_by is not None
        self.flag = flag
        self.flag_config = flag_config
        self.guardrail = guardrail
        self.names = segment_names(guardrail.segment_by)
        #: Where each of ``names`` is in the values a prediction carries.
        self.positions = [list(field_order).index(n) for n in self.names]
        self.max_segments = guardrail.max_segments
        self.spec = split_spec(detector_spec(guardrail, flag_config), self.max_segments + 1)
        self.segments: dict[Key, Monitor] = {}
        #: Observations counted in ``other`` because ``max_segments`` segments already exist, and
        #: because the value was missing, not a string or too long.
        self.overflow = 0
        self.invalid = 0
        self.acted = 0
        self.trace: deque[Point] = deque(maxlen=TRACE_POINTS)
        self._dirty: list[Monitor] = []
        self._allow = frozenset(guardrail.metric_segments)

    # -- feeding ---------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether observations wait for :meth:`flush`."""
        return bool(self._dirty)

    def _key(self, values: Values | None) -> Key:
        if values is None:
            self.invalid += 1
            return OTHER_KEY
        key: list[str] = []
        for pos in self.positions:
            v = values[pos] if pos < len(values) else None
            if v is None:
                self.invalid += 1
                return OTHER_KEY
            key.append(v)
        out = tuple(key)
        if out not in self.segments and len(self.segments) - (OTHER_KEY in self.segments) >= (
            self.max_segments
        ):
            self.overflow += 1
            return OTHER_KEY
        return out

    def _monitor(self, key: Key) -> Monitor:
        mon = self.segments.get(key)
        if mon is None:
            mon = Monitor(self.flag, self.flag_config, self.guardrail)
            mon.spec = dict(self.spec)
            mon.detector = registry.create(self.spec)
            self.segments[key] = mon
        return mon

    def add(self, values: Values | None, arm: int, x: float, index: int, ts: float) -> None:
        """Queue one observation of the segment ``values`` fall in."""
        mon = self._monitor(self._key(values))
        if not mon.pending:
            self._dirty.append(mon)
        mon.pending.append((arm, x, index, ts))

    def segment(self, key: Key) -> Segment | None:
        return dict(zip(self.names, key, strict=True)) if key else None

    def flush(self) -> list[Decision]:
        """Feed every segment's pending observations; the breaches in arrival order."""
        dirty, self._dirty = self._dirty, []
        keys = {id(m): k for k, m in self.segments.items()}
        out: list[Decision] = []
        ts = 0.0
        for mon in dirty:
            ts = max(ts, mon.pending[-1][3])
            key = keys[id(mon)]
            for d in mon.flush():
                tracked = (
                    tuple(self.segment(k) or {} for k in self.segments if k) if not key else ()
                )
                values = {f.name: getattr(d, f.name) for f in dataclasses.fields(Decision)}
                out.append(SegmentDecision(**values, segment=self.segment(key), tracked=tracked))
        out.sort(key=lambda d: d.index)
        worst = self._worst()
        if worst is not None:
            det = worst.detector
            self.trace.append((ts, finite(det.statistic), finite(det.threshold), self.breaches))
        return out

    # -- reading ---------------------------------------------------------------------------

    @property
    def breaches(self) -> int:
        return sum(m.breaches for m in self.segments.values())

    def _worst(self) -> Monitor | None:
        """The segment whose statistic is closest to (or furthest over) its threshold."""
        best: tuple[float, Monitor] | None = None
        for mon in self.segments.values():
            stat = finite(mon.detector.statistic)
            thr = finite(mon.detector.threshold)
            if stat is None:
                continue
            score = stat / thr if thr else stat
            if best is None or score > best[0]:
                best = (score, mon)
        return best[1] if best is not None else None

    def status(self) -> str:
        states = {m.status() for m in self.segments.values()}
        if BREACHED in states:
            return BREACHED
        return OK if OK in states else NO_DECISION

    def summary(self) -> dict[str, JSON]:
        """Plain-data status: the worst segment's statistic, totals, and every segment."""
        g = self.guardrail
        worst = self._worst()
        out = (
            worst.summary()
            if worst is not None
            else Monitor(self.flag, self.flag_config, g).summary()
        )
        samples = [0, 0]
        for m in self.segments.values():
            samples[0] += m.samples[0]
            samples[1] += m.samples[1]
        total: dict[str, JSON] = {g.variant: samples[1]}
        if g.compare_to is not None:
            total[g.compare_to] = samples[0 if worst is None or worst.two_sample else 1]
        segs: dict[str, JSON] = {}
        for key, m in self.segments.items():
            s = m.summary()
            segs[label(self.segment(key))] = {
                "samples": s["samples"],
                "statistic": s["statistic"],
                "threshold": s["threshold"],
                "state": s["state"],
                "breaches": s["breaches"],
                "last_breach_ts": s["last_breach_ts"],
            }
        out.update(
            {
                "samples": total,
                "state": self.status(),
                "breaches": self.breaches,
                "acted": self.acted,
                "segment_by": list(g.segment_by or []),
                "worst_segment": (
                    label(self.segment(next(k for k, m in self.segments.items() if m is worst)))
                    if worst is not None
                    else None
                ),
                "segments": segs,
                "overflow": self.overflow,
                "invalid": self.invalid,
                "metric_segments": self._metric_segments(),
            }
        )
        return out

    def _metric_segments(self) -> dict[str, JSON]:
        """Per allowlisted segment (``metric_segments``), and ``other`` for the rest: samples
        of the variant and breaches, the only per-segment numbers exported as metrics."""
        out: dict[str, dict[str, int]] = {}
        for key, m in self.segments.items():
            name = ",".join(key)
            bucket = name if key and name in self._allow else OTHER
            entry = out.setdefault(bucket, {"samples": 0, "breaches": 0})
            entry["samples"] += m.samples[1]
            entry["breaches"] += m.breaches
        return plain(out)  # type: ignore[return-value]

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, JSON]:
        return {
            "spec": plain(self.spec),
            "segments": [[list(k), m.to_state()] for k, m in self.segments.items()],
            "overflow": self.overflow,
            "invalid": self.invalid,
            "acted": self.acted,
        }

    def restore(self, state: Mapping[str, Any]) -> bool:
        """Continue from :meth:`to_state` output made for the same spec; else start afresh."""
        if state.get("spec") != plain(self.spec) or "segments" not in state:
            return False
        self.segments = {}
        for key, mstate in state["segments"]:
            self._monitor(tuple(str(v) for v in key)).restore(mstate)
        self.overflow = int(state["overflow"])
        self.invalid = int(state["invalid"])
        self.acted = int(state.get("acted", 0))
        return True


# ----------------------------------------------------------------------------- acting


def cooldown_key(guardrail: str, segment: Mapping[str, str] | None) -> str:
    return f"{guardrail}[{label(segment)}]"


def _same(o: SegmentOverride, variant: str, segment: Mapping[str, str] | None) -> bool:
    return o.variant == variant and (o.match or None) == (dict(segment) if segment else None)


def apply(
    state: FlagChangeEvent, flag: FlagConfig, d: SegmentDecision, cooldowns: Cooldowns
) -> Output | None:
    """The output of one segment's breach; marks the segment's cooldown when it acts."""
    g = d.guardrail
    ts = d.ts
    if not d.samples.get(g.variant):
        return None
    key = cooldown_key(g.name, d.segment)
    if not cooldowns.ready(key, g.cooldown, ts):
        return None
    current = state.variants.get(g.variant)
    if current is None:
        return None
    where = label(d.segment)
    if g.action is GuardrailAction.WARN:
        cooldowns.mark(key, ts)
        return AlertEvent(
            flag=state.flag,
            guardrail=g.name,
            variant=g.variant,
            cause=_with_segment(cause_of(d, Action.WARN, "alert only"), d),
            ts=ts,
            flag_version=state.version,
        )
    if g.action is GuardrailAction.HOLD:
        if state.paused:
            return None
        cooldowns.mark(key, ts)
        cause = _with_segment(cause_of(d, Action.HOLD, "rollout held"), d)
        return next_state(state, cause, ts, paused=True)
    # kill, in the segment only
    default = state.default_variant
    if current.killed or g.variant == default:
        return None
    if any(_same(o, g.variant, d.segment) for o in state.segments):
        return None
    override = SegmentOverride(
        variant=g.variant,
        match=dict(d.segment) if d.segment else None,
        exclude=[] if d.segment else [dict(s) for s in d.tracked],
        guardrail=g.name,
    )
    cooldowns.mark(key, ts)
    what = f"killed in {where} only: {default} served there, other segments unchanged"
    cause = _with_segment(cause_of(d, Action.KILL, what), d)
    return next_state(state, cause, ts, segments=[*state.segments, override])


def _with_segment(cause: Cause, d: SegmentDecision) -> Cause:
    where = label(d.segment)
    g = d.guardrail
    reason = (cause.reason or "").replace(f" of {g.variant}", f" of {g.variant} in {where}", 1)
    return cause.model_copy(update={"segment": dict(d.segment or {}), "reason": reason})


def restore(
    overrides: Sequence[SegmentOverride], variant: str, segment: Mapping[str, str]
) -> list[SegmentOverride] | None:
    """``overrides`` without the kill of ``variant`` in ``segment`` (``{}``: the ``other``
    bucket's), or None when there is none."""
    kept = [o for o in overrides if not _same(o, variant, segment or None)]
    return None if len(kept) == len(overrides) else kept


# ----------------------------------------------------------------------------- rollouts


def rollout_segment(
    flag: str, conditions: Sequence[Any], subject: str | None, attributes: Mapping[str, Any]
) -> int | None:
    """The index of the first rollout segment whose condition holds for a prediction's context
    (``None`` as a condition: everyone), or None when none does.

    Evaluated as the flagd document evaluates the gate: the prediction's ``subject`` is the
    targeting key, its ``attributes`` the context. A condition that raises matches nothing.
    """
    for i, when in enumerate(conditions):
        if when is None:
            return i
        try:
            if evaluate(flag, when, subject, attributes):
                return i
        except Exception:  # flagd serves the default then; the prediction is in no segment
            continue
    return None
