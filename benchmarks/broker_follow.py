"""The embedded broker alone under a live stream: produce → ack and ack → consumed over time.

Run: ``.venv/bin/python benchmarks/broker_follow.py [--rate 4000] [--events 240000]
[--fetch-wait-ms 100] [--window 6] [--linger-ms 5] [--no-consumer]``

No driftswitch process runs. The events of ``benchmarks/pipeline.py`` (40 flags), each stamped
when it is sent, are produced at ``--rate`` per second with the same paced confluent-kafka
producer, while one bare aiokafka consumer (``--fetch-wait-ms``: the join stage's fetch wait is
100 ms) follows the two input topics from their start. Per ``--window`` seconds of the run it
prints how many records the broker acknowledged and, for those, the delay from the broker's
acknowledgement to the consumer receiving them (p50, p99), the same over the whole run (p99,
p99.9, the slowest record and where it was); then the produce → ack latency over
the whole run and the CPU the broker used while the records were produced (until the last
was acknowledged), in cores.
``--linger-ms`` is the producer's ``linger.ms`` (default 5, librdkafka's; until 2026-11-30 the
benchmarks' producer used 2). ``--no-consumer`` produces alone.

This is the control for ``benchmarks/pipeline.py``'s reaction runs: what the broker takes to hand
records to a consumer that does nothing with them, and whether that stays constant as the
broker's log grows. Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time

import pipeline
from pipeline import follow_input, make_events, percentile, produce, restamp, start_after

from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.procstat import cpu_seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=4000.0, help="records per second")
    parser.add_argument("--events", type=int, default=240_000)
    parser.add_argument("--fetch-wait-ms", type=int, default=100)
    parser.add_argument("--window", type=float, default=6.0, help="seconds per printed line")
    parser.add_argument(
        "--linger-ms", type=int, default=pipeline.LINGER_MS, help="the producer's linger.ms"
    )
    parser.add_argument("--no-consumer", action="store_true", help="produce alone")
    args = parser.parse_args()
    pipeline.LINGER_MS = args.linger_ms

    _, records = make_events(40, 3000)
    records = records[: args.events]
    load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"{len(records):,} records at {args.rate:,.0f}/s; {load}")
    async with EmbeddedBroker() as broker:
        topics = Topics.with_prefix("follow")
        await ensure_topics(broker.bootstrap, topics)
        start = start_after(len(records))
        stamped = restamp(records, args.rate, start)
        consumed: dict[tuple[str, int, int], float] = {}
        task = None
        if not args.no_consumer:
            task = asyncio.ensure_future(
                follow_input(broker.bootstrap, topics, args.fetch_wait_ms, consumed)
            )
        acks: dict[tuple[str, int, int], float] = {}
        latencies: list[float] = []
        wait = start - time.time()
        if wait > 0.05:  # the CPU is counted from the first record's send
            await asyncio.sleep(wait - 0.05)
        cpu = (time.time(), cpu_seconds(broker.pid))
        await asyncio.to_thread(
            produce, broker.bootstrap, topics, stamped, args.rate, acks, latencies, start
        )
        broker_cores = (cpu_seconds(broker.pid) - cpu[1]) / (time.time() - cpu[0])
        await asyncio.sleep(3)  # the consumer's last fetches
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    windows: dict[int, list[tuple[float, float | None]]] = {}
    for key, acked in acks.items():
        windows.setdefault(int((acked - start) // args.window), []).append(
            (acked, consumed.get(key))
        )
    for w in sorted(windows):
        rows = windows[w]
        line = f"{w * args.window:6.0f} s: {len(rows):7,} acked"
        delays = [got - acked for acked, got in rows if got is not None]
        if delays:
            line += (
                f"; ack → consumed p50 {percentile(delays, 0.5) * 1000:6.0f} ms, "
                f"p99 {percentile(delays, 0.99) * 1000:6.0f} ms"
            )
            if len(delays) < len(rows):
                line += f" ({len(rows) - len(delays)} never consumed)"
        print(line)
    delays = {key: consumed[key] - acked for key, acked in acks.items() if key in consumed}
    if delays:
        worst = max(delays, key=delays.__getitem__)
        every = list(delays.values())
        print(
            f"ack → consumed over the run: p99 {percentile(every, 0.99) * 1000:.0f} ms, p99.9 "
            f"{percentile(every, 0.999) * 1000:.0f} ms, max {delays[worst] * 1000:.0f} ms "
            f"({worst[0]}[{worst[1]}] offset {worst[2]})"
        )
    print(
        f"produce → ack over the run: p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms; the broker used {broker_cores:.2f} "
        "cores while they were produced and acknowledged; "
        "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    )


if __name__ == "__main__":
    asyncio.run(main())
