"""The metrics bundle: injected registry, snapshot export, names and labels, /metrics."""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.pipeline.eventtime import Disorder
from driftswitch.streams.service.metrics import METRICS, Metrics, metrics_handler

#: The shape of ``Engine.snapshot()``.
SNAPSHOT: dict[str, Any] = {
    "watermark": 1767225900.5,
    "join": {"pending_predictions": 12, "pending_outcomes": 3, "joined": 900},
    "counters": {"predictions": 1000, "outcomes": 903},
    "flags": {
        "ranker": {
            "version": 2,
            "default_variant": "control",
            "paused": False,
            "variants": {
                "control": {
                    "predictions": 900,
                    "labelled": 810,
                    "joined": 810,
                    "expired": 5,
                    "errors": 1,
                    "windowed_accuracy": 0.9,
                    "last_ts": 1767225899.0,
                    "weight": 100,
                    "killed": False,
                },
                "candidate": {
                    "predictions": 100,
                    "labelled": 90,
                    "joined": 90,
                    "expired": 0,
                    "errors": 0,
                    "windowed_accuracy": 0.75,
                    "last_ts": 1767225900.5,
                    "weight": 10,
                    "killed": True,
                },
                "shadow": {"predictions": 0, "windowed_accuracy": None, "killed": False},
            },
            "guardrails": {
                "candidate-accuracy": {
                    "variant": "candidate",
                    "samples": {"candidate": 90},
                    "statistic": 12.25,
                    "threshold": 11.5,
                    "state": "breached",
                    "breaches": 1,
                },
                "candidate-vs-control": {
                    "variant": "candidate",
                    "compare_to": "control",
                    "samples": {"candidate": 90, "control": 810},
                    "statistic": None,
                    "threshold": None,
                    "state": "no decision yet",
                    "breaches": 0,
                },
                "candidate-by-region": {
                    "variant": "candidate",
                    "samples": {"candidate": 90},
                    "statistic": 3.0,
                    "threshold": 11.5,
                    "state": "breached",
                    "breaches": 2,
                    # Engine.snapshot already reduces segments to the allowlist and `other`.
                    "metric_segments": {
                        "jp": {"samples": 40, "breaches": 2},
                        "other": {"samples": 50, "breaches": 0},
                    },
                },
            },
        }
    },
}


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exposed sample as {(name, sorted labels): value}."""
    text = metrics.exposition().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(all_: dict[Any, float], name: str, **labels: str) -> float | None:
    return all_.get((name, tuple(sorted(labels.items()))))


def test_nothing_is_registered_at_import_and_registries_are_independent() -> None:
    default_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(n.startswith("driftswitch") for n in default_names)
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.record_deadletter("schema", 3)
    assert value(samples(a), "driftswitch_deadletter_records_total", reason="schema") == 3
    # Known reasons are born at 0 (so increase() sees the first one), in each registry apart.
    assert value(samples(b), "driftswitch_deadletter_records_total", reason="schema") == 0


def test_snapshot_is_exported_per_flag_variant_and_guardrail() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.observe_snapshot(SNAPSHOT)
    metrics.record_batch(now=1767226000.0)
    got = samples(metrics)
    fv = {"flag": "ranker", "variant": "candidate"}
    assert value(got, "driftswitch_predictions_total", **fv) == 100
    assert value(got, "driftswitch_labelled_total", **fv) == 90
    assert value(got, "driftswitch_joined_total", flag="ranker", variant="control") == 810
    assert value(got, "driftswitch_expired_total", flag="ranker", variant="control") == 5
    assert value(got, "driftswitch_inference_errors_total", flag="ranker", variant="control") == 1
    assert value(got, "driftswitch_accuracy_ratio", **fv) == 0.75
    assert value(got, "driftswitch_accuracy_ratio", flag="ranker", variant="shadow") is None
    assert value(got, "driftswitch_last_event_timestamp_seconds", **fv) == 1767225900.5
    assert value(got, "driftswitch_flag_version", flag="ranker") == 2
    assert value(got, "driftswitch_flag_paused", flag="ranker") == 0
    assert value(got, "driftswitch_flag_weight_percent", **fv) == 0  # killed: serves no one
    assert value(got, "driftswitch_flag_weight_percent", flag="ranker", variant="control") == 100
    assert value(got, "driftswitch_flag_variant_killed", **fv) == 1
    g = {**fv, "guardrail": "candidate-accuracy"}
    assert value(got, "driftswitch_guardrail_statistic", **g) == 12.25
    assert value(got, "driftswitch_guardrail_threshold", **g) == 11.5
    assert value(got, "driftswitch_guardrail_samples", **g) == 90
    assert value(got, "driftswitch_guardrail_breaches_total", **g) == 1
    assert value(got, "driftswitch_guardrail_state", **g, state="breached") == 1
    assert value(got, "driftswitch_guardrail_state", **g, state="ok") == 0
    g2 = {**fv, "guardrail": "candidate-vs-control"}
    assert value(got, "driftswitch_guardrail_statistic", **g2) is None  # undecided: no sample
    assert value(got, "driftswitch_guardrail_state", **g2, state="no decision yet") == 1
    assert value(got, "driftswitch_watermark_timestamp_seconds") == 1767225900.5
    assert value(got, "driftswitch_join_pending", kind="predictions") == 12
    assert value(got, "driftswitch_last_batch_timestamp_seconds") == 1767226000.0
    # A newer snapshot replaces the old one entirely.
    metrics.observe_snapshot({"flags": {}, "watermark": 1.0})
    assert value(samples(metrics), "driftswitch_predictions_total", **fv) is None


def test_worker_counters_latency_lag_and_hooks() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.record_decision("ranker", "kill", event_ts=100.0, now=100.25)
    metrics.record_decision("ranker", "warn", event_ts=100.0, now=102.0)
    metrics.record_decision("ranker", "init")
    metrics.record_hook("slack", "delivered")
    metrics.record_hook("slack", "retried")
    metrics.record_hook("slack", "retried")
    metrics.set_lag("driftswitch.predictions.v1", 3, 42)
    metrics.set_lag("driftswitch.outcomes.v1", 0, -5)  # a broker's bad end offset: never < 0
    metrics.set_active(True)
    got = samples(metrics)
    assert value(got, "driftswitch_decisions_total", flag="ranker", action="kill") == 1
    assert value(got, "driftswitch_decisions_total", flag="ranker", action="init") == 1
    assert value(got, "driftswitch_decision_latency_seconds_count", flag="ranker") == 2
    assert value(got, "driftswitch_decision_latency_seconds_sum", flag="ranker") == 2.25
    assert value(got, "driftswitch_decision_latency_seconds_bucket", flag="ranker", le="0.5") == 1
    assert value(got, "driftswitch_decision_latency_seconds_bucket", flag="ranker", le="2.5") == 2
    assert value(got, "driftswitch_hook_deliveries_total", format="slack", outcome="retried") == 2
    assert (
        value(
            got,
            "driftswitch_consumer_lag_records",
            topic="driftswitch.predictions.v1",
            partition="3",
        )
        == 42
    )
    assert (
        value(
            got, "driftswitch_consumer_lag_records", topic="driftswitch.outcomes.v1", partition="0"
        )
        == 0
    )
    assert value(got, "driftswitch_worker_active") == 1


def test_names_units_and_label_sets_follow_the_style_guide() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.observe_snapshot(SNAPSHOT)
    metrics.record_batch(now=1.0)
    metrics.record_decision("ranker", "kill", 0.0, 1.0)
    metrics.record_deadletter("schema")
    metrics.record_hook("generic", "failed")
    metrics.set_lag("t", 0, 1)
    metrics.observe_lifecycle(
        parse_config(
            "flags:\n  ranker:\n    default: a\n    variants: {a: {weight: 100, value: 1}}\n"
        ),
        {},
        True,
        0.0,
    )
    metrics.set_active(False)
    metrics.record_input_reset("t", 0)
    metrics.observe_merge(3, 1, 2, 4)
    metrics.observe_join_stage(
        {
            "partitions": [0, 1],
            "records": 5,
            "rerouted": 1,
            "lag": {"0": 2},
            "recovery_seconds": 0.5,
            "events": 4,
            "observations": 6,
            "checkpoints": 2,
            "rerouted_duplicates": 0,
            "pending": {"0": 3, "1": 0},
            "store_bytes": 0,
            "checkpoint_seconds": 0.01,
            "join_entries_lost": 7,
            "disorder": {"driftswitch.predictions.v1": Disorder(0.5).status()},
        }
    )
    allowed_labels = {
        "flag",
        "variant",
        "guardrail",
        "state",
        "action",
        "reason",
        "topic",
        "partition",
        "format",
        "outcome",
        "kind",
        "segment",
        "le",
    }
    documented = {m.name: m for m in METRICS}
    exposed = set()
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            base = re.sub(r"_(bucket|count|sum|created)$", "", s.name)
            if s.name.endswith("_created"):
                continue
            exposed.add(base)
            assert base in documented, base
            assert set(s.labels) <= allowed_labels, (s.name, s.labels)
            assert set(s.labels) - {"le"} == set(documented[base].labels), s.name
    assert exposed == set(documented)  # every documented metric shows up, and nothing else
    for info in METRICS:
        assert re.fullmatch(r"driftswitch_[a-z_]+", info.name), info.name
        if info.type == "counter":
            assert info.name.endswith("_total"), info.name


def test_metrics_endpoint() -> None:
    metrics = Metrics(CollectorRegistry())
    calls: list[int] = []

    async def scenario() -> tuple[int, str, str]:
        app = web.Application()
        app.router.add_get(
            "/metrics", metrics_handler(metrics, before_scrape=lambda: calls.append(1))
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            metrics.record_deadletter("oversize", 2)
            response = await client.get("/metrics")
            return response.status, response.headers["Content-Type"], await response.text()

    status, content_type, text = asyncio.run(scenario())
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'driftswitch_deadletter_records_total{reason="oversize"} 2.0' in text
    assert calls == [1]


def test_join_stage_counters_are_exported_with_the_entries_lost() -> None:
    """What the join stage's /healthz shows, /metrics has: its counters, pending entries per
    partition, store and checkpoint gauges, and the entries a restart could not recover (a
    single worker's too)."""
    single = Metrics(CollectorRegistry())
    single.set_state(0, 0.0, None, entries_lost=3)
    assert value(samples(single), "driftswitch_join_entries_lost_total") == 3
    stage = Metrics(CollectorRegistry())
    stage.set_state(0, 0.0, None)
    predictions = Disorder(lateness=0.5)
    predictions.observe(-math.inf, [10.0, 12.0, 11.0, 11.9, 13.0])  # 1.0 and 0.1 behind
    stage.observe_join_stage(
        {
            "partitions": [0, 1],
            "records": 9,
            "events": 4,
            "observations": 6,
            "checkpoints": 2,
            "rerouted": 1,
            "rerouted_duplicates": 1,
            "pending": {"0": 3, "1": 0},
            "lag": {"0": 2, "1": 0},
            "store_bytes": 4096,
            "checkpoint_seconds": 0.25,
            "recovery_seconds": 0.5,
            "join_entries_lost": 7,
            "disorder": {"driftswitch.predictions.v1": predictions.status()},
        }
    )
    got = samples(stage)
    assert value(got, "driftswitch_join_entries_lost_total") == 7
    assert value(got, "driftswitch_join_events_total") == 4
    assert value(got, "driftswitch_join_observations_total") == 6
    assert value(got, "driftswitch_join_checkpoints_total") == 2
    assert value(got, "driftswitch_join_rerouted_duplicates_total") == 1
    assert value(got, "driftswitch_join_stage_pending", partition="0") == 3
    assert value(got, "driftswitch_join_stage_pending", partition="1") == 0
    assert value(got, "driftswitch_join_stage_store_bytes") == 4096
    assert value(got, "driftswitch_join_stage_checkpoint_seconds") == 0.25
    disorder = "driftswitch_join_input_disorder_seconds"
    topic = "driftswitch.predictions.v1"
    assert value(got, f"{disorder}_count", topic=topic) == 5
    assert value(got, f"{disorder}_sum", topic=topic) == pytest.approx(1.1)
    assert value(got, f"{disorder}_bucket", topic=topic, le="0.0") == 3
    assert value(got, f"{disorder}_bucket", topic=topic, le="0.1") == 4
    assert value(got, f"{disorder}_bucket", topic=topic, le="0.5") == 4
    assert value(got, f"{disorder}_bucket", topic=topic, le="1.0") == 5
    assert value(got, f"{disorder}_bucket", topic=topic, le="+Inf") == 5
    # Beyond the allowed lateness (0.5 s here): the one record 1.0 s behind.
    assert value(got, "driftswitch_join_input_beyond_lateness_total", topic=topic) == 1
