"""The live worker: Kafka batches in, flag changes out, state that survives SIGKILL.

Shape (docs/architecture.md):

- The hot path is one aiokafka consumer reading ``getmany`` batches from the predictions and
  outcomes topics. Each batch is decoded once (:mod:`driftswitch.streams.pipeline.ingest`, bad
  records to
  the dead-letter topic) and handed whole to :meth:`Engine.process`; join, scoring, statistics,
  detectors, policy and flag versions all live in the engine, which the backtest shares. Nothing
  on the hot path handles one event at a time (README "Performance" has the figures).
- Flag changes are published to the flags topic (key = flag, value = the encoded
  :class:`FlagChangeEvent`) and acknowledged before the worker goes on.

Partitions and writers. For this release ONE worker evaluates everything: the active worker
reads every partition of both input topics (manual assignment) and is the only writer of every
flag. Which worker is active is decided by a lease: each worker joins the consumer group
``--group`` on the one-partition state topic, and only the member the group coordinator assigns
that partition to processes input and publishes; the others stand by (``/healthz`` says
``standby``) and take over when the active one dies (after the group's session timeout). A
sticky assignor keeps the lease with the active worker when a standby joins, and an active
worker that loses it stops at once. Kafka's group protocol thus gives exactly one writer per
flag without a second topic.

Fencing. A worker frozen past its session timeout (a long GC pause, SIGSTOP, a suspended VM)
still believes it holds the lease when it wakes, and may already hold a fetched batch. Before
anything leaves the worker — a flag change, an alert, a snapshot — it therefore asks the group
coordinator whether it is still a member of the lease group's current generation (an offset
commit on the lease partition, which the coordinator refuses from a member it expelled:
:func:`driftswitch.streams.kafka.connect.check_membership`). An expelled worker publishes
nothing more and stops; during a rebalance it waits until the lease is settled. What is left is
the time between the coordinator's answer and the broker receiving the send: a freeze of more
than a session timeout inside that window (milliseconds) is not fenced, since Kafka without
transactions has no fencing token a consumer of the flags topic could check.

Stages. A worker runs one of two stages (``WorkerSettings.stage``). ``single`` (the field's default;
``driftswitch run --stage all`` runs a join stage beside a ``decide`` worker in one process,
``streams/service/runner.py``) reads the predictions and outcomes topics and does everything above
in one process. ``decide`` is the second half of a scaled-out deployment (docs/architecture.md
"Scaling out"): join stage processes read predictions and outcomes in a consumer group and send, for
each input batch of each join partition, an observation batch
(:mod:`driftswitch.streams.pipeline.merge`) to every partition of the observations topic; the decide
worker reads every partition of that topic, merges the batches in event time
(:class:`~driftswitch.streams.pipeline.merge.Merge`: watermarks, ``join.allowed_lateness``,
duplicates from restarted join partitions dropped) and runs detectors, guardrails, rollouts and
commands on what the merge releases (:meth:`Engine.decide`). The lease and fencing above are the
decide stage's fencing: one decide worker is active and the only writer of every flag, standbys take
over, and an expelled one publishes nothing. A record on the observations topic that is not an
observation batch is dead-lettered with reason ``bad_observation_batch``. Without a snapshot the
decide worker reads the observations topic from its beginning (the join stage's output is its
input); replaying batches a snapshot already covers is impossible (the snapshot holds the offsets),
and a join partition that sends observations again is caught by the merge.

Restart safety. Every ``snapshot_interval`` seconds (and on a clean stop) the worker writes a
snapshot ``{engine.to_state(), next offset per input partition}`` (a decide worker: with the
merge's state) to the state topic (:mod:`driftswitch.streams.service.snapshot`) after every flag
change and dead-letter record of the batches it covers is acknowledged. Without a join store on
disk, the loop only takes the state (encodes it, with the records sent until then); a task of its
own waits for those acknowledgements and the lease's confirmation, sends the snapshot and waits for
its acknowledgement, while the loop goes on (inside the loop, those waits held decisions back by up
to a few hundred milliseconds). Snapshots are written one at a time, in order; a stop, an
operator's command and the next snapshot wait for the one being written. A restarted worker loads
the latest snapshot, seeks to its offsets and replays; the input since the snapshot is applied once
to the restored state, so no outcome is counted twice. Replayed decisions carry the versions they
had when first published, and the worker reads the flags topic at start and publishes only versions
newer than the ones already there, so no decision is duplicated; decisions are published before any
snapshot covers their input, so none is lost. The interleaving of records from different partitions
in a replay can differ from the first run's; the counts it feeds are the same. Input offsets are
never committed to a Kafka consumer group: the snapshot is the only record of them, so group lag
tools do not show this worker's progress (``/healthz`` does).

Join state on disk. With ``state_dir`` the join's pending entries live in RocksDB there
(:mod:`driftswitch.streams.service.joinstore`), not in the snapshot: each snapshot first commits
the changes since the previous one to the store, atomically with the snapshot's own document,
then goes to the state topic without the entries. A checkpoint therefore costs the input since
the last one, and a restart on the same disk opens the store (no replay of the state) and
replays only the input since that checkpoint. A worker whose disk does not hold the latest
snapshot's checkpoint (another machine took over) starts the join empty and counts the pending
entries it could not recover (``join_entries_lost``); a snapshot with the entries inline (written
without a store) moves them into the store.

Commands. The active worker also reads the control topic
(:mod:`driftswitch.streams.pipeline.control`)
in the same loop: each command is applied through :meth:`Engine.apply_command` before the events
of its batch, its flag change published like any other (with the command's record as the
``driftswitch.source`` header), a bad one dead-lettered with its reason. The control offset is in
every snapshot, and a snapshot is written just before a batch's commands are applied, so a
restart applies each command once and at the same point of the input as the first run (commands
are rare; one snapshot per batch of them is cheap). Without a snapshot the worker starts at the
control topic's end, since the published states it adopts already include every command.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from driftswitch.streams.config.model import Config, load_config
from driftswitch.streams.contract.commands import (
    Command,
    CommandError,
    CommandResult,
    decode_command,
)
from driftswitch.streams.contract.errors import ConfigError, DriftswitchError, EventError
from driftswitch.streams.contract.events import (
    Action,
    AlertEvent,
    FlagChangeEvent,
    Output,
    encode,
)
from driftswitch.streams.contract.topics import Topics, TopicSpec
from driftswitch.streams.kafka import connect as kafka
from driftswitch.streams.kafka.settings import KafkaSecurity, KafkaSettings, as_settings
from driftswitch.streams.pipeline.contain import (
    INTERNAL_ERROR,
    check_state,
    describe,
    process_isolating,
)
from driftswitch.streams.pipeline.engine import Emitted, Engine, Result
from driftswitch.streams.pipeline.eventtime import reject_future
from driftswitch.streams.pipeline.ingest import Decoded, Ingest, Rejected, Source
from driftswitch.streams.pipeline.merge import (
    TAG_SPAN,
    Batch,
    BatchError,
    Merge,
    decode_batch,
    offset_of,
)
from driftswitch.streams.pipeline.observations import (
    INTERLEAVED,
    PREDICTED,
    SCORED,
    Observation,
)
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
from driftswitch.streams.service.logs import decision_context, decision_level
from driftswitch.streams.service.pacing import snapshot_interval
from driftswitch.streams.service.recovery import EngineFailedError, Suspects
from driftswitch.streams.service.snapshot import (
    Chunk,
    Snapshot,
    Writing,
    continue_on_store,
    decode_chunks,
    encode_chunks,
    latest_snapshot,
)

if TYPE_CHECKING:
    from driftswitch.streams.contract.flagd import FlagdFile
    from driftswitch.streams.service.hooks import FailedDelivery, Hook, HookDispatcher
    from driftswitch.streams.service.joinstage import JoinStage, LocalBatches
    from driftswitch.streams.service.metrics import Metrics

__all__ = [
    "BAD_OBSERVATION_BATCH",
    "STAGES",
    "NotActiveError",
    "Worker",
    "WorkerSettings",
    "read_flags",
    "state_topic",
]

log = logging.getLogger(__name__)

#: Join metadata of the lease group's member that holds the lease.
_HOLDER = b"holder"
#: Header on each published flag change: ``topic/partition/offset`` of the input that caused it.
HEADER_SOURCE = "driftswitch.source"
#: What a worker can run: everything in one process, or the decide stage (module doc: Stages).
STAGES = ("single", "decide")
#: Dead-letter reason of an observations-topic record that is not an observation batch.
BAD_OBSERVATION_BATCH = "bad_observation_batch"
#: Observation kinds a decide worker accepts (the first element of each observation).
_KINDS = frozenset((PREDICTED, SCORED, INTERLEAVED))


#: Observation records taken on acknowledgement that a fetch has not brought yet, kept at most
#: (:meth:`Worker._take_acknowledged`; beyond it the oldest go unchecked).
_TAKEN_ACKED_MAX = 10_000


class _Acknowledged(NamedTuple):
    """An observations-topic record this process's join stage sent, taken on the broker's
    acknowledgement (:class:`~driftswitch.streams.service.joinstage.LocalBatches`): what the
    decide stage reads of a consumer record."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


def state_topic(topics: Topics) -> TopicSpec:
    """The state (snapshot) topic beside ``topics``: ``<prefix>.state.v1``, one partition."""
    flags = topics.flags.name
    name = (
        flags[: -len(".flags.v1")] + ".state.v1"
        if flags.endswith(".flags.v1")
        else flags + "-state"
    )
    return TopicSpec(name=name, partitions=1, replication_factor=topics.flags.replication_factor)


class NotActiveError(DriftswitchError):
    """A command or reload reached a worker that does not hold the lease (standby, stopping)."""


class LeaseLostError(NotActiveError):
    """The group coordinator no longer counts this worker as the lease holder: it publishes
    nothing more (module doc: Fencing)."""


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker connects and paces itself."""

    bootstrap: str
    topics: Topics
    #: Consumer group of the lease; also the key of this deployment's snapshots.
    group: str = "driftswitch"
    snapshot_interval: float = 1.0
    poll_ms: int = 50
    #: The join stage's ``getmany`` timeout while all its partitions are idle and sent
    #: (``JoinStage._quiet``): records end the wait at once, so it sets only how often an idle
    #: loop turns (the idle data-loss check's start; each turn costs CPU).
    idle_poll_ms: int = 1000
    #: How long the broker may hold a fetch with no data. Tansu answers an empty fetch only when
    #: this runs out (no wake-up on new data), so it bounds the reaction time: keep it short.
    fetch_max_wait_ms: int = 20
    max_records: int = 20_000
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    #: TLS and SASL for every connection the worker makes.
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: Directory of the join's RocksDB store (``<state_dir>/<group>/join``); ``None`` keeps the
    #: pending entries in memory and in every snapshot. Unused by the decide stage (no join).
    state_dir: Path | None = None
    #: ``single`` (join and decide in one process) or ``decide`` (module doc: Stages).
    stage: str = "single"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")

    @property
    def kafka(self) -> KafkaSettings:
        """The bootstrap address with the security settings."""
        return KafkaSettings(bootstrap=self.bootstrap, security=self.security)


async def read_flags(bootstrap: str | KafkaSettings, topic: str) -> dict[str, FlagChangeEvent]:
    """The latest flag state per flag on the flags topic (highest version wins).

    The topic is never compacted by Tansu, so every record is read and the highest version per
    flag kept; undecodable records are logged and skipped.
    """
    records = (await kafka.read_partitions(as_settings(bootstrap), topic)).records
    latest: dict[str, FlagChangeEvent] = {}
    for recs in records.values():
        for rec in recs:
            try:
                event = FlagChangeEvent.model_validate_json(rec.value)
            except ValueError as err:
                log.warning("flags topic %s@%d: undecodable record: %s", topic, rec.offset, err)
                continue
            have = latest.get(event.flag)
            if have is None or event.version > have.version:
                latest[event.flag] = event
    return latest


#: Counters a snapshot keeps (the rest start again at 0 with each process).
KEPT_COUNTERS = ("records", "batches", "join_entries_lost", "observations", "observations_lost")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _observation_problem(obs: Any, topics: int) -> str | None:
    """What makes a decoded observation unusable by the merge and the worker, or None.

    Checked: the kind; flag, variant and request id are strings; a finite event time; the side;
    and the input positions last, ``[topic index, offset]`` pairs (topic index below
    ``topics``). The remaining fields are the decision half's to read.
    """
    if not isinstance(obs, list):
        return "not an array"
    if not _is_int(obs[0]) or obs[0] not in _KINDS:
        return f"unknown kind {obs[0]!r}"
    if not (isinstance(obs[2], str) and isinstance(obs[3], str) and isinstance(obs[5], str)):
        return "flag, variant and request id must be strings"
    ts = obs[4]
    if not (isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts)):
        return f"event time {ts!r} is not a finite number"
    if not _is_int(obs[6]):
        return f"side {obs[6]!r} is not an integer"
    positions = obs[-1]
    if not isinstance(positions, list) or not positions:
        return "the last element must be the input positions, [[topic, offset], ...]"
    for pos in positions:
        if not (
            isinstance(pos, list)
            and len(pos) == 2
            and _is_int(pos[0])
            and _is_int(pos[1])
            and 0 <= pos[0] < topics
            and pos[1] >= 0
        ):
            return f"input position {pos!r} is not [topic index 0..{topics - 1}, offset]"
    return None


def _decide_contained(
    engine: Engine, observations: Sequence[Observation]
) -> tuple[Engine, list[Emitted], list[tuple[int, str]]]:
    """``engine.decide`` from checkpoints (deep copies), bisecting a failing run of observations
    down to the ones that fail on their own; those are left out and returned as ``(index,
    detail)``. The engine to continue with, the outputs (``index`` into ``observations``) and
    what was left out (the decide stage's :func:`~driftswitch.streams.pipeline.contain.
    process_isolating`)."""
    outputs: list[Emitted] = []
    poisoned: list[tuple[int, str]] = []

    def run(engine: Engine, lo: int, hi: int) -> Engine:
        if lo >= hi:
            return engine
        checkpoint = copy.deepcopy(engine)
        try:
            got = engine.decide(observations[lo:hi])
            check_state(engine)
        except Exception as exc:
            if hi - lo == 1:
                poisoned.append((lo, describe(exc)))
                return checkpoint
            mid = (lo + hi) // 2
            return run(run(checkpoint, lo, mid), mid, hi)
        outputs.extend(Emitted(e.event, e.index + lo) for e in got)
        return engine

    return run(engine, 0, len(observations)), outputs, poisoned


def _marks_from_state(state: dict[str, dict[int, list[int]]]) -> dict[str, dict[int, Mark]]:
    return {t: {p: Mark.from_state(m) for p, m in ps.items()} for t, ps in state.items()}


class Worker:
    """One driftswitch worker process: lease, consume, evaluate, publish, snapshot, serve HTTP.

    Run it with ``await worker.run()``; set :attr:`stop` (an :class:`asyncio.Event`) to stop it
    cleanly (a final snapshot is written). Status for the HTTP API is :meth:`status`.
    """

    def __init__(
        self,
        config: Config,
        settings: WorkerSettings,
        metrics: Metrics | None = None,
        config_path: str | Path | None = None,
        hooks: Iterable[Hook] | None = None,
        flagd_file: FlagdFile | None = None,
    ) -> None:
        self.config = config
        #: The file ``config`` came from: what a reload (SIGHUP, HTTP) reads again.
        self.config_path = config_path
        #: Prometheus metrics (``GET /metrics``), if the caller exports them.
        self.metrics = metrics
        #: Delivers flag changes and alerts to ``hooks``, dead-lettering what it gives up; the
        #: caller starts it (``async with worker.hooks``), :meth:`run` closes it.
        self.hooks: HookDispatcher | None = None
        if hooks is not None:
            from driftswitch.streams.service.hooks import HookDispatcher

            self.hooks = HookDispatcher(
                hooks,
                deadletter=self.deadletter_delivery,
                record=metrics.record_hook if metrics is not None else None,
            )
        #: A flagd document file kept current with the published states (``--flagd-file``).
        self.flagd_file = flagd_file
        self.settings = settings
        self.topics = settings.topics
        self.state_topic = state_topic(settings.topics)
        self.ingest = Ingest(self.topics.predictions.name, self.topics.outcomes.name)
        #: ``single`` or ``decide`` (module doc: Stages).
        self.stage = settings.stage
        self.deciding = settings.stage == "decide"
        #: The decide stage's input, and the names of the join stage's input topics by the index
        #: an observation's positions give them (for the ``driftswitch.source`` header).
        self.observations = self.topics.observations
        self._join_inputs = (
            self.topics.predictions.name,
            self.topics.outcomes.name,
            self.topics.repartition.name,
        )
        #: The decide stage's event-time merges of the join partitions, one per observations
        #: partition (unused by ``single``).
        self.merges = self._new_merges()
        #: The join's store on local disk (``settings.state_dir``), or ``None``.
        self.join_store: RocksJoinStore | None = None
        if settings.state_dir is not None and not self.deciding:
            self.join_store = RocksJoinStore(Path(settings.state_dir) / settings.group / "join")
        self.engine = Engine(config, join_store=self.join_store)
        self.stop = asyncio.Event()
        #: ``active`` once the lease is held and state restored; ``standby`` while waiting.
        self.role = "starting"
        #: The latest state per flag known to be on the flags topic.
        self.flags: dict[str, FlagChangeEvent] = {}
        self.alerts: list[AlertEvent] = []
        self.offsets: dict[str, dict[int, int]] = {}
        #: The last record consumed per input partition (see the dataloss module).
        self.marks: dict[str, dict[int, Mark]] = {}
        self.counters: Counter[str] = Counter()
        self.resumed_from: int | None = None
        self._snapshot_seq = 0
        #: The id of the last checkpoint written or restored (see the snapshot module).
        self._checkpoint = ""
        self._parent = ""
        #: Seconds from holding the lease to active, at the last start; the last checkpoint's.
        self.recovery_seconds: float | None = None
        self.checkpoint_seconds = 0.0
        #: The last good snapshot's chunks (in memory) and the input to replay with containment
        #: after an engine failure (:mod:`driftswitch.streams.service.recovery`).
        self._base_chunks: list[bytes] = []
        self._suspects = Suspects()
        #: When a batch was last processed, and since when the lease has been missing
        #: (monotonic seconds).
        self._last_batch_at = time.monotonic()
        self._lease_missing_since: float | None = None
        #: The check for input the broker lost (see the dataloss module).
        self._loss = LossCheck.of(settings.kafka)
        self._dirty = False
        self._lease_held = asyncio.Event()
        self._lease_lost = asyncio.Event()
        self._producer: Any = None
        self._consumer: Any = None
        self._lease: Any = None
        self._deliveries: list[asyncio.Future[Any]] = []
        self._snapshot_cost = 0.0
        #: A snapshot taken but still being written (module doc: Restart safety), if any.
        self._writing = Writing()
        self._lease_poller: asyncio.Future[None] | None = None
        #: Commands submitted here, by id, waiting for the loop to apply them.
        self._waiters: dict[str, asyncio.Future[CommandResult]] = {}
        #: The join stage running in this process (``driftswitch run --stage all``), whose
        #: status and metrics this worker's HTTP API shows too.
        self.join_stage: JoinStage | None = None
        #: Observation records taken on their acknowledgement that no fetch has brought yet:
        #: ``(partition, offset) → value``, compared with the record the fetch brings.
        self._taken_acked: dict[tuple[int, int], bytes] = {}
        #: Per assigned partition: the offset the consumer's next fetched record should have
        #: (where it was sought to, or after the last record fetched): records that start below
        #: it were rewound (:meth:`_check_rewound`).
        self._fetch_at: dict[Any, int] = {}
        #: False once a fetched record was not the one acknowledged at its offset.
        self._take_acked = True
        #: Held while the engine changes (a batch, a command, a reload): one change at a time.
        self._engine_lock = asyncio.Lock()

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Plain-data status: role, progress, rejections and the engine's view of every flag (a
        decide worker: and its merge, :meth:`merge_status`)."""
        status: dict[str, Any] = {
            "role": self.role,
            "stage": self.stage,
            "unhealthy": self.unhealthy(),
            "group": self.settings.group,
            "resumed_from_snapshot": self.resumed_from,
            "records": self.counters["records"],
            "events": self.ingest.accepted,
            "batches": self.counters["batches"],
            "flag_changes_published": self.counters["published"],
            "snapshots_written": self.counters["snapshots"],
            # Input partitions found lost by the broker since this process started (data-loss
            # policy: streams/service/dataloss.py, and records that came back rewound).
            "input_resets": self.counters["input_resets"],
            "rejected": dict(self.ingest.rejected),
            "offsets": {t: {str(p): o for p, o in ps.items()} for t, ps in self.offsets.items()},
            "state": {
                "join_store": str(self.join_store.path) if self.join_store is not None else None,
                "join_store_bytes": self._store_bytes(),
                "join_entries_lost": self.counters["join_entries_lost"],
                "checkpoint_seconds": round(self.checkpoint_seconds, 6),
                "recovery_seconds": (
                    round(self.recovery_seconds, 3) if self.recovery_seconds is not None else None
                ),
            },
            "engine": self.engine_snapshot() if self.role == "active" else None,
        }
        if self.deciding:
            status["observations"] = self.counters["observations"]
            status["merge"] = self.merge_status()
        if self.join_stage is not None:
            status["join_stage"] = self.join_stage.status()
        return status

    def engine_snapshot(self) -> dict[str, Any]:
        """``Engine.snapshot()``; in the decide stage its ``join`` section (and each variant's
        ``expired``) and its ``counters`` (events accepted, the join's rejections) come from
        the join stage running in this process (``--stage all``: :meth:`JoinStage.join_counters`,
        :meth:`JoinStage.input_counters`), or ``join`` says where the join's counts are."""
        snap: dict[str, Any] = self.engine.snapshot()
        if not self.deciding:
            return snap
        if self.join_stage is None:
            snap["join"] = {"in": "the join stage's processes: see their /healthz"}
            return snap
        counters, expired = self.join_stage.join_counters()
        snap["join"] = {**counters, "from": "join_stage: the partitions this process owns"}
        snap["counters"] = self.join_stage.input_counters()
        for flag, f in snap["flags"].items():
            for variant, stats in f["variants"].items():
                stats["expired"] = expired.get(f"{flag}/{variant}", 0)
        return snap

    def merge_status(self) -> dict[str, Any]:
        """The decide stage's merges: observations buffered, late and duplicate counts (in all),
        and per observations partition the same with its release bound (event time; ``None``
        before every busy join partition was heard from, or once all are idle: ``all_idle``) and
        each join partition's watermark and idle flag."""
        partitions: dict[str, Any] = {}
        for p, merge in sorted(self.merges.items()):
            bound = merge.bound
            partitions[str(p)] = {
                "buffered": len(merge),
                "late": merge.late,
                "duplicates": merge.duplicates,
                "bound": bound if math.isfinite(bound) else None,
                "all_idle": bound == math.inf,
                "sources": [
                    {"source": j, "watermark": w if math.isfinite(w) else None, "idle": idle}
                    for j, (w, idle) in enumerate(zip(merge.watermarks, merge.idle, strict=True))
                ],
            }
        merges = self.merges.values()
        return {
            "buffered": sum(len(m) for m in merges),
            "late": sum(m.late for m in merges),
            "duplicates": sum(m.duplicates for m in merges),
            "lost": self.counters["observations_lost"],
            "allowed_lateness": self.config.join.allowed_lateness,
            "partitions": partitions,
        }

    def _new_merges(self, state: Any = None) -> dict[int, Merge]:
        """One merge of the join partitions (one per input partition) per observations
        partition, fresh or continuing ``state`` (:meth:`_merges_state`).

        Per observations partition: a join partition's batches reach every observations
        partition, each read at its own pace, so one merge over all of them would see a
        batch's copy on a fast partition advance the watermark past observations still on a
        slow one. The flags of different partitions are disjoint, so deciding each partition's
        merge on its own decides every flag in its event-time order.
        """
        lateness = self.config.join.allowed_lateness
        sources = self.topics.predictions.partitions
        merges: dict[int, Merge] = {}
        for p in range(self.observations.partitions):
            saved = (state or {}).get(str(p))
            if saved is not None and int(saved["sources"]) != sources:
                log.error(
                    "the snapshot's merge of observations partition %d has %s join partitions, "
                    "the input topics now %d: that merge starts afresh",
                    p,
                    saved["sources"],
                    sources,
                )
                saved = None
            merges[p] = (
                Merge.from_state(saved, lateness, tagged=True)
                if saved is not None
                else Merge(sources=sources, allowed_lateness=lateness, tagged=True)
            )
        return merges

    async def _replay_merges(self) -> None:
        """Give the restored merges back their buffered observations: the snapshot names them by
        tag (observations record offset and index, :data:`~driftswitch.streams.pipeline.merge.
        TAG_SPAN`), so those records are read again from the observations topic. One the broker
        no longer has is logged and counted (``observations_lost``): what it held is not decided.
        """
        ranges = {
            p: (merge.missing[0] // TAG_SPAN, merge.missing[-1] // TAG_SPAN + 1)
            for p, merge in self.merges.items()
            if merge.missing
        }
        if not ranges:
            return
        started = time.monotonic()
        read = await kafka.read_ranges(
            self.settings.kafka,
            self.observations.name,
            ranges,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        back, lost = self._replayed(read)
        log.info(
            "merge buffers rebuilt from %s: %d observations read again, %d lost, in %.2f s",
            self.observations.name,
            back,
            lost,
            time.monotonic() - started,
        )

    def _replayed(self, read: Mapping[int, Sequence[Any]]) -> tuple[int, int]:
        """Hand the records :meth:`_replay_merges` read again (per observations partition) to
        their merges; return how many buffered observations came back and how many were lost
        (logged, counted in ``observations_lost``, and forgotten)."""
        back = lost = 0
        for p, records in read.items():
            merge = self.merges[p]
            wanted = len(merge.missing)
            needed = {tag // TAG_SPAN for tag in merge.missing}
            observations: list[Observation] = []
            for record in records:
                if record.offset in needed:
                    with contextlib.suppress(BatchError):  # dead-lettered when first read
                        observations += self._read_batch(record).observations
            merge.replay(observations)
            back += wanted - len(merge.missing)
            lost += self._lose_missing(p, "are gone from the broker")
        return back, lost

    def _lose_missing(self, partition: int, why: str) -> int:
        """Give up the buffered observations of ``partition``'s merge not read again yet: log
        them (``why``), count them in ``observations_lost``; return how many."""
        merge = self.merges[partition]
        missing = merge.missing
        if missing:
            log.error(
                "%d buffered observations of %s[%d] %s (records %d to %d): they are not decided",
                len(missing),
                self.observations.name,
                partition,
                why,
                missing[0] // TAG_SPAN,
                missing[-1] // TAG_SPAN,
            )
            self.counters["observations_lost"] += len(missing)
            merge.missing = []
        return len(missing)

    def _merges_state(self) -> dict[str, Any]:
        return {str(p): merge.to_state() for p, merge in self.merges.items()}

    def _input_specs(self) -> tuple[TopicSpec, ...]:
        """The topics this worker's stage reads (besides the control topic)."""
        if self.deciding:
            return (self.observations,)
        return (self.topics.predictions, self.topics.outcomes)

    def _store_bytes(self) -> int:
        store = self.join_store
        if store is None:
            return 0
        with contextlib.suppress(Exception):  # closed at stop
            return store.size_bytes()
        return 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the lease, restore, then process batches until :attr:`stop` is set."""
        s = self.settings
        self._producer = await kafka.open_producer(s.kafka, linger_ms=0, acks="all")
        try:
            await self._acquire_lease()
            if self.stop.is_set():
                return
            started = time.monotonic()
            await self._restore()
            self.recovery_seconds = time.monotonic() - started
            self.role = "active"
            log.info(
                "%s worker active in group %s: %d flags, reading %s",
                self.stage,
                s.group,
                len(self.config.flags),
                " and ".join(spec.name for spec in self._input_specs()),
            )
            await self._loop()
            if self._consumer is not None and not self._lease_lost.is_set():
                try:
                    # A rebalance under way (a standby joining) may hold the lease back for a
                    # moment: wait for it to settle rather than lose the final snapshot.
                    await self._write_snapshot(patience=2 * s.session_timeout_ms / 1000)
                except LeaseLostError as exc:
                    log.warning(
                        "no final snapshot (%s): the next active worker replays from the last one",
                        exc,
                    )
        finally:
            self.role = "stopped"
            with contextlib.suppress(Exception):
                await self._writing.settle()  # the loop failed: whatever the last one comes to
            if self._lease_poller is not None:
                self._lease_poller.cancel()
            await self._loss.close()
            if self.hooks is not None:
                # Deliver or dead-letter what is queued while the producer is still up.
                await self.hooks.close()
            if self.join_store is not None:
                self.join_store.close()
            for client in (self._consumer, self._lease, self._producer):
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.stop()

    async def _acquire_lease(self) -> None:
        """Join the lease group on the state topic; wait until assigned its partition."""

        async def revoked(_listener: Any, partitions: Any) -> None:
            # Eager rebalancing revokes everything first, even what comes straight back: stop
            # writing until the assignment says whether the lease is still ours.
            self._lease_held.clear()
            self._lease_missing_since = time.monotonic()

        async def assigned(_listener: Any, partitions: Any) -> None:
            if self.join_stage is not None and self.join_stage.local is not None:
                # Whether this process's join stage keeps its batches for its decide stage.
                self.join_stage.local.leased = bool(partitions)
            if partitions:
                self._lease.pause(*partitions)
                self._lease_held.set()
                self._lease_missing_since = None
            elif self.role == "active":
                log.error("lease on %s lost to another worker: stopping", self.state_topic.name)
                self._lease_lost.set()
                self.stop.set()

        s = self.settings
        self._lease = await kafka.open_consumer(
            s.kafka,
            group_id=s.group,
            enable_auto_commit=False,
            session_timeout_ms=s.session_timeout_ms,
            partition_assignment_strategy=(
                kafka.lease_assignor(lambda: self.role == "active", _HOLDER),
            ),
            heartbeat_interval_ms=s.heartbeat_interval_ms,
        )
        self._lease.subscribe(
            [self.state_topic.name], listener=kafka.rebalance_listener(revoked, assigned)
        )
        self.role = "standby"
        log.info("waiting for the lease on %s (group %s)", self.state_topic.name, s.group)
        # Polled, never read: the paused lease partition only keeps this member in the group
        # (aiokafka leaves the group when a consumer is not polled for max_poll_interval_ms).
        while not self._lease_held.is_set() and not self.stop.is_set():
            await self._lease.getmany(timeout_ms=200)
        self._lease.pause(*self._lease.assignment())
        self._lease_poller = asyncio.ensure_future(self._poll_lease())

    async def _poll_lease(self) -> None:
        while not self.stop.is_set():
            await self._lease.getmany(timeout_ms=1000)

    async def _restore(self) -> None:
        """Load the latest snapshot and the published flags; seek the inputs; publish initials."""
        s = self.settings
        t0 = time.monotonic()
        self.flags = await read_flags(s.kafka, self.topics.flags.name)
        await self._write_flagd(*self.flags.values())
        t1 = time.monotonic()
        snapshot = await self._load_snapshot()
        t2 = time.monotonic()
        if snapshot is not None and snapshot.stage != self.stage:
            log.error(
                "snapshot %d of group %s was written by a %s worker, and this one runs the %s "
                "stage: not resumed from; starting from the published flag states with fresh "
                "statistics",
                snapshot.seq,
                s.group,
                snapshot.stage,
                self.stage,
            )
            self._snapshot_seq = snapshot.seq
            snapshot = None
        if self.join_store is not None:
            snapshot = self._local_checkpoint(snapshot, self.join_store)
        if snapshot is not None:
            self.engine = Engine.from_state(
                self.config, snapshot.engine, join_store=self.join_store
            )
            if self.deciding:
                self.merges = self._new_merges(snapshot.merge)
            self.offsets = snapshot.offsets
            self.marks = _marks_from_state(snapshot.marks)
            self._snapshot_seq = snapshot.seq
            self._checkpoint, self._parent = snapshot.checkpoint, snapshot.parent
            self.resumed_from = snapshot.seq
            self.counters.update(snapshot.counters)
            log.info("resumed from snapshot %d at offsets %s", snapshot.seq, snapshot.offsets)
            # Flags added to the config since the snapshot have never been published.
            for state in self.engine.states():
                if state.flag not in self.flags:
                    await self._publish_flag(state, None)
        else:
            for state in self.engine.initial_states():
                published = self.flags.get(state.flag)
                if published is not None:
                    self.engine.adopt(published)
                else:
                    await self._publish_flag(state, None)
        self._consumer = await kafka.open_consumer(
            s.kafka,
            enable_auto_commit=False,
            # A position out of range restarts at the broker's first offset, never its last:
            # where the records before it went (retention), nothing later is skipped; and
            # _seek relies on it.
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        tps = [
            kafka.topic_partition(spec.name, p)
            for spec in self._input_specs()
            for p in range(spec.partitions)
        ]
        control = kafka.topic_partition(self.topics.control.name, 0)
        self._consumer.assign([*tps, control])
        for tp in tps:
            offset = self.offsets.get(tp.topic, {}).get(tp.partition)
            if offset is None:
                offset = self.offsets.setdefault(tp.topic, {})[tp.partition] = 0
            self._seek(tp, offset)
        # Commands: from the snapshot's offset (each is applied to the state exactly once);
        # without a snapshot, from the end: the published states adopted above include every
        # earlier command, and applying one again could undo what happened after it.
        offset = self.offsets.get(control.topic, {}).get(0)
        if offset is None:
            offset = await self._end_of(control)
            self.offsets.setdefault(control.topic, {})[0] = offset
        self._seek(control, offset)
        await self._check_input(wait=True)
        if self.deciding:
            # After the data-loss check: the tags of a recreated observations partition name
            # other records now (_reset_lost counts its observations lost instead).
            await self._replay_merges()
        chunks = self._snapshot_chunks(self._snapshot_seq, self._checkpoint, self._parent)
        self._base_chunks = [value for value, _ in chunks]
        store = self.engine.join_store
        if isinstance(store, RocksJoinStore):
            # The store now holds exactly the restored state (entries moved in from an older
            # snapshot included), so a rollback returns to it.
            store.commit(b"".join(self._base_chunks))
        log.info(
            "restored in %.2f s: flags topic %.2f s, state topic %.2f s, the rest (engine, join "
            "store, seeking and checking the inputs) %.2f s",
            time.monotonic() - t0,
            t1 - t0,
            t2 - t1,
            time.monotonic() - t2,
        )

    def _local_checkpoint(
        self, snapshot: Snapshot | None, store: RocksJoinStore
    ) -> Snapshot | None:
        """The snapshot to resume from, given the latest on the state topic and the join store
        (:func:`~driftswitch.streams.service.snapshot.continue_on_store`)."""

        def join_of(snap: Snapshot) -> Any:
            return snap.engine.get("join", {}) if isinstance(snap.engine, dict) else {}

        resumed, lost = continue_on_store(snapshot, store, join_of)
        self.counters["join_entries_lost"] += lost
        return resumed

    async def _end_of(self, tp: Any) -> int:
        """The offset after the last record of ``tp``, read (Tansu under-reports end offsets)."""
        read = await kafka.read_partitions(self.settings.kafka, tp.topic, [tp.partition])
        return read.next_offsets[tp]

    async def _load_snapshot(self) -> Snapshot | None:
        read = await kafka.read_partitions(
            self.settings.kafka,
            self.state_topic.name,
            [0],
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        records = next(iter(read.records.values()))
        return latest_snapshot(records, self.settings.group.encode())

    # -- the hot loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        s = self.settings
        last_snapshot = time.monotonic()
        stop_wait = asyncio.ensure_future(self.stop.wait())
        # With the join stage in this process, its records are also taken on acknowledgement.
        local = self.join_stage.local if self.join_stage is not None and self.deciding else None
        fetch: asyncio.Future[Any] | None = None
        try:
            while not self.stop.is_set():
                if not self._lease_held.is_set():
                    await self._wait_for_lease(stop_wait)
                    continue
                if fetch is None:
                    fetch = asyncio.ensure_future(
                        self._consumer.getmany(timeout_ms=s.poll_ms, max_records=s.max_records)
                    )
                waits = {fetch, stop_wait}
                arrived = None
                if local is not None and self._take_acked:
                    arrived = asyncio.ensure_future(local.arrived.wait())
                    waits.add(arrived)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if arrived is not None:
                    arrived.cancel()
                if self.stop.is_set() and not fetch.done():
                    break
                batch: dict[Any, list[Any]] = {}
                if fetch.done():
                    batch = fetch.result()
                    fetch = None
                    if not batch:
                        await self._check_input(wait=False)
                try:
                    self._writing.check()
                    if batch or local is not None:
                        async with self._engine_lock:
                            if batch:
                                self._check_rewound(batch)
                            if local is not None:
                                self._take_acknowledged(batch, local)
                            if batch:
                                await self._process(batch)
                    now = time.monotonic()
                    interval = snapshot_interval(s.snapshot_interval, self._snapshot_cost)
                    if self._dirty and now - last_snapshot >= interval:
                        await self._write_snapshot(behind=True)
                        last_snapshot = time.monotonic()
                        self._snapshot_cost = last_snapshot - now
                except EngineFailedError as err:
                    await self._recover(err)
                except LeaseLostError:
                    break
        finally:
            stop_wait.cancel()
            if fetch is not None and not fetch.done():
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fetch

    def _take_acknowledged(self, batch: dict[Any, list[Any]], local: LocalBatches) -> None:
        """Complete a fetched ``batch`` (maybe empty) with the observation records this
        process's join stage sent whose turn it is, taken on their acknowledgement
        (:class:`~driftswitch.streams.service.joinstage.LocalBatches`), and drop from it the
        fetched records taken that way before.

        The record the broker acknowledged at the offset this stage reads next in a partition
        is the next record there, so taking it is the same as reading it. A fetched record taken
        before must be the one acknowledged at its offset; one that is not means the broker's
        acknowledgements cannot be trusted: records are no longer taken on acknowledgement, and
        the failure (:class:`EngineFailedError`) replays from the last snapshot."""
        topic = self.observations.name
        positions = self.offsets.get(topic, {})
        taken = self._taken_acked
        for tp in [t for t in batch if t.topic == topic]:
            start = positions.get(tp.partition)
            msgs = batch[tp]
            if start is None or msgs[0].offset >= start:
                continue
            for m in msgs:
                if m.offset >= start:
                    break
                sent = taken.pop((tp.partition, m.offset), None)
                if sent is not None and sent != m.value:
                    self._take_acked = False
                    raise EngineFailedError(
                        f"the record at {topic}/{tp.partition}/{m.offset} is not the one the "
                        "broker acknowledged there: no longer taking the join stage's records "
                        "on acknowledgement"
                    )
            kept = [m for m in msgs if m.offset >= start]
            if kept:
                batch[tp] = kept
            else:
                del batch[tp]
        local.arrived.clear()
        if not self._take_acked:
            return
        for p in range(self.observations.partitions):
            start = positions.get(p)
            if start is None:
                continue
            tp = kafka.topic_partition(topic, p)
            read = batch.get(tp, [])
            got = local.acknowledged(p, read[-1].offset + 1 if read else start)
            if not got:
                continue
            records = [_Acknowledged(topic, p, offset, key, value) for offset, key, value in got]
            for r in records:
                taken[(p, r.offset)] = r.value
            batch[tp] = [*read, *records]
        while len(taken) > _TAKEN_ACKED_MAX:
            del taken[next(iter(taken))]

    async def _wait_for_lease(self, stop_wait: asyncio.Future[Any]) -> None:
        """During a rebalance of the lease group: publish nothing until it is settled."""
        held = asyncio.ensure_future(self._lease_held.wait())
        await asyncio.wait({held, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        held.cancel()

    async def _process(self, batch: dict[Any, list[Any]]) -> None:
        """Decode, evaluate and publish one ``getmany`` batch."""
        records: list[Any] = []
        outcomes = self.topics.outcomes.name
        control = self.topics.control.name
        # Commands first: an operator's kill takes effect before the events read with it. A
        # snapshot right at this boundary makes a replay apply them at the same point of the
        # input (a restore after a detector kill must not turn into a restore before it).
        commands = [t for t in batch if t.topic == control]
        if commands and self._dirty:
            await self._write_snapshot()
        for tp in commands:
            await self._apply_commands(batch.pop(tp))
        if not batch:
            return
        if self.deciding:
            await self._process_observations(batch)
            return
        # Predictions before outcomes, then by partition: a stable order for a batch.
        for tp in sorted(batch, key=lambda t: (t.topic == outcomes, t.partition)):
            msgs = batch[tp]
            records += msgs
            self.offsets.setdefault(tp.topic, {})[tp.partition] = msgs[-1].offset + 1
            self.marks.setdefault(tp.topic, {})[tp.partition] = mark_of(msgs[-1])
        decoded = self.ingest.decode(records)
        reject_future(decoded, self.ingest, self.config.join.max_clock_skew, time.time())
        result = self._evaluate(decoded)
        self.ingest.reject_events(
            decoded, [(r.index, r.reason, r.detail) for r in result.rejections]
        )
        outputs = []
        for emitted in result.outputs:
            source = decoded.source(emitted.index)
            where = f"{source.topic}/{source.partition}/{source.offset}"
            outputs.append((emitted.event, where, decoded.events[emitted.index].ts))
        await self._publish_outputs(outputs)
        await self._deadletter(decoded)
        self._batch_done(len(records))

    def _batch_done(self, records: int) -> None:
        self.counters["records"] += records
        self.counters["batches"] += 1
        self._last_batch_at = time.monotonic()
        self._dirty = True
        if self.metrics is not None:
            self.metrics.record_batch()

    async def _publish_outputs(
        self, outputs: Sequence[tuple[Output, str | None, float | None]]
    ) -> None:
        """Publish decisions, in order: each a flag change to publish or an alert to log and
        announce, with ``where`` (``topic/partition/offset``, None for a change no input made)
        and the event time of the input that decided it.

        One fence covers them all (:meth:`_fence`), the flag changes are sent together and
        acknowledged together, and then each is recorded, logged and announced in turn. A
        change of the same flag sent later in the batch follows the earlier one on its
        partition. Published one at a time, each change waited for the fence and the
        acknowledgement of every change before it in its batch: on the embedded broker under
        load, three kills decided by one batch took 170, 33 and 45 ms in turn, so the third
        went out 250 ms after the first was decided instead of with it."""
        if not outputs:
            return
        await self._fence()
        sends = []
        for event, where, _ in outputs:
            if isinstance(event, FlagChangeEvent):
                sends.append(await self._send_flag(event, where))
            else:
                sends.append(None)
        await asyncio.gather(*(delivery for _, delivery in filter(None, sends)))
        await self._write_flagd(*(event for event, _ in filter(None, sends)))
        for (event, where, event_ts), sent in zip(outputs, sends, strict=True):
            if isinstance(event, AlertEvent):
                self._alerted(event, where, event_ts)
            elif sent is not None:
                self._flag_published(sent[0], event_ts)

    def _alerted(self, event: AlertEvent, where: str | None, event_ts: float | None) -> None:
        """Keep, log and announce an alert decided by the input at ``where`` (fenced)."""
        self.alerts.append(event)
        del self.alerts[:-100]
        log.warning(
            "alert (no flag change) from %s: %s",
            where,
            encode(event),
            extra=decision_context(event),
        )
        self._announce(event, event_ts)

    # -- the decide stage --------------------------------------------------------------------

    async def _process_observations(self, batch: dict[Any, list[Any]]) -> None:
        """Merge one ``getmany`` batch of observation batches and decide on what it releases.

        Records are taken in offset order per partition, each into its partition's merge; one
        that is not an observation batch is dead-lettered (``bad_observation_batch``). Late
        observations (module doc of :mod:`~driftswitch.streams.pipeline.merge`) are decided
        first, then the ones released, in event-time order per partition (the partitions' flags
        are disjoint); each decision's ``driftswitch.source`` is the last input position of the
        observation that decided it.
        """
        records: list[Any] = []
        for tp in sorted(batch, key=lambda t: t.partition):
            msgs = batch[tp]
            records += msgs
            self.offsets.setdefault(tp.topic, {})[tp.partition] = msgs[-1].offset + 1
            # The mark is the last record fetched (one taken on acknowledgement has no timestamp
            # here); an older one identifies the partition's data as well.
            fetched = next((m for m in reversed(msgs) if not isinstance(m, _Acknowledged)), None)
            if fetched is not None:
                self.marks.setdefault(tp.topic, {})[tp.partition] = mark_of(fetched)
        rejected: list[Rejected] = []
        if self._suspects.covers(records):
            emitted, observations = self._decide_isolating(records, rejected)
            self._suspects.passed(records)
        else:
            late: list[Observation] = []
            for m in records:
                try:
                    got = self._read_batch(m)
                except BatchError as err:
                    rejected.append(self._reject(m, BAD_OBSERVATION_BATCH, str(err)))
                    continue
                try:
                    late += self.merges[m.partition].add(got)
                except Exception as exc:
                    raise EngineFailedError(
                        f"merging an observation batch failed: {describe(exc)}"
                    ) from exc
            observations = late + self._release()
            try:
                emitted = self.engine.decide(observations)
            except Exception as exc:
                raise EngineFailedError(f"deciding failed: {describe(exc)}") from exc
        deciding = [observations[e.index] for e in emitted]
        await self._publish_outputs(
            [(e.event, self._where(obs), obs[4]) for e, obs in zip(emitted, deciding, strict=True)]
        )
        await self._send_deadletters(rejected)
        self.counters["observations"] += len(observations)
        self._batch_done(len(records))

    def _release(self) -> list[Observation]:
        """What every partition's merge releases, partition after partition (``Engine.decide``
        numbers them by position)."""
        released: list[Observation] = []
        for _, merge in sorted(self.merges.items()):
            released += merge.take()
        return released

    def _read_batch(self, record: Any) -> Batch:
        """The observation batch in ``record``, each observation given its tag (the record's
        offset times :data:`~driftswitch.streams.pipeline.merge.TAG_SPAN` plus its index in the
        record) and its join partition, inserted in this order before its input positions,
        which stay last; :class:`BatchError` if it is not one
        this worker can merge. A batch this process's join stage sent is taken from memory
        (:class:`~driftswitch.streams.service.joinstage.LocalBatches`), already checked."""
        local = self.join_stage.local if self.join_stage is not None else None
        if local is not None:
            sent = local.take(record.partition, record.value)
            if sent is not None:
                source = sent.source
                base = record.offset * TAG_SPAN
                tagged = [
                    (*obs[:-1], tag, source, obs[-1])
                    for tag, obs in enumerate(sent.observations, base)
                ]
                return Batch(source, sent.read, sent.watermark, sent.idle, tagged, sent.run)
        batch = decode_batch(record.value or b"")
        sources = self.topics.predictions.partitions
        if not 0 <= batch.source < sources:
            raise BatchError(
                f"join partition {batch.source} outside 0..{sources - 1} (the input topics "
                f"have {sources} partitions)"
            )
        for i, obs in enumerate(batch.observations):
            problem = _observation_problem(obs, len(self._join_inputs))
            if problem is not None:
                raise BatchError(f"observations[{i}]: {problem}")
        base = record.offset * TAG_SPAN
        for i, obs in enumerate(batch.observations):
            assert isinstance(obs, list)  # checked above: decoded JSON arrays
            obs[-1:-1] = (base + i, batch.source)
        return batch

    def _input_source(self, obs: Observation) -> Source:
        """The last input an observation came from (the join partition is its input partition)."""
        topic, position = obs[-1][-1]
        return Source(self._join_inputs[topic], obs[-2], offset_of(position))

    def _where(self, obs: Observation) -> str:
        """``topic/partition/offset`` of the last input an observation came from."""
        source = self._input_source(obs)
        return f"{source.topic}/{source.partition}/{source.offset}"

    def _reject(self, record: Any, reason: str, detail: str) -> Rejected:
        source = Source(record.topic, record.partition, record.offset)
        return self.ingest.reject(source, record.key, record.value, reason, detail)

    def _decide_isolating(
        self, records: Sequence[Any], rejected: list[Rejected]
    ) -> tuple[list[Emitted], list[Observation]]:
        """The decide stage's batch on suspect input (after a failure): each record merged from
        a copy of the merge, and the released observations decided with
        :func:`_decide_contained`; a record or an observation that fails is left out and
        dead-lettered as ``internal_error``."""
        late: list[Observation] = []
        for m in records:
            try:
                got = self._read_batch(m)
            except BatchError as err:
                rejected.append(self._reject(m, BAD_OBSERVATION_BATCH, str(err)))
                continue
            merge = self.merges[m.partition]
            trial = copy.deepcopy(merge)
            try:
                trial.add(got)
                trial.release()
            except Exception as exc:
                where = f"{m.topic}/{m.partition}/{m.offset}"
                log.error("observation batch at %s left out: it breaks the merge", where)
                rejected.append(self._reject(m, INTERNAL_ERROR, describe(exc)))
                continue
            late += merge.add(got)
        observations = late + self._release()
        self.engine, emitted, poisoned = _decide_contained(self.engine, observations)
        for index, detail in poisoned:
            obs = observations[index]
            source = self._input_source(obs)
            where = self._where(obs)
            log.error("observation from %s left out: it breaks the engine: %s", where, detail)
            value = orjson.dumps(obs)
            rejected.append(self.ingest.reject(source, None, value, INTERNAL_ERROR, detail))
        return emitted, observations

    # -- manual control and config reload -----------------------------------------------------

    async def _apply_commands(self, msgs: list[Any]) -> None:
        """Apply control-topic records in order: publish the change, or dead-letter a bad one."""
        topic = self.topics.control.name
        for m in msgs:
            source = Source(topic, m.partition, m.offset)
            where = f"{topic}/{m.partition}/{m.offset}"
            command: Command | None = None
            try:
                command = decode_command(m.value or b"")
                ts = command.ts if command.ts is not None else max(0.0, m.timestamp / 1000)
                event = self.engine.apply_command(command, ts)
            except (EventError, CommandError) as err:
                reason = err.reason if isinstance(err, EventError) else err.code
                detail = err.detail if isinstance(err, EventError) else err.message
                log.warning("command at %s rejected: %s: %s", where, reason, detail)
                value, key, headers = deadletter_record(
                    Rejected(source, m.key, m.value, reason, detail)
                )
                self._deliveries.append(
                    await self._producer.send(
                        self.topics.deadletter.name, value, key=key, headers=headers
                    )
                )
                if self.metrics is not None:
                    self.metrics.record_deadletter(reason)
                self.counters["commands_rejected"] += 1
                outcome = CommandResult("rejected", code=reason, message=detail)
            else:
                if event is None:
                    log.info(
                        "command at %s changes nothing: %s %s by %s",
                        where,
                        command.action.value,
                        command.flag,
                        command.actor,
                    )
                    outcome = CommandResult("noop")
                else:
                    await self._publish_flag(event, where)
                    outcome = CommandResult("applied", event)
                self.counters["commands"] += 1
            self.offsets.setdefault(topic, {})[m.partition] = m.offset + 1
            self.marks.setdefault(topic, {})[m.partition] = mark_of(m)
            self._dirty = True
            waiter = self._waiters.pop(command.id, None) if command and command.id else None
            if waiter is not None and not waiter.done():
                waiter.set_result(outcome)

    async def submit_command(self, command: Command, wait_s: float) -> CommandResult:
        """Publish ``command`` to the control topic and wait until this worker applied it.

        The command gets an id if it has none. Raises :class:`NotActiveError` on a worker
        without the lease (nothing is published) and :class:`TimeoutError` if the command was
        not applied within ``wait_s`` seconds (it may still be, later).
        """
        if self.role != "active" or self._producer is None:
            raise NotActiveError(f"this worker is {self.role}, not active: send to the active one")
        if command.id is None:
            command = command.model_copy(update={"id": uuid.uuid4().hex})
        key = command.id
        assert key is not None
        waiter: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._waiters[key] = waiter
        try:
            await self._producer.send_and_wait(
                self.topics.control.name, encode(command), key=command.flag.encode()
            )
            return await asyncio.wait_for(waiter, wait_s)
        finally:
            self._waiters.pop(key, None)

    async def reload_config(self) -> list[FlagChangeEvent]:
        """Read the config file again and apply it; return the flag changes it published.

        A config that does not validate raises :class:`ConfigError` (logged with every
        problem) and changes nothing. A valid one goes through :meth:`Engine.reconfigure`:
        statistics, versions and live weights stay; new flags are published at version 1.
        Webhooks and topics are read at start only: changing them needs a restart.
        """
        if self.config_path is None:
            raise ConfigError(["no config file to reload: the worker was given a config object"])
        path = self.config_path
        try:
            config = await asyncio.get_running_loop().run_in_executor(None, load_config, path)
        except ConfigError as err:
            log.error(
                "config reload rejected, the old config stays in force: %s",
                "; ".join(err.problems),
            )
            raise
        if self.join_stage is not None:
            await self.join_stage.reconfigure(config)
        async with self._engine_lock:
            self.config = config
            for merge in self.merges.values():
                merge.allowed_lateness = config.join.allowed_lateness
            if self.role != "active":
                self.engine = Engine(config, join_store=self.join_store)
                log.info("config reloaded from %s (standby: applied when active)", path)
                return []
            changes = self.engine.reconfigure(config, ts=time.time())
            for event in changes:
                await self._publish_flag(event, None)
            await self._write_snapshot()
        log.warning(
            "config reloaded from %s: %d flags, %d flag changes published",
            path,
            len(config.flags),
            len(changes),
        )
        return changes

    async def _fence(self, patience: float | None = None) -> None:
        """Return once the group coordinator confirms this worker still holds the lease; raise
        :class:`LeaseLostError` (and stop) if it expelled this worker (module doc: Fencing).

        While a rebalance holds the lease back, wait until it is settled: until the worker
        stops, or (``patience``) for up to that many seconds, stopping or not.
        """
        while True:
            if not self._lease_held.is_set():
                held = asyncio.ensure_future(self._lease_held.wait())
                waits = {held}
                if patience is None:
                    waits.add(asyncio.ensure_future(self.stop.wait()))
                await asyncio.wait(waits, timeout=patience, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                if not self._lease_held.is_set():
                    raise LeaseLostError("the lease is not held")
            tps = self._lease.assignment()
            verdict = (
                await kafka.check_membership(self._lease, next(iter(tps)))
                if tps
                else kafka.Membership.REBALANCING
            )
            if verdict is kafka.Membership.CURRENT:
                return
            if verdict is kafka.Membership.EXPELLED:
                log.error(
                    "lease on %s: the group coordinator expelled this worker (frozen past its "
                    "session timeout?); publishing nothing more and stopping",
                    self.state_topic.name,
                )
                self._lease_lost.set()
                self.stop.set()
                raise LeaseLostError("expelled from the lease group")
            await asyncio.sleep(0.1)  # a rebalance: ask again once it is settled

    async def _publish_flag(
        self, event: FlagChangeEvent, source: str | None, event_ts: float | None = None
    ) -> None:
        """Publish a flag change unless the flags topic already has this version or a newer one.

        ``event_ts`` is the time of the input event that decided it (for the latency metric).
        """
        await self._publish_outputs([(event, source, event_ts)])

    async def _send_flag(
        self, event: FlagChangeEvent, source: str | None
    ) -> tuple[FlagChangeEvent, asyncio.Future[Any]] | None:
        """Send a flag change (fenced by the caller) unless the flags topic already has this
        version or a newer one: the change as sent, and its delivery; None if not sent."""
        have = self.flags.get(event.flag)
        if event.cause.action is Action.INIT and event.ts == 0.0:
            # The engine's version 1 has no event time (it precedes every event, and backtest
            # needs it without one); the record says when it was first published.
            event = event.model_copy(update={"ts": time.time()})
        if have is not None and have.version >= event.version:
            log.info(
                "flag %s v%d already published; not published again",
                event.flag,
                event.version,
                extra=decision_context(event),
            )
            return None
        headers = [(HEADER_SOURCE, source.encode())] if source else None
        delivery = await self._producer.send(
            self.topics.flags.name, encode(event), key=event.flag.encode(), headers=headers
        )
        return event, delivery

    def _flag_published(self, event: FlagChangeEvent, event_ts: float | None) -> None:
        """Record, log and announce a flag change the broker acknowledged."""
        self.flags[event.flag] = event
        self.counters["published"] += 1
        cause = event.cause
        log.log(
            decision_level(event),
            "flag %s v%d published: %s%s (%s)",
            event.flag,
            event.version,
            cause.action.value,
            f" {cause.variant}" if cause.variant else "",
            cause.reason or cause.guardrail or cause.kind.value,
            extra=decision_context(event),
        )
        self._announce(event, event_ts)

    async def _write_flagd(self, *events: FlagChangeEvent) -> None:
        """Bring the flagd file up to date (off the event loop: the write is fsynced)."""
        if self.flagd_file is not None and events:
            await asyncio.to_thread(self.flagd_file.update, *events)

    def _announce(self, event: FlagChangeEvent | AlertEvent, event_ts: float | None) -> None:
        """Count a published decision and hand it to the webhooks (never blocks)."""
        if self.metrics is not None:
            self.metrics.record_decision(event.flag, event.cause.action.value, event_ts)
        if self.hooks is not None:
            self.hooks.submit(event)

    async def deadletter_delivery(self, failed: FailedDelivery) -> None:
        """Publish a webhook delivery that was given up to the dead-letter topic (the
        :class:`~driftswitch.streams.service.hooks.HookDispatcher` ``deadletter`` callback)."""
        if self.metrics is not None:
            self.metrics.record_deadletter(failed.reason)
        if self._producer is None:
            log.error("hook %s: no producer to dead-letter a failed delivery", failed.hook)
            return
        await self._producer.send_and_wait(
            self.topics.deadletter.name,
            failed.event,
            key=failed.flag.encode(),
            headers=failed.headers(),
        )

    def refresh_metrics(self) -> None:
        """Bring the scrape-time metrics up to date: engine snapshot, role, consumer lag.

        Called just before each ``GET /metrics``, between batches (one event loop), so the hot
        path pays nothing for metrics it does not count itself. Lag is the partition's high
        watermark minus the next offset to read; Tansu reports the base offset of the last batch
        as the high watermark, so on the embedded broker lag reads low (never below 0).
        """
        metrics = self.metrics
        if metrics is None:
            return
        if self.join_stage is not None:
            metrics.observe_join_stage(self.join_stage.status())
        active = self.role == "active"
        metrics.set_active(active)
        metrics.observe_snapshot(self.engine_snapshot() if active else {})
        metrics.observe_lifecycle(self.config, self.flags, active, time.time())
        metrics.set_state(
            self._store_bytes(),
            self.checkpoint_seconds,
            self.recovery_seconds,
            self.counters["join_entries_lost"],
        )
        if self.deciding:
            merges = self.merges.values()
            metrics.observe_merge(
                sum(len(m) for m in merges),
                sum(m.late for m in merges),
                sum(m.duplicates for m in merges),
                self.counters["observations_lost"],
            )
        if self._consumer is None or not active:
            return
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            position = self.offsets.get(tp.topic, {}).get(tp.partition)
            if highwater is not None and position is not None:
                metrics.set_lag(tp.topic, tp.partition, highwater - position)

    async def _deadletter(self, decoded: Decoded) -> None:
        """Queue every rejected record of a batch for the dead-letter topic."""
        await self._send_deadletters(decoded.rejected)

    async def _send_deadletters(self, records: Iterable[Rejected]) -> None:
        """Queue rejected records for the dead-letter topic; the acks are awaited by
        :meth:`_flush` before the next snapshot, not one by one."""
        for rejected in records:
            value, key, headers = deadletter_record(rejected)
            delivery = await self._producer.send(
                self.topics.deadletter.name, value, key=key, headers=headers
            )
            self._deliveries.append(delivery)
            if self.metrics is not None:
                self.metrics.record_deadletter(rejected.reason)

    def _snapshot_chunks(
        self, seq: int, checkpoint: str, parent: str
    ) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
        """The current ``{engine state, offsets}`` as snapshot chunks; ``EngineFailedError`` if the
        state cannot be serialised."""
        try:
            snapshot = Snapshot(
                checkpoint=checkpoint,
                parent=parent,
                seq=seq,
                engine=self.engine.to_state(),
                offsets={t: dict(ps) for t, ps in self.offsets.items()},
                marks={t: {p: m.to_state() for p, m in ps.items()} for t, ps in self.marks.items()},
                counters={name: self.counters[name] for name in KEPT_COUNTERS},
                stage=self.stage,
                merge=self._merges_state() if self.deciding else None,
            )
            return encode_chunks(snapshot)
        except Exception as exc:
            raise EngineFailedError(
                f"snapshot of the engine state failed: {describe(exc)}"
            ) from exc

    async def _write_snapshot(self, patience: float | None = None, behind: bool = False) -> None:
        """Flush pending sends, then write ``{engine state, offsets}`` to the state topic (once
        the lease is confirmed: :meth:`_fence` with ``patience``).

        With ``behind`` (the loop's periodic snapshots) and no join store on disk, the state is
        taken now and written by a task of its own, while the loop goes on (module doc: Restart
        safety); otherwise this returns once the snapshot is written. Either way it first waits
        for the snapshot still being written, if any: snapshots go out in order."""
        await self._writing.settle()
        if behind and not isinstance(self.engine.join_store, RocksJoinStore):
            # Everything sent until now, and only that, is what this state has sent.
            deliveries, self._deliveries = self._deliveries, []
            started = time.monotonic()
            chunks = self._take_snapshot()
            self._writing.start(self._write(chunks, deliveries, patience, started))
            return
        await self._flush()
        await self._fence(patience)
        started = time.monotonic()
        chunks = self._take_snapshot()
        store = self.engine.join_store
        if isinstance(store, RocksJoinStore):
            # Entries first, with the document: the store never runs ahead of a snapshot that
            # is not its own or its parent (see _local_checkpoint).
            store.commit(b"".join(value for value, _ in chunks))
        await self._send_snapshot(chunks, started)

    def _take_snapshot(self) -> list[Chunk]:
        """The current state as the next snapshot's chunks; from here on it is the base that
        a recovery restores (:meth:`_recover`)."""
        checkpoint = uuid.uuid4().hex
        chunks = self._snapshot_chunks(self._snapshot_seq + 1, checkpoint, self._checkpoint)
        self._snapshot_seq += 1
        self._base_chunks = [value for value, _ in chunks]
        self._checkpoint, self._parent = checkpoint, self._checkpoint
        self._dirty = False
        return chunks

    async def _send_snapshot(self, chunks: list[Chunk], started: float) -> None:
        """Send a snapshot's chunks to the state topic; wait for the acknowledgements."""
        key = self.settings.group.encode()
        sends = [
            await self._producer.send(self.state_topic.name, value, key=key, headers=headers)
            for value, headers in chunks
        ]
        await asyncio.gather(*sends)
        self.checkpoint_seconds = time.monotonic() - started
        self.counters["snapshots"] += 1

    async def _write(
        self,
        chunks: list[Chunk],
        deliveries: list[asyncio.Future[Any]],
        patience: float | None,
        started: float,
    ) -> None:
        """Write a snapshot taken earlier (:meth:`_write_snapshot` ``behind``): once the records
        sent before it was taken are acknowledged and the lease is confirmed."""
        if deliveries:
            await asyncio.gather(*deliveries)
        await self._fence(patience)
        await self._send_snapshot(chunks, started)

    def _evaluate(self, decoded: Decoded) -> Result:
        """``Engine.process`` on a batch; on suspect input (after a failure), with containment:
        events that fail are left out and dead-lettered as ``internal_error``."""
        if not self._suspects.covers(decoded.records):
            try:
                return self.engine.process(decoded.events)
            except Exception as exc:
                raise EngineFailedError(f"processing a batch failed: {describe(exc)}") from exc
        self.engine, result, poisoned = process_isolating(self.engine, decoded.events)
        self._suspects.passed(decoded.records)
        for p in poisoned:
            source = decoded.source(p.index)
            log.error("event at %s left out: it breaks the engine: %s", source, p.detail)
        self.ingest.reject_events(decoded, [(p.index, INTERNAL_ERROR, p.detail) for p in poisoned])
        return result

    async def _check_input(self, wait: bool) -> None:
        """Detect input the broker lost (:mod:`driftswitch.streams.service.dataloss`) and
        resume each such partition from the start of its new data, loudly.

        With ``wait`` (on resuming) the check runs now, superseding an idle one still pending;
        otherwise (idle input) it runs in the background every ``CHECK_INTERVAL`` seconds and its
        result is applied on a later call.
        """
        if not wait:
            checked = self._loss.poll()
            if checked is not None:
                self._reset_lost(checked)
                return
            if not self._loss.due():
                return
        specs = (*self._input_specs(), self.topics.control)
        positions = {
            kafka.topic_partition(spec.name, p): self.offsets.get(spec.name, {}).get(p, 0)
            for spec in specs
            for p in range(1 if spec is self.topics.control else spec.partitions)
        }
        marks = {
            tp: mark
            for tp in positions
            if (mark := self.marks.get(tp.topic, {}).get(tp.partition)) is not None
        }
        self._loss.start(positions, marks)
        if wait:
            checked = await self._loss.wait()
            if checked is not None:
                self._reset_lost(checked)

    def _reset_lost(self, checked: Checked) -> None:
        """Apply the data-loss policy to partitions whose data the broker lost."""
        for tp, found in checked.lost.items():
            position = self.offsets.get(tp.topic, {}).get(tp.partition, 0)
            if position != checked.positions.get(tp):
                continue  # read on since the check started: the data is there after all
            log.error("%s", describe_lost(tp.topic, tp.partition, position, found))
            self._seek(tp, 0)
            self._resume_from(tp, 0)

    def _seek(self, tp: Any, offset: int) -> None:
        """Read ``tp`` from ``offset`` next, and expect the fetch there (offset 0: from the first
        record, never from the start the broker names: ``seek_to_start`` in
        ``streams/kafka/connect.py``)."""
        if offset == 0:
            kafka.seek_to_start(self._consumer, tp)
        else:
            self._consumer.seek(tp, offset)
        self._fetch_at[tp] = offset

    def _check_rewound(self, batch: dict[Any, list[Any]]) -> None:
        """Apply the data-loss policy to partitions whose fetched records start below where the
        fetch stood: the consumer found that position out of range (on Kafka: the broker lost
        the data, or the topic was recreated) and started again at the new data's first offset
        (``auto_offset_reset="earliest"``). Where the fetch stood, not the position read to:
        in a ``--stage all`` process the decide stage reads its own join stage's records ahead
        of the fetch, on their acknowledgement (:meth:`_take_acknowledged`)."""
        for tp, msgs in batch.items():
            if not msgs:
                continue
            first = msgs[0].offset
            expected = self._fetch_at.get(tp)
            self._fetch_at[tp] = msgs[-1].offset + 1
            if expected is None or first >= expected:
                continue
            position = self.offsets.get(tp.topic, {}).get(tp.partition, expected)
            log.error("%s", describe_rewound(tp.topic, tp.partition, position, first))
            self._resume_from(tp, first)

    def _resume_from(self, tp: Any, start: int) -> None:
        """The data-loss policy for a partition whose data the broker lost, read from ``start``
        next: counted, and its position, fingerprint and observations made to match."""
        if self.metrics is not None:
            self.metrics.record_input_reset(tp.topic, tp.partition)
        self.counters["input_resets"] += 1
        if self.deciding and tp.topic == self.observations.name:
            # The records the buffered observations' tags name are gone: keep those
            # observations in the snapshots themselves from now on; those a restart has not
            # read again yet are lost.
            self.merges[tp.partition].inline()
            self._lose_missing(tp.partition, "are gone with its old data")
        self.offsets.setdefault(tp.topic, {})[tp.partition] = start
        self.marks.get(tp.topic, {}).pop(tp.partition, None)
        if tp.topic == self.observations.name:
            for key in [k for k in self._taken_acked if k[0] == tp.partition]:
                del self._taken_acked[key]
        self._dirty = True

    def unhealthy(self) -> str | None:
        """Why this worker holds input it is not processing (``/healthz`` answers 503), or None.

        An active worker without the lease (a rebalance that never settled) evaluates nothing;
        nor does one whose input has records waiting while no batch was processed for a while.
        """
        if self.role != "active":
            return None
        now = time.monotonic()
        limit = max(30.0, 2 * self.settings.session_timeout_ms / 1000)
        missing = self._lease_missing_since
        if missing is not None and now - missing > limit:
            return f"active without the lease for {now - missing:.0f} s: processing nothing"
        if self._consumer is not None and now - self._last_batch_at > limit:
            for tp in self._consumer.assignment():
                highwater = self._consumer.highwater(tp)
                position = self.offsets.get(tp.topic, {}).get(tp.partition)
                if highwater is not None and position is not None and highwater > position:
                    return (
                        f"input waiting on {tp.topic}[{tp.partition}] (offset {position} of "
                        f"{highwater}) and no batch processed for {now - self._last_batch_at:.0f} s"
                    )
        return None

    async def _recover(self, err: EngineFailedError) -> None:
        """Restore the last good snapshot and replay the input since, with containment."""
        log.error("%s: restoring the last snapshot and replaying with containment", err)
        if self.metrics is not None:
            self.metrics.record_recovery()
        self.counters["recoveries"] += 1
        base = decode_chunks(self._base_chunks)
        self._suspects.add(base.offsets, self.offsets)
        store = self.engine.join_store
        if isinstance(store, RocksJoinStore):
            store.rollback()  # back to the last commit: the base snapshot's entries
        self.engine = Engine.from_state(self.config, base.engine, join_store=store)
        if self.deciding:
            self.merges = self._new_merges(base.merge)
        self.offsets = {t: dict(ps) for t, ps in base.offsets.items()}
        self.marks = _marks_from_state(base.marks)
        self._taken_acked.clear()  # read again from the snapshot's offsets
        for name in KEPT_COUNTERS:
            self.counters[name] = base.counters.get(name, 0)
        if self.deciding:
            await self._replay_merges()
        for tp in self._consumer.assignment():
            offset = self.offsets.get(tp.topic, {}).get(tp.partition)
            if offset is not None:
                self._seek(tp, offset)
        self._dirty = False

    async def _flush(self) -> None:
        """Wait until the broker acknowledged every dead-letter record queued so far."""
        deliveries, self._deliveries = self._deliveries, []
        if deliveries:
            await asyncio.gather(*deliveries)
