"""The worker's recovery from an engine failure: restore the last snapshot, replay with care.

When processing a batch or serialising the state for a snapshot raises (an input the engine
cannot handle got through validation), the engine's state is no longer trusted. The worker then
does in-process what a restart would do: it restores the last good snapshot (kept in memory),
seeks its inputs back to that snapshot's offsets and replays. The input between those offsets and
where it had read to is *suspect*: batches that contain suspect records go through
:func:`~driftswitch.streams.pipeline.contain.process_isolating`, which finds the failing events,
leaves them out and has them dead-lettered as ``internal_error``. Everything else is applied
exactly once, as after a restart; flag changes already published are not published again (their
versions are on the flags topic), and dead-letter delivery stays at-least-once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from driftswitch.streams.contract.errors import DriftswitchError

__all__ = ["EngineFailedError", "Suspects"]


class EngineFailedError(DriftswitchError):
    """The engine failed on input (processing it, or snapshotting the state it left)."""


class Suspects:
    """Input ranges ``[start, end)`` per ``(topic, partition)`` to replay with containment."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, int], tuple[int, int]] = {}

    def add(
        self, start: Mapping[str, Mapping[int, int]], end: Mapping[str, Mapping[int, int]]
    ) -> None:
        """Suspect everything read between the offsets ``start`` and ``end``."""
        for topic, parts in end.items():
            for partition, stop in parts.items():
                begin = start.get(topic, {}).get(partition, 0)
                if stop > begin:
                    have = self.ranges.get((topic, partition))
                    if have is not None:
                        begin, stop = min(begin, have[0]), max(stop, have[1])
                    self.ranges[(topic, partition)] = (begin, stop)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def covers(self, records: Iterable[Any]) -> bool:
        """Whether any of ``records`` (with topic, partition, offset) is suspect."""
        ranges = self.ranges
        for rec in records:
            span = ranges.get((rec.topic, rec.partition))
            if span is not None and span[0] <= rec.offset < span[1]:
                return True
        return False

    def passed(self, records: Iterable[Any]) -> None:
        """Records were processed: suspicion ends where the replay has gone past a range."""
        for rec in records:
            key = (rec.topic, rec.partition)
            span = self.ranges.get(key)
            if span is not None and rec.offset + 1 >= span[1]:
                del self.ranges[key]
