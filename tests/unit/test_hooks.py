"""Webhook payloads, signatures, backoff and hook resolution (no network)."""

from __future__ import annotations

import random
from datetime import datetime

import orjson
import pytest
from pydantic import SecretStr

from driftswitch.streams.config.model import HookFormat, parse_config
from driftswitch.streams.contract.events import (
    Action,
    AlertEvent,
    Cause,
    CauseKind,
    FlagChangeEvent,
    VariantState,
    encode,
)
from driftswitch.streams.service.hooks import (
    HEADER_DELIVERY,
    HEADER_EVENT,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    Hook,
    HookError,
    alertmanager_payload,
    backoff_delay,
    describe,
    pagerduty_payload,
    pagerduty_warning_resolves,
    render,
    render_all,
    resolve_hooks,
    sign,
    slack_payload,
    verify_signature,
)

TS = 1767225600.0


def change(action: Action, version: int = 2, *, killed: bool = True) -> FlagChangeEvent:
    """A detector-driven change of variant `candidate` of flag `ranker`."""
    weight = 0 if killed else 10
    return FlagChangeEvent(
        flag="ranker",
        version=version,
        variants={
            "control": VariantState(weight=100 - weight, value="v1"),
            "candidate": VariantState(weight=weight, killed=killed, value="v2"),
        },
        default_variant="control",
        cause=Cause(
            kind=CauseKind.DETECTOR if action is not Action.RESTORE else CauseKind.MANUAL,
            action=action,
            guardrail="candidate-accuracy" if action is not Action.RESTORE else None,
            variant="candidate",
            detector="cusum" if action is not Action.RESTORE else None,
            statistic=12.5 if action is not Action.RESTORE else None,
            threshold=11.0 if action is not Action.RESTORE else None,
            samples={"candidate": 640},
            reason="fixed the model" if action is Action.RESTORE else None,
        ),
        ts=TS,
        actor="driftswitch" if action is not Action.RESTORE else "alice",
    )


def alert() -> AlertEvent:
    return AlertEvent(
        flag="ranker",
        guardrail="candidate-latency",
        variant="candidate",
        cause=Cause(
            kind=CauseKind.DETECTOR,
            action=Action.WARN,
            guardrail="candidate-latency",
            variant="candidate",
            detector="latency_quantile",
            statistic=250.0,
            threshold=200.0,
        ),
        ts=TS,
        flag_version=3,
    )


def hook(fmt: HookFormat, secret: str | None = "s3cret", url: str = "http://h/x") -> Hook:
    return Hook(
        name="h",
        format=fmt,
        url=SecretStr(url),
        secret=SecretStr(secret) if secret else None,
        flag=None,
        timeout=1.0,
        max_attempts=3,
        backoff=0.1,
        max_backoff=1.0,
    )


# --------------------------------------------------------------------------- signatures


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    # Computed with openssl: printf '1767225600.{"a":1}' | openssl dgst -sha256 -hmac key
    expected = "80f7b75f8618b9b24d72673996a625f1a43f7387a26b6739d667431724fe4d23"
    assert sign("key", 1767225600, b'{"a":1}') == f"v1={expected}"
    assert sign(b"key", 1767225600, b'{"a":1}') == f"v1={expected}"


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "now", "ok"),
    [
        pytest.param("k", "1000", b"body", 1000.0, True, id="fresh"),
        pytest.param("k", "1000", b"body", 1300.0, True, id="at-tolerance"),
        pytest.param("k", "1000", b"body", 1300.5, False, id="too-old-replay"),
        pytest.param("k", "1000", b"body", 699.0, False, id="from-the-future"),
        pytest.param("k", "1000", b"bodY", 1000.0, False, id="tampered-body"),
        pytest.param("other", "1000", b"body", 1000.0, False, id="wrong-secret"),
        pytest.param("k", "1001", b"body", 1000.0, False, id="tampered-timestamp"),
        pytest.param("k", "abc", b"body", 1000.0, False, id="malformed-timestamp"),
    ],
)
def test_verify_signature(secret: str, timestamp: str, body: bytes, now: float, ok: bool) -> None:
    signature = sign("k", 1000, b"body")
    assert verify_signature(secret, timestamp, body, signature, tolerance_s=300, now=now) is ok


def test_verify_accepts_any_of_several_signatures_for_rotation() -> None:
    both = f"{sign('old', 5, b'x')}, {sign('new', 5, b'x')}"
    assert verify_signature("new", 5, b"x", both, now=5)
    assert verify_signature("old", 5, b"x", both, now=5)
    assert not verify_signature("neither", 5, b"x", both, now=5)
    assert not verify_signature("new", 5, b"x", "v0=" + sign("new", 5, b"x")[3:], now=5)


# --------------------------------------------------------------------------- payloads


def test_generic_request_is_the_event_itself_signed() -> None:
    event = change(Action.KILL)
    request = render(hook(HookFormat.GENERIC), event, now=TS + 2.7)
    assert request is not None
    assert request.url == "http://h/x"
    assert request.body == encode(event)
    assert FlagChangeEvent.model_validate_json(request.body) == event
    assert request.headers[HEADER_EVENT] == "flag-change"
    assert request.headers[HEADER_DELIVERY] == "ranker/v2"
    assert request.headers[HEADER_TIMESTAMP] == str(int(TS + 2))
    assert verify_signature(
        "s3cret",
        request.headers[HEADER_TIMESTAMP],
        request.body,
        request.headers[HEADER_SIGNATURE],
        now=TS + 3,
    )
    alert_request = render(hook(HookFormat.GENERIC), alert(), now=TS)
    assert alert_request is not None
    assert alert_request.headers[HEADER_EVENT] == "alert"
    assert AlertEvent.model_validate_json(alert_request.body) == alert()


def test_describe() -> None:
    assert describe(change(Action.KILL)) == (
        "ranker: variant candidate killed by guardrail candidate-accuracy "
        "(cusum statistic 12.5, threshold 11) (version 2)"
    )
    assert describe(change(Action.RESTORE, 3, killed=False)) == (
        "ranker: variant candidate restored by alice: fixed the model (version 3)"
    )
    assert describe(alert()) == (
        "ranker: guardrail candidate-latency warns about variant candidate "
        "(latency_quantile statistic 250, threshold 200)"
    )


def test_slack_payload_shape() -> None:
    payload = slack_payload(change(Action.KILL))
    assert payload["text"] == describe(change(Action.KILL))
    types = [b["type"] for b in payload["blocks"]]
    assert types == ["header", "section", "section", "section", "context"]
    assert payload["blocks"][0]["text"] == {"type": "plain_text", "text": "driftswitch: ranker"}
    fields = {
        f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in payload["blocks"][2]["fields"]
    }
    assert fields == {
        "*Flag*": "ranker",
        "*Variant*": "candidate",
        "*Action*": "kill",
        "*Guardrail*": "candidate-accuracy",
        "*Detector*": "cusum",
        "*Statistic / threshold*": "12.5 / 11",
        "*Samples*": "candidate 640",
        "*Version*": "2",
    }
    assert len(payload["blocks"][2]["fields"]) <= 10  # Slack's limit per section
    assert payload["blocks"][3]["text"]["text"] == "*Weights* control 100, candidate 0 (killed)"
    assert payload["blocks"][4]["elements"][0]["text"] == (
        "driftswitch · event time 2026-01-01T00:00:00Z"
    )
    # An alert has no weights section.
    assert [b["type"] for b in slack_payload(alert())["blocks"]] == [
        "header",
        "section",
        "section",
        "context",
    ]
    request = render(hook(HookFormat.SLACK, secret=None), change(Action.KILL), now=TS + 60)
    assert request is not None
    assert "Authorization" not in request.headers
    assert orjson.loads(request.body) == slack_payload(change(Action.KILL), TS + 60)
    assert orjson.loads(request.body)["blocks"][4]["elements"][0]["text"] == (
        "driftswitch · event time 2026-01-01T00:00:00Z, sent 2026-01-01T00:01:00Z"
    )


@pytest.mark.parametrize(
    ("action", "event_action", "severity"),
    [
        pytest.param(Action.KILL, "trigger", "critical", id="kill"),
        pytest.param(Action.SHIFT, "trigger", "error", id="shift"),
        pytest.param(Action.RESTORE, "resolve", None, id="restore"),
    ],
)
def test_pagerduty_trigger_and_resolve(
    action: Action, event_action: str, severity: str | None
) -> None:
    payload = pagerduty_payload(change(action, killed=action is Action.KILL), "RK")
    assert payload is not None
    assert payload["routing_key"] == "RK"
    assert payload["event_action"] == event_action
    assert payload["dedup_key"] == "driftswitch:ranker:candidate"  # restore resolves the kill
    if severity is None:
        assert set(payload) == {"routing_key", "event_action", "dedup_key"}
        return
    body = payload["payload"]
    assert body["severity"] == severity
    assert body["source"] == "driftswitch"
    assert body["component"] == "ranker"
    assert body["group"] == "candidate"
    assert body["class"] == "candidate-accuracy"
    assert body["timestamp"] == "2026-01-01T00:00:00Z"
    assert body["custom_details"]["cause"]["statistic"] == 12.5
    assert body["custom_details"]["version"] == 2
    assert len(body["summary"]) <= 1024


def test_pagerduty_warn_and_silence() -> None:
    warn = pagerduty_payload(alert(), "RK")
    assert warn is not None
    assert warn["payload"]["severity"] == "warning"
    # Its own incident: a later kill never merges into an open warning.
    assert warn["dedup_key"] == "driftswitch:ranker:candidate:warn:candidate-latency"
    init = change(Action.INIT, 1, killed=False)
    assert pagerduty_payload(init, "RK") is None
    assert render(hook(HookFormat.PAGERDUTY), init, now=TS) is None
    request = render(hook(HookFormat.PAGERDUTY, secret="RK"), change(Action.KILL), now=TS)
    assert request is not None
    assert orjson.loads(request.body)["routing_key"] == "RK"
    assert "Authorization" not in request.headers  # the key travels in the body


def test_alertmanager_fire_and_resolve_share_labels() -> None:
    fired = alertmanager_payload(change(Action.KILL), TS)
    resolved = alertmanager_payload(change(Action.RESTORE, 3, killed=False), TS)
    assert fired is not None
    assert resolved is not None
    assert len(fired) == len(resolved) == 1
    assert (
        fired[0]["labels"]
        == resolved[0]["labels"]
        == {
            "alertname": "DriftswitchVariantDegraded",
            "service": "driftswitch",
            "flag": "ranker",
            "variant": "candidate",
            "severity": "critical",
        }
    )
    assert fired[0]["startsAt"] == "2026-01-01T00:00:00Z"
    assert fired[0]["endsAt"] == "2026-01-08T00:00:00Z"
    assert resolved[0]["endsAt"] == resolved[0]["startsAt"] == "2026-01-01T00:00:00Z"
    for alert_ in (*fired, *resolved):
        # Alertmanager's API: label and annotation values are strings; times are RFC 3339.
        assert all(isinstance(v, str) for v in alert_["labels"].values())
        assert all(isinstance(v, str) for v in alert_["annotations"].values())
        datetime.fromisoformat(alert_["startsAt"])
    assert fired[0]["annotations"]["weights"] == "control 100, candidate 0 (killed)"
    warn = alertmanager_payload(alert(), TS)
    assert warn is not None
    assert warn[0]["labels"]["alertname"] == "DriftswitchGuardrailWarning"
    assert warn[0]["labels"]["guardrail"] == "candidate-latency"
    assert "endsAt" not in warn[0]
    assert alertmanager_payload(change(Action.INIT, 1, killed=False), TS) is None
    request = render(
        hook(HookFormat.ALERTMANAGER, secret="tok", url="http://am:9093/"), alert(), now=TS
    )
    assert request is not None
    assert request.url == "http://am:9093/api/v2/alerts"
    assert request.headers["Authorization"] == "Bearer tok"


# --------------------------------------------------------------------------- backoff


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(7)
    draws = {a: [backoff_delay(a, 0.5, 4.0, rng) for _ in range(2000)] for a in (1, 2, 3, 4, 6)}
    caps = {1: 0.5, 2: 1.0, 3: 2.0, 4: 4.0, 6: 4.0}
    for attempt, values in draws.items():
        assert all(0.0 <= v <= caps[attempt] for v in values)
        # Uniform on [0, cap]: the mean is cap/2 (2000 draws: standard error cap/155).
        assert abs(sum(values) / len(values) - caps[attempt] / 2) < caps[attempt] * 0.03
    assert backoff_delay(3, 0.5, 4.0, random.Random(1)) == backoff_delay(
        3, 0.5, 4.0, random.Random(1)
    )


# --------------------------------------------------------------------------- config → hooks

CONFIG = """
hooks:
  - {url: "http://global/", secret_env: SIGN_KEY}
flags:
  ranker:
    default: a
    variants: {a: {weight: 100, value: 1}}
    hooks:
      - {name: oncall, url: "https://events.pagerduty.com/v2/enqueue", format: pagerduty,
         secret_env: PD_KEY}
      - {format: slack, url_env: SLACK_URL}
  other:
    default: a
    variants: {a: {weight: 100, value: 1}}
"""


def test_resolve_hooks_reads_secrets_from_the_environment() -> None:
    config = parse_config(CONFIG)
    env = {"SIGN_KEY": "k1", "PD_KEY": "pd", "SLACK_URL": "https://hooks.slack.com/T/B/xyz"}
    hooks = resolve_hooks(config, env)
    assert [(h.name, h.format, h.flag) for h in hooks] == [
        ("global[0]", HookFormat.GENERIC, None),
        ("oncall", HookFormat.PAGERDUTY, "ranker"),
        ("ranker[1]", HookFormat.SLACK, "ranker"),
    ]
    assert hooks[2].url.get_secret_value() == "https://hooks.slack.com/T/B/xyz"
    assert "xyz" not in repr(hooks[2])  # SecretStr hides it
    assert "k1" not in repr(hooks[0])
    assert [h.name for h in hooks if h.covers("other")] == ["global[0]"]
    assert [h.name for h in hooks if h.covers("ranker")] == ["global[0]", "oncall", "ranker[1]"]


def test_missing_environment_variables_are_all_named() -> None:
    config = parse_config(CONFIG)
    with pytest.raises(HookError) as caught:
        resolve_hooks(config, {"PD_KEY": "pd"})
    assert str(caught.value) == (
        "hook 'global[0]': environment variable SIGN_KEY is not set; "
        "hook 'ranker[1]': environment variable SLACK_URL is not set"
    )


WARN_CONFIG = """
flags:
  ranker:
    default: control
    variants:
      control: {weight: 90, value: v1}
      candidate: {weight: 10, value: v2}
    guardrails:
      - name: candidate-latency
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}
        action: warn
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}
        action: kill
      - name: control-accuracy
        variant: control
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}
        action: warn
    hooks:
      - {name: oncall, url: "https://events.pagerduty.com/v2/enqueue", format: pagerduty,
         secret_env: PD_KEY}
"""


def test_a_kill_or_restore_resolves_the_warning_incidents_of_its_variant() -> None:
    (pd,) = resolve_hooks(parse_config(WARN_CONFIG), {"PD_KEY": "RK"})
    # Only guardrails that warn are sources; a kill guardrail has no warning incident.
    assert pd.warnings == (
        ("ranker", "candidate", "candidate-latency"),
        ("ranker", "control", "control-accuracy"),
    )
    warn_key = "driftswitch:ranker:candidate:warn:candidate-latency"
    assert pagerduty_payload(alert(), "RK")["dedup_key"] == warn_key  # type: ignore[index]
    for action, own in ((Action.KILL, "trigger"), (Action.RESTORE, "resolve")):
        event = change(action, killed=action is Action.KILL)
        bodies = [orjson.loads(r.body) for r in render_all(pd, event, TS)]
        assert [(b["event_action"], b["dedup_key"]) for b in bodies] == [
            (own, "driftswitch:ranker:candidate"),
            ("resolve", warn_key),
        ]
        assert bodies[1] == {"routing_key": "RK", "event_action": "resolve", "dedup_key": warn_key}
    # A warning itself, a shift or a change of another flag resolves nothing.
    assert pagerduty_warning_resolves(alert(), "RK", pd.warnings) == []
    assert pagerduty_warning_resolves(change(Action.SHIFT, killed=False), "RK", pd.warnings) == []
    other = change(Action.KILL).model_copy(update={"flag": "other"})
    assert pagerduty_warning_resolves(other, "RK", pd.warnings) == []
    # Other formats send one request, as before.
    assert len(render_all(hook(HookFormat.SLACK), change(Action.KILL), TS)) == 1
