"""Joining predictions with their outcomes by ``request_id``, in either arrival order.

Labels arrive late (delayed feedback) or, through races between topics, before their prediction.
:class:`JoinBuffer` keeps whichever side came first until the other arrives or it expires
(docs/architecture.md). Time is *event* time: the watermark is the second largest ``ts`` seen
(:data:`WATERMARK_RANK`), so one record from the far future cannot expire everything pending,
and an entry whose ``ts`` is older than ``watermark - ttl`` has expired. Expiry is checked when an
entry is looked up (so the result never depends on when a sweep ran) and
:meth:`JoinBuffer.expire` frees
the memory of expired entries in insertion order.

A second prediction or a second outcome for a ``request_id`` that is pending, or that was joined
within the TTL, is a duplicate: it is reported (``DUPLICATE``) and changes nothing, so an event
replayed after a crash is never counted twice. The buffer is bounded by ``max_pending``: beyond it
the oldest unjoined entry is evicted and counted.

Entries are plain tuples in insertion-ordered ``OrderedDict`` maps (the oldest leaves in O(1)), so
the hot path allocates one tuple per buffered record and the state is plain JSON.

:class:`StoredJoinBuffer` is the same join on a :class:`JoinStore` (one entry per request id,
ordered by event time), for state that does not fit in memory: the worker's store is RocksDB on
local disk (``driftswitch.streams.service.joinstore``), checkpointed with its input offsets.
It never evicts by count: entries leave when they join or expire, so labels that arrive within
the TTL always join. Backtests and the pure pipeline use :class:`JoinBuffer`.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Mapping
from enum import Enum
from typing import Any, Final, Protocol

from driftswitch.detectors.base import JSON

#: The watermark is the WATERMARK_RANK-th largest event time seen: with 2, a single outlier (a
#: clock set to the year 3000) never moves it; it moves once a second record confirms the time.
WATERMARK_RANK = 2

#: A class label or a numeric value, as in :data:`driftswitch.streams.contract.events.Label`.
Label = bool | int | float | str


class _Duplicate(Enum):
    DUPLICATE = "duplicate"


#: Returned by the ``add_*`` methods for a duplicate ``request_id``.
DUPLICATE: Final = _Duplicate.DUPLICATE

#: A buffered prediction: ``(ts, group, payload)``; ``group`` names the counter its expiry
#: goes to (the engine uses ``flag/variant``), ``payload`` is what the caller needs to score it.
PendingPrediction = tuple[float, str, Any]
#: A buffered outcome: ``(ts, label)``.
PendingOutcome = tuple[float, Label]


class JoinBuffer:
    """Matches predictions to outcomes by request id with an event-time TTL and a size bound.

    Parameters
    ----------
    ttl
        Seconds of event time an unjoined record waits for its counterpart.
    max_pending
        Bound on unjoined records (predictions and outcomes together); the oldest is evicted.

    Examples
    --------
    >>> buf = JoinBuffer(ttl=60.0, max_pending=100)
    >>> buf.add_outcome("r1", 10.0, "cat") is None  # the label came first
    True
    >>> buf.add_prediction("r1", 9.5, "ranker/candidate", ("cat",))
    (10.0, 'cat')
    >>> buf.add_outcome("r1", 11.0, "cat") is DUPLICATE
    True
    """

    __slots__ = (
        "_joined",
        "_latest",
        "_outcomes",
        "_predictions",
        "duplicate_outcomes",
        "duplicate_predictions",
        "evicted_outcomes",
        "evicted_predictions",
        "expired_outcomes",
        "expired_predictions",
        "joined",
        "max_pending",
        "ttl",
        "watermark",
    )

    def __init__(self, ttl: float, max_pending: int) -> None:
        if not ttl >= 0:
            raise ValueError(f"ttl must be >= 0 seconds, got {ttl!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        self.ttl = float(ttl)
        self.max_pending = int(max_pending)
        #: The WATERMARK_RANK-th largest event time seen (0 before that many events).
        self.watermark = 0.0
        #: The WATERMARK_RANK largest event times seen, ascending.
        self._latest: list[float] = []
        # OrderedDicts, not dicts: the oldest entry is removed with next(iter(...)), which on a
        # dict scans past every slot deleted before it (a removal then costs 60–130 µs at
        # 100k–1M entries once entries start leaving; benchmarks/join.py), on an OrderedDict
        # it is O(1).
        self._predictions: OrderedDict[str, PendingPrediction] = OrderedDict()
        self._outcomes: OrderedDict[str, PendingOutcome] = OrderedDict()
        # request_id → event time of the later side, for duplicate detection within the TTL.
        self._joined: OrderedDict[str, float] = OrderedDict()
        self.joined = 0
        #: Expired predictions per group (they were scored, but never got a label).
        self.expired_predictions: dict[str, int] = {}
        self.expired_outcomes = 0
        self.evicted_predictions = 0
        self.evicted_outcomes = 0
        self.duplicate_predictions = 0
        self.duplicate_outcomes = 0

    # -- feeding ---------------------------------------------------------------------------

    def add_prediction(
        self, request_id: str, ts: float, group: str, payload: Any
    ) -> PendingOutcome | _Duplicate | None:
        """Offer a prediction: its waiting outcome ``(ts, label)``, ``DUPLICATE`` or ``None``."""
        # The hot path: _advance and _remember inlined (per event, a call costs as much).
        watermark = self.watermark
        if ts > watermark:
            latest = self._latest
            if len(latest) == 2 == WATERMARK_RANK:
                top = latest[1]
                if ts > top:
                    latest[0] = watermark = top
                    latest[1] = ts
                else:
                    latest[0] = watermark = ts
                self.watermark = watermark
            else:
                self._advance(ts)
                watermark = self.watermark
        cutoff = watermark - self.ttl
        outcome = self._outcomes.pop(request_id, None)
        if outcome is not None:
            if outcome[0] >= cutoff:
                self.joined += 1
                joined = self._joined
                size = len(joined)
                joined[request_id] = ts if ts > outcome[0] else outcome[0]
                if len(joined) == size:  # joined before: to the end (order = recency)
                    _to_end(joined, request_id)
                if len(joined) > self.max_pending:
                    del joined[next(iter(joined))]
                return outcome
            self.expired_outcomes += 1  # it waited too long: counted now, as a sweep would
        pending = self._predictions.get(request_id)
        if pending is not None:
            if pending[0] >= cutoff:
                self.duplicate_predictions += 1
                return DUPLICATE
            del self._predictions[request_id]
            self._count_expired(pending[1])
        joined_ts = self._joined.get(request_id)
        if joined_ts is not None and joined_ts >= cutoff:
            self.duplicate_predictions += 1
            return DUPLICATE
        if ts < cutoff:
            self._count_expired(group)
            return None
        self._predictions[request_id] = (ts, group, payload)
        if len(self._predictions) + len(self._outcomes) > self.max_pending:
            self._evict()
        return None

    def add_outcome(
        self, request_id: str, ts: float, label: Label
    ) -> PendingPrediction | _Duplicate | None:
        """Offer an outcome: its waiting prediction ``(ts, group, payload)``, ``DUPLICATE`` or
        ``None`` (now pending, or already expired)."""
        # The hot path: _advance and _remember inlined, as in add_prediction.
        watermark = self.watermark
        if ts > watermark:
            latest = self._latest
            if len(latest) == 2 == WATERMARK_RANK:
                top = latest[1]
                if ts > top:
                    latest[0] = watermark = top
                    latest[1] = ts
                else:
                    latest[0] = watermark = ts
                self.watermark = watermark
            else:
                self._advance(ts)
                watermark = self.watermark
        cutoff = watermark - self.ttl
        prediction = self._predictions.pop(request_id, None)
        if prediction is not None:
            if prediction[0] >= cutoff:
                self.joined += 1
                joined = self._joined
                size = len(joined)
                joined[request_id] = ts if ts > prediction[0] else prediction[0]
                if len(joined) == size:  # joined before: to the end (order = recency)
                    _to_end(joined, request_id)
                if len(joined) > self.max_pending:
                    del joined[next(iter(joined))]
                return prediction
            self._count_expired(prediction[1])
        pending = self._outcomes.get(request_id)
        if pending is not None:
            if pending[0] >= cutoff:
                self.duplicate_outcomes += 1
                return DUPLICATE
            del self._outcomes[request_id]
            self.expired_outcomes += 1
        joined_ts = self._joined.get(request_id)
        if joined_ts is not None and joined_ts >= cutoff:
            self.duplicate_outcomes += 1
            return DUPLICATE
        if ts < cutoff:
            self.expired_outcomes += 1
            return None
        self._outcomes[request_id] = (ts, label)
        if len(self._predictions) + len(self._outcomes) > self.max_pending:
            self._evict()
        return None

    def _advance(self, ts: float) -> None:
        """Take ``ts`` (above the watermark) into the largest event times seen."""
        latest = self._latest
        if len(latest) >= WATERMARK_RANK:
            latest[0] = ts
        else:
            latest.append(ts)
        latest.sort()
        if len(latest) >= WATERMARK_RANK:
            self.watermark = latest[0]

    def _count_expired(self, group: str) -> None:
        counts = self.expired_predictions
        counts[group] = counts.get(group, 0) + 1

    def _evict(self) -> None:
        """Drop the oldest unjoined record (by arrival) to respect ``max_pending``.

        Expired entries go first (counted as expired, as a sweep would have), so whether a sweep
        ran before this point does not change what is counted.
        """
        self.expire()
        preds, outs = self._predictions, self._outcomes
        if len(preds) + len(outs) <= self.max_pending:
            return
        p_id = next(iter(preds), None)
        o_id = next(iter(outs), None)
        if o_id is None or (p_id is not None and preds[p_id][0] <= outs[o_id][0]):
            assert p_id is not None
            del preds[p_id]
            self.evicted_predictions += 1
        else:
            del outs[o_id]
            self.evicted_outcomes += 1

    def expire(self) -> None:
        """Free expired entries (oldest first, in arrival order) and count them.

        Lookups already treat expired entries as gone; this only bounds memory. An entry that
        arrived out of order stays until the entries before it have expired too.
        """
        cutoff = self.watermark - self.ttl
        preds = self._predictions
        while preds:
            rid = next(iter(preds))
            entry = preds[rid]
            if entry[0] >= cutoff:
                break
            del preds[rid]
            self._count_expired(entry[1])
        outs = self._outcomes
        while outs:
            rid = next(iter(outs))
            if outs[rid][0] >= cutoff:
                break
            del outs[rid]
            self.expired_outcomes += 1
        joined = self._joined
        while joined:
            rid = next(iter(joined))
            if joined[rid] >= cutoff:
                break
            del joined[rid]

    # -- reading ---------------------------------------------------------------------------

    @property
    def pending_predictions(self) -> int:
        """Predictions waiting for an outcome."""
        return len(self._predictions)

    @property
    def pending_outcomes(self) -> int:
        """Outcomes waiting for their prediction."""
        return len(self._outcomes)

    def counters(self) -> dict[str, int]:
        """Plain counters for status pages and metrics."""
        return {
            "pending_predictions": len(self._predictions),
            "pending_outcomes": len(self._outcomes),
            "joined": self.joined,
            "expired_predictions": sum(self.expired_predictions.values()),
            "expired_outcomes": self.expired_outcomes,
            "evicted_predictions": self.evicted_predictions,
            "evicted_outcomes": self.evicted_outcomes,
            "duplicate_predictions": self.duplicate_predictions,
            "duplicate_outcomes": self.duplicate_outcomes,
        }

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything, as JSON data once serialised (entries in arrival order): what a restore
        from its JSON gives back exactly.

        The entries are the buffer's own maps, ``{request_id: entry}`` (tuples, which JSON
        writes as arrays), not copies: a checkpoint of a million pending entries is then one
        pass of the serialiser over them, not a million new lists first (5–10 times the CPU,
        compression included, and as many short-lived objects as entries). Serialise the state
        before the buffer changes again (every caller encodes it at once). Serialisers read a
        dict's own order, which for an ``OrderedDict`` can differ from its iteration order
        after ``move_to_end``: the maps therefore never move an entry (:func:`_to_end` deletes
        and inserts again), so both orders are arrival order."""
        return {
            "ttl": self.ttl,
            "max_pending": self.max_pending,
            "watermark": self.watermark,
            "latest": list(self._latest),
            "predictions": self._predictions,  # entries are tuples: JSON arrays
            "outcomes": self._outcomes,
            "joined_ids": self._joined,
            "joined": self.joined,
            "expired_predictions": dict(self.expired_predictions),
            "expired_outcomes": self.expired_outcomes,
            "evicted_predictions": self.evicted_predictions,
            "evicted_outcomes": self.evicted_outcomes,
            "duplicate_predictions": self.duplicate_predictions,
            "duplicate_outcomes": self.duplicate_outcomes,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> JoinBuffer:
        """Rebuild a buffer from :meth:`to_state` output; it continues exactly.

        From :meth:`StoredJoinBuffer.to_state` (whose entries are in its store, not in the
        state) it keeps the counters and the watermark and starts with no entries.
        """
        buf = cls(float(state["ttl"]), max(1, int(state["max_pending"])))
        buf.watermark = float(state["watermark"])
        buf._latest = sorted(float(t) for t in state.get("latest", [buf.watermark]))
        predictions, outcomes, joined = _entries(state)
        buf._predictions = OrderedDict(
            (rid, (float(ts), g, _tuple(p))) for rid, ts, g, p in predictions
        )
        buf._outcomes = OrderedDict((rid, (float(ts), label)) for rid, ts, label in outcomes)
        buf._joined = OrderedDict((rid, float(ts)) for rid, ts in joined)
        buf.joined = int(state["joined"])
        buf.expired_predictions = {str(k): int(v) for k, v in state["expired_predictions"].items()}
        buf.expired_outcomes = int(state["expired_outcomes"])
        buf.evicted_predictions = int(state["evicted_predictions"])
        buf.evicted_outcomes = int(state["evicted_outcomes"])
        buf.duplicate_predictions = int(state["duplicate_predictions"])
        buf.duplicate_outcomes = int(state["duplicate_outcomes"])
        return buf


def _to_end(entries: OrderedDict[str, Any], key: str) -> None:
    """Move ``key`` to the end of ``entries`` by deleting and inserting it again: unlike
    ``move_to_end``, this keeps the underlying dict's order (what serialisers write) the same as
    the iteration order (:meth:`JoinBuffer.to_state`)."""
    value = entries.pop(key)
    entries[key] = value


def _entries(state: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """A :meth:`JoinBuffer.to_state`'s pending predictions ``(rid, ts, group, payload)``,
    pending outcomes ``(rid, ts, label)`` and joined ids ``(rid, ts)``, in arrival order, from
    either format: maps by request id, or (snapshots of earlier versions) lists of arrays."""
    predictions = state.get("predictions", ())
    outcomes = state.get("outcomes", ())
    joined = state.get("joined_ids", ())
    if isinstance(predictions, Mapping):
        predictions = ((rid, *entry) for rid, entry in predictions.items())
    if isinstance(outcomes, Mapping):
        outcomes = ((rid, *entry) for rid, entry in outcomes.items())
    if isinstance(joined, Mapping):
        joined = joined.items()
    return predictions, outcomes, joined


def _tuple(payload: Any) -> Any:
    return tuple(payload) if isinstance(payload, list) else payload


# -- the join on a store ---------------------------------------------------------------------

#: Kinds of :data:`Entry`: a pending prediction, a pending outcome, a joined request id.
PREDICTION: Final = 0
OUTCOME: Final = 1
JOINED: Final = 2

#: One entry per request id in a :class:`JoinStore`: ``(PREDICTION, ts, group, payload)``,
#: ``(OUTCOME, ts, label)`` or ``(JOINED, ts)`` (``ts`` of the later side, for duplicates).
Entry = tuple[Any, ...]


class JoinStore(Protocol):
    """Where :class:`StoredJoinBuffer` keeps its entries: one per request id, by event time.

    Implementations: :class:`MemoryJoinStore` (here, for tests and backtests) and the service's
    RocksDB store (``driftswitch.streams.service.joinstore``), which keeps every change in
    memory until the worker commits it together with its input offsets.
    """

    def get(self, request_id: str) -> Entry | None:
        """The entry for ``request_id``, or ``None``."""

    def put(self, request_id: str, entry: Entry, previous: Entry | None) -> None:
        """Set the entry of ``request_id``; ``previous`` is the one :meth:`get` returned."""

    def delete(self, request_id: str, previous: Entry) -> None:
        """Remove the entry ``previous`` of ``request_id``."""

    def oldest(self, cutoff: float, limit: int) -> list[tuple[str, Entry]]:
        """Up to ``limit`` entries whose ``ts`` is below ``cutoff``, lowest ``ts`` first."""


class MemoryJoinStore:
    """A :class:`JoinStore` in memory: a dict plus a heap by event time (stale heap items are
    dropped when they surface)."""

    __slots__ = ("_entries", "_heap")

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, request_id: str) -> Entry | None:
        return self._entries.get(request_id)

    def put(self, request_id: str, entry: Entry, previous: Entry | None) -> None:
        self._entries[request_id] = entry
        if previous is None or previous[1] != entry[1]:
            heapq.heappush(self._heap, (entry[1], request_id))

    def delete(self, request_id: str, previous: Entry) -> None:
        del self._entries[request_id]

    def oldest(self, cutoff: float, limit: int) -> list[tuple[str, Entry]]:
        heap, entries = self._heap, self._entries
        found: list[tuple[str, Entry]] = []
        seen: set[str] = set()
        while heap and heap[0][0] < cutoff and len(found) < limit:
            ts, rid = heapq.heappop(heap)
            entry = entries.get(rid)
            if entry is not None and entry[1] == ts and rid not in seen:
                seen.add(rid)
                found.append((rid, entry))
        for rid, entry in found:  # the caller deletes them; until then they stay findable
            heapq.heappush(heap, (entry[1], rid))
        return found


class StoredJoinBuffer:
    """:class:`JoinBuffer`'s join on a :class:`JoinStore`, with no bound by count.

    The same request-id join, TTL, watermark and duplicate rule as :class:`JoinBuffer`, and the
    same counts, except that nothing is evicted to keep a count of entries: entries leave when
    they join or when they expire (``ttl`` of event time), oldest event time first. What bounds
    the store is the TTL times the input rate, on disk rather than in memory; :meth:`evict`
    drops the oldest entries when the caller must bound the disk (counted as evicted).

    Only the counters, the watermark and the pending counts are in :meth:`to_state`; the
    entries stay in the store, whose owner checkpoints them.

    Examples
    --------
    >>> buf = StoredJoinBuffer(ttl=60.0, store=MemoryJoinStore())
    >>> buf.add_outcome("r1", 10.0, "cat") is None
    True
    >>> buf.add_prediction("r1", 9.5, "ranker/candidate", ("cat",))
    (10.0, 'cat')
    >>> buf.add_outcome("r1", 11.0, "cat") is DUPLICATE
    True
    """

    __slots__ = (
        "_latest",
        "_pending_outcomes",
        "_pending_predictions",
        "duplicate_outcomes",
        "duplicate_predictions",
        "evicted_outcomes",
        "evicted_predictions",
        "expired_outcomes",
        "expired_predictions",
        "joined",
        "max_pending",
        "store",
        "ttl",
        "watermark",
    )

    #: Entries read from the store per step of :meth:`expire`.
    SWEEP = 4096

    def __init__(self, ttl: float, store: JoinStore, max_pending: int = 0) -> None:
        if not ttl >= 0:
            raise ValueError(f"ttl must be >= 0 seconds, got {ttl!r}")
        self.ttl = float(ttl)
        #: Kept for the engine's state only: a stored buffer does not evict by count.
        self.max_pending = int(max_pending)
        self.store = store
        self.watermark = 0.0
        self._latest: list[float] = []
        self._pending_predictions = 0
        self._pending_outcomes = 0
        self.joined = 0
        self.expired_predictions: dict[str, int] = {}
        self.expired_outcomes = 0
        self.evicted_predictions = 0
        self.evicted_outcomes = 0
        self.duplicate_predictions = 0
        self.duplicate_outcomes = 0

    def add_prediction(
        self, request_id: str, ts: float, group: str, payload: Any
    ) -> PendingOutcome | _Duplicate | None:
        """Offer a prediction: its waiting outcome ``(ts, label)``, ``DUPLICATE`` or ``None``."""
        if ts > self.watermark:
            self._advance(ts)
        cutoff = self.watermark - self.ttl
        store = self.store
        entry = store.get(request_id)
        if entry is not None:
            kind, ets = entry[0], entry[1]
            if ets >= cutoff:
                if kind == OUTCOME:
                    store.put(request_id, (JOINED, ts if ts > ets else ets), entry)
                    self._pending_outcomes -= 1
                    self.joined += 1
                    return (ets, entry[2])
                self.duplicate_predictions += 1
                return DUPLICATE
            self._gone(entry)  # it waited too long: counted now, as a sweep would
        if ts < cutoff:
            self._count_expired(group)
            if entry is not None:
                store.delete(request_id, entry)
            return None
        store.put(request_id, (PREDICTION, ts, group, payload), entry)
        self._pending_predictions += 1
        return None

    def add_outcome(
        self, request_id: str, ts: float, label: Label
    ) -> PendingPrediction | _Duplicate | None:
        """Offer an outcome: its waiting prediction ``(ts, group, payload)``, ``DUPLICATE`` or
        ``None`` (now pending, or already expired)."""
        if ts > self.watermark:
            self._advance(ts)
        cutoff = self.watermark - self.ttl
        store = self.store
        entry = store.get(request_id)
        if entry is not None:
            kind, ets = entry[0], entry[1]
            if ets >= cutoff:
                if kind == PREDICTION:
                    store.put(request_id, (JOINED, ts if ts > ets else ets), entry)
                    self._pending_predictions -= 1
                    self.joined += 1
                    return (ets, entry[2], entry[3])
                self.duplicate_outcomes += 1
                return DUPLICATE
            self._gone(entry)
        if ts < cutoff:
            self.expired_outcomes += 1
            if entry is not None:
                store.delete(request_id, entry)
            return None
        store.put(request_id, (OUTCOME, ts, label), entry)
        self._pending_outcomes += 1
        return None

    def _advance(self, ts: float) -> None:
        latest = self._latest
        if len(latest) >= WATERMARK_RANK:
            latest[0] = ts
        else:
            latest.append(ts)
        latest.sort()
        if len(latest) >= WATERMARK_RANK:
            self.watermark = latest[0]

    def _count_expired(self, group: str) -> None:
        counts = self.expired_predictions
        counts[group] = counts.get(group, 0) + 1

    def _gone(self, entry: Entry) -> None:
        """Count an expired entry (a joined id's marker counts nothing)."""
        kind = entry[0]
        if kind == PREDICTION:
            self._pending_predictions -= 1
            self._count_expired(entry[2])
        elif kind == OUTCOME:
            self._pending_outcomes -= 1
            self.expired_outcomes += 1

    def expire(self) -> None:
        """Remove expired entries from the store (oldest event time first) and count them."""
        self._drop(self.watermark - self.ttl, None)

    def evict(self, count: int) -> int:
        """Drop the ``count`` oldest entries (by event time), counted as evicted; returns how
        many pending entries were dropped. For bounding the store's disk, not its count."""
        return self._drop(float("inf"), count)

    def _drop(self, cutoff: float, count: int | None) -> int:
        store = self.store
        dropped = 0
        left = count
        while left is None or left > 0:
            step = self.SWEEP if left is None else min(left, self.SWEEP)
            old = store.oldest(cutoff, step)
            for rid, entry in old:
                store.delete(rid, entry)
                if count is None:
                    self._gone(entry)
                elif entry[0] == PREDICTION:
                    self._pending_predictions -= 1
                    self.evicted_predictions += 1
                elif entry[0] == OUTCOME:
                    self._pending_outcomes -= 1
                    self.evicted_outcomes += 1
                dropped += entry[0] != JOINED
            if left is not None:
                left -= len(old)
            if len(old) < step:
                break
        return dropped

    @property
    def pending_predictions(self) -> int:
        """Predictions waiting for an outcome."""
        return self._pending_predictions

    @property
    def pending_outcomes(self) -> int:
        """Outcomes waiting for their prediction."""
        return self._pending_outcomes

    def counters(self) -> dict[str, int]:
        """Plain counters for status pages and metrics."""
        return {
            "pending_predictions": self._pending_predictions,
            "pending_outcomes": self._pending_outcomes,
            "joined": self.joined,
            "expired_predictions": sum(self.expired_predictions.values()),
            "expired_outcomes": self.expired_outcomes,
            "evicted_predictions": self.evicted_predictions,
            "evicted_outcomes": self.evicted_outcomes,
            "duplicate_predictions": self.duplicate_predictions,
            "duplicate_outcomes": self.duplicate_outcomes,
        }

    def to_state(self) -> dict[str, JSON]:
        """Counters and watermark as plain JSON; ``"stored": true`` says the entries are in the
        store (checkpointed by its owner at the same moment)."""
        return {
            "stored": True,
            "ttl": self.ttl,
            "max_pending": self.max_pending,
            "watermark": self.watermark,
            "latest": list(self._latest),
            "pending_predictions": self._pending_predictions,
            "pending_outcomes": self._pending_outcomes,
            "joined": self.joined,
            "expired_predictions": dict(self.expired_predictions),
            "expired_outcomes": self.expired_outcomes,
            "evicted_predictions": self.evicted_predictions,
            "evicted_outcomes": self.evicted_outcomes,
            "duplicate_predictions": self.duplicate_predictions,
            "duplicate_outcomes": self.duplicate_outcomes,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], store: JoinStore) -> StoredJoinBuffer:
        """A buffer on ``store`` continuing from ``state``.

        ``state`` is either this class's :meth:`to_state` (``store`` must then hold the entries
        of the same checkpoint) or :meth:`JoinBuffer.to_state`, whose entries are written into
        ``store`` (an older snapshot moving to the disk store). A joined id's marker keeps the
        time :class:`JoinBuffer` kept for it.
        """
        buf = cls(float(state["ttl"]), store, int(state.get("max_pending", 0)))
        buf.watermark = float(state["watermark"])
        buf._latest = sorted(float(t) for t in state.get("latest", [buf.watermark]))
        if state.get("stored"):
            buf._pending_predictions = int(state["pending_predictions"])
            buf._pending_outcomes = int(state["pending_outcomes"])
        else:
            predictions, outcomes, joined = _entries(state)
            for rid, ts in joined:
                store.put(rid, (JOINED, float(ts)), store.get(rid))
            for rid, ts, group, payload in predictions:
                store.put(rid, (PREDICTION, float(ts), group, _tuple(payload)), store.get(rid))
            for rid, ts, label in outcomes:
                store.put(rid, (OUTCOME, float(ts), label), store.get(rid))
            buf._pending_predictions = len(state["predictions"])
            buf._pending_outcomes = len(state["outcomes"])
        buf.joined = int(state["joined"])
        buf.expired_predictions = {str(k): int(v) for k, v in state["expired_predictions"].items()}
        buf.expired_outcomes = int(state["expired_outcomes"])
        buf.evicted_predictions = int(state["evicted_predictions"])
        buf.evicted_outcomes = int(state["evicted_outcomes"])
        buf.duplicate_predictions = int(state["duplicate_predictions"])
        buf.duplicate_outcomes = int(state["duplicate_outcomes"])
        return buf
