"""Manual commands: what an operator or an automation asks driftswitch to do to one flag.

A :class:`Command` is the record value on the control topic (``driftswitch.control.v1``, key =
flag) and the body behind the HTTP admin API: ``kill``, ``restore``, ``set_weights``, ``pause``,
``resume``, ``pin`` or ``unpin`` one flag, with an ``actor`` and a ``reason``. It is decoded once
at the edge (:func:`decode_command`); what it does to a flag is
:func:`driftswitch.streams.pipeline.control.transition`'s. :class:`CommandError` carries the
machine-readable code of a refusal, :class:`CommandResult` what became of one command.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from driftswitch.streams.contract.errors import DriftswitchError
from driftswitch.streams.contract.events import (
    FlagChangeEvent,
    Name,
    Timestamp,
    decode_model,
)

__all__ = [
    "DEFAULT_ACTOR",
    "Command",
    "CommandAction",
    "CommandError",
    "CommandResult",
    "decode_command",
]

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
                {
                    "if": {"properties": {"action": {"enum": ["kill", "restore"]}}},
                    "else": {"not": {"required": ["segment"]}},
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
    segment: dict[Name, Annotated[str, Field(max_length=128)]] | None = Field(
        None,
        max_length=4,
        description="For kill and restore: act in this segment only (attribute name -> value, "
        'e.g. {"region": "jp"}; {} is a guardrail\'s `other` bucket, for restore).',
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
        if self.segment is not None and a not in (CommandAction.KILL, CommandAction.RESTORE):
            raise ValueError("`segment` is only for kill and restore")
        if self.segment is not None and self.weight is not None:
            raise ValueError("`weight` restores a variant everywhere; it takes no `segment`")
        if a is CommandAction.KILL and self.segment == {}:
            raise ValueError("kill needs a segment with at least one attribute")
        return self


def decode_command(data: bytes | str) -> Command:
    """Decode and validate one control-topic record; ``EventError`` with reason
    ``oversize``, ``malformed_json`` or ``schema`` (the dead-letter reasons of events)."""
    return decode_model(Command, data)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What became of one command: ``applied`` (with the published flag change), ``noop``
    (nothing to change) or ``rejected`` (``code`` and ``message`` say why)."""

    status: Literal["applied", "noop", "rejected"]
    event: FlagChangeEvent | None = None
    code: str | None = None
    message: str | None = None
