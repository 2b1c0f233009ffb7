"""The join on a store: same counts as the in-memory join, no eviction by count, checkpoints
that commit and roll back, and the RocksDB store across a reopen (no broker needed)."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest

from driftswitch.streams.pipeline.join import (
    DUPLICATE,
    JoinBuffer,
    JoinStore,
    MemoryJoinStore,
    StoredJoinBuffer,
)
from driftswitch.streams.service.joinstore import RocksJoinStore

Op = tuple[str, str, float]


def _stream(seed: int, n: int) -> list[Op]:
    """Predictions and outcomes over a few request ids: late, early, duplicated, expired."""
    rng = random.Random(seed)
    ops: list[Op] = []
    t = 1000.0
    for _ in range(n):
        t += rng.random()
        rid = f"r{rng.randrange(n // 3)}"
        kind = "p" if rng.random() < 0.5 else "o"
        ts = t - rng.choice([0.0, 0.0, rng.uniform(0, 30), rng.uniform(30, 90)])
        ops.append((kind, rid, ts))
    return ops


def _feed(buf: Any, ops: list[Op], start: int = 0) -> list[Any]:
    got = []
    for i, (kind, rid, ts) in enumerate(ops, start):
        if kind == "p":
            r = buf.add_prediction(rid, ts, f"f/{i % 2}", ("f", str(i % 2), i, False))
        else:
            r = buf.add_outcome(rid, ts, i % 2 == 0)
        got.append(r if r is DUPLICATE or r is None else r[-1])
        if i % 97 == 0:
            buf.expire()
    return got


def _final(buf: Any) -> dict[str, int]:
    """Counts once everything pending has expired (two records far in the future)."""
    buf.add_outcome("end-1", 1e9, True)
    buf.add_outcome("end-2", 1e9, True)
    buf.expire()
    counts = buf.counters()
    counts["expired_by_group"] = sorted(buf.expired_predictions.items())
    return counts


@pytest.mark.parametrize("seed", range(8))
def test_the_stored_join_counts_as_the_in_memory_one(seed: int, tmp_path: Path) -> None:
    ops = _stream(seed, 3000)
    reference = JoinBuffer(ttl=60.0, max_pending=10**9)
    memory = StoredJoinBuffer(ttl=60.0, store=MemoryJoinStore())
    rocks_store = RocksJoinStore(tmp_path / "db")
    rocks = StoredJoinBuffer(ttl=60.0, store=rocks_store)
    expected = _feed(reference, ops)
    assert _feed(memory, ops) == expected
    # RocksDB, committed every 250 operations (and once more at the end).
    got = []
    for start in range(0, len(ops), 250):
        got += _feed(rocks, ops[start : start + 250], start)
        rocks_store.commit(f"{start}".encode())
    assert got == expected
    final = _final(reference)
    assert _final(memory) == final
    assert _final(rocks) == final
    assert memory.counters()["pending_predictions"] == 0
    assert len(memory.store) == memory.pending_outcomes == 2  # type: ignore[arg-type]


@pytest.mark.slow
def test_no_entry_is_evicted_by_count() -> None:
    """Labels 30 minutes of event time late, 600,000 pending at the peak: every one joins."""
    store = MemoryJoinStore()
    buf = StoredJoinBuffer(ttl=3600.0, store=store, max_pending=1000)
    n, rate, delay = 900_000, 333.0, 1800.0  # 333 predictions per second of event time
    joined = 0
    peak = 0
    labels = 0
    for i in range(n):
        ts = i / rate
        assert buf.add_prediction(f"r{i}", ts, "f/a", ("f", "a", 1, False)) is None
        while labels <= i and labels / rate + delay <= ts:
            got = buf.add_outcome(f"r{labels}", labels / rate + delay, 1)
            assert got is not None
            assert got is not DUPLICATE
            joined += 1
            labels += 1
        if i % 10_000 == 0:
            buf.expire()
            peak = max(peak, buf.pending_predictions)
    assert peak >= 590_000
    assert joined == labels == n - int(delay * rate)
    counts = buf.counters()
    assert counts["joined"] == joined
    assert counts["evicted_predictions"] == counts["evicted_outcomes"] == 0
    assert counts["expired_predictions"] == 0
    assert counts["pending_predictions"] == n - joined


def _committed(tmp_path: Path) -> tuple[RocksJoinStore, StoredJoinBuffer]:
    store = RocksJoinStore(tmp_path / "db")
    buf = StoredJoinBuffer(ttl=60.0, store=store)
    buf.add_prediction("a", 10.0, "f/x", ("f", "x", 1, False))
    buf.add_outcome("b", 11.0, True)
    store.commit(b"one")
    return store, buf


def test_rollback_returns_to_the_last_commit(tmp_path: Path) -> None:
    store, buf = _committed(tmp_path)
    state = buf.to_state()
    assert buf.add_outcome("a", 12.0, True) is not None
    buf.add_prediction("c", 13.0, "f/x", ("f", "x", 2, False))
    store.rollback()
    again = StoredJoinBuffer.from_state(state, store)
    assert again.add_outcome("a", 12.0, False) == (10.0, "f/x", ("f", "x", 1, False))
    assert store.get("c") is None
    assert again.counters()["pending_outcomes"] == 1


def test_a_copy_is_an_independent_view(tmp_path: Path) -> None:
    """Containment deep-copies the engine: the copy and the original diverge until a commit."""
    store, buf = _committed(tmp_path)
    other = copy.deepcopy(buf)
    assert buf.add_outcome("a", 12.0, True) is not None
    assert other.store.get("a") == (0, 10.0, "f/x", ("f", "x", 1, False))
    assert other.store is not store
    assert other.add_outcome("a", 12.0, False) is not None


def test_a_reopened_store_has_the_last_commit_only(tmp_path: Path) -> None:
    store, buf = _committed(tmp_path)
    state = buf.to_state()
    buf.add_prediction("c", 13.0, "f/x", ("f", "x", 2, False))  # never committed
    store.close()
    reopened = RocksJoinStore(tmp_path / "db")
    assert reopened.checkpoint() == b"one"
    again = StoredJoinBuffer.from_state(state, reopened)
    assert reopened.get("c") is None
    assert again.add_prediction("b", 11.5, "f/x", ("f", "x", 3, False)) == (11.0, True)
    assert again.counters()["joined"] == 1
    reopened.clear()
    assert reopened.checkpoint() is None
    assert reopened.get("a") is None


def test_an_in_memory_state_moves_into_the_store(tmp_path: Path) -> None:
    """An older snapshot (entries inline) loads onto the disk store and continues exactly."""
    ops = _stream(3, 2000)
    reference = JoinBuffer(ttl=60.0, max_pending=10**9)
    _feed(reference, ops[:1000])
    state = copy.deepcopy(reference.to_state())
    store: JoinStore = RocksJoinStore(tmp_path / "db")
    moved = StoredJoinBuffer.from_state(state, store)
    assert moved.pending_predictions == reference.pending_predictions
    assert _feed(moved, ops[1000:], 1000) == _feed(reference, ops[1000:], 1000)
    assert _final(moved) == _final(reference)


def test_eviction_bounds_the_store_oldest_first() -> None:
    buf = StoredJoinBuffer(ttl=600.0, store=MemoryJoinStore())
    for i in range(10):
        buf.add_prediction(f"p{i}", 100.0 + i, "f/a", ("f", "a", i, False))
    buf.add_outcome("o", 99.0, True)
    assert buf.evict(3) == 3
    counts = buf.counters()
    assert (counts["evicted_outcomes"], counts["evicted_predictions"]) == (1, 2)
    assert buf.store.get("p1") is None
    assert buf.store.get("p2") is not None
