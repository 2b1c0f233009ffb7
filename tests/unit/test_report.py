"""``backtest --report``: one self-contained HTML file (parsed, no external URL) whose charted
data matches ``backtest --json``, a PNG beside it, and progress on large files.

Marked ``slow``: importing matplotlib and drawing the charts takes several seconds of CPU, and
the fixture replays a 12,000-event simulation. The file runs in the full suite, not with
``-m "not slow"``."""

from __future__ import annotations

import io
import os
import re
import struct
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from driftswitch.streams.config.model import load_config
from driftswitch.streams.pipeline import backtest as bt
from driftswitch.streams.tools import report
from driftswitch.streams.tools.cli import main
from driftswitch.streams.tools.simulate import Scenario, config_yaml, simulate, write_jsonl

pytestmark = pytest.mark.slow

GUARDRAILS = """\
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 10000}
        min_samples: 200
        action: kill
      - name: candidate-warn
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.85, arl0: 1000}
        min_samples: 100
        action: warn
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    scenario = Scenario(requests=6000, change_at=3000, seed=3)
    config = root / "c.yaml"
    config.write_text(config_yaml(scenario, GUARDRAILS))
    events = root / "events.jsonl"
    write_jsonl(simulate(scenario), events)
    with events.open("ab") as out:
        out.write(b"not json\n")  # a bad line is reported and skipped, in the report too
    return config, events


@pytest.fixture(scope="module")
def made(files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    config, events = files
    out = tmp_path_factory.mktemp("out") / "report.html"
    result = CliRunner().invoke(
        main, ["backtest", "--config", str(config), str(events), "--json", "--report", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    assert f"report: {out}, {out.with_suffix('.png')}" in result.stderr
    assert f"{events}:" in result.stderr
    assert "not json" not in result.stdout
    return {
        "html": out.read_text(encoding="utf-8"),
        "png": out.with_suffix(".png").read_bytes(),
        "json": [orjson.loads(line) for line in result.stdout.splitlines()],
        "path": out,
    }


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.data: dict[str, str] = {}
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in = dict(attrs).get("id")

    def handle_data(self, data: str) -> None:
        if self._in:
            self.data[self._in] = self.data.get(self._in, "") + data

    def handle_endtag(self, tag: str) -> None:
        self._in = None


def parse(text: str) -> _Collector:
    parser = _Collector()
    parser.feed(text)
    parser.close()
    return parser


def test_the_report_is_self_contained_html(made: dict[str, Any]) -> None:
    text = made["html"]
    doc = parse(text)
    names = [t for t, _ in doc.tags]
    assert names[:3] == ["html", "head", "meta"]
    assert names.count("svg") == 1  # one flag, one figure
    assert names.count("section") == 1
    # No URL at all: nothing to fetch, not even a namespace or metadata link.
    assert not re.search(r"(?i)\b(https?|ftp):|//[a-z0-9-]+\.[a-z]", text)
    for tag, attrs in doc.tags:
        for name in ("src", "href", "xlink:href", "action"):
            value = attrs.get(name)
            assert value is None or value.startswith("#"), (tag, name, value)
    # CSS references stay inside the document (matplotlib's clip paths).
    assert all(ref.startswith("#") for ref in re.findall(r"url\(([^)]*)\)", text))
    assert "<link" not in text
    assert "@import" not in text


def test_the_charted_data_matches_the_backtest_json(
    made: dict[str, Any], files: tuple[Path, Path]
) -> None:
    data = orjson.loads(parse(made["html"]).data["report-data"])
    flag = data["flags"]["ranker"]
    outputs = made["json"]
    assert outputs, "the scenario must produce changes"
    # The change list is the --json list, in order.
    assert [(c["line"], c["action"], c["guardrail"], c["version"]) for c in flag["changes"]] == [
        (o["at"]["line"], o["cause"]["action"], o["cause"].get("guardrail"), o.get("version"))
        for o in outputs
    ]
    # Every alarm the summary counts is marked on its guardrail's chart: those that changed the
    # flag or alerted are the --json decisions of that guardrail, the others did nothing (the
    # candidate already killed), and the statistic's line passes through each.
    config, events = files
    result = bt.run(load_config(config), events)
    snap: dict[str, Any] = result.engine.snapshot()["flags"]["ranker"]
    for name, g in flag["guardrails"].items():
        acted = [a for a in g["alarms"] if a[3] != "no change"]
        assert acted == [
            [o["ts"], o["cause"]["statistic"], o["cause"]["threshold"], o["cause"]["action"]]
            for o in outputs
            if o["cause"].get("guardrail") == name
        ]
        assert len(g["alarms"]) == snap["guardrails"][name]["breaches"]
        for ts, statistic, threshold, _ in g["alarms"]:
            assert [ts, statistic, threshold] in g["points"]
    kill = flag["guardrails"]["candidate-accuracy"]["alarms"][0]
    assert kill[3] == "kill"
    assert kill[1] >= kill[2]  # the statistic at its threshold or beyond
    assert flag["guardrails"]["candidate-warn"]["alarms"]
    # The warning guardrail keeps alarming after the kill, to no effect.
    assert [a[3] for a in flag["guardrails"]["candidate-warn"]["alarms"]].count("no change") > 0
    # The weights step through every flag change: the last point is the last state's weights.
    last_change = [o for o in outputs if "version" in o][-1]
    for variant, state in last_change["variants"].items():
        served = 0 if state.get("killed") else state["weight"]
        assert flag["weights"][variant][-1][1] == served
    # From the config's weights, before the first change, then one step per change.
    variants = load_config(config).flags["ranker"].variants
    for variant, spec in variants.items():
        series = flag["weights"][variant]
        states = [(o["ts"], o["variants"][variant]) for o in outputs if "version" in o]
        steps = [[ts, 0 if v.get("killed") else v["weight"]] for ts, v in states]
        assert series[0][1] == spec.weight
        assert series[0][0] < steps[0][0]
        assert series[1 : 1 + len(steps)] == steps
    # The statistic and accuracy series end where the replay's engine ends.
    for name, g in snap["guardrails"].items():
        last = flag["guardrails"][name]["points"][-1]
        assert last[1:] == [g["statistic"], g["threshold"]]
    for variant, v in snap["variants"].items():
        assert flag["accuracy"][variant][-1][1] == v["windowed_accuracy"]
    # Sampled often enough to draw a curve, in event-time order.
    points = flag["guardrails"]["candidate-accuracy"]["points"]
    assert len(points) > 50
    assert [p[0] for p in points] == sorted(p[0] for p in points)


def test_the_png_beside_it_is_an_image(made: dict[str, Any]) -> None:
    png = made["png"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 600
    assert height >= 400


def test_report_png_alone_and_a_bad_suffix(files: tuple[Path, Path], tmp_path: Path) -> None:
    config, events = files
    out = tmp_path / "only.png"
    result = CliRunner().invoke(
        main, ["backtest", "--config", str(config), str(events), "--report", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert not out.with_suffix(".html").exists()
    bad = tmp_path / "report.pdf"
    result = CliRunner().invoke(
        main, ["backtest", "--config", str(config), str(events), "--report", str(bad)]
    )
    assert result.exit_code == 2
    assert (
        f"driftswitch backtest: {bad}: --report writes .html (with a .png beside it) or .png"
        in result.stderr
    )
    assert result.stdout == ""  # refused before the replay
    assert not bad.exists()


def test_without_matplotlib_the_report_fails_before_the_replay_and_says_how_to_install_it(
    files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run that cannot be done here (exit 1), not a usage error (exit 2).
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    config, events = files
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        main, ["backtest", "--config", str(config), str(events), "--report", str(out)]
    )
    assert result.exit_code == 1
    assert "matplotlib, which is not installed: pip install 'driftswitch[report]'" in (
        result.stderr
    )
    assert ".venv/bin/pip install 'matplotlib>=3.8,<4'" in result.stderr
    assert result.stdout == ""
    assert not out.exists()


def test_progress_reports_bytes_read_and_keeps_the_result(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, events = files
    size = os.path.getsize(events)
    # Reads of a tenth of the file or so, as a large file gets: progress after each read.
    step = size // 10 + 1
    monkeypatch.setattr(bt, "_READ_BYTES", step)
    seen: list[tuple[int, int]] = []
    result = report.run_with_progress(
        load_config(config), events, lambda done, total: seen.append((done, total))
    )
    assert seen == [(min(k * step, size), size) for k in range(1, -(-size // step) + 1)]
    assert len(seen) == 10
    monkeypatch.undo()
    plain = bt.run(load_config(config), events)
    assert [(line, o.model_dump()) for line, o in result.outputs] == [
        (line, o.model_dump()) for line, o in plain.outputs
    ]
    # The terminal line: bytes, percent, estimated time left; a newline when done.
    show = report.stderr_progress(events, force=True)
    assert show is not None
    show(size // 2, size)
    show(size // 2 + 1, size)  # the same percent: not shown again
    show(size, size)
    err = capsys.readouterr().err
    assert err.count("(50 %)") == 1
    assert "(100 %)" in err
    assert err.endswith("\n")
    # Small files, or no terminal: no progress line.
    assert report.stderr_progress(events) is None


def test_render_png_draws_several_flags(tmp_path: Path) -> None:
    data = report.ReportData(
        "x",
        {
            name: {
                "guardrails": {"g": {"variant": "a", "points": [[1.0, 0.5, 2.0]], "alarms": []}},
                "accuracy": {"a": [[1.0, 0.9]]},
                "weights": {"a": [[0.0, 100], [2.0, 100]]},
                "changes": [],
            }
            for name in ("one", "two")
        },
    )
    out = io.BytesIO()
    report.render_png(data, out)
    single = io.BytesIO()
    report.render_png(report.ReportData("x", {"one": data.flags["one"]}), single)
    height = struct.unpack(">II", out.getvalue()[16:24])[1]
    one = struct.unpack(">II", single.getvalue()[16:24])[1]
    assert height == 2 * one
