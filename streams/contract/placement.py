"""Where the join stage expects a record, and where its observations go.

The join of a prediction with its outcome happens in one *join partition*: the partition index
``join_partition(request_id, N)`` of the input topics (N partitions each). That is CRC-32 of the
request id modulo N, the placement of librdkafka's default partitioner (``consistent_random``:
confluent-kafka, kcat, Go and .NET clients) for a record keyed by its request id, and the one
driftswitch's own producers use. A record found anywhere else (a producer keyed by something else,
or using Kafka's Java/aiokafka default, murmur2) is re-routed by the join stage through the
repartition topic, so the join is exact whatever the producers did; the re-routing costs one
extra write and read per misplaced record and is counted.

CRC-32 rather than murmur2 because the join stage checks every record's placement: ``zlib.crc32``
runs in C (about 0.1 µs), a pure-Python murmur2 takes about 4.5 µs, a fifth of the worker's whole
budget per record.

Observations of a flag go to partition ``observations_partition(flag, M)`` of the observations
topic, so one decide-stage owner sees all of a flag's observations.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

__all__ = ["join_partition", "join_partitions", "key_partitioner", "observations_partition"]


def join_partition(request_id: str, partitions: int) -> int:
    """The join partition of ``request_id`` among ``partitions`` (see the module doc).

    >>> join_partition("req-1", 4), join_partition("req-1", 1)
    (1, 0)
    """
    return zlib.crc32(request_id.encode(errors="surrogatepass")) % partitions


def join_partitions(request_ids: Iterable[str], partitions: int) -> list[int]:
    """:func:`join_partition` of each request id, in one call (a batch's worth).

    >>> join_partitions(["req-1", "req-2"], 4) == [join_partition(r, 4) for r in ["req-1", "req-2"]]
    True
    """
    crc = zlib.crc32
    return [crc(r.encode(errors="surrogatepass")) % partitions for r in request_ids]


def observations_partition(flag: str, partitions: int) -> int:
    """The observations-topic partition of ``flag``'s observations."""
    return zlib.crc32(flag.encode(errors="surrogatepass")) % partitions


def key_partitioner(key: bytes, all_partitions: list[int], available: list[int]) -> int:
    """An aiokafka ``partitioner`` placing a record keyed by its request id in its join
    partition (what driftswitch's own producers use; ``available`` is ignored so that a
    partition without a leader for a moment does not move a key)."""
    return all_partitions[zlib.crc32(key) % len(all_partitions)]
