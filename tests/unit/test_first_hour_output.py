"""Output a person reads: log levels of flag changes, event error wording, the engine's count of
breaches acted on, the install progress of ./driftswitch and ./run-tests, and the client's
behaviour without a broker (start returns at once, one log line, unsent events reported)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.errors import EventError
from driftswitch.streams.contract.events import (
    Action,
    CauseKind,
    FlagChangeEvent,
    decode_line,
    decode_prediction,
)
from driftswitch.streams.pipeline import backtest
from driftswitch.streams.service.logs import (
    configure_logging,
    decision_context,
    decision_level,
)

ROOT = Path(__file__).resolve().parents[2]


def change(action: Action, variant: str | None, guardrail: str | None) -> FlagChangeEvent:
    return FlagChangeEvent.model_validate(
        {
            "flag": "ranker",
            "version": 1,
            "default_variant": "control",
            "variants": {"control": {"weight": 100, "value": "a"}},
            "cause": {
                "kind": (CauseKind.DETECTOR if guardrail else CauseKind.CONFIG).value,
                "action": action.value,
                "variant": variant,
                "guardrail": guardrail,
            },
            "ts": 1767225600.0,
            "actor": "driftswitch",
        }
    )


@pytest.mark.parametrize(
    ("action", "level"),
    [
        (Action.INIT, logging.INFO),
        (Action.RECONFIGURE, logging.INFO),
        (Action.ADVANCE, logging.INFO),
        (Action.SET_WEIGHTS, logging.INFO),
        (Action.KILL, logging.WARNING),
        (Action.SHIFT, logging.WARNING),
        (Action.HOLD, logging.WARNING),
        (Action.ROLLBACK, logging.WARNING),
    ],
)
def test_routine_changes_are_info_protective_ones_warning(action: Action, level: int) -> None:
    assert decision_level(change(action, None, None)) == level


def test_an_init_line_says_nothing_about_a_variant_or_guardrail() -> None:
    init = change(Action.INIT, None, None)
    assert decision_context(init) == {"flag": "ranker", "action": "init", "version": 1}
    stream = io.StringIO()
    handler = configure_logging("text", logging.INFO, stream)
    try:
        logging.getLogger("t").info("flag ranker v1 published: init", extra=decision_context(init))
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue()
    assert "[flag=ranker action=init version=1]" in line
    assert "None" not in line
    kill = change(Action.KILL, "candidate", "candidate-accuracy")
    assert decision_context(kill) == {
        "flag": "ranker",
        "variant": "candidate",
        "guardrail": "candidate-accuracy",
        "action": "kill",
        "version": 1,
    }


def test_event_errors_say_what_is_wrong() -> None:
    with pytest.raises(EventError) as missing:
        decode_line(b'{"request_id": "r1", "ts": 1767225600}')
    assert missing.value.detail == "kind: required field is missing ('prediction' or 'outcome')"
    with pytest.raises(EventError) as not_json:
        decode_line(b"nope")
    assert not_json.value.reason == "malformed_json"
    assert not_json.value.detail.startswith("not valid JSON: ")
    with pytest.raises(EventError) as record:
        decode_prediction(b"nope")
    assert record.value.detail.startswith("not valid JSON: ")
    with pytest.raises(EventError) as array:
        decode_line(b"[1, 2]")
    assert array.value.detail == "expected a JSON object, got an array"


def test_the_engine_counts_the_breaches_it_acted_on() -> None:
    config = load_config(ROOT / "examples" / "ranker.yaml")
    result = backtest.run(config, ROOT / "examples" / "ranker-drop.jsonl")
    guardrails = result.engine.snapshot()["flags"]["ranker"]["guardrails"]  # type: ignore[index]
    acc = guardrails["candidate-accuracy"]  # type: ignore[index, call-overload]
    assert acc["state"] == "breached"
    assert acc["acted"] == 1  # the kill
    assert acc["breaches"] >= 1
    assert acc["last_breach_statistic"] >= acc["last_breach_threshold"]
    # The counters survive a restart from the engine's state.
    from driftswitch.streams.pipeline.engine import Engine

    restored = Engine.from_state(config, result.engine.to_state())
    again = restored.snapshot()["flags"]["ranker"]["guardrails"]["candidate-accuracy"]  # type: ignore[index, call-overload]
    assert (again["acted"], again["last_breach_statistic"]) == (
        acc["acted"],
        acc["last_breach_statistic"],
    )


# -- first-run install progress (scripts/venv.sh) ----------------------------------------------

PIP_OUTPUT = """\
Obtaining file:///work/driftswitch
  Installing build dependencies: started
Collecting aiokafka<0.15,>=0.11 (from driftswitch==0.1.0)
  Downloading aiokafka-0.12.0-cp311-cp311-manylinux.whl (1.1 MB)
Collecting numpy<3,>=1.26 (from driftswitch==0.1.0)
Installing collected packages: numpy, aiokafka, multidict, driftswitch
Successfully installed aiokafka-0.12.0 driftswitch-0.1.0 numpy-2.1.0
"""


def bash(script: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"source scripts/venv.sh\n{script}"],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_install_progress_names_each_package() -> None:
    result = bash("progress_lines", PIP_OUTPUT)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "driftswitch:   [1] file:///work/driftswitch",
        "driftswitch:   [2] aiokafka<0.15,>=0.11",
        "driftswitch:       downloading aiokafka-0.12.0-cp311-cp311-manylinux.whl (1.1 MB)",
        "driftswitch:   [3] numpy<3,>=1.26",
        "driftswitch:   installing 4 packages (unpacking and linking)...",
    ]


def test_a_failed_install_shows_pip_s_whole_output() -> None:
    script = textwrap.dedent(
        """\
        fake_pip() { printf 'Collecting nothing-such\\nERROR: No matching distribution\\n'; \\
          return 3; }
        with_progress fake_pip; echo "status $?"
        """
    )
    result = bash(script)
    assert result.stdout.strip() == "status 3"
    assert "driftswitch:   [1] nothing-such" in result.stderr
    assert "ERROR: No matching distribution" in result.stderr
    ok = bash('with_progress true; echo "status $?"')
    assert ok.stdout.strip() == "status 0"
    assert "driftswitch:   done in " in ok.stderr


# -- the client without a broker -----------------------------------------------------------


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dead_address() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.slow  # a fresh interpreter that waits 3 s for reconnection attempts
def test_a_client_without_a_broker_starts_at_once_logs_once_and_reports_what_is_lost() -> None:
    address = dead_address()
    result = run_python(
        f"""
        import logging, time
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        from driftswitch.streams.client import DriftswitchClient

        client = DriftswitchClient({address!r}, defaults={{"ranker": "control"}},
                                   exit_timeout_s=0.5)
        print("started", client.start())  # returns at once, without the flag state
        print("variant", client.variant("ranker", "user-1"))
        print("ready", client.wait_ready(0.5))
        for i in range(10):
            client.record_prediction(f"r{{i}}", "ranker", "control", 1)
        time.sleep(3)  # several reconnection attempts
        # no close(): the interpreter exit sends what it can and says what was lost
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["started", "False", "variant", "control", "ready", "False"]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    failures = [line for line in lines if "cannot reach Kafka" in line]
    assert len(failures) == 1, result.stderr
    assert f"cannot reach Kafka at {address}" in failures[0]
    assert not [line for line in lines if "aiokafka" in line], result.stderr
    assert any("interpreter exiting with 10 unsent event(s)" in line for line in lines)
    assert any(f"10 event(s) lost: not sent to Kafka at {address}" in line for line in lines)
