"""Interop and hygiene regressions: Slack escaping, Alertmanager/PagerDuty lifecycles, log lines
that cannot be forged, credentials never logged, counters born at 0, one page per kill."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from driftswitch.streams.contract.events import (
    Action,
    AlertEvent,
    Cause,
    CauseKind,
    FlagChangeEvent,
    VariantState,
)
from driftswitch.streams.service.hooks import (
    alertmanager_payload,
    pagerduty_dedup_key,
    pagerduty_payload,
    slack_payload,
)
from driftswitch.streams.service.logs import configure_logging, escape_controls, redact
from driftswitch.streams.service.metrics import Metrics
from driftswitch.streams.service.pacing import MAX_SNAPSHOT_INTERVAL, snapshot_interval

ROOT = Path(__file__).resolve().parents[2]
EVENT_TS = 1767225600.0  # 2026-01-01: the deciding events are weeks older than "now" below
NOW = 1795952194.0


def kill(
    reason: str = "canary failed", actor: str = "driftswitch", ts: float = EVENT_TS
) -> FlagChangeEvent:
    return FlagChangeEvent(
        flag="ranker",
        version=2,
        variants={
            "control": VariantState(weight=100, value="v1"),
            "candidate": VariantState(weight=0, killed=True, value="v2"),
        },
        default_variant="control",
        cause=Cause(kind=CauseKind.MANUAL, action=Action.KILL, variant="candidate", reason=reason),
        ts=ts,
        actor=actor,
    )


def warn() -> AlertEvent:
    return AlertEvent(
        flag="ranker",
        guardrail="candidate-latency",
        variant="candidate",
        cause=Cause(kind=CauseKind.DETECTOR, action=Action.WARN, guardrail="candidate-latency"),
        ts=EVENT_TS,
        flag_version=1,
    )


def _texts(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                yield value
            else:
                yield from _texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _texts(item)


# --------------------------------------------------------------------------- Slack


def test_slack_text_never_carries_a_mention_or_a_link() -> None:
    """The exact input: a kill whose reason is ``<!channel> ...`` and an actor ``<!here>``."""
    payload = slack_payload(
        kill(reason="<!channel> please look <https://evil|here> & now", actor="<!here>"), NOW
    )
    texts = list(_texts(payload))
    assert len(texts) >= 5
    for text in texts:
        assert "<" not in text, text
        assert ">" not in text, text
    joined = "\n".join(texts)
    assert "&lt;!channel&gt; please look &lt;https://evil|here&gt; &amp; now" in joined
    assert "&lt;!here&gt;" in joined


def test_an_init_state_shows_no_1970_date() -> None:
    init = kill().model_copy(
        update={"ts": 0.0, "cause": Cause(kind=CauseKind.CONFIG, action=Action.INIT)}
    )
    context = slack_payload(init, NOW)["blocks"][-1]["elements"][0]["text"]
    assert "1970" not in context
    assert "sent 2026-11-29" in context


# --------------------------------------------------------------------------- Alertmanager


def test_alertmanager_times_are_wall_clock_and_event_time_is_an_annotation() -> None:
    """A decision about events more than 7 days old used to be filed as already resolved."""
    fired = alertmanager_payload(kill(), NOW)
    assert fired is not None
    alert = fired[0]
    starts = datetime.fromisoformat(alert["startsAt"]).timestamp()
    ends = datetime.fromisoformat(alert["endsAt"]).timestamp()
    assert starts == NOW
    assert ends > NOW  # still firing
    assert alert["annotations"]["event_time"] == "2026-01-01T00:00:00Z"
    warned = alertmanager_payload(warn(), NOW)
    assert warned is not None
    assert datetime.fromisoformat(warned[0]["startsAt"]).timestamp() == NOW


def test_pagerduty_warn_and_kill_are_separate_incidents() -> None:
    assert pagerduty_dedup_key(warn()) != pagerduty_dedup_key(kill())
    triggered = pagerduty_payload(kill(), "RK")
    restored = kill().model_copy(
        update={
            "version": 3,
            "cause": Cause(kind=CauseKind.MANUAL, action=Action.RESTORE, variant="candidate"),
        }
    )
    resolved = pagerduty_payload(restored, "RK")
    assert triggered is not None
    assert resolved is not None
    assert triggered["dedup_key"] == resolved["dedup_key"]  # restore resolves the kill
    warned = pagerduty_payload(warn(), "RK")
    assert warned is not None
    assert warned["dedup_key"] not in (triggered["dedup_key"], resolved["dedup_key"])


def _amtool() -> str:
    path = shutil.which("amtool")
    assert path is not None, "amtool is missing: apt-get install -y prometheus-alertmanager"
    return path


def test_the_shipped_alertmanager_config_inhibits_the_second_page_of_a_kill() -> None:
    config = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    check = subprocess.run(
        [_amtool(), "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1 inhibit rules" in check.stdout


def test_a_real_alertmanager_pages_once_per_kill(tmp_path: Path) -> None:
    """Prometheus's DriftswitchVariantKilled and the hook's DriftswitchVariantDegraded for the same
    kill: Alertmanager (the shipped config) marks the Prometheus one inhibited."""
    import urllib.request

    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary is not None, "apt-get install -y prometheus-alertmanager"
    from driftswitch.streams.tools.broker import free_port

    port, cluster = free_port(), free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={ROOT / 'deploy' / 'alertmanager' / 'alertmanager.yml'}",
            f"--storage.path={tmp_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--cluster.listen-address=127.0.0.1:{cluster}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/v2/alerts"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base, timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "alertmanager did not start"
                time.sleep(0.2)
        hook_alert = alertmanager_payload(kill(), time.time())
        assert hook_alert is not None
        prometheus_alert = {
            "labels": {
                "alertname": "DriftswitchVariantKilled",
                "flag": "ranker",
                "variant": "candidate",
                "severity": "critical",
            },
            "annotations": {"summary": "killed"},
        }
        body = json.dumps([*hook_alert, prometheus_alert]).encode()
        request = urllib.request.Request(base, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        urllib.request.urlopen(request, timeout=5).read()
        state: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while state.get("DriftswitchVariantKilled") != "suppressed":
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
            alerts = json.loads(urllib.request.urlopen(base, timeout=5).read())
            state = {a["labels"]["alertname"]: a["status"]["state"] for a in alerts}
        assert state["DriftswitchVariantDegraded"] == "active"
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- logs


def test_cr_lf_in_a_reason_cannot_forge_a_log_line() -> None:
    stream = io.StringIO()
    configure_logging("text", "INFO", stream)
    try:
        log = logging.getLogger("driftswitch.test")
        forged = "x\r\n2026-01-01 00:00:00,000 WARNING driftswitch: flag ranker restored\x1b[2J"
        log.warning("command by %s: %s", "mallory\nroot", forged, extra={"actor": "a\rb"})
    finally:
        logging.getLogger().handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "x\\r\\n2026-01-01" in lines[0]
    assert "mallory\\nroot" in lines[0]
    assert "\\x1b[2J" in lines[0]
    assert "actor=a\\rb" in lines[0]


def test_escape_and_redact() -> None:
    assert escape_controls("a\u2028b\x00c\td") == "a\\x2028b\\x00c\\td"
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer ***"
    assert redact("b'Bearer tokAAAA...'") == "b'Bearer ***'"
    assert redact("'authorization': 'xyz'") == "'authorization': '***'"
    assert redact("no secret here") == "no secret here"


def test_an_oversized_authorization_header_never_reaches_the_log() -> None:
    """aiohttp's error for a too-long header quotes its first ~100 bytes: part of a token."""
    stream = io.StringIO()
    configure_logging("text", "INFO", stream)
    token = "tok" + "S" * 9000

    async def main() -> None:
        app = web.Application()

        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app.router.add_get("/", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        for header in (f"Bearer {token}", f"Bearer {token[:50]}\x01"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: {header}\r\n\r\n".encode())
            await writer.drain()
            assert (await reader.read(100)).startswith(b"HTTP/1.0 400")
            writer.close()
        await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    assert text.count("Error handling request") == 2
    assert "tokSSS" not in text
    assert "Bearer ***" in text


# --------------------------------------------------------------------------- metrics


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def test_counters_are_born_at_zero() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.init_labels(["ranker"], ["slack"])
    assert (
        _value(metrics, "driftswitch_hook_deliveries_total", format="slack", outcome="failed") == 0
    )
    assert _value(metrics, "driftswitch_decisions_total", flag="ranker", action="kill") == 0
    assert _value(metrics, "driftswitch_decision_latency_seconds_count", flag="ranker") == 0
    assert _value(metrics, "driftswitch_deadletter_records_total", reason="future_timestamp") == 0


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, "promtool is missing: apt-get install -y prometheus"
    return path


def test_hook_failing_fires_on_the_first_failure(tmp_path: Path) -> None:
    """The series as a worker exports it, scrape by scrape, through the shipped rule: before the
    fix the counter appeared at 1 on the first failure and increase() saw nothing."""
    metrics = Metrics(CollectorRegistry())
    metrics.init_labels(["ranker"], ["slack"])

    def scrape() -> str:
        value = _value(
            metrics, "driftswitch_hook_deliveries_total", format="slack", outcome="failed"
        )
        return "_" if value is None else f"{value:g}"

    before = [scrape() for _ in range(5)]
    metrics.record_hook("slack", "failed")  # one failure, the only one
    after = [scrape() for _ in range(10)]
    test = {
        "rule_files": [str(ROOT / "deploy" / "prometheus" / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": "driftswitch_hook_deliveries_total"
                        '{format="slack", outcome="failed", instance="w1"}',
                        "values": " ".join(before + after),
                    }
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "7m",
                        "alertname": "DriftswitchHookFailing",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "format": "slack"},
                                "exp_annotations": {
                                    "summary": "driftswitch slack webhook deliveries are failing",
                                    "description": "1 slack deliveries were given up in the "
                                    "last 15 minutes and dead-lettered "
                                    "(headers driftswitch.hook.*).",
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "single_failure_test.yml"
    path.write_text(json.dumps(test))
    result = subprocess.run(
        [_promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- snapshots


def test_one_slow_snapshot_does_not_space_out_the_next_ones() -> None:
    """A snapshot that blocked for 30 s (a broker frozen by SIGSTOP) made the next ones ~300 s
    apart; the interval is capped."""
    assert snapshot_interval(1.0, 30.0) == MAX_SNAPSHOT_INTERVAL
    assert snapshot_interval(1.0, 0.3) == pytest.approx(3.0)
    assert snapshot_interval(60.0, 30.0) == 60.0  # a longer configured interval is kept
