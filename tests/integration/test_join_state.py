"""End to end: the join's state on disk (``driftswitch run --state-dir``) on the embedded broker.

Labels arrive 30 minutes of event time after their predictions, with far more entries pending
than ``join.max_pending``: every one joins and the counts equal an offline replay of the same
events. A worker SIGKILLed mid-stream resumes from its disk and the latest snapshot without
losing or double-counting anything, and a snapshot written without a store (entries inline)
moves onto the disk store.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from driftswitch.streams.config.model import Config, load_config
from driftswitch.streams.contract.events import OutcomeEvent, PredictionEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.service.snapshot import latest_snapshot
from driftswitch.streams.service.worker import state_topic
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.testing import WorkerProcess, event_records, flag_changes, read_topic

pytestmark = [pytest.mark.broker, pytest.mark.slow]
#: Runs ``--stage single`` on purpose: the single worker's join store (the join
#: stage's: test_join_stage.py).
SINGLE = ["--stage", "single"]

#: Predictions per second of event time, and the label delay: 36,000 entries wait at a time.
RATE = 20.0
DELAY = 1800.0
REQUESTS = 60_000
CONFIG = """\
flags:
  ranker:
    default: control
    variants:
      control: {weight: 50, value: control}
      candidate: {weight: 50, value: candidate}
join:
  ttl: 2h
  max_pending: 1000
"""
Event = PredictionEvent | OutcomeEvent


def delayed_events() -> list[Event]:
    """Predictions at RATE per second; each one's outcome DELAY seconds later, in event-time
    order (so up to RATE * DELAY outcomes are owed at once)."""
    rng = random.Random(12)
    out: list[tuple[float, int, Event]] = []
    for i in range(REQUESTS):
        ts = 1_700_000_000.0 + i / RATE
        variant = "control" if i % 2 else "candidate"
        truth = rng.random() < 0.5
        right = rng.random() < (0.9 if variant == "control" else 0.8)
        rid = f"req-{i}"
        out.append(
            (
                ts,
                0,
                PredictionEvent(
                    request_id=rid,
                    flag="ranker",
                    variant=variant,
                    ts=ts,
                    prediction=truth if right else not truth,
                ),
            )
        )
        out.append((ts + DELAY, 1, OutcomeEvent(request_id=rid, ts=ts + DELAY, label=truth)))
    out.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in out]


def offline(config: Config, events: list[Event]) -> Any:
    """The engine's view after the same events in event-time order, in memory, unbounded."""
    unbounded = config.model_copy(
        update={"join": config.join.model_copy(update={"max_pending": 10**9})}
    )
    engine = Engine(unbounded)
    for start in range(0, len(events), 5000):
        engine.process(events[start : start + 5000])
    return engine.snapshot()


def same_counts(live: Any, expected: Any) -> None:
    for variant in ("control", "candidate"):
        for key in ("predictions", "joined", "labelled", "accuracy"):
            got = live["flags"]["ranker"]["variants"][variant][key]
            assert got == expected["flags"]["ranker"]["variants"][variant][key], (variant, key)
    for key in ("joined", "pending_predictions", "pending_outcomes", "expired_predictions"):
        assert live["join"][key] == expected["join"][key], key
    assert live["join"]["evicted_predictions"] == live["join"]["evicted_outcomes"] == 0


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "delayed.yaml"
    path.write_text(CONFIG)
    return path


def test_labels_30_minutes_late_all_join_across_sigkills(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    events = delayed_events()
    records = event_records(topics, events)
    first_cut, second_cut = len(records) // 3, 2 * len(records) // 3
    state = tmp_path / "state"
    log = tmp_path / "worker.log"
    fast = [*SINGLE, "--snapshot-interval", "0.5"]

    # 1. Without a store (and a bound the in-memory join does not reach): the entries are in
    #    the snapshots; then SIGKILL, with input read since the last snapshot.
    in_memory = tmp_path / "in-memory.yaml"
    in_memory.write_text(CONFIG.replace("max_pending: 1000", "max_pending: 1000000"))
    first = start_worker(in_memory, log, args=fast)
    first.wait_active()
    produce(records[:first_cut])
    first.wait_for(
        "a third read, a snapshot",
        lambda s: s["records"] == first_cut and s["snapshots_written"] >= 1,
        120,
    )
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()

    # 2. With a store: the inline entries move onto the disk at its first snapshot, the next
    #    one commits only what changed since. Then SIGKILL mid-stream, right after more input
    #    was read. (Each part is produced only once the one before is read and snapshotted: a
    #    worker that reads a whole part in a few batches writes one snapshot for it, then none
    #    while the input is idle.)
    second = start_worker(config_path, log, args=[*fast, "--state-dir", str(state)])
    second.wait_active()
    mid = (first_cut + second_cut) // 2
    after = second_cut + 5_000
    produce(records[first_cut:mid])
    second.wait_for(
        "half read, a snapshot on the store",
        lambda s: s["records"] == mid and s["snapshots_written"] >= 1,
        120,
    )
    produce(records[mid:second_cut])
    second.wait_for(
        "the rest read, a second snapshot",
        lambda s: s["records"] == second_cut and s["snapshots_written"] >= 2,
        120,
    )
    produce(records[second_cut:after])
    second.wait_for("more read", lambda s: s["records"] == after, 120)
    second.proc.send_signal(signal.SIGKILL)
    second.proc.wait()
    produce(records[after:])

    # 3. Restart on the same disk: the store continues the latest snapshot.
    third = start_worker(config_path, log, args=[*fast, "--state-dir", str(state)])
    third.wait_active()
    status = third.health() or {}
    assert status["resumed_from_snapshot"] is not None
    assert status["state"]["join_entries_lost"] == 0
    assert status["state"]["recovery_seconds"] is not None
    third.wait_for("all records read", lambda s: s["records"] == len(records), 180)
    status = third.health() or {}
    assert status["state"]["join_store_bytes"] > 0

    live = status["engine"]
    expected = offline(load_config(config_path), events)
    assert expected["join"]["joined"] == REQUESTS
    same_counts(live, expected)
    assert [c.version for c in flag_changes(broker.bootstrap, topics)] == [1]

    # The snapshots on the state topic no longer carry the entries.
    snap = latest_snapshot(
        read_topic(broker.bootstrap, state_topic(topics).name),
        f"{topics.flags.name.removesuffix('.flags.v1')}-workers".encode(),
    )
    assert snap is not None
    assert snap.engine["join"]["stored"] is True
    assert "predictions" not in snap.engine["join"]
    assert snap.checkpoint


def test_a_store_that_does_not_continue_the_snapshot_is_not_used(
    broker: EmbeddedBroker,
    topics: Topics,
    config_path: Path,
    start_worker: Callable[..., WorkerProcess],
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
    tmp_path: Path,
) -> None:
    """Another disk (a worker on another machine): the join starts empty, the loss counted."""
    events = delayed_events()[:20_000]
    records = event_records(topics, events)
    log = tmp_path / "worker.log"
    first = start_worker(config_path, log, args=[*SINGLE, "--state-dir", str(tmp_path / "a")])
    first.wait_active()
    produce(records)
    first.wait_for("all read", lambda s: s["records"] == len(records), 120)
    pending = (first.health() or {})["engine"]["join"]
    owed = pending["pending_predictions"] + pending["pending_outcomes"]
    assert owed > 1000
    first.stop()
    second = start_worker(config_path, log, args=[*SINGLE, "--state-dir", str(tmp_path / "b")])
    second.wait_active()
    status = second.health() or {}
    assert status["state"]["join_entries_lost"] == owed
    assert status["engine"]["join"]["pending_predictions"] == 0
