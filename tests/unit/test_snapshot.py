"""Snapshots: chunked round trip, and the loader keeps only the last complete one per key."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import orjson
import pytest

from driftswitch.streams.service.dataloss import Mark, mark_of
from driftswitch.streams.service.snapshot import (
    CHUNK_BYTES,
    ZSTD_MAGIC,
    Snapshot,
    decompress,
    encode_chunks,
    latest_snapshot,
)


@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def _records(key: bytes, snap: Snapshot) -> list[Rec]:
    return [Rec(key, value, headers) for value, headers in encode_chunks(snap)]


def _big_state(seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    # Random hex does not compress much: forces several chunks.
    return {"pending": [rng.getrandbits(64).to_bytes(8, "big").hex() for _ in range(120_000)]}


def test_round_trip_across_chunks() -> None:
    snap = Snapshot(7, _big_state(1), {"p": {0: 10, 3: 99}, "o": {0: 4}}, {"records": 5})
    records = _records(b"g", snap)
    assert len(records) > 1
    assert all(len(r.value or b"") <= CHUNK_BYTES for r in records)
    assert latest_snapshot(records, b"g") == snap


def test_latest_complete_snapshot_of_the_key_wins() -> None:
    first = Snapshot(1, {"n": 1}, {"p": {0: 1}})
    second = Snapshot(2, _big_state(2), {"p": {0: 2}})
    other = Snapshot(9, {"n": 9}, {"p": {0: 9}})
    partial = _records(b"g", Snapshot(3, _big_state(3), {"p": {0: 3}}))[:-1]
    records = [*_records(b"g", first), *_records(b"g", second), *_records(b"h", other), *partial]
    assert latest_snapshot(records, b"g") == second
    assert latest_snapshot(records, b"h") == other
    assert latest_snapshot(records, b"nobody") is None


def test_interleaved_partial_snapshot_is_dropped() -> None:
    good = Snapshot(1, {"n": 1}, {"p": {0: 1}})
    torn = _records(b"g", Snapshot(2, _big_state(4), {"p": {0: 2}}))
    # A writer killed after its first chunk, then a new writer's complete snapshot.
    records = [torn[0], *_records(b"g", good)]
    assert latest_snapshot(records, b"g") == good


def test_marks_round_trip_and_older_snapshots_load_without_them() -> None:
    snap = Snapshot(3, {}, {"p": {0: 10}}, {}, {"p": {0: [9, 1_700_000_000_000, 4_000_000_000]}})
    assert latest_snapshot(_records(b"g", snap), b"g") == snap
    doc = orjson.loads(decompress(encode_chunks(snap)[0][0]))
    del doc["marks"]
    old = [Rec(b"g", zlib.compress(orjson.dumps(doc)), encode_chunks(snap)[0][1])]
    assert latest_snapshot(old, b"g") == Snapshot(3, {}, {"p": {0: 10}}, {})


def test_snapshots_are_zstandard_and_earlier_zlib_ones_still_load() -> None:
    snap = Snapshot(4, _big_state(2), {"p": {0: 7}}, {"records": 7})
    records = _records(b"g", snap)
    assert records[0].value is not None
    assert records[0].value.startswith(ZSTD_MAGIC)
    assert latest_snapshot(records, b"g") == snap
    # The same document as an earlier version wrote it: zlib, level 1.
    doc = decompress(b"".join(r.value or b"" for r in records))
    old = [
        Rec(
            b"g",
            zlib.compress(doc, 1),
            [("driftswitch.snapshot.id", b"4"), ("driftswitch.snapshot.chunk", b"0/1")],
        )
    ]
    assert latest_snapshot(old, b"g") == snap


def test_an_undecompressible_snapshot_is_skipped_for_the_one_before() -> None:
    good = _records(b"g", Snapshot(1, {"n": 1}, {"p": {0: 1}}))
    broken = [
        Rec(
            b"g",
            ZSTD_MAGIC + b"not a frame",
            [("driftswitch.snapshot.id", b"2"), ("driftswitch.snapshot.chunk", b"0/1")],
        )
    ]
    assert latest_snapshot([*good, *broken], b"g") == Snapshot(1, {"n": 1}, {"p": {0: 1}})
    with pytest.raises(ValueError, match="not decompressible"):
        decompress(b"neither zlib nor zstandard")


def test_a_mark_tells_records_apart_by_key_value_and_timestamp() -> None:
    @dataclass
    class Consumed:
        offset: int
        timestamp: int
        key: bytes | None
        value: bytes | None

    base = mark_of(Consumed(5, 1000, b"k", b"v"))
    assert Mark.from_state(base.to_state()) == base
    assert mark_of(Consumed(5, 1000, b"k", b"v")) == base
    assert mark_of(Consumed(5, 1001, b"k", b"v")) != base
    assert mark_of(Consumed(5, 1000, b"k2", b"v")) != base
    assert mark_of(Consumed(5, 1000, b"k", b"v2")) != base
    # The key's length is part of the digest: moving bytes between key and value changes it.
    assert mark_of(Consumed(5, 1000, b"kv", b"")) != mark_of(Consumed(5, 1000, b"k", b"v"))
    assert mark_of(Consumed(5, 1000, None, None)) == mark_of(Consumed(5, 1000, b"", b""))
