"""Flag transitions: the one place a flag's next state is built. No I/O.

A flag's state is a :class:`~driftswitch.streams.contract.events.FlagChangeEvent`: every variant's
weight, kill mark and value, the default variant, ``paused`` and ``pinned``. Whoever changes a
flag — an operator's command (:func:`driftswitch.streams.pipeline.control.transition`), a
guardrail's action (:func:`driftswitch.streams.pipeline.policy.apply`), a rollout step
(:class:`driftswitch.streams.pipeline.rollout.Rollout`) or a config reload
(:func:`driftswitch.streams.pipeline.control.reconcile`) — decides *what* changes and calls
:func:`next_state` for the new state: version + 1, the cause with its evidence, and everything it
does not name carried over unchanged. Weight moves between variants go through :func:`give` and
:func:`kill`, so a kill means the same thing whoever orders it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Final, Literal

from pydantic import JsonValue

from driftswitch.streams.config.model import FlagConfig
from driftswitch.streams.contract.events import (
    Action,
    Cause,
    CauseKind,
    FlagChangeEvent,
    Pin,
    RolloutGate,
    SegmentOverride,
    VariantState,
)

__all__ = ["ACTOR", "KEEP", "give", "initial_state", "kill", "next_state", "rollout_gate"]

#: The actor of every change driftswitch makes itself.
ACTOR = "driftswitch"


class _Keep(Enum):
    KEEP = "keep"


#: ``next_state(..., pinned=KEEP)``: the pin stays as it is (``None`` ends it).
KEEP: Final = _Keep.KEEP


def initial_state(name: str, flag: FlagConfig, ts: float = 0.0) -> FlagChangeEvent:
    """Version 1 of a flag, straight from the config (cause ``config``, action ``init``)."""
    return FlagChangeEvent(
        flag=name,
        version=1,
        variants={
            v: VariantState(weight=cfg.weight, killed=False, value=cfg.value)
            for v, cfg in flag.variants.items()
        },
        default_variant=flag.default,
        cause=Cause(kind=CauseKind.CONFIG, action=Action.INIT, reason="initial state from config"),
        ts=ts,
        actor=ACTOR,
        targeting=flag.targeting,
        rollout_gate=rollout_gate(flag, 0),
    )


def rollout_gate(flag: FlagConfig, segment: int) -> RolloutGate | None:
    """The gate of a rollout by segment at ``segment`` (None: the plan has no segments)."""
    plan = flag.rollout
    if plan is None or not plan.segments:
        return None
    current = plan.segments[segment]
    return RolloutGate(
        segment=segment,
        name=current.name,
        candidate=plan.variant,
        control=plan.control(flag),
        current=current.when,
        done=[s.when for s in plan.segments[:segment] if s.when is not None],
        done_percent=plan.steps[-1],
    )


def next_state(
    state: FlagChangeEvent,
    cause: Cause,
    ts: float,
    *,
    actor: str = ACTOR,
    variants: Mapping[str, VariantState] | None = None,
    default_variant: str | None = None,
    paused: bool | None = None,
    pinned: Pin | Literal[_Keep.KEEP] | None = KEEP,
    targeting: dict[str, JsonValue] | Literal[_Keep.KEEP] | None = KEEP,
    segments: Sequence[SegmentOverride] | None = None,
    rollout_gate: RolloutGate | Literal[_Keep.KEEP] | None = KEEP,
) -> FlagChangeEvent:
    """The state after ``state``: version + 1, ``cause`` at event time ``ts``.

    ``variants``, ``default_variant``, ``paused``, ``pinned``, ``targeting`` and ``segments``
    (the per-segment kills) replace the current ones when given (``pinned=None`` ends a pin,
    ``targeting=None`` drops the rule); whatever is not given is carried over.
    """
    return FlagChangeEvent(
        flag=state.flag,
        version=state.version + 1,
        variants=dict(state.variants if variants is None else variants),
        default_variant=state.default_variant if default_variant is None else default_variant,
        cause=cause,
        ts=ts,
        actor=actor,
        paused=state.paused if paused is None else paused,
        pinned=state.pinned if pinned is KEEP else pinned,
        targeting=state.targeting if targeting is KEEP else targeting,
        segments=list(state.segments if segments is None else segments),
        rollout_gate=state.rollout_gate if rollout_gate is KEEP else rollout_gate,
    )


def give(variants: dict[str, VariantState], default: str, weight: int) -> None:
    """Add ``weight`` (negative: take it) to the default variant's."""
    if weight and default in variants:
        d = variants[default]
        variants[default] = d.model_copy(update={"weight": d.weight + weight})


def kill(variants: dict[str, VariantState], name: str, default: str, moved: int) -> None:
    """Mark ``name`` killed at weight 0 and give ``moved`` of its weight to the default variant
    (its whole weight, or 0 where it served no one: a shadow, or the default itself)."""
    variants[name] = variants[name].model_copy(update={"weight": 0, "killed": True})
    give(variants, default, moved)
