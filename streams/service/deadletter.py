"""Dead-letter records that always fit on the broker: the size policy.

A rejected record is dead-lettered with its original bytes
(:mod:`driftswitch.streams.pipeline.ingest` lists the reason and source headers). A record can be
far larger than what the dead-letter topic accepts (Kafka's default ``max.message.bytes`` is 1 MiB,
and an ``oversize`` record is rejected precisely for its size), and a send that fails would stop
the worker on every restart. So:

- a value longer than :data:`MAX_VALUE_BYTES` keeps only its first :data:`MAX_VALUE_BYTES` bytes,
  and the header ``driftswitch.truncated.value`` gives the original length;
- a key longer than :data:`MAX_KEY_BYTES` likewise, with ``driftswitch.truncated.key``.

The source headers (topic, partition, offset) always point at the whole original record, which
stays on its input topic for the topic's retention.
"""

from __future__ import annotations

from driftswitch.streams.pipeline.ingest import Rejected, deadletter_headers

__all__ = [
    "HEADER_TRUNCATED_KEY",
    "HEADER_TRUNCATED_VALUE",
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "deadletter_record",
]

#: Longest dead-letter value kept whole (well under Kafka's default 1 MiB message limit).
MAX_VALUE_BYTES = 256 * 1024
#: Longest dead-letter key kept whole.
MAX_KEY_BYTES = 4 * 1024
HEADER_TRUNCATED_VALUE = "driftswitch.truncated.value"
HEADER_TRUNCATED_KEY = "driftswitch.truncated.key"


def deadletter_record(
    rejected: Rejected,
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """``(value, key, headers)`` to send for ``rejected``, truncated to fit (see module doc)."""
    headers = deadletter_headers(rejected)
    value, key = rejected.value, rejected.key
    if value is not None and len(value) > MAX_VALUE_BYTES:
        headers.append((HEADER_TRUNCATED_VALUE, str(len(value)).encode()))
        value = value[:MAX_VALUE_BYTES]
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers.append((HEADER_TRUNCATED_KEY, str(len(key)).encode()))
        key = key[:MAX_KEY_BYTES]
    return value, key, headers
