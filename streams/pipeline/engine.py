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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driftswitch.detectors.base import JSON
from driftswitch.streams.config.model import Config
from driftswitch.streams.contract.commands import Command, CommandError
from driftswitch.streams.contract.events import FlagChangeEvent, InputEvent
from driftswitch.streams.pipeline import control
from driftswitch.streams.pipeline.join import JoinBuffer, JoinStore, StoredJoinBuffer
from driftswitch.streams.pipeline.monitor import Decision, Point, plain
from driftswitch.streams.pipeline.observations import (
    CLICK_NOT_SHOWN,
    DUPLICATE_ITEM,
    DUPLICATE_REASON,
    NOT_INTERLEAVED,
    UNKNOWN_FLAG,
    UNKNOWN_VARIANT,
    UNSUPPORTED,
    Decider,
    Emitted,
    Flag,
    Joiner,
    Observation,
    Rejection,
    build_flags,
)
from driftswitch.streams.pipeline.transitions import initial_state

__all__ = [
    "CLICK_NOT_SHOWN",
    "DUPLICATE_ITEM",
    "DUPLICATE_REASON",
    "NOT_INTERLEAVED",
    "STATE_FORMAT",
    "UNKNOWN_FLAG",
    "UNKNOWN_VARIANT",
    "UNSUPPORTED",
    "Emitted",
    "Engine",
    "Event",
    "Rejection",
    "Result",
]

#: Version of the ``Engine.to_state`` layout.
STATE_FORMAT = 1

Event = InputEvent


@dataclass(frozen=True, slots=True)
class Result:
    """What one ``process`` call produced, both in input order."""

    outputs: list[Emitted]
    rejections: list[Rejection]


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
        self._flags: dict[str, Flag] = build_flags(config, ts)
        self._joiner = Joiner(config, flags=self._flags, join_store=join_store)
        self._decider = Decider(self._flags)

    @property
    def _join(self) -> JoinBuffer | StoredJoinBuffer:
        return self._joiner.join

    @property
    def counters(self) -> dict[str, int]:
        """Events accepted and rejections by reason, since the engine's state began."""
        return self._joiner.counters

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

    def on_breach(self, callback: Callable[[Decision], None] | None) -> None:
        """Have ``callback`` called with every guardrail breach, in input order, whether or not
        the policy then changes the flag (a cooldown, a variant already killed); ``None`` stops
        it. The backtest report marks every alarm with it."""
        self._decider.on_breach = callback

    # -- the hot path ----------------------------------------------------------------------

    def process(self, events: Sequence[Event], positions: Sequence[Any] | None = None) -> Result:
        """Process a batch of decoded events in arrival order.

        ``positions`` (optional, parallel to ``events``) are echoed in the outputs and
        rejections, e.g. ``(topic, partition, offset)`` or a line number.
        """
        observations, rejections = self._joiner.process(events, positions)
        outputs = self._decider.process(observations)
        if positions is not None:
            outputs = [Emitted(e.event, e.index, positions[e.index]) for e in outputs]
        return Result(outputs, rejections)

    def decide(self, observations: Sequence[Observation]) -> list[Emitted]:
        """Decide on observations from a join stage, already in order (the decide stage: see
        :mod:`~driftswitch.streams.pipeline.merge`); ``Emitted.index`` is the deciding
        observation's position in ``observations`` (whatever their own ``index`` fields say:
        the merge numbers its late and its released observations apart)."""
        return self._decider.process(observations, by_position=True)

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
        """Plain-data status of every flag, variant and guardrail (for /metrics and the API).

        ``watermark`` is the join's event-time watermark, or, in the decide stage (whose join
        half sees no events), the event time of the last observation decided on."""
        expired = self._join.expired_predictions
        now = self._join.watermark or self._decider.latest
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
                    f.rollout.summary(f.state.paused, now) if f.rollout is not None else None
                ),
            }
        return {
            "watermark": now,
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
        as JSON data, so that ``Engine.from_state`` continues exactly. The join's entries are
        its own maps, not copies (:meth:`~driftswitch.streams.pipeline.join.JoinBuffer.to_state`):
        serialise the state before the engine processes anything else."""
        return {
            "format": STATE_FORMAT,
            **self._joiner.to_state(),
            "flags": self._decider.to_state(),
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
        engine._joiner.restore(state, join_store)
        engine._decider.restore(state["flags"])
        return engine
