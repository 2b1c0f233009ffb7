"""End to end: interleaved impressions from the client kill a worse ranker, and backtest agrees.

The client interleaves two rankers for the users the flag assigns to the candidate and records
each impression; simulated users click the first relevant document they see, and only control's
documents are relevant. The worker credits every click, its ``interleaving`` guardrail declares
harm, and the kill comes back to the same client through the flags topic: the candidate's users
then see control's list alone. ``driftswitch backtest`` over the events read back from the topics
reaches the same decision with the same evidence.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import FlagChangeEvent, PredictionEvent, decode_line
from driftswitch.streams.contract.interleave import team_draft
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline.backtest import run as run_backtest
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.testing import WorkerProcess, flag_changes, read_topic, wait_until

ROOT = Path(__file__).resolve().parents[2]
FLAG = "search"
T0 = 1_767_225_600.0
GOOD = [f"good-{i}" for i in range(10)]  # control's documents: the relevant ones
BAD = [f"bad-{i}" for i in range(10)]  # the candidate's: never clicked


def _config(tmp_path: Path) -> Path:
    text = (ROOT / "examples" / "interleaving.yaml").read_text()
    text = text.replace("tuning_n: 1000}", "tuning_n: 100}").replace(
        "min_samples: 100 ", "min_samples: 40  "
    )
    path = tmp_path / "interleaving.yaml"
    path.write_text(text)
    return path


def _events(broker: EmbeddedBroker, topics: Topics) -> list[bytes]:
    """Every prediction and outcome on the topics, as JSON lines ordered by event time."""
    lines: list[tuple[float, bytes]] = []
    for spec, kind in ((topics.predictions, "prediction"), (topics.outcomes, "outcome")):
        for p in range(spec.partitions):
            for record in read_topic(broker.bootstrap, spec.name, p):
                doc = orjson.loads(record.value)
                doc["kind"] = kind
                lines.append((doc["ts"], orjson.dumps(doc)))
    lines.sort(key=lambda t: t[0])
    return [line for _, line in lines]


def test_interleaved_clicks_kill_the_worse_ranker_and_backtest_agrees(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    worker = start_worker(config, tmp_path / "worker.log")
    worker.wait_active()
    client = DriftswitchClient(broker.bootstrap, topics=topics, defaults={FLAG: "control"})
    try:
        assert client.start(wait_s=30)
        wait_until("version 1 of the flag", lambda: client.flag_state(FLAG) is not None, timeout=60)
        rankings = {"control": GOOD, "candidate": BAD}
        users = [f"user-{i}" for i in range(400)]
        assert 150 < sum(client.variant(FLAG, u) == "candidate" for u in users) < 250  # 50/50
        interleaved = 0
        for i in range(400):
            rid, user = f"q{i}", f"user-{i}"
            shown = client.interleave(FLAG, user, rankings, k=6, request_id=rid, ts=T0 + i)
            if client.variant(FLAG, user) == "candidate":
                interleaved += 1
                # What any consumer recomputes from the flag and the request id alone.
                merged = team_draft(rankings, 6, flag=FLAG, request_id=rid)
                assert shown == [item for item, _ in merged]
            else:
                assert shown == GOOD[:6]
            clicked = next(item for item in shown if item.startswith("good"))
            assert client.record_clicks(rid, [clicked], ts=T0 + i + 0.5)
        # The kill may land while users are still arriving; from then on none is interleaved.
        assert interleaved >= 40  # the guardrail's min_samples
        assert client.flush(30)

        wait_until(
            "the kill read back by the client",
            lambda: client.flag_state(FLAG).version == 2,  # type: ignore[union-attr]
            timeout=60,
            interval=0.05,
        )
        state = client.flag_state(FLAG)
        assert state is not None
        assert state.variants["candidate"].killed
        assert state.variants["control"].weight == 100
        # Killed, the candidate leaves the experiment: everyone sees control's list.
        assert {client.variant(FLAG, f"user-{i}") for i in range(50)} == {"control"}
        shown = client.interleave(FLAG, "user-1", rankings, k=6, request_id="after-kill")
        assert shown == GOOD[:6]
        assert client.flush(30)
    finally:
        client.close(timeout_s=5)

    changes = flag_changes(broker.bootstrap, topics)
    assert [(c.version, c.cause.action.value) for c in changes] == [(1, "init"), (2, "kill")]
    kill = changes[1]
    cause = kill.cause
    assert (cause.guardrail, cause.metric, cause.detector) == (
        "candidate-interleaved",
        "interleaving",
        "interleaving",
    )
    assert cause.compare_to == "control"
    evidence = cause.evidence
    assert evidence["decision"] == "harm"
    assert evidence["wins"] == 0
    assert isinstance(evidence["losses"], int)
    assert evidence["losses"] > 0
    assert cause.samples["candidate"] == cause.samples["control"] >= 40
    assert cause.interval is not None
    assert cause.interval[1] < 0.5

    # The impression after the kill carries control's team only.
    lines = _events(broker, topics)
    after = [decode_line(x) for x in lines if b'"after-kill"' in x]
    assert len(after) == 1
    assert isinstance(after[0], PredictionEvent)
    assert after[0].ranking is not None
    assert {p.team for p in after[0].ranking} == {"control"}

    # `driftswitch backtest` on the same events reaches the same decision, evidence included.
    events_path = tmp_path / "events.jsonl"
    events_path.write_bytes(b"\n".join(lines) + b"\n")
    result = run_backtest(load_config(config), events_path)
    assert result.bad_lines == []
    offline = [out for _, out in result.outputs if isinstance(out, FlagChangeEvent)]
    assert len(offline) == 1
    assert (offline[0].version, offline[0].variants) == (kill.version, kill.variants)
    assert offline[0].cause.evidence == kill.cause.evidence
    assert offline[0].cause.interval == kill.cause.interval
    assert (offline[0].cause.guardrail, offline[0].cause.action) == (
        kill.cause.guardrail,
        kill.cause.action,
    )
    # (Which impression tipped it, and so the change's ts, may differ: the worker feeds
    # partitions in fetch order, the backtest in file order; here every interleaved impression
    # is a loss, so the evidence is the same either way.)
    # The command itself, as a user runs it.
    command = [str(Path(sys.executable).with_name("driftswitch")), "backtest"]
    done = subprocess.run(
        [*command, "--config", str(config), str(events_path), "--json"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    (printed,) = [orjson.loads(x) for x in done.stdout.splitlines()]
    assert printed["version"] == 2
    assert printed["cause"]["evidence"] == kill.cause.evidence
