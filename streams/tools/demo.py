"""``driftswitch demo``: the whole loop on one machine in under a minute.

It starts the embedded broker, creates the topics, runs a worker in this process (both stages,
as ``driftswitch run`` does by default), and plays a simulated model service
(:mod:`driftswitch.streams.tools.simulate`) through a real Kafka client (aiokafka): a control
and a candidate whose accuracy drops from 0.90 to 0.75 halfway. A second client follows the
flags topic the way a model service would and prints each flag change with its cause as it
arrives: first the initial state, then the candidate's kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import click

from driftswitch.streams.contract.errors import DriftswitchError
from driftswitch.streams.contract.placement import key_partitioner

__all__ = ["DEMO_GUARDRAILS", "DemoError", "demo_command", "demo_scenario"]

log = logging.getLogger(__name__)


class DemoError(DriftswitchError):
    """The demo could not run (its port is taken, the worker stopped)."""


class DemoInterruptedError(DemoError):
    """A signal (Ctrl-C, SIGTERM) ended the demo; the worker and the broker were stopped."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(f"interrupted ({name}): the worker and the broker were stopped")


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


@dataclass
class _Signals:
    """The signals the demo received, and whether its stop is under way."""

    received: list[int] = field(default_factory=list)
    #: Set where the demo starts to stop (the worker, its clients, the broker): a first signal
    #: from then on lets the stop finish instead of cancelling it halfway.
    stopping: bool = False
    #: With ``--stay``, the verdict once the demo waits for the signal that ends it (which then
    #: ends it as the verdict says, not as an interruption).
    verdict: bool | None = None


async def _demo(
    requests: int, rate: float, seed: int, web_port: int | None, stay: bool = False
) -> bool:
    """The demo; the first SIGINT or SIGTERM stops it cleanly (the worker, its clients and the
    broker) and raises :class:`DemoInterruptedError`; a second one exits at once. With
    ``stay``, the worker runs on after the verdict until the first signal, which then stops the
    demo without an error: the verdict is returned."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signals = _Signals()

    def interrupt(signum: int) -> None:
        if signals.received:  # the stop under way takes too long for the user: leave now
            name = signal.Signals(signum).name
            sys.stdout.flush()
            sys.stderr.write(f"driftswitch demo: second signal ({name}): exiting at once\n")
            sys.stderr.flush()
            # The broker dies with this process (PR_SET_PDEATHSIG, streams/tools/broker.py).
            os._exit(128 + signum)
        signals.received.append(signum)
        if not signals.stopping:
            task.cancel()

    handled = (signal.SIGINT, signal.SIGTERM)
    for signum in handled:
        loop.add_signal_handler(signum, interrupt, signum)
    try:
        ok = await _play(requests, rate, seed, web_port, signals, stay)
    except asyncio.CancelledError:
        if not signals.received:
            raise
        if signals.verdict is not None:  # --stay: the signal it waited for
            return signals.verdict
        raise DemoInterruptedError(signals.received[0]) from None
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    if signals.received:  # it came while the demo was stopping, which it let finish
        raise DemoInterruptedError(signals.received[0])
    return ok


async def _play(
    requests: int, rate: float, seed: int, web_port: int | None, signals: _Signals, stay: bool
) -> bool:
    """Broker, worker, model service and flags follower; whether the candidate was killed."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from driftswitch.streams.config.model import parse_config
    from driftswitch.streams.contract.events import FlagChangeEvent, PredictionEvent, encode
    from driftswitch.streams.contract.topics import Topics
    from driftswitch.streams.kafka import connect as kafka
    from driftswitch.streams.kafka.settings import KafkaSettings
    from driftswitch.streams.service.runner import DEFAULT_STAGE, check_port, serve_worker
    from driftswitch.streams.tools.broker import EmbeddedBroker, free_port
    from driftswitch.streams.tools.simulate import config_yaml, simulate

    console = Console(highlight=False)
    port = web_port or free_port()
    check_port("127.0.0.1", port)  # a busy port is one clear line, before anything starts
    scenario = demo_scenario(requests, seed)
    config = parse_config(config_yaml(scenario, DEMO_GUARDRAILS), "<demo config>")
    topics = Topics()
    with _step(console, f"simulating {requests:,} requests of a model service..."):
        events = list(simulate(scenario))
    seen: list[FlagChangeEvent] = []
    killed = asyncio.Event()

    with _step(console, "starting the embedded Kafka broker (Tansu)..."):
        broker = await EmbeddedBroker().start_async()
    try:
        console.print(f"[bold]broker[/] embedded Tansu at {broker.bootstrap} (memory storage)")
        stop = asyncio.Event()
        worker = asyncio.ensure_future(
            serve_worker(
                config,
                broker.bootstrap,
                topics,
                web_port=port,
                stop=stop,
                stage=DEFAULT_STAGE,
                handle_signals=False,  # _demo's handler stops everything
            )
        )
        console.print(
            f"[bold]worker[/] in this process; status page at http://127.0.0.1:{port}/ "
            f"(health at /healthz, flags at /api/v1/flags)"
        )
        local = KafkaSettings(bootstrap=broker.bootstrap)
        consumer = kafka.consumer(local, auto_offset_reset="earliest")
        producer = kafka.producer(local, linger_ms=5, partitioner=key_partitioner)
        started = time.monotonic()

        first_state = asyncio.Event()
        follower: asyncio.Future[None] | None = None

        async def follow_flags() -> None:
            # Once the worker has created the flags topic, from offset 0 (seek_to_start in
            # streams/kafka/connect.py: never the start the broker names).
            while True:
                partitions = await kafka.partitions_of(local, topics.flags.name)
                if partitions:
                    break
                await asyncio.sleep(0.1)
            tps = [kafka.topic_partition(topics.flags.name, p) for p in sorted(partitions)]
            consumer.assign(tps)
            kafka.seek_to_start(consumer, *tps)
            async for record in consumer:
                change = FlagChangeEvent.model_validate_json(record.value)
                seen.append(change)
                _show_change(console, Panel, change, time.monotonic() - started)
                first_state.set()
                if change.variants.get("candidate") and change.variants["candidate"].killed:
                    killed.set()

        try:
            with _step(console, "starting the worker and the model service's Kafka clients..."):
                await kafka.start(consumer, local)
                await kafka.start(producer, local)
                follower = asyncio.ensure_future(follow_flags())
                # The worker creates the topics and publishes the initial flag state first.
                await _until(first_state, worker, follower)
            _raise_if_failed(worker, follower)
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
                    _raise_if_failed(worker, follower)
                    if killed.is_set():
                        break
                    await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - tick)))
                await producer.flush()
            if not killed.is_set():
                with _step(console, "all events sent; waiting for the worker's decision..."):
                    await _until(killed, worker, follower, seconds=15)
            _raise_if_failed(worker, follower)
            if stay:
                _verdict(console, killed.is_set())
                console.print(
                    f"[bold]staying[/]: the worker runs on; status page at "
                    f"http://127.0.0.1:{port}/ (Ctrl-C stops the demo)"
                )
                signals.verdict = killed.is_set()
                await _until(asyncio.Event(), worker, follower)  # until a signal cancels it
                _raise_if_failed(worker, follower)
        finally:
            signals.stopping = True
            with _step(console, "stopping the worker and the clients..."):
                if follower is not None:
                    follower.cancel()
                    # Its own error, if any, was raised above (no await since the last check).
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await follower
                stop.set()
                await producer.stop()
                await consumer.stop()
                await asyncio.wait({worker}, timeout=30)
                if not worker.done():
                    worker.cancel()
                    await asyncio.wait({worker})
        _raise_if_failed(worker, finished=True)
    finally:
        signals.stopping = True
        with _step(console, "stopping the broker..."):
            await broker.stop_async()
    if not stay:
        _verdict(console, killed.is_set())
    return killed.is_set()


def _verdict(console: Any, killed: bool) -> None:
    if killed:
        console.print("[bold green]done[/]: the candidate was killed; traffic goes to control.")
    else:
        console.print("[bold red]no kill seen[/]: the candidate was not killed in time.")


async def _until(
    event: asyncio.Event, *tasks: asyncio.Future[Any], seconds: float | None = None
) -> None:
    """Wait until ``event`` is set, one of ``tasks`` ends or ``seconds`` pass."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, *tasks}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def _step(console: Any, text: str) -> Any:
    """Say what is happening: a spinner on a terminal, a plain line in a log."""
    if console.is_terminal:
        return console.status(text)
    console.print(text)
    return contextlib.nullcontext()


def _raise_if_failed(
    worker: asyncio.Future[None],
    follower: asyncio.Future[None] | None = None,
    finished: bool = False,
) -> None:
    """Stop the demo with the worker's own error if it ended (e.g. it could not start), or with
    the flags follower's (it runs until cancelled, so its end is always a failure);
    ``finished``: the demo asked the worker to stop, so only an error counts."""
    if worker.done() and not worker.cancelled():
        err = worker.exception()
        if err is not None:
            raise DemoError(f"the worker failed: {err}") from err
        if not finished:
            raise DemoError("the worker stopped early")
    if follower is not None and follower.done() and not follower.cancelled():
        err = follower.exception()
        what = f"{type(err).__name__}: {err}" if err is not None else "it stopped"
        raise DemoError(f"following the flags topic failed: {what}") from err


def _show_change(console: Any, panel: Any, change: Any, elapsed: float) -> None:
    from driftswitch.streams.pipeline.backtest import format_ts

    cause = change.cause
    weights = ", ".join(
        f"{name}={v.weight}{' (killed)' if v.killed else ''}" for name, v in change.variants.items()
    )
    action = cause.action.value + (f" {cause.variant}" if cause.variant else "")
    lines = [
        f"[bold]{change.flag}[/] v{change.version}: {action} — weights {weights}",
        f"cause: {cause.kind.value}" + (f", {cause.reason}" if cause.reason else ""),
    ]
    if cause.guardrail:
        stat = "" if cause.statistic is None else f" statistic {cause.statistic:.3f}"
        threshold = "" if cause.threshold is None else f", threshold {cause.threshold:.3f}"
        samples = ", ".join(f"{k} {n:,}" for k, n in cause.samples.items())
        interval = ""
        if cause.interval:
            interval = f"; interval [{cause.interval[0]:.4f}, {cause.interval[1]:.4f}]"
        lines.append(
            f"guardrail {cause.guardrail}: {cause.detector}{stat}{threshold}; "
            f"samples {samples}{interval}"
        )
    window = cause.window or {}
    if window.get("first_ts") is not None:
        first, last = format_ts(window["first_ts"]), format_ts(window.get("last_ts"))
        lines.append(
            f"evidence: {window.get('events', 0):,} observations, event time {first} "
            f"to {last[11:]} UTC"
        )
    console.print(
        panel(
            "\n".join(lines),
            title=f"flags topic, {elapsed:.1f} s after start",
            border_style="red" if cause.action.value == "kill" else "blue",
        )
    )


#: ``driftswitch demo --help``'s epilog (the README's exit codes, with the demo's own).
DEMO_EXIT_CODES = (
    "Exit codes: 0 the candidate was killed; 1 it was not killed in time, or the demo failed (a "
    "busy --web-port, the worker or the flags follower failed); 2 usage; 130 (143) stopped by "
    "Ctrl-C (SIGTERM), after stopping the worker, its clients and the broker; a second signal "
    "exits at once, with the broker. With --stay, the Ctrl-C (SIGTERM) that ends the wait "
    "after the verdict stops the demo as usual and it exits as the verdict says (0 or 1)."
)


@click.command("demo", epilog=DEMO_EXIT_CODES)
@click.option("--requests", type=click.IntRange(min=1000), default=20_000, show_default=True)
@click.option("--rate", type=click.FloatRange(min=100), default=5_000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--web-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the worker's status page and API (default: a free port).",
)
@click.option(
    "--stay",
    is_flag=True,
    help="After the verdict, keep the worker and its status page running until Ctrl-C.",
)
def demo_command(requests: int, rate: float, seed: int, web_port: int | None, stay: bool) -> None:
    """Embedded broker + worker + a simulated model service whose candidate degrades."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        ok = asyncio.run(_demo(requests, rate, seed, web_port, stay))
    except DemoInterruptedError as err:
        click.echo(f"driftswitch demo: {err}", err=True)
        raise SystemExit(128 + err.signum) from None  # the shell's convention: 130 for Ctrl-C
    except DriftswitchError as err:
        click.echo(f"driftswitch demo: {err}", err=True)
        raise SystemExit(1) from None
    if not ok:
        raise SystemExit(1)
