"""Throughput of the Python client's request path, and how fast a kill reaches every consumer.

Pinned to one CPU (``os.sched_setaffinity``; the broker, started before, is not), so the
client's background thread shares the core with the caller, as in a single-core model service.
Prints:

1. ``variant()`` calls/s: the bare :class:`~driftswitch.streams.contract.assign.Fractional`, the
   client, ``resolve()``, and our OpenFeature provider through the OpenFeature API;
2. event-record calls/s: ``record_prediction()`` into the buffer (no broker), and with an
   embedded broker while the background thread sends (plus the delivered rate after ``flush``);
3. kill/restore propagation: seconds from the broker's acknowledgement of a flag change until the
   client, our OpenFeature provider and openfeature-provider-flagd in file mode (reading the file
   :class:`~driftswitch.streams.contract.flagd.FlagdFile` writes from the client's callbacks; it
   polls every 500 ms by default) all serve the new state, over ``--changes`` changes published
   at random moments.

Run: ``.venv/bin/python benchmarks/client.py [--calls N] [--events N] [--changes N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.client.openfeature import DriftswitchProvider
from driftswitch.streams.contract.assign import Fractional
from driftswitch.streams.contract.events import FlagChangeEvent, encode
from driftswitch.streams.contract.flagd import FlagdFile
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.tools.broker import EmbeddedBroker

FLAG = "ranker"


def flag_state(version: int, killed: bool) -> FlagChangeEvent:
    return FlagChangeEvent.model_validate(
        {
            "flag": FLAG,
            "version": version,
            "variants": {
                "control": {"weight": 80, "value": "model-a"},
                "candidate": {"weight": 15, "killed": killed, "value": "model-b"},
                "challenger": {"weight": 5, "value": "model-c"},
            },
            "default_variant": "control",
            "cause": {"kind": "manual", "action": "kill" if killed else "restore"},
            "ts": time.time(),
            "actor": "benchmark",
        }
    )


def rate(label: str, n: int, run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    per_s = n / (time.perf_counter() - start)
    print(f"| {label} | {per_s:,.0f} |")
    return per_s


def bench_variant(calls: int) -> None:
    rng = random.Random(5)
    keys = [f"user-{rng.getrandbits(40):x}" for _ in range(calls)]
    state = flag_state(1, killed=False)
    split = Fractional.from_event(state)
    client = DriftswitchClient("127.0.0.1:1", follow_flags=False)
    client.apply(state)
    api.set_provider(DriftswitchProvider(client), domain="bench")
    of_client = api.get_client("bench")
    contexts = [EvaluationContext(targeting_key=k) for k in keys[: calls // 20]]

    print("\n| variant path (one core) | calls/s |\n|---|---:|")
    rate("`Fractional.variant(key)`", calls, lambda: [split.variant(k) for k in keys])
    variant = client.variant
    rate("`client.variant(flag, key)`", calls, lambda: [variant(FLAG, k) for k in keys])
    resolve = client.resolve
    rate("`client.resolve(flag, key)`", calls, lambda: [resolve(FLAG, k) for k in keys])
    rate(
        "OpenFeature `get_string_details` (our provider)",
        len(contexts),
        lambda: [of_client.get_string_details(FLAG, "x", c) for c in contexts],
    )
    api.clear_providers()


def bench_record(events: int, broker: EmbeddedBroker, topics: Topics) -> None:
    print("\n| event recording (one core) | calls/s |\n|---|---:|")
    idle = DriftswitchClient("127.0.0.1:1", buffer_size=events + 1)
    rate(
        "`record_prediction()` into the buffer, no sender",
        events,
        lambda: [
            idle.record_prediction(f"r{i}", FLAG, "control", 1, score=0.9) for i in range(events)
        ],
    )
    with DriftswitchClient(
        broker.bootstrap, topics=topics, follow_flags=False, buffer_size=events + 1
    ) as client:
        start = time.perf_counter()
        rate(
            "`record_prediction()` while the background thread sends",
            events,
            lambda: [
                client.record_prediction(f"s{i}", FLAG, "control", 1, score=0.9)
                for i in range(events)
            ],
        )
        client.flush(120)
        delivered = client.stats()
        elapsed = time.perf_counter() - start
        per_s = delivered.sent / elapsed
        print(f"| delivered to the broker (recorded → acknowledged) | {per_s:,.0f} |")
        print(f"\nstats after flush: {delivered}")


async def _publish(bootstrap: str, topic: str, state: FlagChangeEvent) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, encode(state), key=FLAG.encode())
        return time.perf_counter()
    finally:
        await producer.stop()


def bench_propagation(changes: int, broker: EmbeddedBroker, topics: Topics) -> None:
    keys = [f"user-{i}" for i in range(100)]
    asyncio.run(_publish(broker.bootstrap, topics.flags.name, flag_state(1, killed=False)))
    with (
        tempfile.TemporaryDirectory() as tmp,
        DriftswitchClient(broker.bootstrap, topics=topics) as client,
    ):
        flagd_file = FlagdFile(Path(tmp) / "flags.json")
        flagd_file.update(*client.flag_states().values())
        client.on_change(lambda s: flagd_file.update(s))
        api.set_provider_and_wait(DriftswitchProvider(client), domain="ours")
        api.set_provider_and_wait(
            FlagdProvider(
                resolver_type=ResolverType.FILE, offline_flag_source_path=str(flagd_file.path)
            ),
            domain="flagd",
        )
        ours, flagd = api.get_client("ours"), api.get_client("flagd")
        consumers: dict[str, Callable[[str], str | None]] = {
            "client": lambda k: client.variant(FLAG, k),
            "OpenFeature provider (ours)": lambda k: (
                ours.get_string_details(FLAG, "x", EvaluationContext(targeting_key=k)).variant
            ),
            "flagd provider, file mode": lambda k: (
                flagd.get_string_details(FLAG, "x", EvaluationContext(targeting_key=k)).variant
            ),
        }
        seconds: dict[str, list[float]] = {name: [] for name in consumers}
        rng = random.Random(3)
        for version in range(2, changes + 2):
            # Without jitter every change would land just after a poll of flagd's file watcher.
            time.sleep(rng.uniform(0.0, 0.5))
            state = flag_state(version, killed=version % 2 == 0)
            expected = {k: Fractional.from_event(state).variant(k) for k in keys}
            acked = asyncio.run(_publish(broker.bootstrap, topics.flags.name, state))
            pending = dict(consumers)
            while pending:
                for name, get in list(pending.items()):
                    if all(get(k) == expected[k] for k in keys):
                        seconds[name].append(time.perf_counter() - acked)
                        del pending[name]
                if time.perf_counter() - acked > 30:
                    raise SystemExit(f"version {version} not seen in 30 s by {sorted(pending)}")
        api.clear_providers()
    print(f"\n{changes} kills/restores, each published at a random moment (0-0.5 s jitter):")
    print("\n| consumer | median s | p90 s | max s |\n|---|---:|---:|---:|")
    for name, values in seconds.items():
        values.sort()
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        print(f"| {name} | {statistics.median(values):.3f} | {p90:.3f} | {values[-1]:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: first)")
    args = parser.parse_args()
    with EmbeddedBroker() as broker:  # started before pinning: the broker keeps every core
        cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})  # this thread and every thread it starts from now on
        print(f"pinned to CPU {cpu}")
        bench_variant(args.calls)
        topics = Topics.with_prefix("bench-client")
        asyncio.run(ensure_topics(broker.bootstrap, topics))
        bench_record(args.events, broker, topics)
        bench_propagation(args.changes, broker, topics)


if __name__ == "__main__":
    main()
