"""The events driftswitch reads and writes: the stable contract.

Field names here are the contract: fields may be added, none renamed without a schema version bump.
Timestamps are Unix epoch seconds (float); predictions and outcomes may also send ``ts`` as an
RFC 3339 string (``"2026-01-01T00:00:00Z"``), read as epoch seconds, and nothing else (a number in
a string is refused, as the JSON Schemas do). Every number must be finite and fit a signed 64-bit
integer's range (:data:`NUMBER_LIMIT`). Every model forbids unknown fields, so a misspelt field is
reported instead of silently ignored.

Decode once, at the edge, with one decoder: for input records (the live worker and ``backtest``),
:func:`decode_value`, :func:`decode_values` and :func:`decode_lines`; for single documents
:func:`decode_model` (and its short forms
:func:`decode_prediction`, :func:`decode_outcome`; control commands use it too) and, for JSON Lines
files whose records name their ``kind``, :func:`decode_line`. Each is pydantic's validation of the
raw JSON, in one pass, and turns bytes into a model or raises
:class:`~driftswitch.streams.contract.errors.EventError` with a machine-readable ``reason``
(``malformed_json``, ``schema``, ``oversize``), which becomes the dead-letter reason.

The batch decoders are a fast path over the same contract: msgspec reads each record into a
:class:`PredictionStruct` or :class:`OutcomeStruct` (same field names, values and defaults as the
pydantic model) under constraints at least as strict as the model's (flag and variant names
are checked with the model's pattern right after msgspec, once per distinct name); a record it
refuses is handed to the pydantic model, which accepts it (a lax value such as an RFC 3339
``ts``) or words the rejection. The set of accepted documents, the values read and every
rejection's reason and detail are therefore those of the pydantic models, which stay the source
of the JSON Schemas (``tests/unit/test_decoding.py`` checks the equivalence, including mutated
and poisoned documents). The live worker (:mod:`driftswitch.streams.pipeline.ingest`) and
``backtest`` both decode this way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
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
#: Every number in an event fits the range of a signed 64-bit integer (Java's ``long``): finite, of
#: magnitude at most 2^63 (an integer stays an integer from -2^63 to 2^63 - 1). Kafka clients,
#: snapshots and backtest then read the same value, and sums of billions of them stay finite.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NUMBER_LIMIT = 2.0**63
Int64 = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]


def _bounded(value: Any) -> Any:
    """Refuse a number of magnitude above 2^63 before a float type could take it (rounded);
    the comparison is exact, as a JSON Schema validator's is."""
    if type(value) in (int, float) and not -NUMBER_LIMIT <= value <= NUMBER_LIMIT:
        raise ValueError("number outside the range of a signed 64-bit integer (|x| <= 2^63)")
    return value


#: A float (an integer is read as one) in the bounded range; never inf or nan.
Number = Annotated[float, Field(ge=-NUMBER_LIMIT, le=NUMBER_LIMIT), BeforeValidator(_bounded)]
StrictNumber = Annotated[StrictFloat, Field(ge=-NUMBER_LIMIT, le=NUMBER_LIMIT)]
#: A non-negative float in the bounded range.
Duration = Annotated[float, Field(ge=0, le=NUMBER_LIMIT), BeforeValidator(_bounded)]
#: A class label or a numeric value. Strict, so ``1`` and ``"1"`` stay different labels.
Label = Annotated[StrictBool | Int64 | StrictNumber | StrictStr, BeforeValidator(_bounded)]
#: A segment field's value.
Attribute = Annotated[StrictStr | StrictBool | Int64 | StrictNumber, BeforeValidator(_bounded)]
Timestamp = Annotated[
    float,
    Field(
        ge=0,
        description="Unix epoch seconds (float), e.g. 1767225600.25.",
        json_schema_extra={"exclusiveMaximum": 1e11},
    ),
]


#: RFC 3339 ``date-time`` (section 5.6): ``2026-01-01T00:00:00Z``, ``...T01:00:00.25+01:00``.
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_RFC3339 = re.compile(RFC3339_PATTERN.removeprefix("^").removesuffix("$")).fullmatch
_TS_EXPECTED = (
    "expected Unix epoch seconds (a JSON number) or an RFC 3339 timestamp string "
    "such as '2026-01-01T00:00:00Z'"
)


def _event_time(value: Any) -> Any:
    """An event's ``ts``: a JSON number as is, an RFC 3339 string as epoch seconds; nothing
    else (not a number in a string, not a boolean)."""
    if isinstance(value, str):
        if _RFC3339(value) is None:
            raise ValueError(f"{_TS_EXPECTED}, got {value[:40]!r}")
        date, _, rest = value.upper().partition("T")
        clock, zone = (rest[:-1], "+00:00") if rest.endswith("Z") else (rest[:-6], rest[-6:])
        whole, _, fraction = clock.partition(".")
        try:  # fromisoformat takes at most 6 fractional digits
            moment = datetime.fromisoformat(f"{date}T{whole}{zone}")
        except ValueError as err:
            raise ValueError(f"{_TS_EXPECTED}: {err}") from None
        return moment.timestamp() + float(f"0.{fraction or 0}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(_TS_EXPECTED)
    return value


#: The ``ts`` of predictions and outcomes: what producers send (numbers or RFC 3339 strings).
EventTime = Annotated[
    float,
    BeforeValidator(_event_time),
    Field(ge=0),
    WithJsonSchema(
        {
            "description": "Event time: Unix epoch seconds (a number, e.g. 1767225600.25) or an "
            "RFC 3339 timestamp string (e.g. '2026-01-01T00:00:00Z', "
            "'2026-01-01T01:00:00.25+01:00'). Read as epoch seconds.",
            "anyOf": [
                {"type": "number", "minimum": 0, "exclusiveMaximum": 1e11},
                {"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN},
            ],
        }
    ),
]


def _check_seconds(ts: float) -> float:
    # 1e11 s is the year 5138; anything above is almost surely milliseconds or microseconds.
    if ts >= 1e11:
        raise ValueError("looks like milliseconds or finer; send Unix epoch seconds")
    return ts


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


ItemId = Annotated[
    StrictStr, Field(min_length=1, max_length=256, description="An item id (document, product).")
]
#: Longest interleaved list an impression may carry.
MAX_RANKING = 1000


def _one_of_required(*names: str) -> list[JsonValue]:
    """JSON Schema for "at least one of these fields, not null" (what the validators check)."""
    return [{"required": [n], "properties": {n: {"not": {"type": "null"}}}} for n in names]


class Placement(_Event):
    """One position of an interleaved list: the item shown and the team that placed it."""

    item: ItemId
    team: Name = Field(description="The variant whose ranking placed the item (team-draft).")


class PredictionEvent(_Event):
    """One prediction served (or shadowed) by one variant of a model behind a flag.

    An interleaved impression (``ranking`` set) records the merged list a user saw, each position
    with its team; it needs no ``prediction``.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "description": "One prediction by one variant of a flagged model.",
            "anyOf": _one_of_required("prediction", "ranking"),
        }
    )

    kind: Literal["prediction"] = Field(
        "prediction", description="Record type; required in JSON Lines event files."
    )
    request_id: RequestId
    flag: Name = Field(description="The flag the model is served behind.")
    variant: Name = Field(description="The variant that produced this prediction.")
    ts: EventTime
    prediction: Label | None = Field(
        None,
        description="The predicted label (classification) or value; required unless `ranking` "
        "is given.",
    )
    score: Number | None = Field(
        None, description="Probability or confidence of the prediction, if the model has one."
    )
    latency_ms: Duration | None = Field(None, description="Inference latency, milliseconds.")
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
    attributes: dict[str, Attribute] = Field(
        default_factory=dict, description="Segment fields (country, platform, ...)."
    )
    features: dict[str, Number] = Field(
        default_factory=dict, description="Numeric model inputs, for feature drift."
    )
    ranking: list[Placement] | None = Field(
        None,
        min_length=1,
        max_length=MAX_RANKING,
        description="Interleaved impression: the list shown, best position first, each with the "
        "team (variant) that placed it. Clicks come back in an outcome's `clicks`.",
    )

    _ts = field_validator("ts")(_check_seconds)

    @model_validator(mode="after")
    def _prediction_or_ranking(self) -> PredictionEvent:
        if self.prediction is None and self.ranking is None:
            raise ValueError("prediction: required unless `ranking` is given")
        return self


class OutcomeEvent(_Event):
    """The observed truth for one earlier (or later: races happen) prediction."""

    model_config = ConfigDict(
        json_schema_extra={
            "description": "The observed outcome of one prediction.",
            "anyOf": _one_of_required("label", "clicks", "clicked_positions"),
        }
    )

    kind: Literal["outcome"] = Field(
        "outcome", description="Record type; required in JSON Lines event files."
    )
    request_id: RequestId
    ts: EventTime
    label: Label | None = Field(
        None,
        description="The true label (classification) or value (regression); required unless "
        "`clicks` or `clicked_positions` is given.",
    )
    flag: Name | None = Field(None, description="Optional: the flag, if the sender knows it.")
    variant: Name | None = Field(None, description="Optional: the variant, if known.")
    clicks: list[ItemId] | None = Field(
        None,
        max_length=MAX_RANKING,
        description="For an interleaved impression: the item ids clicked (empty: no click).",
    )
    clicked_positions: list[Annotated[int, Field(ge=0, lt=MAX_RANKING)]] | None = Field(
        None,
        max_length=MAX_RANKING,
        description="For an interleaved impression: the 0-based positions clicked.",
    )

    _ts = field_validator("ts")(_check_seconds)

    @model_validator(mode="after")
    def _label_or_clicks(self) -> OutcomeEvent:
        if self.label is None and self.clicks is None and self.clicked_positions is None:
            raise ValueError("label: required unless `clicks` or `clicked_positions` is given")
        return self


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


#: A segment: attribute name -> value, e.g. ``{"region": "jp"}`` (``segment_by:
#: [attributes.region]``).
Segment = dict[str, str]


class SegmentOverride(_Event):
    """A variant taken away from one segment: its users get the default variant.

    ``match`` names the segment; when it is None the override covers everyone outside the
    segments in ``exclude`` (a guardrail's ``other`` bucket). The flagd document and the clients
    apply it ahead of the flag's targeting rule and weights
    (:func:`driftswitch.streams.contract.targeting.served_targeting`).
    """

    variant: str = Field(description="The variant killed in the segment.")
    match: Segment | None = Field(
        description="Attribute name -> value of the segment; null: everyone outside `exclude`."
    )
    exclude: list[Segment] = Field(
        default_factory=list,
        description="With `match` null: the segments the override does not cover.",
    )
    guardrail: str | None = Field(None, description="The guardrail that acted, if any.")


class RolloutGate(_Event):
    """Where a rollout by segment stands: who may get the candidate at all.

    Users in a ``done`` segment get the candidate at ``done_percent`` (the plan's last step);
    users in the ``current`` segment get the flag's weights (the current step); everyone else
    gets ``control``. Conditions are JSON Logic over the evaluation context; a ``current`` of
    null is everyone.
    """

    segment: int = Field(ge=0, description="Index of the current segment in the plan.")
    name: str = Field(description="The current segment's name.")
    candidate: str = Field(description="The variant rolled out.")
    control: str = Field(description="What users outside the reached segments get.")
    current: JsonValue = Field(None, description="The current segment's condition (null: all).")
    done: list[JsonValue] = Field(
        default_factory=list, description="Conditions of the segments already rolled out."
    )
    done_percent: int = Field(ge=0, le=100, description="The candidate's share in those.")


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
    segment: Segment | None = Field(
        None,
        description="The segment a per-segment guardrail or a command acted on "
        "(attribute name -> value; {} for the guardrail's `other` bucket).",
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
    targeting: dict[str, JsonValue] | None = Field(
        None,
        description="The flag's targeting rule in flagd's JSON Logic dialect ($ref expanded): "
        "its result is served when it names a live variant; otherwise the weights decide.",
    )
    segments: list[SegmentOverride] = Field(
        default_factory=list,
        description="Segments where a variant is killed: their users get the default variant, "
        "ahead of `targeting` and the weights.",
    )
    rollout_gate: RolloutGate | None = Field(
        None,
        description="A rollout by segment: which segments may get the candidate, and how much.",
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


#: What the engine publishes: a new flag state, or an alert that changes none.
Output = FlagChangeEvent | AlertEvent


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
        return EventError("malformed_json", _not_json(errors[0]["msg"]))
    return EventError("schema", validation_message(exc))


def decode_model(model: type[_M], data: bytes | str) -> _M:
    """Decode and validate one JSON record as ``model`` (pydantic parses the JSON itself: one
    pass); ``EventError`` with reason ``oversize``, ``malformed_json`` or ``schema``."""
    _check_size(data)
    try:
        return model.__pydantic_validator__.validate_json(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise _event_error(exc) from None


def decode_prediction(data: bytes | str) -> PredictionEvent:
    """Decode and validate one prediction record."""
    return decode_model(PredictionEvent, data)


def decode_outcome(data: bytes | str) -> OutcomeEvent:
    """Decode and validate one outcome record."""
    return decode_model(OutcomeEvent, data)


#: A JSON Lines event: the ``kind`` field picks the model.
_LINE: TypeAdapter[PredictionEvent | OutcomeEvent] = TypeAdapter(
    Annotated[PredictionEvent | OutcomeEvent, Field(discriminator="kind")]
)


def decode_line(data: bytes | str) -> PredictionEvent | OutcomeEvent:
    """Decode one JSON Lines event: its ``kind`` must be ``prediction`` or ``outcome``.

    One pass of pydantic over the raw JSON; a line it rejects is parsed again to word the
    rejection as :func:`decode_prediction` or :func:`decode_outcome` would (field paths without
    the ``kind`` tag, and a missing or unknown ``kind`` named as such).
    """
    _check_size(data)
    try:
        return _LINE.validate_json(data)
    except ValidationError:
        return _line_rejection(data)


def _line_rejection(data: bytes | str) -> PredictionEvent | OutcomeEvent:
    """The reason a JSON Lines event is rejected (``EventError``), worded per model."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EventError("malformed_json", _not_json(str(exc))) from None
    if not isinstance(obj, dict):
        raise EventError("schema", f"expected a JSON object, got {_json_kind(obj)}")
    kind = obj.get("kind")
    # Validated from the JSON text, not from orjson's objects: orjson reads an integer beyond
    # 64 bits as a rounded float, which could pass the range check it should fail.
    if kind == "prediction":
        return decode_model(PredictionEvent, data)
    if kind == "outcome":
        return decode_model(OutcomeEvent, data)
    if "kind" not in obj:
        raise EventError("schema", "kind: required field is missing ('prediction' or 'outcome')")
    raise EventError("schema", f"kind: expected 'prediction' or 'outcome', got {kind!r}")


def _not_json(parser_message: str) -> str:
    """The JSON parser's words (``invalid literal, expected 'null'``) say little on their own."""
    return f"not valid JSON: {parser_message}"


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number"


# -- the batch fast path ---------------------------------------------------------------------

#: Floats the fast path accepts: well inside the contract's 2^63, so a float it accepts is exactly
#: one the model accepts (an integer literal rounds to the same float in both); larger magnitudes
#: go to the model, which applies the exact limit.
_FAST_FLOAT_LIMIT = 2.0**53
_FastName = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN.removesuffix("$") + r"\Z")]
_FastInt = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
_FastNumber = Annotated[float, msgspec.Meta(ge=-_FAST_FLOAT_LIMIT, le=_FAST_FLOAT_LIMIT)]
_FastDuration = Annotated[float, msgspec.Meta(ge=0, le=_FAST_FLOAT_LIMIT)]
_FastLabel = bool | _FastInt | _FastNumber | str
_FastTime = Annotated[float, msgspec.Meta(ge=0, lt=1e11)]
_FastRequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_FastItemId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class PlacementStruct(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """:class:`Placement` as the batch decoders read it."""

    item: _FastItemId
    team: _FastName


class PredictionStruct(
    msgspec.Struct,
    frozen=True,
    gc=False,
    forbid_unknown_fields=True,
    tag="prediction",
    tag_field="kind",
):
    """:class:`PredictionEvent` as the batch decoders read it: same fields, values, defaults."""

    kind: ClassVar[str] = "prediction"
    request_id: _FastRequestId
    flag: str  # a name: checked after decoding (_names_ok), not per record by msgspec
    variant: str
    ts: _FastTime
    prediction: _FastLabel | None = None
    score: _FastNumber | None = None
    latency_ms: _FastDuration | None = None
    error: str | None = None
    served: bool = True
    subject: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    model_version: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    attributes: dict[str, str | bool | _FastInt | _FastNumber] = {}
    features: dict[str, _FastNumber] = {}
    ranking: (
        Annotated[list[PlacementStruct], msgspec.Meta(min_length=1, max_length=MAX_RANKING)] | None
    ) = None

    def __post_init__(self) -> None:
        if self.prediction is None and self.ranking is None:
            raise ValueError("prediction or ranking required")  # the model words it


class OutcomeStruct(
    msgspec.Struct,
    frozen=True,
    gc=False,
    forbid_unknown_fields=True,
    tag="outcome",
    tag_field="kind",
):
    """:class:`OutcomeEvent` as the batch decoders read it: same fields, values, defaults."""

    kind: ClassVar[str] = "outcome"
    request_id: _FastRequestId
    ts: _FastTime
    label: _FastLabel | None = None
    flag: str | None = None  # names: checked after decoding (_names_ok)
    variant: str | None = None
    clicks: Annotated[list[_FastItemId], msgspec.Meta(max_length=MAX_RANKING)] | None = None
    clicked_positions: (
        Annotated[
            list[Annotated[int, msgspec.Meta(ge=0, lt=MAX_RANKING)]],
            msgspec.Meta(max_length=MAX_RANKING),
        ]
        | None
    ) = None

    def __post_init__(self) -> None:
        if self.label is None and self.clicks is None and self.clicked_positions is None:
            raise ValueError("label or clicks required")  # the model words it


#: A decoded input event, as the engine reads it (either form has the same attributes).
AnyPrediction = PredictionEvent | PredictionStruct
AnyOutcome = OutcomeEvent | OutcomeStruct
InputEvent = AnyPrediction | AnyOutcome
Decoded = PredictionStruct | OutcomeStruct

_FAST_PREDICTION = msgspec.json.Decoder(PredictionStruct)
_FAST_OUTCOME = msgspec.json.Decoder(OutcomeStruct)
_FAST_LINE = msgspec.json.Decoder(PredictionStruct | OutcomeStruct)
_FastError = (msgspec.ValidationError, msgspec.DecodeError)


def to_struct(event: PredictionEvent | OutcomeEvent) -> Decoded:
    """The struct form of a validated event (no second validation: the model has done it)."""
    if isinstance(event, PredictionEvent):
        ranking = event.ranking
        return PredictionStruct(
            request_id=event.request_id,
            flag=event.flag,
            variant=event.variant,
            ts=event.ts,
            prediction=event.prediction,
            score=event.score,
            latency_ms=event.latency_ms,
            error=event.error,
            served=event.served,
            subject=event.subject,
            model_version=event.model_version,
            attributes=dict(event.attributes),
            features=dict(event.features),
            ranking=None
            if ranking is None
            else [PlacementStruct(item=p.item, team=p.team) for p in ranking],
        )
    return OutcomeStruct(
        request_id=event.request_id,
        ts=event.ts,
        label=event.label,
        flag=event.flag,
        variant=event.variant,
        clicks=None if event.clicks is None else list(event.clicks),
        clicked_positions=None
        if event.clicked_positions is None
        else list(event.clicked_positions),
    )


#: The same test as ``_FastName``'s pattern (msgspec's ``pattern`` is ``re.search``).
_NAME = re.compile(NAME_PATTERN.removesuffix("$") + r"\Z").search
#: Names that passed :data:`_NAME`, so that a batch checks each distinct name once; bounded (a
#: stream of ever new names is checked one by one once it is full).
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 4096
_FLAG = attrgetter("flag")
_VARIANT = attrgetter("variant")


def _good_name(name: str | None) -> bool:
    """Whether ``name`` (a flag or variant of a decoded record) is absent or a valid name."""
    if name is None or name in _GOOD_NAMES:
        return True
    if _NAME(name) is None:
        return False
    if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
        _GOOD_NAMES.add(name)
    return True


def decode_value(value: bytes, prediction: bool) -> Decoded:
    """Decode one input record of the kind its topic decides (``kind`` may be left out): the
    event, or the ``EventError`` :func:`decode_prediction` / :func:`decode_outcome` raises."""
    if len(value) <= MAX_EVENT_BYTES:
        try:
            event = (_FAST_PREDICTION if prediction else _FAST_OUTCOME).decode(value)
        except _FastError:
            pass
        else:
            if _good_name(event.flag) and _good_name(event.variant):
                return event
    if prediction:
        return to_struct(decode_model(PredictionEvent, value))
    return to_struct(decode_model(OutcomeEvent, value))


def decode_values(values: Sequence[bytes], prediction: bool) -> list[Decoded] | None:
    """:func:`decode_value` of every record of one input topic, in one call: msgspec over all of
    them (no Python loop), then the distinct flag and variant names checked once each. ``None``
    if msgspec refuses any of them, or a name fails: the caller then decodes them one by one,
    and :func:`decode_value` gives each refused record its model's verdict."""
    if not values or max(map(len, values)) > MAX_EVENT_BYTES:
        return None
    try:
        events: list[Decoded] = list(
            map((_FAST_PREDICTION if prediction else _FAST_OUTCOME).decode, values)
        )
    except _FastError:
        return None
    names = set(map(_FLAG, events))
    names.update(map(_VARIANT, events))
    names.discard(None)
    if names <= _GOOD_NAMES or all(map(_good_name, names)):
        return events
    return None


def decode_lines(lines: Sequence[bytes]) -> list[Decoded | EventError]:
    """Decode JSON Lines events (``kind`` required), in order: each an event, or the
    ``EventError`` :func:`decode_line` would raise for it.

    Each line is decoded on its own: lines joined into one JSON array could pair the halves of
    two invalid lines into valid documents. A batch of valid lines (the usual case) is decoded
    without a Python loop: msgspec over all of them, then the distinct flag and variant names
    checked once each; a batch with any line msgspec refuses goes line by line."""
    if lines and max(map(len, lines)) <= MAX_EVENT_BYTES:
        try:
            events: list[Decoded | EventError] = list(map(_FAST_LINE.decode, lines))
        except _FastError:
            pass
        else:
            names = set(map(_FLAG, events))
            names.update(map(_VARIANT, events))
            names.discard(None)
            if names <= _GOOD_NAMES or all(map(_good_name, names)):
                return events
    return [_decode_one(line) for line in lines]


def _decode_one(line: bytes) -> Decoded | EventError:
    if len(line) <= MAX_EVENT_BYTES:
        try:
            event = _FAST_LINE.decode(line)
        except _FastError:
            pass
        else:
            if _good_name(event.flag) and _good_name(event.variant):
                return event
    try:
        return to_struct(decode_line(line))
    except EventError as exc:
        return exc.with_traceback(None)


def encode(event: BaseModel) -> bytes:
    """Serialise an event to compact JSON bytes (what goes on a topic or a JSON Lines file)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))
