"""The in-memory join in steady state: cost per event once entries expire and ``max_pending`` binds.

    .venv/bin/python benchmarks/join.py [--requests 1500000] [--ttl 600] [--rate 2000]

Feeds :class:`~driftswitch.streams.pipeline.join.JoinBuffer` a steady stream, in event-time
order: request ``i``'s prediction at ``i / rate`` seconds, its outcome 5 s later (1 in 100 never
gets one and expires after ``--ttl``), ``expire()`` after every 10,000 events as the engine does
after every batch. With the defaults, the joined ids kept for duplicate detection reach
``max_pending`` (1M) after 1M joins, and unjoined predictions start expiring after ``ttl × rate``
requests: from then on every event removes the oldest entry of an insertion-ordered map.

The same stream also goes through the buffer with its three ordered maps replaced by plain
``dict`` objects (what the join used before; same order, same results, checked), so the two can
be compared.
Prints µs per event (CPU) for each window of events, and the process's peak RSS.

A plain ``dict`` finds its first entry by scanning from the start of its entry table past every
deleted slot (until the next resize compacts it), so taking the oldest entry of a dict whose
oldest entries keep being deleted costs time in proportion to how many were deleted;
``OrderedDict`` keeps a linked list and finds it in constant time.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

from driftswitch.streams.pipeline.join import JoinBuffer

DELAY = 5.0
SWEEP = 10_000


class DictJoinBuffer(JoinBuffer):
    """:class:`JoinBuffer` with its entries in plain dicts (as before), for comparison."""

    __slots__ = ()

    def __init__(self, ttl: float, max_pending: int) -> None:
        super().__init__(ttl, max_pending)
        self._predictions = {}  # type: ignore[assignment]
        self._outcomes = {}  # type: ignore[assignment]
        self._joined = {}  # type: ignore[assignment]


def run(buf: JoinBuffer, requests: int, rate: float, window: int) -> list[tuple[int, float]]:
    """Feed the stream; (events so far, µs/event of the window) per window."""
    out: list[tuple[int, float]] = []
    pending: list[tuple[float, str]] = []  # outcomes not yet due, in ts order
    head = 0
    events = 0
    started = time.process_time()
    for i in range(requests):
        ts = i / rate
        while head < len(pending) and pending[head][0] <= ts:
            due, rid = pending[head]
            head += 1
            buf.add_outcome(rid, due, True)
            events += 1
            if events % SWEEP == 0:
                buf.expire()
            if events % window == 0:
                now = time.process_time()
                out.append((events, (now - started) / window * 1e6))
                started = now
        rid = f"r{i}"
        buf.add_prediction(rid, ts, "flag/variant", ("a",))
        events += 1
        if events % SWEEP == 0:
            buf.expire()
        if events % window == 0:
            now = time.process_time()
            out.append((events, (now - started) / window * 1e6))
            started = now
        if i % 100:
            pending.append((ts + DELAY, rid))
        if head > 100_000:
            del pending[:head]
            head = 0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_500_000)
    parser.add_argument("--ttl", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="requests per second")
    parser.add_argument("--window", type=int, default=250_000, help="events per printed figure")
    parser.add_argument("--max-pending", type=int, default=1_000_000)
    args = parser.parse_args()
    one, five, fifteen = os.getloadavg()
    print(
        f"{args.requests:,} requests at {args.rate:,.0f}/s, ttl {args.ttl:,.0f} s, max_pending "
        f"{args.max_pending:,}; load average {one:.2f} {five:.2f} {fifteen:.2f}"
    )
    results = {}
    for cls in (JoinBuffer, DictJoinBuffer):
        buf = cls(args.ttl, args.max_pending)
        results[cls.__name__] = (run(buf, args.requests, args.rate, args.window), buf.counters())
    (a, ca), (b, cb) = results.values()
    if ca != cb:
        raise SystemExit(f"the two buffers disagree: {ca} != {cb}")
    print(f"counters (both): {ca}")
    print(f"{'events':>10}  {'dict µs/event':>14}  {'OrderedDict µs/event':>21}")
    for (n, us_b), (_, us_a) in zip(b, a, strict=True):
        print(f"{n:>10,}  {us_b:>14.2f}  {us_a:>21.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MiB; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
