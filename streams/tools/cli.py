"""The ``driftswitch`` command line."""

from __future__ import annotations

from typing import Any

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="driftswitch")
def main() -> None:
    """driftswitch: drift-triggered kill switches and rollouts for ML models behind flags."""


@main.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--explain",
    is_flag=True,
    help="Also say what each guardrail's false-alarm budget means in time.",
)
@click.option(
    "--rate",
    default=None,
    help="With --explain: events/s (e.g. 40/s) assumed for guardrails without expected_rate.",
)
def validate(configs: tuple[str, ...], explain: bool, rate: str | None) -> None:
    """Check configuration files; print every problem as file:line: path: expectation.

    With --explain, each guardrail's budget is translated into time: at the guardrail's
    `expected_rate` (or --rate) an `arl0` of N events means one false alarm every N / rate
    seconds on average, and a chance 1 - exp(-t/T) of at least one within t.
    """
    from driftswitch.streams.config import budget
    from driftswitch.streams.config.model import config_warnings, iter_guardrails, load_config
    from driftswitch.streams.contract.errors import ConfigError

    assumed: float | None = None
    if rate is not None:
        try:
            assumed = budget.parse_rate(rate)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--rate") from None

    failed = False
    for path in configs:
        try:
            config = load_config(path)
        except ConfigError as exc:
            failed = True
            for problem in exc.problems:
                click.echo(problem, err=True)
            n = len(exc.problems)
            click.echo(f"{path}: invalid ({n} problem{'s' if n != 1 else ''})", err=True)
            continue
        for warning in config_warnings(path, config):
            click.echo(f"warning: {warning}", err=True)
        guardrails = sum(1 for _ in iter_guardrails(config))
        click.echo(f"{path}: ok ({len(config.flags)} flags, {guardrails} guardrails)")
        if explain:
            _explain_budgets(config, assumed)
    if failed:
        raise SystemExit(1)


def _explain_budgets(config: Any, assumed: float | None) -> None:
    """One paragraph per guardrail: its detector, and its budget in events and in time."""
    from driftswitch.streams.config import budget
    from driftswitch.streams.config.model import detector_spec, iter_guardrails

    for name, flag, g in iter_guardrails(config):
        spec = detector_spec(g, flag)
        rate: float | None
        if g.expected_rate is not None:
            rate, source = g.expected_rate, "expected_rate"
        else:
            rate, source = assumed, "--rate"
        info = budget.explain(spec, rate=rate, rate_source=source)
        head = f"  {name}/{g.name}: {g.metric.value} of {g.variant!r}"
        if g.compare_to is not None:
            head += f" against {g.compare_to!r}"
        click.echo(f"{head}, detector {spec['kind']}, action {g.action.value}")
        if info["budget"] == "arl0":
            stated = (
                f" (from false_alarm_every: {budget.format_duration(g.false_alarm_every)})"
                if g.false_alarm_every is not None
                else ""
            )
            click.echo(f"    arl0 = {info['arl0']:,.0f} events{stated}")
            if "rate" not in info:
                click.echo("    give expected_rate in the config or --rate to see it in time")
        click.echo(f"    {info['text']}")


@main.command("broker")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Loopback port to listen on [default: a free one].",
)
@click.option(
    "--create-topics",
    is_flag=True,
    help="Create driftswitch's topics (names from DRIFTSWITCH_TOPIC_* variables).",
)
def broker_command(port: int | None, create_topics: bool) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground until Ctrl-C/SIGTERM.

    For development and demos: storage is in memory, so every record is lost when it stops;
    production points driftswitch at real Kafka.
    """
    import asyncio
    import contextlib
    import os
    import signal

    from driftswitch.streams.contract.topics import TopicError, Topics
    from driftswitch.streams.kafka import ensure_topics
    from driftswitch.streams.tools.broker import BrokerError, EmbeddedBroker

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with EmbeddedBroker(port=port) as broker:
            names: list[str] = []
            if create_topics:
                topics = Topics.from_env(os.environ)
                await ensure_topics(broker.bootstrap, topics)
                names = [spec.name for spec in topics.specs()]
            click.echo(
                f"Kafka bootstrap: {broker.bootstrap} (Tansu pid {broker.pid}, memory storage; "
                "Ctrl-C or SIGTERM stops it)"
            )
            click.echo(f"export DRIFTSWITCH_BROKER={broker.bootstrap}")
            if names:
                click.echo(f"topics: {', '.join(names)}")
            while not stop.is_set():
                if not broker.running:
                    click.echo(
                        f"driftswitch broker: Tansu exited\n{broker.output_tail()}", err=True
                    )
                    return 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
        click.echo("driftswitch broker: stopped", err=True)
        return 0

    try:
        code = asyncio.run(serve())
    except (BrokerError, TopicError) as err:
        click.echo(f"driftswitch broker: {err}", err=True)
        raise SystemExit(1) from None
    if code:
        raise SystemExit(code)


# -- the live worker (driftswitch.streams.service.runner)
# ---------------------------------------------
def _register_worker_commands() -> None:
    from driftswitch.streams.service.runner import run_command
    from driftswitch.streams.tools.demo import demo_command

    main.add_command(run_command)
    main.add_command(demo_command)


_register_worker_commands()


def _register_flags_commands() -> None:
    from driftswitch.streams.tools.flags import flags_group

    main.add_command(flags_group)


_register_flags_commands()


@main.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Config file."
)
@click.argument("events", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per flag change/alert.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write charts: out.html (self-contained, with out.png beside it) or out.png.",
)
def backtest(config_path: str, events: str, as_json: bool, report_path: str | None) -> None:
    """Replay EVENTS (JSON Lines) through the service's engine, in file order.

    Bad lines are reported on stderr (line: reason: detail) and skipped. With --json every flag
    change and alert is printed as one JSON object with "at": {"line": N}, the line of the event
    that triggered it; otherwise a readable summary.
    """
    import sys

    from rich.console import Console

    from driftswitch.streams.config.model import load_config
    from driftswitch.streams.contract.errors import ConfigError
    from driftswitch.streams.pipeline import backtest as bt

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        raise SystemExit(2) from None
    from driftswitch.streams.tools import report

    if report_path is not None:
        try:
            report.check_target(report_path)
        except report.ReportError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(2) from None
    progress = report.stderr_progress(events)
    if report_path is not None:
        result, data = report.replay(config, events, progress=progress)
    else:
        result = report.run_with_progress(config, events, progress)
    for bad in result.bad_lines:
        click.echo(f"{events}:{bad.line}: {bad.reason}: {bad.detail}", err=True)
    if as_json:
        out = sys.stdout.buffer
        for line, output in result.outputs:
            out.write(bt.to_json_line(line, output) + b"\n")
        out.flush()
    else:
        width = None if sys.stdout.isatty() else 160
        bt.render_summary(result, Console(highlight=False, width=width))
    if report_path is not None:
        try:
            written = report.write_report(result, data, report_path)
        except report.ReportError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(2) from None
        click.echo("report: " + ", ".join(str(p) for p in written), err=True)
