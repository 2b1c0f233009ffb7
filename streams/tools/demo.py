"""``driftswitch demo``: the whole loop on one machine in under a minute.

It starts the embedded broker, creates the topics, runs a worker in this process, and plays a
simulated model service (:mod:`driftswitch.streams.tools.simulate`) through a real Kafka client
(aiokafka): a control and a candidate whose accuracy drops from 0.90 to 0.75 halfway. A second
client follows the flags topic the way a model service would and prints each flag change with
its cause as it arrives: first the initial state, then the candidate's kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import click

__all__ = ["DEMO_GUARDRAILS", "demo_command", "demo_scenario"]

log = logging.getLogger(__name__)

DEMO_GUARDRAILS = """\
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}
        min_samples: 200
        action: kill
"""


def demo_scenario(requests: int, seed: int) -> Any:
    """Control 70 % / candidate 30 %; the candidate drops from 0.90 to 0.75 halfway."""
    from driftswitch.streams.tools.simulate import Scenario, VariantSpec

    return Scenario(
        requests=requests,
        change_at=requests // 2,
        rate=200.0,
        label_delay=2.0,
        seed=seed,
        variants=(
            VariantSpec("control", weight=70, accuracy=0.90),
            VariantSpec("candidate", weight=30, accuracy=0.90, accuracy_after=0.75),
        ),
    )


async def _demo(requests: int, rate: float, seed: int, web_port: int | None) -> bool:
    from rich.console import Console
    from rich.panel import Panel
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from driftswitch.streams.config.model import parse_config
    from driftswitch.streams.contract.events import FlagChangeEvent, PredictionEvent, encode
    from driftswitch.streams.contract.topics import Topics
    from driftswitch.streams.kafka import connect as kafka
    from driftswitch.streams.kafka.settings import KafkaSettings
    from driftswitch.streams.service.runner import serve_worker
    from driftswitch.streams.tools.broker import EmbeddedBroker, free_port
    from driftswitch.streams.tools.simulate import config_yaml, simulate

    console = Console(highlight=False)
    scenario = demo_scenario(requests, seed)
    config = parse_config(config_yaml(scenario, DEMO_GUARDRAILS), "<demo config>")
    topics = Topics()
    port = web_port or free_port()
    events = list(simulate(scenario))
    seen: list[FlagChangeEvent] = []
    killed = asyncio.Event()

    async with EmbeddedBroker() as broker:
        console.print(f"[bold]broker[/] embedded Tansu at {broker.bootstrap} (memory storage)")
        stop = asyncio.Event()
        worker = asyncio.ensure_future(
            serve_worker(config, broker.bootstrap, topics, web_port=port, stop=stop)
        )
        console.print(
            f"[bold]worker[/] in this process; status at http://127.0.0.1:{port}/healthz, "
            f"flags at http://127.0.0.1:{port}/api/v1/flags"
        )
        local = KafkaSettings(bootstrap=broker.bootstrap)
        consumer = kafka.consumer(local, topics.flags.name, auto_offset_reset="earliest")
        producer = kafka.producer(local, linger_ms=5)
        started = time.monotonic()

        async def follow_flags() -> None:
            async for record in consumer:
                change = FlagChangeEvent.model_validate_json(record.value)
                seen.append(change)
                _show_change(console, Panel, change, time.monotonic() - started)
                if change.variants.get("candidate") and change.variants["candidate"].killed:
                    killed.set()

        try:
            await kafka.start(consumer, local)
            await kafka.start(producer, local)
            follower = asyncio.ensure_future(follow_flags())
            console.print(
                f"[bold]model service[/] {len(events):,} events: control 0.90, candidate 0.90 "
                f"then 0.75 from request {scenario.change_at:,}; {rate:,.0f} events/s"
            )
            with Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                console=console,
                transient=False,
            ) as progress:
                task = progress.add_task("producing", total=len(events), note="")
                step = max(1, int(rate / 20))
                for i in range(0, len(events), step):
                    tick = time.monotonic()
                    for event in events[i : i + step]:
                        topic = (
                            topics.predictions.name
                            if isinstance(event, PredictionEvent)
                            else topics.outcomes.name
                        )
                        await producer.send(topic, encode(event), key=event.request_id.encode())
                    note = "candidate KILLED" if killed.is_set() else "candidate serving"
                    progress.update(task, advance=len(events[i : i + step]), note=note)
                    if killed.is_set():
                        break
                    await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - tick)))
                await producer.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(killed.wait(), timeout=15)
            follower.cancel()
        finally:
            stop.set()
            await producer.stop()
            await consumer.stop()
            with contextlib.suppress(Exception):
                await worker
    if killed.is_set():
        console.print("[bold green]done[/]: the candidate was killed; traffic goes to control.")
    else:
        console.print("[bold red]no kill seen[/]: the candidate was not killed in time.")
    return killed.is_set()


def _show_change(console: Any, panel: Any, change: Any, elapsed: float) -> None:
    cause = change.cause
    weights = ", ".join(
        f"{name}={v.weight}{' (killed)' if v.killed else ''}" for name, v in change.variants.items()
    )
    lines = [
        f"[bold]{change.flag}[/] v{change.version}: {cause.action.value} "
        f"{cause.variant or ''} — weights {weights}",
        f"cause: {cause.kind.value}" + (f", {cause.reason}" if cause.reason else ""),
    ]
    if cause.guardrail:
        interval = f", interval {cause.interval}" if cause.interval else ""
        lines.append(
            f"guardrail {cause.guardrail}: {cause.detector} statistic {cause.statistic:.3f} "
            f">= threshold {cause.threshold:.3f}; samples {cause.samples}{interval}"
        )
    if cause.window:
        lines.append(f"window: {cause.window}")
    console.print(
        panel(
            "\n".join(lines),
            title=f"flags topic, {elapsed:.1f} s after start",
            border_style="red" if cause.action.value == "kill" else "blue",
        )
    )


@click.command("demo")
@click.option("--requests", type=click.IntRange(min=1000), default=20_000, show_default=True)
@click.option("--rate", type=click.FloatRange(min=100), default=5_000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--web-port", type=click.IntRange(1, 65535), default=None)
def demo_command(requests: int, rate: float, seed: int, web_port: int | None) -> None:
    """Embedded broker + worker + a simulated model service whose candidate degrades."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    ok = asyncio.run(_demo(requests, rate, seed, web_port))
    if not ok:
        raise SystemExit(1)
