"""``decode_line`` (one pydantic pass over the raw JSON, a union on ``kind``) agrees with the
model of that kind validating the same JSON text, on valid, lax and invalid input: the same
events, or the same reason and detail."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftswitch.streams.contract import events
from driftswitch.streams.contract.errors import EventError
from driftswitch.streams.contract.events import (
    MAX_EVENT_BYTES,
    decode_line,
    encode,
)
from driftswitch.streams.pipeline.backtest import decode_chunk
from driftswitch.streams.tools.simulate import Scenario, simulate


def _reference(line: bytes | str) -> Any:
    """The per-model path: the line parsed for its ``kind``, then that model validating the JSON
    text (what ``decode_line`` falls back to only to word a rejection)."""
    try:
        events._check_size(line)
        return events._line_rejection(line)
    except EventError as exc:
        return exc


def decode_events(lines: list[bytes | str]) -> list[Any]:
    out: list[Any] = []
    for line in lines:
        try:
            out.append(decode_line(line))
        except EventError as exc:
            out.append(exc)
    return out


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, EventError):
        return isinstance(got, EventError) and (got.reason, got.detail) == (
            want.reason,
            want.detail,
        )
    return (
        type(got) is type(want)
        and got == want
        and got.model_fields_set == want.model_fields_set
        and got.model_dump() == want.model_dump()
    )


def _agrees(lines: list[bytes | str]) -> None:
    got = decode_events(lines)
    want = [_reference(line) for line in lines]
    assert len(got) == len(want)
    for line, g, w in zip(lines, got, want, strict=True):
        assert _same(g, w), (line, g, w)


VALID = [encode(e) for e in simulate(Scenario(requests=200, seed=5))]
INVALID: list[bytes | str] = [
    b"{not json",
    b"[1, 2]",
    b"42",
    b'{"kind": "prediction"}',
    b'{"kind": "alert", "request_id": "r", "ts": 1}',
    b'{"request_id": "r", "ts": 1, "label": 1}',  # no kind
    b'{"kind": "outcome", "request_id": "r", "ts": 1, "label": {"x": 1}}',
    b'{"kind": "outcome", "request_id": "", "ts": 1, "label": 1}',
    b'{"kind": "outcome", "request_id": "r", "ts": 1767225600000, "label": 1}',  # milliseconds
    b'{"kind": "outcome", "request_id": "r", "ts": -1, "label": 1}',
    b'{"kind": "outcome", "request_id": "r", "ts": 1, "label": 1, "extra": 2}',
    b'{"kind": "prediction", "request_id": "r", "flag": "bad flag", "variant": "v", "ts": 1,'
    b' "prediction": 1}',
    b'{"kind": "prediction", "request_id": "r", "flag": "f", "variant": "v", "ts": 1,'
    b' "prediction": 1, "latency_ms": -3}',
    b'{"kind": "prediction", "request_id": "r", "flag": "f", "variant": "v", "ts": 1,'
    b' "prediction": 1, "features": {"a": "x"}}',
    # A number in a string is not a timestamp (the JSON Schema says so too); RFC 3339 is.
    b'{"kind": "prediction", "request_id": "r", "flag": "f", "variant": "v", "ts": "1",'
    b' "prediction": 1}',
    b'{"kind": "outcome", "request_id": "r", "ts": 1, "label": 1, "pad": "'
    + b"x" * MAX_EVENT_BYTES
    + b'"}',
]
# Lax values pydantic accepts and converts: the bulk path must convert them identically.
LAX = [
    b'{"kind": "prediction", "request_id": "r", "flag": "f", "variant": "v",'
    b' "ts": "2026-01-01T00:00:00Z", "prediction": 1}',
    b'{"kind": "prediction", "request_id": "r", "flag": "f", "variant": "v", "ts": 1,'
    b' "prediction": 1, "served": "no"}',
    b'{"kind": "prediction", "request_id": "r", "flag": "f", "variant": "v", "ts": 1,'
    b' "prediction": true, "served": false, "score": 1, "features": {"a": 2}}',
    b'{"kind": "outcome", "request_id": "r", "ts": 5, "label": "x", "flag": "f"}',
    '{"kind": "outcome", "request_id": "ré", "ts": 5.5, "label": 2.5}',
]


def test_valid_events_decode_identically() -> None:
    _agrees(list(VALID))


def test_each_invalid_line_gets_the_same_reason_and_detail() -> None:
    for line in INVALID:
        _agrees([line])


def test_a_bad_line_in_a_chunk_leaves_the_others_decoded() -> None:
    lines: list[bytes | str] = [*VALID[:50], *INVALID, *VALID[50:100], *LAX]
    _agrees(lines)
    got = decode_events(lines)
    assert sum(isinstance(g, EventError) for g in got) == len(INVALID)


def test_lax_values_convert_the_same_way() -> None:
    _agrees(list(LAX))


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 2 * 10**11),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["f", "candidate", "x y", "r1"]),
    st.dictionaries(
        st.text(max_size=3),
        st.one_of(st.integers(-(10**6), 10**6), st.text(max_size=3)),
        max_size=2,
    ),
)
_fields = st.sampled_from(
    [
        "request_id",
        "flag",
        "variant",
        "ts",
        "prediction",
        "label",
        "score",
        "latency_ms",
        "error",
        "served",
        "subject",
        "features",
        "attributes",
        "kind",
        "unknown",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["prediction", "outcome"]),
    base=st.integers(0, len(VALID) - 1),
    changes=st.dictionaries(_fields, _values, max_size=3),
    drop=st.lists(_fields, max_size=2),
)
def test_mutated_events_agree(
    kind: str, base: int, changes: dict[str, Any], drop: list[str]
) -> None:
    doc = orjson.loads(VALID[base])
    doc["kind"] = kind
    doc.update(changes)
    for name in drop:
        doc.pop(name, None)
    _agrees([orjson.dumps(doc), VALID[0]])


def test_valid_events_take_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(line: bytes | str) -> Any:
        raise AssertionError(f"second pass used for {line!r}")

    monkeypatch.setattr(events, "_line_rejection", refuse)
    assert all(not isinstance(e, EventError) for e in decode_events(list(VALID)))


def test_decode_chunk_splits_events_from_rejected_lines() -> None:
    lines = [VALID[0], INVALID[0], VALID[1], INVALID[3]]
    decoded, errors = decode_chunk(lines)
    assert decoded == [decode_line(VALID[0]), decode_line(VALID[1])]
    assert [(i, e.reason) for i, e in errors] == [(1, "malformed_json"), (3, "schema")]
