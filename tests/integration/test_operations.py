"""Operations end to end: `driftswitch run` on the embedded broker, a real webhook receiver,
JSON logs, and what `GET /metrics` shows after the scenario.

A candidate whose accuracy drops is killed; garbage records are dead-lettered. The worker runs
as a subprocess (`driftswitch run --broker ... --log-format json`) with a global generic hook
pointing at an HTTP receiver this test starts on 127.0.0.1, plus a hook whose receiver always
fails (its deliveries end on the dead-letter topic).
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.events import FlagChangeEvent, OutcomeEvent, PredictionEvent
from driftswitch.streams.contract.topics import Topics
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.service.hooks import (
    HEADER_DELIVERY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    verify_signature,
)
from driftswitch.streams.tools.broker import EmbeddedBroker
from driftswitch.streams.tools.simulate import Scenario, VariantSpec, config_yaml, simulate
from driftswitch.streams.tools.testing import (
    KILL_ON_ACCURACY,
    WorkerProcess,
    event_records,
    read_topic,
    wait_until,
)

SECRET = "e2e-hook-secret-7f3a"
SCENARIO = Scenario(
    requests=6_000,
    change_at=3_000,
    rate=100.0,
    seed=11,
    variants=(
        VariantSpec("control", weight=60, accuracy=0.90),
        VariantSpec("candidate", weight=40, accuracy=0.90, accuracy_after=0.70),
    ),
)
GUARDRAIL = KILL_ON_ACCURACY
GARBAGE = [b"{not json", b'{"kind": "prediction"}', b"[1, 2"]


class Receiver:
    """An HTTP server on 127.0.0.1 recording POSTs; paths under /fail answer 503."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    outer.requests.append((self.path, dict(self.headers), body))
                self.send_response(503 if self.path.startswith("/fail") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def get(port: int, path: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            body: bytes = r.read()
            return body
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = get(port, "/metrics")
    assert text is not None
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_hooks_metrics_and_logs_after_a_kill(
    broker: EmbeddedBroker,
    topics: Topics,
    receiver: Receiver,
    tmp_path: Path,
    produce: Callable[[list[tuple[str, bytes, bytes]]], None],
) -> None:
    hooks = (
        "hooks:\n"
        f"  - {{name: audit, url: '{receiver.url}/hook', secret_env: E2E_HOOK_SECRET}}\n"
        f"  - {{name: broken, url: '{receiver.url}/fail', secret_env: E2E_HOOK_SECRET,\n"
        "     max_attempts: 2, backoff: 10ms}\n"
    )
    config = tmp_path / "ranker.yaml"
    config.write_text(hooks + config_yaml(SCENARIO, GUARDRAIL))
    events: list[PredictionEvent | OutcomeEvent] = list(simulate(SCENARIO))
    predictions = [e for e in events if isinstance(e, PredictionEvent)]

    log = tmp_path / "worker.log"
    env = {"DRIFTSWITCH_LOG_FORMAT": "json", "E2E_HOOK_SECRET": SECRET}
    with WorkerProcess(broker.bootstrap, topics, config, log, env=env) as worker:
        port = worker.port

        def status() -> dict[str, Any]:
            return worker.health() or {}

        wait_until("worker active", lambda: status().get("role") == "active", 60, log=log)
        garbage = [
            (topics.predictions.name, f"junk-{i}".encode(), junk) for i, junk in enumerate(GARBAGE)
        ]
        produce(event_records(topics, events) + garbage)
        total = len(events) + len(GARBAGE)
        worker.wait_caught_up(total, 240)
        # The engine's input counts are the join stage's (it runs in this process).
        counters = status()["engine"]["counters"]
        assert counters["predictions"] == len(predictions)
        assert counters["outcomes"] == len(events) - len(predictions)
        # init + kill to each hook: the audit hook gets both, the broken one dead-letters both.
        wait_until(
            "hook deliveries settled",
            lambda: (
                value(
                    scrape(port),
                    "driftswitch_hook_deliveries_total",
                    format="generic",
                    outcome="failed",
                )
                == 2
            ),
            30,
            log=log,
        )
        metrics = scrape(port)
        api = worker.get("/api/v1/flags/ranker")

    # --- the webhook receiver: the flag's changes in order, signed, verifiable.
    audit = [(h, b) for path, h, b in receiver.requests if path == "/hook"]
    assert [h[HEADER_DELIVERY] for h, _ in audit] == ["ranker/v1", "ranker/v2"]
    for headers, body in audit:
        assert verify_signature(SECRET, headers[HEADER_TIMESTAMP], body, headers[HEADER_SIGNATURE])
    kill = FlagChangeEvent.model_validate_json(audit[1][1])
    assert kill.cause.action.value == "kill"
    assert kill.variants["candidate"].killed
    failing = [p for p, _, _ in receiver.requests if p == "/fail"]
    assert len(failing) == 4  # 2 changes x max_attempts 2

    # --- /metrics after the scenario.
    fv = {"flag": "ranker", "variant": "candidate"}
    for variant in ("control", "candidate"):
        expected = sum(1 for p in predictions if p.variant == variant)
        assert value(metrics, "driftswitch_predictions_total", flag="ranker", variant=variant) == (
            expected
        )
    assert value(metrics, "driftswitch_flag_version", flag="ranker") == 2
    assert value(metrics, "driftswitch_flag_variant_killed", **fv) == 1
    assert value(metrics, "driftswitch_flag_weight_percent", **fv) == 0
    assert (
        value(metrics, "driftswitch_flag_weight_percent", flag="ranker", variant="control") == 100
    )
    assert value(metrics, "driftswitch_decisions_total", flag="ranker", action="init") == 1
    assert value(metrics, "driftswitch_decisions_total", flag="ranker", action="kill") == 1
    assert value(metrics, "driftswitch_decision_latency_seconds_count", flag="ranker") == 1
    g = {**fv, "guardrail": "candidate-accuracy"}
    assert value(metrics, "driftswitch_guardrail_state", **g, state="breached") == 1
    # Counts and threshold equal an offline replay of the same events through the engine; the
    # statistic and alarm count (which depend on the order records from different partitions
    # interleave) equal what the worker's own API reports.
    offline = Engine(parse_config(config.read_text()))
    offline.process(events)
    expected_g = offline.snapshot()["flags"]["ranker"]["guardrails"]["candidate-accuracy"]
    assert value(metrics, "driftswitch_guardrail_threshold", **g) == expected_g["threshold"]
    assert (
        value(metrics, "driftswitch_guardrail_samples", **g) == expected_g["samples"]["candidate"]
    )
    live_g = api["evaluation"]["guardrails"]["candidate-accuracy"]
    assert value(metrics, "driftswitch_guardrail_statistic", **g) == live_g["statistic"]
    assert value(metrics, "driftswitch_guardrail_breaches_total", **g) == live_g["breaches"] >= 1
    assert value(metrics, "driftswitch_deadletter_records_total", reason="malformed_json") == 2
    assert value(metrics, "driftswitch_deadletter_records_total", reason="schema") == 1
    assert value(metrics, "driftswitch_deadletter_records_total", reason="hook_failed") == 2
    assert (
        value(metrics, "driftswitch_hook_deliveries_total", format="generic", outcome="delivered")
        == 2
    )
    assert (
        value(metrics, "driftswitch_hook_deliveries_total", format="generic", outcome="retried")
        == 2
    )
    assert value(metrics, "driftswitch_worker_active") == 1
    lags = {
        dict(labels)["topic"]: v
        for (name, labels), v in metrics.items()
        if name == "driftswitch_consumer_lag_records"
    }
    lag_series = [
        labels for (name, labels) in metrics if name == "driftswitch_consumer_lag_records"
    ]
    # The decide stage's consumer: every partition of the observations topic, plus the control
    # topic's one partition.
    assert len(lag_series) == topics.observations.partitions + 1
    assert set(lags) == {topics.observations.name, topics.control.name}
    # Caught up (wait_caught_up above): nothing left to read on any partition. (On the embedded
    # broker lag reads low, never high: Worker.refresh_metrics.)
    assert [
        v for (name, _), v in metrics.items() if name == "driftswitch_consumer_lag_records"
    ] == [0] * len(lag_series)
    # The join stage's: every join partition (the index of the predictions, outcomes and
    # repartition topics' partitions), all owned by this process.
    join_lags = {
        dict(labels)["partition"]: v
        for (name, labels), v in metrics.items()
        if name == "driftswitch_join_lag_records"
    }
    assert set(join_lags) == {str(p) for p in range(topics.predictions.partitions)}
    assert set(join_lags.values()) == {0}  # every input record read
    assert (value(metrics, "driftswitch_last_batch_timestamp_seconds") or 0) > 0

    # --- the failed deliveries are on the dead-letter topic, with the event and hook headers.
    dead = [
        r
        for r in read_topic(broker.bootstrap, topics.deadletter.name)
        if dict(r.headers).get("driftswitch.reason") == b"hook_failed"
    ]
    assert [FlagChangeEvent.model_validate_json(r.value).version for r in dead] == [1, 2]
    assert {dict(r.headers)["driftswitch.hook.name"] for r in dead} == {b"broken"}

    # --- JSON logs: the kill line carries its context; the secret appears nowhere.
    text = log.read_text()
    assert SECRET not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    kills = [line for line in lines if line.get("action") == "kill"]
    assert kills, text[-2000:]
    assert kills[0]["flag"] == "ranker"
    assert kills[0]["variant"] == "candidate"
    assert kills[0]["guardrail"] == "candidate-accuracy"
    assert kills[0]["version"] == 2
