"""A broker that lost its data: input offsets beyond the end of what the broker now holds.

This happens when an in-memory broker (the embedded one) restarts, or when an input topic is
deleted and created again under the same name. The worker's recorded position (from its last
snapshot, or where it had read to) is then beyond the partition's end: reading on from there
would silently skip every new record until the new data caught up with the old offset.

Policy: the worker resumes from the start of the new data, with an ERROR log line naming the
partition and both offsets, the ``driftswitch_input_resets_total`` metric, and the
``DriftswitchInputReset`` alert (``deploy/prometheus/alerts.yml``). Statistics gathered before
stay in the engine's state; records of the old data that were never read are gone with it.

The check runs when the worker resumes, and in the background whenever its input has been idle
for :data:`CHECK_INTERVAL` seconds, on a consumer of its own (the hot loop never waits for it).
Tansu reports a partition's end as the base offset of its last batch, so a position past the
reported end is confirmed by reading that last batch until the partition stays idle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka.settings import KafkaSettings

__all__ = ["CHECK_INTERVAL", "find_lost"]

log = logging.getLogger(__name__)

#: Seconds of idle input between two checks while running.
CHECK_INTERVAL = 5.0
#: Consecutive empty polls (of ``_IDLE_MS``) that mean a partition has no more records.
_IDLE_POLLS = 3
_IDLE_MS = 200


async def _true_end(consumer: Any, tp: Any, reported: int) -> int:
    """The offset after the last record of ``tp``, reading from ``reported`` (Tansu's end)."""
    consumer.seek(tp, reported)
    end, idle = reported, 0
    while idle < _IDLE_POLLS:
        batch = await consumer.getmany(tp, timeout_ms=_IDLE_MS, max_records=10_000)
        records = batch.get(tp, [])
        if records:
            end, idle = records[-1].offset + 1, 0
        else:
            idle += 1
    return end


async def find_lost(
    settings: KafkaSettings, positions: Mapping[Any, int]
) -> dict[Any, tuple[int, int]]:
    """Partitions whose position is beyond the broker's data: ``{tp: (start, end)}`` of the data
    the broker holds now. Reads with a consumer of its own."""
    if not positions:
        return {}
    async with kafka.consuming(settings, enable_auto_commit=False) as consumer:
        tps = list(positions)
        ends: Mapping[Any, int] = await consumer.end_offsets(tps)
        suspect = [tp for tp in tps if positions[tp] > ends[tp]]
        if not suspect:
            return {}
        consumer.assign(suspect)
        starts: Mapping[Any, int] = await consumer.beginning_offsets(suspect)
        lost: dict[Any, tuple[int, int]] = {}
        for tp in suspect:
            end = await _true_end(consumer, tp, ends[tp])
            if positions[tp] > end:
                lost[tp] = (starts[tp], end)
        return lost
