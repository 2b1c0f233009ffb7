"""`driftswitch demo` (the README's run command) ends with the candidate killed, exit 0."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from driftswitch.streams.tools.broker import EmbeddedBroker


def test_demo_kills_the_degrading_candidate(broker: EmbeddedBroker) -> None:
    # The demo starts its own broker; the fixture only marks this as a broker test.
    result = subprocess.run(
        [str(Path(sys.executable).with_name("driftswitch")), "demo", "--requests", "8000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "ranker v1: init" in out
    assert "ranker v2: kill candidate" in out
    assert "guardrail candidate-accuracy: cusum" in out
    assert "the candidate was killed" in out
    # Progress throughout: every phase is announced before it starts.
    phases = [
        "simulating 8,000 requests",
        "starting the embedded Kafka broker",
        "broker embedded Tansu at",
        "starting the worker",
        "model service 16,000 events",
        "producing",
        "done: the candidate was killed",
    ]
    positions = [out.find(phase) for phase in phases]
    assert -1 not in positions, out
    assert positions == sorted(positions), out
    # Read by a person: no Python reprs, no raw epoch seconds.
    assert "{'" not in out
    assert "1767" not in out
    assert "evidence: " in out
    assert "UTC" in out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_stops_cleanly_on_a_signal(broker: EmbeddedBroker, signum: int) -> None:
    # Ctrl-C (or a SIGTERM) mid-run: the worker, its clients and the broker are stopped, and the
    # demo says it was interrupted (exit 128 + the signal), not that its worker "stopped early".
    demo = subprocess.Popen(
        [str(Path(sys.executable).with_name("driftswitch")), "demo", "--rate", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        seen = []
        for line in demo.stdout:  # the 40,000 events take 400 s at this rate
            seen.append(line)
            if line.startswith("model service"):
                break
        assert seen, "no output"
        assert seen[-1].startswith("model service"), "".join(seen)
        demo.send_signal(signum)
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"driftswitch demo: interrupted ({name}): the worker and the broker were stopped" in err
    assert "stopped early" not in err
    assert "Traceback" not in err
    assert "stopping the broker" in out


def test_demo_ends_with_the_flag_followers_error(broker: EmbeddedBroker) -> None:
    # The client that follows the flags topic fails on the first change it shows: the demo ends
    # at once with that error (it waited for a first flag state that would never come).
    code = (
        "import driftswitch.streams.tools.demo as demo\n"
        "def fail(*args): raise RuntimeError('cannot show it')\n"
        "demo._show_change = fail\n"
        "demo.demo_command(['--requests', '8000'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr
    expected = "driftswitch demo: following the flags topic failed: RuntimeError: cannot show it"
    assert expected in result.stderr, result.stderr
    assert "model service 16,000 events" not in result.stdout  # it never started producing
