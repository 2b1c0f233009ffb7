"""Event time against arrival time: a record from the future is dead-lettered, not believed.

Event time drives the join's watermark and every guardrail's window, so one record stamped in the
year 3000 would otherwise expire every pending prediction. Each input record has an arrival time:
its Kafka record timestamp, never later than the worker's clock when it read the record (a
producer whose clock runs ahead cannot vouch for itself). An event whose ``ts`` is more than
``join.max_clock_skew`` seconds after its arrival is rejected with reason ``future_timestamp``
before the engine sees it. Events from the past are fine: late outcomes are normal, and the join's
TTL decides what they still count for.
"""

from __future__ import annotations

from operator import attrgetter

from driftswitch.streams.pipeline.ingest import Decoded, Ingest, Source

__all__ = ["FUTURE_TIMESTAMP", "arrival_time", "reject_future"]

#: Dead-letter reason of an event stamped too far after its arrival.
FUTURE_TIMESTAMP = "future_timestamp"


_TIMESTAMP = attrgetter("timestamp")
_TS = attrgetter("ts")


def arrival_time(record: object, now: float) -> float:
    """When ``record`` arrived, in epoch seconds: its Kafka timestamp (milliseconds; absent or
    negative means unknown), capped at ``now``."""
    stamp = getattr(record, "timestamp", None)
    if type(stamp) is not int or stamp < 0:
        return now
    return min(stamp / 1000.0, now)


def reject_future(decoded: Decoded, ingest: Ingest, max_skew: float, now: float) -> None:
    """Move every event of ``decoded`` stamped more than ``max_skew`` seconds after its arrival
    to ``decoded.rejected`` (reason ``future_timestamp``); the others keep their order."""
    events, index, records = decoded.events, decoded.index, decoded.records
    if not events:
        return
    # The usual batch, checked without a Python call per event: every record stamped, and no
    # event later than the earliest arrival allows.
    try:
        earliest = min(map(_TIMESTAMP, records))
    except (AttributeError, TypeError):  # a record without a timestamp, or with None
        earliest = None
    if (
        type(earliest) is int
        and earliest >= 0
        and max(map(_TS, events)) <= min(earliest / 1000.0, now) + max_skew
    ):
        return
    late = [
        k
        for k, (ev, i) in enumerate(zip(events, index, strict=True))
        if ev.ts > arrival_time(records[i], now) + max_skew
    ]
    if not late:
        return
    for k in late:
        ev, rec = events[k], records[index[k]]
        arrival = arrival_time(rec, now)
        source = Source(rec.topic, rec.partition, rec.offset)
        detail = (
            f"ts {ev.ts:.3f} is {ev.ts - arrival:.0f} s after the record arrived "
            f"({arrival:.3f}); join.max_clock_skew is {max_skew:g} s"
        )
        decoded.rejected.append(ingest.reject(source, rec.key, rec.value, FUTURE_TIMESTAMP, detail))
    ingest.accepted -= len(late)
    drop = set(late)
    decoded.events[:] = [ev for k, ev in enumerate(events) if k not in drop]
    decoded.index[:] = [i for k, i in enumerate(index) if k not in drop]
