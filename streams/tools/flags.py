"""``driftswitch flags report``: flag debt, from the config and (with a broker) the flags topic.

Lists expired flags, temporary flags fully rolled out for more than ``--days`` days, flags with
no traffic in ``--days`` days and flags with a killed variant never restored
(:mod:`driftswitch.streams.pipeline.lifecycle`). Without ``--broker`` (or
``DRIFTSWITCH_BROKER``) only the config is read, so only expiry is checked. With one, every
flag's history comes from the flags topic, and traffic from the newest worker snapshot on the
state topic (the engine's newest event time per variant); without a snapshot, traffic is not
judged and the report says so. Exit status: 0 when nothing is found, 1 otherwise (for CI jobs).

``driftswitch flags kill`` / ``restore``: an operator's kill or restore through the worker's
admin API (token from ``DRIFTSWITCH_ADMIN_TOKEN``), everywhere or, with ``--segment``, in one
segment only.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import click

from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.kafka.options import security_options
from driftswitch.streams.kafka.settings import KafkaSettings
from driftswitch.streams.tools.run import BROKER_ENV, deployment_options

__all__ = ["flags_group", "read_histories", "read_traffic"]


async def _read_all(kafka: KafkaSettings, topic: str) -> list[Any]:
    """Every record of ``topic`` (all partitions, partition order); [] when it does not exist."""
    from driftswitch.streams.kafka import connect

    if not await connect.partitions_of(kafka, topic):
        return []  # no such topic yet: nothing was ever published
    read = await connect.read_partitions(
        kafka, topic, idle_ms=200, max_partition_fetch_bytes=4 * 1024 * 1024
    )
    return [r for tp in sorted(read.records, key=lambda t: t.partition) for r in read.records[tp]]


async def read_histories(kafka: KafkaSettings, topic: str) -> dict[str, list[FlagChangeEvent]]:
    """Every flag's changes on the flags topic, by version (duplicates and bad records dropped)."""
    by_flag: dict[str, dict[int, FlagChangeEvent]] = {}
    for rec in await _read_all(kafka, topic):
        try:
            event = FlagChangeEvent.model_validate_json(rec.value)
        except ValueError:
            continue
        by_flag.setdefault(event.flag, {}).setdefault(event.version, event)
    return {f: [v[k] for k in sorted(v)] for f, v in by_flag.items()}


async def read_traffic(
    kafka: KafkaSettings, topic: str, group: str
) -> dict[str, float | None] | None:
    """The newest prediction's event time per flag, from the group's latest snapshot (None: no
    snapshot on the state topic)."""
    from driftswitch.streams.service.snapshot import latest_snapshot

    snapshot = latest_snapshot(await _read_all(kafka, topic), group.encode())
    if snapshot is None:
        return None
    out: dict[str, float | None] = {}
    for name, flag in (snapshot.engine.get("flags") or {}).items():
        times = [
            v["last_ts"]
            for v in (flag.get("variants") or {}).values()
            if isinstance(v.get("last_ts"), int | float)
        ]
        out[name] = max(times) if times else None
    return out


@click.group("flags")
def flags_group() -> None:
    """Flags from the command line: kill and restore a variant through a worker's admin API;
    report who owns each flag and which ones are due for removal."""


@flags_group.command("report")
@deployment_options(group_help="The workers' group.")
@click.option(
    "--days",
    type=click.FloatRange(min=0.0),
    default=14.0,
    show_default=True,
    help="Fully rolled out, or without traffic, for longer than this: stale.",
)
@click.option("--json", "as_json", is_flag=True, help="The findings as one JSON document.")
@security_options
def report_command(
    config_path: str,
    bootstrap: str | None,
    group: str,
    days: float,
    as_json: bool,
    **kafka_options: str | None,
) -> None:
    """List expired and stale flags (exit status 1 when there are any)."""
    import orjson
    from rich.console import Console
    from rich.table import Table

    from driftswitch.streams.config.model import load_config
    from driftswitch.streams.contract.errors import ConfigError, DriftswitchError
    from driftswitch.streams.contract.topics import Topics
    from driftswitch.streams.kafka.options import security_from_options
    from driftswitch.streams.kafka.settings import as_settings
    from driftswitch.streams.pipeline.lifecycle import findings
    from driftswitch.streams.service.worker import state_topic

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        raise SystemExit(2) from None
    bootstrap = bootstrap or os.environ.get(BROKER_ENV)
    try:
        security = security_from_options(kafka_options)
    except DriftswitchError as err:
        click.echo(f"driftswitch flags report: {err}", err=True)
        raise SystemExit(2) from None
    histories: dict[str, list[FlagChangeEvent]] = {}
    traffic: dict[str, float | None] | None = None
    notes: list[str] = []
    if bootstrap:
        topics = Topics.from_env(os.environ)
        kafka = as_settings(bootstrap, security)

        async def read() -> tuple[dict[str, list[FlagChangeEvent]], dict[str, float | None] | None]:
            return (
                await read_histories(kafka, topics.flags.name),
                await read_traffic(kafka, state_topic(topics).name, group),
            )

        histories, traffic = asyncio.run(read())
        if traffic is None:
            notes.append(f"no worker snapshot for group {group!r}: traffic not checked")
    else:
        notes.append("no broker given: only expiry checked (--broker or DRIFTSWITCH_BROKER)")
    found = findings(config, histories, traffic, time.time(), days)
    if as_json:
        doc = {"days": days, "findings": [f.to_json() for f in found], "notes": notes}
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
        table = Table("flag", "finding", "detail", "owner", title=f"flag debt (N = {days:g} days)")
        for f in found:
            table.add_row(f.flag, f.kind, f.detail, f.owner or "(none)")
        if found:
            console.print(table)
        else:
            console.print(f"no expired or stale flags among {len(config.flags)}")
        for note in notes:
            console.print(f"note: {note}")
    if found:
        raise SystemExit(1)


API_ENV = "DRIFTSWITCH_API"
TOKEN_ENV = "DRIFTSWITCH_ADMIN_TOKEN"


def _segment(pairs: tuple[str, ...]) -> dict[str, str] | None:
    """``("region=jp",)`` -> ``{"region": "jp"}``; ``("other",)`` -> ``{}`` (the bucket)."""
    if not pairs:
        return None
    if pairs == ("other",):
        return {}
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r}: expected NAME=VALUE, e.g. region=jp (or: other)")
        out[name.removeprefix("attributes.")] = value
    return out


def _command(action: str, flag: str, body: dict[str, Any], api: str) -> None:
    """POST one admin command; print the resulting flag change, exit 1 when refused."""
    import urllib.error
    import urllib.request

    import orjson

    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        click.echo(f"driftswitch flags {action}: set {TOKEN_ENV} (the admin token)", err=True)
        raise SystemExit(1)
    # The worker's web address; the API's own base (what the README's examples call $API) too.
    base = api.rstrip("/").removesuffix("/api/v1")
    url = f"{base}/api/v1/flags/{flag}/{action}"
    req = urllib.request.Request(
        url,
        data=orjson.dumps(body),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = orjson.loads(r.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")
        click.echo(f"driftswitch flags {action}: {url}: HTTP {err.code}: {detail}", err=True)
        raise SystemExit(1) from None
    except OSError as err:
        click.echo(f"driftswitch flags {action}: {url}: {err}", err=True)
        raise SystemExit(1) from None
    change = answer.get("change", {})
    click.echo(
        f"{flag}: version {change.get('version')}: {change.get('cause', {}).get('reason', '')}"
    )


def _manual(action: str) -> Any:
    @flags_group.command(
        action,
        help=f"{action.capitalize()} VARIANT of FLAG through the admin API (token from "
        f"{TOKEN_ENV}); with --segment, in that segment only.",
    )
    @click.argument("flag")
    @click.option("--variant", required=True, help="The variant.")
    @click.option(
        "--segment",
        "segment",
        multiple=True,
        metavar="NAME=VALUE",
        help="Only in this segment (repeat per attribute), e.g. region=jp; `other` for a "
        "guardrail's other bucket (restore).",
    )
    @click.option("--reason", default=None, help="Why (recorded in the flag change).")
    @click.option(
        "--api",
        default=lambda: os.environ.get(API_ENV, "http://127.0.0.1:6066"),
        show_default=f"env {API_ENV} or http://127.0.0.1:6066",
        help="The worker's web address.",
    )
    def command(
        flag: str, variant: str, segment: tuple[str, ...], reason: str | None, api: str
    ) -> None:
        body: dict[str, Any] = {"variant": variant}
        where = _segment(segment)
        if where is not None:
            body["segment"] = where
        if reason is not None:
            body["reason"] = reason
        _command(action, flag, body, api)

    return command


kill_command = _manual("kill")
restore_command = _manual("restore")
