"""Containment: an event whose processing fails is found, left out and reported; the rest goes on.

Validation is meant to accept only what the engine can process and snapshot. If an event gets
through that still breaks the engine, or leaves a state that does not survive a snapshot (JSON
and back), the worker must not stop, nor stop again on every restart by replaying it.
:func:`process_isolating` processes a batch from a checkpoint (a deep copy of the engine), checks
that the resulting state round-trips, and on any failure bisects the batch down to the events that
fail on their own. Those are left out, as if never read, and returned with a redacted detail (the
exception's type and where it was raised: never its message, which may quote the record) for the
dead-letter topic with reason ``internal_error``. The other events are processed in their order,
with the same results as one ``process`` call (the engine's results do not depend on batching).

This costs a deep copy and a state round trip per bisection step, so the worker uses it only on
the input it suspects: after a failure, it restores the last snapshot and replays from there.

:func:`isolate` is the bisection itself, for any state that a batch of inputs changes; the join
stage (:mod:`driftswitch.streams.service.joinstage`) runs a
:class:`~driftswitch.streams.pipeline.observations.Joiner` through it with
:func:`join_isolating`, whose check also requires that the observations encode as JSON (what
the observations topic carries).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from traceback import extract_tb
from typing import Any, TypeVar

import orjson

from driftswitch.streams.contract.events import InputEvent
from driftswitch.streams.pipeline import observations as obs
from driftswitch.streams.pipeline.engine import Emitted, Engine, Event, Rejection, Result
from driftswitch.streams.pipeline.join import StoredJoinBuffer

__all__ = [
    "INTERNAL_ERROR",
    "Poisoned",
    "check_joiner",
    "check_state",
    "describe",
    "isolate",
    "join_isolating",
    "process_isolating",
]

S = TypeVar("S")
R = TypeVar("R")

#: Dead-letter reason of an event that broke the engine.
INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Poisoned:
    """An event left out: its index in the batch and a redacted description of the failure."""

    index: int
    detail: str


def describe(exc: BaseException) -> str:
    """``TypeError at monitor.py:120 (observe)``: the type and innermost frame, no message."""
    frames = extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {PurePath(last.filename).name}:{last.lineno} ({last.name})"


def check_state(engine: Engine) -> None:
    """Raise unless the engine's state survives a snapshot: JSON (as the snapshot writes it) and
    back through ``Engine.from_state``."""
    blob = orjson.dumps(engine.to_state())
    Engine.from_state(engine.config, orjson.loads(blob))


def check_joiner(joiner: obs.Joiner, observations: Sequence[obs.Observation] = ()) -> None:
    """Raise unless the joiner's state survives a checkpoint (JSON and back through
    ``Joiner.restore``; entries in a disk store are checked where they are written) and
    ``observations`` encode as JSON."""
    store = joiner.join.store if isinstance(joiner.join, StoredJoinBuffer) else None
    blob = orjson.dumps(joiner.to_state())
    obs.Joiner(joiner.config, flags=joiner.flags, track=joiner.track).restore(
        orjson.loads(blob), store
    )
    orjson.dumps(list(observations))


def isolate(
    state: S,
    n: int,
    step: Callable[[S, int, int], R],
    check: Callable[[S, R], None],
) -> tuple[S, list[tuple[int, R]], list[Poisoned]]:
    """Apply inputs ``0..n-1`` to ``state``, leaving out those that fail on their own.

    ``step(state, lo, hi)`` applies inputs ``lo..hi-1`` in place and returns their result;
    ``check(state, result)`` raises if what it left is unusable. A run of inputs that fails is
    retried from a deep copy taken before it, in halves, down to single inputs, which are left
    out. Returns the state to continue with (the one passed in must not be used afterwards: on a
    failure it is replaced by a copy), each successful run's ``(lo, result)`` in input order, and
    the inputs left out.
    """
    results: list[tuple[int, R]] = []
    poisoned: list[Poisoned] = []

    def run(state: S, lo: int, hi: int) -> S:
        if lo >= hi:
            return state
        checkpoint = copy.deepcopy(state)
        try:
            result = step(state, lo, hi)
            check(state, result)
        except Exception as exc:
            if hi - lo == 1:
                poisoned.append(Poisoned(lo, describe(exc)))
                return checkpoint
            mid = (lo + hi) // 2
            return run(run(checkpoint, lo, mid), mid, hi)
        results.append((lo, result))
        return state

    return run(state, 0, n), results, poisoned


def process_isolating(
    engine: Engine, events: Sequence[Event]
) -> tuple[Engine, Result, list[Poisoned]]:
    """Process ``events``; the engine to continue with, the result, and the events left out.

    The engine passed in must not be used afterwards (on failure it is replaced by a checkpoint).
    """
    engine, results, poisoned = isolate(
        engine,
        len(events),
        lambda e, lo, hi: e.process(events[lo:hi]),
        lambda e, _: check_state(e),
    )
    outputs: list[Emitted] = []
    rejections: list[Rejection] = []
    for lo, result in results:
        outputs.extend(Emitted(e.event, e.index + lo, e.position) for e in result.outputs)
        rejections.extend(
            Rejection(r.index + lo, r.reason, r.detail, r.position) for r in result.rejections
        )
    return engine, Result(outputs, rejections), poisoned


def join_isolating(
    joiner: obs.Joiner, events: Sequence[InputEvent], positions: Sequence[Any]
) -> tuple[obs.Joiner, list[obs.Observation], list[obs.Rejection], list[Poisoned]]:
    """:meth:`Joiner.process <driftswitch.streams.pipeline.observations.Joiner.process>` with
    containment: the joiner to continue with, the observations and rejections (``index`` into
    ``events``, as one ``process`` call gives them), and the events left out."""
    joiner, results, poisoned = isolate(
        joiner,
        len(events),
        lambda j, lo, hi: j.process(events[lo:hi], positions[lo:hi]),
        lambda j, result: check_joiner(j, result[0]),
    )
    observations: list[obs.Observation] = []
    rejections: list[obs.Rejection] = []
    for lo, (got, rejected) in results:
        observations.extend((o[0], o[1] + lo, *o[2:]) for o in got)
        rejections.extend(
            obs.Rejection(r.index + lo, r.reason, r.detail, r.position) for r in rejected
        )
    return joiner, observations, rejections, poisoned
