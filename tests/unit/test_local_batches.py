"""The in-process hand-over of observation batches under ``--stage all`` (no broker)."""

from __future__ import annotations

from driftswitch.streams.pipeline.merge import Batch, decode_batch, encode_batch
from driftswitch.streams.service.joinstage import LocalBatches


def _batch(source: int, watermark: float = 1.0) -> Batch:
    return Batch(source, {0: 1}, watermark, False, [], "run")


def test_a_batch_is_taken_once_by_its_bytes() -> None:
    local = LocalBatches()
    sent = _batch(2)
    value = encode_batch(sent)
    local.add(value, sent)
    assert local.take(encode_batch(_batch(2, 2.0))) is None  # another batch: decode it
    assert local.take(None) is None  # a tombstone
    assert local.take(bytes(value)) is sent  # the same bytes, read back from the broker
    assert local.take(value) is None  # once
    assert local.taken == 1
    assert len(local) == 0


def test_what_is_taken_is_what_decoding_the_bytes_gives() -> None:
    sent = _batch(3)
    local = LocalBatches()
    local.add(encode_batch(sent), sent)
    assert decode_batch(encode_batch(sent)) == local.take(encode_batch(sent))


def test_batches_not_taken_are_dropped_oldest_first_beyond_the_limit() -> None:
    local = LocalBatches(limit=10)
    values = [bytes([65 + i]) * 4 for i in range(5)]  # 4 bytes each: two fit
    for v in values:
        local.add(v, _batch(0))
    assert len(local) == 2
    assert local.take(values[2]) is None
    assert local.take(values[3]) is not None
    assert local.take(values[4]) is not None
    local.add(values[0], _batch(0))
    local.add(values[0], _batch(0))  # the same bytes again: counted once
    assert len(local) == 1
    local.add(values[1], _batch(0))
    assert len(local) == 2  # 8 bytes: both fit
