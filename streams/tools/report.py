"""``driftswitch backtest --report out.html``: a self-contained HTML report with charts, and a PNG.

The replay is :func:`driftswitch.streams.pipeline.backtest.run`'s (same reader, decoder and
engine), in smaller chunks so that the engine's state can be sampled about :data:`SAMPLES` times
over the file; the engine decides independently of chunk boundaries, so the changes are those of
``backtest --json``. Per flag the report charts, over event time:

- each guardrail's detector statistic against its threshold, with every alarm marked;
- each variant's windowed accuracy;
- each variant's served weight (rollout steps, kills, restores: a step line through every
  change);

and lists the changes with their explanations. The charted numbers are embedded in the file as
JSON (``<script type="application/json" id="report-data">``), so tools and tests can read what
was drawn. Charts are drawn with matplotlib (the ``report`` extra) as inline SVG in the HTML and
as one PNG for chat and tickets: ``--report out.html`` writes ``out.html`` and ``out.png``
beside it; ``--report out.png`` writes only the image.
"""

from __future__ import annotations

import html
import io
import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from driftswitch.streams.config.model import Config
from driftswitch.streams.contract.errors import DriftswitchError
from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.pipeline import segments
from driftswitch.streams.pipeline.backtest import (
    Backtest,
    format_value,
    read_lines,
    replay_chunk,
)
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.monitor import Decision

__all__ = [
    "SAMPLES",
    "ReportData",
    "ReportError",
    "check_target",
    "render_html",
    "render_png",
    "replay",
    "run_with_progress",
    "stderr_progress",
    "write_report",
]

#: About how many times the engine's state is sampled over the file.
SAMPLES = 400
_MIN_CHUNK = 64
# Okabe–Ito: safe for every common colour-vision deficiency.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
STATISTIC_COLOUR = "#0072B2"
THRESHOLD_COLOUR = "#D55E00"
ALARM_COLOUR = "#CC79A7"

#: ``progress(bytes_read, total_bytes)``, called after each chunk.
Progress = Callable[[int, int], None]


class ReportError(DriftswitchError):
    """The report cannot be written (matplotlib missing, unknown file type)."""


class MissingMatplotlibError(ReportError):
    """matplotlib, which draws the charts, is not installed (not a usage error: exit 1)."""


@dataclass
class ReportData:
    """What the charts show, per flag (plain data, embedded in the HTML as JSON)."""

    source: str
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "flags": self.flags}


class _Counter:
    """A binary stream wrapper that counts the bytes read and reports progress."""

    def __init__(self, stream: BinaryIO, total: int = 0, progress: Progress | None = None) -> None:
        self.stream = stream
        self.read_bytes = 0
        self.total = total
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.read_bytes += len(data)
        if self.progress is not None and data:
            self.progress(self.read_bytes, self.total)
        return data


#: Files at least this large show progress (on a terminal).
PROGRESS_BYTES = 16 << 20


def stderr_progress(path: str | Path, force: bool = False) -> Progress | None:
    """A progress line on stderr for a large file when stderr is a terminal (else None).

    ``read 312 MiB of 1024 MiB (30 %), 41 s left``: rewritten in place, at most once per percent.
    """
    import sys
    import time

    total = Path(path).stat().st_size
    if not force and (total < PROGRESS_BYTES or not sys.stderr.isatty()):
        return None
    start = time.monotonic()
    shown = [-1]

    def show(done: int, size: int) -> None:
        percent = 100 * done // size if size else 100
        if percent == shown[0]:
            return
        shown[0] = percent
        elapsed = time.monotonic() - start
        left = elapsed * (size - done) / done if done else 0.0
        end = "\n" if done >= size else ""
        sys.stderr.write(
            f"\rread {done >> 20} MiB of {size >> 20} MiB ({percent} %), {left:.0f} s left  {end}"
        )
        sys.stderr.flush()

    return show


def run_with_progress(
    config: Config, path: str | Path, progress: Progress | None, *, event_order: bool = False
) -> Backtest:
    """:func:`driftswitch.streams.pipeline.backtest.run` on ``path``, reporting progress."""
    from driftswitch.streams.pipeline.backtest import run

    if progress is None:
        return run(config, path, event_order=event_order)
    path = Path(path)
    with path.open("rb") as raw:
        counted = _Counter(raw, path.stat().st_size, progress)
        return run(config, counted, event_order=event_order)  # type: ignore[arg-type]


def check_target(target: str | Path) -> None:
    """Fail early (before a long replay) on a target the report cannot be written to."""
    if Path(target).suffix.lower() not in (".html", ".htm", ".png"):
        raise ReportError(f"{target}: --report writes .html (with a .png beside it) or .png")
    _pyplot()


def _count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            n += chunk.count(b"\n")
    return n + 1


def replay(
    config: Config,
    path: str | Path,
    samples: int = SAMPLES,
    progress: Progress | None = None,
) -> tuple[Backtest, ReportData]:
    """Replay ``path`` like ``backtest`` and sample the engine about ``samples`` times."""
    path = Path(path)
    chunk = max(_MIN_CHUNK, _count_lines(path) // max(samples, 1) + 1)
    total = path.stat().st_size
    result = Backtest(Engine(config))
    engine = result.engine
    data = ReportData(str(path))
    for state in engine.initial_states():
        data.flags[state.flag] = {
            "guardrails": {
                g.name: {"variant": g.variant, "points": [], "alarms": []}
                for g in config.flags[state.flag].guardrails
            },
            "accuracy": {v: [] for v in state.variants},
            "weights": {v: [] for v in state.variants},
            "changes": [],
        }
    initial = {s.flag: s for s in engine.initial_states()}
    breaches: list[Decision] = []
    engine.on_breach(breaches.append)
    first_ts: float | None = None
    with path.open("rb") as raw:
        stream = _Counter(raw, total, progress)
        for numbers, lines in read_lines(stream, chunk):  # type: ignore[arg-type]
            events = replay_chunk(result, numbers, lines)
            if events and first_ts is None:
                first_ts = min(e.ts for e in events)
            _sample(engine, data)
    engine.on_breach(None)
    result.bad_lines.sort(key=lambda b: b.line)
    _changes(result, data, initial, first_ts)
    _alarms(result, data, breaches)
    return result, data


def _sample(engine: Engine, data: ReportData) -> None:
    snap: dict[str, Any] = engine.snapshot()
    t = snap.get("watermark")
    if not t:
        return
    for name, flag in snap["flags"].items():
        d = data.flags[name]
        for gname, g in flag["guardrails"].items():
            points = d["guardrails"][gname]["points"]
            fed = g["statistic"] is not None or g["threshold"] is not None
            if fed and (not points or points[-1][0] != t):
                points.append([t, g["statistic"], g["threshold"]])
        for vname, v in flag["variants"].items():
            if v["windowed_accuracy"] is not None:
                d["accuracy"][vname].append([t, v["windowed_accuracy"]])


def _changes(
    result: Backtest,
    data: ReportData,
    initial: dict[str, FlagChangeEvent],
    first_ts: float | None,
) -> None:
    """Weights as step series and the change list, from the outputs (as ``--json`` has them)."""
    for name, state in initial.items():
        t0 = first_ts if first_ts is not None else state.ts
        for v, vs in state.served_weights().items():
            data.flags[name]["weights"][v].append([t0, vs])
    last_ts = first_ts
    for line, out in result.outputs:
        d = data.flags[out.flag]
        c = out.cause
        record = {
            "line": line,
            "ts": out.ts,
            "version": out.version if isinstance(out, FlagChangeEvent) else None,
            "action": c.action.value,
            "kind": c.kind.value,
            "guardrail": c.guardrail,
            "variant": c.variant,
            "detector": c.detector,
            "statistic": c.statistic,
            "threshold": c.threshold,
            "reason": c.reason,
            "actor": out.actor if isinstance(out, FlagChangeEvent) else "driftswitch",
        }
        d["changes"].append(record)
        if isinstance(out, FlagChangeEvent):
            for v, w in out.served_weights().items():
                d["weights"].setdefault(v, []).append([out.ts, w])
        last_ts = out.ts if last_ts is None else max(last_ts, out.ts)
    end = result.engine.snapshot().get("watermark") or last_ts
    if end:
        for d in data.flags.values():
            for series in d["weights"].values():
                if series and series[-1][0] < end:
                    series.append([end, series[-1][1]])


def _alarms(result: Backtest, data: ReportData, breaches: list[Decision]) -> None:
    """Every breach on its guardrail's chart, as the summary's "alarms" counts them: ``[ts,
    statistic, threshold, what it did]``, the action of the flag change or alert it caused, or
    "no change" (a cooldown, a variant already killed). Its statistic also joins the sampled
    series, which would otherwise pass between samples the moment the detector crossed (a
    detector restarts after an alarm)."""
    acted = {
        (out.flag, out.cause.guardrail, out.ts): out.cause.action.value
        for _, out in result.outputs
        if out.cause.guardrail is not None
    }
    for d in breaches:
        g = data.flags[d.flag]["guardrails"].get(d.guardrail.name)
        if g is None:
            continue
        what = acted.get((d.flag, d.guardrail.name, d.ts), "no change")
        if isinstance(d, segments.SegmentDecision):
            what = f"{segments.label(d.segment)}: {what}"
        g["alarms"].append([d.ts, d.statistic, d.threshold, what])
        if d.statistic is not None:
            points = g["points"]
            at = bisect_left(points, d.ts, key=itemgetter(0))
            points.insert(at, [d.ts, d.statistic, d.threshold])


# --------------------------------------------------------------------------- drawing


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingMatplotlibError(
            "backtest --report draws its charts with matplotlib, which is not installed: "
            "pip install 'driftswitch[report]' (in a checkout run by ./driftswitch: "
            ".venv/bin/pip install 'matplotlib>=3.8,<4')"
        ) from None
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "driftswitch"
    import matplotlib.pyplot as plt

    return plt


def _dates(ts: list[float]) -> list[Any]:
    import datetime as dt

    return [dt.datetime.fromtimestamp(t, dt.UTC) for t in ts]


def _figure(plt: Any, name: str, d: dict[str, Any]) -> Any:
    guardrails = d["guardrails"]
    rows = len(guardrails) + 2
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.1 * rows), sharex=True, squeeze=False)
    axes = [a[0] for a in axes]
    fig.suptitle(f"flag {name}", fontsize=12, x=0.01, ha="left")
    for ax, (gname, g) in zip(axes, guardrails.items(), strict=False):
        pts = g["points"]
        if pts:
            when = _dates([p[0] for p in pts])
            for column, colour, style, label in (
                (1, STATISTIC_COLOUR, "-", "statistic"),
                (2, THRESHOLD_COLOUR, "--", "threshold"),
            ):
                ax.plot(when, [p[column] for p in pts], color=colour, lw=1.8, ls=style, label=label)
        for k, alarm in enumerate(g["alarms"]):
            ax.axvline(_dates([alarm[0]])[0], color=ALARM_COLOUR, lw=2, ls=":")
            if alarm[1] is not None:
                ax.plot(_dates([alarm[0]]), [alarm[1]], marker="v", ms=9, color=ALARM_COLOUR)
            ax.annotate(
                f"alarm: {alarm[3]}",
                (_dates([alarm[0]])[0], 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12 - 10 * (k % 3)),  # staggered: alarms close in time stay legible
                textcoords="offset points",
                fontsize=8,
                color="#8c3d6b",
            )
        ax.set_title(f"guardrail {gname} ({g['variant']}): statistic vs threshold", fontsize=9)
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        ax.grid(alpha=0.3)
    ax = axes[len(guardrails)]
    for i, (v, pts) in enumerate(d["accuracy"].items()):
        if pts:
            ax.plot(
                _dates([p[0] for p in pts]),
                [p[1] for p in pts],
                color=PALETTE[i % len(PALETTE)],
                lw=1.6,
                ls=("-", "--", "-.", ":")[i % 4],
                label=v,
            )
    ax.set_title("windowed accuracy per variant", fontsize=9)
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    ax = axes[-1]
    for i, (v, pts) in enumerate(d["weights"].items()):
        if pts:
            ax.step(
                _dates([p[0] for p in pts]),
                [p[1] for p in pts],
                where="post",
                color=PALETTE[i % len(PALETTE)],
                lw=1.8,
                ls=("-", "--", "-.", ":")[i % 4],
                label=v,
            )
    ax.set_ylim(-5, 105)
    ax.set_title("served weight % (rollout steps, kills)", fontsize=9)
    ax.legend(loc="center left", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    ax.set_xlabel("event time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def _svg(plt: Any, fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # Inline in HTML, an SVG needs no namespace declarations and no RDF metadata: without them
    # the report holds no URL at all, not even one that is never fetched.
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)


def render_png(data: ReportData, out: BinaryIO) -> None:
    """One image of every flag's charts, stacked."""
    plt = _pyplot()
    figs = [_figure(plt, name, d) for name, d in data.flags.items()]
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    images = []
    for fig in figs:
        canvas: Any = FigureCanvasAgg(fig)  # its draw and buffer_rgba are untyped
        canvas.draw()
        images.append(np.asarray(canvas.buffer_rgba()))
        plt.close(fig)
    width = max(i.shape[1] for i in images)
    padded = [
        np.pad(i, ((0, 0), (0, width - i.shape[1]), (0, 0)), constant_values=255) for i in images
    ]
    plt.imsave(out, np.concatenate(padded, axis=0), format="png")


def _fmt(value: Any) -> str:
    return format_value(value, missing="–")


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;color:#1b1b1b;margin:1rem 2rem;max-width:70rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{text-align:left;padding:.15rem .5rem;
border-bottom:1px solid #d0d0cc;vertical-align:top}td.num{text-align:right;
font-variant-numeric:tabular-nums}svg{max-width:100%;height:auto}.muted{color:#5a5a5a}
"""


def render_html(result: Backtest, data: ReportData) -> str:
    """The report as one HTML document (no external resource of any kind)."""
    plt = _pyplot()
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>driftswitch backtest report: {esc(data.source)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Backtest of {esc(data.source)}</h1>",
        f"<p>{result.events} events from {result.lines} lines, {len(result.bad_lines)} skipped, "
        f"{len(result.outputs)} flag changes/alerts. Charts are over event time; the statistic "
        "is the guardrail's detector statistic (solid) against its threshold (dashed), an alarm "
        "is marked with a dotted line.</p>",
    ]
    for name, d in data.flags.items():
        parts.append(f"<section data-flag='{esc(name)}'><h2>flag {esc(name)}</h2>")
        parts.append(_svg(plt, _figure(plt, name, d)))
        if d["changes"]:
            parts.append(
                "<table><thead><tr><th>line</th><th>event time</th><th>version</th>"
                "<th>action</th><th>cause</th><th>guardrail</th><th>variant</th>"
                "<th>statistic</th><th>threshold</th><th>explanation</th></tr></thead><tbody>"
            )
            for c in d["changes"]:
                when = _dates([c["ts"]])[0].isoformat(timespec="seconds")
                parts.append(
                    f"<tr><td class='num'>{c['line']}</td><td>{esc(when)}</td>"
                    f"<td class='num'>{_fmt(c['version'] or 'alert')}</td>"
                    f"<td>{esc(c['action'])}</td><td>{esc(c['kind'])}</td>"
                    f"<td>{esc(_fmt(c['guardrail']))}</td><td>{esc(_fmt(c['variant']))}</td>"
                    f"<td class='num'>{_fmt(c['statistic'])}</td>"
                    f"<td class='num'>{_fmt(c['threshold'])}</td>"
                    f"<td>{esc(c['reason'] or '')}</td></tr>"
                )
            parts.append("</tbody></table>")
        else:
            parts.append("<p class='muted'>No changes.</p>")
        parts.append("</section>")
    blob = orjson.dumps(data.to_json()).decode().replace("</", "<\\/")
    parts.append(f"<script type='application/json' id='report-data'>{blob}</script>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(result: Backtest, data: ReportData, target: str | Path) -> list[Path]:
    """Write ``target`` (``.html``: plus the ``.png`` beside it; ``.png``: the image only)."""
    check_target(target)
    target = Path(target)
    suffix = target.suffix.lower()
    written: list[Path] = []
    if suffix != ".png":
        target.write_text(render_html(result, data), encoding="utf-8")
        written.append(target)
        target = target.with_suffix(".png")
    with target.open("wb") as out:
        render_png(data, out)
    written.append(target)
    return written
