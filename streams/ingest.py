"""The edge of the live pipeline: decode input records once, dead-letter the bad ones.

Every record read from the predictions or outcomes topic is decoded exactly once, with
validation: :func:`driftswitch.streams.events.decode_prediction` / ``decode_outcome`` (pydantic
parses the JSON in one pass; measured here as fast as the orjson fast path of
:mod:`driftswitch.streams.decoding`, which needs the ``kind`` field topics do not require).
A record that cannot be used is never dropped silently and never stops the worker: it goes to the
dead-letter topic (``driftswitch.deadletter.v1``) with its ORIGINAL bytes as the value and key,
counted by reason, and logged with its topic/partition/offset.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from driftswitch.streams.errors import EventError
from driftswitch.streams.events import (
    OutcomeEvent,
    PredictionEvent,
    decode_outcome,
    decode_prediction,
)

__all__ = [
    "HEADER_DETAIL",
    "HEADER_OFFSET",
    "HEADER_PARTITION",
    "HEADER_REASON",
    "HEADER_TOPIC",
    "Decoded",
    "Ingest",
    "Rejected",
    "Source",
    "deadletter_headers",
]

log = logging.getLogger(__name__)

HEADER_REASON = "driftswitch.reason"
HEADER_DETAIL = "driftswitch.detail"
HEADER_TOPIC = "driftswitch.source.topic"
HEADER_PARTITION = "driftswitch.source.partition"
HEADER_OFFSET = "driftswitch.source.offset"
#: Longest detail kept in a header (pydantic messages can list many fields).
MAX_DETAIL_CHARS = 1000

Event = PredictionEvent | OutcomeEvent


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


@dataclass(slots=True)
class Decoded:
    """One batch after decoding: the events in read order and what was rejected.

    ``events[i]`` came from ``sources[i]``; ``raw[i]`` is its ``(key, value)``, kept so that a
    later rejection by the engine (unknown flag or variant) can still dead-letter the bytes.
    """

    events: list[Event]
    sources: list[Source]
    raw: list[tuple[bytes | None, bytes]]
    rejected: list[Rejected]


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

    def decode(
        self, records: Iterable[tuple[str, int, int, bytes | None, bytes | None]]
    ) -> Decoded:
        """Decode ``(topic, partition, offset, key, value)`` records, in the order given."""
        events: list[Event] = []
        sources: list[Source] = []
        raw: list[tuple[bytes | None, bytes]] = []
        rejected: list[Rejected] = []
        predictions = self.predictions_topic
        for topic, partition, offset, key, value in records:
            if value is None:
                rejected.append(
                    self.reject(Source(topic, partition, offset), key, None, "null_value", "")
                )
                continue
            try:
                event: Event = (
                    decode_prediction(value) if topic == predictions else decode_outcome(value)
                )
            except EventError as err:
                reason, detail = err.reason, err.detail
                if reason == "schema" and _is_other_kind(value, topic == predictions):
                    reason = "wrong_topic"
                rejected.append(
                    self.reject(Source(topic, partition, offset), key, value, reason, detail)
                )
                continue
            events.append(event)
            sources.append(Source(topic, partition, offset))
            raw.append((key, value))
        self.accepted += len(events)
        return Decoded(events, sources, raw, rejected)

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
        for index, reason, detail in rejections:
            key, value = decoded.raw[index]
            self.accepted -= 1
            decoded.rejected.append(self.reject(decoded.sources[index], key, value, reason, detail))


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
