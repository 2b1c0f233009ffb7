"""The join's pending entries in RocksDB on local disk (through ``rocksdict``).

:class:`RocksJoinStore` is the :class:`~driftswitch.streams.pipeline.join.JoinStore` of a
worker: one entry per request id, plus an index by event time for expiry. Every change goes to
an in-memory *overlay* first; :meth:`RocksJoinStore.commit` writes the overlay and a checkpoint
document in one atomic RocksDB write batch, so the database always holds the entries of exactly
one checkpoint. A checkpoint therefore costs the changes since the last one (the input rate
times the interval), never the state's size, and :meth:`RocksJoinStore.rollback` returns to
the last checkpoint by dropping the overlay (the worker's in-process recovery). A process
killed between checkpoints loses only the overlay: RocksDB's write-ahead log makes every
committed batch durable against a killed process (against a lost machine only after the OS
has written it out, which RocksDB does not force here).

A copy (:func:`copy.deepcopy`, as containment does to an engine) shares the database and copies
the overlay: the database changes only on commit, so a copy is an independent view.

Keys: ``e<request id>`` → the entry as JSON; ``t<8-byte ordered ts><request id>`` → ``b""``
(the event-time index); ``m`` → the checkpoint document the worker stored with the entries.
"""

from __future__ import annotations

import copy
import shutil
import struct
from pathlib import Path
from typing import Any

import orjson
from rocksdict import BlockBasedOptions, DBCompressionType, Options, Rdict, WriteBatch

from driftswitch.streams.pipeline.join import PREDICTION, Entry

__all__ = ["RocksJoinStore"]

_ENTRY = b"e"
_INDEX = b"t"
_META = b"m"
_SIGN = 1 << 63
_MASK = (1 << 64) - 1


def _ordered(ts: float) -> bytes:
    """8 bytes that sort as the floats do (sign bit flipped; negatives inverted)."""
    (bits,) = struct.unpack(">Q", struct.pack(">d", ts))
    return struct.pack(">Q", bits ^ _SIGN if not bits & _SIGN else ~bits & _MASK)


def _index_key(ts: float, request_id: str) -> bytes:
    return _INDEX + _ordered(ts) + request_id.encode()


def _decode(raw: bytes) -> Entry:
    entry = orjson.loads(raw)
    if entry[0] == PREDICTION and type(entry[3]) is list:
        entry[3] = tuple(entry[3])
    return tuple(entry)


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)  # a lookup of an absent request id reads no block
    opts.set_block_based_table_factory(table)
    opts.set_compression_type(DBCompressionType.lz4())
    # Small memtables (RocksDB's default is 64 MiB, two of them): a store reopened after a
    # SIGKILL replays its unflushed write-ahead log, at most about two memtables, so this bounds
    # the recovery time (300k entries: 3.5 s with the default, 0.6 s with 8 MiB), and a process
    # owning several partitions holds less memory.
    opts.set_write_buffer_size(8 << 20)
    return opts


class RocksJoinStore:
    """Pending join entries in a RocksDB database at ``path`` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._db: Any = Rdict(str(self.path), _options())
        self._reset()

    def _reset(self) -> None:
        #: request id → entry (``None``: deleted) since the last commit.
        self._overlay: dict[str, Entry | None] = {}
        #: index key → added (``True``) or deleted (``False``) since the last commit.
        self._index: dict[bytes, bool] = {}
        #: Lowest ts among index keys added since the last commit.
        self._overlay_min = float("inf")
        #: Index keys below this are all deleted (expiry walked them): where a sweep starts.
        self._scan_from = _INDEX

    def __deepcopy__(self, memo: dict[int, Any]) -> RocksJoinStore:
        other = RocksJoinStore.__new__(RocksJoinStore)
        other.path = self.path
        other._db = self._db
        other._overlay = copy.deepcopy(self._overlay, memo)
        other._index = dict(self._index)
        other._overlay_min = self._overlay_min
        other._scan_from = self._scan_from
        return other

    # -- the JoinStore protocol ------------------------------------------------------------

    def get(self, request_id: str) -> Entry | None:
        overlay = self._overlay
        if request_id in overlay:
            return overlay[request_id]
        raw = self._db.get(_ENTRY + request_id.encode())
        return None if raw is None else _decode(raw)

    def put(self, request_id: str, entry: Entry, previous: Entry | None) -> None:
        self._overlay[request_id] = entry
        ts = entry[1]
        if previous is not None:
            if previous[1] == ts:
                return
            self._index[_index_key(previous[1], request_id)] = False
        self._index[_index_key(ts, request_id)] = True
        if ts < self._overlay_min:
            self._overlay_min = ts

    def delete(self, request_id: str, previous: Entry) -> None:
        self._overlay[request_id] = None
        self._index[_index_key(previous[1], request_id)] = False

    def oldest(self, cutoff: float, limit: int) -> list[tuple[str, Entry]]:
        high = _INDEX + _ordered(cutoff)
        index = self._index
        keys: set[bytes] = set()
        it = self._db.iter()
        it.seek(self._scan_from)
        while it.valid() and len(keys) < limit:
            key = it.key()
            if key >= high:
                break
            if index.get(key) is not False:
                keys.add(key)
            it.next()
        del it
        if cutoff > self._overlay_min:
            keys.update(k for k, added in index.items() if added and k < high)
        found: list[tuple[str, Entry]] = []
        for key in sorted(keys)[:limit]:
            rid = key[9:].decode()
            entry = self.get(rid)
            if entry is None or _ordered(entry[1]) != key[1:9]:
                index[key] = False  # a stale index key (cannot happen in normal use): drop it
                continue
            found.append((rid, entry))
        if found and cutoff != float("inf"):
            # The caller deletes what it gets; every key before the last one is then deleted,
            # and entries put later have ts >= the cutoff (the watermark only rises).
            self._scan_from = _index_key(found[-1][1][1], found[-1][0])
        return found

    # -- checkpoints -----------------------------------------------------------------------

    def commit(self, checkpoint: bytes) -> None:
        """Write every change since the last commit, and ``checkpoint``, atomically."""
        batch = WriteBatch(raw_mode=True)
        for rid, entry in self._overlay.items():
            key = _ENTRY + rid.encode()
            if entry is None:
                batch.delete(key)
            else:
                batch.put(key, orjson.dumps(entry))
        for key, added in self._index.items():
            if added:
                batch.put(key, b"")
            else:
                batch.delete(key)
        batch.put(_META, checkpoint)
        self._db.write(batch)
        scan_from = self._scan_from
        self._reset()
        self._scan_from = scan_from

    def rollback(self) -> None:
        """Forget every change since the last commit."""
        self._reset()

    def checkpoint(self) -> bytes | None:
        """The document stored by the last :meth:`commit` (``None`` if never committed)."""
        raw = self._db.get(_META)
        return None if raw is None else bytes(raw)

    @property
    def changes(self) -> int:
        """Entries changed since the last commit (what the next commit writes)."""
        return len(self._overlay)

    def size_bytes(self) -> int:
        """The database's size: SST files plus memtables, as RocksDB estimates them."""
        db = self._db
        return int(db.property_int_value("rocksdb.total-sst-files-size") or 0) + int(
            db.property_int_value("rocksdb.size-all-mem-tables") or 0
        )

    def clear(self) -> None:
        """Delete every entry and the checkpoint (a fresh start)."""
        self._db.close()
        Rdict.destroy(str(self.path))
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(self.path), _options())
        self._reset()

    def close(self) -> None:
        """Close the database (uncommitted changes are dropped)."""
        self._db.close()
