"""What a new user meets: the real commands, run as subprocesses, with their exit codes
(0 ok, 1 invalid input or a failed run, 2 usage) and messages; no traceback anywhere.

Every case starts the installed console script in a fresh interpreter (1-2 s of CPU each, about
35 starts in this file), so the file is marked ``slow``: it runs in the full suite, not with
``-m "not slow"``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftswitch.streams.config.model import MAX_CONFIG_BYTES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("driftswitch"))
CONFIG = ROOT / "examples" / "ranker.yaml"
EVENTS = ROOT / "examples" / "ranker-drop.jsonl"


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- exit codes ------------------------------------------------------------------------------


def test_help_states_the_exit_codes() -> None:
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Exit codes: 0 ok; 1 invalid input" in text
    assert "2 usage" in text


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        pytest.param(["validate", str(CONFIG)], 0, "ok (1 flags", id="validate-ok"),
        pytest.param(["validate", "no-such.yaml"], 1, "cannot read", id="validate-missing"),
        pytest.param(["validate", "examples"], 1, "is a directory", id="validate-directory"),
        pytest.param(["validate"], 2, "Missing argument", id="validate-no-argument"),
        pytest.param(["validate", "--nope", "x"], 2, "No such option", id="unknown-option"),
        pytest.param(["no-such-command"], 2, "No such command", id="unknown-command"),
        pytest.param(
            ["backtest", "--config", "no-such.yaml", str(EVENTS)], 1, "cannot read", id="bt-cfg"
        ),
        pytest.param(
            ["backtest", "--config", str(CONFIG), "no-such.jsonl"], 1, "cannot read", id="bt-ev"
        ),
        pytest.param(
            ["backtest", "--config", str(CONFIG), "examples"], 1, "Is a directory", id="bt-dir"
        ),
        pytest.param(["backtest", str(EVENTS)], 2, "Missing option '--config'", id="bt-usage"),
        pytest.param(["run", "--config", "no-such.yaml"], 1, "cannot read", id="run-config"),
    ],
)
def test_exit_codes(args: list[str], code: int, words: str) -> None:
    result = run(*args)
    assert result.returncode == code, result.stdout + result.stderr
    assert words in result.stdout + result.stderr


def test_a_bad_config_is_exit_1_in_every_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("flags: {}\n", encoding="utf-8")
    for args in (
        ["validate", str(bad)],
        ["run", "--config", str(bad)],
        ["backtest", "--config", str(bad), str(EVENTS)],
        ["simulate", str(tmp_path / "out.jsonl"), "--requests", "10", "--follow", str(bad)],
    ):
        result = run(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert f"{bad}:1: flags:" in result.stderr, (args, result.stderr)


# -- validate ---------------------------------------------------------------------------------


def test_validate_reports_detector_problems_with_the_schema_problems(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        """\
flags:
  ranker:
    default: control
    variants:
      control: {weight: 90, value: a, colour: red}
      candidate: {weight: 10, value: b}
    guardrails:
      - name: acc
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 1.5, target: 0.8}
        action: kill
      - name: broken
        variant: candidate
        metric: accuracy
        detector: {kind: glr, min_drop: 2}
        action: explode
""",
        encoding="utf-8",
    )
    result = run("validate", str(config))
    assert result.returncode == 1
    problems = result.stderr.splitlines()
    assert problems[-1] == f"{config}: invalid (4 problems)"
    assert sorted(p.split(": ")[1] for p in problems[:-1]) == [
        "flags.ranker.guardrails[0].detector",
        "flags.ranker.guardrails[1].action",
        "flags.ranker.guardrails[1].detector",
        "flags.ranker.variants.control.colour",
    ]
    assert f"{config}:11: flags.ranker.guardrails[0].detector: baseline" in result.stderr
    assert f"{config}:16: flags.ranker.guardrails[1].detector: min_drop" in result.stderr


def test_yaml_booleans_as_variant_names_say_to_quote_them(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "flags:\n  dark-mode:\n    default: off\n    variants:\n"
        "      on: {weight: 50, value: true}\n      off: {weight: 50, value: false}\n",
        encoding="utf-8",
    )
    result = run("validate", str(config))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[:3] == [
        f"{config}:3: flags.dark-mode.default: YAML read off as the boolean false, not as text;"
        ' quote it ("off") to mean the name',
        f"{config}:5: flags.dark-mode.variants.on: invalid name: YAML read on as the boolean "
        'true, not as text; quote it ("on") to mean the name',
        f"{config}:6: flags.dark-mode.variants.off: invalid name: YAML read off as the boolean "
        'false, not as text; quote it ("off") to mean the name',
    ]
    quoted = config.read_text(encoding="utf-8")
    for word in ("on", "off"):
        quoted = quoted.replace(f" {word}:", f' "{word}":').replace(f": {word}\n", f': "{word}"\n')
    config.write_text(quoted, encoding="utf-8")
    assert run("validate", str(config)).returncode == 0


def test_validate_refuses_a_file_too_large_for_a_config(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    line = "# " + "x" * 97 + "\n"
    big.write_text("flags: {}\n" + line * (MAX_CONFIG_BYTES // len(line) + 1), encoding="utf-8")
    result = run("validate", str(big))
    assert result.returncode == 1
    assert "is too large for a config file" in result.stderr
    assert f"at most {MAX_CONFIG_BYTES:,}" in result.stderr


# -- backtest -----------------------------------------------------------------------------------


def test_a_backtest_with_no_valid_line_fails_with_a_summary(tmp_path: Path) -> None:
    millis = tmp_path / "millis.jsonl"
    with EVENTS.open("rb") as src, millis.open("w", encoding="utf-8") as out:
        for raw in src:
            event = json.loads(raw)
            event["ts"] = event["ts"] * 1000
            out.write(json.dumps(event) + "\n")
    result = run("backtest", "--config", str(CONFIG), str(millis))
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert errors[0] == f"{millis}: 8000 lines skipped:"
    assert errors[1] == "  schema: 8000 lines"
    assert [e.split(": ")[0] for e in errors[2:5]] == [f"    {millis}:{n}" for n in (1, 2, 3)]
    assert "milliseconds" in errors[2]
    assert errors[5] == "    ... and 7997 more"
    assert errors[6] == (
        f"driftswitch backtest: no valid event in {millis} (8000 lines read, 8000 skipped)"
    )
    assert len(errors) == 7


def test_backtest_max_errors_and_the_count_line(tmp_path: Path) -> None:
    lines = EVENTS.read_text(encoding="utf-8").splitlines()
    path = tmp_path / "dupes.jsonl"
    path.write_text("\n".join([lines[0], lines[0], lines[1], "", "not json"]) + "\n")
    ok = run("backtest", "--config", str(CONFIG), str(path), "--max-errors", "2")
    assert ok.returncode == 0, ok.stderr
    # Four non-blank lines: two events replayed, the duplicate and the non-JSON line skipped.
    assert "2 events from 4 lines, 2 skipped, 0 flag changes/alerts" in ok.stdout
    assert "  duplicate: 1 line" in ok.stderr
    assert "not valid JSON" in ok.stderr
    over = run("backtest", "--config", str(CONFIG), str(path), "--max-errors", "1")
    assert over.returncode == 1
    assert "2 lines skipped, more than --max-errors 1" in over.stderr


def test_backtest_tables_read_as_times_and_say_what_a_breach_did() -> None:
    result = run("backtest", "--config", str(CONFIG), str(EVENTS))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "e+09" not in out
    assert "│ 5327 │ 2026-01-01 00:" in out
    row = next(line for line in out.splitlines() if line.startswith("│ candidate-accuracy"))
    cells = [c.strip() for c in row.strip("│").split("│")]
    state, last_alarm, then, threshold = cells[1], cells[3], float(cells[4]), float(cells[6])
    alarms, acted = int(cells[7]), int(cells[8])
    # The detector restarts after an alarm: the statistic it had then is what breached.
    assert state == "breached"
    assert last_alarm.startswith("2026-01-01 00:")
    assert then >= threshold
    # One kill; later alarms on the killed variant's late outcomes change nothing.
    assert acted == 1 <= alarms


# -- simulate -----------------------------------------------------------------------------------


def test_simulate_writes_events_that_backtest_replays(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    args = ["simulate", str(out), "--requests", "4000", "--seed", "3"]
    args += ["--variant", "control=90:0.90", "--variant", "candidate=10:0.90:0.70"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    assert "8,000 events (4,000 requests of flag ranker" in first.stderr
    data = out.read_bytes()
    assert run(*args).returncode == 0
    assert out.read_bytes() == data  # deterministic
    result = run("backtest", "--config", str(CONFIG), str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["cause"]["action"] for line in result.stdout.splitlines()] == ["kill"]


def test_simulate_follows_a_config_and_reports_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    result = run("simulate", str(out), "--requests", "500", "--follow", str(CONFIG))
    assert result.returncode == 0, result.stderr
    assert len(out.read_bytes().splitlines()) == 1000
    other = run("simulate", str(out), "--flag", "search", "--follow", str(CONFIG))
    assert other.returncode == 1
    assert "flag 'search' is not in" in other.stderr
    usage = run("simulate", str(out), "--variant", "candidate=ten:0.9")
    assert usage.returncode == 2
    assert "NAME=WEIGHT:ACCURACY" in usage.stderr or "WEIGHT is a whole number" in usage.stderr


# -- ports and brokers ----------------------------------------------------------------------


def test_run_on_a_busy_port_says_so_in_one_line(busy_port: int) -> None:
    result = run("run", "--config", str(CONFIG), "--web-port", str(busy_port))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"driftswitch run: cannot listen on http://127.0.0.1:{busy_port}: the port is in use "
        "(another driftswitch run or demo?); choose another with --web-port"
    ]


def test_demo_on_a_busy_port_fails_before_it_starts(busy_port: int) -> None:
    result = run("demo", "--web-port", str(busy_port))
    assert result.returncode == 1
    assert f"cannot listen on http://127.0.0.1:{busy_port}: the port is in use" in result.stderr
    assert "producing" not in result.stdout
    assert "no kill seen" not in result.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_run_against_a_closed_port_names_the_address() -> None:
    closed = _free_port()
    result = run(
        "run", "--config", str(CONFIG), "--broker", f"127.0.0.1:{closed}",
        "--web-port", str(_free_port()),
    )  # fmt: skip
    assert result.returncode == 1
    assert f"no Kafka broker at 127.0.0.1:{closed}: cannot connect" in result.stderr
    assert "expected a Kafka broker" in result.stderr


def test_run_against_something_that_is_not_kafka_fails_naming_it() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        # An HTTP-ish server: it answers anything with a line of text.

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        result = run(
            "run", "--config", str(CONFIG), "--broker", f"127.0.0.1:{port}",
            "--web-port", str(_free_port()),
        )  # fmt: skip
        thread.join(5)
    assert result.returncode == 1
    assert (
        f"no Kafka broker at 127.0.0.1:{port}: connected, but it answered a Kafka request with "
        "'HTTP/1.1 400 Bad Request'" in result.stderr
    )
    assert "expected a Kafka broker" in result.stderr


def test_run_against_a_silent_server_fails_naming_it() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = run(
            "run", "--config", str(CONFIG), "--broker", f"127.0.0.1:{port}",
            "--web-port", str(_free_port()),
        )  # fmt: skip
    assert result.returncode == 1
    assert f"127.0.0.1:{port}: connected, but no answer to a Kafka request within" in (
        result.stderr
    )
