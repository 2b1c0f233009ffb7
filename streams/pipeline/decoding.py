"""A validated fast path for decoding JSON Lines events, with the same results as pydantic.

:func:`driftswitch.streams.contract.events.decode_line` spends several microseconds per event in
pydantic's validation, more than ``backtest``'s budget of 10 µs per event for everything. This
module parses each line with orjson, checks the *canonical* shape of an event in plain Python —
known fields with exactly their JSON types, values in range, which is what producers following
``schemas/`` send — and builds the model instance without validating it again. Anything outside
that shape (a field pydantic would coerce, such as ``"served": "no"``, a wrong type, an unknown
field, a value out of range, an oversize line, bad JSON) goes to ``decode_line`` itself, so every
line is accepted with identical field values, or rejected with the identical reason and detail, as
the pydantic models would do. ``tests/unit/test_decoding.py`` checks that agreement on valid, lax
and invalid input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from driftswitch.streams.contract.errors import EventError
from driftswitch.streams.contract.events import (
    INT64_MAX,
    INT64_MIN,
    MAX_EVENT_BYTES,
    NAME_PATTERN,
    NUMBER_LIMIT,
    OutcomeEvent,
    PredictionEvent,
    decode_line,
)

Event = PredictionEvent | OutcomeEvent

# fullmatch without the anchors: Python's ``$`` would also match before a trailing newline.
_NAME = re.compile(NAME_PATTERN.removeprefix("^").removesuffix("$")).fullmatch
_PREDICTION_FIELDS = frozenset(PredictionEvent.model_fields)
_OUTCOME_FIELDS = frozenset(OutcomeEvent.model_fields)
#: Timestamps at or above this are rejected as milliseconds (``events._check_seconds``).
_TS_LIMIT = 1e11
_M = TypeVar("_M", bound=BaseModel)
_new = object.__new__
_set = object.__setattr__
#: Names already checked against ``NAME_PATTERN`` (flags and variants repeat on every event);
#: bounded so that hostile input cannot grow it without limit.
_GOOD_NAMES: dict[str, bool] = {}
_MAX_GOOD_NAMES = 4096


def _good_name(name: object) -> bool:
    if type(name) is not str:
        return False
    known = _GOOD_NAMES.get(name)
    if known is None:
        known = _NAME(name) is not None
        if len(_GOOD_NAMES) < _MAX_GOOD_NAMES:
            _GOOD_NAMES[name] = known
    return known


def _build(cls: type[_M], values: dict[str, Any], given: set[str]) -> _M:
    """A model instance holding already-validated values, as pydantic would have stored them."""
    obj: _M = _new(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", given)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def _is_label(x: object) -> bool:
    t = type(x)
    return t is str or t is float or t is int or t is bool


#: Every field with its default, in declaration order: ``{**defaults, **obj}`` is the model's
#: ``__dict__`` in one C-level merge (the mutable defaults are replaced per event below).
_PREDICTION_DEFAULTS: dict[str, Any] = {
    name: field.get_default(call_default_factory=True)
    for name, field in PredictionEvent.model_fields.items()
}
_OUTCOME_DEFAULTS: dict[str, Any] = {
    name: field.get_default(call_default_factory=True)
    for name, field in OutcomeEvent.model_fields.items()
}
_REQUIRED_PREDICTION = ("request_id", "flag", "variant", "ts", "prediction")
_REQUIRED_OUTCOME = ("request_id", "ts", "label")


def _prediction(obj: dict[str, Any]) -> PredictionEvent | None:
    """The event if ``obj`` has the canonical shape, else None (let pydantic decide)."""
    if not _PREDICTION_FIELDS.issuperset(obj):
        return None
    for name in _REQUIRED_PREDICTION:
        if name not in obj:
            return None
    values = {**_PREDICTION_DEFAULTS, **obj}
    rid = values["request_id"]
    ts = values["ts"]
    score = values["score"]
    latency = values["latency_ms"]
    subject = values["subject"]
    model_version = values["model_version"]
    attributes = values["attributes"]
    features = values["features"]
    if (
        type(rid) is not str
        or not 0 < len(rid) <= 256
        or not _good_name(values["flag"])
        or not _good_name(values["variant"])
        or (type(ts) is not float and type(ts) is not int)
        or not 0 <= ts < _TS_LIMIT
        or not _is_label(values["prediction"])
        or (score is not None and type(score) is not float and type(score) is not int)
        or (
            latency is not None
            and ((type(latency) is not float and type(latency) is not int) or latency < 0)
        )
        or (values["error"] is not None and type(values["error"]) is not str)
        or type(values["served"]) is not bool
        or (subject is not None and (type(subject) is not str or len(subject) > 256))
        or (
            model_version is not None
            and (type(model_version) is not str or len(model_version) > 128)
        )
        or type(attributes) is not dict
        or type(features) is not dict
    ):
        return None
    if type(ts) is int:
        values["ts"] = float(ts)
    if type(score) is int:
        values["score"] = float(score)
    if type(latency) is int:
        values["latency_ms"] = float(latency)
    if attributes:
        for v in attributes.values():
            if not _is_label(v):
                return None
        values["attributes"] = dict(attributes)
    else:
        values["attributes"] = {}
    if features:
        for v in features.values():
            if type(v) is not float and type(v) is not int:
                return None
        values["features"] = {k: float(v) for k, v in features.items()}
    else:
        values["features"] = {}
    return _build(PredictionEvent, values, set(obj))


def _outcome(obj: dict[str, Any]) -> OutcomeEvent | None:
    """The event if ``obj`` has the canonical shape, else None (let pydantic decide)."""
    if not _OUTCOME_FIELDS.issuperset(obj):
        return None
    for name in _REQUIRED_OUTCOME:
        if name not in obj:
            return None
    values = {**_OUTCOME_DEFAULTS, **obj}
    rid = values["request_id"]
    ts = values["ts"]
    flag = values["flag"]
    variant = values["variant"]
    if (
        type(rid) is not str
        or not 0 < len(rid) <= 256
        or (type(ts) is not float and type(ts) is not int)
        or not 0 <= ts < _TS_LIMIT
        or not _is_label(values["label"])
        or (flag is not None and not _good_name(flag))
        or (variant is not None and not _good_name(variant))
    ):
        return None
    if type(ts) is int:
        values["ts"] = float(ts)
    return _build(OutcomeEvent, values, set(obj))


def _out_of_range(x: object) -> bool:
    t = type(x)
    if t is int:
        return not INT64_MIN <= x <= INT64_MAX  # type: ignore[operator]
    # Strict: orjson reads an integer just beyond 64 bits as the float ±2^63, so the bound
    # itself is left to pydantic, which reads the JSON text exactly.
    return t is float and not -NUMBER_LIMIT < x < NUMBER_LIMIT  # type: ignore[operator]


def _numbers_in_range(obj: dict[str, Any]) -> bool:
    """Every number of a canonical event within the contract's bounds (64-bit, finite): else
    pydantic decides, and words the error."""
    for value in obj.values():
        if type(value) is dict:
            for inner in value.values():
                if _out_of_range(inner):
                    return False
        elif _out_of_range(value):
            return False
    return True


def decode_event(line: bytes | str) -> Event:
    """Decode one JSON Lines event: the same result, or the same ``EventError``, as
    :func:`~driftswitch.streams.contract.events.decode_line`."""
    if len(line) <= MAX_EVENT_BYTES:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is dict:
            kind = obj.get("kind")
            event: Event | None = None
            if kind == "prediction":
                event = _prediction(obj)
            elif kind == "outcome":
                event = _outcome(obj)
            if event is not None and _numbers_in_range(obj):
                return event
    return decode_line(line)  # not canonical: pydantic decides, and words the error


def decode_events(lines: Iterable[bytes | str]) -> list[Event | EventError]:
    """Decode many lines: each an event, or the ``EventError`` that rejects it."""
    out: list[Event | EventError] = []
    append = out.append
    for line in lines:
        try:
            append(decode_event(line))
        except EventError as exc:
            append(exc.with_traceback(None))  # keep no frames alive through the list
    return out


def decode_chunk(lines: Sequence[bytes | str]) -> tuple[list[Event], list[tuple[int, EventError]]]:
    """Decode many lines into the events (in order) and the rejected lines' ``(index, error)``.

    The shape a batch consumer wants: the events go straight to ``Engine.process``.
    """
    events: list[Event] = []
    errors: list[tuple[int, EventError]] = []
    append = events.append
    for i, line in enumerate(lines):
        try:
            append(decode_event(line))
        except EventError as exc:
            errors.append((i, exc.with_traceback(None)))
    return events, errors
