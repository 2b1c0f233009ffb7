"""Event time against arrival time: a record from the future is dead-lettered, not believed.

Event time drives the join's watermark and every guardrail's window, so one record stamped in the
year 3000 would otherwise expire every pending prediction. Each input record has an arrival time:
its Kafka record timestamp, never later than the worker's clock when it read the record (a
producer whose clock runs ahead cannot vouch for itself). An event whose ``ts`` is more than
``join.max_clock_skew`` seconds after its arrival is rejected with reason ``future_timestamp``
before the engine sees it. Events from the past are fine: late outcomes are normal, and the join's
TTL decides what they still count for.

Disorder. Within one topic partition, records come roughly in event-time order, but not
exactly: producers stamp events before they batch and send them, several producers write to
one partition, and a retried send lands after later ones. :class:`Disorder` measures it: how far
each record's event time is behind the newest one already read on its topic partition (0 for a
record in order). The decide stage waits ``join.allowed_lateness`` behind its join partitions'
newest event times, so a record further behind than that can make an observation late
(applied after later ones, and counted); while every record stays within it, disorder makes no
observation late. ``driftswitch_join_input_disorder_seconds`` exports it per input topic, so
``join.allowed_lateness`` can be chosen from what the producers really do.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from itertools import accumulate
from operator import attrgetter
from typing import Any

from driftswitch.streams.pipeline.ingest import Decoded, Ingest, Source

__all__ = [
    "DISORDER_BUCKETS",
    "FUTURE_TIMESTAMP",
    "Disorder",
    "arrival_time",
    "reject_future",
]

#: Upper bounds, in seconds, of :class:`Disorder`'s buckets (``+Inf`` follows): 0 is "in
#: order"; then from a millisecond, the scale of a producer's batching, to an hour, the scale of
#: a replayed or backfilled label feed. ``join.allowed_lateness`` is added as a bound of its own.
DISORDER_BUCKETS = (
    0.0,
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
)

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


class Disorder:
    """How far behind the newest event time already read on its topic partition each record of
    one input topic came (module doc: Disorder), counted over all of the topic's partitions.

    The newest event time per partition is the caller's to keep (the join stage's clock holds it
    and checkpoints it): :meth:`observe` takes it and returns it moved on. ``lateness`` (seconds,
    ``join.allowed_lateness``) is one of the bucket bounds, so the records further behind than it
    are those of the buckets above it.
    """

    __slots__ = ("bounds", "counts", "largest", "lateness", "records", "total")

    def __init__(self, lateness: float) -> None:
        if not lateness >= 0:
            raise ValueError(f"lateness must be >= 0 seconds, not {lateness!r}")
        self.lateness = lateness
        #: Bucket upper bounds, ascending: :data:`DISORDER_BUCKETS` and ``lateness``.
        self.bounds: tuple[float, ...] = tuple(sorted({*DISORDER_BUCKETS, lateness}))
        #: Records per bucket (not cumulative); the last one is ``+Inf``.
        self.counts = [0] * (len(self.bounds) + 1)
        #: Records counted, in order or not.
        self.records = 0
        #: Seconds behind, summed over the records.
        self.total = 0.0
        #: The furthest behind a record came, seconds.
        self.largest = 0.0

    def observe(self, newest: float, times: Iterable[float]) -> float:
        """Count ``times``, the event times of records in the order they were read on one topic
        partition, against ``newest``, the latest event time read there before them
        (``-inf`` for none); returns the latest event time read there after them. The times are
        finite: the event contract refuses NaN and infinities."""
        behind: list[float] = []
        n = 0
        for t in times:
            n += 1
            if t >= newest:
                newest = t
            else:
                behind.append(newest - t)
        self.records += n
        self.counts[0] += n - len(behind)
        if behind:
            bounds, counts = self.bounds, self.counts
            for d in behind:
                counts[bisect_left(bounds, d)] += 1
            self.total += sum(behind)
            self.largest = max(self.largest, *behind)
        return newest

    def status(self) -> dict[str, Any]:
        """Plain data for ``/healthz`` and the metrics: the counts, the furthest behind, and
        ``buckets``, ``[upper bound, records at most that far behind]`` per finite bound (a
        Prometheus histogram's buckets; every record is within ``+Inf``)."""
        return {
            "records": self.records,
            "behind": self.records - self.counts[0],
            "beyond_lateness": sum(self.counts[self.bounds.index(self.lateness) + 1 :]),
            "lateness_seconds": self.lateness,
            "max_seconds": round(self.largest, 6),
            "sum_seconds": round(self.total, 6),
            "buckets": [
                [bound, n]
                for bound, n in zip(self.bounds, accumulate(self.counts[:-1]), strict=True)
            ],
        }
