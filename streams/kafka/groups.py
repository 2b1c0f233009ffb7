"""Consumer-group membership for a stage that reads several co-partitioned topics.

A stage (the join stage reads predictions, outcomes and the repartition topic) processes
*partition indexes*: index ``p`` is partition ``p`` of every topic it reads, since a record's
key places it in the same partition of each of them. So the group assignment hands out indexes,
never single topic-partitions: whoever owns index ``p`` gets partition ``p`` of every topic.

- :func:`assign_indexes` is that assignment, pure (no broker): balanced (the members' counts
  differ by at most one), sticky (a member keeps what it owned in the previous generation as far
  as balance allows) and deterministic (the same members and claims give the same answer).
- :func:`stage_assignor` wraps it as an aiokafka assignor. Each member's join metadata carries
  its *claim*: the indexes it owned and the generation it owned them in (:class:`Claim`). When
  two members claim one index (a member expelled while frozen still claims what it had), the
  claim of the later generation wins.
- :class:`StageMember` is one process's membership: subscribe, rebalance callbacks per index,
  ``getmany``, seeks, commits and the fencing check.
- :func:`partition_for` is where Kafka's default partitioner of the Java client and aiokafka
  (murmur2) puts a key.

Rebalances are eager (aiokafka has no cooperative protocol): before a member rejoins, every
index it owns is revoked and ``on_revoked`` is awaited, so a runner flushes and checkpoints
them before any other member can be assigned one of them. The assignment that follows gives
most of them straight back (stickiness); :attr:`StageMember.kept` says which ones came back
with no other owner in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from driftswitch.streams.contract.errors import DriftswitchError
from driftswitch.streams.kafka.connect import (
    Membership,
    consumer,
    open_admin,
    partitioner,
    rebalance_listener,
    seek_to_start,
    start,
    stop_quietly,
    topic_partition,
)
from driftswitch.streams.kafka.settings import KafkaSettings

__all__ = [
    "ASSIGNOR_NAME",
    "STAGE_FETCH_MAX_WAIT_MS",
    "Claim",
    "GroupError",
    "StageMember",
    "assign_indexes",
    "common_partitions",
    "decode_claim",
    "encode_claim",
    "partition_for",
    "stage_assignor",
]

log = logging.getLogger(__name__)

#: The assignment strategy's name in JoinGroup (every member of a stage group must use it).
ASSIGNOR_NAME = "driftswitch-indexes"
#: Version of the claim carried in the join metadata's ``user_data``.
_CLAIM_VERSION = 1

IndexCallback = Callable[[set[int]], Awaitable[None]]


class GroupError(DriftswitchError):
    """A stage's consumer group cannot work as set up (e.g. topics with different partition
    counts), or a rebalance callback failed."""


# -- placement ---------------------------------------------------------------------------------


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner puts ``key`` in, among ``partitions``.

    That is murmur2 of the key, as the Java client and aiokafka compute it. librdkafka's default
    (``consistent_random``: CRC32, used by confluent-kafka, kcat, Go and .NET clients) places
    keys differently, so a record's partition says nothing about its key unless its producer is
    known to use murmur2.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    every = list(range(partitions))
    return int(partitioner()(key, every, every))


# -- the assignment, pure ----------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What a member says it owned when it joins: its indexes, and in which generation."""

    owned: frozenset[int] = frozenset()
    #: The group generation in which it was assigned ``owned`` (-1: none yet).
    generation: int = -1


def encode_claim(claim: Claim) -> bytes:
    """``claim`` as the join metadata's ``user_data``."""
    return orjson.dumps(
        {"v": _CLAIM_VERSION, "generation": claim.generation, "owned": sorted(claim.owned)}
    )


def decode_claim(data: bytes | None) -> Claim:
    """The claim in ``user_data``; an empty claim when there is none or it is unreadable (a
    member that claims nothing is still assigned its share, it just keeps nothing)."""
    if not data:
        return Claim()
    try:
        raw = orjson.loads(data)
        owned = frozenset(int(i) for i in raw["owned"])
        generation = int(raw["generation"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.warning("ignoring an unreadable assignment claim %r", data[:100])
        return Claim()
    if raw.get("v") != _CLAIM_VERSION or any(i < 0 for i in owned):
        log.warning("ignoring an assignment claim of another version or shape: %r", data[:100])
        return Claim()
    return Claim(owned, generation)


def assign_indexes(partitions: int, claims: Mapping[str, Claim]) -> dict[str, frozenset[int]]:
    """Share the indexes ``0 .. partitions-1`` among the members of ``claims``.

    - Every index goes to exactly one member; the members' counts differ by at most one.
    - Sticky: an index claimed by one member stays with it while that member has room in its
      share. An index claimed by several goes to the claim of the latest generation (then the
      smallest member id). The members owning the most get the larger shares, so as few
      indexes as possible move.
    - Deterministic: depends only on ``partitions`` and ``claims`` (not on dict order).
    """
    if partitions < 0:
        raise ValueError(f"partitions must be >= 0, got {partitions}")
    members = sorted(claims)
    if not members:
        return {}
    # Who wins each claimed index: the latest generation, then the smallest member id.
    winner: dict[int, str] = {}
    for member in members:
        claim = claims[member]
        for index in claim.owned:
            if index >= partitions:
                continue
            held = winner.get(index)
            if held is None or claims[held].generation < claim.generation:
                winner[index] = member
    kept: dict[str, list[int]] = {m: [] for m in members}
    for index in sorted(winner):
        kept[winner[index]].append(index)
    # Shares: the remainder goes to the members keeping the most (ties: smallest id).
    base, extra = divmod(partitions, len(members))
    ranked = sorted(members, key=lambda m: (-len(kept[m]), m))
    share = {m: base + (1 if rank < extra else 0) for rank, m in enumerate(ranked)}
    out: dict[str, list[int]] = {m: kept[m][: share[m]] for m in members}
    taken = {i for owned in out.values() for i in owned}
    free = [i for i in range(partitions) if i not in taken]
    for member in members:
        need = share[member] - len(out[member])
        out[member].extend(free[:need])
        del free[:need]
    assert not free, free
    return {m: frozenset(out[m]) for m in members}


def common_partitions(counts: Mapping[str, int]) -> int:
    """The partition count shared by every topic of ``counts``; :class:`GroupError` if the
    topics differ (partition ``p`` of each would not hold the same keys)."""
    distinct = sorted(set(counts.values()))
    if len(distinct) > 1:
        listed = ", ".join(f"{t}: {n}" for t, n in sorted(counts.items()))
        raise GroupError(
            "the topics a stage reads must have the same number of partitions (partition p of "
            f"each holds the same keys), got {listed}"
        )
    return distinct[0] if distinct else 0


# -- the aiokafka assignor ---------------------------------------------------------------------


class _Claims:
    """A member's current claim, read by its assignor when it joins."""

    def __init__(self) -> None:
        self.claim = Claim()


def stage_assignor(claims: _Claims | None = None) -> type:
    """An aiokafka assignor giving out partition indexes with :func:`assign_indexes`.

    ``claims`` holds what this member claims in its join metadata (kept up to date by
    :class:`StageMember`); without it the member claims nothing. The leader computes the
    assignment from every member's claim; partition ``p`` of every topic a member subscribes
    to goes with index ``p``. Topics whose partition counts differ are a setup error that
    :meth:`StageMember.start` refuses; should they differ anyway (partitions added later), the
    leader logs an error and hands out only the indexes every topic has.
    """
    from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
    from aiokafka.coordinator.protocol import (
        ConsumerProtocolMemberAssignment,
        ConsumerProtocolMemberMetadata,
    )

    holder = claims if claims is not None else _Claims()

    def assign(cls: Any, cluster: Any, members: Mapping[str, Any]) -> dict[str, Any]:
        topics = sorted({t for meta in members.values() for t in meta.subscription})
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        try:
            partitions = common_partitions(counts)
        except GroupError as err:
            partitions = min(counts.values())
            log.error("%s; assigning only partitions 0..%d", err, partitions - 1)
        indexes = assign_indexes(
            partitions, {m: decode_claim(meta.user_data) for m, meta in members.items()}
        )
        return {
            member: ConsumerProtocolMemberAssignment(
                0,
                [(t, sorted(indexes[member])) for t in sorted(meta.subscription)],
                b"",
            )
            for member, meta in members.items()
        }

    def metadata(cls: Any, topics: Iterable[str]) -> Any:
        return ConsumerProtocolMemberMetadata(0, sorted(topics), encode_claim(holder.claim))

    def on_assignment(cls: Any, assignment: Any) -> None:
        return None

    # Built with type(): aiokafka is untyped, and a class statement cannot subclass Any.
    return type(
        "StageAssignor",
        (AbstractPartitionAssignor,),
        {
            "name": ASSIGNOR_NAME,
            "version": 0,
            "assign": classmethod(assign),
            "metadata": classmethod(metadata),
            "on_assignment": classmethod(on_assignment),
        },
    )


# -- one member --------------------------------------------------------------------------------

#: How long a stage member's fetch may wait for records (aiokafka's ``fetch_max_wait_ms``) unless
#: ``options`` say otherwise. A consumer keeps one fetch in flight per broker, so an idle member
#: makes a round trip every this many milliseconds, whatever it owns: that is each process's fixed
#: cost per second, which grows with the number of processes while the work does not (the worker's
#: 20 ms made 50 round trips a second per process, 0.02 CPU-s per second each, idle). Kafka
#: answers a fetch as soon as records arrive, so this adds no latency there; the embedded broker
#: holds it until the wait runs out (``streams/tools/broker.py``: produce-to-``getmany`` p50 27 ms
#: / p99 54 ms at 100 ms).
STAGE_FETCH_MAX_WAIT_MS = 100


async def _nothing(indexes: set[int]) -> None:
    return None


class StageMember:
    """One process's membership of a stage's consumer group.

    It subscribes to ``topics`` (all with the same partition count, checked by :meth:`start`)
    in group ``group`` with :func:`stage_assignor`, and calls the runner back per index:

    - ``on_revoked(indexes)`` before the member rejoins the group, with every index it owns
      (rebalances are eager). The next assignment is computed only after it returns, so a
      runner that flushes and checkpoints there hands the indexes over cleanly; the indexes
      count as owned until it returns, so it may :meth:`commit` its final offsets, and a
      member the coordinator expelled meanwhile is refused there (its state must not be
      written back). Also called by :meth:`stop` before leaving.
    - ``on_assigned(indexes)`` once the new assignment is known, with every index now owned
      (not only the new ones; :attr:`kept` tells which ones stayed with no owner in between).

    The callbacks run in aiokafka's coordination task, concurrently with the runner's own
    loop: a runner processes each batch inside :meth:`processing`, which holds the callbacks
    off meanwhile and drops a batch that a rebalance overtook. A callback that raises is
    logged, and the error is raised again, as :class:`GroupError`, from the next
    :meth:`getmany`, :meth:`commit` or :meth:`check`: a runner that could not checkpoint must
    stop rather than go on with state another member may have taken over.

    The consumer is built by :func:`driftswitch.streams.kafka.connect.consumer` (TLS and SASL
    settings of ``kafka``) with auto-commit off, ``auto_offset_reset="earliest"`` and
    ``fetch_max_wait_ms`` :data:`STAGE_FETCH_MAX_WAIT_MS` unless ``options`` say otherwise;
    ``options`` go to aiokafka (e.g. ``session_timeout_ms``, ``heartbeat_interval_ms``,
    ``fetch_max_wait_ms``, ``client_id``).

    ``replaces`` are the member ids of processes this one replaces and that are known to be dead
    (their records in a state directory: :mod:`driftswitch.streams.service.startup`).
    :meth:`start` removes them from the group (LeaveGroup on their behalf) before joining, so the
    group does not wait for their sessions to time out before handing their partitions over
    (:attr:`replaced`).

    ``unbound``: the member may be started before its runner is ready (to join the group while
    the process still starts); its rebalance callbacks wait until :meth:`bind` gives them. aiokafka
    sends no heartbeat while a callback runs, so the wait counts toward the session timeout.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        group: str,
        topics: Sequence[str],
        *,
        on_assigned: IndexCallback = _nothing,
        on_revoked: IndexCallback = _nothing,
        replaces: Iterable[str] = (),
        unbound: bool = False,
        **options: Any,
    ) -> None:
        if not topics:
            raise GroupError("a stage member needs at least one topic")
        if len(set(topics)) != len(topics):
            raise GroupError(f"topics listed twice: {list(topics)}")
        self.kafka = kafka
        self.group = group
        self.topics: tuple[str, ...] = tuple(topics)
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._replaces = tuple(replaces)
        #: Set once the callbacks are known (:meth:`bind`); rebalance callbacks wait for it.
        self._bound = asyncio.Event()
        if not unbound:
            self._bound.set()
        self._options = {
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": STAGE_FETCH_MAX_WAIT_MS,
            **options,
        }
        self._claims = _Claims()
        self._consumer: Any = None
        self._owned: frozenset[int] = frozenset()
        self._kept: frozenset[int] = frozenset()
        self._generation = -1
        self._partitions = 0
        self._failure: BaseException | None = None
        self._stopping = False
        self._callbacks = asyncio.Lock()
        self._assigned_once = asyncio.Event()
        #: Counts rebalance callbacks (each revocation and assignment, before and after it).
        self._epoch = 0
        #: ``_epoch`` when the latest :meth:`getmany` began.
        self._batch_epoch = -1
        #: When (:func:`time.time`) the first JoinGroup was sent, first answered without error
        #: (``joined``) and the first SyncGroup answered without error (``synced``).
        self.timeline: dict[str, float] = {}
        #: Per member of ``replaces``: whether the coordinator answered its removal without
        #: error (``False``: Kafka did not know the member; ``None``: no answer). The embedded
        #: broker answers without error for an unknown member too.
        self.replaced: dict[str, bool | None] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the topics, open the consumer and subscribe (the first assignment follows in
        the background: :meth:`wait_assigned`). :class:`GroupError` when a topic is missing or
        the partition counts differ; ``KafkaConnectError`` when Kafka cannot be reached."""
        self._partitions = common_partitions(await _partition_counts(self.kafka, self.topics))
        self._stopping = False
        client = consumer(
            self.kafka,
            group_id=self.group,
            partition_assignment_strategy=(stage_assignor(self._claims),),
            **self._options,
        )
        await start(client, self.kafka)
        _leave_from_generation_zero(client)
        _time_group_requests(client, self.timeline)
        self._consumer = client
        for dead in self._replaces:
            self.replaced[dead] = await _remove_member(client, self.group, dead)

        async def revoked(_listener: Any, partitions: Any) -> None:
            await self._revoke()

        async def assigned(_listener: Any, partitions: Any) -> None:
            await self._assign({tp.partition for tp in partitions})

        client.subscribe(list(self.topics), listener=rebalance_listener(revoked, assigned))

    def bind(self, on_assigned: IndexCallback, on_revoked: IndexCallback) -> None:
        """Set the rebalance callbacks of a member made ``unbound``: started before its runner
        was ready, its first callback waits until this is called."""
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._bound.set()

    @property
    def options(self) -> dict[str, Any]:
        """The options its consumer was opened with."""
        return dict(self._options)

    async def stop(self) -> None:
        """Revoke every owned index (``on_revoked``), then leave the group and close."""
        if self._consumer is None:
            return
        if not self._bound.is_set():
            self.bind(_nothing, _nothing)  # its runner never came: nothing to hand over
        self._stopping = True  # an assignment arriving now is not handed to the runner
        await self._revoke()
        client, self._consumer = self._consumer, None
        # A rebalance in flight is finished first (its JoinGroup is answered once every member
        # has rejoined, or after the rebalance timeout), then the member leaves.
        rebalance_ms = self._options.get("rebalance_timeout_ms") or self._options.get(
            "session_timeout_ms", 10_000
        )
        await stop_quietly(client, timeout_s=rebalance_ms / 1000 + 5.0)

    async def __aenter__(self) -> StageMember:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what it owns --------------------------------------------------------------------------

    @property
    def consumer(self) -> Any:
        """The aiokafka consumer (started), for what this class does not pass through."""
        if self._consumer is None:
            raise GroupError("the stage member is not started")
        return self._consumer

    @property
    def owned(self) -> frozenset[int]:
        """The indexes this member owns now (empty between a revocation and an assignment)."""
        return self._owned

    @property
    def member_id(self) -> str:
        """This member's id in the group (``""`` before it has joined)."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        return str(getattr(coordinator, "member_id", "") or "")

    @property
    def kept(self) -> frozenset[int]:
        """Of :attr:`owned`, those this member also owned in the generation just before: no
        other member can have had them in between, so their in-memory state is still valid."""
        return self._kept

    @property
    def generation(self) -> int:
        """The group generation of the current assignment (-1 before the first)."""
        return self._generation

    @property
    def partitions(self) -> int:
        """The partition count every topic has (known after :meth:`start`)."""
        return self._partitions

    async def wait_joining(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the first JoinGroup has been sent: from then on the
        coordinator works on this member's join whatever this process does. Whether it was."""
        deadline = time.monotonic() + timeout_s
        while "join_sent" not in self.timeline:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)  # the request's bytes leave on the next turn of the loop
        return True

    async def wait_assigned(self, timeout_s: float | None = None) -> frozenset[int]:
        """Wait for the first assignment (``TimeoutError`` after ``timeout_s``); the indexes."""
        await asyncio.wait_for(self._assigned_once.wait(), timeout_s)
        return self._owned

    def tp(self, topic: str, index: int) -> Any:
        """aiokafka's ``TopicPartition`` for partition ``index`` of ``topic``."""
        if topic not in self.topics:
            raise GroupError(f"{topic!r} is not one of this stage's topics {list(self.topics)}")
        return topic_partition(topic, index)

    # -- reading -------------------------------------------------------------------------------

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> Any:
        """aiokafka's ``getmany``: ``{TopicPartition: [ConsumerRecord]}`` from ``partitions``
        (``TopicPartition``s, see :meth:`tp`), by default from everything owned.

        Raises :class:`GroupError` if a rebalance callback failed since the last call.
        """
        self._raise_failure()
        epoch = self._epoch
        batch = await self.consumer.getmany(
            *partitions, timeout_ms=timeout_ms, max_records=max_records
        )
        self._batch_epoch = epoch
        return batch

    @contextlib.asynccontextmanager
    async def processing(self, batch: Any) -> AsyncIterator[Any]:
        """Process the latest :meth:`getmany` batch with no rebalance callback interleaving.

        ``async with member.processing(batch) as records:`` holds off ``on_revoked`` and
        ``on_assigned`` until the block ends, and gives ``batch`` back, or ``{}`` when a
        rebalance callback ran since the :meth:`getmany` that fetched it began: those records
        may belong to another member now, or to a partition the runner has since seeked back
        (``on_assigned`` seeks every owned partition to where its state stops), so they will
        be read again and must be dropped. Without it, a revocation can run while the runner
        is halfway through a batch. Do not call :meth:`stop` inside the block.
        """
        async with self._callbacks:
            yield batch if self._batch_epoch == self._epoch else {}

    def seek(self, topic: str, index: int, offset: int) -> None:
        """Read partition ``index`` of ``topic`` from ``offset`` next (it must be owned)."""
        self.consumer.seek(self.tp(topic, index), offset)

    def seek_to_start(self, topic: str, index: int) -> None:
        """Read partition ``index`` of ``topic`` from its first record next (it must be owned):
        from offset 0, not from the start the broker names (see
        :func:`driftswitch.streams.kafka.connect.seek_to_start`; this consumer resets to
        ``earliest``)."""
        seek_to_start(self.consumer, self.tp(topic, index))

    async def seek_to_committed(self, index: int) -> dict[str, int | None]:
        """Seek partition ``index`` of every topic to its committed offset (to its start,
        :meth:`seek_to_start`, where none is committed); returns ``{topic: committed offset or
        None}``."""
        found: dict[str, int | None] = {}
        for topic in self.topics:
            tp = self.tp(topic, index)
            committed = await self.consumer.committed(tp)
            found[topic] = committed
            if committed is None:
                self.seek_to_start(topic, index)
            else:
                self.consumer.seek(tp, committed)
        return found

    async def lag(self) -> dict[tuple[str, int], int]:
        """``{(topic, index): records behind}`` for every owned partition that has had a fetch
        answer: the high watermark of the last one minus the position. (Tansu reports the high
        watermark as the last batch's base offset + 1, so it under-counts there.)"""
        out: dict[tuple[str, int], int] = {}
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                out[(tp.topic, tp.partition)] = max(0, highwater - await self.consumer.position(tp))
        return out

    # -- fencing -------------------------------------------------------------------------------

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> Membership:
        """Commit ``{(topic, index): next offset}`` as this member, fenced by the coordinator.

        :attr:`Membership.CURRENT` when committed. A member the coordinator expelled, or one
        from an older generation, is refused (:attr:`Membership.EXPELLED`), as is a commit while
        the group rebalances or for an index not owned (:attr:`Membership.REBALANCING`): then
        nothing was committed. A member that knows it was expelled (aiokafka reset its
        generation) does not even send the commit.
        """
        from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

        self._raise_failure()
        current = _generation_of(self.consumer)
        if current != self._generation or not self._owned:
            # aiokafka forgot its generation (the coordinator expelled it) or is joining anew.
            return Membership.EXPELLED if current < 0 else Membership.REBALANCING
        try:
            await self.consumer.commit(
                {self.tp(t, i): (offset, "") for (t, i), offset in offsets.items()}
            )
        except CommitFailedError as exc:
            if isinstance(exc.__cause__, RebalanceInProgressError):
                return Membership.REBALANCING
            return Membership.EXPELLED
        except IllegalStateError:
            return Membership.REBALANCING
        return Membership.CURRENT

    async def check(self) -> Membership:
        """Whether this member is still in the group's current generation (the fencing check of
        :func:`~driftswitch.streams.kafka.connect.check_membership`).

        It re-commits, through :meth:`commit`, the committed offset of one owned partition (the
        lowest index of the first topic), so committed offsets are left as they are; a
        partition with nothing committed gets offset 0, where a reader with nothing committed
        starts anyway. :attr:`Membership.REBALANCING` when nothing is owned. Unlike
        :func:`~driftswitch.streams.kafka.connect.check_membership`, a member that aiokafka
        already knows to be expelled sends nothing (aiokafka would send the commit without a
        generation, which Kafka accepts for a group that has no members left).
        """
        # A failed rebalance callback raises here too, and stays for the runner's next
        # getmany: a check made beside the loop (the join stage's idle confirmations) must not
        # take it from the loop.
        self._raise_failure(keep=True)
        if not self._owned:
            return Membership.REBALANCING
        tp = self.tp(self.topics[0], min(self._owned))
        try:
            committed = await self.consumer.committed(tp)
        except Exception:  # the coordinator is moving or unreachable: ask again later
            log.debug("committed(%s) failed during a membership check", tp, exc_info=True)
            return Membership.REBALANCING
        self._raise_failure(keep=True)  # a callback that failed during that wait
        return await self.commit({(tp.topic, tp.partition): committed or 0})

    # -- rebalance callbacks -------------------------------------------------------------------

    def _raise_failure(self, keep: bool = False) -> None:
        """:class:`GroupError` if a rebalance callback failed; once, unless ``keep``."""
        failure = self._failure
        if failure is not None:
            if not keep:
                self._failure = None
            raise GroupError(f"a rebalance callback failed: {failure!r}") from failure

    async def _revoke(self) -> None:
        if not self._bound.is_set():
            # aiokafka revokes (nothing) before the first join too; an unbound member cannot
            # own anything before its runner binds (:meth:`_assign` waits for it).
            return
        async with self._callbacks:
            self._epoch += 1
            revoked = set(self._owned)
            if not revoked:
                return
            log.info("group %s: revoking partitions %s", self.group, sorted(revoked))
            try:
                # Still owned while the callback runs: it may commit (fenced) its final offsets.
                await self._on_revoked(revoked)
            except Exception as err:
                log.exception("group %s: on_revoked(%s) failed", self.group, sorted(revoked))
                self._failure = err
            finally:
                self._owned = self._kept = frozenset()
                self._epoch += 1

    async def _assign(self, indexes: set[int]) -> None:
        await self._bound.wait()
        async with self._callbacks:
            self._epoch += 1
            if self._stopping:
                return
            generation = _generation_of(self._consumer)
            previous = self._claims.claim
            self._kept = (
                frozenset(indexes & previous.owned)
                if previous.generation >= 0 and generation == previous.generation + 1
                else frozenset()
            )
            self._owned = frozenset(indexes)
            self._generation = generation
            self._claims.claim = Claim(self._owned, generation)
            log.info(
                "group %s generation %d: assigned partitions %s (kept %s)",
                self.group,
                generation,
                sorted(indexes),
                sorted(self._kept),
            )
            try:
                await self._on_assigned(set(indexes))
            except Exception as err:
                log.exception("group %s: on_assigned(%s) failed", self.group, sorted(indexes))
                self._failure = err
            self._epoch += 1
            self._assigned_once.set()


async def _partition_counts(kafka: KafkaSettings, topics: Sequence[str]) -> dict[str, int]:
    """``{topic: partition count}``; :class:`GroupError` naming the topics that do not exist.

    Existence is checked by listing the topics first: a metadata request naming an unknown
    topic creates it on a broker that auto-creates topics (Kafka's default, and Tansu).
    """
    admin = await open_admin(kafka)
    try:
        existing = set(await admin.list_topics())
        missing = sorted(t for t in topics if t not in existing)
        if missing:
            raise GroupError(f"topics not found: {', '.join(missing)}")
        described = await admin.describe_topics(list(topics))
    finally:
        await stop_quietly(admin)
    return {t["topic"]: len(t["partitions"]) for t in described if t["topic"] in topics}


def _generation_of(client: Any) -> int:
    """The generation of ``client``'s current assignment. aiokafka keeps it on its group
    coordinator and has no public accessor; pinned by tests/integration/test_groups.py."""
    coordinator = getattr(client, "_coordinator", None)
    return int(getattr(coordinator, "generation", -1))


async def _remove_member(client: Any, group: str, member_id: str) -> bool | None:
    """Remove ``member_id`` from ``group`` (LeaveGroup sent on its behalf), before ``client``
    joins: a process known to be dead, which this one replaces.

    Without it the coordinator keeps the dead member until its session times out, and the
    group's next generation waits for it: the replacement could not be assigned anything
    before then. A member that is not (or no longer) in the group is answered
    UNKNOWN_MEMBER_ID, which changes nothing. Best effort: a failure is logged and the member
    joins anyway (the dead one then times out as before). Were the member alive after all, it
    is expelled as by a session timeout and fenced as such (:meth:`StageMember.commit`).
    """
    from aiokafka.protocol.group import LeaveGroupRequest

    coordinator = client._coordinator
    try:
        await asyncio.wait_for(coordinator.ensure_coordinator_known(), 30.0)
        response = await asyncio.wait_for(
            coordinator._send_req(LeaveGroupRequest(group, member_id)), 10.0
        )
    except Exception as err:  # the join that follows retries the coordinator anyway
        log.warning("group %s: could not remove the dead member %s: %r", group, member_id, err)
        return None
    # aiokafka sends LeaveGroup v0/v1: one error code (Tansu answers 0 for an unknown member too).
    code = int(response.error_code)
    log.info(
        "group %s: %s the dead member %s before joining",
        group,
        "removed" if code == 0 else f"could not remove (error code {code})",
        member_id,
    )
    return code == 0


def _time_group_requests(client: Any, timeline: dict[str, float]) -> None:
    """Record in ``timeline`` when ``client`` first sends JoinGroup (``join_sent``), first has
    one answered without error (``joined``) and first has SyncGroup answered (``synced``)."""
    coordinator = getattr(client, "_coordinator", None)
    send = getattr(coordinator, "_send_req", None)
    if coordinator is None or send is None:
        return

    async def send_req(request: Any) -> Any:
        api = getattr(request, "API_KEY", None)
        if api == _JOIN_GROUP:
            timeline.setdefault("join_sent", time.time())
        response = await send(request)
        if api in (_JOIN_GROUP, _SYNC_GROUP) and getattr(response, "error_code", 1) == 0:
            timeline.setdefault("joined" if api == _JOIN_GROUP else "synced", time.time())
        return response

    coordinator._send_req = send_req


#: Kafka API keys of JoinGroup and SyncGroup.
_JOIN_GROUP = 11
_SYNC_GROUP = 14


def _leave_from_generation_zero(client: Any) -> None:
    """Make ``client``'s close send LeaveGroup in generation 0 too, which aiokafka skips.

    aiokafka leaves the group on close only from a generation above 0; Kafka numbers
    generations from 1, but Tansu from 0, so a member stopping in Tansu's first generation
    would hold its partitions until its session timed out (pinned by
    tests/integration/test_tansu_quirks.py). The LeaveGroup is sent where aiokafka sends its
    own: in the coordinator's close, after its coordination task has finished, so never while
    this member's JoinGroup is in flight. A LeaveGroup sent then (before the consumer's close)
    left the Tansu group stuck in that rebalance, every later member unassigned for minutes
    (tests/integration/test_groups.py). Best effort, as aiokafka's.
    """
    coordinator = getattr(client, "_coordinator", None)
    leave = getattr(coordinator, "_maybe_leave_group", None)
    if coordinator is None or leave is None:
        return

    async def maybe_leave_group() -> None:
        if (
            getattr(coordinator, "generation", -1) == 0
            and getattr(coordinator, "member_id", "")
            and getattr(coordinator, "_group_instance_id", None) is None
        ):
            from aiokafka.protocol.group import LeaveGroupRequest

            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    coordinator._send_req(
                        LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
                    ),
                    5.0,
                )
        await leave()

    coordinator._maybe_leave_group = maybe_leave_group
