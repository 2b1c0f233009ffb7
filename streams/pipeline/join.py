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

Entries are plain tuples in insertion-ordered dicts, so the hot path allocates one tuple per
buffered record and the state is plain JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, Final

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
        self._predictions: dict[str, PendingPrediction] = {}
        self._outcomes: dict[str, PendingOutcome] = {}
        # request_id → event time of the later side, for duplicate detection within the TTL.
        self._joined: dict[str, float] = {}
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
        if ts > self.watermark:
            self._advance(ts)
        cutoff = self.watermark - self.ttl
        outcome = self._outcomes.pop(request_id, None)
        if outcome is not None:
            if outcome[0] >= cutoff:
                self._remember(request_id, ts if ts > outcome[0] else outcome[0])
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
        if ts > self.watermark:
            self._advance(ts)
        cutoff = self.watermark - self.ttl
        prediction = self._predictions.pop(request_id, None)
        if prediction is not None:
            if prediction[0] >= cutoff:
                self._remember(request_id, ts if ts > prediction[0] else prediction[0])
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

    def _remember(self, request_id: str, ts: float) -> None:
        self.joined += 1
        joined = self._joined
        joined.pop(request_id, None)  # keep insertion order = recency
        joined[request_id] = ts
        if len(joined) > self.max_pending:
            del joined[next(iter(joined))]

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

    def to_state(self) -> dict[str, JSON]:
        """Everything, as plain JSON data (entries in arrival order)."""
        return {
            "ttl": self.ttl,
            "max_pending": self.max_pending,
            "watermark": self.watermark,
            "latest": list(self._latest),
            "predictions": [
                [rid, ts, g, _plain(p)] for rid, (ts, g, p) in self._predictions.items()
            ],
            "outcomes": [[rid, ts, label] for rid, (ts, label) in self._outcomes.items()],
            "joined_ids": [[rid, ts] for rid, ts in self._joined.items()],
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
        """Rebuild a buffer from :meth:`to_state` output; it continues exactly."""
        buf = cls(float(state["ttl"]), int(state["max_pending"]))
        buf.watermark = float(state["watermark"])
        buf._latest = sorted(float(t) for t in state.get("latest", [buf.watermark]))
        buf._predictions = {
            rid: (float(ts), g, _tuple(p)) for rid, ts, g, p in state["predictions"]
        }
        buf._outcomes = {rid: (float(ts), label) for rid, ts, label in state["outcomes"]}
        buf._joined = {rid: float(ts) for rid, ts in state["joined_ids"]}
        buf.joined = int(state["joined"])
        buf.expired_predictions = {str(k): int(v) for k, v in state["expired_predictions"].items()}
        buf.expired_outcomes = int(state["expired_outcomes"])
        buf.evicted_predictions = int(state["evicted_predictions"])
        buf.evicted_outcomes = int(state["evicted_outcomes"])
        buf.duplicate_predictions = int(state["duplicate_predictions"])
        buf.duplicate_outcomes = int(state["duplicate_outcomes"])
        return buf


def _plain(payload: Any) -> Any:
    return list(payload) if isinstance(payload, tuple) else payload


def _tuple(payload: Any) -> Any:
    return tuple(payload) if isinstance(payload, list) else payload
