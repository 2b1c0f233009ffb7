"""The README's integration example, run as written against the embedded broker."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.kafka import ensure_topics
from driftswitch.streams.tools.broker import EmbeddedBroker

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Integrating a model service", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its integration example"
    return match.group(1)


def test_readme_example_runs_as_pasted_and_its_events_reach_kafka(
    broker: EmbeddedBroker, tmp_path: Path, read_json: Callable[[str], list[Any]]
) -> None:
    # The example uses the default topic names; this test owns them (other tests use prefixes).
    # They exist as `driftswitch run` creates them.
    asyncio.run(ensure_topics(broker.bootstrap, Topics().specs()))
    script = tmp_path / "example.py"
    script.write_text(example(), encoding="utf-8")
    env = {**os.environ, "DRIFTSWITCH_BROKER": broker.bootstrap}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=tmp_path,  # a fresh shell's directory, not the repository
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # No flag state is published: the configured default serves everyone.
    assert result.stdout.strip() == "['ranker-v1:shoes', 'other']"
    assert "lost" not in result.stderr
    # The `with` block's exit sent both events before the process ended.
    predictions = read_json("driftswitch.predictions.v1")
    outcomes = read_json("driftswitch.outcomes.v1")
    (prediction,) = [p for p in predictions if p["request_id"] == "req-1"]
    assert prediction["variant"] == "control"
    assert prediction["prediction"] == "ranker-v1:shoes"
    assert prediction["subject"] == "user-42"
    assert prediction["score"] == 0.75
    assert prediction["latency_ms"] >= 0
    assert [o["label"] for o in outcomes if o["request_id"] == "req-1"] == ["ranker-v1:shoes"]
