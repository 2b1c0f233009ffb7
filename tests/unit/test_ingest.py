"""Ingest: every bad record is rejected with a reason and its original bytes; good ones decode."""

from __future__ import annotations

import orjson
import pytest

from driftswitch.streams.contract.events import MAX_EVENT_BYTES, OutcomeStruct, PredictionStruct
from driftswitch.streams.pipeline.ingest import (
    HEADER_DETAIL,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_REASON,
    HEADER_TOPIC,
    Ingest,
    InputRecord,
    Source,
    deadletter_headers,
)

PT, OT = "t.predictions.v1", "t.outcomes.v1"
PRED = {"request_id": "r1", "flag": "ranker", "variant": "candidate", "ts": 1.0, "prediction": 1}
OUT = {"request_id": "r1", "ts": 2.0, "label": 1}


def _bytes(obj: object) -> bytes:
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    ("topic", "value", "reason"),
    [
        pytest.param(PT, b'{"request_id": ', "malformed_json", id="truncated-json"),
        pytest.param(PT, b"\xff\xfe", "malformed_json", id="not-utf8"),
        pytest.param(PT, _bytes({**PRED, "ts": "soon"}), "schema", id="bad-ts"),
        pytest.param(PT, _bytes({**PRED, "extra": 1}), "schema", id="unknown-field"),
        pytest.param(OT, _bytes({"ts": 1.0, "label": 1}), "schema", id="outcome-no-id"),
        pytest.param(PT, b"[1, 2]", "schema", id="array"),
        pytest.param(PT, b" " * (MAX_EVENT_BYTES + 1), "oversize", id="oversize"),
        pytest.param(PT, _bytes({**OUT, "kind": "outcome"}), "wrong_topic", id="outcome-on-p"),
        pytest.param(OT, _bytes({**PRED, "kind": "prediction"}), "wrong_topic", id="pred-on-o"),
        pytest.param(PT, None, "null_value", id="tombstone"),
    ],
)
def test_bad_record_is_rejected_with_reason_and_original_bytes(
    topic: str, value: bytes | None, reason: str
) -> None:
    ingest = Ingest(PT, OT)
    decoded = ingest.decode([InputRecord(topic, 3, 41, b"key", value)])
    assert decoded.events == []
    [rejected] = decoded.rejected
    assert (rejected.reason, rejected.value, rejected.key) == (reason, value, b"key")
    assert (rejected.source.topic, rejected.source.partition, rejected.source.offset) == (
        topic,
        3,
        41,
    )
    assert ingest.rejected == {reason: 1}
    assert ingest.accepted == 0


def test_good_records_decode_in_order_with_sources() -> None:
    ingest = Ingest(PT, OT)
    decoded = ingest.decode(
        [
            InputRecord(PT, 0, 5, b"r1", _bytes(PRED)),
            InputRecord(PT, 0, 6, b"x", b"garbage"),
            InputRecord(OT, 1, 9, b"r1", _bytes(OUT)),
        ]
    )
    assert [type(e) for e in decoded.events] == [PredictionStruct, OutcomeStruct]
    assert [decoded.source(i) for i in range(2)] == [Source(PT, 0, 5), Source(OT, 1, 9)]
    assert [r.reason for r in decoded.rejected] == ["malformed_json"]
    assert ingest.accepted == 2


def test_a_batch_decodes_as_its_records_do_one_by_one() -> None:
    """Runs of one topic are decoded in one call when msgspec reads all of them, else one by
    one: either way each record gets what it gets alone (event, lax value read by the model,
    or rejection), in order."""
    good = [_bytes({**PRED, "request_id": f"r{i}"}) for i in range(5)]
    values = [
        *[(PT, v) for v in good],  # a clean run: one call
        (OT, _bytes(OUT)),
        (OT, _bytes({**OUT, "ts": "2026-01-01T00:00:00Z"})),  # lax: the model reads it
        (OT, None),
        (OT, b"{"),
        (PT, _bytes({**PRED, "flag": "no spaces"})),  # msgspec reads it; the name fails
        (PT, good[0]),
        (OT, _bytes(OUT)),  # a clean run of one
    ]
    records = [InputRecord(t, 0, k, b"k", v) for k, (t, v) in enumerate(values)]
    batch = Ingest(PT, OT).decode(records)
    alone = [Ingest(PT, OT).decode([r]) for r in records]
    assert batch.events == [e for d in alone for e in d.events]
    assert batch.index == [k for k, d in enumerate(alone) if d.events]
    assert [(r.source.offset, r.reason) for r in batch.rejected] == [
        (r.source.offset, r.reason) for d in alone for r in d.rejected
    ]
    assert [r.reason for r in batch.rejected] == ["null_value", "malformed_json", "schema"]
    assert len(batch.events) == 9


def test_engine_rejections_keep_the_original_bytes() -> None:
    ingest = Ingest(PT, OT)
    raw = _bytes({**PRED, "flag": "nosuch"})
    decoded = ingest.decode(
        [InputRecord(PT, 2, 7, b"r1", _bytes(PRED)), InputRecord(PT, 2, 8, b"r2", raw)]
    )
    ingest.reject_events(decoded, [(1, "unknown_flag", "flag 'nosuch' is not configured")])
    [rejected] = decoded.rejected
    assert (rejected.reason, rejected.value, rejected.source.offset) == ("unknown_flag", raw, 8)
    assert ingest.rejected == {"unknown_flag": 1}
    assert ingest.accepted == 1


def test_deadletter_headers_name_reason_and_source() -> None:
    ingest = Ingest(PT, OT)
    [rejected] = ingest.decode([InputRecord(PT, 1, 12, None, b"{")]).rejected
    headers = dict(deadletter_headers(rejected))
    assert headers[HEADER_REASON] == b"malformed_json"
    assert headers[HEADER_TOPIC] == PT.encode()
    assert headers[HEADER_PARTITION] == b"1"
    assert headers[HEADER_OFFSET] == b"12"
    assert headers[HEADER_DETAIL]
