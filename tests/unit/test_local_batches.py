"""The in-process hand-over of observation batches under ``--stage all`` (no broker)."""

from __future__ import annotations

import asyncio

import pytest

from driftswitch.streams.pipeline.merge import Batch, decode_batch, encode_batch
from driftswitch.streams.service import joinstage
from driftswitch.streams.service.joinstage import LocalBatches


def _batch(source: int, watermark: float = 1.0) -> Batch:
    return Batch(source, {0: 1}, watermark, False, [], "run")


def test_a_batch_is_taken_once_by_its_partition_and_bytes() -> None:
    local = LocalBatches()
    sent = _batch(2)
    value = encode_batch(sent)
    local.add(0, value, sent)
    assert local.take(0, encode_batch(_batch(2, 2.0))) is None  # another batch: decode it
    assert local.take(1, value) is None  # not sent to that partition
    assert local.take(0, None) is None  # a tombstone
    assert local.take(0, bytes(value)) is sent  # the same bytes, read back from the broker
    assert local.take(0, value) is None  # once
    assert local.taken == 1
    assert len(local) == 0


def test_the_same_bytes_sent_to_several_partitions_are_taken_in_each() -> None:
    """A batch with nothing for several observation partitions sends each the same bytes."""
    local = LocalBatches()
    sent = _batch(1)
    value = encode_batch(sent)
    for q in range(3):
        local.add(q, value, sent)
    assert [local.take(q, value) for q in (2, 0, 1)] == [sent, sent, sent]
    assert local.take(0, value) is None
    assert local.taken == 3


def test_what_is_taken_is_what_decoding_the_bytes_gives() -> None:
    sent = _batch(3)
    local = LocalBatches()
    local.add(0, encode_batch(sent), sent)
    assert decode_batch(encode_batch(sent)) == local.take(0, encode_batch(sent))


def test_batches_not_taken_are_dropped_oldest_first_beyond_the_limit() -> None:
    local = LocalBatches(limit=10)
    values = [bytes([65 + i]) * 4 for i in range(5)]  # 4 bytes each: two fit
    for v in values:
        local.add(0, v, _batch(0))
    assert len(local) == 2
    assert local.take(0, values[2]) is None
    assert local.take(0, values[3]) is not None
    assert local.take(0, values[4]) is not None
    local.add(0, values[0], _batch(0))
    local.add(0, values[0], _batch(0))  # the same bytes to the same partition: counted once
    assert len(local) == 1
    local.add(1, values[0], _batch(0))
    assert len(local) == 2  # 8 bytes: both fit


def test_the_join_stage_waits_only_for_a_decide_stage_that_is_taking() -> None:
    """``behind`` (the join stage's back-pressure) holds while half the limit or more waits and
    the decide stage takes; a decide stage that takes nothing (a standby) holds nothing back."""

    async def scenario() -> None:
        local = LocalBatches(limit=8)
        local.add(0, b"aaaa", _batch(0))  # half the limit waits, but nobody has taken yet
        assert not local.behind
        assert local.take(0, b"none") is None  # the decide stage reads (a record not here)
        assert local.behind
        waiting = asyncio.ensure_future(local.caught_up())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert local.take(0, b"aaaa") is not None
        await asyncio.wait_for(waiting, 1.0)  # room again: the join stage reads on
        assert not local.behind

    asyncio.run(scenario())


def test_a_decide_stage_that_stopped_taking_holds_nothing_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(joinstage.time, "monotonic", lambda: now[0])
    local = LocalBatches(limit=8)
    local.take(0, b"x")
    local.add(0, b"aaaa", _batch(0))
    assert local.behind
    now[0] += joinstage.LOCAL_READER_IDLE
    assert not local.behind
