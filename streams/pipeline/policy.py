"""Guardrail policy: (flag state, decision, event time) → a new flag state, an alert, or nothing.

Pure code shared by the live worker and ``backtest``. The rules:

- ``warn``: an :class:`~driftswitch.streams.contract.events.AlertEvent`, no state change;
- ``hold``: set ``paused`` (rollout advances stop);
- ``shift``: move ``shift_by`` weight from the variant to the default variant;
- ``kill``: the variant's weight goes to the default, weight 0 and ``killed``.

Cooldowns are per guardrail and in *event* time, so a replay decides exactly as the live run did.
Nothing happens without a decision (missing data never flips a flag); an action that would change
nothing (killing a killed variant, shifting a variant at weight 0, holding a paused flag) emits
nothing. A killed variant stays killed: only a manual restore, adopted from outside, revives it. A
shadow variant (``shadow: true``) serves no one: killing it marks it killed (so it cannot be
promoted) and moves no weight. Every change carries the full new state, ``version + 1`` and the
evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from driftswitch.streams.config.model import FlagConfig, GuardrailAction
from driftswitch.streams.contract.events import (
    Action,
    AlertEvent,
    Cause,
    CauseKind,
    FlagChangeEvent,
    Output,
)
from driftswitch.streams.pipeline.monitor import Decision
from driftswitch.streams.pipeline.transitions import give, kill, next_state


@dataclass
class Cooldowns:
    """Event time of each guardrail's last action, per flag: ``{guardrail: ts}``."""

    last: dict[str, float] = field(default_factory=dict)

    def ready(self, guardrail: str, cooldown: float, ts: float) -> bool:
        """Whether ``guardrail`` may act at event time ``ts``."""
        last = self.last.get(guardrail)
        return last is None or ts >= last + cooldown

    def mark(self, guardrail: str, ts: float) -> None:
        """Record that ``guardrail`` acted at ``ts``."""
        self.last[guardrail] = ts

    def to_state(self) -> dict[str, float]:
        return dict(self.last)

    @classmethod
    def from_state(cls, state: Mapping[str, float]) -> Cooldowns:
        return cls({str(k): float(v) for k, v in state.items()})


def _cause(decision: Decision, action: Action, reason: str) -> Cause:
    g = decision.guardrail
    return Cause(
        kind=CauseKind.DETECTOR,
        action=action,
        reason=reason,
        guardrail=g.name,
        variant=g.variant,
        compare_to=g.compare_to,
        metric=g.metric.value,
        detector=decision.detector,
        statistic=decision.statistic,
        threshold=decision.threshold,
        samples=decision.samples,
        interval=decision.interval,
        window=decision.window,
        evidence=decision.evidence,
    )


def cause_of(decision: Decision, action: Action, what: str) -> Cause:
    """The cause of acting on ``decision``: its evidence and a reason ending in ``what``."""
    return _cause(decision, action, _reason(decision, what))


def _reason(decision: Decision, what: str) -> str:
    g = decision.guardrail
    against = f" against {g.compare_to}" if g.compare_to else ""
    stat = "" if decision.statistic is None else f" (statistic {decision.statistic:.4g}"
    if stat and decision.threshold is not None:
        stat += f", threshold {decision.threshold:.4g})"
    elif stat:
        stat += ")"
    return f"{g.name}: {g.metric.value} of {g.variant}{against} breached{stat}; {what}"


def apply(
    state: FlagChangeEvent, flag: FlagConfig, decision: Decision, cooldowns: Cooldowns
) -> Output | None:
    """The output of one breach, or None; marks the cooldown when something is emitted."""
    g = decision.guardrail
    ts = decision.ts
    if not decision.samples.get(g.variant):
        return None  # no data about the variant: never act
    if not cooldowns.ready(g.name, g.cooldown, ts):
        return None
    current = state.variants.get(g.variant)
    if current is None:
        return None
    if g.action is GuardrailAction.WARN:
        cooldowns.mark(g.name, ts)
        return AlertEvent(
            flag=state.flag,
            guardrail=g.name,
            variant=g.variant,
            cause=_cause(decision, Action.WARN, _reason(decision, "alert only")),
            ts=ts,
            flag_version=state.version,
        )
    variants = dict(state.variants)
    paused = state.paused
    default = state.default_variant
    # A shadow promoted by a rollout serves traffic: it is killed or shifted like any variant.
    shadow = g.variant in flag.variants and flag.variants[g.variant].shadow and not current.weight
    if g.action is GuardrailAction.HOLD:
        if paused:
            return None
        paused = True
        action, what = Action.HOLD, "rollout held"
    elif g.action is GuardrailAction.KILL:
        if current.killed:
            return None
        moved = 0 if shadow or g.variant == default else current.weight
        kill(variants, g.variant, default, moved)
        action = Action.KILL
        what = f"killed, weight {moved} to {default}" if not shadow else "shadow killed"
    else:  # shift
        moved = min(g.shift_by, current.weight)
        if current.killed or shadow or moved == 0 or g.variant == default:
            return None
        variants[g.variant] = current.model_copy(update={"weight": current.weight - moved})
        give(variants, default, moved)
        action, what = Action.SHIFT, f"weight {moved} shifted to {default}"
    cooldowns.mark(g.name, ts)
    cause = _cause(decision, action, _reason(decision, what))
    return next_state(state, cause, ts, variants=variants, paused=paused)
