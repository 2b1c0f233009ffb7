"""The events driftswitch reads and writes: the stable contract (DESIGN.md "Contracts").

Field names here are the contract: fields may be added, none renamed without a schema version bump.
Timestamps are Unix epoch seconds (float). Every model forbids unknown fields, so a misspelt field
is reported instead of silently ignored.

Decode once, at the edge: :func:`decode_prediction`, :func:`decode_outcome` and :func:`decode_line`
turn bytes into models or raise :class:`~driftswitch.streams.contract.errors.EventError` with a
machine-readable ``reason`` (``malformed_json``, ``schema``, ``oversize``), which becomes the
dead-letter reason.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from driftswitch.streams.contract.errors import EventError

_M = TypeVar("_M", bound=BaseModel)

#: Major version of the event contract; it is part of the topic names (``….v1``) and schema ids.
SCHEMA_VERSION = 1

#: Records larger than this are rejected with reason ``oversize`` before decoding.
MAX_EVENT_BYTES = 64 * 1024

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="Identifier: letters, digits, '_', '.', '-'; at most 128 characters.",
    ),
]
RequestId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        description="Joins a prediction with its outcome; the Kafka record key.",
    ),
]
#: A class label or a numeric value. Strict, so ``1`` and ``"1"`` stay different labels.
Label = StrictBool | StrictInt | StrictFloat | StrictStr
Timestamp = Annotated[
    float,
    Field(
        ge=0,
        description="Unix epoch seconds (float), e.g. 1767225600.25.",
        json_schema_extra={"exclusiveMaximum": 1e11},
    ),
]


def _check_seconds(ts: float) -> float:
    # 1e11 s is the year 5138; anything above is almost surely milliseconds or microseconds.
    if ts >= 1e11:
        raise ValueError("looks like milliseconds or finer; send Unix epoch seconds")
    return ts


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PredictionEvent(_Event):
    """One prediction served (or shadowed) by one variant of a model behind a flag."""

    model_config = ConfigDict(
        json_schema_extra={"description": "One prediction by one variant of a flagged model."}
    )

    kind: Literal["prediction"] = Field(
        "prediction", description="Record type; required in JSON Lines event files."
    )
    request_id: RequestId
    flag: Name = Field(description="The flag the model is served behind.")
    variant: Name = Field(description="The variant that produced this prediction.")
    ts: Timestamp
    prediction: Label = Field(description="The predicted label (classification) or value.")
    score: float | None = Field(
        None, description="Probability or confidence of the prediction, if the model has one."
    )
    latency_ms: float | None = Field(None, ge=0, description="Inference latency, milliseconds.")
    error: StrictStr | None = Field(
        None,
        description="Set when inference failed: an error code or message. Counts as an error.",
    )
    served: bool = Field(
        True, description="False for shadow predictions: scored, never shown to users."
    )
    subject: str | None = Field(
        None, max_length=256, description="Targeting key (user or entity) of the request."
    )
    model_version: str | None = Field(None, max_length=128, description="Model build/version.")
    attributes: dict[str, StrictStr | StrictBool | StrictInt | StrictFloat] = Field(
        default_factory=dict, description="Segment fields (country, platform, ...)."
    )
    features: dict[str, float] = Field(
        default_factory=dict, description="Numeric model inputs, for feature drift."
    )

    _ts = field_validator("ts")(_check_seconds)


class OutcomeEvent(_Event):
    """The observed truth for one earlier (or later: races happen) prediction."""

    model_config = ConfigDict(
        json_schema_extra={"description": "The observed outcome of one prediction."}
    )

    kind: Literal["outcome"] = Field(
        "outcome", description="Record type; required in JSON Lines event files."
    )
    request_id: RequestId
    ts: Timestamp
    label: Label = Field(description="The true label (classification) or value (regression).")
    flag: Name | None = Field(None, description="Optional: the flag, if the sender knows it.")
    variant: Name | None = Field(None, description="Optional: the variant, if known.")

    _ts = field_validator("ts")(_check_seconds)


class CauseKind(StrEnum):
    """Why a flag changed."""

    DETECTOR = "detector"
    ROLLOUT = "rollout"
    MANUAL = "manual"
    CONFIG = "config"


class Action(StrEnum):
    """What a guardrail or an operator does to a flag."""

    WARN = "warn"
    HOLD = "hold"
    SHIFT = "shift"
    KILL = "kill"
    RESTORE = "restore"
    ADVANCE = "advance"
    ROLLBACK = "rollback"
    SET_WEIGHTS = "set_weights"
    PAUSE = "pause"
    RESUME = "resume"
    PIN = "pin"
    UNPIN = "unpin"
    INIT = "init"
    RECONFIGURE = "reconfigure"


class VariantState(_Event):
    """One variant's serving state."""

    weight: int = Field(ge=0, description="Share of traffic (integer, flagd fractional weight).")
    killed: bool = Field(False, description="A killed variant is never served.")
    value: JsonValue = Field(description="The value a client receives for this variant.")


class Pin(_Event):
    """A manual pin: one variant serves everyone until unpinned (then ``weights`` come back)."""

    variant: str = Field(description="The variant served to everyone while pinned.")
    weights: dict[str, int] = Field(
        description="The weights before the pin, restored by unpin (killed variants excepted)."
    )


class Cause(_Event):
    """The evidence for a flag change: enough to explain the decision without other data."""

    kind: CauseKind = Field(description="detector | rollout | manual | config.")
    action: Action = Field(description="What was done.")
    reason: str | None = Field(None, description="Human-readable summary or operator's reason.")
    guardrail: str | None = Field(None, description="The guardrail that fired.")
    variant: str | None = Field(None, description="The variant acted on.")
    compare_to: str | None = Field(None, description="The reference variant, if compared.")
    metric: str | None = Field(None, description="The metric the guardrail watches.")
    detector: str | None = Field(None, description="The detector kind.")
    statistic: float | None = Field(None, description="The detector statistic at the decision.")
    threshold: float | None = Field(None, description="The threshold it crossed.")
    samples: dict[str, int] = Field(
        default_factory=dict, description="Matured samples per variant behind the decision."
    )
    interval: tuple[float, float] | None = Field(
        None, description="Anytime-valid confidence interval of the difference (sequential)."
    )
    window: dict[str, JsonValue] | None = Field(
        None, description="The event-time window of the evidence (first/last ts, events)."
    )
    evidence: dict[str, JsonValue] = Field(
        default_factory=dict, description="Detector-specific details (plain data)."
    )


class FlagChangeEvent(_Event):
    """A new state of one flag; published to the flags topic keyed by flag, and the audit log.

    ``version`` is monotonic per flag: a consumer that sees a version it already has ignores it.
    """

    model_config = ConfigDict(
        json_schema_extra={"description": "A new, complete state of one flag and why."}
    )

    flag: Name
    version: int = Field(ge=1, description="Monotonic per flag; the first state is version 1.")
    variants: dict[str, VariantState] = Field(
        min_length=1, description="Every variant's full state (not a diff)."
    )
    default_variant: str = Field(description="Served when a variant is killed or state unknown.")
    cause: Cause = Field(description="Why the flag changed, with the evidence.")
    ts: Timestamp
    actor: str = Field(description="Who decided: 'driftswitch' or the operator's identity.")
    paused: bool = Field(False, description="True while rollout advances are on hold.")
    pinned: Pin | None = Field(
        None,
        description="Set while an operator pins one variant; `variants` then carry the pinned "
        "weights (100 to it), so every consumer serves it without knowing about pins.",
    )

    _ts = field_validator("ts")(_check_seconds)

    def served_weights(self) -> dict[str, int]:
        """Weights with killed variants at zero: what assignment uses."""
        return {n: 0 if v.killed else v.weight for n, v in self.variants.items()}


class AlertEvent(_Event):
    """A guardrail breach that changes no flag state (action ``warn``): for webhooks and on-call.

    Published beside flag changes; ``cause`` carries the same evidence a flag change would.
    """

    model_config = ConfigDict(
        json_schema_extra={"description": "A guardrail breach reported without a flag change."}
    )

    kind: Literal["alert"] = Field("alert", description="Record type.")
    flag: Name = Field(description="The flag whose guardrail fired.")
    guardrail: str = Field(description="The guardrail that fired.")
    variant: str = Field(description="The variant the guardrail watches.")
    cause: Cause = Field(description="The evidence, as in a flag change.")
    ts: Timestamp
    flag_version: int = Field(ge=1, description="The flag state version when the alert was raised.")
    actor: str = Field("driftswitch", description="Who raised it.")

    _ts = field_validator("ts")(_check_seconds)


def _check_size(data: bytes | str) -> None:
    if len(data) > MAX_EVENT_BYTES:
        raise EventError("oversize", f"{len(data)} bytes > limit {MAX_EVENT_BYTES}")


def validation_message(exc: ValidationError) -> str:
    """``path: message; ...`` for a pydantic error (records, control commands, HTTP bodies)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _event_error(exc: ValidationError) -> EventError:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        return EventError("malformed_json", errors[0]["msg"])
    return EventError("schema", validation_message(exc))


def decode_model(model: type[_M], data: bytes | str) -> _M:
    """Decode and validate one JSON record as ``model`` (pydantic parses the JSON itself: one
    pass); ``EventError`` with reason ``oversize``, ``malformed_json`` or ``schema``."""
    _check_size(data)
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise _event_error(exc) from None


def decode_prediction(data: bytes | str) -> PredictionEvent:
    """Decode and validate one prediction record."""
    return decode_model(PredictionEvent, data)


def decode_outcome(data: bytes | str) -> OutcomeEvent:
    """Decode and validate one outcome record."""
    return decode_model(OutcomeEvent, data)


def decode_line(data: bytes | str) -> PredictionEvent | OutcomeEvent:
    """Decode one JSON Lines event: its ``kind`` must be ``prediction`` or ``outcome``."""
    _check_size(data)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EventError("malformed_json", str(exc)) from None
    kind = obj.get("kind") if isinstance(obj, dict) else None
    try:
        if kind == "prediction":
            return PredictionEvent.model_validate(obj)
        if kind == "outcome":
            return OutcomeEvent.model_validate(obj)
    except ValidationError as exc:
        raise _event_error(exc) from None
    raise EventError("schema", f"kind: expected 'prediction' or 'outcome', got {kind!r}")


def encode(event: BaseModel) -> bytes:
    """Serialise an event to compact JSON bytes (what goes on a topic or a JSON Lines file)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))
