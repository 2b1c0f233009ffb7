"""The ``driftswitch`` command line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # imported where used: `driftswitch --help` stays fast
    from driftswitch.streams.pipeline.backtest import Backtest
    from driftswitch.streams.tools.simulate import VariantSpec


#: The exit codes of every command, as ``--help`` and the README state them.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EXIT_CODES = (
    "Exit codes: 0 ok; 1 invalid input (a config or events file that is missing, unreadable or "
    "invalid) or a run that failed; 2 usage (an unknown command or option, a missing or "
    "malformed argument)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(package_name="driftswitch")
def main() -> None:
    """driftswitch: drift-triggered kill switches and rollouts for ML models behind flags.

    New here? `driftswitch demo` runs the whole loop on this machine in about a minute.
    """


@main.command(epilog=EXIT_CODES)
@click.argument("configs", nargs=-1, required=True, metavar="CONFIG...")
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
        raise SystemExit(EXIT_FAILED)


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


# -- the live worker (driftswitch.streams.tools.run, driftswitch.streams.tools.demo) ----------
def _register_worker_commands() -> None:
    from driftswitch.streams.tools.demo import demo_command
    from driftswitch.streams.tools.run import run_command

    main.add_command(run_command)
    main.add_command(demo_command)


_register_worker_commands()


def _register_flags_commands() -> None:
    from driftswitch.streams.tools.flags import flags_group

    main.add_command(flags_group)


_register_flags_commands()


#: Rejected lines shown per reason; the rest are counted.
SHOWN_PER_REASON = 3


@main.command(epilog=EXIT_CODES)
@click.option("--config", "config_path", required=True, metavar="FILE", help="Config file.")
@click.argument("events", metavar="EVENTS.jsonl")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per flag change/alert.")
@click.option(
    "--max-errors",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Fail (exit 1) when more lines than this are skipped.",
)
@click.option(
    "--report",
    "report_path",
    default=None,
    metavar="OUT.html|OUT.png",
    help="Also write charts: out.html (self-contained, with out.png beside it) or out.png "
    "(file order only; needs matplotlib, the report extra).",
)
@click.option(
    "--order",
    type=click.Choice(["file", "event"]),
    default="file",
    show_default=True,
    help="file: replay the lines in file order (what a single worker reading one partition "
    "decides). event: sorted by event time, ties by request id, predictions first (what the "
    "decide stage of driftswitch run --stage join/decide/all decides); holds every event in "
    "memory.",
)
def backtest(
    config_path: str,
    events: str,
    as_json: bool,
    max_errors: int,
    report_path: str | None,
    order: str,
) -> None:
    """Replay EVENTS (JSON Lines) through the service's engine, in file order (or, with
    --order event, in event-time order).

    Bad lines are skipped and summarised on stderr per reason, with the first few of each as
    file:line: detail. The run fails (exit 1) when no line held a valid event, or when more than
    --max-errors lines were skipped. With --json every flag change and alert is printed as one
    JSON object with "at": {"line": N}, the line of the event that triggered it; otherwise a
    readable summary.
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
        click.echo(f"driftswitch backtest: {config_path}: invalid config", err=True)
        raise SystemExit(EXIT_FAILED) from None
    from driftswitch.streams.tools import report

    if report_path is not None:
        if order == "event":
            click.echo("driftswitch backtest: --report replays in file order only", err=True)
            raise SystemExit(EXIT_USAGE)
        try:
            report.check_target(report_path)
        except report.ReportError as exc:
            click.echo(f"driftswitch backtest: {exc}", err=True)
            missing = isinstance(exc, report.MissingMatplotlibError)
            raise SystemExit(EXIT_FAILED if missing else EXIT_USAGE) from None
    try:
        progress = report.stderr_progress(events)
        if report_path is not None:
            result, data = report.replay(config, events, progress=progress)
        else:
            result = report.run_with_progress(
                config, events, progress, event_order=order == "event"
            )
    except OSError as exc:
        click.echo(f"driftswitch backtest: {events}: cannot read: {exc.strerror or exc}", err=True)
        raise SystemExit(EXIT_FAILED) from None
    _report_rejections(events, result)
    if as_json:
        out = sys.stdout.buffer
        for line, output in result.outputs:
            out.write(bt.to_json_line(line, output) + b"\n")
        out.flush()
    elif result.events:
        width = None if sys.stdout.isatty() else 160
        bt.render_summary(result, Console(highlight=False, width=width))
    if report_path is not None and result.events:
        try:
            written = report.write_report(result, data, report_path)
        except report.ReportError as exc:
            click.echo(f"driftswitch backtest: {exc}", err=True)
            raise SystemExit(EXIT_FAILED) from None
        click.echo("report: " + ", ".join(str(p) for p in written), err=True)
    skipped = len(result.bad_lines)
    if not result.events:
        click.echo(
            f"driftswitch backtest: no valid event in {events} "
            f"({result.lines} line{'s' if result.lines != 1 else ''} read, {skipped} skipped)",
            err=True,
        )
        raise SystemExit(EXIT_FAILED)
    if skipped > max_errors:
        click.echo(
            f"driftswitch backtest: {skipped} lines skipped, more than --max-errors "
            f"{max_errors}; the result above covers only the valid lines",
            err=True,
        )
        raise SystemExit(EXIT_FAILED)


def _report_rejections(events: str, result: Backtest) -> None:
    """Per reason: how many lines, and the first few as ``file:line: detail``."""
    groups = result.rejections()
    if not groups:
        return
    n = len(result.bad_lines)
    click.echo(f"{events}: {n} line{'s' if n != 1 else ''} skipped:", err=True)
    for reason, bad in groups.items():
        click.echo(f"  {reason}: {len(bad)} line{'s' if len(bad) != 1 else ''}", err=True)
        for b in bad[:SHOWN_PER_REASON]:
            click.echo(f"    {events}:{b.line}: {b.detail}", err=True)
        if len(bad) > SHOWN_PER_REASON:
            click.echo(f"    ... and {len(bad) - SHOWN_PER_REASON} more", err=True)


def _parse_variant(text: str) -> VariantSpec:
    """``NAME=WEIGHT:ACCURACY[:ACCURACY_AFTER]`` → a simulated variant."""
    from driftswitch.streams.tools.simulate import VariantSpec

    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    if not sep or not name or len(parts) not in (2, 3):
        raise click.BadParameter(
            f"{text!r}: expected NAME=WEIGHT:ACCURACY[:ACCURACY_AFTER], e.g. candidate=10:0.90:0.75"
        )
    try:
        weight = int(parts[0])
        accuracy = [float(p) for p in parts[1:]]
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: WEIGHT is a whole number of percent, ACCURACY a number in [0, 1]"
        ) from None
    if not 0 <= weight <= 100 or not all(0.0 <= a <= 1.0 for a in accuracy):
        raise click.BadParameter(f"{text!r}: WEIGHT must be 0-100 and ACCURACY within [0, 1]")
    after = accuracy[1] if len(accuracy) > 1 else None
    return VariantSpec(name, weight=weight, accuracy=accuracy[0], accuracy_after=after)


@main.command(epilog=EXIT_CODES)
@click.argument("output", metavar="OUT.jsonl")
@click.option("--requests", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=200.0,
    show_default=True,
    help="Requests per second of event time.",
)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="NAME=WEIGHT:ACC[:AFTER]",
    help="A variant: traffic percent, accuracy, and the accuracy from --change-at on. "
    "Repeat per variant [default: control=90:0.90 candidate=10:0.90:0.75].",
)
@click.option(
    "--change-at",
    type=click.IntRange(min=0),
    default=None,
    help="The request from which AFTER accuracies apply [default: half of --requests].",
)
@click.option(
    "--label-delay",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Mean seconds from a prediction to its outcome (exponential).",
)
@click.option(
    "--label-fraction",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="Share of requests whose outcome is ever observed.",
)
@click.option("--flag", default="ranker", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--regions",
    default="",
    metavar="A,B,...",
    help="Give each request an attribute `region`, drawn uniformly from these values.",
)
@click.option(
    "--change-in",
    default="",
    metavar="A,B,...",
    help="AFTER accuracies apply only in these regions (of --regions) [default: everywhere].",
)
@click.option(
    "--follow",
    "follow_config",
    metavar="CONFIG",
    default=None,
    help="Traffic follows the flag's live weights under this config (a rollout's advances, a "
    "kill), as clients would.",
)
def simulate(
    output: str,
    requests: int,
    rate: float,
    variants: tuple[str, ...],
    change_at: int | None,
    label_delay: float,
    label_fraction: float,
    flag: str,
    seed: int,
    regions: str,
    change_in: str,
    follow_config: str | None,
) -> None:
    """Write simulated events (JSON Lines) to OUT.jsonl ("-" for stdout), for `backtest`.

    A model service behind FLAG: each request goes to a variant by weight, each variant is right
    with its accuracy (its AFTER accuracy from --change-at on), and outcomes follow after a
    label delay. The same options always give the same events.
    """
    import sys

    from driftswitch.streams.config.model import load_config
    from driftswitch.streams.contract.errors import ConfigError
    from driftswitch.streams.contract.events import encode
    from driftswitch.streams.tools.simulate import (
        Scenario,
        simulate_following,
    )
    from driftswitch.streams.tools.simulate import (
        simulate as simulate_events,
    )

    specs = tuple(_parse_variant(v) for v in variants)
    try:
        scenario = Scenario(
            variants=specs or Scenario().variants,
            flag=flag,
            requests=requests,
            rate=rate,
            change_at=requests // 2 if change_at is None else change_at,
            label_delay=label_delay,
            label_fraction=label_fraction,
            seed=seed,
            regions=tuple(r for r in regions.split(",") if r),
            change_in=tuple(r for r in change_in.split(",") if r),
        )
    except ValueError as exc:
        click.echo(f"driftswitch simulate: {exc}", err=True)
        raise SystemExit(EXIT_FAILED) from None
    if follow_config is not None:
        try:
            config = load_config(follow_config)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(problem, err=True)
            click.echo(f"driftswitch simulate: {follow_config}: invalid config", err=True)
            raise SystemExit(EXIT_FAILED) from None
        if flag not in config.flags:
            click.echo(
                f"driftswitch simulate: flag {flag!r} is not in {follow_config} "
                f"(it has {', '.join(config.flags)}); choose it with --flag",
                err=True,
            )
            raise SystemExit(EXIT_FAILED)
        events = simulate_following(scenario, config)
    else:
        events = list(simulate_events(scenario))
    try:
        if output == "-":
            out = sys.stdout.buffer
            out.writelines(encode(e) + b"\n" for e in events)
            out.flush()
        else:
            with open(output, "wb") as f:
                f.writelines(encode(e) + b"\n" for e in events)
    except OSError as exc:
        click.echo(f"driftswitch simulate: {output}: cannot write: {exc.strerror or exc}", err=True)
        raise SystemExit(EXIT_FAILED) from None
    mix = ", ".join(
        f"{v.name} {v.weight}% at {v.accuracy:.2f}"
        + (f" then {v.accuracy_after:.2f}" if v.accuracy_after is not None else "")
        for v in scenario.variants
    )
    where = "stdout" if output == "-" else output
    click.echo(
        f"{len(events):,} events ({requests:,} requests of flag {flag}: {mix}; change at request "
        f"{scenario.change_at:,}) written to {where}",
        err=True,
    )
