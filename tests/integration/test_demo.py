"""`driftswitch demo` (the README's run command) ends with the candidate killed, exit 0."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from driftswitch.streams.tools.broker import EmbeddedBroker


@contextlib.contextmanager
def _running_demo(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``driftswitch demo ARGS``, its output piped; killed if still running on leaving."""
    demo = subprocess.Popen(
        [str(Path(sys.executable).with_name("driftswitch")), "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield demo
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def _read_until(demo: subprocess.Popen[str], prefix: str) -> list[str]:
    """The demo's output lines up to the first that starts with ``prefix``."""
    assert demo.stdout is not None
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no line starting with {prefix!r}:\n" + "".join(seen))


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
        "stopping the worker and the clients",
        "stopping the broker",
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
    with _running_demo("--rate", "100") as demo:  # the 40,000 events would take 400 s
        _read_until(demo, "model service")
        demo.send_signal(signum)
        out, err = demo.communicate(timeout=60)
    assert demo.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"driftswitch demo: interrupted ({name}): the worker and the broker were stopped" in err
    assert "stopped early" not in err
    assert "Traceback" not in err
    assert "stopping the broker" in out


def test_demo_lets_its_stop_finish_on_a_signal(broker: EmbeddedBroker) -> None:
    # Ctrl-C while the demo stops its worker (it takes a few seconds, with nothing else on the
    # screen): the stop is not cut short (a cancelled stop left the worker running while the
    # broker went away), and the demo still says it was interrupted.
    with _running_demo("--requests", "8000") as demo:
        seen = _read_until(demo, "stopping the worker")
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=90)
    out = "".join(seen) + out
    assert demo.returncode == 130, out + err
    assert "driftswitch demo: interrupted (SIGINT): the worker and the broker were stopped" in err
    assert "done: the candidate was killed" in out  # the verdict, after every step of the stop
    assert "stopping the broker" in out
    for noise in ("Traceback", "Unclosed", "Task was destroyed", "ERROR"):
        assert noise not in err, err


def test_demo_stays_with_its_status_page_until_ctrl_c(broker: EmbeddedBroker) -> None:
    # --stay: after the verdict the worker and its status page run on, so that a newcomer can
    # look at the page; the Ctrl-C that ends the wait is how the demo ends, not an interruption.
    with _running_demo("--requests", "8000", "--stay") as demo:
        seen = _read_until(demo, "staying")
        url = seen[-1].split("status page at ", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200
            assert "text/html" in page.headers["Content-Type"]
        with urllib.request.urlopen(url + "api/v1/flags/ranker", timeout=10) as answer:
            state = orjson.loads(answer.read())
        assert state["state"]["variants"]["candidate"]["killed"] is True
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=90)
    out = "".join(seen) + out
    assert demo.returncode == 0, out + err
    assert "done: the candidate was killed" in out
    assert out.find("done: the candidate was killed") < out.find("staying")
    assert "stopping the broker" in out
    for noise in ("interrupted", "Traceback", "Unclosed", "Task was destroyed", "ERROR"):
        assert noise not in err, err


def test_demo_exits_at_once_on_a_second_signal(broker: EmbeddedBroker) -> None:
    # Two signals: the second does not wait for the stop the first began, and the embedded
    # broker (started by the demo, not the fixture's) goes with the demo's process.
    with _running_demo("--rate", "100") as demo:
        seen = _read_until(demo, "model service")
        started = [line for line in seen if line.startswith("broker embedded Tansu at")]
        assert started, "".join(seen)
        bootstrap = started[0].split(" at ")[1].split()[0]
        demo.send_signal(signal.SIGINT)
        _read_until(demo, "stopping the worker")  # the first one began the stop
        demo.send_signal(signal.SIGTERM)
        _out, err = demo.communicate(timeout=60)
    assert demo.returncode == 128 + signal.SIGTERM, err
    assert "driftswitch demo: second signal (SIGTERM): exiting at once" in err
    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError:
            break  # nothing listens there any more
        assert time.monotonic() < deadline, f"the demo's broker still listens at {bootstrap}"
        time.sleep(0.1)


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
