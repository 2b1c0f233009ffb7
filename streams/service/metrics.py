"""Prometheus metrics: a typed bundle built against an injected registry, and ``GET /metrics``.

Nothing is registered at import: :class:`Metrics` registers its metrics on the
:class:`~prometheus_client.CollectorRegistry` it is given (a fresh one per worker and per test),
so that nothing is shared between workers or tests. Two kinds of metric live here:

- events the worker counts as they happen (decisions, dead-letter records, hook deliveries,
  event-to-decision latency, consumer lag), through the methods below;
- statistics the engine already keeps (samples, joins, accuracy, detector statistics, flag
  state), exported from the latest :meth:`Engine.snapshot` by a custom collector at scrape time:
  :meth:`Metrics.observe_snapshot` only stores a reference, so the hot path pays nothing per
  event and a scrape always sees one consistent snapshot. Counts from the snapshot are exported
  as counters (they survive restarts with the engine's state).

Names are ``driftswitch_<thing>_<unit>``; labels are drawn from small, bounded sets (flag,
variant, guardrail, action, reason, topic/partition, hook format, outcome; never a request id).
:data:`METRICS` lists every metric with its type, labels and meaning (README.md "Metrics" shows
the same table).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from driftswitch.streams.config.model import Config
from driftswitch.streams.contract.events import FlagChangeEvent

__all__ = ["LATENCY_BUCKETS", "METRICS", "MetricInfo", "Metrics", "metrics_handler"]

#: Event-to-decision latency buckets, seconds: the target is p99 < 1 s (README "Performance").
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: The guardrail states of :meth:`Engine.snapshot`, exported as one 0/1 series each.
GUARDRAIL_STATES = ("no decision yet", "ok", "breached")


@dataclass(frozen=True)
class MetricInfo:
    """One exported metric: what the docs table and the tests check against."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


_FV = ("flag", "variant")
_FVG = ("flag", "variant", "guardrail")
METRICS: tuple[MetricInfo, ...] = (
    # From the engine snapshot, per flag and variant.
    MetricInfo("driftswitch_predictions_total", "counter", _FV, "Predictions seen (incl. shadow)."),
    MetricInfo("driftswitch_labelled_total", "counter", _FV, "Predictions scored with a label."),
    MetricInfo("driftswitch_joined_total", "counter", _FV, "Predictions joined to an outcome."),
    MetricInfo(
        "driftswitch_expired_total", "counter", _FV, "Predictions expired unjoined (join TTL)."
    ),
    MetricInfo(
        "driftswitch_inference_errors_total", "counter", _FV, "Predictions with `error` set."
    ),
    MetricInfo(
        "driftswitch_accuracy_ratio", "gauge", _FV, "Accuracy over the recent window (0-1)."
    ),
    MetricInfo(
        "driftswitch_last_event_timestamp_seconds",
        "gauge",
        _FV,
        "Event time of the newest prediction seen.",
    ),
    # Guardrails.
    MetricInfo("driftswitch_guardrail_statistic", "gauge", _FVG, "Detector statistic."),
    MetricInfo("driftswitch_guardrail_threshold", "gauge", _FVG, "Detector alarm threshold."),
    MetricInfo(
        "driftswitch_guardrail_samples", "gauge", _FVG, "Samples of the watched variant seen."
    ),
    MetricInfo("driftswitch_guardrail_breaches_total", "counter", _FVG, "Detector alarms."),
    MetricInfo(
        "driftswitch_guardrail_state",
        "gauge",
        (*_FVG, "state"),
        "1 for the guardrail's current state (no decision yet, ok or breached), else 0.",
    ),
    MetricInfo(
        "driftswitch_guardrail_segment_samples",
        "gauge",
        (*_FVG, "segment"),
        "Per-segment guardrail: samples of the watched variant per segment named in "
        "`metric_segments` (every other segment summed as `other`).",
    ),
    MetricInfo(
        "driftswitch_guardrail_segment_breaches_total",
        "counter",
        (*_FVG, "segment"),
        "Per-segment guardrail: detector alarms per segment named in `metric_segments` (others "
        "summed as `other`).",
    ),
    # Flag state.
    MetricInfo("driftswitch_flag_version", "gauge", ("flag",), "Version of the flag's state."),
    MetricInfo("driftswitch_flag_weight_percent", "gauge", _FV, "Served weight (killed: 0)."),
    MetricInfo("driftswitch_flag_variant_killed", "gauge", _FV, "1 if the variant is killed."),
    MetricInfo("driftswitch_flag_paused", "gauge", ("flag",), "1 while rollout is on hold."),
    MetricInfo(
        "driftswitch_flag_expired",
        "gauge",
        ("flag",),
        "1 once the flag's configured `expires` date has passed, else 0.",
    ),
    MetricInfo(
        "driftswitch_flag_stale",
        "gauge",
        ("flag", "reason"),
        "1 while the flag is stale for the reason (fully_rolled_out, no_traffic, killed), else 0.",
    ),
    MetricInfo(
        "driftswitch_watermark_timestamp_seconds", "gauge", (), "Event-time watermark of the join."
    ),
    MetricInfo(
        "driftswitch_join_pending", "gauge", ("kind",), "Unjoined records waiting (bounded)."
    ),
    # Counted by the worker as they happen.
    MetricInfo(
        "driftswitch_decisions_total", "counter", ("flag", "action"), "Flag changes and alerts."
    ),
    MetricInfo(
        "driftswitch_deadletter_records_total",
        "counter",
        ("reason",),
        "Records sent to the dead-letter topic.",
    ),
    MetricInfo(
        "driftswitch_consumer_lag_records",
        "gauge",
        ("topic", "partition"),
        "Records behind the end of each input partition.",
    ),
    MetricInfo(
        "driftswitch_decision_latency_seconds",
        "histogram",
        ("flag",),
        "From the deciding event's time to the published decision.",
    ),
    MetricInfo(
        "driftswitch_hook_deliveries_total",
        "counter",
        ("format", "outcome"),
        "Webhook outcomes: delivered, retried, failed or overflow.",
    ),
    MetricInfo(
        "driftswitch_worker_active",
        "gauge",
        (),
        "1 while this worker holds the lease and evaluates; 0 on standby.",
    ),
    MetricInfo(
        "driftswitch_last_batch_timestamp_seconds",
        "gauge",
        (),
        "Wall-clock time the worker last finished an input batch.",
    ),
    MetricInfo(
        "driftswitch_engine_recoveries_total",
        "counter",
        (),
        "Engine failures recovered from (last snapshot restored, input replayed).",
    ),
    MetricInfo(
        "driftswitch_join_store_bytes",
        "gauge",
        (),
        "Size on disk of the join's RocksDB store (SST files and memtables); 0 without one.",
    ),
    MetricInfo(
        "driftswitch_checkpoint_seconds",
        "gauge",
        (),
        "Duration of the last checkpoint (join store commit and snapshot on the state topic).",
    ),
    MetricInfo(
        "driftswitch_recovery_seconds",
        "gauge",
        (),
        "How long the last start took from holding the lease to active (state restored).",
    ),
    MetricInfo(
        "driftswitch_input_resets_total",
        "counter",
        ("topic", "partition"),
        "Input partitions whose data the broker lost (offset beyond the end, topic recreated).",
    ),
    # The decide stage's event-time merge (driftswitch run --stage decide).
    MetricInfo(
        "driftswitch_merge_buffered_observations",
        "gauge",
        (),
        "Decide stage: observations held until every busy join partition has passed them.",
    ),
    MetricInfo(
        "driftswitch_late_observations_total",
        "counter",
        (),
        "Decide stage: observations that arrived after later ones were released (beyond "
        "join.allowed_lateness), applied late.",
    ),
    MetricInfo(
        "driftswitch_duplicate_observations_total",
        "counter",
        (),
        "Decide stage: observations a restarted join partition sent again, dropped.",
    ),
    MetricInfo(
        "driftswitch_lost_observations_total",
        "counter",
        (),
        "Decide stage: buffered observations a restart could not read again (their records "
        "gone from the observations topic), not decided.",
    ),
    # The join stage (driftswitch run --stage join or all).
    MetricInfo(
        "driftswitch_join_partitions_owned",
        "gauge",
        (),
        "Join stage: partition indexes this process owns in the join stage's consumer group.",
    ),
    MetricInfo(
        "driftswitch_join_records_total",
        "counter",
        (),
        "Join stage: records read (predictions, outcomes, re-routed records and markers).",
    ),
    MetricInfo(
        "driftswitch_join_rerouted_total",
        "counter",
        (),
        "Join stage: records read outside their join partition, re-routed to it.",
    ),
    MetricInfo(
        "driftswitch_join_lag_records",
        "gauge",
        ("partition",),
        "Join stage: records not yet read per owned partition index (all its topics).",
    ),
    MetricInfo(
        "driftswitch_join_stage_recovery_seconds",
        "gauge",
        (),
        "Join stage: seconds the last assignment took to restore its partitions' state.",
    ),
    MetricInfo(
        "driftswitch_join_events_total",
        "counter",
        (),
        "Join stage: events accepted and joined in this process's partitions.",
    ),
    MetricInfo(
        "driftswitch_join_observations_total",
        "counter",
        (),
        "Join stage: observations sent to the decide stage.",
    ),
    MetricInfo(
        "driftswitch_join_checkpoints_total",
        "counter",
        (),
        "Join stage: partition checkpoints written.",
    ),
    MetricInfo(
        "driftswitch_join_rerouted_duplicates_total",
        "counter",
        (),
        "Join stage: re-routed records received a second time (a sender restarted), dropped.",
    ),
    MetricInfo(
        "driftswitch_join_input_disorder_seconds",
        "histogram",
        ("topic",),
        "Join stage: how far each input record's event time was behind the newest already "
        "read on its topic partition (0 in order). Records further behind than "
        "join.allowed_lateness (a bucket bound) can make observations late.",
    ),
    MetricInfo(
        "driftswitch_join_input_beyond_lateness_total",
        "counter",
        ("topic",),
        "Join stage: input records further behind the newest event time already read on their "
        "topic partition than join.allowed_lateness (the disorder histogram's records above "
        "that bound, whatever it is configured to); each can make observations late.",
    ),
    MetricInfo(
        "driftswitch_join_stage_pending",
        "gauge",
        ("partition",),
        "Join stage: unjoined entries (predictions and outcomes) per owned partition index.",
    ),
    MetricInfo(
        "driftswitch_join_stage_store_bytes",
        "gauge",
        (),
        "Join stage: size on disk of the owned partitions' RocksDB stores; 0 without them.",
    ),
    MetricInfo(
        "driftswitch_join_stage_checkpoint_seconds",
        "gauge",
        (),
        "Join stage: duration of the last checkpoint of its partitions.",
    ),
    MetricInfo(
        "driftswitch_join_entries_lost_total",
        "counter",
        (),
        "Pending join entries a restart could not recover (a disk store left behind on "
        "another machine, or behind the state topic's checkpoint).",
    ),
)

#: Dead-letter reasons known in advance: their counters start at 0, so ``increase()`` and
#: ``rate()`` see the first one (a counter born at 1 looks unchanged to them).
DEADLETTER_REASONS = (
    "malformed_json",
    "schema",
    "oversize",
    "null_value",
    "wrong_topic",
    "unknown_flag",
    "unknown_variant",
    "duplicate",
    "future_timestamp",
    "internal_error",
    "hook_failed",
    "hook_crashed",
    "overflow",
    "bad_observation_batch",
)
#: The ``action`` values a decision can have (flag changes and alerts).
DECISION_ACTIONS = (
    "warn",
    "hold",
    "shift",
    "kill",
    "restore",
    "advance",
    "rollback",
    "set_weights",
    "pause",
    "resume",
    "pin",
    "unpin",
    "init",
    "reconfigure",
)
HOOK_OUTCOMES = ("delivered", "retried", "failed", "overflow")
_INFO = {m.name: m for m in METRICS}


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, None, NaN, infinite, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class _SnapshotCollector(Collector):
    """Yields the snapshot metrics from the latest stored snapshot at each scrape."""

    def __init__(self) -> None:
        self.snapshot: Mapping[str, Any] = {}
        #: The decide stage's merge: ``(buffered, late, duplicates)``; None elsewhere.
        self.merge: tuple[int, int, int, int] | None = None
        #: The join stage's latest ``status()``; None without one.
        self.join_status: Mapping[str, Any] | None = None
        #: Join entries a single worker's restarts could not recover.
        self.entries_lost = 0

    def describe(self) -> Iterable[Metric]:
        return []  # the label values are only known at scrape time

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        fams: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

        def fam(name: str) -> CounterMetricFamily | GaugeMetricFamily:
            if name not in fams:
                info = _INFO[name]
                cls = CounterMetricFamily if info.type == "counter" else GaugeMetricFamily
                fams[name] = cls(name, info.help, labels=list(info.labels))
            return fams[name]

        def put(name: str, labels: list[str], value: Any) -> None:
            x = _num(value)
            if x is not None:
                fam(name).add_metric(labels, x)

        per_variant = {
            "driftswitch_predictions_total": "predictions",
            "driftswitch_labelled_total": "labelled",
            "driftswitch_joined_total": "joined",
            "driftswitch_expired_total": "expired",
            "driftswitch_inference_errors_total": "errors",
            "driftswitch_accuracy_ratio": "windowed_accuracy",
            "driftswitch_last_event_timestamp_seconds": "last_ts",
        }
        for flag, f in sorted(_map(snap.get("flags")).items()):
            f = _map(f)
            put("driftswitch_flag_version", [flag], f.get("version"))
            paused = f.get("paused")
            if isinstance(paused, bool):
                put("driftswitch_flag_paused", [flag], int(paused))
            for variant, v in sorted(_map(f.get("variants")).items()):
                v = _map(v)
                for name, key in per_variant.items():
                    put(name, [flag, variant], v.get(key))
                killed = v.get("killed")
                if isinstance(killed, bool):
                    put("driftswitch_flag_variant_killed", [flag, variant], int(killed))
                    weight = 0 if killed else v.get("weight")
                    put("driftswitch_flag_weight_percent", [flag, variant], weight)
            for guardrail, g in sorted(_map(f.get("guardrails")).items()):
                g = _map(g)
                variant = str(g.get("variant", ""))
                labels = [flag, variant, guardrail]
                put("driftswitch_guardrail_statistic", labels, g.get("statistic"))
                put("driftswitch_guardrail_threshold", labels, g.get("threshold"))
                put("driftswitch_guardrail_samples", labels, _map(g.get("samples")).get(variant))
                put("driftswitch_guardrail_breaches_total", labels, g.get("breaches"))
                # Only labels the config allowlists (`metric_segments`), never raw values.
                for segment, m in sorted(_map(g.get("metric_segments")).items()):
                    m = _map(m)
                    seg_labels = [*labels, str(segment)]
                    put("driftswitch_guardrail_segment_samples", seg_labels, m.get("samples"))
                    put(
                        "driftswitch_guardrail_segment_breaches_total",
                        seg_labels,
                        m.get("breaches"),
                    )
                state = g.get("state")
                if state in GUARDRAIL_STATES:
                    for s in GUARDRAIL_STATES:
                        put("driftswitch_guardrail_state", [*labels, s], int(s == state))
        put("driftswitch_watermark_timestamp_seconds", [], snap.get("watermark"))
        join = _map(snap.get("join"))
        for kind in ("predictions", "outcomes"):
            put("driftswitch_join_pending", [kind], join.get(f"pending_{kind}"))
        if self.merge is not None:
            # Kept in the merge's state, so they survive restarts: counters from a snapshot.
            buffered, late, duplicates, lost = self.merge
            put("driftswitch_merge_buffered_observations", [], buffered)
            put("driftswitch_late_observations_total", [], late)
            put("driftswitch_duplicate_observations_total", [], duplicates)
            put("driftswitch_lost_observations_total", [], lost)
        if self.join_status is not None:
            stage = self.join_status
            put("driftswitch_join_partitions_owned", [], len(stage.get("partitions", ())))
            put("driftswitch_join_records_total", [], stage.get("records"))
            put("driftswitch_join_rerouted_total", [], stage.get("rerouted"))
            for partition, lag in _map(stage.get("lag")).items():
                put("driftswitch_join_lag_records", [str(partition)], lag)
            put("driftswitch_join_stage_recovery_seconds", [], stage.get("recovery_seconds"))
            put("driftswitch_join_events_total", [], stage.get("events"))
            put("driftswitch_join_observations_total", [], stage.get("observations"))
            put("driftswitch_join_checkpoints_total", [], stage.get("checkpoints"))
            put("driftswitch_join_rerouted_duplicates_total", [], stage.get("rerouted_duplicates"))
            for partition, pending in _map(stage.get("pending")).items():
                put("driftswitch_join_stage_pending", [str(partition)], pending)
            put("driftswitch_join_stage_store_bytes", [], stage.get("store_bytes"))
            put("driftswitch_join_stage_checkpoint_seconds", [], stage.get("checkpoint_seconds"))
            topics = _map(stage.get("disorder"))
            for topic, d in sorted(topics.items()):
                put(
                    "driftswitch_join_input_beyond_lateness_total",
                    [str(topic)],
                    _map(d).get("beyond_lateness"),
                )
            disorder = _disorder(topics)
            if disorder is not None:
                yield disorder
        lost = self.entries_lost
        if self.join_status is not None:
            lost += int(_num(self.join_status.get("join_entries_lost")) or 0)
        put("driftswitch_join_entries_lost_total", [], lost)
        yield from fams.values()


def _disorder(topics: Mapping[str, Any]) -> HistogramMetricFamily | None:
    """``driftswitch_join_input_disorder_seconds`` from a join stage's ``status()["disorder"]``
    (:meth:`~driftswitch.streams.pipeline.eventtime.Disorder.status` per topic)."""
    if not topics:
        return None
    name = "driftswitch_join_input_disorder_seconds"
    info = _INFO[name]
    family = HistogramMetricFamily(name, info.help, labels=list(info.labels))
    for topic, d in sorted(topics.items()):
        buckets = [(str(float(bound)), n) for bound, n in d["buckets"]]
        buckets.append(("+Inf", d["records"]))
        family.add_metric([topic], buckets, d["sum_seconds"])
    return family


class Metrics:
    """driftswitch's metrics on ``registry`` (required: nothing global, nothing at import).

    The worker calls :meth:`observe_snapshot` after each batch and the ``record_*`` methods as
    things happen; :meth:`exposition` / :func:`metrics_handler` serve ``GET /metrics``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.decisions: Counter = self._make("driftswitch_decisions_total")
        self.deadletter: Counter = self._make("driftswitch_deadletter_records_total")
        self.consumer_lag: Gauge = self._make("driftswitch_consumer_lag_records")
        self.decision_latency: Histogram = self._make(
            "driftswitch_decision_latency_seconds", buckets=LATENCY_BUCKETS
        )
        self.hook_deliveries: Counter = self._make("driftswitch_hook_deliveries_total")
        self.worker_active: Gauge = self._make("driftswitch_worker_active")
        self.last_batch: Gauge = self._make("driftswitch_last_batch_timestamp_seconds")
        self.recoveries: Counter = self._make("driftswitch_engine_recoveries_total")
        self.input_resets: Counter = self._make("driftswitch_input_resets_total")
        self.join_store_bytes: Gauge = self._make("driftswitch_join_store_bytes")
        self.checkpoint_seconds: Gauge = self._make("driftswitch_checkpoint_seconds")
        self.recovery_seconds: Gauge = self._make("driftswitch_recovery_seconds")
        self.flag_expired: Gauge = self._make("driftswitch_flag_expired")
        self.flag_stale: Gauge = self._make("driftswitch_flag_stale")
        self._snapshot = _SnapshotCollector()
        registry.register(self._snapshot)
        for reason in DEADLETTER_REASONS:
            self.deadletter.labels(reason=reason)

    def init_labels(self, flags: Iterable[str], hook_formats: Iterable[str]) -> None:
        """Create every known label set at 0 (flags of the config, formats of its hooks), so
        that the first decision, or the first failed delivery, is an increase from 0."""
        for flag in flags:
            self.decision_latency.labels(flag=flag)
            for action in DECISION_ACTIONS:
                self.decisions.labels(flag=flag, action=action)
        for fmt in hook_formats:
            for outcome in HOOK_OUTCOMES:
                self.hook_deliveries.labels(format=fmt, outcome=outcome)

    def _make(self, name: str, **kwargs: Any) -> Any:
        """The metric :data:`METRICS` documents as ``name``, registered on this bundle's registry
        (a counter is created without prometheus_client's ``_total`` suffix, which it adds)."""
        info = _INFO[name]
        kind = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[info.type]
        base = name.removesuffix("_total") if info.type == "counter" else name
        return kind(base, info.help, list(info.labels), registry=self.registry, **kwargs)

    # -- called by the worker --------------------------------------------------------------

    def observe_join_stage(self, status: Mapping[str, Any]) -> None:
        """Export a join stage's ``status()`` from now on (refreshed before each scrape)."""
        self._snapshot.join_status = status

    def observe_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        """Export ``Engine.snapshot()`` from now on (a reference swap, cheap enough to call
        after every batch; the worker calls it just before each scrape instead)."""
        self._snapshot.snapshot = snapshot

    def observe_lifecycle(
        self, config: Config, states: Mapping[str, FlagChangeEvent], active: bool, now: float
    ) -> None:
        """Set ``driftswitch_flag_expired`` / ``driftswitch_flag_stale`` for every configured flag
        (:mod:`driftswitch.streams.pipeline.lifecycle`). Only the current state is known here, so
        "fully rolled out for N days" counts from the state's last change; traffic (from the
        snapshot's newest event time per flag) is judged on the active worker only."""
        from driftswitch.streams.pipeline.lifecycle import STALE_KINDS, findings

        traffic: dict[str, float | None] | None = None
        if active:
            flags = _map(self._snapshot.snapshot.get("flags"))
            traffic = {}
            for name in config.flags:
                times = [
                    t
                    for v in _map(_map(flags.get(name)).get("variants")).values()
                    if (t := _num(_map(v).get("last_ts"))) is not None
                ]
                traffic[name] = max(times) if times else None
        found = {
            (f.flag, f.kind)
            for f in findings(config, {n: [s] for n, s in states.items()}, traffic, now)
        }
        self.flag_expired.clear()
        self.flag_stale.clear()
        for name in config.flags:
            self.flag_expired.labels(flag=name).set(int((name, "expired") in found))
            for kind in STALE_KINDS:
                if kind == "no_traffic" and traffic is None:
                    continue
                self.flag_stale.labels(flag=name, reason=kind).set(int((name, kind) in found))

    def observe_merge(self, buffered: int, late: int, duplicates: int, lost: int = 0) -> None:
        """The decide stage's merge: observations buffered, and late, duplicate and lost
        observations since its state began (exported at scrape time, like the snapshot)."""
        self._snapshot.merge = (buffered, late, duplicates, lost)

    def record_batch(self, now: float | None = None) -> None:
        """Mark an input batch as processed at ``now`` (default: the current time)."""
        self.last_batch.set(time.time() if now is None else now)

    def record_decision(
        self, flag: str, action: str, event_ts: float | None = None, now: float | None = None
    ) -> None:
        """Count a published flag change or alert; with ``event_ts`` (the deciding event's
        time), observe the event-to-decision latency at ``now`` (default: the current time)."""
        self.decisions.labels(flag=flag, action=action).inc()
        if event_ts is not None:
            at = time.time() if now is None else now
            self.decision_latency.labels(flag=flag).observe(max(0.0, at - event_ts))

    def record_deadletter(self, reason: str, n: int = 1) -> None:
        """Count ``n`` records sent to the dead-letter topic for ``reason``."""
        if n:
            self.deadletter.labels(reason=reason).inc(n)

    def record_hook(self, fmt: str, outcome: str) -> None:
        """Count one webhook outcome (the :class:`~driftswitch.streams.service.hooks.HookDispatcher`
        ``record`` callback)."""
        self.hook_deliveries.labels(format=fmt, outcome=outcome).inc()

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Records between the consumer's position and the partition's end."""
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(0, lag))

    def record_recovery(self) -> None:
        """Count one recovery from an engine failure."""
        self.recoveries.inc()

    def record_input_reset(self, topic: str, partition: int) -> None:
        """Count one input partition found reset by the broker (its data lost)."""
        self.input_resets.labels(topic=topic, partition=str(partition)).inc()

    def set_state(
        self, store_bytes: int, checkpoint: float, recovery: float | None, entries_lost: int = 0
    ) -> None:
        """The join store's size, the last checkpoint's and the last recovery's duration, and
        the join entries a (single) worker's restarts could not recover."""
        self._snapshot.entries_lost = entries_lost
        self.join_store_bytes.set(store_bytes)
        self.checkpoint_seconds.set(checkpoint)
        if recovery is not None:
            self.recovery_seconds.set(recovery)

    def set_active(self, active: bool) -> None:
        """Whether this worker holds the lease (evaluates and publishes)."""
        self.worker_active.set(1 if active else 0)

    # -- exposition ------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text exposition format of every metric on the registry."""
        return generate_latest(self.registry)


def metrics_handler(
    metrics: Metrics, before_scrape: Callable[[], None] | None = None
) -> Callable[[web.Request], Any]:
    """An aiohttp handler for ``GET /metrics``; ``before_scrape`` may refresh gauges first.

    ``before_scrape`` runs on the event loop (between batches: it sees a consistent engine);
    the text is rendered in a worker thread, as it takes ~0.5 ms per flag (benchmarks/
    operations.py) and the stream must not wait for it.
    """

    async def handle(request: web.Request) -> web.Response:
        if before_scrape is not None:
            before_scrape()
        body = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
        response = web.Response(body=body)
        # The 0.0.4 text format is what generate_latest writes and every Prometheus 2.x reads.
        response.headers["Content-Type"] = CONTENT_TYPE_PLAIN_0_0_4
        return response

    return handle
