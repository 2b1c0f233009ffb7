"""Which state a restarting worker resumes from: its local join store or the state topic's
latest snapshot (no broker: the choice only reads the local store)."""

from __future__ import annotations

from pathlib import Path

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.service.snapshot import Snapshot, decode_chunks
from driftswitch.streams.service.worker import Worker, WorkerSettings

CONFIG = """\
flags:
  ranker:
    default: control
    variants:
      control: {weight: 100, value: v1}
"""


def _worker(state: Path) -> Worker:
    settings = WorkerSettings(
        bootstrap="127.0.0.1:1", topics=Topics.with_prefix("t"), state_dir=state
    )
    return Worker(parse_config(CONFIG), settings)


def _checkpoint(worker: Worker, seq: int, cid: str, parent: str) -> Snapshot:
    """Commit the worker's current state to its store as checkpoint ``cid``; the snapshot."""
    chunks = worker._snapshot_chunks(seq, cid, parent)
    assert worker.join_store is not None
    worker.join_store.commit(b"".join(value for value, _ in chunks))
    return decode_chunks([value for value, _ in chunks])


def _pending(worker: Worker, n: int) -> None:
    join = worker.engine._join
    for i in range(n):
        join.add_prediction(f"r{i}", 100.0 + i, "ranker/control", ("ranker", "control", 1, False))


def test_the_store_continues_its_own_checkpoint_or_the_next(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    _pending(worker, 5)
    topic = _checkpoint(worker, 1, "a", "")
    store = worker.join_store
    assert store is not None
    chosen = worker._local_checkpoint(topic, store)
    assert chosen is not None
    assert chosen.checkpoint == "a"
    # Killed after committing checkpoint b but before sending it: the topic still has a.
    _pending(worker, 7)
    _checkpoint(worker, 2, "b", "a")
    chosen = worker._local_checkpoint(topic, store)
    assert chosen is not None
    assert (chosen.seq, chosen.checkpoint) == (2, "b")
    assert chosen.engine["join"]["pending_predictions"] == 7
    assert store.get("r6") is not None
    assert worker.counters["join_entries_lost"] == 0


def test_a_store_of_another_lineage_is_emptied_and_the_loss_counted(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    _pending(worker, 4)
    store = worker.join_store
    assert store is not None
    _checkpoint(worker, 3, "mine", "older")
    # The topic's latest snapshot was written elsewhere (another disk), with 4 pending entries.
    other = _worker(tmp_path / "other")
    _pending(other, 4)
    theirs = _checkpoint(other, 3, "theirs", "older")
    chosen = worker._local_checkpoint(theirs, store)
    assert chosen is theirs
    assert chosen.engine["join"]["pending_predictions"] == 0
    assert worker.counters["join_entries_lost"] == 4
    assert store.checkpoint() is None
    assert store.get("r0") is None


def test_without_a_snapshot_the_store_is_emptied(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    _pending(worker, 2)
    store = worker.join_store
    assert store is not None
    _checkpoint(worker, 1, "a", "")
    assert worker._local_checkpoint(None, store) is None
    assert store.checkpoint() is None
    assert worker.counters["join_entries_lost"] == 0


def test_an_older_snapshot_with_inline_entries_is_taken_as_it_is(tmp_path: Path) -> None:
    """Written without a store: no checkpoint id, entries in the engine state (moved into the
    store when the engine is rebuilt from it)."""
    plain = Worker(
        parse_config(CONFIG),
        WorkerSettings(bootstrap="127.0.0.1:1", topics=Topics.with_prefix("t")),
    )
    _pending(plain, 3)
    chunks = plain._snapshot_chunks(5, "", "")
    old = decode_chunks([value for value, _ in chunks])
    assert len(old.engine["join"]["predictions"]) == 3
    worker = _worker(tmp_path)
    store = worker.join_store
    assert store is not None
    chosen = worker._local_checkpoint(old, store)
    assert chosen is old
    assert worker.counters["join_entries_lost"] == 0
