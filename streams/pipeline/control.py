"""Manual control: what each operator command does to a flag, and config reloads. No I/O.

A :class:`~driftswitch.streams.contract.commands.Command` (from the HTTP admin API or the control
topic) is checked against the config (:func:`validate`) and turned into the flag's next state by
the pure :func:`transition`, which
:meth:`Engine.apply_command <driftswitch.streams.pipeline.engine.Engine.apply_command>` calls, so
the live worker and a replay decide alike. Every applied command is one
:class:`~driftswitch.streams.contract.events.FlagChangeEvent` with cause kind ``manual``, the
operator as ``actor`` and their reason: the flags topic is the audit log.

The rules, in the same spirit as the guardrail policy (:mod:`driftswitch.streams.pipeline.policy`):

- ``kill``: the variant's weight goes to the default variant; it is marked killed and stays killed
  (guardrails never revive it) until a ``restore``. The default variant cannot be killed: traffic
  falls back to it.
- ``kill`` / ``restore`` with a ``segment``: only that segment's users get the default variant,
  or get the variant back (:mod:`~driftswitch.streams.pipeline.segments`); the weights stay.
- ``restore``: un-kills the variant with ``weight`` if given, else its configured weight, taken
  from the default variant (which must have that much).
- ``set_weights``: the full set of served weights (unnamed variants get 0); they add up to 100, and
  a killed or shadow variant gets none.
- ``pause`` / ``resume``: set or clear ``paused``; rollout advances stop while paused.
- ``pin``: one variant serves everyone (weight 100, others 0); the weights before are kept in
  ``pinned`` and come back with ``unpin``, where a variant killed meanwhile gives its share to the
  default. While pinned, ``restore`` and ``set_weights`` are refused (unpin first); a kill is
  always possible.

A command that would change nothing (killing a killed variant, pausing a paused flag, ...) is a
no-op: :func:`transition` returns None and nothing is published. An invalid one raises
:class:`~driftswitch.streams.contract.commands.CommandError` with a machine-readable ``code``.

:func:`reconcile` fits a flag's live state to a reloaded config.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import JsonValue

from driftswitch.streams.config.model import Config, FlagConfig
from driftswitch.streams.contract.commands import Command, CommandAction, CommandError
from driftswitch.streams.contract.events import (
    Action,
    Cause,
    CauseKind,
    FlagChangeEvent,
    Pin,
    SegmentOverride,
    VariantState,
)
from driftswitch.streams.pipeline import segments
from driftswitch.streams.pipeline.transitions import give, kill, next_state, rollout_gate

__all__ = ["CAUSE_ACTION", "reconcile", "transition", "validate"]

#: Each command's action in the resulting flag change's cause.
CAUSE_ACTION: dict[CommandAction, Action] = {
    CommandAction.KILL: Action.KILL,
    CommandAction.RESTORE: Action.RESTORE,
    CommandAction.SET_WEIGHTS: Action.SET_WEIGHTS,
    CommandAction.PAUSE: Action.PAUSE,
    CommandAction.RESUME: Action.RESUME,
    CommandAction.PIN: Action.PIN,
    CommandAction.UNPIN: Action.UNPIN,
}


def validate(command: Command, config: Config) -> FlagConfig:
    """Check ``command`` against the config; return the flag's config or raise ``CommandError``.

    What the config alone decides: the flag and variants exist, weights add up to 100 and give
    nothing to a shadow variant. What depends on the flag's state is :func:`transition`'s.
    """
    flag = config.flags.get(command.flag)
    if flag is None:
        known = ", ".join(config.flags)
        raise CommandError(
            "unknown_flag", f"flag {command.flag!r} is not configured; known: {known}"
        )
    known_variants = ", ".join(flag.variants)
    named = [command.variant] if command.variant is not None else []
    named += list(command.weights or {})
    for v in named:
        if v not in flag.variants:
            raise CommandError(
                "unknown_variant",
                f"variant {v!r} of flag {command.flag!r} does not exist; known: {known_variants}",
            )
    if command.weights is not None:
        total = sum(command.weights.values())
        if total != 100:
            raise CommandError(
                "invalid_command",
                f"weights must add up to 100, got {total} "
                f"({', '.join(f'{n}={w}' for n, w in command.weights.items())})",
            )
        for v, w in command.weights.items():
            if w and flag.variants[v].shadow:
                raise CommandError(
                    "invalid_command", f"{v!r} is a shadow variant: it serves no one (weight 0)"
                )
    if command.variant is not None and flag.variants[command.variant].shadow:
        if command.action is CommandAction.PIN:
            raise CommandError(
                "invalid_command", f"{command.variant!r} is a shadow variant: it cannot be pinned"
            )
        if command.action is CommandAction.RESTORE and command.weight:
            raise CommandError(
                "invalid_command", f"{command.variant!r} is a shadow variant: it serves no one"
            )
    return flag


def transition(
    state: FlagChangeEvent, flag: FlagConfig, command: Command, ts: float
) -> FlagChangeEvent | None:
    """The flag's next state after ``command`` at time ``ts``, or None for a no-op.

    Pure. ``state`` is the flag's current state, ``flag`` its config; raises ``CommandError``
    when the command cannot apply (see the module doc for the rules).
    """
    variants = dict(state.variants)
    default = state.default_variant
    paused = state.paused
    pinned = state.pinned
    a = command.action
    name = command.variant
    shadow = name is not None and name in flag.variants and flag.variants[name].shadow

    if command.segment is not None:
        return _segment_command(state, command, ts)
    if a is CommandAction.KILL:
        name, current = _target(command, variants)
        if name == default:
            raise CommandError(
                "invalid_command",
                f"cannot kill the default variant {name!r}: traffic falls back to it",
            )
        if current.killed:
            return None
        moved = 0 if shadow else current.weight
        kill(variants, name, default, moved)
        what = f"{name} killed, weight {moved} to {default}"
    elif a is CommandAction.RESTORE:
        name, current = _target(command, variants)
        if not current.killed:
            return None
        if pinned is not None:
            raise CommandError("conflict", f"flag is pinned to {pinned.variant!r}: unpin first")
        configured = flag.variants[name].weight if name in flag.variants else 0
        weight = command.weight if command.weight is not None else (0 if shadow else configured)
        available = variants[default].weight
        if weight > available:
            raise CommandError(
                "invalid_command",
                f"cannot restore {name!r} with weight {weight}: the default variant {default!r} "
                f"serves only {available}; restore with a smaller `weight` or set weights",
            )
        variants[name] = current.model_copy(update={"weight": weight, "killed": False})
        give(variants, default, -weight)
        what = f"{name} restored with weight {weight} from {default}"
    elif a is CommandAction.SET_WEIGHTS:
        assert command.weights is not None
        if pinned is not None:
            raise CommandError("conflict", f"flag is pinned to {pinned.variant!r}: unpin first")
        for vname, vstate in variants.items():
            w = command.weights.get(vname, 0)
            if w and vstate.killed:
                raise CommandError(
                    "invalid_command", f"{vname!r} is killed: restore it before giving it weight"
                )
            if w and vname in flag.variants and flag.variants[vname].shadow:
                raise CommandError("invalid_command", f"{vname!r} is a shadow variant")
        if sum(command.weights.get(v, 0) for v in variants) != 100:
            raise CommandError("invalid_command", "weights must add up to 100")
        if all(command.weights.get(v, 0) == s.weight for v, s in variants.items()):
            return None
        variants = {
            v: s.model_copy(update={"weight": command.weights.get(v, 0)})
            for v, s in variants.items()
        }
        what = "weights set to " + ", ".join(f"{v}={s.weight}" for v, s in variants.items())
    elif a is CommandAction.PAUSE:
        if paused:
            return None
        paused = True
        what = "rollout paused"
    elif a is CommandAction.RESUME:
        if not paused:
            return None
        paused = False
        what = "rollout resumed"
    elif a is CommandAction.PIN:
        name, current = _target(command, variants)
        if current.killed:
            raise CommandError("invalid_command", f"{name!r} is killed: restore it first")
        if shadow:
            raise CommandError("invalid_command", f"{name!r} is a shadow variant")
        if pinned is not None and pinned.variant == name:
            return None
        before = {v: s.weight for v, s in variants.items()} if pinned is None else pinned.weights
        variants = {
            v: s.model_copy(update={"weight": 100 if v == name else 0}) for v, s in variants.items()
        }
        pinned = Pin(variant=name, weights=before)
        what = f"pinned to {name}"
    else:  # unpin
        if pinned is None:
            return None
        # The weights before the pin; a variant killed meanwhile gives its share to the default.
        variants = {
            v: s.model_copy(update={"weight": 0 if s.killed else pinned.weights.get(v, 0)})
            for v, s in variants.items()
        }
        others = sum(s.weight for v, s in variants.items() if v != default)
        variants[default] = variants[default].model_copy(update={"weight": 100 - others})
        what = f"unpinned from {pinned.variant}; weights " + ", ".join(
            f"{v}={s.weight}" for v, s in variants.items()
        )
        pinned = None

    evidence: dict[str, JsonValue] = {"summary": what}
    if command.id is not None:
        evidence["command_id"] = command.id
    cause = Cause(
        kind=CauseKind.MANUAL,
        action=CAUSE_ACTION[a],
        reason=command.reason or what,
        variant=name,
        evidence=evidence,
    )
    return next_state(
        state, cause, ts, actor=command.actor, variants=variants, paused=paused, pinned=pinned
    )


def _segment_command(state: FlagChangeEvent, command: Command, ts: float) -> FlagChangeEvent | None:
    """``kill`` or ``restore`` with a ``segment``: add or remove that segment's override (the
    segment's users get the default variant; everyone else is unchanged)."""
    name, current = _target(command, state.variants)
    segment = dict(command.segment or {})
    where = segments.label(segment)
    if command.action is CommandAction.KILL:
        if name == state.default_variant:
            raise CommandError(
                "invalid_command",
                f"cannot kill the default variant {name!r}: traffic falls back to it",
            )
        if current.killed or any(o.variant == name and o.match == segment for o in state.segments):
            return None
        override = SegmentOverride(variant=name, match=segment)
        overrides = [*state.segments, override]
        what = f"{name} killed in segment {where}: it gets {state.default_variant}"
    else:
        kept = segments.restore(state.segments, name, segment)
        if kept is None:
            return None
        overrides = kept
        what = f"{name} restored in segment {where}"
    evidence: dict[str, JsonValue] = {"summary": what}
    if command.id is not None:
        evidence["command_id"] = command.id
    cause = Cause(
        kind=CauseKind.MANUAL,
        action=CAUSE_ACTION[command.action],
        reason=command.reason or what,
        variant=name,
        evidence=evidence,
        segment=segment,
    )
    return next_state(state, cause, ts, actor=command.actor, segments=overrides)


def _target(command: Command, variants: Mapping[str, VariantState]) -> tuple[str, VariantState]:
    """The variant a kill, restore or pin acts on, and its state."""
    name = command.variant
    current = variants.get(name) if name is not None else None
    if name is None or current is None:
        raise CommandError("unknown_variant", f"variant {name!r} is not in the flag's state")
    return name, current


# --------------------------------------------------------------------------- config reload


def reconcile(state: FlagChangeEvent, flag: FlagConfig, ts: float) -> FlagChangeEvent | None:
    """The live state of an existing flag under its reloaded config, or None if it still fits.

    Live state wins over the file: a weight changed in the config does *not* override the
    weights in force (an operator's or a rollout's decision would silently be undone, and
    users moved); set weights through the admin API instead. Only what the live state cannot
    keep changes: variants removed from the config disappear (their weight goes to the default),
    new variants join at weight 0, a variant turned shadow serves no one, variant values and the
    default variant follow the config (the default is never killed), and a pin on a variant that
    is gone or shadow ends. Version + 1, cause ``config``/``reconfigure``.
    """
    default = flag.default
    old = state.variants
    killed = {v for v, s in old.items() if s.killed and v in flag.variants and v != default}

    def fit(weights: Mapping[str, int]) -> dict[str, int]:
        out = {
            v: 0 if cfg.shadow or v in killed else weights.get(v, 0)
            for v, cfg in flag.variants.items()
        }
        out[default] = max(0, 100 - sum(w for v, w in out.items() if v != default))
        return out

    pinned = state.pinned
    live: dict[str, int]
    if pinned is not None and (
        pinned.variant not in flag.variants
        or flag.variants[pinned.variant].shadow
        or pinned.variant in killed
    ):
        live, pinned = fit(pinned.weights), None
    elif pinned is not None:
        pinned = Pin(variant=pinned.variant, weights=fit(pinned.weights))
        live = {v: 100 if v == pinned.variant else 0 for v in flag.variants}
    else:
        live = fit({v: s.weight for v, s in old.items()})
    variants = {
        v: VariantState(weight=live[v], killed=v in killed, value=cfg.value)
        for v, cfg in flag.variants.items()
    }
    targeting = flag.targeting
    # A rollout by segment stays in its segment (the plan's conditions as reloaded); segment
    # overrides of variants that are gone are dropped.
    at = state.rollout_gate.segment if state.rollout_gate is not None else 0
    plan_segments = flag.rollout.segments if flag.rollout is not None else None
    gate = rollout_gate(flag, min(at, len(plan_segments) - 1)) if plan_segments else None
    overrides = [o for o in state.segments if o.variant in flag.variants]
    if (
        variants == dict(old)
        and default == state.default_variant
        and pinned == state.pinned
        and targeting == state.targeting
        and gate == state.rollout_gate
        and overrides == state.segments
    ):
        return None
    changes = []
    if set(variants) != set(old):
        added = [v for v in variants if v not in old]
        removed = [v for v in old if v not in variants]
        changes.append(
            "variants"
            + (f" added {', '.join(added)} (weight 0)" if added else "")
            + (f" removed {', '.join(removed)}" if removed else "")
        )
    if default != state.default_variant:
        changes.append(f"default {state.default_variant} -> {default}")
    if pinned != state.pinned and pinned is None:
        changes.append("pin ended")
    if any(v in old and old[v].value != s.value for v, s in variants.items()):
        changes.append("values updated")
    if targeting != state.targeting:
        changes.append("targeting updated")
    if gate != state.rollout_gate:
        changes.append("rollout segments updated")
    what = "config reloaded: " + ("; ".join(changes) or "weights refitted")
    cause = Cause(kind=CauseKind.CONFIG, action=Action.RECONFIGURE, reason=what)
    return next_state(
        state,
        cause,
        ts,
        variants=variants,
        default_variant=default,
        pinned=pinned,
        targeting=targeting,
        segments=overrides,
        rollout_gate=gate,
    )
