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
  records it covers in the same partition, so it is read after them).
- **Checkpoints.** Every ``snapshot_interval`` seconds, after every record sent so far is
  acknowledged and the group coordinator has confirmed this member still belongs to the current
  generation, each join partition's state (join buffer, read positions, clock, re-route
  offsets) goes to the state topic under the key ``<group>.join/<p>``. A new owner resumes from
  it and reads again from its positions, under a new *run* id; the decide stage drops what it
  sends a second time (:class:`~driftswitch.streams.pipeline.merge.Merge`). A member expelled
  while paused (a zombie) may still send observations for a moment: they are duplicates of what
  the new owner sends, dropped the same way, so no fencing token is needed here.
- **State on disk** (``state_dir``): each owned partition's pending entries live in its own
  RocksDB store, ``<state_dir>/<group>.join/<p>``
  (:class:`~driftswitch.streams.service.joinstore.RocksJoinStore`). A checkpoint commits the
  changes since the last one to the store, atomically with the checkpoint's document, then sends
  the document (without the entries) to the state topic: its cost is the input since the last
  checkpoint, not the state's size. A new owner on the same disk opens the store and continues
  when it holds the topic's latest checkpoint for the partition (or its successor: killed
  between the two writes); otherwise it starts that partition's join empty and counts the
  entries it could not recover (``join_entries_lost``). Without ``state_dir`` the entries are in
  memory and in every checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from driftswitch.streams.config.model import Config
from driftswitch.streams.contract.events import InputEvent
from driftswitch.streams.contract.placement import join_partition, observations_partition
from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka.connect import Membership
from driftswitch.streams.kafka.groups import GroupError, StageMember
from driftswitch.streams.pipeline.eventtime import reject_future
from driftswitch.streams.pipeline.ingest import Decoded, Ingest, InputRecord, Rejected, Source
from driftswitch.streams.pipeline.merge import Batch, Clock, encode_batch
from driftswitch.streams.pipeline.observations import Joiner, Observation, build_flags
from driftswitch.streams.service.deadletter import deadletter_record
from driftswitch.streams.service.joinstore import RocksJoinStore
from driftswitch.streams.service.snapshot import (
    Snapshot,
    continue_on_store,
    encode_chunks,
    latest_snapshot,
)

if TYPE_CHECKING:
    from driftswitch.streams.service.metrics import Metrics
    from driftswitch.streams.service.worker import WorkerSettings

__all__ = ["HEADER_MARKER", "HEADER_ORIGIN", "JoinStage"]

log = logging.getLogger(__name__)

#: On a re-routed record: ``topic index/partition/offset`` where it was first read.
HEADER_ORIGIN = "driftswitch.origin"
#: On a marker record of the repartition topic (its value: ``{"source", "horizon", "idle"}``).
HEADER_MARKER = "driftswitch.marker"
#: Observations per record of the observations topic (about 200 bytes each: well under Kafka's
#: default 1 MiB message limit).
BATCH_OBSERVATIONS = 2000
#: Topic indexes in observation positions and batches.
PREDICTIONS, OUTCOMES, REROUTED = 0, 1, 2


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
    #: The horizon this partition last announced, and the watermark it last sent.
    announced: tuple[float, bool] | None = None
    sent: tuple[float, bool] | None = None
    #: The read positions the last batch sent carried (the checkpoint's, after a restart).
    sent_read: dict[int, int] = field(default_factory=dict)
    #: Per topic index: since when (monotonic seconds) it has been read to its end.
    caught_since: dict[int, float] = field(default_factory=dict)
    seq: int = 0
    dirty: bool = False
    #: This partition's disk store (``state_dir``), and the ids of its last checkpoint and the
    #: one before.
    store: RocksJoinStore | None = None
    checkpoint: str = ""
    parent: str = ""

    def to_state(self) -> dict[str, Any]:
        return {
            "joiner": self.joiner.to_state(),
            "read": {str(t): o for t, o in self.read.items()},
            "seen": {str(t): ts for t, ts in self.clock.seen.items() if math.isfinite(ts)},
            "origins": self.origins,
            "horizons": {
                str(p): [h if math.isfinite(h) else None, idle]
                for p, (h, idle) in self.horizons.items()
            },
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.joiner.restore(state["joiner"], self.store)
        self.read = {int(t): int(o) for t, o in state["read"].items()}
        self.clock.seen = {int(t): float(ts) for t, ts in state["seen"].items()}
        self.origins = {str(k): int(v) for k, v in state["origins"].items()}
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
        #: Held while partitions are processed, checkpointed, assigned or revoked: aiokafka runs
        #: the rebalance callbacks in its own task, beside this stage's loop.
        self._lock = asyncio.Lock()
        #: Revoked partitions kept in memory (without a disk store): reused if the next assignment
        #: gives them back with no other owner in between.
        self._parked: dict[int, _Partition] = {}

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
            "observations": self.counters["observations"],
            "checkpoints": self.counters["checkpoints"],
            "read": {
                str(p): {self._names[t]: o for t, o in sorted(part.read.items())}
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
        }

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

    async def run(self) -> None:
        """Join the group and process batches until :attr:`stop` is set."""
        s = self.settings
        self._producer = await kafka.open_producer(s.kafka, linger_ms=5, acks="all")
        member = self._member = StageMember(
            s.kafka,
            self.group,
            [self._names[PREDICTIONS], self._names[OUTCOMES], self._names[REROUTED]],
            on_assigned=self._assigned,
            on_revoked=self._revoked,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        try:
            await member.start()
            await self._loop()
        finally:
            with contextlib.suppress(Exception):
                await member.stop()  # revokes: final checkpoints
            await kafka.stop_quietly(self._producer)

    async def _loop(self) -> None:
        s = self.settings
        assert self._member is not None
        last = time.monotonic()
        stop_wait = asyncio.ensure_future(self.stop.wait())
        try:
            while not self.stop.is_set():
                fetch = asyncio.ensure_future(
                    self._member.getmany(timeout_ms=s.poll_ms, max_records=s.max_records)
                )
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fetch
                    break
                # A batch fetched before a rebalance is dropped (processing() gives {}): its
                # partitions were checkpointed and sought back, so it will be read again.
                async with self._member.processing(fetch.result()) as batch, self._lock:
                    await self._process(batch)
                    if time.monotonic() - last >= s.snapshot_interval:
                        await self._checkpoint(list(self.parts.values()))
                        last = time.monotonic()
                # Let the other tasks of this process run: with records already fetched,
                # getmany and the producer's sends return without suspending, so a backlog
                # would otherwise keep the event loop until it is read (the decide stage of
                # --stage all, the HTTP server and the consumers' fetches waited).
                await asyncio.sleep(0)
        finally:
            stop_wait.cancel()

    async def reconfigure(self, config: Config) -> None:
        """Take a new (validated) config: its flags, variants and segment attributes decide what
        the join accepts from the next batch on; pending entries and positions stay. Flags the
        config dropped are rejected as unknown from then on (their pending entries join and are
        skipped by the decide stage, which no longer knows them either)."""
        async with self._lock:
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

    async def _assign(self, indexes: set[int]) -> None:
        assert self._member is not None
        t0 = time.monotonic()
        # aiokafka may fetch for the new partitions while this runs: hold them until each one
        # has its state and position.
        consumer = self._member.consumer
        held = [self._member.tp(name, i) for i in indexes for name in self._names.values()]
        consumer.pause(*held)
        kept = self._member.kept
        load = [i for i in sorted(indexes) if not (i in kept and i in self._parked)]
        saved = await self._load(load) if load else {}
        for i in sorted(indexes):
            part = self._parked.pop(i, None) if i in kept else None
            if part is None:
                part = self._open(i, saved.get(i))
            self.parts[i] = part
            for t, name in self._names.items():
                offset = part.read.get(t)
                if offset is None:
                    await self._member.consumer.seek_to_beginning(self._member.tp(name, i))
                    part.read[t] = 0
                else:
                    self._member.seek(name, i, offset)
        self._parked.clear()
        consumer.resume(*held)
        self.recovery_seconds = time.monotonic() - t0
        log.info(
            "join stage: partitions %s (restored %s from checkpoints) in %.2f s",
            sorted(indexes),
            sorted(saved),
            self.recovery_seconds,
        )

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
            part.sent_read = dict(part.read)
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

    async def _revoke(self, indexes: set[int]) -> None:
        parts = [self.parts[i] for i in sorted(indexes) if i in self.parts]
        await self._checkpoint(parts)
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

    async def _checkpoint(self, parts: list[_Partition]) -> None:
        """Write the state of every changed partition of ``parts`` once everything sent so far
        is acknowledged and the coordinator confirms this member is current."""
        dirty = [p for p in parts if p.dirty]
        if not dirty:
            return
        started = time.monotonic()
        await self._flush()
        assert self._member is not None
        membership = await self._member.check()
        if membership is not Membership.CURRENT:
            log.warning(
                "join stage: not checkpointing partitions %s: %s",
                [p.index for p in dirty],
                membership.value,
            )
            return
        sends = []
        for part in dirty:
            part.seq += 1
            checkpoint = uuid.uuid4().hex
            snap = Snapshot(
                part.seq,
                part.to_state(),
                {self._names[t]: {part.index: o} for t, o in part.read.items()},
                checkpoint=checkpoint,
                parent=part.checkpoint,
            )
            chunks = encode_chunks(snap)
            if part.store is not None:
                # Entries first, with the document (see _local).
                part.store.commit(b"".join(value for value, _ in chunks))
            part.checkpoint, part.parent = checkpoint, part.checkpoint
            for value, headers in chunks:
                sends.append(
                    await self._producer.send(
                        self.state_topic.name, value, key=self._key(part.index), headers=headers
                    )
                )
            part.dirty = False
        await asyncio.gather(*sends)
        self.counters["checkpoints"] += len(dirty)
        self.checkpoint_seconds = time.monotonic() - started

    async def _flush(self) -> None:
        deliveries, self._deliveries = self._deliveries, []
        if deliveries:
            await asyncio.gather(*deliveries)

    # -- the hot path ------------------------------------------------------------------------

    async def _process(self, batch: dict[Any, list[Any]]) -> None:
        by_index: dict[int, dict[int, list[Any]]] = {}
        for tp, records in batch.items():
            if tp.partition not in self.parts:
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
            by_index.setdefault(i, {})
        for i, topics in sorted(by_index.items()):
            part = self.parts.get(i)
            if part is not None:
                await self._process_partition(part, topics)

    async def _process_partition(self, part: _Partition, topics: dict[int, list[Any]]) -> None:
        n = self._partitions
        i = part.index
        own = topics.get(PREDICTIONS, []) + topics.get(OUTCOMES, [])
        events: list[InputEvent] = []
        positions: list[tuple[int, int]] = []
        records: list[Any] = []  # parallel to events: the record to dead-letter if rejected
        decoded: Decoded | None = None
        if own:
            decoded = self.ingest.decode(own)
            reject_future(decoded, self.ingest, self.config.join.max_clock_skew, time.time())
            for k, ev in enumerate(decoded.events):
                rec = decoded.records[decoded.index[k]]
                t = self._index[rec.topic]
                part.clock.observe(t, ev.ts)
                target = join_partition(ev.request_id, n)
                if target != i:
                    await self._reroute(rec, t, target)
                    self.ingest.accepted -= 1  # counted where it is joined
                    continue
                events.append(ev)
                positions.append((t, rec.offset))
                records.append(rec)
            await self._deadletter(decoded)
        for rec in topics.get(REROUTED, []):
            got = self._rerouted(part, rec)
            if got is not None:
                events.append(got[0])
                positions.append((REROUTED, rec.offset))
                records.append(got[1])
        observations: list[Observation] = []
        if events:
            observations, rejections = part.joiner.process(events, positions)
            for r in rejections:
                rec = records[r.index]
                self.ingest.accepted -= 1
                rejected = self.ingest.reject(_source(rec), rec.key, rec.value, r.reason, r.detail)
                await self._send_deadletter(rejected)
        for t, recs in topics.items():
            if recs:
                part.read[t] = recs[-1].offset + 1
        if any(topics.values()):
            part.dirty = True
            self.counters["records"] += sum(len(r) for r in topics.values())
        await self._emit(part, observations, changed=any(topics.values()))

    def _rerouted(self, part: _Partition, rec: Any) -> tuple[InputEvent, Any] | None:
        """A record of the repartition topic: a marker (None), a duplicate (None), or the event
        and a record standing for its origin (what a rejection dead-letters)."""
        headers = dict(rec.headers or ())
        if HEADER_MARKER in headers:
            try:
                doc = orjson.loads(rec.value)
                horizon = doc["horizon"]
                part.horizons[int(doc["source"])] = (
                    -math.inf if horizon is None else float(horizon),
                    bool(doc["idle"]),
                )
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
        standin = InputRecord(name, p, offset, rec.key, rec.value)
        decoded = self.ingest.decode([standin])
        if not decoded.events:  # checked where it was first read; only a changed decoder gets here
            for rejected in decoded.rejected:
                log.warning("re-routed record %s refused: %s", origin, rejected.reason)
            return None
        return decoded.events[0], standin

    async def _reroute(self, rec: Any, t: int, target: int) -> None:
        headers = [(HEADER_ORIGIN, f"{t}/{rec.partition}/{rec.offset}".encode())]
        self._deliveries.append(
            await self._producer.send(
                self._names[REROUTED], rec.value, key=rec.key, partition=target, headers=headers
            )
        )
        self.counters["rerouted"] += 1

    async def _emit(self, part: _Partition, observations: list[Observation], changed: bool) -> None:
        """Send the batch's observations to the observations topic (one batch per partition,
        even empty: the watermark), and this partition's re-route horizon to the others."""
        now = time.monotonic()
        busy = [t for t in (PREDICTIONS, OUTCOMES) if self._busy(part, t, now)]
        horizon = part.clock.watermark(busy)
        times = [part.clock.seen.get(t, -math.inf) for t in busy]
        for p in range(self._partitions):
            if p == part.index:
                continue
            h, idle = part.horizons.get(p, (-math.inf, False))
            if not idle:
                times.append(h)
        idle = not times and not self._busy(part, REROUTED, now)
        watermark = min(times) if times else max(part.clock.seen.values(), default=-math.inf)
        # The horizon first, whether or not a batch goes out below: the other partitions wait
        # for it (a partition whose own topics fell idle must say so even if nothing else
        # changed, or every partition waits for the others).
        if horizon != part.announced:
            part.announced = horizon
            h, h_idle = horizon
            value = orjson.dumps(
                {"source": part.index, "horizon": h if math.isfinite(h) else None, "idle": h_idle}
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
        if not changed and not observations and (watermark, idle) == part.sent:
            return
        groups: dict[int, list[Observation]] = {q: [] for q in range(self._outputs)}
        for obs in observations:
            groups[observations_partition(obs[2], self._outputs)].append(obs)
        # A batch of many observations goes out in several records. Only the last carries the
        # new read positions and watermark: the earlier ones repeat what was sent before, so a
        # process killed between them has not claimed (read positions are what the decide stage
        # takes as sent) observations it never sent.
        before_wm, _ = part.sent if part.sent is not None else (-math.inf, False)
        key = str(part.index).encode()
        for q, obs in groups.items():
            chunks = [
                obs[i : i + BATCH_OBSERVATIONS] for i in range(0, len(obs), BATCH_OBSERVATIONS)
            ]
            for n, chunk in enumerate(chunks or [[]], start=1):
                final = n >= len(chunks)
                batch = (
                    Batch(part.index, dict(part.read), watermark, idle, chunk, part.run)
                    if final
                    else Batch(part.index, dict(part.sent_read), before_wm, False, chunk, part.run)
                )
                self._deliveries.append(
                    await self._producer.send(
                        self.topics.observations.name, encode_batch(batch), key=key, partition=q
                    )
                )
        part.sent = (watermark, idle)
        part.sent_read = dict(part.read)
        self.counters["observations"] += len(observations)
        if len(self._deliveries) > 10_000:
            await self._flush()

    def _busy(self, part: _Partition, t: int, now: float) -> bool:
        """Whether topic ``t`` of ``part`` may still bring older records: it has records not
        read yet, or was read to its end less than ``join.idle_after`` seconds ago."""
        assert self._member is not None
        hw = self._member.consumer.highwater(self._member.tp(self._names[t], part.index))
        if hw is None or part.read.get(t, 0) < hw:
            part.caught_since.pop(t, None)
            return True
        since = part.caught_since.setdefault(t, now)
        return now - since < self.config.join.idle_after

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


def _source(rec: Any) -> Source:
    return Source(rec.topic, rec.partition, rec.offset)
