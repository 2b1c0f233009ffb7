"""Event time against abuse: one record from the year 3000 neither expires the join nor silences
a guardrail, and records stamped beyond ``join.max_clock_skew`` after arrival are rejected."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.events import FlagChangeEvent, OutcomeEvent, PredictionEvent
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.eventtime import (
    FUTURE_TIMESTAMP,
    Disorder,
    arrival_time,
    reject_future,
)
from driftswitch.streams.pipeline.ingest import Ingest
from driftswitch.streams.pipeline.join import JoinBuffer

YEAR_3000 = 32503680000.0
CONFIG = """
flags:
  ranker:
    default: control
    variants:
      control:   {weight: 50, value: v1}
      candidate: {weight: 50, value: v2}
    guardrails:
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}
        min_samples: 200
        action: kill
join:
  ttl: 1h
"""


def test_one_outlier_does_not_move_the_watermark() -> None:
    buf = JoinBuffer(ttl=60.0, max_pending=100)
    buf.add_prediction("a", 1000.0, "g", None)
    buf.add_prediction("b", 1001.0, "g", None)
    assert buf.watermark == 1000.0
    buf.add_prediction("future", YEAR_3000, "g", None)
    assert buf.watermark == 1001.0
    assert buf.add_outcome("b", 1002.0, 1) is not None  # still joins: nothing expired
    buf.add_prediction("c", 1003.0, "g", None)
    assert buf.watermark == 1003.0  # a second record confirms the time: it moves
    restored = JoinBuffer.from_state(orjson.loads(orjson.dumps(buf.to_state())))
    restored.add_prediction("d", 1004.0, "g", None)
    assert restored.watermark == 1004.0


def test_a_candidate_is_killed_despite_a_prediction_from_the_year_3000() -> None:
    """The exact scenario: one valid prediction at ts 32503680000, then 20,000 pairs with the
    candidate at 65 % accuracy."""
    engine = Engine(parse_config(CONFIG))
    rng = random.Random(3)
    t0 = 1767225600.0
    events: list[PredictionEvent | OutcomeEvent] = [
        PredictionEvent(
            request_id="future", flag="ranker", variant="control", ts=YEAR_3000, prediction=1
        )
    ]
    for i in range(20_000):
        variant = "candidate" if i % 2 else "control"
        correct = rng.random() < (0.65 if variant == "candidate" else 0.9)
        ts = t0 + i * 0.05
        events.append(
            PredictionEvent(request_id=f"r{i}", flag="ranker", variant=variant, ts=ts, prediction=1)
        )
        events.append(OutcomeEvent(request_id=f"r{i}", ts=ts + 1.0, label=1 if correct else 0))
    outputs = []
    for k in range(0, len(events), 1000):
        outputs += engine.process(events[k : k + 1000]).outputs
    kills = [
        o.event
        for o in outputs
        if isinstance(o.event, FlagChangeEvent) and o.event.cause.action.value == "kill"
    ]
    assert [k.cause.variant for k in kills] == ["candidate"]
    assert engine.snapshot()["join"]["expired_predictions"] == 0  # type: ignore[index]


class Rec:
    def __init__(self, offset: int, value: bytes, timestamp: int) -> None:
        self.topic, self.partition, self.offset = "p", 0, offset
        self.key: bytes | None = None
        self.value: bytes | None = value
        self.timestamp = timestamp


def _value(ts: float) -> bytes:
    return orjson.dumps(
        {"request_id": f"r{ts}", "flag": "f", "variant": "v", "ts": ts, "prediction": 1}
    )


def test_records_stamped_beyond_the_clock_skew_are_rejected_as_future_timestamp() -> None:
    now = 1_800_000_000.0
    arrived = int((now - 3600) * 1000)  # read an hour after it was produced (a replay)
    records = [
        Rec(0, _value(now - 3600), arrived),
        Rec(1, _value(YEAR_3000), arrived),
        Rec(2, _value(now - 3600 + 599), arrived),
        Rec(3, _value(now - 3600 + 601), arrived),  # ahead of its arrival, though not of now
        Rec(4, _value(now + 5), -1),  # no record timestamp: the worker's clock
        Rec(5, _value(now + 601), int((now + 3600) * 1000)),  # producer clock ahead: capped
    ]
    ingest = Ingest("p", "o")
    decoded = ingest.decode(records)
    reject_future(decoded, ingest, 600.0, now)
    assert [records[i].offset for i in decoded.index] == [0, 2, 4]
    assert [e.ts for e in decoded.events] == [now - 3600, now - 3600 + 599, now + 5]
    rejected = {r.source.offset: r for r in decoded.rejected}
    assert sorted(rejected) == [1, 3, 5]
    assert {r.reason for r in rejected.values()} == {FUTURE_TIMESTAMP}
    assert "max_clock_skew" in rejected[1].detail
    assert rejected[1].value == records[1].value  # the original bytes, for the dead-letter topic
    assert ingest.rejected[FUTURE_TIMESTAMP] == 3
    assert ingest.accepted == 3
    # Every record stamped, by a producer whose clock is an hour ahead (the batch is checked
    # without a call per event): the arrival is still capped at the worker's clock.
    ahead = int((now + 3600) * 1000)
    records = [Rec(0, _value(now + 10), ahead), Rec(1, _value(now + 601), ahead)]
    ingest = Ingest("p", "o")
    decoded = ingest.decode(records)
    reject_future(decoded, ingest, 600.0, now)
    assert [records[i].offset for i in decoded.index] == [0]
    assert [r.source.offset for r in decoded.rejected] == [1]


def test_batches_of_stamped_records_are_checked_event_by_event_in_effect() -> None:
    """Whether a batch takes the check without a call per event (every record stamped, none
    late) or not, the events rejected are exactly those stamped beyond their own arrival."""
    rng = random.Random(7)
    now, skew = 1_800_000_000.0, 600.0
    for _ in range(200):
        records = []
        for k in range(rng.randrange(1, 20)):
            arrived = now + rng.choice((-7200.0, -3600.0, -10.0, 0.0, 3600.0))  # some capped
            ts = min(arrived, now) + skew + rng.choice((-100.0, -1.0, 0.0, 1.0, 5.0))
            if rng.random() < 0.8:  # most batches: nothing ahead of its arrival
                ts -= 200.0
            records.append(Rec(k, _value(ts), int(arrived * 1000)))
        ingest = Ingest("p", "o")
        decoded = ingest.decode(records)
        reject_future(decoded, ingest, skew, now)
        expected = [
            r.offset
            for r, e in zip(records, ingest.decode(records).events, strict=True)
            if e.ts > min(r.timestamp / 1000.0, now) + skew
        ]
        assert sorted(r.source.offset for r in decoded.rejected) == expected
        assert [records[i].offset for i in decoded.index] == sorted(
            set(range(len(records))) - set(expected)
        )


def test_arrival_time() -> None:
    assert arrival_time(Rec(0, b"", 1_000_000), 5000.0) == 1000.0
    assert arrival_time(Rec(0, b"", 9_000_000), 5000.0) == 5000.0
    assert arrival_time(object(), 5000.0) == 5000.0


def test_disorder_counts_how_far_behind_the_newest_each_record_came() -> None:
    """In order counts as 0; a record stamped before one already read counts the difference;
    ``join.allowed_lateness`` is a bucket bound of its own, and records beyond it are counted.
    (The times are sums of powers of two, so every difference below is exact.)"""
    disorder = Disorder(lateness=0.375)
    assert 0.375 in disorder.bounds
    newest = disorder.observe(-math.inf, [1.0, 3.0, 2.0, 2.9990234375, 4.0, 3.625, 3.375])
    assert newest == 4.0
    # 2.0 is 1.0 behind 3.0; 2.9990234375 is 2**-10 (under 1 ms) behind; 3.625 is 0.375 behind
    # 4.0, exactly the lateness (not beyond: "further behind than" it); 3.375 is 0.625 behind.
    assert disorder.observe(newest, [3.875, 5.0]) == 5.0  # 0.125 behind the 4.0 carried over
    status = disorder.status()
    assert status["records"] == 9
    assert status["behind"] == 5
    assert status["beyond_lateness"] == 2
    assert status["max_seconds"] == 1.0
    assert status["sum_seconds"] == pytest.approx(1.0 + 2**-10 + 0.375 + 0.625 + 0.125)
    buckets = dict(status["buckets"])
    assert buckets[0.0] == 4  # 1.0, 3.0, 4.0, 5.0
    assert buckets[0.001] == 5
    assert buckets[0.1] == 5
    assert buckets[0.25] == 6  # and 0.125
    assert buckets[0.375] == 7  # and the one exactly at the lateness
    assert buckets[0.5] == 7
    assert buckets[1.0] == 9  # 0.625, and 1.0 exactly at a bound
    assert buckets[3600.0] == 9
    assert list(buckets) == sorted(buckets)


def test_disorder_does_not_depend_on_how_the_records_were_batched() -> None:
    """The same stream read in any batches gives the same counts as a record-by-record reference
    (each record against the largest event time before it)."""
    rng = random.Random(7)
    for _ in range(50):
        times = [i * 0.01 + rng.expovariate(1.0) * rng.choice((0.0, 0.01, 1.0)) for i in range(300)]
        reference = [max([t, *times[:k]]) - t for k, t in enumerate(times)]
        disorder = Disorder(lateness=0.5)
        newest, k = -math.inf, 0
        while k < len(times):
            n = rng.randint(1, 40)
            newest = disorder.observe(newest, times[k : k + n])
            k += n
        assert newest == max(times)
        status = disorder.status()
        assert status["behind"] == sum(d > 0 for d in reference)
        assert status["beyond_lateness"] == sum(d > 0.5 for d in reference)
        assert status["max_seconds"] == pytest.approx(max(reference), abs=1e-6)
        for bound, n in status["buckets"]:
            assert n == sum(d <= bound for d in reference)


def test_disorder_refuses_a_negative_lateness() -> None:
    with pytest.raises(ValueError, match="lateness"):
        Disorder(lateness=-0.1)
