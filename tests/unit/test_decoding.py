"""``decode_line`` (one pydantic pass over the raw JSON, a union on ``kind``) agrees with the
model of that kind validating the same JSON text, on valid, lax and invalid input: the same
events, or the same reason and detail.

The batch decoders the worker and ``backtest`` use (``decode_lines``, ``decode_value``: msgspec's
fast path, the model deciding what it refuses) agree with the models too: the same documents
accepted, the same values of the same types, the same reason and detail for every rejection —
on valid, lax, invalid, mutated and poisoned documents."""

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
    OutcomeEvent,
    OutcomeStruct,
    PredictionEvent,
    PredictionStruct,
    decode_line,
    decode_lines,
    decode_model,
    decode_value,
    encode,
    to_struct,
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
    assert decoded == [to_struct(decode_line(VALID[0])), to_struct(decode_line(VALID[1]))]
    assert [(i, e.reason) for i, e in errors] == [(1, "malformed_json"), (3, "schema")]


# -- the batch fast path -------------------------------------------------------------------------


def _typed_equal(a: Any, b: Any) -> bool:
    """Equal values of the same types all the way down (``1 == 1.0 == True`` does not count)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_typed_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_typed_equal(a[k], b[k]) for k in a)
    if hasattr(a, "item") and hasattr(b, "team"):  # a placement, struct or model
        return (a.item, a.team) == (b.item, b.team)
    return type(a) is type(b) and a == b


def _fast_agrees(got: Any, want: Any) -> bool:
    """``got`` (batch decoder) says what ``want`` (the model) says about one document."""
    if isinstance(want, EventError):
        return isinstance(got, EventError) and (got.reason, got.detail) == (
            want.reason,
            want.detail,
        )
    struct = PredictionStruct if isinstance(want, PredictionEvent) else OutcomeStruct
    return type(got) is struct and all(
        _typed_equal(getattr(got, name), getattr(want, name))
        for name in type(want).model_fields
        if name != "kind"
    )


def _model_value(value: bytes, prediction: bool) -> Any:
    try:
        return decode_model(PredictionEvent if prediction else OutcomeEvent, value)
    except EventError as exc:
        return exc


def _fast_value(value: bytes, prediction: bool) -> Any:
    try:
        return decode_value(value, prediction)
    except EventError as exc:
        return exc


def _fast_agree_all(lines: list[bytes]) -> None:
    """Every line through ``decode_lines`` (as one batch) and, without its ``kind``, through
    ``decode_value`` for both topics, against the models."""
    got = decode_lines(lines)
    assert len(got) == len(lines)
    for line, g in zip(lines, got, strict=True):
        assert _fast_agrees(g, _reference(line)), (line, g, _reference(line))
        for prediction in (True, False):
            want = _model_value(line, prediction)
            assert _fast_agrees(_fast_value(line, prediction), want), (line, prediction, want)


def _numbers_at(template: bytes) -> list[bytes]:
    return [template.replace(b"@", token) for token in POISON_TOKENS]


#: Number tokens at and beyond every limit: 64-bit integers and beyond, huge and tiny floats,
#: the non-JSON tokens some encoders write, and integers that round as floats.
POISON_TOKENS = [
    b"18446744073709551617",  # > 2^64
    b"-18446744073709551617",
    b"9223372036854775807",  # 2^63 - 1
    b"9223372036854775808",  # 2^63
    b"9223372036854775809",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"9007199254740993",  # 2^53 + 1
    b"9007199254740993.0",
    b"1e308",
    b"-1e308",
    b"1e400",
    b"1e-400",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1.0",
    b"-0",
    b"0",
    b"1E2",
    b"99999999999",
    b"100000000000",
    b"1767225600000",
    b"true",
    b'"1"',
    b"null",
    b"[]",
    b"{}",
]
_PRED = b'{"kind":"prediction","request_id":"r","flag":"f","variant":"v","ts":1,"prediction":1'
_OUT = b'{"kind":"outcome","request_id":"r","ts":1,"label":1'
POISON: list[bytes] = [
    *_numbers_at(_PRED + b',"score":@}'),
    *_numbers_at(_PRED + b',"latency_ms":@}'),
    *_numbers_at(_PRED + b',"features":{"a":@}}'),
    *_numbers_at(_PRED + b',"attributes":{"a":@}}'),
    *_numbers_at(_PRED.replace(b'"prediction":1', b'"prediction":@') + b"}"),
    *_numbers_at(_PRED.replace(b'"ts":1', b'"ts":@') + b"}"),
    *_numbers_at(_OUT.replace(b'"label":1', b'"label":@') + b"}"),
    *_numbers_at(_OUT + b',"clicked_positions":[@]}'),
    _PRED + b',"ts":"2026-01-01T00:00:00Z"}',  # duplicate key: the last one counts
    _PRED + b',"ts":-1}',
    _PRED + b',"ts":"bad","ts":2}',
    _OUT + b',"kind":"prediction"}',
    _PRED.replace(b'"r"', b'"\\ud800"') + b"}",  # a lone surrogate
    _PRED.replace(b'"r"', b'"\\ud83d\\ude00"') + b"}",
    _PRED.replace(b'"r"', b'"\\u0000"') + b"}",
    _PRED.replace(b'"r"', b'"r\xff"') + b"}",  # not UTF-8
    _PRED.replace(b'"f"', b'"f\\n"') + b"}",  # a name pattern's end is the end of the text
    _PRED.replace(b'"f"', b'"\xc3\xa9"') + b"}",
    _PRED.replace(b'"r"', b'"' + b"x" * 257 + b'"') + b"}",
    _PRED + b"} ",
    _PRED + b"}\n",
    _PRED + b"}x",
    _PRED + b"}{}",
    b"\xef\xbb\xbf" + _PRED + b"}",  # a byte order mark
    _PRED + b',"ranking":[]}',
    _PRED + b',"ranking":[{"item":"a","team":"v"}]}',
    _PRED + b',"ranking":[{"item":"a","team":"v","x":1}]}',
    _PRED.replace(b',"prediction":1', b"") + b',"ranking":[{"item":"","team":"v"}]}',
    _PRED + b',"served":1}',
    _PRED + b',"served":"true"}',
    _OUT.replace(b',"label":1', b"") + b',"clicks":[]}',
    _OUT.replace(b',"label":1', b"") + b',"clicks":["a",1]}',
    _OUT.replace(b',"label":1', b"") + b',"clicked_positions":[1000]}',
    _OUT + b',"flag":null,"variant":null}',
    _OUT + b',"label":null}',
    _OUT + b',"pad":"' + b"x" * MAX_EVENT_BYTES + b'"}',
]


def test_fast_path_agrees_on_valid_lax_and_invalid_documents() -> None:
    _fast_agree_all([*VALID, *(x.encode() if isinstance(x, str) else x for x in INVALID + LAX)])


def test_fast_path_agrees_on_poisoned_documents() -> None:
    _fast_agree_all(POISON)
    accepted = [g for g in decode_lines(POISON) if not isinstance(g, EventError)]
    rejected = len(POISON) - len(accepted)
    assert accepted, "no poisoned document is valid"
    assert rejected, "every poisoned document is valid"


def test_fast_path_takes_one_pass_on_valid_events(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(model: Any, data: bytes | str) -> Any:
        raise AssertionError(f"the model was asked about {data!r}")

    monkeypatch.setattr(events, "decode_model", refuse)
    monkeypatch.setattr(events, "decode_line", refuse)
    assert all(not isinstance(e, EventError) for e in decode_lines(VALID))
    for line in VALID:
        decode_value(line, b'"prediction"' in line)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["prediction", "outcome", None]),
    base=st.integers(0, len(VALID) - 1),
    changes=st.dictionaries(_fields, _values, max_size=3),
    drop=st.lists(_fields, max_size=2),
)
def test_fast_path_agrees_on_mutated_events(
    kind: str | None, base: int, changes: dict[str, Any], drop: list[str]
) -> None:
    doc = orjson.loads(VALID[base])
    if kind is None:
        del doc["kind"]
    else:
        doc["kind"] = kind
    doc.update(changes)
    for name in drop:
        doc.pop(name, None)
    _fast_agree_all([orjson.dumps(doc), VALID[0]])


_number_token = st.one_of(
    st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: repr(x).encode()),
    st.from_regex(rb"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.sampled_from(POISON_TOKENS),
)


@settings(max_examples=300, deadline=None)
@given(
    token=_number_token,
    where=st.sampled_from(
        [
            _PRED + b',"score":@}',
            _PRED + b',"latency_ms":@}',
            _PRED + b',"features":{"a":@}}',
            _PRED + b',"attributes":{"a":@}}',
            _PRED.replace(b'"prediction":1', b'"prediction":@') + b"}",
            _PRED.replace(b'"ts":1', b'"ts":@') + b"}",
            _OUT.replace(b'"label":1', b'"label":@') + b"}",
            _OUT + b',"clicked_positions":[@]}',
        ]
    ),
)
def test_fast_path_agrees_on_any_number(token: bytes, where: bytes) -> None:
    _fast_agree_all([where.replace(b"@", token)])


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=12), where=st.sampled_from([b'"r"', b'"f"', b'"v"']))
def test_fast_path_agrees_on_any_string(text: str, where: bytes) -> None:
    _fast_agree_all([(_PRED + b"}").replace(where, orjson.dumps(text), 1)])


@pytest.mark.parametrize(
    "bad",
    [
        _PRED.replace(b'"f"', b'"f/x"') + b"}",
        _PRED.replace(b'"v"', b'"-v"') + b"}",
        _PRED.replace(b'"f"', b'"' + b"f" * 129 + b'"') + b"}",
        _PRED.replace(b'"f"', b'"f\\n"') + b"}",
        _OUT + b',"flag":"f","variant":"v v"}',
        _OUT + b',"flag":"","variant":"v"}',
    ],
)
def test_batch_of_valid_lines_checks_every_name(bad: bytes) -> None:
    """A name the pattern refuses, in a batch msgspec accepts whole (names are checked after
    msgspec, once per distinct name), is rejected as the model rejects it, and only that line."""
    good = [_PRED + b"}", _OUT + b',"flag":"f","variant":"v"}']
    lines = [*good, bad, *good]
    got = decode_lines(lines)
    assert isinstance(got[2], EventError)
    assert _same(got[2], _reference(bad))
    assert [isinstance(g, EventError) for g in got] == [False, False, True, False, False]
    _fast_agree_all(lines)
