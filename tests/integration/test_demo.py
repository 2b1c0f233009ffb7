"""`driftswitch demo` (the README's run command) ends with the candidate killed, exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
