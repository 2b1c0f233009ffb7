"""Replaying a JSON Lines file of events through the live service's engine (``driftswitch
backtest``).

The file is read in large chunks, each line decoded with the live worker's decoder
(:func:`~driftswitch.streams.contract.events.decode_lines`) and fed to
:class:`~driftswitch.streams.pipeline.engine.Engine` in file order. The engine decides in event
time and independently of batch boundaries, so a backtest is deterministic and reaches the
decisions the live worker reaches on the same events: what a user tunes offline is what runs
online. Lines that fail to decode, and events the engine rejects (unknown flag or variant,
duplicate request id), are reported with their 1-based line number and skipped.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from operator import attrgetter, itemgetter, not_
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from driftswitch.streams.config.model import Config
from driftswitch.streams.contract.errors import EventError
from driftswitch.streams.contract.events import (
    FlagChangeEvent,
    Output,
    PredictionEvent,
    PredictionStruct,
    decode_lines,
)
from driftswitch.streams.pipeline.engine import Engine, Event

#: Lines decoded and processed per engine batch.
CHUNK_LINES = 8192
_READ_BYTES = 1 << 22


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that was skipped: its 1-based number, a machine-readable reason and a detail."""

    line: int
    reason: str
    detail: str


@dataclass
class Backtest:
    """The outcome of a replay: every output with its triggering line, and what was skipped."""

    engine: Engine
    #: ``(line, output)`` in the order the engine emitted them.
    outputs: list[tuple[int, Output]] = field(default_factory=list)
    bad_lines: list[BadLine] = field(default_factory=list)
    #: Non-blank lines read; each is one of ``events`` or one of ``bad_lines``.
    lines: int = 0
    events: int = 0

    def rejections(self) -> dict[str, list[BadLine]]:
        """The skipped lines grouped by reason, the most frequent reason first."""
        groups: dict[str, list[BadLine]] = {}
        for bad in self.bad_lines:
            groups.setdefault(bad.reason, []).append(bad)
        return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def read_lines(
    stream: BinaryIO, chunk_lines: int = CHUNK_LINES
) -> Iterator[tuple[list[int], list[bytes]]]:
    """Chunks of (1-based line numbers, lines), skipping blank lines; reads megabytes at once.

    A read without blank lines (the usual case) is split and numbered without a Python loop.
    """
    number = 0
    tail = b""
    numbers: list[int] = []
    lines: list[bytes] = []
    while True:
        data = stream.read(_READ_BYTES)
        if not data:
            parts = [tail] if tail else []
            tail = b""
        else:
            parts = (tail + data).split(b"\n")
            tail = parts.pop()
        if b"" in parts or any(map(bytes.isspace, parts)):
            kept = [(number + 1 + i, p) for i, p in enumerate(parts) if p and not p.isspace()]
            numbers += [n for n, _ in kept]
            lines += [p for _, p in kept]
        else:
            numbers += range(number + 1, number + 1 + len(parts))
            lines += parts
        number += len(parts)
        while len(lines) >= chunk_lines:
            yield numbers[:chunk_lines], lines[:chunk_lines]
            del numbers[:chunk_lines], lines[:chunk_lines]
        if not data:
            break
    if lines:
        yield numbers, lines


def to_json_line(line: int, output: Output) -> bytes:
    """One ``--json`` record: the output as published, plus ``"at": {"line": N}``."""
    doc = output.model_dump(mode="json", exclude_none=True)
    doc["at"] = {"line": line}
    return orjson.dumps(doc)


def run(
    config: Config,
    source: str | Path | BinaryIO,
    chunk_lines: int = CHUNK_LINES,
    *,
    event_order: bool = False,
) -> Backtest:
    """Replay ``source`` (a path or a binary stream) through a fresh engine for ``config``.

    With ``event_order`` the events are replayed sorted by event time (ties by request id, a
    prediction before its outcome): the order in which the decide stage of a scaled-out
    deployment decides (:mod:`~driftswitch.streams.pipeline.merge`), whatever order the file has.
    That needs every decoded event in memory at once; without it the file is streamed in its own
    order, as a single worker reading one partition would see it.
    """
    if isinstance(source, str | Path):
        with Path(source).open("rb") as stream:
            return run(config, stream, chunk_lines, event_order=event_order)
    # The replay allocates millions of short-lived, acyclic objects that reference counting
    # frees; the cyclic collector would only re-scan the live heap again and again (a third of
    # the run time, measured with benchmarks/backtest.py). Paused here, restored after.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return (
            _run_sorted(config, source, chunk_lines)
            if event_order
            else _run(config, source, chunk_lines)
        )
    finally:
        if enabled:
            gc.enable()


def decode_chunk(lines: Sequence[bytes]) -> tuple[list[Event], list[tuple[int, EventError]]]:
    """Decode lines into the events (in order) and the rejected lines' ``(index, error)``."""
    got = decode_lines(lines)
    if not any(map(isinstance, got, repeat(EventError))):
        return cast("list[Event]", got), []  # every line decoded: no loop over them
    events: list[Event] = []
    errors: list[tuple[int, EventError]] = []
    append = events.append
    for i, one in enumerate(got):
        if isinstance(one, EventError):
            errors.append((i, one))
        else:
            append(one)
    return events, errors


def replay_chunk(result: Backtest, numbers: Sequence[int], lines: Sequence[bytes]) -> list[Event]:
    """Decode one chunk from :func:`read_lines`, feed it to ``result.engine`` and add its outputs,
    bad lines and counts to ``result``; returns the decoded events. The caller sorts
    ``result.bad_lines`` once the file is read."""
    events, errors = decode_chunk(lines)
    positions: Sequence[int] = numbers
    if errors:
        bad = {i for i, _ in errors}
        positions = [n for i, n in enumerate(numbers) if i not in bad]
        result.bad_lines.extend(BadLine(numbers[i], e.reason, e.detail) for i, e in errors)
    out = result.engine.process(events, positions)
    result.bad_lines.extend(BadLine(r.position, r.reason, r.detail) for r in out.rejections)
    result.outputs.extend((e.position, e.event) for e in out.outputs)
    result.events += len(events) - len(out.rejections)  # what the engine accepted
    result.lines += len(numbers)  # blank lines are not counted
    return events


def _run(config: Config, source: BinaryIO, chunk_lines: int) -> Backtest:
    result = Backtest(Engine(config))
    for numbers, lines in read_lines(source, chunk_lines):
        replay_chunk(result, numbers, lines)
    result.bad_lines.sort(key=lambda b: b.line)
    return result


_TS = attrgetter("ts")
_REQUEST_ID = attrgetter("request_id")
_PREDICTIONS = (PredictionStruct, PredictionEvent)


def event_key(event: Event) -> tuple[float, str, int]:
    """The event-time order of the decide stage: time, then request id, predictions first."""
    return (
        event.ts,
        event.request_id,
        0 if isinstance(event, _PREDICTIONS) else 1,
    )


def sort_order(events: Sequence[Event]) -> list[int]:
    """The indices of ``events`` sorted stably by :func:`event_key`, the keys built and compared
    without a Python call per event (the index last: equal keys keep their order)."""
    keys = sorted(
        zip(
            map(_TS, events),
            map(_REQUEST_ID, events),
            map(not_, map(isinstance, events, repeat(_PREDICTIONS))),
            range(len(events)),
            strict=True,
        )
    )
    return list(map(itemgetter(3), keys))


def _run_sorted(config: Config, source: BinaryIO, chunk_lines: int) -> Backtest:
    result = Backtest(Engine(config))
    events: list[Event] = []
    numbers: list[int] = []
    for chunk_numbers, lines in read_lines(source, chunk_lines):
        decoded, errors = decode_chunk(lines)
        events += decoded
        if errors:
            bad = {i for i, _ in errors}
            result.bad_lines.extend(
                BadLine(chunk_numbers[i], e.reason, e.detail) for i, e in errors
            )
            numbers += [n for i, n in enumerate(chunk_numbers) if i not in bad]
        else:
            numbers += chunk_numbers
        result.lines += len(chunk_numbers)
    order = sort_order(events)
    events = list(map(events.__getitem__, order))
    numbers = list(map(numbers.__getitem__, order))
    for start in range(0, len(events), chunk_lines):
        chunk = events[start : start + chunk_lines]
        out = result.engine.process(chunk, numbers[start : start + chunk_lines])
        result.bad_lines.extend(BadLine(r.position, r.reason, r.detail) for r in out.rejections)
        result.outputs.extend((e.position, e.event) for e in out.outputs)
        result.events += len(chunk) - len(out.rejections)
    result.bad_lines.sort(key=lambda b: b.line)
    return result


def format_ts(ts: float | None) -> str:
    """Event time as UTC date and time, to the millisecond (``-`` for none)."""
    if ts is None:
        return "-"
    when = datetime.fromtimestamp(ts, UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def format_value(value: object, missing: str = "-") -> str:
    """A table cell: ``missing`` for None, four significant digits for a float."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_summary(result: Backtest, console: Console) -> None:
    """A readable report: per flag its changes with their causes, guardrails and variants."""
    snap: dict[str, Any] = result.engine.snapshot()
    console.print(
        f"[bold]{result.events}[/] events from {result.lines} lines, "
        f"{len(result.bad_lines)} skipped, {len(result.outputs)} flag changes/alerts"
    )
    for name, flag in snap["flags"].items():
        console.rule(f"flag [bold]{name}[/] — version {flag['version']}")
        changes = Table(
            "line",
            "ts",
            "version",
            "action",
            "guardrail",
            "variant",
            "detector",
            "statistic",
            "threshold",
            "samples",
            title="changes",
        )
        for line, out in result.outputs:
            if out.flag != name:
                continue
            c = out.cause
            version = out.version if isinstance(out, FlagChangeEvent) else "alert"
            samples = ", ".join(f"{k}={v}" for k, v in c.samples.items())
            changes.add_row(
                str(line),
                format_ts(out.ts),
                str(version),
                c.action.value,
                format_value(c.guardrail),
                format_value(c.variant)
                + ("" if c.segment is None else f" in {_segment(c.segment)}"),
                format_value(c.detector),
                format_value(c.statistic),
                format_value(c.threshold),
                samples,
            )
        if changes.row_count:
            console.print(changes)
            for line, out in result.outputs:
                if out.flag == name and out.cause.reason:
                    console.print(f"  line {line}: {escape(out.cause.reason)}")
        else:
            console.print("no changes")
        rollout = flag.get("rollout")
        if rollout:
            interval = rollout["interval"]
            console.print(
                f"rollout of {rollout['variant']} against {rollout['compare_to']}"
                + (f" in segment {rollout['segment']}" if rollout.get("segment") else "")
                + ": "
                f"{rollout['status']}{' (paused)' if rollout['paused'] else ''}, step "
                f"{rollout['step'] + 1} of {len(rollout['steps'])} ({rollout['percent']}%), "
                + ", ".join(f"{k}={n}" for k, n in rollout["samples"].items())
                + " in the step"
                + (f", interval [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")
            )
        variants = Table(
            "variant",
            "weight",
            "killed",
            "predictions",
            "labelled",
            "accuracy",
            "window acc.",
            "error rate",
            "p50 ms",
            "p99 ms",
            "expired",
            title="variants",
        )
        for vname, v in flag["variants"].items():
            lat = v["latency_ms"]
            variants.add_row(
                vname,
                format_value(v["weight"]),
                format_value(v["killed"]),
                format_value(v["predictions"]),
                format_value(v["labelled"]),
                format_value(v["accuracy"]),
                format_value(v["windowed_accuracy"]),
                format_value(v["error_rate"]),
                format_value(lat["p50"]),
                format_value(lat["p99"]),
                format_value(v["expired"]),
            )
        console.print(variants)
        guardrails = Table(
            "guardrail",
            "state",
            "samples",
            "last alarm",
            "statistic then",
            "statistic now",
            "threshold",
            "alarms",
            "acted on",
            title="guardrails (a detector restarts after an alarm)",
        )
        for gname, g in flag["guardrails"].items():
            samples = ", ".join(f"{k}={n}" for k, n in g["samples"].items())
            guardrails.add_row(
                gname,
                str(g["state"]),
                samples,
                format_ts(g.get("last_breach_ts")),
                format_value(g.get("last_breach_statistic")),
                format_value(g["statistic"]),
                format_value(g["threshold"]),
                format_value(g["breaches"]),
                format_value(g.get("acted")),
            )
        if guardrails.row_count:
            console.print(guardrails)
        _print_segments(console, name, flag, result)


def _segment(segment: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in segment.items()) or "other"


def _print_segments(console: Console, name: str, flag: dict[str, Any], result: Any) -> None:
    """Per-segment guardrails: every segment's state, and the segments killed in the end."""
    for gname, g in flag["guardrails"].items():
        segs = g.get("segments")
        if segs is None:
            continue
        table = Table(
            "segment", "state", "samples", "statistic", "threshold", "alarms",
            title=f"segments of {gname} (by {', '.join(g['segment_by'])}; "
            f"overflow {g['overflow']}, invalid {g['invalid']})",
        )  # fmt: skip
        for label, s in segs.items():
            samples = ", ".join(f"{k}={n}" for k, n in s["samples"].items())
            table.add_row(
                escape(label),
                str(s["state"]),
                samples,
                format_value(s["statistic"]),
                format_value(s["threshold"]),
                format_value(s["breaches"]),
            )
        console.print(table)
    state = result.engine.state(name)
    for o in state.segments:
        where = (
            _segment(o.match)
            if o.match is not None
            else "other (outside " + ", ".join(_segment(m) for m in o.exclude) + ")"
        )
        console.print(
            f"  {escape(o.variant)} killed in {escape(where)}: served {state.default_variant} there"
        )
