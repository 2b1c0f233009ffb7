"""The ``driftswitch`` command line."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="driftswitch")
def main() -> None:
    """driftswitch: drift-triggered kill switches and rollouts for ML models behind flags."""


@main.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(configs: tuple[str, ...]) -> None:
    """Check configuration files; print every problem as file:line: path: expectation."""
    from driftswitch.streams.config import iter_guardrails, load_config
    from driftswitch.streams.errors import ConfigError

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
        guardrails = sum(1 for _ in iter_guardrails(config))
        click.echo(f"{path}: ok ({len(config.flags)} flags, {guardrails} guardrails)")
    if failed:
        raise SystemExit(1)
