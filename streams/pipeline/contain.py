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
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from traceback import extract_tb

import orjson

from driftswitch.streams.pipeline.engine import Emitted, Engine, Event, Rejection, Result

__all__ = ["INTERNAL_ERROR", "Poisoned", "check_state", "describe", "process_isolating"]

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


def process_isolating(
    engine: Engine, events: Sequence[Event]
) -> tuple[Engine, Result, list[Poisoned]]:
    """Process ``events``; the engine to continue with, the result, and the events left out.

    The engine passed in must not be used afterwards (on failure it is replaced by a checkpoint).
    """
    outputs: list[Emitted] = []
    rejections: list[Rejection] = []
    poisoned: list[Poisoned] = []

    def run(engine: Engine, lo: int, hi: int) -> Engine:
        if lo >= hi:
            return engine
        checkpoint = copy.deepcopy(engine)
        try:
            result = engine.process(events[lo:hi])
            check_state(engine)
        except Exception as exc:
            if hi - lo == 1:
                poisoned.append(Poisoned(lo, describe(exc)))
                return checkpoint
            mid = (lo + hi) // 2
            return run(run(checkpoint, lo, mid), mid, hi)
        outputs.extend(Emitted(e.event, e.index + lo, e.position) for e in result.outputs)
        rejections.extend(
            Rejection(r.index + lo, r.reason, r.detail, r.position) for r in result.rejections
        )
        return engine

    engine = run(engine, 0, len(events))
    return engine, Result(outputs, rejections), poisoned
