"""The in-process hand-over of observation batches under ``--stage all`` (no broker)."""

from __future__ import annotations

import asyncio
from typing import Any

from driftswitch.streams.pipeline.merge import Batch
from driftswitch.streams.service.joinstage import LocalBatches


def _batch(source: int) -> Batch:
    return Batch(source, {0: 1}, 1.0, False, [], "run")


def test_a_batch_is_taken_once_at_its_position_with_its_bytes() -> None:
    local = LocalBatches()
    sent = _batch(2)
    local.add(0, 7, b"value", sent)
    assert local.take(0, 8, b"value") is None  # another position
    assert local.take(1, 7, b"value") is None  # another partition
    assert local.take(0, 7, b"other") is None  # someone else's record there: decode it
    assert local.take(0, 7, b"value") is sent
    assert local.take(0, 7, b"value") is None  # once
    assert local.taken == 1
    assert len(local) == 0


def test_batches_not_taken_are_dropped_oldest_first_beyond_the_limit() -> None:
    local = LocalBatches(limit=10)
    for offset in range(5):
        local.add(0, offset, b"abcd", _batch(0))  # 4 bytes each: two fit
    assert len(local) == 2
    assert local.take(0, 2, b"abcd") is None
    assert local.take(0, 3, b"abcd") is not None
    assert local.take(0, 4, b"abcd") is not None


class _Meta:
    def __init__(self, partition: int, offset: int) -> None:
        self.partition, self.offset = partition, offset


def test_only_an_acknowledged_send_is_kept() -> None:
    loop = asyncio.new_event_loop()
    try:
        local = LocalBatches()
        ok: asyncio.Future[Any] = loop.create_future()
        ok.set_result(_Meta(3, 42))
        failed: asyncio.Future[Any] = loop.create_future()
        failed.set_exception(RuntimeError("broker down"))
        cancelled: asyncio.Future[Any] = loop.create_future()
        cancelled.cancel()
        sent = _batch(1)
        local.sent(b"v", sent, ok)
        local.sent(b"w", _batch(1), failed)
        local.sent(b"x", _batch(1), cancelled)
        assert len(local) == 1
        assert local.take(3, 42, b"v") is sent
    finally:
        loop.close()
