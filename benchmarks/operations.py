"""What operations cost the worker: hook submission, webhook throughput, a /metrics scrape.

    .venv/bin/python benchmarks/operations.py

Prints:
- ``HookDispatcher.submit`` per event (what the worker's event loop pays per decision);
- signed generic deliveries per second to a local aiohttp receiver (one flag, in order);
- the time to build one ``/metrics`` exposition from an engine snapshot of F flags x 3
  variants x 2 guardrails (paid per scrape, never per event).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from driftswitch.streams.config.model import HookFormat
from driftswitch.streams.contract.events import (
    Action,
    Cause,
    CauseKind,
    FlagChangeEvent,
    VariantState,
)
from driftswitch.streams.service.hooks import FailedDelivery, Hook, HookDispatcher
from driftswitch.streams.service.metrics import Metrics


def change(flag: str, version: int) -> FlagChangeEvent:
    return FlagChangeEvent(
        flag=flag,
        version=version,
        variants={
            "control": VariantState(weight=100, value="v1"),
            "candidate": VariantState(weight=0, killed=True, value="v2"),
        },
        default_variant="control",
        cause=Cause(kind=CauseKind.DETECTOR, action=Action.KILL, variant="candidate"),
        ts=1767225600.0,
        actor="driftswitch",
    )


def hook(url: str) -> Hook:
    return Hook(
        name="bench",
        format=HookFormat.GENERIC,
        url=SecretStr(url),
        secret=SecretStr("bench-secret"),
        flag=None,
        timeout=5.0,
        max_attempts=3,
        backoff=0.01,
        max_backoff=0.1,
    )


async def bench_hooks(n: int) -> tuple[float, float]:
    received = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal received
        await request.read()
        received += 1
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]

    async def deadletter(failed: FailedDelivery) -> None:
        raise RuntimeError(f"unexpected dead letter: {failed.detail}")

    events = [change("ranker", v) for v in range(1, n + 1)]
    async with HookDispatcher(
        [hook(f"http://{host}:{port}/hook")],
        deadletter=deadletter,
        queue_size=n,
        rng=random.Random(0),
    ) as dispatcher:
        t0 = time.perf_counter()
        for event in events:
            dispatcher.submit(event)
        submit_s = time.perf_counter() - t0
        await dispatcher.drain()
        total_s = time.perf_counter() - t0
    await runner.cleanup()
    assert received == n
    return submit_s / n * 1e6, n / total_s


def snapshot(flags: int) -> dict[str, Any]:
    variant = {
        "predictions": 100_000,
        "labelled": 90_000,
        "joined": 90_000,
        "expired": 12,
        "errors": 3,
        "windowed_accuracy": 0.9,
        "last_ts": 1767225600.0,
        "weight": 33,
        "killed": False,
    }
    guardrail = {
        "variant": "candidate",
        "samples": {"candidate": 90_000},
        "statistic": 1.5,
        "threshold": 11.5,
        "state": "ok",
        "breaches": 0,
    }
    return {
        "watermark": 1767225600.0,
        "join": {"pending_predictions": 100, "pending_outcomes": 5},
        "flags": {
            f"flag{i}": {
                "version": 3,
                "paused": False,
                "variants": {v: dict(variant) for v in ("control", "candidate", "shadow")},
                "guardrails": {g: dict(guardrail) for g in ("accuracy", "latency")},
            }
            for i in range(flags)
        },
    }


def bench_scrape(flags: int, repeats: int = 20) -> tuple[float, int]:
    metrics = Metrics(CollectorRegistry())
    metrics.observe_snapshot(snapshot(flags))
    times = []
    size = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        size = len(metrics.exposition())
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, size


def main() -> None:
    submit_us, per_s = asyncio.run(bench_hooks(2000))
    print(f"HookDispatcher.submit: {submit_us:.1f} µs per event (1 hook)")
    print(f"signed generic deliveries, one flag in order, local receiver: {per_s:,.0f}/s")
    for flags in (10, 100, 1000):
        ms, size = bench_scrape(flags)
        print(f"/metrics exposition, {flags} flags: {ms:.1f} ms median ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
