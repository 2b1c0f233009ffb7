"""Poison records: what validation accepts, the engine processes and a snapshot round-trips.

Each regression sends the exact input that stopped (or blinded) the worker: an integer above 2^64,
scores of 1e308, a ``ts`` as a string of digits, an RFC 3339 ``ts``. The property test feeds
arbitrary valid events through the live decoder and the engine, then checks that the state
survives a snapshot (JSON and back) unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.errors import EventError
from driftswitch.streams.contract.events import (
    INT64_MAX,
    INT64_MIN,
    Decoded,
    OutcomeEvent,
    PredictionEvent,
    decode_line,
    decode_outcome,
    decode_prediction,
    to_struct,
)
from driftswitch.streams.pipeline.backtest import decode_chunk
from driftswitch.streams.pipeline.contain import (
    check_joiner,
    check_state,
    describe,
    join_isolating,
    process_isolating,
)
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.ingest import Ingest, InputRecord
from driftswitch.streams.pipeline.join import MemoryJoinStore, StoredJoinBuffer
from driftswitch.streams.pipeline.observations import Joiner


def decode_event(line: bytes) -> Decoded:
    """What ``driftswitch backtest`` decodes ``line`` to, or the error that rejects it."""
    events, errors = decode_chunk([line])
    if errors:
        raise errors[0][1]
    return events[0]


CONFIG = """
flags:
  ranker:
    default: control
    variants:
      control:   {weight: 50, value: v1}
      candidate: {weight: 50, value: v2}
    guardrails:
      - {name: acc, variant: candidate, metric: accuracy, action: kill, min_samples: 5,
         detector: {kind: cusum, baseline: 0.9, target: 0.8, arl0: 1000}}
      - {name: seq, variant: candidate, compare_to: control, metric: accuracy, action: warn,
         detector: {kind: sequential}}
      - {name: lat, variant: candidate, metric: latency_ms, action: warn,
         detector: {kind: latency_quantile, threshold: 30, window: 20}}
      - {name: score-ks, variant: candidate, metric: score, action: warn, detector: {kind: ks}}
      - {name: score-psi, variant: candidate, metric: score, action: warn,
         detector: {kind: psi, reference_size: 50, window: 20}}
      - {name: err, variant: candidate, metric: error_rate, action: warn,
         detector: {kind: page_hinkley}}
  price:
    default: a
    task: regression
    variants:
      a: {weight: 50, value: 1}
      b: {weight: 50, value: 2}
    guardrails:
      - {name: mse, variant: b, metric: squared_error, action: warn, min_samples: 1,
         detector: {kind: cusum_mean, shift: 1.0, mean: 1.0, std: 1.0, arl0: 1000}}
      - {name: mae, variant: b, compare_to: a, metric: abs_error, action: warn,
         detector: {kind: sequential}}
"""

BIG = (
    b'{"request_id": "r1", "flag": "ranker", "variant": "candidate", "ts": 1767225600,'
    b' "prediction": 1180591620717411303424}'
)


def prediction(**fields: object) -> bytes:
    base: dict[str, object] = {
        "request_id": "r1",
        "flag": "ranker",
        "variant": "candidate",
        "ts": 1767225600,
        "prediction": 1,
    }
    return _dumps({**base, **fields})


def _dumps(doc: object) -> bytes:
    """JSON bytes; unlike orjson, the standard library writes integers of any size."""
    return json.dumps(doc, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- numbers


def test_an_integer_above_2_to_the_64_is_rejected_by_every_decoder() -> None:
    with pytest.raises(EventError) as err:
        decode_prediction(BIG)
    assert err.value.reason == "schema"
    assert "prediction" in err.value.detail
    line = BIG[:-1] + b', "kind": "prediction"}'
    for decode in (decode_line, decode_event):
        with pytest.raises(EventError):
            decode(line)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (INT64_MAX, True),
        (INT64_MIN, True),
        (2**63, True),  # read as the float 2^63, by every decoder and the JSON Schema
        (INT64_MAX + 2, False),
        (INT64_MIN - 1, False),
        (2**64, False),
        (9.2e18, True),
        (9.3e18, False),
        (-9.3e18, False),
    ],
)
def test_every_number_fits_64_bits(value: float, ok: bool) -> None:
    for fields in (
        {"prediction": value},
        {"score": value},
        {"latency_ms": abs(value)},
        {"attributes": {"x": value}},
        {"features": {"x": value}},
    ):
        record = prediction(**fields)
        line = record[:-1] + b', "kind": "prediction"}'
        if ok:
            decode_prediction(record)
            assert decode_event(line) == to_struct(decode_line(line))
        else:
            for decode in (decode_prediction, decode_line, decode_event):
                with pytest.raises(EventError):
                    decode(line if decode is not decode_prediction else record)
    label = _dumps({"request_id": "r1", "ts": 1.0, "label": value})
    if ok:
        decode_outcome(label)
    else:
        with pytest.raises(EventError):
            decode_outcome(label)


def test_infinite_and_nan_numbers_are_rejected() -> None:
    for text in (b"1e309", b"-1e309", b"Infinity", b"NaN"):
        record = prediction(score=0.5).replace(b'"score":0.5', b'"score":' + text)
        with pytest.raises(EventError):
            decode_prediction(record)
        with pytest.raises(EventError):
            decode_event(record[:-1] + b',"kind":"prediction"}')


def test_two_scores_of_1e308_are_rejected_and_the_largest_allowed_stay_finite() -> None:
    """The exact input that made the score sum infinite (stored as null, fatal on restore) is
    refused; scores at the bound, many of them, keep every statistic finite and restorable."""
    engine = Engine(parse_config(CONFIG))
    ingest = Ingest("p", "o")
    records = [
        InputRecord("p", 0, i, None, prediction(request_id=f"r{i}", score=1e308)) for i in (1, 2)
    ]
    decoded = ingest.decode(records)
    assert [(r.reason, r.detail.split(":")[0]) for r in decoded.rejected] == [
        ("schema", "score")
    ] * 2
    big = [
        InputRecord(
            "p", 0, i, None, prediction(request_id=f"b{i}", score=2.0**63, latency_ms=2.0**63)
        )
        for i in range(300)
    ]
    decoded = ingest.decode(big)
    assert len(decoded.events) == 300
    engine.process(decoded.events)
    check_state(engine)  # an infinite sum would be written as null and fail here
    summary = engine.snapshot()["flags"]["ranker"]["variants"]["candidate"]  # type: ignore[index]
    numbers = [v for v in summary.values() if isinstance(v, float)]  # type: ignore[union-attr]
    assert numbers
    assert all(math.isfinite(v) for v in numbers)


# --------------------------------------------------------------------------- timestamps


def test_a_timestamp_as_a_string_of_digits_is_rejected_with_a_message_about_rfc_3339() -> None:
    record = prediction(ts="1795952194")
    with pytest.raises(EventError) as err:
        decode_prediction(record)
    assert "RFC 3339" in err.value.detail
    assert "2026-01-01T00:00:00Z" in err.value.detail


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-01-01T00:00:00Z", 1767225600.0),
        ("2026-01-01T01:00:00+01:00", 1767225600.0),
        ("2026-01-01T00:00:00.25Z", 1767225600.25),
        ("2026-01-01t00:00:00.123456789z", 1767225600.123456789),
        ("2025-12-31T19:00:00-05:00", 1767225600.0),
    ],
)
def test_rfc_3339_timestamps_are_read_as_epoch_seconds(text: str, seconds: float) -> None:
    event = decode_prediction(prediction(ts=text))
    assert event.ts == pytest.approx(seconds, abs=1e-6)
    outcome = decode_outcome(orjson.dumps({"request_id": "r", "ts": text, "label": 1}))
    assert outcome.ts == event.ts
    line = prediction(ts=text)[:-1] + b',"kind":"prediction"}'
    assert decode_event(line) == to_struct(decode_line(line)) == to_struct(event)


@pytest.mark.parametrize(
    "bad",
    [
        "1795952194",
        "2026-01-01",  # a date is not a time
        "2026-01-01T00:00:00",  # no offset: which time zone?
        "2026-13-01T00:00:00Z",
        "2026-01-01 00:00:00Z",
        "1969-12-31T23:59:59Z",  # before the epoch
        True,
        None,
        [1767225600],
    ],
)
def test_anything_else_as_ts_is_rejected(bad: object) -> None:
    with pytest.raises(EventError) as err:
        decode_prediction(prediction(ts=bad))
    assert err.value.reason == "schema"
    assert "ts" in err.value.detail


# --------------------------------------------------------------------------- containment


def test_process_isolating_leaves_out_the_one_event_that_breaks_the_engine() -> None:
    config = parse_config(CONFIG)
    events: list[PredictionEvent | OutcomeEvent] = []
    for i in range(40):
        events.append(
            PredictionEvent(
                request_id=f"r{i}", flag="ranker", variant="candidate", ts=float(i), prediction=1
            )
        )
        events.append(OutcomeEvent(request_id=f"r{i}", ts=float(i) + 0.5, label=i % 3 != 0))
    # Events validation could never produce (built bypassing it): one makes ``process`` raise,
    # the other leaves a state that cannot be snapshotted.
    raising, unsnapshottable = 37, 12
    events[raising] = PredictionEvent.model_construct(
        request_id="bad",
        flag="ranker",
        variant="candidate",
        ts=18.0,
        prediction=1,
        latency_ms=object(),
        served=True,
        score=None,
        error=None,
    )
    events[unsnapshottable] = PredictionEvent.model_construct(
        request_id="odd",
        flag="ranker",
        variant="candidate",
        ts=6.0,
        prediction=object(),
        latency_ms=None,
        served=True,
        score=None,
        error=None,
    )
    poison = [unsnapshottable, raising]
    clean = [e for k, e in enumerate(events) if k not in poison]
    reference = Engine(config)
    expected = reference.process(clean)

    with pytest.raises(TypeError):
        Engine(config).process(events[raising : raising + 1])
    broken = Engine(config)
    broken.process(events[unsnapshottable : unsnapshottable + 1])
    with pytest.raises(TypeError):
        check_state(broken)

    engine, result, poisoned = process_isolating(Engine(config), events)
    assert [p.index for p in poisoned] == poison
    assert all("bad" not in p.detail and "odd" not in p.detail for p in poisoned)
    assert orjson.dumps(engine.to_state()) == orjson.dumps(reference.to_state())
    kept = [k for k in range(len(events)) if k not in poison]
    assert [e.index for e in result.outputs] == [kept[e.index] for e in expected.outputs]
    assert [e.event for e in result.outputs] == [e.event for e in expected.outputs]
    assert [(kept[r.index], r.reason) for r in expected.rejections] == [
        (r.index, r.reason) for r in result.rejections
    ]


@pytest.mark.parametrize("stored", [False, True], ids=["memory", "store"])
def test_join_isolating_leaves_out_the_events_that_break_the_join(stored: bool) -> None:
    """The join stage's containment: what one ``Joiner.process`` of the other events gives,
    the same state, and the events that fail on their own left out, whatever their fault."""
    config = parse_config(CONFIG)
    events: list[PredictionEvent | OutcomeEvent] = []
    for i in range(40):
        events.append(
            PredictionEvent(
                request_id=f"r{i}", flag="ranker", variant="candidate", ts=float(i), prediction=1
            )
        )
        events.append(OutcomeEvent(request_id=f"r{i}", ts=float(i) + 0.5, label=i % 3 != 0))
    positions = [(k % 2, 1000 + k) for k in range(len(events))]

    def odd(rid: str, **fields: Any) -> PredictionEvent:
        base: dict[str, Any] = {
            "flag": "ranker",
            "variant": "candidate",
            "ts": 6.0,
            "prediction": 1,
            "latency_ms": None,
            "served": True,
            "score": None,
            "error": None,
            "ranking": None,
            "attributes": None,
            "subject": None,
            "features": None,
        }
        return PredictionEvent.model_construct(request_id=rid, **{**base, **fields})

    # Events validation could never produce (built bypassing it): the first makes ``process``
    # raise, the second's observation does not encode, the third leaves a state that does not
    # checkpoint (its prediction waits for an outcome that never comes).
    raising, unencodable, unsaved = 31, 12, 64
    events[raising] = odd("bad", ts=object())
    events[unencodable] = odd("odd", latency_ms=object())
    events[unsaved] = odd("late", ts=70.0, prediction=object())
    # In a store the third one's entry fails where the store writes it, not in the state.
    poison = sorted([raising, unencodable] if stored else [raising, unencodable, unsaved])
    kept = [k for k in range(len(events)) if k not in poison]

    def joiner() -> Joiner:
        return Joiner(config, track=True, join_store=MemoryJoinStore() if stored else None)

    reference = joiner()
    expected, expected_rejections = reference.process(
        [events[k] for k in kept], [positions[k] for k in kept]
    )
    with pytest.raises(TypeError):
        joiner().process([events[raising]], [positions[raising]])
    broken = joiner()
    got, _ = broken.process([events[unencodable]], [positions[unencodable]])
    with pytest.raises(TypeError):
        check_joiner(broken, got)
    broken = joiner()
    broken.process([events[unsaved]], [positions[unsaved]])
    if not stored:
        with pytest.raises(TypeError):
            check_joiner(broken)

    result, observations, rejections, poisoned = join_isolating(joiner(), events, positions)
    assert [p.index for p in poisoned] == poison
    assert all(p.detail.startswith("TypeError at ") for p in poisoned)
    assert result.to_state() == reference.to_state()
    assert isinstance(result.join, StoredJoinBuffer) == stored
    assert observations == [(o[0], kept[o[1]], *o[2:]) for o in expected]
    assert [(r.index, r.reason, r.position) for r in rejections] == [
        (kept[r.index], r.reason, r.position) for r in expected_rejections
    ]


def test_describe_names_the_type_and_place_only() -> None:
    try:
        {}["secret-token"]
    except KeyError as exc:
        text = describe(exc)
    assert text.startswith("KeyError at test_poison.py:")
    assert "secret" not in text


# --------------------------------------------------------------------------- property


def _names(choices: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(choices)


_int64 = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
_float = st.floats(min_value=-(2.0**63), max_value=2.0**63, allow_nan=False)
_label = st.one_of(st.booleans(), _int64, _float, st.text(max_size=20))
_ts = st.one_of(
    st.floats(min_value=0, max_value=1e11, exclude_max=True, allow_nan=False),
    st.integers(min_value=0, max_value=10**11 - 1),
    st.datetimes(
        min_value=dt.datetime(1970, 1, 2),
        max_value=dt.datetime(5000, 1, 1),
        timezones=st.just(dt.UTC),
    ).map(lambda d: d.isoformat().replace("+00:00", "Z")),
)
_rid = st.sampled_from([f"r{i}" for i in range(12)])
_prediction = st.fixed_dictionaries(
    {
        "request_id": _rid,
        "flag": _names(["ranker", "price", "unknown"]),
        "variant": _names(["control", "candidate", "a", "b", "zz"]),
        "ts": _ts,
        "prediction": _label,
    },
    optional={
        "score": _float,
        "latency_ms": st.floats(min_value=0, max_value=2.0**63),
        "error": st.text(max_size=5),
        "served": st.booleans(),
        "attributes": st.dictionaries(st.text(max_size=3), _label, max_size=2),
        "features": st.dictionaries(st.text(max_size=3), _float, max_size=2),
    },
)
_outcome = st.fixed_dictionaries({"request_id": _rid, "ts": _ts, "label": _label})


@pytest.mark.slow  # 150 generated streams, each through two engines and a snapshot
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_prediction, _outcome), min_size=1, max_size=60))
def test_snapshots_round_trip_everything_validation_accepts(docs: list[dict[str, object]]) -> None:
    config = parse_config(CONFIG)
    records = [
        InputRecord("p" if "variant" in d else "o", 0, k, None, orjson.dumps(d))
        for k, d in enumerate(docs)
    ]
    decoded = Ingest("p", "o").decode(records)
    assert decoded.rejected == []  # every generated document is valid
    engine = Engine(config)
    engine.process(decoded.events)
    blob = orjson.dumps(engine.to_state())
    restored = Engine.from_state(config, orjson.loads(blob))
    assert orjson.dumps(restored.to_state()) == blob
    # ... and the restored engine goes on exactly as the original would.
    more = decoded.events[::-1]
    assert restored.process(more) == engine.process(more)
    assert orjson.dumps(restored.to_state()) == orjson.dumps(engine.to_state())


# --------------------------------------------------------------------------- schema examples

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


@pytest.mark.parametrize(
    "path",
    sorted([*EXAMPLES.glob("prediction/*/*.json"), *EXAMPLES.glob("outcome/*/*.json")]),
    ids=lambda p: "/".join(p.parts[-3:]),
)
def test_every_event_example_gets_the_schema_verdict_from_the_worker_decoders(path: Path) -> None:
    """tests/unit/test_schemas.py checks each example against the JSON Schema; the worker reads
    the raw bytes (Ingest's validators, decode_prediction/decode_outcome, the JSON Lines fast
    path): all must agree with it."""
    kind, verdict = path.parts[-3], path.parts[-2]
    raw = path.read_bytes()
    topic = "p" if kind == "prediction" else "o"
    decoded = Ingest("p", "o").decode([InputRecord(topic, 0, 0, None, raw)])
    single = decode_prediction if kind == "prediction" else decode_outcome
    doc = json.loads(raw)
    line = json.dumps({"kind": kind, **doc}).encode() if isinstance(doc, dict) else raw
    if verdict == "valid":
        assert decoded.rejected == []
        event = single(raw)
        assert decode_event(line) == to_struct(decode_line(line)) == to_struct(event)
        assert decoded.events[0] == decode_event(line)
    else:
        assert decoded.events == []
        with pytest.raises(EventError):
            single(raw)
        for decode in (decode_event, decode_line):
            with pytest.raises(EventError):
                decode(line)
