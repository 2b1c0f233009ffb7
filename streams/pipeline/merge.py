"""The decide stage's input: observations from every join partition, merged in event time.

Each join partition (a partition index of the input topics, :mod:`~driftswitch.streams.pipeline.
observations`) sends the decide stage a stream of :class:`Batch`\\ es: the observations of one
input batch, how far the partition has read its input topics, and its watermark. :class:`Merge`
buffers the observations and releases them in :func:`~driftswitch.streams.pipeline.observations.
event_order`, up to a bound every join partition has passed:

``bound = min(watermark of each busy join partition) - allowed_lateness``

A join partition that said it had read all its input (``idle``) does not hold the bound back; one
never heard from does (the merge cannot know what it will send). With every partition idle,
everything buffered is released. The released sequence is therefore the event-time order of all
observations — the order ``driftswitch backtest --order event`` feeds the same decision code —
for any number of partitions and any skew between them, as long as no observation arrives after
the bound has passed it.

Late observations. One that sorts before the last observation released is *late*. It is applied
at once, after what was already released, and counted (``late``): nothing is dropped, but its
decisions may differ from the backtest's. Raise ``allowed_lateness`` to trade reaction time for
fewer late observations: every decision waits until each busy partition has seen events that much
later.

Duplicates. A join partition that restarts from its last checkpoint sends some observations again,
and a paused process that lost its partitions may still send for a while. Each run of a join
partition (a start from a checkpoint) has its own id; every batch says which run sent it and how
far that run has read each input topic; every observation names its input positions (one for a
prediction, two for a joined pair). A run's output is a function of the inputs it consumed: it
sends each observation whose inputs all lie inside its consumed prefix, once. So an observation
was already sent iff some *other* run's consumed prefix holds all its inputs; such an observation
is dropped (``duplicates``). The merge keeps one prefix per run, forgetting a run whose prefix
another run's covers. This is exact without transactions.

Snapshots. A merge's state (:meth:`Merge.to_state`) holds its consumed prefixes, watermarks
and counters, and either the buffered observations themselves or, for a *tagged* merge, only
their tags: each observation then carries, third from last (before its join partition and its
input positions), an integer naming where it can be read again. The decide stage tags each
observation with its record's offset on the observations topic and its index in that record
(:data:`TAG_SPAN`), so its snapshots stay small however many observations wait for the bound,
and a restart reads those records again and hands the tagged observations back
(:meth:`Merge.replay`). Untagged merges (and snapshots of earlier versions) keep the
observations in the state.

Epochs. Positions are offsets as long as the broker keeps its data. When a join partition finds
that the broker lost an input (a topic recreated: offsets start again below what was read), it
moves to a new *epoch* and numbers its input ``epoch * EPOCH_SPAN + offset`` from then on (in
observations, batches and re-route origins), so that positions keep growing and no earlier run's
prefix covers the new data. :func:`offset_of` gives the offset back.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, cast

import orjson

from driftswitch.detectors.base import JSON
from driftswitch.streams.pipeline.observations import Observation, event_order

__all__ = [
    "EPOCH_SPAN",
    "TAG_SPAN",
    "Batch",
    "BatchError",
    "Clock",
    "Merge",
    "decode_batch",
    "encode_batch",
    "offset_of",
]

#: Version of the observation batches' wire format (``"v"`` in each record).
BATCH_FORMAT = 1
#: Positions per epoch (module doc: Epochs): more offsets than a partition will hold.
EPOCH_SPAN = 1 << 40


#: Tags per observations record (module doc: Snapshots): ``tag = offset * TAG_SPAN + index``;
#: a record holds at most a few thousand observations.
TAG_SPAN = 1 << 20


def offset_of(position: int) -> int:
    """The offset of an input position (module doc: Epochs)."""
    return position % EPOCH_SPAN


@dataclass(frozen=True, slots=True)
class Batch:
    """What one join partition sends for one input batch.

    ``read`` maps each input topic's index (0 predictions, 1 outcomes, 2 re-routed records) to
    the run's position after the batch: every offset below it has been read, by this run or by
    the one whose checkpoint it started from. Each observation ends with its input positions,
    ``(topic index, offset)`` pairs.
    """

    source: int
    read: Mapping[int, int]
    watermark: float
    idle: bool = False
    observations: Sequence[Observation] = field(default_factory=list)
    #: Which run of the join partition sent it (a new id at every start from a checkpoint).
    run: str = ""


class BatchError(ValueError):
    """A record on the observations topic that is not an observation batch."""


def encode_batch(batch: Batch) -> bytes:
    """One batch as a record value of the observations topic (JSON, see :func:`decode_batch`)."""
    return orjson.dumps(
        {
            "v": BATCH_FORMAT,
            "source": batch.source,
            "run": batch.run,
            "read": {str(t): o for t, o in batch.read.items()},
            "watermark": batch.watermark if math.isfinite(batch.watermark) else None,
            "idle": batch.idle,
            "observations": batch.observations,
        }
    )


def decode_batch(value: bytes) -> Batch:
    """The batch in a record value; :class:`BatchError` for anything else."""
    try:
        doc = orjson.loads(value)
        if not isinstance(doc, dict) or doc.get("v") != BATCH_FORMAT:
            raise BatchError(f"not an observation batch of format {BATCH_FORMAT}")
        wm = doc["watermark"]
        observations = doc["observations"]
        if not isinstance(observations, list) or not all(
            isinstance(o, list) and len(o) > 7 for o in observations
        ):
            raise BatchError("observations must be a list of observation arrays")
        return Batch(
            source=int(doc["source"]),
            read={int(t): int(o) for t, o in doc["read"].items()},
            watermark=-math.inf if wm is None else float(wm),
            idle=bool(doc["idle"]),
            observations=observations,
            run=str(doc["run"]),
        )
    except BatchError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise BatchError(f"undecodable observation batch: {err}") from err


class Clock:
    """A join partition's watermark, from the event times read on each of its input topics.

    Records of one topic partition arrive roughly in event-time order, but a consumer may read
    one topic far ahead of another. The partition's watermark is therefore the *smallest* of its
    busy topics' largest event times: an observation still to come from a topic that is behind
    is not older than that topic's time. A topic that has been read to its end (``caught up``)
    does not hold the watermark back; when every topic is caught up the partition is idle.
    """

    __slots__ = ("seen",)

    def __init__(self) -> None:
        #: Per topic index: the largest event time read.
        self.seen: dict[int, float] = {}

    def observe(self, topic: int, ts: float) -> None:
        """Take an event time read on ``topic``."""
        if ts > self.seen.get(topic, -math.inf):
            self.seen[topic] = ts

    def watermark(self, busy: Iterable[int]) -> tuple[float, bool]:
        """``(watermark, idle)`` given the topics that still have records to read."""
        busy = list(busy)
        if not busy:
            return max(self.seen.values(), default=-math.inf), True
        return min(self.seen.get(t, -math.inf) for t in busy), False


class Merge:
    """Merges the join partitions' observations in event time (see the module doc).

    Parameters
    ----------
    sources
        How many join partitions there are (the input topics' partition count).
    allowed_lateness
        Seconds of event time the release waits behind the slowest busy join partition.
    tagged
        Whether observations carry a tag third from last (module doc: Snapshots): the state then
        lists the buffered observations' tags instead of the observations.
    """

    def __init__(self, sources: int, allowed_lateness: float = 0.0, tagged: bool = False) -> None:
        if sources < 1:
            raise ValueError(f"sources must be >= 1, got {sources}")
        if not allowed_lateness >= 0:
            raise ValueError(f"allowed_lateness must be >= 0 seconds, got {allowed_lateness!r}")
        self.sources = sources
        self.allowed_lateness = float(allowed_lateness)
        self.tagged = tagged
        #: Tags of buffered observations a restored state named, not yet handed back with
        #: :meth:`replay`, sorted.
        self.missing: list[int] = []
        #: Per join partition and run: the end of the consumed prefix per input topic index.
        self.consumed: list[dict[str, dict[int, int]]] = [{} for _ in range(sources)]
        #: Per join partition: its latest watermark (``-inf`` before its first batch).
        self.watermarks = [-math.inf] * sources
        self.idle = [False] * sources
        #: Buffered observations, sorted in :func:`~driftswitch.streams.pipeline.observations.
        #: event_order`, one list per join partition (index ``p + 1``) and one for those
        #: restored from a snapshot (index 0). A partition's batches mostly sort after what it
        #: sent before, so adding one costs a sort of the batch and of the part of that
        #: partition's buffer it overlaps (where a heap compared every observation with log n
        #: others twice); a release merges each list's prefix before the bound. Equal keys come
        #: from one partition (they name one request) and stay in the order they arrived. Sort
        #: keys are made while sorting only: kept beside every buffered observation they were
        #: two more objects each for the garbage collector to walk.
        #: A tagged merge keeps in the restored list only what a state without tags restored
        #: (an earlier version's snapshot); observations given back by :meth:`replay` go to
        #: their partitions' lists.
        self._buffers: list[list[Observation]] = [[] for _ in range(sources + 1)]
        #: Sort key of the last observation released.
        self.released: tuple[float, str, int, int] | None = None
        self.late = 0
        self.duplicates = 0

    def __len__(self) -> int:
        """Observations buffered, waiting for the bound."""
        return sum(map(len, self._buffers))

    def add(self, batch: Batch) -> list[Observation]:
        """Take one batch; return its late observations (to apply at once)."""
        p = batch.source
        if not 0 <= p < self.sources:
            raise ValueError(f"join partition {p} outside 0..{self.sources - 1}")
        runs = self.consumed[p]
        others = [c for r, c in runs.items() if r != batch.run]
        late: list[Observation] = []
        new: list[Observation] = []
        released = self.released
        # The event time of the last released: an observation after it is not late, and only
        # one at that very time needs its whole key compared.
        edge = released[0] if released is not None else -math.inf
        for obs in batch.observations:
            if others and any(
                all(offset < c.get(topic, 0) for topic, offset in obs[-1]) for c in others
            ):
                self.duplicates += 1
                continue
            ts = obs[4]
            if ts <= edge and (ts < edge or event_order(obs) < cast(Any, released)):
                self.late += 1
                late.append(_renumbered(obs, len(late)))
                continue
            new.append(obs)
        if new:
            new.sort(key=event_order)
            buffer = self._buffers[p + 1]
            first = event_order(new[0])
            last = event_order(buffer[-1]) if buffer else None
            if last is not None and first < last:
                # Overlaps the tail buffer[i:], which goes first among equal keys. The part of the
                # batch before its last key (new[:j]) goes in either one by one (a bisection
                # each: few of them into a long tail, as re-routed outcomes make) or sorted
                # together with the tail (many, or a short tail): whichever makes fewer keys.
                i = bisect_right(buffer, first, key=event_order)
                j = bisect_left(new, last, key=event_order)
                tail = len(buffer) - i
                if j * tail.bit_length() < tail + len(new):
                    lo = i
                    for obs in new[:j]:
                        lo = bisect_right(buffer, event_order(obs), lo, key=event_order)
                        buffer.insert(lo, obs)
                        lo += 1
                    del new[:j]
                else:
                    new[:0] = buffer[i:]
                    del buffer[i:]
                    new.sort(key=event_order)
            buffer += new
        consumed = runs.setdefault(batch.run, {})
        for topic, end in batch.read.items():
            if end > consumed.get(topic, 0):
                consumed[topic] = end
        if others:
            _forget_covered(runs, batch.run)
        if batch.watermark > self.watermarks[p]:
            self.watermarks[p] = batch.watermark
        self.idle[p] = batch.idle
        return late

    @property
    def bound(self) -> float:
        """Event time up to which observations are released (``inf``: all partitions idle)."""
        busy = [w for w, idle in zip(self.watermarks, self.idle, strict=True) if not idle]
        return min(busy) - self.allowed_lateness if busy else math.inf

    def release(self) -> list[Observation]:
        """The buffered observations before :attr:`bound`, in event-time order, their
        ``index`` renumbered 0, 1, ... (the order :class:`~driftswitch.streams.pipeline.
        observations.Decider` decides in)."""
        return [_renumbered(obs, i) for i, obs in enumerate(self.take())]

    def take(self) -> list[Observation]:
        """:meth:`release` without the renumbering, for a caller that numbers them itself.
        Observations with equal keys (one request's, so from one join partition) come in the
        order they were added."""
        bound = self.bound
        if bound == -math.inf:
            return []
        runs = []
        for buffer in self._buffers:
            if not buffer:
                continue
            cut = len(buffer) if bound == math.inf else bisect_left(buffer, bound, key=_event_time)
            if cut:
                runs.append(buffer[:cut])
                del buffer[:cut]
        if not runs:
            return []
        out = runs[0]
        for run in runs[1:]:
            out += run
        if len(runs) > 1:
            out.sort(key=event_order)  # stable: the restored list's go first among equal keys
        self.released = event_order(out[-1])
        return out

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, JSON]:
        """Plain JSON: buffered observations, consumed prefixes, watermarks, counters."""
        return {
            "sources": self.sources,
            "consumed": [
                {r: {str(t): e for t, e in c.items()} for r, c in runs.items()}
                for runs in self.consumed
            ],
            "watermarks": [w if math.isfinite(w) else None for w in self.watermarks],
            "idle": list(self.idle),
            # Each list is sorted already and :meth:`from_state` sorts their concatenation (in
            # this order: the restored list first among equal keys), so no sort here: at 100k
            # buffered it was a third of a snapshot's CPU. Observations are tuples of JSON
            # values, which JSON encoders write as arrays: copied into lists, a snapshot of a
            # large buffer took twice as long.
            "buffered": cast(
                list[JSON],
                list(self._buffers[0] if self.tagged else chain(*self._buffers)),
            ),
            # A tagged merge: the tags of the rest, and of what a restore has not handed back.
            **({"replay": cast(list[JSON], self._tags())} if self.tagged else {}),
            "released": list(self.released) if self.released is not None else None,
            "late": self.late,
            "duplicates": self.duplicates,
        }

    def _tags(self) -> list[int]:
        tags = [obs[-3] for buffer in self._buffers[1:] for obs in buffer]
        tags += self.missing
        tags.sort()
        return tags

    def replay(self, observations: Iterable[Observation]) -> None:
        """Hand back, after :meth:`from_state`, buffered observations the state named by tag
        (read again, in the order they first arrived): each goes to its join partition's list
        (second from last) and its tag leaves :attr:`missing`; observations whose tags the
        state did not name are ignored."""
        wanted = set(self.missing)
        got: list[list[Observation]] = [[] for _ in range(self.sources)]
        for obs in observations:
            tag = obs[-3]
            if tag in wanted:
                wanted.discard(tag)
                got[obs[-2]].append(obs)
        for p, more in enumerate(got):
            if more:
                buffer = self._buffers[p + 1]
                buffer += more
                buffer.sort(key=event_order)  # stable: arrival order among equal keys
        self.missing = sorted(wanted)

    def inline(self) -> None:
        """Keep every observation buffered now in the state itself, as an untagged merge does:
        for when the records their tags name are gone (the observations topic recreated), so
        that a later restart neither misses them nor takes the new records at those offsets for
        them. Observations added afterwards are tagged again as usual."""
        moved = list(chain(*self._buffers))
        moved.sort(key=event_order)  # stable: the restored list first among equal keys
        self._buffers = [moved] + [[] for _ in range(self.sources)]

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], allowed_lateness: float = 0.0, tagged: bool = False
    ) -> Merge:
        """A merge continuing from ``to_state`` output (``allowed_lateness`` from the config).
        Tagged observations the state names are missing (:attr:`missing`) until handed back
        with :meth:`replay`."""
        merge = cls(int(state["sources"]), allowed_lateness, tagged or "replay" in state)
        merge.consumed = [
            {str(r): {int(t): int(e) for t, e in c.items()} for r, c in runs.items()}
            for runs in state["consumed"]
        ]
        merge.watermarks = [-math.inf if w is None else float(w) for w in state["watermarks"]]
        merge.idle = [bool(i) for i in state["idle"]]
        merge._buffers[0] = sorted(state["buffered"], key=event_order)
        merge.missing = sorted(int(t) for t in state.get("replay", ()))
        released = state["released"]
        merge.released = (
            (float(released[0]), str(released[1]), int(released[2]), int(released[3]))
            if released is not None
            else None
        )
        merge.late = int(state["late"])
        merge.duplicates = int(state["duplicates"])
        return merge


def _event_time(obs: Observation) -> float:
    return float(obs[4])


def _renumbered(obs: Observation, index: int) -> Observation:
    return (obs[0], index, *obs[2:])


def _forget_covered(runs: dict[str, dict[int, int]], current: str) -> None:
    """Drop the runs (other than ``current``) whose consumed prefix another run's covers: every
    observation they could vouch for, that run vouches for too."""
    for r in list(runs):
        if r == current:
            continue
        mine = runs[r]
        for s, theirs in runs.items():
            if s != r and all(e <= theirs.get(t, 0) for t, e in mine.items()):
                del runs[r]
                break
