"""A broker that lost its data: input offsets beyond the end of what the broker now holds.

This happens when an in-memory broker (the embedded one) restarts, or when an input topic is
deleted and created again under the same name. The worker's recorded position (from its last
snapshot, or where it had read to) is then beyond the partition's end: reading on from there
would silently skip every new record until the new data caught up with the old offset.

Policy: the worker resumes from the start of the new data, with an ERROR log line naming the
partition and both offsets, the ``driftswitch_input_resets_total`` metric, and the
``DriftswitchInputReset`` alert (``deploy/prometheus/alerts.yml``). Statistics gathered before
stay in the engine's state; records of the old data that were never read are gone with it.

A topic recreated and refilled past the old position before the worker looks has an end beyond
the position, so offsets alone cannot tell. The worker therefore also keeps a fingerprint of the
last record it consumed on every input partition (:class:`Mark`: its offset, Kafka timestamp and
a CRC-32 of key and value; stored in the snapshot): the check reads the record at that offset
again, and a different record there (or none, on a partition whose data now starts after it)
means the topic was recreated. The same policy applies. A mark whose record cannot be read back
for another reason (compacted away, or deleted by retention together with everything up to the
position) is not taken as a recreation.

The check runs when the worker resumes, and in the background whenever its input has been idle
for :data:`CHECK_INTERVAL` seconds, on a consumer of its own (the hot loop never waits for it).
The join stage checks a partition when it is assigned one, in the background too: the partition
stays paused until the answer comes, so that nothing is read from it before the check says
whether its data is there, while the rebalance callback returns at once (a check takes a
connection and a fetch per partition, seconds on a loaded broker, and a member slow in its
callbacks holds up the whole group's rebalance). :class:`LossCheck` is that scheduling, for both.
Tansu reports a partition's end (ListOffsets) as the base offset of its last batch, so a
position past the reported end is confirmed by a fetch: every fetch answer carries the
partition's true high watermark, even an answer without records. The check waits for that
answer however slow the broker is (up to :data:`ANSWER_TIMEOUT`, then it fails and is retried):
a slow broker is never taken for one that lost its data.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka.settings import KafkaSettings

__all__ = [
    "ANSWER_TIMEOUT",
    "CHECK_INTERVAL",
    "Checked",
    "LossCheck",
    "Lost",
    "Mark",
    "describe_lost",
    "describe_rewound",
    "find_lost",
    "mark_of",
]

log = logging.getLogger(__name__)

#: Seconds of idle input between two checks while running.
CHECK_INTERVAL = 5.0
#: Seconds to wait for the broker's answer to one fetch before the check fails (and is retried).
ANSWER_TIMEOUT = 60.0
_POLL_MS = 200


@dataclass(frozen=True)
class Mark:
    """The identity of one consumed record: offset, Kafka timestamp (ms) and CRC-32 of key+value."""

    offset: int
    timestamp: int
    digest: int

    def to_state(self) -> list[int]:
        return [self.offset, self.timestamp, self.digest]

    @classmethod
    def from_state(cls, state: Any) -> Mark:
        offset, timestamp, digest = (int(x) for x in state)
        return cls(offset, timestamp, digest)


def mark_of(record: Any) -> Mark:
    """The :class:`Mark` of a consumer record (``offset``, ``timestamp``, ``key``, ``value``)."""
    key = record.key or b""
    digest = zlib.crc32(record.value or b"", zlib.crc32(len(key).to_bytes(4, "big") + key))
    return Mark(int(record.offset), int(record.timestamp), digest)


@dataclass(frozen=True)
class Lost:
    """A partition whose data the broker lost: where its data ends now, and how it was found.

    Its data is read again from its start: from offset 0, never from the start a ListOffsets
    answer names (``seek_to_start`` in ``streams/kafka/connect.py``)."""

    end: int
    #: The offset of the last record consumed, when the record there now is another one (the
    #: position is within the data); None when the position is beyond the data.
    replaced: int | None = None


def describe_lost(topic: str, partition: int, position: int, found: Lost) -> str:
    """The ERROR line for a partition whose data the broker lost, read to ``position``."""
    if found.replaced is not None:
        return (
            f"input {topic}[{partition}]: read to offset {position}, but the record at offset "
            f"{found.replaced} is not the one consumed there: the topic was recreated or the "
            "broker lost its data. Resuming from the start of the new data (README.md: Bad "
            "input, event time and broker data loss)"
        )
    return (
        f"input {topic}[{partition}]: read to offset {position}, but the broker's data ends at "
        f"offset {found.end}: the topic was recreated or the broker lost its data. Resuming "
        "from the start of the new data (README.md: Bad input, event time and broker data "
        "loss)"
    )


def describe_rewound(topic: str, partition: int, position: int, offset: int) -> str:
    """The ERROR line for a partition whose records came back from ``offset``, below the
    ``position`` read to: the consumer found its position out of range and started again."""
    return (
        f"input {topic}[{partition}]: read to offset {position}, but the next records start at "
        f"offset {offset}: the topic was recreated or the broker lost its data. Resuming from "
        f"offset {offset}, the start of the new data (README.md: Bad input, event time and "
        "broker data loss)"
    )


async def _fetch_all(
    consumer: Any, offsets: Mapping[Any, int]
) -> dict[Any, tuple[Any | None, int]]:
    """Per partition of ``offsets`` (assigned to ``consumer``): the first record at or after its
    offset (None if there is none) and the partition's high watermark, from the broker's fetch
    answers. One fetch asks for all of them (one per partition made a round trip each: an idle
    join process checks up to 12 every :data:`CHECK_INTERVAL` seconds); a partition stops being
    fetched (paused) once it is settled.

    An empty poll is not an answer: the broker may be slow. Only a fetch answer (which sets the
    high watermark, records or not) or a record settles a partition; ``TimeoutError`` after
    :data:`ANSWER_TIMEOUT` seconds without one.
    """
    for tp, offset in offsets.items():
        consumer.seek(tp, offset)
    consumer.resume(*offsets)
    found: dict[Any, tuple[Any | None, int]] = {}
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while len(found) < len(offsets):
        waiting = [tp for tp in offsets if tp not in found]
        batch = await consumer.getmany(*waiting, timeout_ms=_POLL_MS)
        for tp in waiting:
            offset = offsets[tp]
            records = batch.get(tp, [])
            highwater = consumer.highwater(tp)
            if records:
                found[tp] = records[0], max(highwater or 0, records[0].offset + 1)
            elif highwater is not None and highwater <= offset:
                found[tp] = None, highwater
            else:
                continue
            consumer.pause(tp)
        if len(found) < len(offsets) and time.monotonic() > deadline:
            tp = next(tp for tp in offsets if tp not in found)
            raise TimeoutError(
                f"no answer from the broker for {tp.topic}[{tp.partition}] at offset "
                f"{offsets[tp]} in {ANSWER_TIMEOUT:.0f} s"
            )
    return found


async def find_lost(
    settings: KafkaSettings,
    positions: Mapping[Any, int],
    marks: Mapping[Any, Mark] | None = None,
) -> dict[Any, Lost]:
    """Partitions whose data the broker lost, with the range it holds now: the position is
    beyond the data, or the record ``marks`` names (the last one consumed) is not there any
    more. Reads with a consumer of its own."""
    if not positions:
        return {}
    marks = {tp: m for tp, m in (marks or {}).items() if tp in positions}
    # Small fetches: only the first record at each offset is compared. A mark's offset that
    # retention deleted is out of range: the fetch starts again at the broker's first offset
    # (``earliest``), whose record is not at the mark's offset, so it is not taken for a
    # recreation (``latest`` would wait at the end for an answer that never comes).
    async with kafka.consuming(
        settings,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=64 * 1024,
    ) as consumer:
        tps = list(positions)
        ends: Mapping[Any, int] = await consumer.end_offsets(tps)
        beyond = [tp for tp in tps if positions[tp] > ends[tp]]
        suspect = sorted({*beyond, *marks}, key=lambda tp: (tp.topic, tp.partition))
        if not suspect:
            return {}
        consumer.assign(suspect)
        consumer.pause(*suspect)
        lost: dict[Any, Lost] = {}
        at_ends = await _fetch_all(consumer, {tp: ends[tp] for tp in beyond})
        for tp in beyond:
            _, end = at_ends[tp]
            if positions[tp] > end:
                lost[tp] = Lost(end)
        at_marks = await _fetch_all(
            consumer, {tp: mark.offset for tp, mark in marks.items() if tp not in lost}
        )
        for tp, mark in marks.items():
            if tp in lost:
                continue
            found, _ = at_marks[tp]
            if found is None or found.offset != mark.offset:
                # Nothing to compare with: beyond the data is handled above; a record compacted
                # away or deleted by retention up to the position skipped nothing.
                continue
            if mark_of(found) == mark:
                continue
            end = max(ends[tp], positions[tp])
            lost[tp] = Lost(end, replaced=mark.offset)
        return lost


#: What :class:`LossCheck` runs: ``find_lost`` with its Kafka settings bound.
Finder = Callable[[Mapping[Any, int], Mapping[Any, Mark]], Awaitable[dict[Any, Lost]]]


@dataclass(frozen=True)
class Checked:
    """A finished check: the positions it checked (those at its start), the partitions it found
    lost, and, when it failed (a broker hiccup), why (``lost`` is empty then)."""

    positions: dict[Any, int]
    lost: dict[Any, Lost]
    error: str | None = None


class LossCheck:
    """One process's data-loss check, run in the background: one check at a time.

    - :meth:`start` begins a check of ``positions`` (and ``marks``) as a task; one still running
      is cancelled, superseded by the new one (its positions may be out of date: a newer
      assignment).
    - :meth:`poll` gives the finished check once (None while it runs, or when none was
      started); :meth:`wait` waits for it. A check that raised is logged as a warning and
      given back with ``error`` set and nothing lost: the caller goes on as if nothing were
      lost, and a later idle check looks again.
    - :meth:`due`: no check is running or waiting to be polled, and none started in the last
      :data:`CHECK_INTERVAL` seconds (the idle checks' pace).
    - :meth:`cancel` drops the check (its partitions were revoked, or the process stops).

    ``find`` is :func:`find_lost` with the Kafka settings bound (``LossCheck.of(settings)``);
    ``clock`` gives monotonic seconds. ``who`` starts the warning line.
    """

    def __init__(
        self,
        find: Finder,
        who: str = "",
        *,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._find = find
        self._who = f"{who}: " if who else ""
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Future[dict[Any, Lost]] | None = None
        self._positions: dict[Any, int] = {}
        self._started: float | None = None
        #: Cancelled checks still closing their consumer (kept referenced until they end).
        self._closing: set[asyncio.Future[dict[Any, Lost]]] = set()

    @classmethod
    def of(cls, settings: KafkaSettings, who: str = "") -> LossCheck:
        """A scheduler running :func:`find_lost` against ``settings``' brokers."""

        async def find(positions: Mapping[Any, int], marks: Mapping[Any, Mark]) -> dict[Any, Lost]:
            return await find_lost(settings, positions, marks)

        return cls(find, who)

    @property
    def pending(self) -> bool:
        """Whether a check was started and has not been polled yet (running or finished)."""
        return self._task is not None

    def due(self) -> bool:
        """Whether an idle check may start now (see the class doc)."""
        if self._task is not None:
            return False
        return self._started is None or self._clock() - self._started >= self._interval

    def start(self, positions: Mapping[Any, int], marks: Mapping[Any, Mark]) -> None:
        """Check ``positions`` (and the ``marks`` of the last records read there) in the
        background, superseding a check still running."""
        self.cancel()
        self._positions = dict(positions)
        self._started = self._clock()
        self._task = asyncio.ensure_future(self._find(self._positions, dict(marks)))

    def poll(self) -> Checked | None:
        """The finished check (once), or None while it runs or when none is pending."""
        task = self._task
        if task is None or not task.done():
            return None
        self._task = None
        try:
            lost = task.result()
        except asyncio.CancelledError:  # cancelled from outside: as a failed check
            return self._failed("cancelled")
        except Exception as exc:  # a broker hiccup: a later check looks again
            return self._failed(str(exc) or type(exc).__name__)
        return Checked(self._positions, lost)

    async def wait(self) -> Checked | None:
        """Wait for the pending check to finish and give it (None when none is pending)."""
        task = self._task
        if task is None:
            return None
        await asyncio.wait({task})
        return self.poll()

    def cancel(self) -> None:
        """Drop the pending check, running or finished (its result is never applied)."""
        task, self._task = self._task, None
        if task is None:
            return
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved: asyncio does not log it as never retrieved
            return
        task.cancel()
        self._closing.add(task)
        task.add_done_callback(self._closed)

    async def close(self) -> None:
        """Cancel the pending check and wait until every cancelled one has closed its consumer."""
        self.cancel()
        if self._closing:
            await asyncio.wait(set(self._closing))

    def _closed(self, task: asyncio.Future[dict[Any, Lost]]) -> None:
        self._closing.discard(task)
        if not task.cancelled():
            task.exception()

    def _failed(self, why: str) -> Checked:
        log.warning("%schecking the input for lost data failed: %s", self._who, why)
        return Checked(self._positions, {}, error=why)
