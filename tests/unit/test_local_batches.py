"""The in-process hand-over of observation batches under ``--stage all`` (no broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

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


def test_the_join_stage_waits_for_a_decide_stage_that_holds_or_may_yet_hold_the_lease() -> None:
    """``behind`` (the join stage's back-pressure) holds while half the limit or more waits,
    from the start (the decide stage's lease group has not answered yet: it restores, then
    takes) and while this process holds the lease; taking makes room again."""

    async def scenario() -> None:
        for leased in (None, True):
            local = LocalBatches(limit=8)
            local.leased = leased
            local.add(0, b"aa", _batch(0))
            assert not local.behind  # less than half the limit waits
            local.add(0, b"bb", _batch(0))
            assert local.behind  # nothing taken yet: a starting decide stage counts
            waiting = asyncio.ensure_future(local.caught_up())
            await asyncio.sleep(0.01)
            assert not waiting.done()
            assert local.take(0, b"aa") is not None
            await asyncio.wait_for(waiting, 1.0)  # room again: the join stage reads on
            assert not local.behind

    asyncio.run(scenario())


def test_a_standby_decide_stage_holds_nothing_back_and_nothing_is_kept_for_it() -> None:
    """Another process holds the lease and reads the batches from the broker: the join stage
    reads on, and keeps nothing here; what it kept while the lease group had not answered is
    dropped, so a standby that takes over later finds no batches from before its snapshot."""
    local = LocalBatches(limit=8)
    assert local.leased is None
    local.add(0, b"aaaa", _batch(0))
    _acked(local, 0, b"aaaa", 5)
    assert local.behind
    local.leased = False
    assert not local.behind
    assert len(local) == 0
    assert local.acknowledged(0, 5) == []
    local.add(0, b"bbbb", _batch(0))
    _acked(local, 0, b"bbbb", 6)
    assert len(local) == 0  # a standby's batches are not kept
    assert local.take(0, b"bbbb") is None
    local.leased = True  # the lease came to this process (the active one stopped)
    assert not local.behind  # nothing from before waits
    local.add(0, b"cccc", _batch(0))
    assert local.behind
    assert local.take(0, b"cccc") is not None


def _acked(local: LocalBatches, partition: int, value: bytes, offset: int | None) -> None:
    """Deliver the send of ``value`` to ``partition``: acknowledged at ``offset``, or failed."""
    loop = asyncio.new_event_loop()
    try:
        delivery: asyncio.Future[Any] = loop.create_future()
        if offset is None:
            delivery.set_exception(KafkaError("broker down"))
        else:
            delivery.set_result(
                RecordMetadata("t.observations.v1", partition, None, offset, -1, 0, 0)
            )
        local.delivered(partition, b"k", value, delivery)
    finally:
        loop.close()


def test_acknowledged_records_are_handed_out_in_offset_order_up_to_a_gap() -> None:
    local = LocalBatches()
    values = [encode_batch(_batch(0, float(i))) for i in range(5)]
    for v in values:
        local.add(0, v, decode_batch(v))
    # Acknowledged out of order, 12 and 13 not yet.
    for offset, v in ((11, values[1]), (10, values[0]), (14, values[4])):
        _acked(local, 0, v, offset)
    assert local.arrived.is_set()
    assert local.acknowledged(1, 10) == []  # nothing sent to partition 1
    assert local.acknowledged(0, 9) == []  # the record at 9 is someone else's: read it first
    assert local.acknowledged(0, 10) == [(10, b"k", values[0]), (11, b"k", values[1])]
    assert local.taken_acked == 2
    # The batches stay until taken by their bytes, as a fetched record's would be.
    assert local.take(0, values[0]) is not None
    # A fetch brings 12 (taken from memory by its bytes) before its acknowledgement is handled.
    assert local.take(0, values[2]) is not None
    _acked(local, 0, values[2], 12)
    assert local.acknowledged(0, 13) == []  # 13 not acknowledged yet
    _acked(local, 0, values[3], 13)
    assert local.acknowledged(0, 13) == [(13, b"k", values[3]), (14, b"k", values[4])]


def test_a_failed_or_dropped_send_is_not_handed_out() -> None:
    local = LocalBatches(limit=10)
    _acked(local, 0, b"AAAA", 0)  # never added (the batch was not kept)
    assert not local.arrived.is_set()
    local.add(0, b"BBBB", _batch(0))
    _acked(local, 0, b"BBBB", None)  # the send failed
    assert not local.arrived.is_set()
    local.add(0, b"CCCC", _batch(0))
    _acked(local, 0, b"CCCC", 1)
    for v in (b"DDDD", b"EEEE"):  # 4 bytes each: CCCC is dropped beyond the limit
        local.add(0, v, _batch(0))
    _acked(local, 0, b"DDDD", 2)
    assert local.acknowledged(0, 1) == []  # dropped: the fetch brings it, then 2 follows
    assert local.acknowledged(0, 2) == [(2, b"k", b"DDDD")]


def test_acknowledgements_nobody_takes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A standby decide stage takes nothing: the oldest acknowledgements are forgotten."""
    monkeypatch.setattr(joinstage, "LOCAL_ACKED_MAX", 3)
    local = LocalBatches()
    values = [bytes([65 + i]) * 4 for i in range(5)]
    for offset, v in enumerate(values):
        local.add(0, v, _batch(0))
        _acked(local, 0, v, offset)
    assert local.acknowledged(0, 0) == []
    assert [offset for offset, _, _ in local.acknowledged(0, 2)] == [2, 3, 4]
