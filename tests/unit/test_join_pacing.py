"""When the join stage checkpoints a partition: at most every ``snapshot_interval`` seconds, once
the CPU time spent on its input is ``WORK_PER_CHECKPOINT`` times its last checkpoint's cost, or
after ``MAX_SNAPSHOT_INTERVAL`` seconds (no broker: the rule only reads the partition's figures)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.service.joinstage import WORK_PER_CHECKPOINT, JoinStage
from driftswitch.streams.service.joinstore import RocksJoinStore
from driftswitch.streams.service.pacing import MAX_SNAPSHOT_INTERVAL
from driftswitch.streams.service.worker import WorkerSettings

CONFIG = """\
flags:
  ranker:
    default: control
    variants:
      control: {weight: 100, value: v1}
"""


def _stage(interval: float = 1.0) -> JoinStage:
    settings = WorkerSettings(
        bootstrap="127.0.0.1:1",
        topics=Topics.with_prefix("t"),
        snapshot_interval=interval,
    )
    return JoinStage(parse_config(CONFIG), settings)


def test_a_partition_that_read_nothing_is_never_due() -> None:
    stage = _stage()
    part = stage._open(0, None)
    part.saved_at = 0.0
    assert not stage._due(part, 3600.0)


def test_a_cheap_checkpoint_follows_the_configured_interval() -> None:
    stage = _stage(interval=1.0)
    part = stage._open(0, None)
    part.dirty, part.saved_at, part.cost, part.work = True, 100.0, 0.0, 0.0
    assert not stage._due(part, 100.9)
    assert stage._due(part, 101.0)


def test_a_costly_checkpoint_waits_for_ten_times_its_cost_in_work() -> None:
    stage = _stage(interval=1.0)
    part = stage._open(0, None)
    part.dirty, part.saved_at, part.cost = True, 100.0, 0.2
    part.work = WORK_PER_CHECKPOINT * 0.2 - 0.01
    assert not stage._due(part, 105.0)
    part.work = WORK_PER_CHECKPOINT * 0.2
    assert not stage._due(part, 100.5)  # never more often than the configured interval
    assert stage._due(part, 101.0)


def test_a_partition_with_little_work_is_still_saved_after_the_longest_interval() -> None:
    stage = _stage(interval=1.0)
    part = stage._open(0, None)
    part.dirty, part.saved_at, part.cost, part.work = True, 100.0, 1.0, 0.0
    assert not stage._due(part, 100.0 + MAX_SNAPSHOT_INTERVAL - 0.1)
    assert stage._due(part, 100.0 + MAX_SNAPSHOT_INTERVAL)


def test_a_configured_interval_longer_than_the_longest_wins() -> None:
    stage = _stage(interval=2 * MAX_SNAPSHOT_INTERVAL)
    part = stage._open(0, None)
    part.dirty, part.saved_at, part.cost, part.work = True, 0.0, 0.0, 5.0
    assert not stage._due(part, MAX_SNAPSHOT_INTERVAL + 1)
    assert stage._due(part, 2 * MAX_SNAPSHOT_INTERVAL)


def test_in_memory_one_partition_is_checkpointed_per_turn_and_none_while_one_is_written(
    tmp_path: Path,
) -> None:
    """The loop encodes at most one partition's state per turn (the one due longest) and never
    waits for the write of the last one."""

    async def scenario() -> None:
        stage = _stage(interval=1.0)
        parts = [stage._open(i, None) for i in range(3)]
        stage.parts = {p.index: p for p in parts}
        for part, saved in zip(parts, (100.0, 90.0, 95.0), strict=True):
            part.dirty, part.saved_at, part.cost, part.work = True, saved, 0.0, 1.0
        assert stage._to_checkpoint(99.0) == [parts[1]]  # 1 and 2 are due, 1 for longer
        parts[1].dirty = False
        assert stage._to_checkpoint(99.0) == [parts[2]]  # 0 is not due before 101
        written = asyncio.get_running_loop().create_future()
        stage._writing.start(written)
        assert stage._to_checkpoint(200.0) == []
        written.set_result(None)
        await asyncio.sleep(0)
        assert stage._to_checkpoint(200.0) == [parts[2]]
        # With a disk store every partition due is committed, in the loop.
        for part in parts:
            part.store = RocksJoinStore(tmp_path / str(part.index))
        try:
            assert stage._to_checkpoint(200.0) == [parts[0], parts[2]]
        finally:
            for part in parts:
                assert part.store is not None
                part.store.close()

    asyncio.run(scenario())
