"""Event decoding: one pass, typed models, machine-readable rejection reasons."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftswitch.streams.contract.errors import EventError
from driftswitch.streams.contract.events import (
    MAX_EVENT_BYTES,
    Action,
    Cause,
    CauseKind,
    FlagChangeEvent,
    OutcomeEvent,
    PredictionEvent,
    VariantState,
    decode_line,
    decode_outcome,
    decode_prediction,
    encode,
)

PRED = {
    "request_id": "r-1",
    "flag": "ranker",
    "variant": "candidate",
    "ts": 1767225600.5,
    "prediction": 1,
}


def test_prediction_defaults() -> None:
    event = decode_prediction(orjson.dumps(PRED))
    assert event.served is True
    assert event.kind == "prediction"
    assert event.score is None
    assert event.attributes == {}


def test_labels_keep_their_type() -> None:
    """`1`, `"1"`, `true` and `1.0` are different labels; nothing is coerced."""
    for label in (1, "1", True, 1.5):
        outcome = decode_outcome(orjson.dumps({"request_id": "r", "ts": 1.0, "label": label}))
        assert outcome.label == label
        assert type(outcome.label) is type(label)


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (b"{not json", "malformed_json", "Invalid JSON"),
        (b"[1, 2]", "schema", "(record)"),
        (orjson.dumps({**PRED, "ts": 1767225600500}), "schema", "ts: looks like milliseconds"),
        (orjson.dumps({**PRED, "flag": "a b"}), "schema", "flag: String should match pattern"),
        (orjson.dumps({**PRED, "latency_ms": -3}), "schema", "latency_ms: Input should be greater"),
        (orjson.dumps({**PRED, "extra": 1}), "schema", "extra: Extra inputs are not permitted"),
        (orjson.dumps({**PRED, "request_id": ""}), "schema", "request_id: String should have"),
        (b"{" + b" " * MAX_EVENT_BYTES + b"}", "oversize", f"limit {MAX_EVENT_BYTES}"),
        (
            orjson.dumps({k: v for k, v in PRED.items() if k != "prediction"}),
            "schema",
            "prediction: required unless `ranking` is given",
        ),
    ],
    ids=[
        "malformed",
        "not-object",
        "milliseconds",
        "bad-flag",
        "negative-latency",
        "extra",
        "empty-id",
        "oversize",
        "missing-prediction",
    ],
)
def test_rejections_carry_reason_and_detail(data: bytes, reason: str, detail: str) -> None:
    with pytest.raises(EventError) as info:
        decode_prediction(data)
    assert info.value.reason == reason
    assert detail in info.value.detail


def test_nan_is_rejected() -> None:
    with pytest.raises(EventError, match="score"):
        decode_prediction(
            b'{"request_id":"r","flag":"f","variant":"v","ts":1,"prediction":1,"score":NaN}'
        )


def test_decode_line_dispatches_on_kind() -> None:
    assert isinstance(decode_line(orjson.dumps({**PRED, "kind": "prediction"})), PredictionEvent)
    outcome = decode_line(b'{"kind":"outcome","request_id":"r-1","ts":2.0,"label":0}')
    assert isinstance(outcome, OutcomeEvent)
    with pytest.raises(EventError, match=r"kind: required field is missing \('prediction' or"):
        decode_line(orjson.dumps(PRED))
    with pytest.raises(EventError, match="kind: expected 'prediction' or 'outcome', got None"):
        decode_line(orjson.dumps({**PRED, "kind": None}))
    with pytest.raises(EventError) as info:
        decode_line(b"nope")
    assert info.value.reason == "malformed_json"


def _flag_change(version: int = 2) -> FlagChangeEvent:
    return FlagChangeEvent(
        flag="ranker",
        version=version,
        variants={
            "control": VariantState(weight=100, value="v1"),
            "candidate": VariantState(weight=0, killed=True, value={"model": "v2"}),
        },
        default_variant="control",
        cause=Cause(
            kind=CauseKind.DETECTOR,
            action=Action.KILL,
            guardrail="g",
            statistic=12.5,
            threshold=11.0,
            samples={"candidate": 900},
            interval=(-0.2, -0.05),
        ),
        ts=1767225600.0,
        actor="driftswitch",
    )


def test_flag_change_round_trip() -> None:
    event = _flag_change()
    again = FlagChangeEvent.model_validate_json(encode(event))
    assert again == event
    assert again.served_weights() == {"control": 100, "candidate": 0}


@given(
    request_id=st.text(min_size=1, max_size=256),
    ts=st.floats(min_value=0, max_value=9.9e10, allow_nan=False),
    label=st.one_of(
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.text(max_size=20),
        st.floats(min_value=-(2.0**63), max_value=2.0**63),  # every number fits 64 bits
    ),
    served=st.booleans(),
)
def test_encode_decode_round_trip(
    request_id: str, ts: float, label: bool | int | str | float, served: bool
) -> None:
    event = PredictionEvent(
        request_id=request_id, flag="f", variant="v", ts=ts, prediction=label, served=served
    )
    assert decode_prediction(encode(event)) == event
