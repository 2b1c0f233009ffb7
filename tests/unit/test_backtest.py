"""``driftswitch backtest``: --json with at.line, the summary, bad lines, determinism."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.pipeline import backtest
from driftswitch.streams.tools.cli import main
from driftswitch.streams.tools.simulate import Scenario, simulate, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "ranker.yaml"
EVENTS = ROOT / "examples" / "ranker-drop.jsonl"


def _json_records(output: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in output.splitlines() if line.strip()]


def test_the_example_kills_the_candidate_at_a_known_line() -> None:
    result = CliRunner().invoke(main, ["backtest", "--config", str(CONFIG), str(EVENTS), "--json"])
    assert result.exit_code == 0, result.output
    records = _json_records(result.stdout)
    assert [r["at"] for r in records] == [{"line": 5327}]
    change = FlagChangeEvent.model_validate({k: v for k, v in records[0].items() if k != "at"})
    assert (change.version, change.cause.action.value, change.cause.guardrail) == (
        2,
        "kill",
        "candidate-accuracy",
    )
    assert change.variants["candidate"].killed
    assert change.variants["control"].weight == 100
    assert change.cause.samples == {"candidate": 276}
    # The line that triggered it is the candidate outcome that made the evidence sufficient.
    line = EVENTS.read_bytes().splitlines()[5327 - 1]
    assert orjson.loads(line)["ts"] == change.ts


def test_summary_shows_changes_causes_and_variants() -> None:
    result = CliRunner().invoke(main, ["backtest", "--config", str(CONFIG), str(EVENTS)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "8000 events from 8000 lines, 0 skipped, 1 flag changes/alerts" in out
    assert "flag ranker — version 2" in out
    assert "line 5327: candidate-accuracy: accuracy of candidate breached" in out
    assert "killed, weight 10 to control" in out
    for word in ("control", "candidate", "breached", "cusum"):
        assert word in out


def test_bad_lines_are_reported_with_their_number_and_skipped(tmp_path: Path) -> None:
    lines = EVENTS.read_bytes().splitlines()
    garbage = [
        b"{oops",
        b'{"kind": "prediction", "request_id": "x", "flag": "nope", "variant": "a", '
        b'"ts": 1767225601, "prediction": 1}',
        b"",
        b'{"kind": "outcome"}',
    ]
    mixed = [*lines[:100], *garbage, *lines[100:]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(mixed) + b"\n")
    result = CliRunner().invoke(main, ["backtest", "--config", str(CONFIG), str(path), "--json"])
    assert result.exit_code == 0, result.output
    errors = result.stderr.splitlines()
    # Per reason, most frequent first (ties in order of first appearance): the count, then
    # the first lines as file:line: detail.
    header, *rest = errors
    assert header == f"{path}: 3 lines skipped:"
    assert rest[0::2] == ["  malformed_json: 1 line", "  unknown_flag: 1 line", "  schema: 1 line"]
    details = rest[1::2]
    assert [d.split(": ")[0] for d in details] == [
        f"    {path}:101",
        f"    {path}:102",
        f"    {path}:104",
    ]
    assert details[0].startswith(f"    {path}:101: not valid JSON: ")
    assert "'nope'" in details[1]
    # The garbage changed no decision: the same kill, four lines later in the file.
    assert [r["at"] for r in _json_records(result.stdout)] == [{"line": 5327 + 4}]


def test_a_bad_config_exits_1_with_its_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("flags: {}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["backtest", "--config", str(bad), str(EVENTS)])
    assert result.exit_code == 1
    # Each problem with its file and line, then the verdict; nothing replayed.
    assert result.stderr == (
        f"{bad}:1: flags: Dictionary should have at least 1 item after validation, not 0\n"
        f"driftswitch backtest: {bad}: invalid config\n"
    )
    assert result.stdout == ""


def test_chunk_size_does_not_change_the_result(tmp_path: Path) -> None:
    # 5,000 requests: enough for a decision (the cusum guardrail's kill; with 3,000 only the
    # asymptotic comparison, since replaced, decided in time).
    scenario = Scenario(requests=5000, change_at=1000, seed=2)
    path = tmp_path / "events.jsonl"
    write_jsonl(simulate(scenario), path)
    config = load_config(CONFIG)
    runs = [backtest.run(config, path, chunk_lines=n) for n in (1, 97, 100_000)]
    dumps = [[(line, o.model_dump(mode="json")) for line, o in r.outputs] for r in runs]
    assert dumps[0]
    assert dumps[0] == dumps[1] == dumps[2]
    assert runs[0].engine.to_state() == runs[2].engine.to_state()


def test_read_lines_numbers_lines_across_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"a\n \nb\nc"
    chunks = list(backtest.read_lines(io.BytesIO(data), chunk_lines=2))
    assert chunks == [([1, 3], [b"a", b"b"]), ([4], [b"c"])]
    # Reads far smaller than a line: lines, blank lines and their numbers span reads.
    data = b"alpha\n\n  \nbeta gamma\ndelta\n\nepsilon"
    for size in (1, 2, 3, 5, 7):
        monkeypatch.setattr(backtest, "_READ_BYTES", size)
        chunks = list(backtest.read_lines(io.BytesIO(data), chunk_lines=2))
        assert chunks == [
            ([1, 4], [b"alpha", b"beta gamma"]),
            ([5, 7], [b"delta", b"epsilon"]),
        ], size


def test_event_order_replays_any_line_order_as_the_sorted_events(tmp_path: Path) -> None:
    """``--order event``: the lines sorted by event time (ties by request id, predictions
    first), whatever their order in the file; the line numbers stay the file's."""
    config = load_config(CONFIG)
    lines = EVENTS.read_bytes().splitlines()
    ordered = sorted(
        range(len(lines)),
        key=lambda i: (
            orjson.loads(lines[i])["ts"],
            orjson.loads(lines[i])["request_id"],
            orjson.loads(lines[i]).get("kind") != "prediction",
        ),
    )
    in_order = tmp_path / "sorted.jsonl"
    in_order.write_bytes(b"\n".join(lines[i] for i in ordered) + b"\n")
    shuffled = list(range(len(lines)))
    random.Random(4).shuffle(shuffled)
    mixed = tmp_path / "shuffled.jsonl"
    mixed.write_bytes(b"\n".join(lines[i] for i in shuffled) + b"\n")

    expected = backtest.run(config, in_order)
    got = backtest.run(config, mixed, chunk_lines=333, event_order=True)
    assert [o.model_dump(mode="json") for _, o in got.outputs] == [
        o.model_dump(mode="json") for _, o in expected.outputs
    ]
    assert got.outputs
    # Positions name the line in the file that was read.
    for (line, out), (sorted_line, _) in zip(got.outputs, expected.outputs, strict=True):
        assert lines[shuffled[line - 1]] == lines[ordered[sorted_line - 1]]
        assert orjson.loads(lines[shuffled[line - 1]])["ts"] == out.ts
    # In file order the shuffled lines decide differently (or not at all).
    assert [o.model_dump(mode="json") for _, o in backtest.run(config, mixed).outputs] != [
        o.model_dump(mode="json") for _, o in expected.outputs
    ]
    cli = CliRunner().invoke(
        main, ["backtest", "--config", str(CONFIG), str(mixed), "--json", "--order", "event"]
    )
    assert cli.exit_code == 0, cli.output
    assert [r["at"]["line"] for r in _json_records(cli.stdout)] == [p for p, _ in got.outputs]


def test_event_order_with_bad_lines_and_ties_is_a_stable_sort_by_event_key(
    tmp_path: Path,
) -> None:
    """``--order event`` replays exactly the decoded events sorted (stably) by ``event_key``:
    bad lines are skipped with their numbers, and equal keys (a line repeated, so its copy is
    the duplicate) keep file order, whichever chunk they are read in."""
    from driftswitch.streams.pipeline.engine import Engine

    config = load_config(CONFIG)
    lines = EVENTS.read_bytes().splitlines()
    rng = random.Random(9)
    mixed = list(lines)
    rng.shuffle(mixed)
    for k in range(0, len(mixed), 97):
        mixed.insert(k, b'{"kind":"prediction","flag":"ranker"}')  # invalid
    for k in range(50, len(mixed), 89):
        mixed.insert(k + 7, mixed[k])  # the same event again, later in the file
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(mixed) + b"\n")

    got = backtest.run(config, path, chunk_lines=251, event_order=True)

    decoded = []
    for number, line in enumerate(mixed, start=1):
        events, errors = backtest.decode_chunk([line])
        if not errors:
            decoded.append((events[0], number))
    decoded.sort(key=lambda pair: backtest.event_key(pair[0]))
    engine = Engine(config)
    want = engine.process([e for e, _ in decoded], [n for _, n in decoded])
    assert [(line, o.model_dump(mode="json")) for line, o in got.outputs] == [
        (e.position, e.event.model_dump(mode="json")) for e in want.outputs
    ]
    assert got.outputs
    rejected = sorted([b.line for b in got.bad_lines if b.reason == "duplicate"])
    assert rejected == sorted(r.position for r in want.rejections)
    assert rejected
    assert len(got.bad_lines) - len(rejected) == sum(
        1 for line in mixed if line == b'{"kind":"prediction","flag":"ranker"}'
    )
    assert got.events == len(decoded) - len(want.rejections)
    assert got.lines == len(mixed)


def test_sort_order_is_a_stable_sort_by_event_key() -> None:
    """Ties on time, on time and request id, and on the whole key, in both event forms."""
    from driftswitch.streams.contract.events import OutcomeEvent, PredictionEvent, to_struct

    rng = random.Random(3)
    events: list[Any] = []
    for _ in range(400):
        rid = f"r{rng.randrange(20)}"
        ts = float(rng.randrange(5))
        if rng.random() < 0.5:
            ev: Any = PredictionEvent(
                request_id=rid, flag="ranker", variant="control", ts=ts, prediction=1
            )
        else:
            ev = OutcomeEvent(request_id=rid, ts=ts, label=1)
        events.append(to_struct(ev) if rng.random() < 0.5 else ev)
    want = sorted(range(len(events)), key=lambda i: backtest.event_key(events[i]))
    assert backtest.sort_order(events) == want
