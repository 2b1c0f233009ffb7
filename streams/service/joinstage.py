"""The join stage: predictions and outcomes in, observations out, in a Kafka consumer group.

Shape (docs/architecture.md "Scaling out"):

- **Partitions are the unit of work.** Every join-stage process is a member of the consumer
  group ``<group>.join`` on the predictions, outcomes and repartition topics (equal partition
  counts). The group hands out *partition indexes* (:mod:`driftswitch.streams.kafka.groups`):
  whoever owns index ``p`` reads partition ``p`` of all three topics and keeps join partition
  ``p``'s state. Add a process and the group rebalances; a process that stops or dies loses its
  indexes to the others (after the session timeout).
- **Exact joins whatever the producers' partitioner.** A record belongs to join partition
  :func:`~driftswitch.streams.contract.placement.join_partition` of its ``request_id``. One read
  anywhere else is decoded (bad records are dead-lettered here, with their reason) and its bytes
  are re-routed, unchanged, to that partition of the repartition topic with an origin header
  (``topic index/partition/offset``); the owner there joins it. Re-routed records are counted
  (``rerouted``). A re-routed record sent twice (the sender restarted from a checkpoint) is
  dropped by its origin offset.
- **Observations.** Each input batch of a join partition goes through
  :class:`~driftswitch.streams.pipeline.observations.Joiner` and leaves as one
  :class:`~driftswitch.streams.pipeline.merge.Batch` per partition of the observations topic
  (those of the flags placed there; an empty one carries the watermark), for the decide stage.
- **Watermarks.** A join partition's watermark is the smallest of its busy sources' event
  times (:class:`~driftswitch.streams.pipeline.merge.Clock`): its own two topics, and, for the
  repartition topic, the *horizon* each other join partition announces in marker records on it
  (the event time below which it will re-route nothing more; a marker follows the re-routed
  records it covers in the same partition, so it is read after them). When one process owns
  both partitions, a partition takes the other's latest horizon from memory instead, as soon as
  it has read a marker of the other's current run (which follows everything earlier owners
  re-routed) and every record the other re-routed to it since: a horizon then no longer waits
  for a round trip through the broker, which held decisions back by seconds of event time.
- **Event-time alignment.** The merge releases nothing past the slowest partition, so reading one
  partition (or topic) far ahead of the others only fills the decide stage's buffer (and its
  snapshots). A process therefore reads at most :data:`JOIN_MAX_RECORDS` records per batch and
  skips, in the next fetch, the input topics whose event time is more than :data:`ALIGNMENT`
  seconds ahead of its slowest input topic with records waiting (:func:`held_back`); a skipped
  topic is read again after :data:`ALIGNMENT_HOLD` seconds whatever the others do, so a topic
  whose event times stop advancing cannot stall the rest. Alignment changes only the order in
  which records are read, never what is decided.
- **Checkpoints.** After every record sent so far is acknowledged and the group coordinator has
  confirmed this member still belongs to the current generation, a join partition's state (join
  buffer, read positions, clock, re-route offsets) goes to the state topic under the key
  ``<group>.join/<p>``. A partition that read something is checkpointed at most every
  ``snapshot_interval`` seconds, and only once the CPU time spent on its input since its last
  checkpoint is :data:`WORK_PER_CHECKPOINT` times what that checkpoint cost, or
  :data:`~driftswitch.streams.service.pacing.MAX_SNAPSHOT_INTERVAL` seconds have passed: a
  checkpoint costs at most a tenth of the work it saves, per partition, whether a process owns
  one partition or all of them (in memory a checkpoint serialises all the pending entries, so on
  a clock alone its cost would follow the processes' wall time, not the input). With the
  entries in memory, the loop only takes the state (encodes it, with the records sent until
  then), of one partition per turn, and not while the last checkpoint is still being written
  (:meth:`JoinStage._to_checkpoint`): a task of its own waits for those records'
  acknowledgements and the coordinator's answer, sends the checkpoint and waits for its
  acknowledgement, while the loop goes on reading (those waits, inside the loop, held input
  back by up to a few hundred milliseconds and were most of the reaction time's tail).
  Checkpoints are written one at a time, in order; one
  whose member turned out not to be current is dropped and its partitions taken again next
  time; a revocation, a recovery and a stop wait for the one being written. A new owner
  resumes from it and reads again from its positions, under a new *run* id; the decide stage
  drops what it sends a second time (:class:`~driftswitch.streams.pipeline.merge.Merge`). A
  member expelled while paused (a zombie) may still send observations for a moment: they are
  duplicates of what the new owner sends, dropped the same way, so no fencing token is needed
  here.
- **State on disk** (``state_dir``): each owned partition's pending entries live in its own
  RocksDB store, ``<state_dir>/<group>.join/<p>``
  (:class:`~driftswitch.streams.service.joinstore.RocksJoinStore`). A checkpoint commits the
  changes since the last one to the store, atomically with the checkpoint's document, then sends
  the document (without the entries) to the state topic: its cost is the input since the last
  checkpoint, not the state's size. A new owner on the same disk opens the store and continues
  when it holds the topic's latest checkpoint for the partition (or its successor: killed
  between the two writes); otherwise it starts that partition's join empty and counts the
  entries it could not recover (``join_entries_lost``). Without ``state_dir`` the entries are in
  memory and in every checkpoint. The process also records its group member id there
  (``member-<pid>.json``), and one started later on the directory removes the members of the
  processes recorded there that are gone, before it joins
  (:mod:`~driftswitch.streams.service.startup`): the group need not wait for a SIGKILLed
  member's session to time out.
- **Poison containment.** Validation is meant to let through only what the join can process and
  checkpoint. An input that still breaks it (``Joiner.process`` raises, its observations do not
  encode, or the partition's state no longer checkpoints) stops only that partition, for a
  moment: it is reopened from its last checkpoint under a new run, as a new owner would reopen
  it, and the input since then is replayed with containment
  (:func:`~driftswitch.streams.pipeline.contain.join_isolating`): the inputs that fail on their
  own are left out and dead-lettered as ``internal_error`` (with the exception's type and where
  it was raised), everything else is joined once (the decide stage drops what the new run sends
  again). Counted in ``recoveries`` and ``driftswitch_engine_recoveries_total``. An input whose
  only fault is the state it leaves is found at the next checkpoint: the observations sent from
  it before then stay sent.
- **Input the broker lost** (:mod:`~driftswitch.streams.service.dataloss`): when a partition is
  assigned, and every ``CHECK_INTERVAL`` seconds while the input is idle, its read positions and
  the fingerprint of the last record read on each of its topics are checked against what the
  broker holds. A topic recreated (or a broker that lost its data) is read again from the start
  of its new data, with the worker's ERROR line, ``input_resets`` and
  ``driftswitch_input_resets_total``; the partition then moves to a new epoch
  (:mod:`~driftswitch.streams.pipeline.merge`: Epochs), so that the decide stage does not take
  the new data's observations for ones it already has. The check on assignment runs in the
  background (:class:`~driftswitch.streams.service.dataloss.LossCheck`), so that the rebalance
  callback returns at once: a partition opened from a checkpoint stays paused, neither read nor
  processed, until the answer comes (then it is reset if need be, and resumed if still owned; a
  check that failed resumes it too, and the idle checks look again). A revocation drops a check
  still running; a newer assignment's check supersedes an older one.
- **Idle.** Once every owned partition has sent and announced itself idle, has nothing to
  checkpoint and nothing held back, the loop's ``getmany`` waits up to ``idle_poll_ms`` (1 s)
  instead of ``poll_ms`` (50 ms). Records end that wait as soon as a fetch brings them, so this
  adds no latency; it cuts an idle process's loop turns from 20 to 1 a second. The fetches
  themselves go on every ``fetch_max_wait_ms`` (:mod:`~driftswitch.streams.kafka.groups`).
  An idle partition says so again every :data:`IDLE_REPEAT` seconds (its empty batch to every
  observations partition, its idle horizon to the other join partitions): a process that lost
  the partition while paused (a zombie, woken later) may land one last batch or marker saying
  "busy" after the new owner's "idle", and the decide stage's merge and the other partitions
  believe the last word they read; without the repeat that word stood until input arrived, and
  held back every decision of a quiet system. A repeat, and a partition's turn from busy to
  idle, go out only while the group coordinator's last confirmation that this member is
  current is fresh (:data:`CONFIRMED_WITHIN`; :meth:`JoinStage._confirmed`); a partition
  about to turn idle stays busy where it is until a confirmation comes (a coordinator's round
  trip, asked beside the loop). The zombie itself, woken with partitions it no longer owns,
  must say "idle" for none of them, neither again nor for the first time, while a new owner
  may still be catching up: the decide stage would then release past that owner's
  observations, which would come late. Reading markers alone does not make a partition
  due for a checkpoint as input does (so the repeats neither keep an idle process from its
  long waits nor make it serialise its pending entries every few seconds): such a partition is
  checkpointed with its next input, or after :data:`MARKERS_CHECKPOINT_INTERVAL` seconds, so
  that its checkpoint's read position on the repartition topic stays within the topic's
  retention; a restart reads the markers since again, which only repeats what they said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from driftswitch.streams.config.model import Config
from driftswitch.streams.contract.events import InputEvent
from driftswitch.streams.contract.placement import join_partitions, observations_partition
from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka.connect import Membership
from driftswitch.streams.kafka.groups import GroupError, StageMember
from driftswitch.streams.pipeline.contain import INTERNAL_ERROR, describe, join_isolating
from driftswitch.streams.pipeline.eventtime import Disorder, reject_future
from driftswitch.streams.pipeline.ingest import Decoded, Ingest, InputRecord, Rejected, Source
from driftswitch.streams.pipeline.join import StoredJoinBuffer
from driftswitch.streams.pipeline.merge import EPOCH_SPAN, Batch, Clock, encode_batch, offset_of
from driftswitch.streams.pipeline.observations import Joiner, Observation, build_flags
from driftswitch.streams.service.dataloss import (
    Checked,
    LossCheck,
    Mark,
    describe_lost,
    describe_rewound,
    mark_of,
)
from driftswitch.streams.service.deadletter import deadletter_record
from driftswitch.streams.service.joinstore import RocksJoinStore
from driftswitch.streams.service.pacing import MAX_SNAPSHOT_INTERVAL
from driftswitch.streams.service.recovery import EngineFailedError, Suspects
from driftswitch.streams.service.snapshot import (
    Chunk,
    Snapshot,
    Writing,
    continue_on_store,
    encode_chunks,
    latest_snapshot,
)
from driftswitch.streams.service.startup import (
    STARTUP,
    forget_member,
    join_member,
    record_member,
)

if TYPE_CHECKING:
    from driftswitch.streams.service.metrics import Metrics
    from driftswitch.streams.service.worker import WorkerSettings

__all__ = [
    "BATCH_OBSERVATIONS",
    "HEADER_MARKER",
    "HEADER_ORIGIN",
    "PRODUCER_BATCH_BYTES",
    "WORK_PER_CHECKPOINT",
    "JoinStage",
    "LocalBatches",
]

log = logging.getLogger(__name__)

#: On a re-routed record: ``topic index/partition/offset`` where it was first read.
HEADER_ORIGIN = "driftswitch.origin"
#: On a marker record of the repartition topic (its value: ``{"source", "horizon", "idle"}``).
HEADER_MARKER = "driftswitch.marker"
#: Observations per record of the observations topic (about 200 bytes each: well under Kafka's
#: default 1 MiB message limit).
BATCH_OBSERVATIONS = 2000
#: The join stage's producer batches up to this many bytes per partition (aiokafka's
#: ``max_batch_size``, 16 KiB by default). A record that does not fit its partition's open batch
#: waits in ``send`` until the batch is sent, and aiokafka sends one request per broker at a time:
#: at 16 KiB nearly every observation record waited for the previous request's answer, and at
#: 33,700 events/s live the join loop spent 1.9-2.3 s of every 5 s in ``send`` (0.02 s at 512 KiB).
#: A full record of :data:`BATCH_OBSERVATIONS` fits, well under Kafka's default 1 MiB limit.
PRODUCER_BATCH_BYTES = 512 * 1024
#: A partition's checkpoint waits until the CPU time spent on its input since the last one is this
#: many times what the last one cost (or ``MAX_SNAPSHOT_INTERVAL`` seconds have passed).
WORK_PER_CHECKPOINT = 10.0
#: Event-time alignment (module doc): a partition's topic is read only while its event time is at
#: most this many seconds ahead of the slowest busy topic of the process's partitions.
ALIGNMENT = 1.0
#: Wall-clock seconds an input topic may be held back by the alignment before it is read again
#: (so a topic whose event times stop advancing cannot stall the others).
ALIGNMENT_HOLD = 2.0
_EVENT_TIME = attrgetter("ts")
_SAVED_AT = attrgetter("saved_at")
_REQUEST_ID = attrgetter("request_id")
#: What a partition that has sent or announced nothing yet counts as.
_BUSY = (-math.inf, False)
#: Seconds between an idle partition's repeats of its idle batch and horizon (module doc: Idle):
#: how long a zombie's late "busy" can hold back the decide stage of a quiet system.
IDLE_REPEAT = 5.0
#: A repeat, and a partition's turn from busy to idle, go out only while the group
#: coordinator's last confirmation that this member is current is at most this many seconds
#: old: less than any session timeout (Kafka's minimum is 6 s), so that a process woken from a
#: pause that cost it its partitions says "idle" for none of them (module doc: Idle).
CONFIRMED_WITHIN = 2.0
#: Seconds after which a partition that read only markers since its last checkpoint is
#: checkpointed (module doc: Idle).
MARKERS_CHECKPOINT_INTERVAL = 3600.0
#: Records per batch of the join stage: small enough that one batch of one partition does not
#: run far ahead in event time (the alignment acts between batches).
JOIN_MAX_RECORDS = 5000
Key = TypeVar("Key")
#: Topic indexes in observation positions and batches.
PREDICTIONS, OUTCOMES, REROUTED = 0, 1, 2


#: Bytes of observation records :class:`LocalBatches` holds at most.
LOCAL_BATCH_BYTES = 16 * 1024 * 1024
#: Longest wait of one turn of the join stage for the decide stage (:attr:`LocalBatches.behind`).
LOCAL_WAIT_MAX = 1.0
#: Acknowledged offsets :class:`LocalBatches` remembers per partition at most (a standby decide
#: stage takes none).
LOCAL_ACKED_MAX = 10_000


class LocalBatches:
    """The observation batches this process's join stage sent, for a decide stage in the same
    process (``--stage all``): it takes a record it reads from here, by its partition and bytes,
    instead of decoding and validating the same bytes again.

    An entry is added when the record is sent and taken when the decide stage reads a record
    with *the same bytes* in that partition: the bytes encode the whole batch (source, run, read
    positions, watermark, observations), so decoding them gives this batch back, whoever wrote
    them, and taking it changes nothing but the cost. (The partition is part of the key because
    a batch with nothing for several partitions sends each of them the same bytes: its read
    positions and watermark.) Keyed by the acknowledged offset instead, as before, about 6 % of
    the records of a backlog were read before their acknowledgement was handled, and were
    decoded. Entries not taken (a standby decide stage, a send that failed) are dropped oldest
    first beyond :data:`LOCAL_BATCH_BYTES`.

    Taken on acknowledgement. The decide stage need not wait to read a record back: once the
    broker acknowledged it at offset ``o`` (:meth:`delivered`) and the decide stage has merged
    everything before ``o`` in that partition, the record at ``o`` can only be this one, so the
    decide stage takes it at once (:meth:`acknowledged`) and skips it when its fetch brings it.
    That saves the broker's fetch hop on every decision (8 ms at the median, 62 ms at p99 at
    34k events/s on the embedded broker, timed once; the reaction figure did not move beyond
    its noise: docs/performance.md, "2026-11-30, late evening"). A record another writer put
    before it (another process's join stage, a paused process) is read first, as any other, so
    the order per partition is the log's.

    :attr:`behind` is the join stage's back-pressure: reading a backlog, the join stage (one
    task of the process) can outrun the decide stage (another) until its batches are dropped
    here and must be decoded, which slows the decide stage further (11 % of the records of one
    backlog run were decoded, 4-8 % with the back-pressure, most of them from before the decide
    stage held its lease). So the join stage reads on only while less than half of
    :attr:`limit` waits here, unless this process's decide stage is a standby (:attr:`leased`
    is ``False``: another process holds the lease and reads the batches from the broker; a
    standby's batches are not kept at all, and what was kept is dropped when the lease goes
    elsewhere, so that a standby taking over later finds no batches from before its snapshot
    filling the room). A decide stage still starting counts as one that will take: until its
    lease group has answered, and while it restores its snapshot, the join stage holds back
    (at most :data:`LOCAL_WAIT_MAX` seconds a turn, so a long restore still drops the oldest).
    (Before, a decide stage that had not taken anything for a second counted as a standby, and
    at start-up the join stage ran ahead: in this repository's backlog benchmark 2-16 % of the
    observation records were then decoded from the broker, which took 4 % of the worker's
    samples in the profiled round where 16 % were.)
    """

    __slots__ = (
        "_acked",
        "_entries",
        "_leased",
        "_room",
        "_size",
        "arrived",
        "limit",
        "taken",
        "taken_acked",
    )

    def __init__(self, limit: int = LOCAL_BATCH_BYTES) -> None:
        self._entries: dict[tuple[int, bytes], Batch] = {}
        #: Per partition: acknowledged offset → (key, value) of a record still held, in the
        #: order of the acknowledgements (which is the offsets' within a partition).
        self._acked: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        #: Set when a record was acknowledged; the decide stage clears it when it looks.
        self.arrived = asyncio.Event()
        #: Of :attr:`taken`, records taken on their acknowledgement, before any fetch.
        self.taken_acked = 0
        self._size = 0
        self.limit = limit
        #: Records taken from here instead of decoded.
        self.taken = 0
        self._leased: bool | None = None
        #: Set while less than half of :attr:`limit` waits here.
        self._room = asyncio.Event()
        self._room.set()

    @property
    def leased(self) -> bool | None:
        """Whether this process's decide stage holds the lease (so takes these batches): ``None``
        until its lease group first answers, then set at every assignment (the worker's).
        ``False`` drops what is kept; nothing is kept until it is ``None`` or ``True`` again."""
        return self._leased

    @leased.setter
    def leased(self, value: bool | None) -> None:
        self._leased = value
        if value is False:
            self._entries.clear()
            self._acked.clear()
            self._size = 0
            self._sized()

    @property
    def behind(self) -> bool:
        """Whether the decide stage has half of :attr:`limit` or more to take (never for a
        standby)."""
        return self.leased is not False and not self._room.is_set()

    async def caught_up(self) -> None:
        """Wait until less than half of :attr:`limit` waits here."""
        await self._room.wait()

    def _sized(self) -> None:
        if self._size * 2 >= self.limit:
            self._room.clear()
        else:
            self._room.set()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, partition: int, value: bytes, batch: Batch) -> None:
        """Keep ``batch``, sent as ``value`` to ``partition`` (not for a standby)."""
        if self._leased is False:
            return
        entries = self._entries
        key = (partition, value)
        if key not in entries:
            self._size += len(value)
        entries[key] = batch
        while self._size > self.limit and entries:
            old = next(iter(entries))
            del entries[old]
            self._size -= len(old[1])
        self._sized()

    def delivered(
        self, partition: int, key: bytes, value: bytes, delivery: asyncio.Future[Any]
    ) -> None:
        """The send of ``value`` (with ``key``) to ``partition`` finished (a done callback):
        note its offset if the broker acknowledged it and the batch is still held."""
        if delivery.cancelled() or delivery.exception() is not None:
            return
        if (partition, value) not in self._entries:
            return
        acked = self._acked.setdefault(partition, {})
        acked[delivery.result().offset] = (key, value)
        # Nobody taking them (a standby decide stage): forget the oldest, as add() does.
        while len(acked) > LOCAL_ACKED_MAX:
            del acked[next(iter(acked))]
        self.arrived.set()

    def acknowledged(self, partition: int, start: int) -> list[tuple[int, bytes, bytes]]:
        """The records acknowledged at ``start``, ``start + 1``, ... of ``partition`` whose
        batches are still held, up to the first gap: ``(offset, key, value)``. Offsets before
        ``start`` (already read) are forgotten; the batches stay until :meth:`take`."""
        acked = self._acked.get(partition)
        if not acked:
            return []
        for offset in [o for o in acked if o < start]:
            del acked[offset]
        got: list[tuple[int, bytes, bytes]] = []
        offset = start
        while (record := acked.pop(offset, None)) is not None:
            key, value = record
            if (partition, value) not in self._entries:
                break  # dropped (LOCAL_BATCH_BYTES): the fetch brings it
            got.append((offset, key, value))
            offset += 1
        self.taken_acked += len(got)
        return got

    def take(self, partition: int, value: bytes | None) -> Batch | None:
        """The batch sent as ``value`` to ``partition``, once; None if not here."""
        if value is None:
            return None
        batch = self._entries.pop((partition, value), None)
        if batch is None:
            return None
        self._size -= len(value)
        self._sized()
        self.taken += 1
        return batch


class _JoinFailedError(EngineFailedError):
    """A join partition failed on its input; ``ends`` (topic index → offset) is how far the
    input that may be at fault reaches."""

    def __init__(self, message: str, ends: dict[int, int]) -> None:
        super().__init__(message)
        self.ends = ends


@dataclass
class _Partition:
    """One owned join partition's state."""

    index: int
    joiner: Joiner
    run: str
    #: Next offset to read per topic index.
    read: dict[int, int] = field(default_factory=dict)
    clock: Clock = field(default_factory=Clock)
    #: ``"topic index/partition"`` of a re-routed record's origin → next origin offset.
    origins: dict[str, int] = field(default_factory=dict)
    #: Other join partitions' re-route horizons, from their markers: ``(event time, idle)``.
    horizons: dict[int, tuple[float, bool]] = field(default_factory=dict)
    #: Per other join partition: the run that sent the last marker read from it.
    marker_runs: dict[int, str] = field(default_factory=dict)
    #: Per join partition this one re-routed records to: the last send's delivery.
    rerouted_to: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    #: The horizon this partition last announced, and the watermark it last sent.
    announced: tuple[float, bool] | None = None
    sent: tuple[float, bool] | None = None
    #: The read positions (logical: ``epoch``) the last batch sent carried (the checkpoint's,
    #: after a restart).
    sent_read: dict[int, int] = field(default_factory=dict)
    #: Raised each time the broker is found to have lost this partition's input (module doc).
    epoch: int = 0
    #: Per topic index: how often the broker was found to have lost that topic's data (what
    #: the input's disorder counts keep apart: :meth:`JoinStage._observe_disorder`).
    resets: dict[int, int] = field(default_factory=dict)
    #: Per topic index: the last record read (the data-loss check's fingerprint).
    marks: dict[int, Mark] = field(default_factory=dict)
    #: Per topic index: since when it has been read to its end (the wall-clock time, in
    #: seconds, of the first fetch answer that said so).
    caught_since: dict[int, float] = field(default_factory=dict)
    seq: int = 0
    #: Input read since the last checkpoint; or only markers (module doc: Idle).
    dirty: bool = False
    markers_unsaved: bool = False
    #: This partition's disk store (``state_dir``), and the ids of its last checkpoint and the
    #: one before.
    store: RocksJoinStore | None = None
    checkpoint: str = ""
    parent: str = ""
    #: CPU seconds spent on this partition's input since its last checkpoint, what that
    #: checkpoint cost (CPU seconds), and when (monotonic seconds) it was taken or the partition
    #: was opened.
    work: float = 0.0
    cost: float = 0.0
    saved_at: float = field(default_factory=time.monotonic)

    def to_state(self) -> dict[str, Any]:
        return {
            "joiner": self.joiner.to_state(),
            "read": {str(t): o for t, o in self.read.items()},
            "seen": {str(t): ts for t, ts in self.clock.seen.items() if math.isfinite(ts)},
            "origins": self.origins,
            "epoch": self.epoch,
            "resets": {str(t): n for t, n in self.resets.items()},
            "marks": {str(t): m.to_state() for t, m in self.marks.items()},
            "horizons": {
                str(p): [h if math.isfinite(h) else None, idle]
                for p, (h, idle) in self.horizons.items()
            },
        }

    def logical(self, read: dict[int, int]) -> dict[int, int]:
        """Read positions in this epoch's numbering (what batches carry)."""
        base = self.epoch * EPOCH_SPAN
        return {t: base + o for t, o in read.items()}

    def restore(self, state: dict[str, Any]) -> None:
        self.joiner.restore(state["joiner"], self.store)
        self.read = {int(t): int(o) for t, o in state["read"].items()}
        self.clock.seen = {int(t): float(ts) for t, ts in state["seen"].items()}
        self.origins = {str(k): int(v) for k, v in state["origins"].items()}
        self.epoch = int(state.get("epoch", 0))
        self.resets = {int(t): int(n) for t, n in state.get("resets", {}).items()}
        self.marks = {int(t): Mark.from_state(m) for t, m in state.get("marks", {}).items()}
        self.horizons = {
            int(p): (-math.inf if h is None else float(h), bool(idle))
            for p, (h, idle) in state["horizons"].items()
        }


class JoinStage:
    """One join-stage process (see the module doc). ``await stage.run()``; set :attr:`stop`."""

    def __init__(
        self, config: Config, settings: WorkerSettings, metrics: Metrics | None = None
    ) -> None:
        from driftswitch.streams.service.worker import state_topic

        self.config = config
        self.settings = settings
        self.metrics = metrics
        self.topics = settings.topics
        self.group = f"{settings.group}.join"
        self.state_topic = state_topic(settings.topics)
        self.ingest = Ingest(self.topics.predictions.name, self.topics.outcomes.name)
        self.stop = asyncio.Event()
        self.parts: dict[int, _Partition] = {}
        self.counters: Counter[str] = Counter()
        #: Per input topic (index): how far behind its partition's newest event time each
        #: record came (:class:`~driftswitch.streams.pipeline.eventtime.Disorder`).
        self.disorder = {t: Disorder(config.join.allowed_lateness) for t in (PREDICTIONS, OUTCOMES)}
        #: Per (join partition, input topic): ``(resets, offset)`` up to which its records were
        #: counted in :attr:`disorder`, so that what a recovery or a reassignment to this process
        #: reads again (from the last checkpoint) is not counted twice; ``resets`` is the topic's
        #: :attr:`_Partition.resets` then: offsets name the same records only within one.
        self._disorder_counted: dict[tuple[int, int], tuple[int, int]] = {}
        #: Idle repeats (module doc: Idle): when the last went out; when the last check that
        #: the coordinator answered "current" was started, and the check under way; whether the
        #: partitions processed in this turn of the loop repeat.
        self._repeated_at = -math.inf
        self._confirmed_at = -math.inf
        self._confirming: asyncio.Future[None] | None = None
        self._repeating = False
        #: Seconds the last assignment took to restore its partitions; the last checkpoint's.
        self.recovery_seconds: float | None = None
        self.checkpoint_seconds = 0.0
        self._names = {
            PREDICTIONS: self.topics.predictions.name,
            OUTCOMES: self.topics.outcomes.name,
            REROUTED: self.topics.repartition.name,
        }
        self._index = {name: t for t, name in self._names.items()}
        self._partitions = self.topics.predictions.partitions
        self._outputs = self.topics.observations.partitions
        self._member: StageMember | None = None
        self._producer: Any = None
        self._deliveries: list[asyncio.Future[Any]] = []
        #: A checkpoint taken but still being written (module doc: Checkpoints), if any.
        self._writing = Writing()
        #: Set when a decide stage runs in the same process (:class:`LocalBatches`).
        self.local: LocalBatches | None = None
        #: Held while partitions are processed, checkpointed, assigned or revoked: aiokafka runs
        #: the rebalance callbacks in its own task, beside this stage's loop.
        self._lock = asyncio.Lock()
        #: Revoked partitions kept in memory (without a disk store): reused if the next assignment
        #: gives them back with no other owner in between.
        self._parked: dict[int, _Partition] = {}
        #: Input to replay with containment after a partition failed (module doc).
        self._suspects = Suspects()
        #: Input topics the event-time alignment holds back: ``(partition, topic) -> since``.
        self._held: dict[tuple[int, int], float] = {}
        #: The data-loss check, in the background (module doc: Input the broker lost).
        self._loss = LossCheck.of(settings.kafka, "join stage")
        #: Partitions assigned and paused until the data-loss check of the assignment answers.
        self._checking: set[Any] = set()
        self._checking_since = 0.0
        #: Where this process records its member id, for a process that replaces it
        #: (:mod:`~driftswitch.streams.service.startup`); only with a state directory.
        state_dir = settings.state_dir
        self._members_dir = state_dir / self.group if state_dir is not None else None
        #: Set by the rebalance callbacks: ends the loop's idle wait (module doc: Idle).
        self._rebalanced = asyncio.Event()

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Plain data for ``/healthz``: owned partitions, progress, re-routing, recovery."""
        return {
            "stage": "join",
            "group": self.group,
            "partitions": sorted(self.parts),
            "records": self.counters["records"],
            "events": self.ingest.accepted,
            "rejected": dict(self.ingest.rejected),
            "rerouted": self.counters["rerouted"],
            "rerouted_duplicates": self.counters["rerouted_duplicates"],
            "observations": self.counters["observations"],
            "checkpoints": self.counters["checkpoints"],
            "recoveries": self.counters["recoveries"],
            "input_resets": self.counters["input_resets"],
            "batches": self.counters["batches"],
            "observation_records": self.counters["observation_records"],
            # With the decide stage in this process: batches kept for it now, and records it
            # took from memory.
            "observation_batches_kept": len(self.local) if self.local is not None else 0,
            "observation_records_local": self.local.taken if self.local is not None else 0,
            # Of those, records taken on their acknowledgement, before any fetch brought them.
            "observation_records_acked": self.local.taken_acked if self.local is not None else 0,
            # Whether the decide stage in this process holds the lease (takes the batches kept
            # for it; None: no decide stage here, or its lease group has not answered yet).
            "local_decide_leased": self.local.leased if self.local is not None else None,
            "markers": self.counters["markers"],
            "disorder": {self._names[t]: d.status() for t, d in self.disorder.items()},
            "read": {
                str(p): {self._names[t]: o for t, o in sorted(part.read.items())}
                for p, part in self.parts.items()
            },
            "watermarks": {
                str(p): {
                    "watermark": _finite(part.sent[0]) if part.sent is not None else None,
                    "idle": part.sent[1] if part.sent is not None else False,
                    "seen": {
                        self._names[t]: _finite(v) for t, v in sorted(part.clock.seen.items())
                    },
                    "held": sorted(self._names[t] for i, t in self._held if i == p),
                }
                for p, part in self.parts.items()
            },
            "pending": {
                str(p): part.joiner.join.pending_predictions + part.joiner.join.pending_outcomes
                for p, part in self.parts.items()
            },
            "lag": self._lag(),
            "checkpoint_seconds": round(self.checkpoint_seconds, 6),
            "join_entries_lost": self.counters["join_entries_lost"],
            "store_bytes": sum(
                p.store.size_bytes() for p in self.parts.values() if p.store is not None
            ),
            "recovery_seconds": (
                round(self.recovery_seconds, 3) if self.recovery_seconds is not None else None
            ),
            "startup_seconds": STARTUP.seconds(),
        }

    def join_counters(self) -> tuple[dict[str, int], dict[str, int]]:
        """The join buffers' counters summed over the owned partitions (pending, joined,
        expired, evicted, duplicates), and expired predictions per ``flag/variant``."""
        counters: Counter[str] = Counter()
        expired: Counter[str] = Counter()
        for part in self.parts.values():
            join = part.joiner.join
            counters.update(join.counters())
            expired.update(join.expired_predictions)
        return dict(counters), dict(expired)

    def input_counters(self) -> dict[str, int]:
        """The joiners' counters summed over the owned partitions: events accepted
        (``predictions``, ``outcomes``) and the join's rejections by reason."""
        counters: Counter[str] = Counter({"predictions": 0, "outcomes": 0})
        for part in self.parts.values():
            counters.update(part.joiner.counters)
        return dict(counters)

    def _lag(self) -> dict[str, int]:
        """Per owned partition index: records on its topics not read yet (as of the last fetch
        answers)."""
        member = self._member
        try:
            consumer = member.consumer if member is not None else None
        except GroupError:  # not started, or stopped
            consumer = None
        if member is None or consumer is None:
            return {}
        lag: dict[str, int] = {}
        for i, part in self.parts.items():
            behind = 0
            for t, name in self._names.items():
                hw = consumer.highwater(member.tp(name, i))
                if hw is not None:
                    behind += max(0, hw - part.read.get(t, 0))
            lag[str(i)] = behind
        return lag

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, member: StageMember | None = None) -> None:
        """Join the group and process batches until :attr:`stop` is set.

        ``member``: the stage's group member already started (unbound) by
        :func:`~driftswitch.streams.service.startup.join_member` while the process was still
        starting, so that the group's rebalance overlapped the rest of the start; this stage
        takes it over (and stops it). One opened with other settings is stopped and replaced."""
        s = self.settings
        try:
            if member is not None and not self._fits(member):
                log.warning("join stage: the member started early does not fit; joining anew")
                await member.stop()
                member = None
            self._producer = await kafka.open_producer(
                s.kafka, linger_ms=5, acks="all", max_batch_size=PRODUCER_BATCH_BYTES
            )
            STARTUP.mark("producer")
            if member is None:
                member = await join_member(
                    s.kafka,
                    self.group,
                    self.topics,
                    self._members_dir,
                    session_timeout_ms=s.session_timeout_ms,
                    heartbeat_interval_ms=s.heartbeat_interval_ms,
                )
            self._member = member
            member.bind(self._assigned, self._revoked)
            await self._loop()
        finally:
            if member is not None:
                with contextlib.suppress(Exception):
                    await member.stop()  # revokes: final checkpoints
                    if self._members_dir is not None:
                        forget_member(self._members_dir)  # it left the group
            with contextlib.suppress(Exception):
                await self._writing.settle()  # not revoked (the loop failed): whatever it comes to
            await self._loss.close()
            if self._producer is not None:
                await kafka.stop_quietly(self._producer)

    def _fits(self, member: StageMember) -> bool:
        """Whether ``member`` (started early) is this stage's: group, topics and session."""
        s, options = self.settings, member.options
        return (
            member.group == self.group
            and member.topics
            == (self._names[PREDICTIONS], self._names[OUTCOMES], self._names[REROUTED])
            and options.get("session_timeout_ms") == s.session_timeout_ms
            and options.get("heartbeat_interval_ms") == s.heartbeat_interval_ms
        )

    async def _loop(self) -> None:
        s = self.settings
        assert self._member is not None
        stop_wait = asyncio.ensure_future(self.stop.wait())
        rebalanced = asyncio.ensure_future(self._rebalanced.wait())
        try:
            while not self.stop.is_set():
                await self._wait_for_decide()
                quiet = self._quiet()
                fetch = asyncio.ensure_future(
                    self._member.getmany(
                        *self._aligned(),
                        timeout_ms=s.idle_poll_ms if quiet else s.poll_ms,
                        max_records=min(s.max_records, JOIN_MAX_RECORDS),
                    )
                )
                waits = {fetch, stop_wait, rebalanced} if quiet else {fetch, stop_wait}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if rebalanced.done():
                    self._rebalanced.clear()
                    rebalanced = asyncio.ensure_future(self._rebalanced.wait())
                if not fetch.done():
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fetch
                    if self.stop.is_set():
                        break
                    continue  # a rebalance ended the idle wait: nothing was fetched
                # A batch fetched before a rebalance is dropped (processing() gives {}): its
                # partitions were checkpointed and sought back, so it will be read again.
                async with self._member.processing(fetch.result()) as batch, self._lock:
                    if batch:
                        self.counters["batches"] += 1
                    await self._process(batch)
                    self._check_input(idle=not batch)
                    self._writing.check()
                    due = self._to_checkpoint(time.monotonic())
                    if due:
                        await self._checkpoint(due, behind=True)
                # Let the other tasks of this process run: with records already fetched,
                # getmany and the producer's sends return without suspending, so a backlog
                # would otherwise keep the event loop until it is read (the decide stage of
                # --stage all, the HTTP server and the consumers' fetches waited).
                await asyncio.sleep(0)
        finally:
            stop_wait.cancel()
            rebalanced.cancel()
            if self._confirming is not None:
                self._confirming.cancel()

    async def _wait_for_decide(self) -> None:
        """With a decide stage in this process that has fallen behind (:attr:`LocalBatches.
        behind`), wait until it has caught up, at most :data:`LOCAL_WAIT_MAX` seconds, or until
        the stage stops."""
        local = self.local
        if local is not None and local.behind:
            caught_up = asyncio.ensure_future(local.caught_up())
            stopping = asyncio.ensure_future(self.stop.wait())
            try:
                await asyncio.wait(
                    {caught_up, stopping},
                    timeout=LOCAL_WAIT_MAX,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                caught_up.cancel()
                stopping.cancel()

    def _quiet(self) -> bool:
        """Whether nothing is left to do until records arrive (module doc: Idle): every owned
        partition has sent and announced itself idle and has nothing to checkpoint, nothing is
        held back or paused for a check, and no data-loss check waits to be applied.

        A fetch's records end a ``getmany`` wait at once, whatever its timeout (markers of the
        other processes' partitions are records too), so the loop then waits up to
        ``idle_poll_ms`` instead of ``poll_ms``: the turns of an idle loop cost CPU while the
        only things they could start are the idle data-loss check (every ``CHECK_INTERVAL``
        seconds); a rebalance ends the wait too (its callbacks set :attr:`_rebalanced`), so that
        newly assigned partitions send their watermarks at once."""
        if self._held or self._checking or self._loss.pending:
            return False
        return all(
            not part.dirty
            and part.sent is not None
            and part.sent[1]
            and part.announced is not None
            and part.announced[1]
            for part in self.parts.values()
        )

    def _aligned(self) -> list[Any]:
        """The topic partitions to read from next (module doc: Event-time alignment), or ``[]``
        for all of them: every owned one but the input topics whose event time is more than
        :data:`ALIGNMENT` seconds ahead of the slowest input topic with records waiting, each
        held back for at most :data:`ALIGNMENT_HOLD` seconds at a time."""
        member = self._member
        if member is None or len(self.parts) < 1:
            return []
        now = time.monotonic()
        waiting: list[float] = []
        times: dict[tuple[int, int], float] = {}
        for i, part in self.parts.items():
            for t in (PREDICTIONS, OUTCOMES):
                seen = part.clock.seen.get(t)
                if seen is None:
                    continue
                times[i, t] = seen
                hw = member.consumer.highwater(member.tp(self._names[t], i))
                if hw is not None and part.read.get(t, 0) < hw:
                    waiting.append(seen)
        ahead = held_back(times, waiting, self._held, now)
        if not ahead:
            return []
        return [
            member.tp(self._names[t], i)
            for i in self.parts
            for t in (PREDICTIONS, OUTCOMES, REROUTED)
            if (i, t) not in ahead
        ]

    def _to_checkpoint(self, now: float) -> list[_Partition]:
        """The partitions the loop checkpoints now (module doc: Checkpoints). With the entries
        in memory, only the one due that has waited longest, and none while the last checkpoint
        is still being written: a turn of the loop encodes at most one partition's state and
        never waits for a write. (Taking every partition due at once, the loop stopped for
        45-85 ms about twice a second at 34k events/s with 4 partitions, and the decide stage
        in the same process with it.) With a disk store, every one due: its checkpoint commits
        in the loop anyway."""
        due = [p for p in self.parts.values() if self._due(p, now)]
        if not due or any(p.store is not None for p in due):
            return due
        if self._writing.pending:
            return []
        return [min(due, key=_SAVED_AT)]

    def _due(self, part: _Partition, now: float) -> bool:
        """Whether ``part`` is to be checkpointed now (module doc: Checkpoints)."""
        waited = now - part.saved_at
        if not part.dirty:
            return part.markers_unsaved and waited >= MARKERS_CHECKPOINT_INTERVAL
        if waited < self.settings.snapshot_interval:
            return False
        return part.work >= WORK_PER_CHECKPOINT * part.cost or waited >= MAX_SNAPSHOT_INTERVAL

    async def reconfigure(self, config: Config) -> None:
        """Take a new (validated) config: its flags, variants and segment attributes decide what
        the join accepts from the next batch on; pending entries and positions stay. Flags the
        config dropped are rejected as unknown from then on (their pending entries join and are
        skipped by the decide stage, which no longer knows them either). A new
        ``join.allowed_lateness`` is a new bucket bound of the input disorder's counts, which
        start again (Prometheus's ``rate`` takes that as a counter reset)."""
        async with self._lock:
            lateness = config.join.allowed_lateness
            if lateness != self.config.join.allowed_lateness:
                self.disorder = {t: Disorder(lateness) for t in self.disorder}
            self.config = config
            for part in [*self.parts.values(), *self._parked.values()]:
                part.joiner.config = config
                part.joiner.flags = build_flags(config)
                part.joiner.join.ttl = config.join.ttl
                part.joiner.join.max_pending = config.join.max_pending
        log.warning("join stage: config reloaded (%d flags)", len(config.flags))

    # -- partitions coming and going ---------------------------------------------------------

    async def _assigned(self, indexes: set[int]) -> None:
        async with self._lock:
            await self._assign(indexes)
        self._rebalanced.set()  # ends an idle wait: the new partitions have watermarks to send

    async def _assign(self, indexes: set[int]) -> None:
        assert self._member is not None
        t0 = time.monotonic()
        for step in ("join_sent", "joined", "synced"):
            if step in self._member.timeline:
                STARTUP.mark_at(step, self._member.timeline[step])
        STARTUP.mark("assigned")
        self._record_member()
        # aiokafka may fetch for the new partitions while this runs: hold them until each one
        # has its state and position.
        consumer = self._member.consumer
        paused = {self._member.tp(name, i) for i in indexes for name in self._names.values()}
        consumer.pause(*paused)
        kept = self._member.kept
        load = [i for i in sorted(indexes) if not (i in kept and i in self._parked)]
        saved = await self._load(load) if load else {}
        for i in sorted(indexes):
            part = self._parked.pop(i, None) if i in kept else None
            if part is None:
                part = self._open(i, saved.get(i))
            self.parts[i] = part
            await self._seek(part)
        self._parked.clear()
        # The partitions opened from a checkpoint stay paused until the data-loss check answers
        # (nothing is read before it says whether their data is there); it runs in the
        # background, so this callback returns at once. Those kept in memory read on: their
        # positions are this process's own, and a reset skips a position read on since.
        self._checking = {tp for tp in paused if tp.partition in load}
        self._checking_since = time.monotonic()
        self._start_check(sorted(indexes))
        consumer.resume(*(paused - self._checking))
        self.recovery_seconds = time.monotonic() - t0
        STARTUP.mark("restored")
        if not self._checking:
            STARTUP.mark("reading")
        log.info(
            "join stage: partitions %s (restored %s from checkpoints) in %.2f s",
            sorted(indexes),
            sorted(saved),
            self.recovery_seconds,
        )

    def _record_member(self) -> None:
        """Record this process's member id in the state directory (module doc: State on disk)."""
        if self._members_dir is None or self._member is None or not self._member.member_id:
            return
        try:
            self._members_dir.mkdir(parents=True, exist_ok=True)
            record_member(self._members_dir, self._member.member_id)
        except OSError as err:  # the stores on the same disk will fail louder
            log.warning("join stage: cannot record the member id in %s: %r", self._members_dir, err)

    def _start_check(self, indexes: list[int]) -> None:
        """Start the data-loss check (module doc) of the read positions and marks of the owned
        partitions among ``indexes``, superseding one still running."""
        assert self._member is not None
        positions: dict[Any, int] = {}
        marks: dict[Any, Mark] = {}
        for i in indexes:
            part = self.parts.get(i)
            if part is None:
                continue
            for t, name in self._names.items():
                tp = self._member.tp(name, i)
                positions[tp] = part.read.get(t, 0)
                if t in part.marks:
                    marks[tp] = part.marks[t]
        self._loss.start(positions, marks)

    def _check_input(self, idle: bool) -> None:
        """Apply the data-loss check's answer when it has come, and resume the partitions held
        for it; with ``idle`` input, start a new check every ``CHECK_INTERVAL`` seconds."""
        checked = self._loss.poll()
        if checked is not None:
            self._checked(checked)
        elif idle and self._loss.due():
            self._start_check(sorted(self.parts))

    def _checked(self, checked: Checked) -> None:
        """A check's answer: reset what it found lost, and resume the partitions held for it
        that are still assigned (a later rebalance may have taken them; a failed check resumes
        them too, and the idle checks look again)."""
        assert self._member is not None
        self._reset_lost(checked)
        held, self._checking = self._checking, set()
        consumer = self._member.consumer
        still = held & set(consumer.assignment())
        if still:
            consumer.resume(*still)
            STARTUP.mark("reading")
            log.info(
                "join stage: partitions %s checked for lost input in %.2f s: reading",
                sorted({tp.partition for tp in still}),
                time.monotonic() - self._checking_since,
            )

    def _reset_lost(self, checked: Checked) -> None:
        """Resume each topic whose data the broker lost from the start of its new data; its
        partition moves to a new epoch (once per check)."""
        assert self._member is not None
        moved: set[int] = set()
        for tp, found in sorted(checked.lost.items(), key=lambda x: (x[0].partition, x[0].topic)):
            part = self.parts.get(tp.partition)
            t = self._index[tp.topic]
            if part is None or part.read.get(t, 0) != checked.positions.get(tp):
                continue  # gone, or read on since the check started: the data is there after all
            log.error("join stage: %s", describe_lost(tp.topic, tp.partition, part.read[t], found))
            if self.metrics is not None:
                self.metrics.record_input_reset(tp.topic, tp.partition)
            self.counters["input_resets"] += 1
            part.resets[t] = part.resets.get(t, 0) + 1
            if part.index not in moved:
                part.epoch += 1
                moved.add(part.index)
            self._member.seek_to_start(tp.topic, tp.partition)
            part.read[t] = 0
            part.marks.pop(t, None)
            part.dirty = True

    def _check_rewound(self, part: _Partition, topics: dict[int, list[Any]]) -> None:
        """Records that start below the position read to: the consumer found that position out
        of range (the broker lost the data) and started again at the new data's beginning. The
        partition moves to a new epoch, as when :meth:`_check_input` finds it."""
        moved = False
        for t, recs in topics.items():
            read = part.read.get(t, 0)
            if not recs or recs[0].offset >= read:
                continue
            name = self._names[t]
            log.error("join stage: %s", describe_rewound(name, part.index, read, recs[0].offset))
            if self.metrics is not None:
                self.metrics.record_input_reset(name, part.index)
            self.counters["input_resets"] += 1
            part.resets[t] = part.resets.get(t, 0) + 1
            if not moved:
                part.epoch += 1
                moved = True
            part.marks.pop(t, None)
            part.dirty = True  # the new epoch is checkpointed as input would be

    async def _seek(self, part: _Partition) -> None:
        """Seek the partition's topics to its read positions (their start where it has none:
        :meth:`StageMember.seek_to_start`)."""
        assert self._member is not None
        for t, name in self._names.items():
            offset = part.read.get(t)
            if offset is None:
                self._member.seek_to_start(name, part.index)
                part.read[t] = 0
            else:
                self._member.seek(name, part.index, offset)

    def _open(self, index: int, snap: Snapshot | None) -> _Partition:
        """A join partition continuing from ``snap`` (the state topic's latest for it), on its
        disk store when there is one (module doc: State on disk)."""
        store: RocksJoinStore | None = None
        if self.settings.state_dir is not None:
            store = RocksJoinStore(self.settings.state_dir / self.group / str(index))
            snap = self._local(index, snap, store)
        part = _Partition(
            index, Joiner(self.config, track=True, join_store=store), run=uuid.uuid4().hex
        )
        part.store = store
        if snap is not None:
            part.restore(snap.engine)
            part.sent_read = part.logical(part.read)
            part.seq = snap.seq
            part.checkpoint, part.parent = snap.checkpoint, snap.parent
        return part

    def _local(self, index: int, snap: Snapshot | None, store: RocksJoinStore) -> Snapshot | None:
        """The checkpoint to continue from given the topic's latest and the disk store's."""
        resumed, lost = continue_on_store(snap, store, lambda s: s.engine["joiner"]["join"])
        self.counters["join_entries_lost"] += lost
        return resumed

    async def _revoked(self, indexes: set[int]) -> None:
        async with self._lock:
            await self._revoke(indexes)
        self._rebalanced.set()

    async def _revoke(self, indexes: set[int]) -> None:
        # A check still running is of partitions leaving (rebalances are eager: all of them);
        # the next assignment starts its own.
        self._loss.cancel()
        self._checking.clear()
        parts = [self.parts[i] for i in sorted(indexes) if i in self.parts]
        await self._checkpoint(parts, recover=False)
        for part in parts:
            del self.parts[part.index]
            if part.store is None:
                self._parked[part.index] = part
            else:
                # Another process on this disk may open it next: release it now (a partition
                # that comes back is reopened from its checkpoint, which is cheap on disk).
                part.store.close()

    async def _load(self, indexes: list[int]) -> dict[int, Snapshot]:
        read = await kafka.read_partitions(
            self.settings.kafka, self.state_topic.name, [0], max_partition_fetch_bytes=4 << 20
        )
        records = next(iter(read.records.values()), [])
        found: dict[int, Snapshot] = {}
        for i in indexes:
            snap = latest_snapshot(records, self._key(i))
            if snap is not None:
                found[i] = snap
        return found

    def _key(self, index: int) -> bytes:
        return f"{self.group}/{index}".encode()

    async def _checkpoint(
        self, parts: list[_Partition], recover: bool = True, behind: bool = False
    ) -> None:
        """Write the state of every changed partition of ``parts`` once everything sent so far
        is acknowledged and the coordinator confirms this member is current.

        With ``behind`` (the loop's periodic checkpoints) and the entries in memory, the state
        is taken now and written by a task of its own (module doc: Checkpoints), so the loop
        goes on while the acknowledgements and the coordinator's answer come; with a disk store,
        or without ``behind``, this returns once the checkpoint is written. Either way it first
        waits for the checkpoint still being written, if any: they go out in order.

        A partition whose state does not encode is not checkpointed; with ``recover`` it is
        reopened from its last checkpoint and its input since replayed with containment (module
        doc), otherwise (it is leaving this process) its next owner does the same."""
        await self._writing.settle()
        now = time.monotonic()
        # Markers alone only once due (module doc: Idle), at a revocation too: the repeats leave
        # nearly every idle partition with some, and a checkpoint serialises its pending entries.
        dirty = [p for p in parts if p.dirty or self._due(p, now)]
        if not dirty:
            return
        started = time.monotonic()
        if behind and all(p.store is None for p in dirty):
            # Everything sent until now, and only that, is what this state has sent.
            deliveries, self._deliveries = self._deliveries, []
            taken, failed = self._take(dirty)
            self._writing.start(self._write(taken, deliveries, started))
        else:
            await self._flush()
            if not await self._current(dirty):
                return
            taken, failed = self._take(dirty)
            await self._send(taken, started)
        for part, detail in failed:
            message = f"checkpointing join partition {part.index} failed: {detail}"
            if recover:
                await self._recover(part, _JoinFailedError(message, dict(part.read)))
            else:
                log.error("%s; its next owner replays from the last checkpoint", message)

    async def _current(self, dirty: list[_Partition]) -> bool:
        """Whether the group coordinator confirms this member is current (else, logged)."""
        assert self._member is not None
        membership = await self._member.check()
        if membership is Membership.CURRENT:
            return True
        log.warning(
            "join stage: not checkpointing partitions %s: %s",
            [p.index for p in dirty],
            membership.value,
        )
        return False

    def _take(
        self, dirty: list[_Partition]
    ) -> tuple[list[tuple[_Partition, list[Chunk]]], list[tuple[_Partition, str]]]:
        """Each partition's state, encoded now (with a disk store: committed to it, entries with
        the document, see :meth:`_local`), and the partitions whose state did not encode."""
        taken: list[tuple[_Partition, list[Chunk]]] = []
        failed: list[tuple[_Partition, str]] = []
        for part in dirty:
            cpu = time.thread_time()
            checkpoint = uuid.uuid4().hex
            try:
                snap = Snapshot(
                    part.seq + 1,
                    part.to_state(),
                    {self._names[t]: {part.index: o} for t, o in part.read.items()},
                    checkpoint=checkpoint,
                    parent=part.checkpoint,
                )
                chunks = encode_chunks(snap)
            except Exception as exc:
                failed.append((part, describe(exc)))
                continue
            part.seq += 1
            if part.store is not None:
                # Entries first, with the document (see _local).
                part.store.commit(b"".join(value for value, _ in chunks))
            part.checkpoint, part.parent = checkpoint, part.checkpoint
            part.cost = time.thread_time() - cpu
            part.dirty = part.markers_unsaved = False
            part.work = 0.0
            part.saved_at = time.monotonic()
            taken.append((part, chunks))
        return taken, failed

    async def _send(self, taken: list[tuple[_Partition, list[Chunk]]], started: float) -> None:
        """Send checkpoints to the state topic and wait for the broker's acknowledgements."""
        sends = []
        for part, chunks in taken:
            for value, headers in chunks:
                sends.append(
                    await self._producer.send(
                        self.state_topic.name, value, key=self._key(part.index), headers=headers
                    )
                )
        await asyncio.gather(*sends)
        self.counters["checkpoints"] += len(taken)
        self.checkpoint_seconds = time.monotonic() - started

    async def _write(
        self,
        taken: list[tuple[_Partition, list[Chunk]]],
        deliveries: list[asyncio.Future[Any]],
        started: float,
    ) -> None:
        """Write checkpoints taken earlier (:meth:`_checkpoint` ``behind``): once the records
        sent before they were taken are acknowledged and the member is current. Otherwise the
        partitions are marked changed again, for the next checkpoint."""
        if deliveries:
            await asyncio.gather(*deliveries)
        if not await self._current([part for part, _ in taken]):
            for part, _ in taken:
                part.dirty = True
            return
        await self._send(taken, started)

    async def _flush(self) -> None:
        deliveries, self._deliveries = self._deliveries, []
        if deliveries:
            await asyncio.gather(*deliveries)

    # -- the hot path ------------------------------------------------------------------------

    async def _process(self, batch: dict[Any, list[Any]]) -> None:
        self._repeating = self._repeat_due(time.monotonic())
        try:
            await self._process_partitions(batch)
        finally:
            self._repeating = False

    def _repeat_due(self, now: float) -> bool:
        """Whether the idle partitions repeat what they said in this turn (module doc: Idle):
        every :data:`IDLE_REPEAT` seconds, once :meth:`_confirmed`."""
        if now - self._repeated_at < IDLE_REPEAT or self._member is None:
            return False
        if self._confirmed(now):
            self._repeated_at = now
            return True
        return False

    def _confirmed(self, now: float) -> bool:
        """Whether the group coordinator has confirmed that this member is current on a check
        started at most :data:`CONFIRMED_WITHIN` seconds ago; if not, a check starts in the
        background and the caller waits for nothing (it asks again on a later turn). A process
        woken from a pause that cost it its partitions (a zombie) is not confirmed: its last
        confirmation is older than the pause, and the coordinator's next answer expels it."""
        if now - self._confirmed_at <= CONFIRMED_WITHIN:
            return True
        if self._member is not None and (self._confirming is None or self._confirming.done()):
            self._confirming = asyncio.ensure_future(self._confirm(self._member))
        return False

    async def _confirm(self, member: StageMember) -> None:
        started = time.monotonic()
        try:
            if await member.check() is Membership.CURRENT:
                self._confirmed_at = started
        except Exception:  # unconfirmed, so no repeat; the loop meets a failed member itself
            log.debug("join stage: membership check for the idle repeats failed", exc_info=True)

    async def _process_partitions(self, batch: dict[Any, list[Any]]) -> None:
        by_index: dict[int, dict[int, list[Any]]] = {}
        # Partitions waiting for their data-loss check are not processed yet (see _assign).
        waiting = {tp.partition for tp in self._checking}
        for tp, records in batch.items():
            if tp.partition not in self.parts or tp.partition in waiting:
                # Fetched before the partition was set up (or after it was revoked): read again.
                if (
                    records
                    and self._member is not None
                    and tp in self._member.consumer.assignment()
                ):
                    self._member.consumer.seek(tp, records[0].offset)
                continue
            by_index.setdefault(tp.partition, {})[self._index[tp.topic]] = records
        # Also the owned partitions with nothing new: their watermark may have moved (caught up).
        for i in self.parts:
            if i not in waiting:
                by_index.setdefault(i, {})
        for i, topics in sorted(by_index.items()):
            part = self.parts.get(i)
            if part is not None:
                cpu = time.thread_time()
                try:
                    await self._process_partition(part, topics)
                except _JoinFailedError as err:
                    await self._recover(part, err)
                part.work += time.thread_time() - cpu

    async def _recover(self, part: _Partition, err: _JoinFailedError) -> None:
        """Reopen a failed partition from its last checkpoint (as a new owner would: a new run,
        the disk store back at its last commit) and replay its input since with containment, up
        to ``err.ends`` at least (module doc: Poison containment)."""
        i = part.index
        log.error(
            "join partition %d: %s: restoring its last checkpoint and replaying with containment",
            i,
            err,
        )
        self.counters["recoveries"] += 1
        if self.metrics is not None:
            self.metrics.record_recovery()
        await self._writing.settle()  # the last checkpoint is the one written
        suspect = {t: max(part.read.get(t, 0), err.ends.get(t, 0)) for t in {*part.read, *err.ends}}
        del self.parts[i]
        if part.store is not None:
            part.store.close()  # uncommitted changes go: the store is back at its last commit
        saved = await self._load([i])
        fresh = self._open(i, saved.get(i))
        self.parts[i] = fresh
        await self._seek(fresh)
        self._suspects.add(
            {self._names[t]: {i: o} for t, o in fresh.read.items()},
            {self._names[t]: {i: o} for t, o in suspect.items()},
        )

    async def _process_partition(self, part: _Partition, topics: dict[int, list[Any]]) -> None:
        """Decode, re-route, join and emit one batch of a partition; :class:`_JoinFailedError` if
        the join or the encoding of its observations fails (nothing of the batch was sent then,
        besides re-routed and dead-lettered records, which are sent again idempotently)."""
        n = self._partitions
        i = part.index
        self._check_rewound(part, topics)
        base = part.epoch * EPOCH_SPAN
        own = topics.get(PREDICTIONS, []) + topics.get(OUTCOMES, [])
        events: list[InputEvent] = []
        positions: list[tuple[int, int]] = []
        records: list[Any] = []  # parallel to events: the record to dead-letter if rejected
        decoded: Decoded | None = None
        if own:
            decoded = self.ingest.decode(own)
            reject_future(decoded, self.ingest, self.config.join.max_clock_skew, time.time())
            accepted, index = decoded.events, decoded.index
            # ``own`` holds the predictions, then the outcomes: the events before ``split``
            # came from the predictions topic. Each topic's clock takes its latest event time,
            # and the topic's disorder counts how far behind it each event came.
            split = bisect_left(index, len(topics.get(PREDICTIONS, ())))
            for t, first, end in ((PREDICTIONS, 0, split), (OUTCOMES, split, len(accepted))):
                if end > first:
                    self._observe_disorder(part, t, accepted, first, end, own, index)
            targets = join_partitions(map(_REQUEST_ID, accepted), n)
            if targets.count(i) == len(targets):  # nothing to re-route: the usual batch
                events = list(accepted)
                positions = [(PREDICTIONS, base + own[j].offset) for j in index[:split]]
                positions += [(OUTCOMES, base + own[j].offset) for j in index[split:]]
                records = [own[j] for j in index]
            else:
                for k, ev in enumerate(accepted):
                    rec = own[index[k]]
                    t = PREDICTIONS if k < split else OUTCOMES
                    if targets[k] != i:
                        await self._reroute(part, rec, t, targets[k], base)
                        self.ingest.accepted -= 1  # counted where it is joined
                        continue
                    events.append(ev)
                    positions.append((t, base + rec.offset))
                    records.append(rec)
            await self._deadletter(decoded)
        # Topics that brought records to join: not at their end, whatever the last fetch
        # answers said (a fetch that returns every record up to the end never shows the topic
        # behind), so their idle time starts again (``_busy``). Markers are not such records.
        fresh = {t for t in (PREDICTIONS, OUTCOMES) if topics.get(t)}
        for rec in topics.get(REROUTED, []):
            got = self._rerouted(part, rec)
            if got is not None:
                events.append(got[0])
                positions.append((REROUTED, base + rec.offset))
                records.append(got[1])
                fresh.add(REROUTED)
        for t in fresh:
            part.caught_since.pop(t, None)
        observations: list[Observation] = []
        if events:
            read = [rec for recs in topics.values() for rec in recs]
            if self._suspects.covers(read):
                observations, rejections = await self._join_contained(
                    part, events, positions, records
                )
                self._suspects.passed(read)
            else:
                try:
                    observations, rejections = part.joiner.process(events, positions)
                except Exception as exc:
                    raise _JoinFailedError(
                        f"joining a batch failed: {describe(exc)}", _ends(topics)
                    ) from exc
            for r in rejections:
                rec = records[r.index]
                self.ingest.accepted -= 1
                rejected = self.ingest.reject(_source(rec), rec.key, rec.value, r.reason, r.detail)
                await self._send_deadletter(rejected)
        for t, recs in topics.items():
            if recs:
                part.read[t] = recs[-1].offset + 1
                part.marks[t] = mark_of(recs[-1])
        fetched = any(topics.values())
        if fetched:
            self.counters["records"] += sum(len(r) for r in topics.values())
        # Input: records to join. What else the repartition topic brings (markers, records
        # read before) changes what this partition says only through its horizons.
        data = bool(own) or REROUTED in fresh
        if data:
            part.dirty = True
        elif fetched:
            part.markers_unsaved = True
        await self._emit(part, observations, changed=data)

    def _observe_disorder(
        self,
        part: _Partition,
        t: int,
        accepted: list[InputEvent],
        first: int,
        end: int,
        own: list[Any],
        index: list[int],
    ) -> None:
        """Move topic ``t``'s clock on with ``accepted[first:end]`` (read from ``own[index[k]]``,
        in offset order) and count their disorder, except for the records this process already
        counted (read again from the last checkpoint after a recovery or a reassignment)."""
        newest = part.clock.seen.get(t, -math.inf)
        start = first
        resets = part.resets.get(t, 0)
        then, counted = self._disorder_counted.get((part.index, t), (resets, 0))
        if then == resets and own[index[first]].offset < counted:
            start = bisect_left(range(first, end), counted, key=lambda k: own[index[k]].offset)
            start += first
            newest = max(newest, *map(_EVENT_TIME, accepted[first:start]))
        part.clock.observe(
            t, self.disorder[t].observe(newest, map(_EVENT_TIME, accepted[start:end]))
        )
        last = own[index[end - 1]].offset + 1
        if then != resets or last > counted:
            self._disorder_counted[(part.index, t)] = (resets, last)

    async def _join_contained(
        self,
        part: _Partition,
        events: list[InputEvent],
        positions: list[tuple[int, int]],
        records: list[Any],
    ) -> tuple[list[Observation], list[Any]]:
        """The join of a suspect batch (after a failure): events that fail on their own are left
        out and dead-lettered as ``internal_error``."""
        part.joiner, observations, rejections, poisoned = join_isolating(
            part.joiner, events, positions
        )
        if part.store is not None:
            # Containment continues on a copy of the joiner: its store view is the one to commit.
            join = part.joiner.join
            assert isinstance(join, StoredJoinBuffer)
            assert isinstance(join.store, RocksJoinStore)
            part.store = join.store
        for p in poisoned:
            rec = records[p.index]
            log.error(
                "event at %s[%d]@%d left out: it breaks the join: %s",
                rec.topic,
                rec.partition,
                rec.offset,
                p.detail,
            )
            self.ingest.accepted -= 1
            rejected = self.ingest.reject(
                _source(rec), rec.key, rec.value, INTERNAL_ERROR, p.detail
            )
            await self._send_deadletter(rejected)
        return observations, rejections

    def _rerouted(self, part: _Partition, rec: Any) -> tuple[InputEvent, Any] | None:
        """A record of the repartition topic: a marker (None), a duplicate (None), or the event
        and a record standing for its origin (what a rejection dead-letters)."""
        headers = dict(rec.headers or ())
        if HEADER_MARKER in headers:
            try:
                doc = orjson.loads(rec.value)
                horizon = doc["horizon"]
                source = int(doc["source"])
                part.horizons[source] = (
                    -math.inf if horizon is None else float(horizon),
                    bool(doc["idle"]),
                )
                part.marker_runs[source] = str(doc.get("run", ""))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                log.warning("repartition marker at offset %d undecodable: %s", rec.offset, err)
            return None
        origin = headers.get(HEADER_ORIGIN)
        try:
            t, p, offset = (int(x) for x in (origin or b"").decode().split("/"))
            name = self._names[t]
        except (ValueError, KeyError):
            log.warning("repartition record at offset %d has no valid origin: skipped", rec.offset)
            return None
        key = f"{t}/{p}"
        if offset < part.origins.get(key, 0):
            self.counters["rerouted_duplicates"] += 1
            return None
        part.origins[key] = offset + 1
        standin = InputRecord(name, p, offset_of(offset), rec.key, rec.value)
        decoded = self.ingest.decode([standin])
        if not decoded.events:  # checked where it was first read; only a changed decoder gets here
            for rejected in decoded.rejected:
                log.warning("re-routed record %s refused: %s", origin, rejected.reason)
            return None
        return decoded.events[0], standin

    async def _reroute(self, part: _Partition, rec: Any, t: int, target: int, base: int) -> None:
        """Send ``rec`` to its join partition; its origin offset is logical (``base``: the
        sender's epoch), so that a reset input's records are not taken for ones sent before."""
        headers = [(HEADER_ORIGIN, f"{t}/{rec.partition}/{base + rec.offset}".encode())]
        delivery = await self._producer.send(
            self._names[REROUTED], rec.value, key=rec.key, partition=target, headers=headers
        )
        self._deliveries.append(delivery)
        part.rerouted_to[target] = delivery
        self.counters["rerouted"] += 1

    def _horizon(self, part: _Partition, other: int) -> tuple[float, bool]:
        """Join partition ``other``'s re-route horizon as ``part`` may use it (module doc:
        Watermarks): the one its last marker carried or, when this process owns ``other`` too,
        the one it computed last, once ``part`` has read a marker of its current run and every
        record it re-routed to ``part`` since."""
        marked = part.horizons.get(other, (-math.inf, False))
        owner = self.parts.get(other)
        if owner is None or owner.announced is None or part.marker_runs.get(other) != owner.run:
            return marked
        delivery = owner.rerouted_to.get(part.index)
        if delivery is not None:
            if not delivery.done() or delivery.cancelled() or delivery.exception() is not None:
                return marked
            if part.read.get(REROUTED, 0) <= delivery.result().offset:
                return marked
        return owner.announced

    async def _emit(self, part: _Partition, observations: list[Observation], changed: bool) -> None:
        """Send the batch's observations to the observations topic (one batch per partition,
        even empty: the watermark), and this partition's re-route horizon to the others."""
        busy = [t for t in (PREDICTIONS, OUTCOMES) if self._busy(part, t)]
        horizon = part.clock.watermark(busy)
        times = [part.clock.seen.get(t, -math.inf) for t in busy]
        for p in range(self._partitions):
            if p == part.index:
                continue
            h, idle = self._horizon(part, p)
            if not idle:
                times.append(h)
        idle = not times and not self._busy(part, REROUTED)
        # Turning idle needs a fresh confirmation that this process still owns its partitions
        # (module doc: Idle); until it comes, the partition stays busy where it is.
        announced_idle = (part.announced or _BUSY)[1]
        sent_idle = (part.sent or _BUSY)[1]
        turning = (horizon[1] and not announced_idle) or (idle and not sent_idle)
        if turning and not self._confirmed(time.monotonic()):
            horizon = (horizon[0], horizon[1] and announced_idle)
            idle = idle and sent_idle
        watermark = min(times) if times else max(part.clock.seen.values(), default=-math.inf)
        send = changed or bool(observations) or (watermark, idle) != part.sent
        send = send or (idle and self._repeating)  # module doc: Idle
        # Encoded before anything is sent: observations that do not encode fail the batch whole.
        try:
            records = self._encode(part, observations, watermark, idle) if send else []
        except Exception as exc:
            raise _JoinFailedError(f"encoding observations failed: {describe(exc)}", {}) from exc
        # Counted before the first send can suspend: /healthz never shows read positions whose
        # observations it does not count (what a wait for the decide stage compares with).
        self.counters["observations"] += len(observations)
        # The horizon first, whether or not a batch goes out below: the other partitions wait
        # for it (a partition whose own topics fell idle must say so even if nothing else
        # changed, or every partition waits for the others).
        if horizon != part.announced or (horizon[1] and self._repeating):
            part.announced = horizon
            h, h_idle = horizon
            value = orjson.dumps(
                {
                    "source": part.index,
                    "horizon": h if math.isfinite(h) else None,
                    "idle": h_idle,
                    "run": part.run,
                }
            )
            for p in range(self._partitions):
                if p != part.index:
                    self._deliveries.append(
                        await self._producer.send(
                            self._names[REROUTED],
                            value,
                            partition=p,
                            headers=[(HEADER_MARKER, b"1")],
                        )
                    )
                    self.counters["markers"] += 1
        if not send:
            return
        key = str(part.index).encode()
        local = self.local
        for q, value, batch in records:
            if local is not None:
                local.add(q, value, batch)
            delivery = await self._producer.send(
                self.topics.observations.name, value, key=key, partition=q
            )
            if local is not None:
                delivery.add_done_callback(partial(local.delivered, q, key, value))
            self._deliveries.append(delivery)
            self.counters["observation_records"] += 1
        part.sent = (watermark, idle)
        part.sent_read = part.logical(part.read)
        if len(self._deliveries) > 10_000:
            await self._flush()

    def _encode(
        self, part: _Partition, observations: list[Observation], watermark: float, idle: bool
    ) -> list[tuple[int, bytes, Batch]]:
        """The observations topic's records for one batch: ``(partition, value, batch)``."""
        groups: dict[int, list[Observation]] = {q: [] for q in range(self._outputs)}
        for obs in observations:
            groups[observations_partition(obs[2], self._outputs)].append(obs)
        # A batch of many observations goes out in several records. Only the last carries the
        # new read positions and watermark: the earlier ones repeat what was sent before, so a
        # process killed between them has not claimed (read positions are what the decide stage
        # takes as sent) observations it never sent.
        before_wm, _ = part.sent if part.sent is not None else (-math.inf, False)
        records: list[tuple[int, bytes, Batch]] = []
        for q, obs in groups.items():
            chunks = [
                obs[i : i + BATCH_OBSERVATIONS] for i in range(0, len(obs), BATCH_OBSERVATIONS)
            ]
            for n, chunk in enumerate(chunks or [[]], start=1):
                final = n >= len(chunks)
                batch = (
                    Batch(part.index, part.logical(part.read), watermark, idle, chunk, part.run)
                    if final
                    else Batch(part.index, dict(part.sent_read), before_wm, False, chunk, part.run)
                )
                records.append((q, encode_batch(batch), batch))
        return records

    def _busy(self, part: _Partition, t: int) -> bool:
        """Whether topic ``t`` of ``part`` may still bring older records: it has records not
        read yet, or the broker's answers have said it was read to its end for less than
        ``join.idle_after`` seconds.

        Measured between fetch answers, not on this process's clock: a process too busy to
        fetch (a long batch, a loaded machine) has not learnt that nothing new arrived, and
        taking its silence for idleness would let the watermark pass records still to come."""
        assert self._member is not None
        consumer = self._member.consumer
        tp = self._member.tp(self._names[t], part.index)
        hw = consumer.highwater(tp)
        if hw is None or part.read.get(t, 0) < hw:
            part.caught_since.pop(t, None)
            return True
        polled = consumer.last_poll_timestamp(tp)
        answered = polled / 1000 if polled is not None else time.time()
        since = part.caught_since.setdefault(t, answered)
        return answered - since < self.config.join.idle_after

    async def _deadletter(self, decoded: Decoded) -> None:
        for rejected in decoded.rejected:
            await self._send_deadletter(rejected)

    async def _send_deadletter(self, rejected: Rejected) -> None:
        value, key, headers = deadletter_record(rejected)
        self._deliveries.append(
            await self._producer.send(self.topics.deadletter.name, value, key=key, headers=headers)
        )
        if self.metrics is not None:
            self.metrics.record_deadletter(rejected.reason)


def _ends(topics: dict[int, list[Any]]) -> dict[int, int]:
    """Per topic index of a batch: the offset after its last record."""
    return {t: recs[-1].offset + 1 for t, recs in topics.items() if recs}


def held_back(
    times: Mapping[Key, float],
    waiting: Iterable[float],
    held: dict[Key, float],
    now: float,
    alignment: float = ALIGNMENT,
    hold: float = ALIGNMENT_HOLD,
) -> set[Key]:
    """Event-time alignment (module doc): the input topics not to read now.

    ``times`` are the topics' event times (the largest read), ``waiting`` those of the topics
    with records waiting to be read. A topic more than ``alignment`` seconds ahead of the
    slowest waiting one is held back, but for at most ``hold`` seconds of ``now`` (monotonic)
    at a time; ``held`` (updated) says since when each one is held.
    """
    waiting = list(waiting)
    if not waiting:
        held.clear()
        return set()
    limit = min(waiting) + alignment
    ahead: set[Key] = set()
    for key, seen in times.items():
        if seen <= limit:
            held.pop(key, None)
            continue
        since = held.setdefault(key, now)
        if now - since <= hold:
            ahead.add(key)
        else:
            del held[key]  # read once, then held again if still ahead
    for key in [k for k in held if k not in times]:
        del held[key]
    return ahead


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _source(rec: Any) -> Source:
    return Source(rec.topic, rec.partition, rec.offset)
