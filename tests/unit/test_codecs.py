"""Compressed record batches: what a real Kafka broker serves when producers compress.

Kafka keeps a batch compressed as its producer sent it (snappy, lz4, zstd, gzip) and the consumer
decompresses it. The embedded broker decompresses on write, which hid that aiokafka had no codec
installed. This builds each kind of v2 record batch with aiokafka's own record builder, reads it
back with the record parser the consumer's fetcher uses, and decodes the values as the worker does.
"""

from __future__ import annotations

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from driftswitch.streams.contract.events import PredictionEvent, encode, to_struct
from driftswitch.streams.pipeline.ingest import Ingest, InputRecord

#: The compression type in a v2 batch's attributes (Kafka protocol).
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_compressed_batch_is_read_and_decoded(codec: str) -> None:
    events = [
        PredictionEvent(
            request_id=f"r{i}", flag="ranker", variant="control", ts=1767225600.0 + i, prediction=1
        )
        for i in range(200)
    ]
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=CODECS[codec],
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i, event in enumerate(events):
        assert builder.append(i, 1767225600000 + i, event.request_id.encode(), encode(event), [])
    wire = bytes(builder.build())
    records = MemoryRecords(wire)
    batch = records.next_batch()
    assert batch is not None
    assert batch.compression_type == CODECS[codec]  # really compressed on the wire
    read = [InputRecord("predictions", 0, rec.offset, rec.key, rec.value) for rec in batch]
    decoded = Ingest("predictions", "outcomes").decode(read)
    assert decoded.rejected == []
    assert decoded.events == [to_struct(e) for e in events]
