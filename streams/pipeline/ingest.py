"""The edge of the live pipeline: decode input records once, dead-letter the bad ones.

Every record read from the predictions or outcomes topic is decoded exactly once, with
validation, by the one decoder of :mod:`driftswitch.streams.contract.events`
(``decode_value``: msgspec's fast path, the pydantic model deciding every record it
refuses; the topic decides the kind, so records need no ``kind`` field). A record that cannot
be used is never dropped silently and never stops the worker: it goes to the dead-letter topic
(``driftswitch.deadletter.v1``) with its ORIGINAL bytes as the value and key, counted by reason,
and logged with its topic/partition/offset.

Reasons: ``malformed_json``, ``schema`` and ``oversize`` (from decoding), ``unknown_flag``,
``unknown_variant`` and ``duplicate`` (from the engine, which knows the configuration and the
request ids it has seen), ``wrong_topic`` (a valid
event of the other kind, e.g. an outcome on the predictions topic) and ``null_value`` (a record
without a value, e.g. a tombstone).

Dead-letter record headers (all values UTF-8):

=============================  ==================================================
``driftswitch.reason``         machine-readable reason (above)
``driftswitch.detail``         human-readable detail, at most 1,000 characters
``driftswitch.source.topic``   topic the record was read from
``driftswitch.source.partition``  its partition (decimal)
``driftswitch.source.offset``  its offset (decimal)
=============================  ==================================================

Delivery to the dead-letter topic is at-least-once: input replayed after a crash (the last
snapshot's offsets onwards) is dead-lettered again; deduplicate on the source headers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter
from typing import NamedTuple, Protocol

from driftswitch.streams.contract.errors import EventError
from driftswitch.streams.contract.events import (
    InputEvent,
    decode_outcome,
    decode_prediction,
    decode_value,
    decode_values,
)

__all__ = [
    "HEADER_DETAIL",
    "HEADER_OFFSET",
    "HEADER_PARTITION",
    "HEADER_REASON",
    "HEADER_TOPIC",
    "Decoded",
    "Ingest",
    "InputRecord",
    "RecordLike",
    "Rejected",
    "Source",
    "deadletter_headers",
]

log = logging.getLogger(__name__)

_TOPIC = attrgetter("topic")
_VALUE = attrgetter("value")

HEADER_REASON = "driftswitch.reason"
HEADER_DETAIL = "driftswitch.detail"
HEADER_TOPIC = "driftswitch.source.topic"
HEADER_PARTITION = "driftswitch.source.partition"
HEADER_OFFSET = "driftswitch.source.offset"
#: Longest detail kept in a header (pydantic messages can list many fields).
MAX_DETAIL_CHARS = 1000

Event = InputEvent


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from: enough to find it again on the broker."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """One rejected record: its original bytes, where it came from, and why."""

    source: Source
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str


def deadletter_headers(rejected: Rejected) -> list[tuple[str, bytes]]:
    """The Kafka headers that carry the reason and source of a dead-lettered record."""
    return [
        (HEADER_REASON, rejected.reason.encode()),
        (HEADER_DETAIL, rejected.detail[:MAX_DETAIL_CHARS].encode()),
        (HEADER_TOPIC, rejected.source.topic.encode()),
        (HEADER_PARTITION, str(rejected.source.partition).encode()),
        (HEADER_OFFSET, str(rejected.source.offset).encode()),
    ]


class InputRecord(NamedTuple):
    """A record as read from Kafka (aiokafka's ``ConsumerRecord`` has the same attributes)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class RecordLike(Protocol):
    """What :meth:`Ingest.decode` reads of a record."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(slots=True)
class Decoded:
    """One batch after decoding: the events in read order and what was rejected.

    ``events[i]`` came from ``records[index[i]]``, kept so that a later rejection by the engine
    (unknown flag or variant) can still dead-letter the original bytes.
    """

    events: list[Event]
    index: list[int]
    records: Sequence[RecordLike]
    rejected: list[Rejected]

    def source(self, i: int) -> Source:
        """Where ``events[i]`` was read."""
        rec = self.records[self.index[i]]
        return Source(rec.topic, rec.partition, rec.offset)


class Ingest:
    """Decodes batches from the two input topics and counts rejections by reason.

    Parameters
    ----------
    predictions_topic, outcomes_topic
        The input topic names; the topic decides which event kind a record must be.
    """

    def __init__(self, predictions_topic: str, outcomes_topic: str) -> None:
        self.predictions_topic = predictions_topic
        self.outcomes_topic = outcomes_topic
        #: Rejected records by reason since start.
        self.rejected: Counter[str] = Counter()
        #: Records decoded into events since start.
        self.accepted = 0

    def decode(self, records: Sequence[RecordLike]) -> Decoded:
        """Decode records (``topic``, ``partition``, ``offset``, ``key``, ``value``) in order."""
        events: list[Event] = []
        index: list[int] = []
        rejected: list[Rejected] = []
        append, mark = events.append, index.append
        predictions = self.predictions_topic
        end = 0
        # Runs of records of one topic (found without a Python step per record): each decoded
        # in one call when every one of them is a valid event msgspec reads (the usual case),
        # else one by one.
        for topic, group in groupby(records, _TOPIC):
            run = list(group)
            start, end = end, end + len(run)
            on_predictions = topic == predictions
            values = list(map(_VALUE, run))
            got = None if None in values else decode_values(values, on_predictions)
            if got is not None:
                events += got
                index += range(start, end)
                continue
            for i, rec, value in zip(range(start, end), run, values, strict=True):
                if value is None:  # a tombstone: nothing to decode
                    null = EventError("null_value", "")
                    rejected.append(self._rejected(rec, null, on_predictions))
                    continue
                try:
                    append(decode_value(value, on_predictions))
                except EventError as err:
                    rejected.append(self._rejected(rec, err, on_predictions))
                else:
                    mark(i)
        self.accepted += len(events)
        return Decoded(events, index, records, rejected)

    def _rejected(self, rec: RecordLike, err: EventError, on_predictions: bool) -> Rejected:
        """One bad record, with the reason and detail the decoder gave."""
        source = Source(rec.topic, rec.partition, rec.offset)
        reason = err.reason
        if reason == "schema" and _is_other_kind(rec.value or b"", on_predictions):
            reason = "wrong_topic"
        return self.reject(source, rec.key, rec.value, reason, err.detail)

    def reject(
        self, source: Source, key: bytes | None, value: bytes | None, reason: str, detail: str
    ) -> Rejected:
        """Count and log one rejection; return it for the dead-letter topic."""
        self.rejected[reason] += 1
        log.warning(
            "rejected record %s[%d]@%d: %s: %s",
            source.topic,
            source.partition,
            source.offset,
            reason,
            detail[:200],
        )
        return Rejected(source, key, value, reason, detail)

    def reject_events(self, decoded: Decoded, rejections: Sequence[tuple[int, str, str]]) -> None:
        """Turn the engine's ``(index, reason, detail)`` rejections into dead-letter records."""
        for i, reason, detail in rejections:
            rec = decoded.records[decoded.index[i]]
            self.accepted -= 1
            decoded.rejected.append(
                self.reject(decoded.source(i), rec.key, rec.value, reason, detail)
            )


def _is_other_kind(value: bytes, on_predictions: bool) -> bool:
    """Whether a record rejected on one input topic is a valid event of the other kind."""
    try:
        if on_predictions:
            decode_outcome(value)
        else:
            decode_prediction(value)
    except EventError:
        return False
    return True
