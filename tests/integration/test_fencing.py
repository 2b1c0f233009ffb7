"""A zombie worker publishes nothing: a worker frozen past its session timeout (SIGSTOP) wakes
up holding a fetched batch that decides a kill, after another worker took the lease over and
published that kill. The group coordinator no longer counts it as a member, so it must publish
no flag change and write no snapshot, and it stops."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.service.worker import state_topic
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import (
    KILL_ON_ACCURACY,
    WorkerProcess,
    event_records,
    flag_changes,
    read_topic,
)

pytestmark = pytest.mark.broker
#: Runs ``--stage single`` on purpose: the single worker's lease (the decide
#: stage's: test_decide_stage.py).
SINGLE = ["--stage", "single"]

GUARDRAIL = KILL_ON_ACCURACY
SCENARIO = Scenario(
    requests=6_000,
    change_at=2_000,
    rate=100.0,
    seed=41,
    variants=(
        VariantSpec("control", weight=60, accuracy=0.90),
        VariantSpec("candidate", weight=40, accuracy=0.90, accuracy_after=0.70),
    ),
)


#: Fault injection for the zombie only: freeze (SIGSTOP) right after the engine decided a flag
#: change, before the worker publishes it, the way a long pause can strike at any instant.
SITECUSTOMIZE = """
import os
import signal

from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.pipeline import engine as _engine

_process = _engine.Engine.process


def process(self, events, positions=None):
    result = _process(self, events, positions)
    if any(isinstance(o.event, FlagChangeEvent) for o in result.outputs):
        os.kill(os.getpid(), signal.SIGSTOP)
    return result


_engine.Engine.process = process
"""


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal (state ``T`` in /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_worker_frozen_past_its_session_publishes_nothing_when_it_wakes(
    broker: EmbeddedBroker,
    topics: Topics,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    config_path = tmp_path / "ranker.yaml"
    config_path.write_text(config_yaml(SCENARIO, GUARDRAIL))
    records = event_records(topics, list(simulate(SCENARIO)))
    args = [*SINGLE, "--snapshot-interval", "0.3"]
    zombie_log = tmp_path / "zombie.log"
    zombie = start_worker(config_path, zombie_log, args=args, env={"PYTHONPATH": str(inject)})
    zombie.wait_active()
    produce(records)
    deadline = time.monotonic() + 120
    while not stopped(zombie.proc.pid):  # it froze holding the kill it decided
        assert zombie.proc.poll() is None, zombie_log.read_text()
        assert time.monotonic() < deadline, zombie_log.read_text()
        time.sleep(0.1)
    try:
        heir = start_worker(config_path, tmp_path / "heir.log", args=args)
        # The heir gets the lease once the frozen worker's session (6 s) has expired, resumes
        # from the zombie's last snapshot and decides the same kill.
        heir.wait_active(timeout=90)
        heir.wait_for("all read", lambda s: s["records"] == len(records), 120)
        time.sleep(1.0)  # a last snapshot of the batch just read, if one is due
        changes = flag_changes(broker.bootstrap, topics)
        assert [(c.version, c.cause.action.value) for c in changes] == [(1, "init"), (2, "kill")]
        snapshots = len(read_topic(broker.bootstrap, state_topic(topics).name))
    finally:
        zombie.proc.send_signal(signal.SIGCONT)
    # Awake, the zombie goes on to publish the kill it holds: it asks the coordinator first,
    # learns it was expelled, and stops without publishing or snapshotting anything.
    zombie.proc.wait(timeout=90)
    text = zombie_log.read_text()
    assert "expelled this worker" in text or "lost to another worker" in text, text[-3000:]
    assert flag_changes(broker.bootstrap, topics) == changes
    assert len(read_topic(broker.bootstrap, state_topic(topics).name)) == snapshots
    # The heir is untouched: still active, everything counted once.
    status = heir.health() or {}
    assert (status["role"], status["records"]) == ("active", len(records))
    # And it stops cleanly, even though the zombie's return set off a rebalance of the lease.
    heir.stop()
    assert heir.proc.returncode == 0, (tmp_path / "heir.log").read_text()[-3000:]
