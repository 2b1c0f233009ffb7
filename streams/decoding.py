"""A validated fast path for decoding JSON Lines events, with the same results as pydantic.

:func:`driftswitch.streams.events.decode_line` spends several microseconds per event in
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

from driftswitch.streams.errors import EventError
from driftswitch.streams.events import (
    MAX_EVENT_BYTES,
    NAME_PATTERN,
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


def _is_float(x: object) -> bool:
    """A JSON number pydantic's lax ``float`` keeps as is, or converts from int."""
    t = type(x)
    return t is float or t is int


def _is_label(x: object) -> bool:
    t = type(x)
    return t is str or t is float or t is int or t is bool


def _prediction(obj: dict[str, Any]) -> PredictionEvent | None:
    """The event if ``obj`` has the canonical shape, else None (let pydantic decide)."""
    if not _PREDICTION_FIELDS.issuperset(obj):
        return None
    try:
        rid = obj["request_id"]
        flag = obj["flag"]
        variant = obj["variant"]
        ts = obj["ts"]
        prediction = obj["prediction"]
    except KeyError:
        return None
    if (
        type(rid) is not str
        or not 0 < len(rid) <= 256
        or not _good_name(flag)
        or not _good_name(variant)
        or (type(ts) is not float and type(ts) is not int)
        or not 0 <= ts < _TS_LIMIT
        or not _is_label(prediction)
    ):
        return None
    score = obj.get("score")
    latency = obj.get("latency_ms")
    error = obj.get("error")
    served = obj.get("served", True)
    subject = obj.get("subject")
    model_version = obj.get("model_version")
    attributes = obj.get("attributes", {})
    features = obj.get("features", {})
    if (
        (score is not None and not _is_float(score))
        or (latency is not None and (not _is_float(latency) or latency < 0))
        or (error is not None and type(error) is not str)
        or type(served) is not bool
        or (subject is not None and (type(subject) is not str or len(subject) > 256))
        or (
            model_version is not None
            and (type(model_version) is not str or len(model_version) > 128)
        )
        or type(attributes) is not dict
        or type(features) is not dict
    ):
        return None
    if attributes:
        if not all(_is_label(v) for v in attributes.values()):
            return None
        attributes = dict(attributes)
    else:
        attributes = {}
    if features:
        if not all(_is_float(v) for v in features.values()):
            return None
        features = {k: float(v) for k, v in features.items()}
    else:
        features = {}
    values = {
        "kind": "prediction",
        "request_id": rid,
        "flag": flag,
        "variant": variant,
        "ts": float(ts),
        "prediction": prediction,
        "score": None if score is None else float(score),
        "latency_ms": None if latency is None else float(latency),
        "error": error,
        "served": served,
        "subject": subject,
        "model_version": model_version,
        "attributes": attributes,
        "features": features,
    }
    return _build(PredictionEvent, values, set(obj))


def _outcome(obj: dict[str, Any]) -> OutcomeEvent | None:
    """The event if ``obj`` has the canonical shape, else None (let pydantic decide)."""
    if not _OUTCOME_FIELDS.issuperset(obj):
        return None
    try:
        rid = obj["request_id"]
        ts = obj["ts"]
        label = obj["label"]
    except KeyError:
        return None
    flag = obj.get("flag")
    variant = obj.get("variant")
    if (
        type(rid) is not str
        or not 0 < len(rid) <= 256
        or (type(ts) is not float and type(ts) is not int)
        or not 0 <= ts < _TS_LIMIT
        or not _is_label(label)
        or (flag is not None and not _good_name(flag))
        or (variant is not None and not _good_name(variant))
    ):
        return None
    values = {
        "kind": "outcome",
        "request_id": rid,
        "ts": float(ts),
        "label": label,
        "flag": flag,
        "variant": variant,
    }
    return _build(OutcomeEvent, values, set(obj))


def decode_event(line: bytes | str) -> Event:
    """Decode one JSON Lines event: the same result, or the same ``EventError``, as
    :func:`~driftswitch.streams.events.decode_line`."""
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
            if event is not None:
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
