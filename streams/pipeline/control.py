"""Manual control: the operator's commands, what each does to a flag, and admin authentication.

A :class:`Command` is what an operator (through the HTTP admin API) or an automation (through the
control topic ``driftswitch.control.v1``) asks for: ``kill``, ``restore``, ``set_weights``,
``pause``, ``resume``, ``pin`` or ``unpin`` one flag, with an ``actor`` and a ``reason``. It is
decoded once at the edge (:func:`decode_command`), checked against the config (:func:`validate`)
and turned into the flag's next state by the pure :func:`transition`, which
:meth:`Engine.apply_command <driftswitch.streams.pipeline.engine.Engine.apply_command>` calls, so
the live
worker and a replay decide alike. Every applied command is one
:class:`~driftswitch.streams.contract.events.FlagChangeEvent` with cause kind ``manual``, the
operator as
``actor`` and their reason: the flags topic is the audit log.

The rules, in the same spirit as the guardrail policy (:mod:`driftswitch.streams.pipeline.policy`):

- ``kill``: the variant's weight goes to the default variant; it is marked killed and stays killed
  (guardrails never revive it) until a ``restore``. The default variant cannot be killed: traffic
  falls back to it.
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
:class:`CommandError` with a machine-readable ``code``.

Authentication of the admin API (:class:`AdminAuth`): a bearer token from
``DRIFTSWITCH_ADMIN_TOKEN``, compared in constant time (:func:`hmac.compare_digest`); without a
configured token every mutating endpoint is disabled, never open.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    StrictInt,
    field_validator,
    model_validator,
)

from driftswitch.streams.config.model import Config, FlagConfig
from driftswitch.streams.contract.errors import DriftswitchError
from driftswitch.streams.contract.events import (
    Action,
    Cause,
    CauseKind,
    FlagChangeEvent,
    Name,
    Pin,
    Timestamp,
    VariantState,
    decode_model,
)

__all__ = [
    "ADMIN_TOKEN_ENV",
    "AdminAuth",
    "AuthFailure",
    "Command",
    "CommandAction",
    "CommandError",
    "Outcome",
    "decode_command",
    "reconcile",
    "transition",
    "validate",
]

#: Environment variable holding the admin API's bearer token.
ADMIN_TOKEN_ENV = "DRIFTSWITCH_ADMIN_TOKEN"
#: The actor recorded when a command names none.
DEFAULT_ACTOR = "admin"


class CommandAction(StrEnum):
    """What an operator can do to a flag."""

    KILL = "kill"
    RESTORE = "restore"
    SET_WEIGHTS = "set_weights"
    PAUSE = "pause"
    RESUME = "resume"
    PIN = "pin"
    UNPIN = "unpin"


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
_NEEDS_VARIANT = frozenset({CommandAction.KILL, CommandAction.RESTORE, CommandAction.PIN})


class CommandError(DriftswitchError):
    """A command that cannot apply; ``code`` is machine-readable.

    Codes: ``unknown_flag``, ``unknown_variant``, ``invalid_command`` (against the config or the
    flag's state) and ``conflict`` (refused in the flag's current state, e.g. while pinned).
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class Command(BaseModel):
    """One manual command for one flag; the record value on the control topic (key = flag)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        json_schema_extra={
            "description": "A manual command for one flag (control topic, HTTP admin API).",
            # The shape rules of `_shape`, for non-Python validators of the schema.
            "allOf": [
                {
                    "if": {"properties": {"action": {"enum": ["kill", "restore", "pin"]}}},
                    "then": {"required": ["variant"]},
                    "else": {"not": {"required": ["variant"]}},
                },
                {
                    "if": {"properties": {"action": {"const": "set_weights"}}},
                    "then": {"required": ["weights"]},
                    "else": {"not": {"required": ["weights"]}},
                },
                {
                    "if": {"properties": {"action": {"const": "restore"}}},
                    "else": {"not": {"required": ["weight"]}},
                },
            ],
        },
    )

    kind: Literal["command"] = Field("command", description="Record type.")
    id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Command id, echoed in the resulting flag change's evidence (correlation).",
    )
    action: CommandAction = Field(
        description="kill | restore | set_weights | pause | resume | pin | unpin."
    )
    flag: Name = Field(description="The flag acted on.")
    variant: Name | None = Field(
        None, description="The variant, for kill, restore and pin (and only for them)."
    )
    weight: StrictInt | None = Field(
        None,
        ge=0,
        le=100,
        description="For restore: the weight to give back (default: the configured weight).",
    )
    weights: dict[Name, Annotated[StrictInt, Field(ge=0, le=100)]] | None = Field(
        None,
        description="For set_weights: variant -> weight, adding up to 100; unnamed variants get 0.",
    )
    reason: str | None = Field(
        None, max_length=1000, description="Why: recorded in the flag change (audit)."
    )
    actor: str = Field(
        DEFAULT_ACTOR, min_length=1, max_length=128, description="Who: the operator's identity."
    )
    ts: Timestamp | None = Field(
        None, description="When it was issued (epoch seconds); default: the record's timestamp."
    )

    @field_validator("ts")
    @classmethod
    def _seconds(cls, ts: float | None) -> float | None:
        if ts is not None and ts >= 1e11:
            raise ValueError("looks like milliseconds or finer; send Unix epoch seconds")
        return ts

    @model_validator(mode="after")
    def _shape(self) -> Self:
        a = self.action
        if a in _NEEDS_VARIANT and self.variant is None:
            raise ValueError(f"{a.value} needs `variant`")
        if a not in _NEEDS_VARIANT and self.variant is not None:
            raise ValueError(f"{a.value} takes no `variant`")
        if (a is CommandAction.SET_WEIGHTS) != (self.weights is not None):
            raise ValueError("`weights` is required for set_weights and only for it")
        if a is not CommandAction.RESTORE and self.weight is not None:
            raise ValueError("`weight` is only for restore")
        return self


def decode_command(data: bytes | str) -> Command:
    """Decode and validate one control-topic record; ``EventError`` with reason
    ``oversize``, ``malformed_json`` or ``schema`` (the dead-letter reasons of events)."""
    return decode_model(Command, data)


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
        variants[name] = current.model_copy(update={"weight": 0, "killed": True})
        _give(variants, default, moved)
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
        _give(variants, default, -weight)
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
    return FlagChangeEvent(
        flag=state.flag,
        version=state.version + 1,
        variants=variants,
        default_variant=default,
        cause=Cause(
            kind=CauseKind.MANUAL,
            action=CAUSE_ACTION[a],
            reason=command.reason or what,
            variant=name,
            evidence=evidence,
        ),
        ts=ts,
        actor=command.actor,
        paused=paused,
        pinned=pinned,
        targeting=state.targeting,
    )


def _target(command: Command, variants: Mapping[str, VariantState]) -> tuple[str, VariantState]:
    """The variant a kill, restore or pin acts on, and its state."""
    name = command.variant
    current = variants.get(name) if name is not None else None
    if name is None or current is None:
        raise CommandError("unknown_variant", f"variant {name!r} is not in the flag's state")
    return name, current


def _give(variants: dict[str, VariantState], default: str, weight: int) -> None:
    if weight and default in variants:
        d = variants[default]
        variants[default] = d.model_copy(update={"weight": d.weight + weight})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one command: ``applied`` (with the published flag change), ``noop``
    (nothing to change) or ``rejected`` (``code`` and ``message`` say why)."""

    status: Literal["applied", "noop", "rejected"]
    event: FlagChangeEvent | None = None
    code: str | None = None
    message: str | None = None


# --------------------------------------------------------------------------- authentication


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a mutating request is refused: HTTP status, machine-readable code and a message."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class AdminAuth:
    """The admin API's bearer token (``None``: mutating endpoints disabled, never open)."""

    token: SecretStr | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AdminAuth:
        """Read :data:`ADMIN_TOKEN_ENV` (an empty value counts as unset)."""
        raw = environ.get(ADMIN_TOKEN_ENV, "")
        return cls(SecretStr(raw) if raw else None)

    @property
    def enabled(self) -> bool:
        """Whether mutating requests can be authorised at all."""
        return self.token is not None

    def check(self, authorization: str | None) -> AuthFailure | None:
        """None if the ``Authorization`` header carries the token, else why not.

        No configured token → 503 ``admin_disabled``; no or malformed header → 401
        ``unauthenticated``; another token → 403 ``forbidden``. The comparison takes the same
        time wherever the tokens differ (:func:`hmac.compare_digest`).
        """
        if self.token is None:
            return AuthFailure(
                503,
                "admin_disabled",
                f"mutating endpoints are disabled: set {ADMIN_TOKEN_ENV} to enable them",
            )
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return AuthFailure(401, "unauthenticated", "send `Authorization: Bearer <token>`")
        expected = self.token.get_secret_value().encode()
        if not hmac.compare_digest(given.strip().encode(), expected):
            return AuthFailure(403, "forbidden", "the bearer token is not valid")
        return None


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
    if (
        variants == dict(old)
        and default == state.default_variant
        and pinned == state.pinned
        and targeting == state.targeting
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
    what = "config reloaded: " + ("; ".join(changes) or "weights refitted")
    return FlagChangeEvent(
        flag=state.flag,
        version=state.version + 1,
        variants=variants,
        default_variant=default,
        cause=Cause(kind=CauseKind.CONFIG, action=Action.RECONFIGURE, reason=what),
        ts=ts,
        actor="driftswitch",
        paused=state.paused,
        pinned=pinned,
        targeting=targeting,
    )
