"""The engine's two halves: the join (events in, observations out) and the decision (observations
in, flag changes out). No I/O.

:class:`~driftswitch.streams.pipeline.engine.Engine` runs both in one call; the join stage and the
decide stage of a scaled-out deployment (docs/architecture.md "Scaling out") run one half each,
with the observations crossing a Kafka topic in between. The halves meet in one plain format, so
the same code decides in both shapes.

Observations
------------
One decoded input becomes zero, one or two observations, plain tuples (JSON arrays on the wire):

``(PREDICTED, index, flag, variant, ts, request_id, 0, served, errored, latency_ms, score,
features, values, rseg)``
    an accepted prediction: what the label-free statistics and guardrails read from it
    (``features`` holds only the features some guardrail watches; ``values`` the segment
    attributes of a per-segment guardrail; ``rseg`` the prediction's rollout segment);
``(SCORED, index, flag, variant, ts, request_id, side, prediction, errored, label, values, rseg)``
    a prediction joined with its outcome;
``(INTERLEAVED, index, flag, variant, ts, request_id, side, clicks)``
    an interleaved impression joined with its clicks, credited per team.

``index`` is the input's position in the batch given to :meth:`Joiner.process`. A joined pair's
``ts`` is the later of its two event times and ``side`` says which input that was (0 the
prediction, 1 the outcome; the outcome on a tie). :func:`event_order` sorts observations in
event time, ties broken by request id and side: a total order that does not depend on how the
inputs were partitioned or in which order they arrived, which is what lets the decide stage
reproduce a backtest's decisions (:mod:`~driftswitch.streams.pipeline.merge`).

With ``track=True`` (the join stage) every observation ends with the input positions it came
from, one for a prediction and two (prediction, outcome) for a pair, so that the decide stage can
drop the ones a restarted join stage sends again.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from driftswitch.detectors.base import JSON
from driftswitch.streams.config.model import METRIC_TRAITS, Config, FlagConfig, Metric
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
from driftswitch.streams.contract.interleave import Credit, credit
from driftswitch.streams.pipeline import policy, segments
from driftswitch.streams.pipeline.join import (
    DUPLICATE,
    JoinBuffer,
    JoinStore,
    Label,
    StoredJoinBuffer,
)
from driftswitch.streams.pipeline.monitor import Decision, Monitor, VariantStats, plain
from driftswitch.streams.pipeline.rollout import LABEL_FREE, Rollout
from driftswitch.streams.pipeline.scoring import label_value, same_label, score_pair
from driftswitch.streams.pipeline.segments import SegmentDecision, SegmentMonitor
from driftswitch.streams.pipeline.transitions import initial_state

__all__ = [
    "INTERLEAVED",
    "PREDICTED",
    "SCORED",
    "Decider",
    "Emitted",
    "Joiner",
    "Rejection",
    "event_order",
]

#: Observation kinds (the first element of each observation).
PREDICTED = 0
SCORED = 1
INTERLEAVED = 2

#: Rejection reasons (dead-letter reasons) the join produces.
UNKNOWN_FLAG = "unknown_flag"
UNKNOWN_VARIANT = "unknown_variant"
DUPLICATE_REASON = "duplicate"
UNSUPPORTED = "unsupported_event"
#: Interleaving: an item twice in one impression, a click on an item or position not shown, and
#: clicks for a prediction without a ranking (or a label for an impression).
DUPLICATE_ITEM = "duplicate_item"
CLICK_NOT_SHOWN = "click_not_shown"
NOT_INTERLEAVED = "outcome_mismatch"

_PREDICTIONS = (PredictionStruct, PredictionEvent)
_OUTCOMES = (OutcomeStruct, OutcomeEvent)

#: An observation (see the module doc).
Observation = tuple[Any, ...] | list[Any]


#: The sort key putting observations in event-time order (see the module doc): ``(ts,
#: request_id, side, kind)``, read by a C function (as a Python function, one call per
#: observation was about 4 % of a worker's CPU). At the same time, request and side a
#: prediction's observation sorts first (``PREDICTED`` is the lowest kind); a request has one
#: prediction and at most one pair, so no other two kinds meet there.
event_order: Callable[[Observation], tuple[float, str, int, int]] = itemgetter(4, 5, 6, 0)


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


# -- a flag's statistics, detectors and state -------------------------------------------------

#: Reads a label-free observation from a PREDICTED observation (None: it lacks the value).
FactReader = Any


def _error_bit(obs: Observation) -> float:
    return 1.0 if obs[8] else 0.0


def _latency(obs: Observation) -> float | None:
    return obs[9]  # type: ignore[no-any-return]


def _score(obs: Observation) -> float | None:
    return obs[10]  # type: ignore[no-any-return]


def _fact_reader(metric: Metric, feature: str | None) -> FactReader:
    """The observation reader of a label-free metric (mirrors ``scoring.prediction_reader``)."""
    if metric is Metric.ERROR_RATE:
        return _error_bit
    if metric is Metric.LATENCY_MS:
        return _latency
    if metric is Metric.SCORE:
        return _score
    if metric is Metric.FEATURE:
        name = feature or ""

        def read(obs: Observation) -> float | None:
            features = obs[11]
            return None if features is None else features.get(name)

        return read
    raise ValueError(f"metric {metric.value!r} needs a label")


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
        self.prediction_monitors: list[tuple[Monitor | Rollout, FactReader, int]] = []
        #: Label guardrails watching this variant: (monitor, metric, arm).
        self.label_monitors: list[tuple[Monitor | Rollout, Metric, int]] = []
        #: The same for per-segment guardrails (pipeline/segments.py).
        self.segment_predictions: list[tuple[SegmentMonitor, FactReader, int]] = []
        self.segment_labels: list[tuple[SegmentMonitor, Metric, int]] = []
        #: A rollout by segment watching this variant: (rollout, metric, reader, arm); its
        #: observations carry the prediction's segment index.
        self.rollout_feeds: list[tuple[Rollout, Metric, FactReader | None, int]] = []


class Flag:
    """One flag's variants, statistics, guardrail monitors, rollout and published state."""

    __slots__ = (
        "config",
        "cooldowns",
        "features",
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
        #: Features some guardrail watches: only these ride the observations.
        self.features = sorted(
            {g.feature for g in config.guardrails if g.metric is Metric.FEATURE and g.feature}
        )
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
                        reader = _fact_reader(g.metric, g.feature)
                        target.segment_predictions.append((seg, reader, arm))
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
                    reader = _fact_reader(g.metric, g.feature)
                    target.prediction_monitors.append((mon, reader, arm))
        #: The rollout plan's state machine, fed the same observations as the guardrails.
        self.rollout: Rollout | None = None
        if config.rollout is not None:
            plan = config.rollout
            self.rollout = rollout = Rollout(name, config, plan)
            reader = _fact_reader(plan.metric, None) if plan.metric in LABEL_FREE else None
            sides = [(rollout.candidate, 1), (rollout.control, 0)]
            if plan.metric is Metric.INTERLEAVING:
                sides = []  # fed per interleaved impression (Decider._interleaved)
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


def build_flags(config: Config, ts: float = 0.0) -> dict[str, Flag]:
    """One :class:`Flag` per configured flag, in config order."""
    return {name: Flag(name, f, ts) for name, f in config.flags.items()}


# -- the join half ----------------------------------------------------------------------------


class Joiner:
    """Events in arrival order → observations and rejections (the module doc's format).

    Parameters
    ----------
    config
        The validated configuration (which flags, variants and attributes exist).
    join_store
        Where pending join entries live; ``None`` keeps them in memory.
    track
        End every observation with the positions of its inputs (the join stage).
    """

    def __init__(
        self,
        config: Config,
        *,
        flags: Mapping[str, Flag] | None = None,
        join_store: JoinStore | None = None,
        track: bool = False,
    ) -> None:
        self.config = config
        self.flags = dict(flags) if flags is not None else build_flags(config)
        self.join: JoinBuffer | StoredJoinBuffer = (
            JoinBuffer(config.join.ttl, config.join.max_pending)
            if join_store is None
            else StoredJoinBuffer(config.join.ttl, join_store, config.join.max_pending)
        )
        self.track = track
        #: Events accepted and rejections by reason, since the join's state began.
        self.counters: dict[str, int] = {"predictions": 0, "outcomes": 0}

    def to_state(self) -> dict[str, JSON]:
        """The join buffer (or its store's checkpoint) and the counters, as JSON data; the
        buffer's entries are its own maps (``JoinBuffer.to_state``): serialise before the next
        batch."""
        return {"join": self.join.to_state(), "counters": plain(self.counters)}

    def restore(self, state: Mapping[str, Any], join_store: JoinStore | None = None) -> None:
        """Continue from :meth:`to_state` output (the config's join settings win)."""
        join = self.join = (
            JoinBuffer.from_state(state["join"])
            if join_store is None
            else StoredJoinBuffer.from_state(state["join"], join_store)
        )
        join.ttl = self.config.join.ttl
        join.max_pending = self.config.join.max_pending
        self.counters = {str(k): int(v) for k, v in state["counters"].items()}

    def process(
        self, events: Sequence[InputEvent], positions: Sequence[Any] | None = None
    ) -> tuple[list[Observation], list[Rejection]]:
        """Join a batch of decoded events in arrival order (``positions`` parallel to it, kept
        in the rejections, and in the observations with ``track``)."""
        flags = self.flags
        join = self.join
        track = self.track
        if track and positions is None:
            raise ValueError("a tracking join needs the inputs' positions")
        out: list[Observation] = []
        append = out.append
        add_prediction = join.add_prediction
        add_outcome = join.add_outcome
        rejections: list[Rejection] = []
        predictions = outcomes = 0
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
                rid = ev.request_id
                errored = ev.error is not None
                prediction: Any = ev.prediction
                if ev.ranking is not None:
                    prediction, problem = _ranking(f, ev)
                    if problem is not None:
                        rejections.append(Rejection(i, *problem))
                        continue
                values = segments.extract(ev.attributes, f.fields) if f.fields else None
                rseg: int | None = None
                if f.rollout_when is not None:
                    rseg = segments.rollout_segment(
                        f.name, f.rollout_when, ev.subject, ev.attributes
                    )
                payload: tuple[Any, ...]
                if track:
                    assert positions is not None
                    where = positions[i]
                    payload = (f.name, v.name, prediction, errored, values, rseg, where)
                elif rseg is not None or f.rollout_when is not None:
                    payload = (f.name, v.name, prediction, errored, values, rseg)
                elif values is not None:
                    payload = (f.name, v.name, prediction, errored, values)
                else:
                    payload = (f.name, v.name, prediction, errored)
                got = add_prediction(rid, ts, v.group, payload)
                if got is DUPLICATE:
                    detail = f"request_id {rid!r} already seen"
                    rejections.append(Rejection(i, DUPLICATE_REASON, detail))
                    continue
                predictions += 1
                features = None
                if f.features and ev.features:
                    features = {k: ev.features[k] for k in f.features if k in ev.features}
                # One tuple per observation, built in place (a second one, extended with the
                # positions, cost about a tenth of a tracking join).
                if track:
                    append(
                        (
                            PREDICTED, i, f.name, v.name, ts, rid, 0, ev.served, errored,
                            ev.latency_ms, ev.score, features, values, rseg, (where,),
                        )
                    )  # fmt: skip
                else:
                    append(
                        (
                            PREDICTED, i, f.name, v.name, ts, rid, 0, ev.served, errored,
                            ev.latency_ms, ev.score, features, values, rseg,
                        )
                    )  # fmt: skip
                if got is not None:
                    label: Any = got[1]  # a label, or an interleaved impression's clicks
                    later = got[0] > ts
                    if track:
                        label, outcome_at = label
                    if type(prediction) is not list and type(label) is not dict:
                        # The usual pair (_pair's last case), built in place.
                        if track:
                            append(
                                (
                                    SCORED, i, f.name, v.name, got[0] if later else ts, rid,
                                    1 if later else 0, prediction, errored, label, values, rseg,
                                    (where, outcome_at),
                                )
                            )  # fmt: skip
                        else:
                            append(
                                (
                                    SCORED, i, f.name, v.name, got[0] if later else ts, rid,
                                    1 if later else 0, prediction, errored, label, values, rseg,
                                )
                            )  # fmt: skip
                        continue
                    where = (where, outcome_at) if track else None
                    obs = _pair(
                        f, v.name, prediction, errored, label, i, got[0] if later else ts,
                        rid, 1 if later else 0, values, rseg, where,
                    )  # fmt: skip
                    if isinstance(obs, tuple) and obs[0] == "reject":
                        rejections.append(Rejection(i, obs[1], obs[2]))
                    else:
                        append(obs)
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
                label = ev.label
                if ev.clicks is not None or ev.clicked_positions is not None:
                    label = {"items": ev.clicks or [], "positions": ev.clicked_positions or []}
                stored: Any = (label, positions[i]) if positions is not None and track else label
                found = add_outcome(ev.request_id, ev.ts, stored)
                if found is DUPLICATE:
                    detail = f"request_id {ev.request_id!r} already has an outcome"
                    rejections.append(Rejection(i, DUPLICATE_REASON, detail))
                    continue
                outcomes += 1
                if found is not None:
                    p = found[2]
                    f = flags.get(p[0])
                    if f is None or p[1] not in f.variants:
                        continue  # a flag or variant the config no longer has
                    earlier = found[0] > ev.ts
                    n = len(p)
                    where = None
                    if track:
                        assert positions is not None
                        where = (p[6], positions[i])
                    if type(p[2]) is not list and type(label) is not dict:
                        # The usual pair (_pair's last case), built in place.
                        if track:
                            append(
                                (
                                    SCORED, i, f.name, p[1], found[0] if earlier else ev.ts,
                                    ev.request_id, 0 if earlier else 1, p[2], p[3], label,
                                    p[4], p[5], where,
                                )
                            )  # fmt: skip
                        else:
                            append(
                                (
                                    SCORED, i, f.name, p[1], found[0] if earlier else ev.ts,
                                    ev.request_id, 0 if earlier else 1, p[2], p[3], label,
                                    p[4] if n > 4 else None, p[5] if n > 5 else None,
                                )
                            )  # fmt: skip
                        continue
                    obs = _pair(
                        f, p[1], p[2], p[3], label, i, found[0] if earlier else ev.ts,
                        ev.request_id, 0 if earlier else 1, p[4] if n > 4 else None,
                        p[5] if n > 5 else None, where,
                    )  # fmt: skip
                    if isinstance(obs, tuple) and obs[0] == "reject":
                        rejections.append(Rejection(i, obs[1], obs[2]))
                    else:
                        append(obs)
            else:
                # Unreachable for the declared types; a caller may still pass anything.
                detail = f"expected a prediction or an outcome, got {type(ev).__name__}"  # type: ignore[unreachable]
                rejections.append(Rejection(i, UNSUPPORTED, detail))
        join.expire()
        counters = self.counters
        counters["predictions"] += predictions
        counters["outcomes"] += outcomes
        for r in rejections:
            counters[r.reason] = counters.get(r.reason, 0) + 1
        if positions is not None:
            rejections = [
                Rejection(r.index, r.reason, r.detail, positions[r.index]) for r in rejections
            ]
        return out, rejections


def _pair(
    f: Flag,
    variant: str,
    prediction: Any,
    errored: bool,
    label: Any,
    index: int,
    ts: float,
    rid: str,
    side: int,
    values: Any,
    rseg: Any,
    where: Any,
) -> tuple[Any, ...]:
    """The observation of a joined pair, or ``("reject", reason, detail)`` when an interleaved
    impression and its clicks do not fit together."""
    if type(prediction) is list or type(label) is dict:
        if type(prediction) is not list or type(label) is not dict:
            what = "an interleaved impression" if type(prediction) is list else "a prediction"
            sent = "clicks" if type(label) is dict else "a label"
            return ("reject", NOT_INTERLEAVED, f"{sent} for {what} of flag {f.name!r}")
        got = credit(prediction, label["items"], label["positions"])
        if got.error is not None:
            return ("reject", CLICK_NOT_SHOWN, got.error)
        obs: tuple[Any, ...] = (INTERLEAVED, index, f.name, variant, ts, rid, side, got.clicks)
    else:
        obs = (SCORED, index, f.name, variant, ts, rid, side, prediction, errored, label)
        obs = (*obs, values, rseg)
    return obs if where is None else (*obs, where)


def _ranking(f: Flag, ev: AnyPrediction) -> tuple[list[list[str]], tuple[str, str] | None]:
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


# -- the decision half ------------------------------------------------------------------------


class Decider:
    """Observations in order → statistics, detectors, policy and flag changes.

    ``flags`` are shared with the :class:`Joiner` in one engine; the decide stage builds its own.
    """

    def __init__(self, flags: Mapping[str, Flag]) -> None:
        self.flags = flags
        self.monitors = [m for f in flags.values() for m in f.monitors]
        self.rollouts = [f for f in flags.values() if f.rollout is not None]
        #: Event time of the last observation decided on (the decide stage's "now": its
        #: observations come in event-time order); None before the first.
        self.latest: float | None = None
        #: Called with every breach, in input order, before the policy acts on it, whether or
        #: not it changes the flag (the backtest report marks them all); None in the services.
        self.on_breach: Callable[[Decision], None] | None = None

    def to_state(self) -> dict[str, JSON]:
        """Per flag: published state, cooldowns, statistics, detectors and rollout, as JSON."""
        flags: dict[str, JSON] = {}
        for name, f in self.flags.items():
            flags[name] = {
                "state": plain(f.state.model_dump(mode="json")),
                "cooldowns": plain(f.cooldowns.to_state()),
                "variants": {v: s.stats.to_state() for v, s in f.variants.items()},
                "monitors": {m.guardrail.name: m.to_state() for m in f.monitors},
                "rollout": f.rollout.to_state() if f.rollout is not None else None,
            }
        return flags

    def restore(self, saved_flags: Mapping[str, Any]) -> None:
        """Continue from :meth:`to_state` output: flags, variants and guardrails are matched by
        name; a guardrail whose config changed, or a flag new in the config, starts afresh."""
        for name, saved in saved_flags.items():
            f = self.flags.get(name)
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

    def process(
        self, observations: Sequence[Observation], *, by_position: bool = False
    ) -> list[Emitted]:
        """Apply observations in the given order; ``Emitted.index`` is the deciding
        observation's ``index`` or, ``by_position``, its position in ``observations`` (the
        decide stage's numbering, without a copy of every observation to renumber it). An
        observation of an unconfigured flag or variant (the config changed) is skipped."""
        flags = self.flags
        if observations and (self.latest is None or observations[-1][4] > self.latest):
            self.latest = observations[-1][4]
        # Latencies per variant, counted into its sketch once per batch (numpy; same buckets).
        latencies: dict[VariantStats, list[float]] = {}
        for n, obs in enumerate(observations):
            f = flags.get(obs[2])
            if f is None:
                continue
            v = f.variants.get(obs[3])
            if v is None:
                continue
            kind = obs[0]
            i = n if by_position else obs[1]
            ts = obs[4]
            if kind == PREDICTED:
                st = v.stats
                st.predictions += 1
                if not obs[7]:
                    st.shadow += 1
                if obs[8]:
                    st.errors += 1
                latency = obs[9]
                if latency is not None:
                    batch = latencies.get(st)
                    if batch is None:
                        latencies[st] = [latency]
                    else:
                        batch.append(latency)
                score = obs[10]
                if score is not None:
                    st.score_n += 1
                    st.score_sum += score
                if st.first_ts is None:
                    st.first_ts = ts
                if st.last_ts is None or ts > st.last_ts:
                    st.last_ts = ts
                for mon, reader, arm in v.prediction_monitors:
                    x = reader(obs)
                    if x is not None:
                        mon.pending.append((arm, x, i, ts))
                if v.segment_predictions:
                    values = obs[12]
                    for seg, reader, arm in v.segment_predictions:
                        x = reader(obs)
                        if x is not None:
                            seg.add(values, arm, x, i, ts)
                for rollout, _, rreader, arm in v.rollout_feeds:
                    x = rreader(obs) if rreader is not None else None
                    if x is not None:
                        rollout.pending.append((arm, x, i, ts, obs[13]))
            elif kind == SCORED:
                self._score(f, v, obs[7], obs[8], obs[9], i, ts, obs[10], obs[11])
            else:
                self._interleaved(f, v, obs[7], i, ts)
        for st, batch in latencies.items():
            st.latency.add_many(batch)
        return self._decide()

    def _score(
        self,
        f: Flag,
        v: _Variant,
        prediction: Label,
        errored: bool,
        label: Label,
        index: int,
        ts: float,
        values: segments.Values | None,
        rseg: int | None,
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
        self, f: Flag, v: _Variant, clicks: Mapping[str, int], index: int, ts: float
    ) -> None:
        """Queue a win, loss or tie of a credited impression for each interleaving guardrail
        whose two teams it shows, and for an interleaving rollout."""
        v.stats.joined += 1
        credited = Credit(dict(clicks))
        for mon in f.interleaving:
            g = mon.guardrail
            assert g.compare_to is not None  # config rule for metric interleaving
            x = credited.outcome(g.variant, g.compare_to)
            if x is not None:
                mon.pending.append((1, x, index, ts))
        rollout = f.rollout
        if rollout is not None and rollout.plan.metric is Metric.INTERLEAVING:
            x = credited.outcome(rollout.candidate, rollout.control)
            if x is not None:
                rollout.pending.append((1, x, index, ts))

    def _decide(self) -> list[Emitted]:
        """Flush the monitors and apply the policy to their breaches in arrival order.

        Rollout observations are merged in, each after the breaches of the same or earlier
        inputs, so a rollout sees every guardrail action (a kill ends it, a hold pauses it)
        exactly where it happened in the stream, however the stream is cut into batches.
        """
        decisions: list[Decision] = []
        for mon in self.monitors:
            if mon.pending:
                decisions.extend(mon.flush())
        rollouts = [f for f in self.rollouts if f.rollout is not None and f.rollout.pending]
        if not decisions and not rollouts:
            return []
        decisions.sort(key=lambda d: d.index)  # stable: same index → config order
        if self.on_breach is not None:
            for d in decisions:
                self.on_breach(d)
        outputs: list[Emitted] = []
        if not rollouts:
            for d in decisions:
                self._apply(d, outputs)
            return outputs
        items: list[list[tuple[int, int, Flag | Decision, float, float, int | None]]] = [
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
        f = self.flags[d.flag]
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
