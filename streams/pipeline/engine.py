"""The evaluation engine: decoded events in, flag changes and alerts out. No I/O.

One :class:`Engine` is what the live worker and ``backtest`` share (docs/architecture.md): it
joins predictions with outcomes (:mod:`~driftswitch.streams.pipeline.join`), scores them
(:mod:`~driftswitch.streams.pipeline.scoring`), keeps per-variant statistics and guardrail detectors
(:mod:`~driftswitch.streams.pipeline.monitor`; per segment value for a guardrail with
``segment_by``, :mod:`~driftswitch.streams.pipeline.segments`), applies the policy
(:mod:`~driftswitch.streams.pipeline.policy`) and steps rollout plans
(:mod:`~driftswitch.streams.pipeline.rollout`)
on the same observations.

``process`` takes a batch of events in arrival order. Its result is independent of how the stream
is cut into batches and of restarts through ``to_state``/``from_state``: everything is decided in
event time, per observation, and the state is complete plain JSON. So a worker that snapshots the
engine together with its input offsets and replays from there after a crash reaches the same
decisions, with the same versions, as the run that died — and as ``backtest`` on the same events.

Bad input is not an exception: an event for an unknown flag or variant, or a duplicate
``request_id``, comes back as a :class:`Rejection` with a machine-readable reason, for the worker
to dead-letter.

Examples
--------
>>> from driftswitch.streams.config.model import parse_config
>>> from driftswitch.streams.contract.events import OutcomeEvent, PredictionEvent
>>> config = parse_config('''
... flags:
...   ranker:
...     default: control
...     variants:
...       control: {weight: 100, value: v1}
... ''')
>>> engine = Engine(config)
>>> result = engine.process([
...     PredictionEvent(request_id="r1", flag="ranker", variant="control", ts=1.0, prediction=1),
...     OutcomeEvent(request_id="r1", ts=2.0, label=1),
...     PredictionEvent(request_id="r2", flag="search", variant="control", ts=3.0, prediction=0),
... ])
>>> [(r.index, r.reason) for r in result.rejections]
[(2, 'unknown_flag')]
>>> engine.snapshot()["flags"]["ranker"]["variants"]["control"]["accuracy"]
1.0
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driftswitch.detectors.base import JSON
from driftswitch.streams.config.model import METRIC_TRAITS, Config, FlagConfig, Metric
from driftswitch.streams.contract.commands import Command, CommandError
from driftswitch.streams.contract.events import (
    AnyPrediction,
    FlagChangeEvent,
    InputEvent,
    OutcomeEvent,
    OutcomeStruct,
    Output,
    Placement,
    PlacementStruct,
    PredictionEvent,
    PredictionStruct,
)
from driftswitch.streams.contract.interleave import credit
from driftswitch.streams.pipeline import control, policy, segments
from driftswitch.streams.pipeline.join import (
    DUPLICATE,
    JoinBuffer,
    JoinStore,
    Label,
    StoredJoinBuffer,
)
from driftswitch.streams.pipeline.monitor import Decision, Monitor, Point, VariantStats, plain
from driftswitch.streams.pipeline.rollout import Rollout
from driftswitch.streams.pipeline.rollout import prediction_reader as rollout_reader
from driftswitch.streams.pipeline.scoring import (
    PredictionReader,
    label_value,
    prediction_reader,
    same_label,
    score_pair,
)
from driftswitch.streams.pipeline.segments import SegmentDecision, SegmentMonitor
from driftswitch.streams.pipeline.transitions import initial_state

#: Version of the ``Engine.to_state`` layout.
STATE_FORMAT = 1

#: Rejection reasons (dead-letter reasons) the engine produces.
UNKNOWN_FLAG = "unknown_flag"
UNKNOWN_VARIANT = "unknown_variant"
DUPLICATE_REASON = "duplicate"
UNSUPPORTED = "unsupported_event"
#: Interleaving: an item twice in one impression, a click on an item or position not shown, and
#: clicks for a prediction without a ranking (or a label for an impression).
DUPLICATE_ITEM = "duplicate_item"
CLICK_NOT_SHOWN = "click_not_shown"
NOT_INTERLEAVED = "outcome_mismatch"

Event = InputEvent
_PREDICTIONS = (PredictionStruct, PredictionEvent)
_OUTCOMES = (OutcomeStruct, OutcomeEvent)


@dataclass(frozen=True, slots=True)
class Emitted:
    """An output and the input that triggered it: ``index`` into the batch given to
    ``process`` and that input's ``position`` (what the caller passed, e.g. an offset)."""

    event: Output
    index: int
    position: Any = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input the engine refused, with a dead-letter reason and a human-readable detail."""

    index: int
    reason: str
    detail: str
    position: Any = None


@dataclass(frozen=True, slots=True)
class Result:
    """What one ``process`` call produced, both in input order."""

    outputs: list[Emitted]
    rejections: list[Rejection]


class _Variant:
    __slots__ = (
        "group",
        "label_monitors",
        "name",
        "prediction_monitors",
        "rollout_feeds",
        "segment_labels",
        "segment_predictions",
        "stats",
    )

    def __init__(self, flag: str, name: str) -> None:
        self.name = name
        self.group = f"{flag}/{name}"
        self.stats = VariantStats()
        #: Label-free guardrails watching this variant: (monitor, reader, arm).
        self.prediction_monitors: list[tuple[Monitor | Rollout, PredictionReader, int]] = []
        #: Label guardrails watching this variant: (monitor, metric, arm).
        self.label_monitors: list[tuple[Monitor | Rollout, Metric, int]] = []
        #: The same for per-segment guardrails (pipeline/segments.py).
        self.segment_predictions: list[tuple[SegmentMonitor, PredictionReader, int]] = []
        self.segment_labels: list[tuple[SegmentMonitor, Metric, int]] = []
        #: A rollout by segment watching this variant: (rollout, metric, reader, arm); its
        #: observations carry the prediction's segment index.
        self.rollout_feeds: list[tuple[Rollout, Metric, PredictionReader | None, int]] = []


class _Flag:
    __slots__ = (
        "config",
        "cooldowns",
        "fields",
        "interleaving",
        "monitors",
        "name",
        "positive",
        "rollout",
        "rollout_when",
        "state",
        "task",
        "variants",
    )

    def __init__(self, name: str, config: FlagConfig, ts: float) -> None:
        self.name = name
        self.config = config
        self.task = config.task
        self.positive: Label | None = config.positive_label
        self.variants = {v: _Variant(name, v) for v in config.variants}
        self.monitors: list[Monitor | SegmentMonitor] = []
        #: Guardrails on interleaved impressions, fed when an impression's clicks join it.
        self.interleaving: list[Monitor] = []
        #: Attributes some guardrail segments by: their values ride the join with a prediction.
        self.fields = segments.fields(config)
        for g in config.guardrails:
            if g.segment_by is not None:
                seg = SegmentMonitor(name, config, g, self.fields)
                self.monitors.append(seg)
                for variant, arm in [(g.variant, 1)] + (
                    [(g.compare_to, 0)] if g.compare_to else []
                ):
                    target = self.variants[variant]
                    if METRIC_TRAITS[g.metric].needs_label:
                        target.segment_labels.append((seg, g.metric, arm))
                    else:
                        target.segment_predictions.append((seg, prediction_reader(g), arm))
                continue
            mon = Monitor(name, config, g)
            self.monitors.append(mon)
            if g.metric is Metric.INTERLEAVING:
                self.interleaving.append(mon)
                continue
            arms = [(g.variant, 1)] + ([(g.compare_to, 0)] if g.compare_to else [])
            for variant, arm in arms:
                target = self.variants[variant]
                if METRIC_TRAITS[g.metric].needs_label:
                    target.label_monitors.append((mon, g.metric, arm))
                else:
                    target.prediction_monitors.append((mon, prediction_reader(g), arm))
        #: The rollout plan's state machine, fed the same observations as the guardrails.
        self.rollout: Rollout | None = None
        if config.rollout is not None:
            plan = config.rollout
            self.rollout = rollout = Rollout(name, config, plan)
            reader = rollout_reader(plan.metric)
            sides = [(rollout.candidate, 1), (rollout.control, 0)]
            if plan.metric is Metric.INTERLEAVING:
                sides = []  # fed per interleaved impression (Engine._interleaved)
            for variant, arm in sides:
                target = self.variants[variant]
                if plan.segments:
                    target.rollout_feeds.append((rollout, plan.metric, reader, arm))
                    continue
                if reader is None:
                    target.label_monitors.append((rollout, plan.metric, arm))
                else:
                    target.prediction_monitors.append((rollout, reader, arm))
        #: A rollout by segment: each segment's condition (None: everyone), in plan order.
        self.rollout_when: list[Any] | None = None
        if config.rollout is not None and config.rollout.segments:
            self.rollout_when = [s.when for s in config.rollout.segments]
        self.state = initial_state(name, config, ts)
        self.cooldowns = policy.Cooldowns()


class Engine:
    """Joins, scores, evaluates and decides for every flag of a config (see the module doc).

    Parameters
    ----------
    config
        The validated configuration.
    ts
        Event time stamped on the initial (version 1) flag states.
    join_store
        Where pending join entries live (:class:`~driftswitch.streams.pipeline.join.
        StoredJoinBuffer`); ``None`` keeps them in memory (:class:`JoinBuffer`).
    """

    def __init__(
        self, config: Config, *, ts: float = 0.0, join_store: JoinStore | None = None
    ) -> None:
        self.config = config
        self._flags = {name: _Flag(name, f, ts) for name, f in config.flags.items()}
        self._join: JoinBuffer | StoredJoinBuffer = (
            JoinBuffer(config.join.ttl, config.join.max_pending)
            if join_store is None
            else StoredJoinBuffer(config.join.ttl, join_store, config.join.max_pending)
        )
        self._monitors = [m for f in self._flags.values() for m in f.monitors]
        self._rollouts = [f for f in self._flags.values() if f.rollout is not None]
        #: Events accepted and rejections by reason, since the engine's state began.
        self.counters: dict[str, int] = {"predictions": 0, "outcomes": 0}

    # -- flag state ------------------------------------------------------------------------

    def initial_states(self) -> list[FlagChangeEvent]:
        """Version 1 of every flag, from the config (to publish when nothing is published yet)."""
        return [initial_state(n, f.config, f.state.ts) for n, f in self._flags.items()]

    def state(self, flag: str) -> FlagChangeEvent:
        """The current state of ``flag`` (``KeyError`` if it is not configured)."""
        return self._flags[flag].state

    def states(self) -> list[FlagChangeEvent]:
        """The current state of every flag, in config order."""
        return [f.state for f in self._flags.values()]

    def adopt(self, state: FlagChangeEvent) -> bool:
        """Take a published state (a restart, a manual kill or restore) if it is newer.

        Returns whether it was adopted: the flag is configured and ``state.version`` is above
        the one held. Versions stay monotonic, so an old record read again changes nothing.
        """
        f = self._flags.get(state.flag)
        if f is None or state.version <= f.state.version:
            return False
        f.state = state
        if f.rollout is not None:
            f.rollout.align(state)  # a restart without a snapshot: resume at the published step
        return True

    # -- the hot path ----------------------------------------------------------------------

    def process(self, events: Sequence[Event], positions: Sequence[Any] | None = None) -> Result:
        """Process a batch of decoded events in arrival order.

        ``positions`` (optional, parallel to ``events``) are echoed in the outputs and
        rejections, e.g. ``(topic, partition, offset)`` or a line number.
        """
        flags = self._flags
        join = self._join
        rejections: list[Rejection] = []
        predictions = outcomes = 0
        # Latencies per variant, counted into its sketch once per batch (numpy; same buckets).
        latencies: dict[VariantStats, list[float]] = {}
        for i, ev in enumerate(events):
            if isinstance(ev, _PREDICTIONS):
                f = flags.get(ev.flag)
                if f is None:
                    rejections.append(Rejection(i, UNKNOWN_FLAG, f"flag {ev.flag!r}"))
                    continue
                v = f.variants.get(ev.variant)
                if v is None:
                    detail = f"variant {ev.variant!r} of flag {ev.flag!r}"
                    rejections.append(Rejection(i, UNKNOWN_VARIANT, detail))
                    continue
                ts = ev.ts
                errored = ev.error is not None
                prediction: Any = ev.prediction
                if ev.ranking is not None:
                    prediction, problem = _ranking(f, ev)
                    if problem is not None:
                        rejections.append(Rejection(i, *problem))
                        continue
                values = segments.extract(ev.attributes, f.fields) if f.fields else None
                payload: tuple[Any, ...] = (f.name, v.name, prediction, errored)
                rseg: int | None = None
                if f.rollout_when is not None:
                    rseg = segments.rollout_segment(
                        f.name, f.rollout_when, ev.subject, ev.attributes
                    )
                    payload = (*payload, values, rseg)
                elif values is not None:
                    payload = (*payload, values)
                got = join.add_prediction(ev.request_id, ts, v.group, payload)
                if got is DUPLICATE:
                    detail = f"request_id {ev.request_id!r} already seen"
                    rejections.append(Rejection(i, DUPLICATE_REASON, detail))
                    continue
                predictions += 1
                st = v.stats
                st.predictions += 1
                if not ev.served:
                    st.shadow += 1
                if errored:
                    st.errors += 1
                if ev.latency_ms is not None:
                    batch = latencies.get(st)
                    if batch is None:
                        latencies[st] = [ev.latency_ms]
                    else:
                        batch.append(ev.latency_ms)
                if ev.score is not None:
                    st.score_n += 1
                    st.score_sum += ev.score
                if st.first_ts is None:
                    st.first_ts = ts
                if st.last_ts is None or ts > st.last_ts:
                    st.last_ts = ts
                for mon, reader, arm in v.prediction_monitors:
                    x = reader(ev)
                    if x is not None:
                        mon.pending.append((arm, x, i, ts))
                for seg, reader, arm in v.segment_predictions:
                    x = reader(ev)
                    if x is not None:
                        seg.add(values, arm, x, i, ts)
                for rollout, _, rreader, arm in v.rollout_feeds:
                    x = rreader(ev) if rreader is not None else None
                    if x is not None:
                        rollout.pending.append((arm, x, i, ts, rseg))
                if got is not None:
                    joined: Any = got[1]  # a label, or an interleaved impression's clicks
                    if type(prediction) is list or type(joined) is dict:
                        problem = self._interleaved(f, v, prediction, joined, i, ts)
                        if problem is not None:
                            rejections.append(Rejection(i, *problem))
                    else:
                        self._score(f, v, prediction, errored, joined, i, ts, values, rseg)
            elif isinstance(ev, _OUTCOMES):
                if ev.flag is not None:
                    f = flags.get(ev.flag)
                    if f is None:
                        rejections.append(Rejection(i, UNKNOWN_FLAG, f"flag {ev.flag!r}"))
                        continue
                    if ev.variant is not None and ev.variant not in f.variants:
                        detail = f"variant {ev.variant!r} of flag {ev.flag!r}"
                        rejections.append(Rejection(i, UNKNOWN_VARIANT, detail))
                        continue
                label: Any = ev.label
                if ev.clicks is not None or ev.clicked_positions is not None:
                    label = {"items": ev.clicks or [], "positions": ev.clicked_positions or []}
                found = join.add_outcome(ev.request_id, ev.ts, label)
                if found is DUPLICATE:
                    detail = f"request_id {ev.request_id!r} already has an outcome"
                    rejections.append(Rejection(i, DUPLICATE_REASON, detail))
                    continue
                outcomes += 1
                if found is not None:
                    flag, variant, prediction, errored = found[2][:4]
                    values = found[2][4] if len(found[2]) > 4 else None
                    rseg = found[2][5] if len(found[2]) > 5 else None
                    f = flags.get(flag)
                    v = f.variants.get(variant) if f is not None else None
                    if f is not None and v is not None:
                        if type(prediction) is list or type(label) is dict:
                            problem = self._interleaved(f, v, prediction, label, i, ev.ts)
                            if problem is not None:
                                rejections.append(Rejection(i, *problem))
                        else:
                            self._score(f, v, prediction, errored, label, i, ev.ts, values, rseg)
            else:
                # Unreachable for the declared types; a caller may still pass anything.
                detail = f"expected a prediction or an outcome, got {type(ev).__name__}"  # type: ignore[unreachable]
                rejections.append(Rejection(i, UNSUPPORTED, detail))
        for st, batch in latencies.items():
            st.latency.add_many(batch)
        join.expire()
        counters = self.counters
        counters["predictions"] += predictions
        counters["outcomes"] += outcomes
        for r in rejections:
            counters[r.reason] = counters.get(r.reason, 0) + 1
        outputs = self._decide()
        if positions is not None:
            outputs = [Emitted(e.event, e.index, positions[e.index]) for e in outputs]
            rejections = [
                Rejection(r.index, r.reason, r.detail, positions[r.index]) for r in rejections
            ]
        return Result(outputs, rejections)

    def _score(
        self,
        f: _Flag,
        v: _Variant,
        prediction: Label,
        errored: bool,
        label: Label,
        index: int,
        ts: float,
        values: segments.Values | None = None,
        rseg: int | None = None,
    ) -> None:
        """Score a completed join and queue the label metrics' observations (``values``: the
        prediction's segment attributes, for per-segment guardrails)."""
        st = v.stats
        st.joined += 1
        if errored:
            return  # a failed inference made no prediction to compare (scoring.score_pair)
        if f.task == "classification":
            # Hot path: scoring.same_label inlined (a bool only equals a bool).
            correct = (type(prediction) is bool) is (type(label) is bool) and prediction == label
            st.add_correct(correct)
            positive = f.positive
            if positive is not None:
                predicted = same_label(prediction, positive)
                actual = same_label(label, positive)
                if predicted:
                    if actual:
                        st.tp += 1
                    else:
                        st.fp += 1
                elif actual:
                    st.fn += 1
            if v.label_monitors:
                x = 0.0 if correct else 1.0
                for mon, metric, arm in v.label_monitors:
                    if metric is Metric.ACCURACY:  # regression errors need numbers
                        mon.pending.append((arm, x, index, ts))
            for seg, metric, arm in v.segment_labels:
                if metric is Metric.ACCURACY:
                    seg.add(values, arm, 0.0 if correct else 1.0, index, ts)
            for rollout, metric, rreader, arm in v.rollout_feeds:
                if rreader is None and metric is Metric.ACCURACY:
                    rollout.pending.append((arm, 0.0 if correct else 1.0, index, ts, rseg))
            return
        score = score_pair(f.task, prediction, label)
        if score.abs_error is not None:
            st.regression_n += 1
            st.abs_error_sum += score.abs_error
            st.squared_error_sum += score.abs_error * score.abs_error
        for mon, metric, arm in v.label_monitors:
            value = label_value(metric, score)
            if value is not None:
                mon.pending.append((arm, value, index, ts))
        for seg, metric, arm in v.segment_labels:
            value = label_value(metric, score)
            if value is not None:
                seg.add(values, arm, value, index, ts)
        for rollout, metric, rreader, arm in v.rollout_feeds:
            value = label_value(metric, score) if rreader is None else None
            if value is not None:
                rollout.pending.append((arm, value, index, ts, rseg))

    def _interleaved(
        self, f: _Flag, v: _Variant, ranking: Any, clicks: Any, index: int, ts: float
    ) -> tuple[str, str] | None:
        """Credit a joined impression's clicks and queue a win, loss or tie for each interleaving
        guardrail whose two teams it shows; a (reason, detail) when the pair does not fit."""
        v.stats.joined += 1
        if type(ranking) is not list or type(clicks) is not dict:
            what = "an interleaved impression" if type(ranking) is list else "a prediction"
            sent = "clicks" if type(clicks) is dict else "a label"
            return NOT_INTERLEAVED, f"{sent} for {what} of flag {f.name!r}"
        got = credit(ranking, clicks["items"], clicks["positions"])
        if got.error is not None:
            return CLICK_NOT_SHOWN, got.error
        for mon in f.interleaving:
            g = mon.guardrail
            assert g.compare_to is not None  # config rule for metric interleaving
            x = got.outcome(g.variant, g.compare_to)
            if x is not None:
                mon.pending.append((1, x, index, ts))
        rollout = f.rollout
        if rollout is not None and rollout.plan.metric is Metric.INTERLEAVING:
            x = got.outcome(rollout.candidate, rollout.control)
            if x is not None:
                rollout.pending.append((1, x, index, ts))
        return None

    def _decide(self) -> list[Emitted]:
        """Flush the monitors and apply the policy to their breaches in arrival order.

        Rollout observations are merged in, each after the breaches of the same or earlier
        inputs, so a rollout sees every guardrail action (a kill ends it, a hold pauses it)
        exactly where it happened in the stream, however the stream is cut into batches.
        """
        decisions: list[Decision] = []
        for mon in self._monitors:
            if mon.pending:
                decisions.extend(mon.flush())
        rollouts = [f for f in self._rollouts if f.rollout is not None and f.rollout.pending]
        if not decisions and not rollouts:
            return []
        decisions.sort(key=lambda d: d.index)  # stable: same index → config order
        outputs: list[Emitted] = []
        if not rollouts:
            for d in decisions:
                self._apply(d, outputs)
            return outputs
        items: list[list[tuple[int, int, _Flag | Decision, float, float, int | None]]] = [
            [(d.index, 0, d, 0.0, 0.0, None) for d in decisions]
        ]
        for f in rollouts:
            assert f.rollout is not None
            pending, f.rollout.pending = f.rollout.pending, []
            items.append(
                [(p[2], p[0], f, p[1], p[3], p[4] if len(p) > 4 else None) for p in pending]
            )
        # Sorted by input index; a breach (listed first) before a rollout observation of it.
        for index, arm, item, x, ts, rseg in heapq.merge(*items, key=lambda t: t[0]):
            if isinstance(item, Decision):
                self._apply(item, outputs)
                continue
            assert item.rollout is not None
            for out in item.rollout.observe(item.state, arm, x, ts, rseg):
                if isinstance(out, FlagChangeEvent):
                    item.state = out
                outputs.append(Emitted(out, index))
        return outputs

    def _apply(self, d: Decision, outputs: list[Emitted]) -> None:
        """Apply the policy to one breach; the change becomes the flag's state."""
        f = self._flags[d.flag]
        if isinstance(d, SegmentDecision):
            out = segments.apply(f.state, f.config, d, f.cooldowns)
        else:
            out = policy.apply(f.state, f.config, d, f.cooldowns)
        if out is None:
            return
        for m in f.monitors:
            if m.guardrail is d.guardrail:
                m.acted += 1
        if isinstance(out, FlagChangeEvent):
            f.state = out
        outputs.append(Emitted(out, d.index))

    # -- manual control and config reload --------------------------------------------------

    def apply_command(self, command: Command, ts: float) -> FlagChangeEvent | None:
        """Apply an operator's command (:mod:`~driftswitch.streams.pipeline.control`) at event time
        ``ts``.

        Returns the flag change (version + 1, cause ``manual`` with the actor and reason) and
        makes it the flag's state, or None for a no-op (e.g. killing a killed variant). Raises
        :class:`~driftswitch.streams.contract.commands.CommandError` when the command cannot apply.
        Pure:
        a replay of the same commands at the same times reaches the same states.
        """
        control.validate(command, self.config)
        f = self._flags.get(command.flag)
        if f is None:  # validate() knows the config's flags; the engine holds the same ones
            raise CommandError("unknown_flag", f"flag {command.flag!r} is not configured")
        out = control.transition(f.state, f.config, command, ts)
        if out is not None:
            f.state = out
        return out

    def reconfigure(self, config: Config, *, ts: float | None = None) -> list[FlagChangeEvent]:
        """Switch to a new (validated) config, keeping what still applies; return the changes.

        Flag versions, statistics, the join buffer and cooldowns are kept; a guardrail keeps its
        detector state only if its config is unchanged (same name and settings), else it starts
        afresh; removed flags and guardrails are dropped. New flags start at version 1 from the
        config; an existing flag keeps its live weights, kill and pause state
        (:func:`~driftswitch.streams.pipeline.control.reconcile` says what changes). The returned
        flag
        changes (new flags' version 1, reconciled states) are to be published; ``ts`` stamps
        them (default: each flag's current state time, 0 for new flags).
        """
        state = self.to_state()
        saved = state["flags"]
        assert isinstance(saved, dict)
        for name, f in self._flags.items():
            new = config.flags.get(name)
            entry = saved.get(name)
            if new is None or not isinstance(entry, dict):
                continue
            monitors = entry["monitors"]
            assert isinstance(monitors, dict)
            before = {g.name: g for g in f.config.guardrails}
            for g in new.guardrails:
                if before.get(g.name) != g:
                    monitors.pop(g.name, None)
        engine = Engine.from_state(config, state, join_store=self.join_store)
        changes: list[FlagChangeEvent] = []
        for name, nf in engine._flags.items():
            if name not in self._flags:
                nf.state = initial_state(name, nf.config, 0.0 if ts is None else ts)
                changes.append(nf.state)
                continue
            out = control.reconcile(nf.state, nf.config, nf.state.ts if ts is None else ts)
            if out is not None:
                nf.state = out
                changes.append(out)
        # Take over everything the new engine holds, including what from_state restores for
        # other parts of the engine (rollout positions, ...).
        vars(self).update(vars(engine))
        return changes

    # -- status ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, JSON]:
        """Plain-data status of every flag, variant and guardrail (for /metrics and the API)."""
        expired = self._join.expired_predictions
        flags: dict[str, JSON] = {}
        for name, f in self._flags.items():
            variants: dict[str, JSON] = {}
            for vname, v in f.variants.items():
                vs = f.state.variants.get(vname)
                summary = v.stats.summary(expired.get(v.group, 0))
                summary["weight"] = vs.weight if vs is not None else None
                summary["killed"] = vs.killed if vs is not None else None
                summary["shadow"] = f.config.variants[vname].shadow
                variants[vname] = summary
            flags[name] = {
                "version": f.state.version,
                "default_variant": f.state.default_variant,
                "paused": f.state.paused,
                "variants": variants,
                "guardrails": {m.guardrail.name: m.summary() for m in f.monitors},
                "rollout": (
                    f.rollout.summary(f.state.paused, self._join.watermark)
                    if f.rollout is not None
                    else None
                ),
            }
        return {
            "watermark": self._join.watermark,
            "join": plain(self._join.counters()),
            "counters": plain(self.counters),
            "flags": flags,
        }

    def traces(self) -> dict[str, dict[str, list[Point]]]:
        """Per flag and guardrail, the recent ``(event time, statistic, threshold, breaches)``
        points (:attr:`Monitor.trace <driftswitch.streams.pipeline.monitor.Monitor.trace>`)."""
        return {
            name: {m.guardrail.name: list(m.trace) for m in f.monitors}
            for name, f in self._flags.items()
        }

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, JSON]:
        """Everything — join buffer, statistics, detectors, flag states, cooldowns, watermark —
        as plain JSON, so that ``Engine.from_state`` continues exactly."""
        flags: dict[str, JSON] = {}
        for name, f in self._flags.items():
            flags[name] = {
                "state": plain(f.state.model_dump(mode="json")),
                "cooldowns": plain(f.cooldowns.to_state()),
                "variants": {v: s.stats.to_state() for v, s in f.variants.items()},
                "monitors": {m.guardrail.name: m.to_state() for m in f.monitors},
                "rollout": f.rollout.to_state() if f.rollout is not None else None,
            }
        return {
            "format": STATE_FORMAT,
            "join": self._join.to_state(),
            "counters": plain(self.counters),
            "flags": flags,
        }

    @property
    def join_store(self) -> JoinStore | None:
        """The store of the pending join entries, or ``None`` when they are in memory."""
        return self._join.store if isinstance(self._join, StoredJoinBuffer) else None

    @classmethod
    def from_state(
        cls, config: Config, state: Mapping[str, Any], *, join_store: JoinStore | None = None
    ) -> Engine:
        """An engine for ``config`` continuing from ``to_state`` output.

        Flags, variants and guardrails are matched by name; a guardrail whose detector spec
        changed in the config starts afresh, and flags new in the config start at version 1.
        With ``join_store``, the join continues on it (see
        :meth:`~driftswitch.streams.pipeline.join.StoredJoinBuffer.from_state`).
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"engine state format {state.get('format')!r} is not {STATE_FORMAT}")
        engine = cls(config)
        engine._join = (
            JoinBuffer.from_state(state["join"])
            if join_store is None
            else StoredJoinBuffer.from_state(state["join"], join_store)
        )
        # The config's join settings win over the saved ones (they may have been changed).
        engine._join.ttl = config.join.ttl
        engine._join.max_pending = config.join.max_pending
        engine.counters = {str(k): int(v) for k, v in state["counters"].items()}
        for name, saved in state["flags"].items():
            f = engine._flags.get(name)
            if f is None:
                continue
            f.state = FlagChangeEvent.model_validate(saved["state"])
            f.cooldowns = policy.Cooldowns.from_state(saved["cooldowns"])
            for vname, vstate in saved["variants"].items():
                if vname in f.variants:
                    f.variants[vname].stats = VariantStats.from_state(vstate)
            for mon in f.monitors:
                mstate = saved["monitors"].get(mon.guardrail.name)
                if mstate is not None:
                    mon.restore(mstate)
            rstate = saved.get("rollout")
            if f.rollout is not None and (rstate is None or not f.rollout.restore(rstate)):
                f.rollout.align(f.state)  # a new or changed plan starts at the live weights
        return engine


def _ranking(f: _Flag, ev: AnyPrediction) -> tuple[list[list[str]], tuple[str, str] | None]:
    """An impression's list as plain ``[item, team]`` pairs (join payloads are plain JSON), or
    the reason it is rejected: a team that is not a variant of the flag, or an item shown twice."""
    assert ev.ranking is not None
    pairs: list[list[str]] = []
    seen: set[str] = set()
    ranking: Sequence[Placement | PlacementStruct] = ev.ranking
    for pos, placed in enumerate(ranking):
        if placed.team not in f.variants:
            detail = f"ranking[{pos}]: team {placed.team!r} is not a variant of flag {f.name!r}"
            return pairs, (UNKNOWN_VARIANT, detail)
        if placed.item in seen:
            return pairs, (DUPLICATE_ITEM, f"ranking[{pos}]: item {placed.item!r} shown twice")
        seen.add(placed.item)
        pairs.append([placed.item, placed.team])
    return pairs, None
