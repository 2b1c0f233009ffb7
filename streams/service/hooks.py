"""Webhooks: report every flag change and every ``warn`` alert without slowing the stream.

Formats (``format:`` in the config, :class:`~driftswitch.streams.config.model.HookFormat`):

``generic``
    The event itself (:class:`FlagChangeEvent` or :class:`AlertEvent`, exactly as on the topics),
    signed with HMAC-SHA256 (below).
``slack``
    A Slack incoming-webhook message: ``text`` (notification fallback) and Block Kit ``blocks``.
    Every text field is escaped (``&``, ``<``, ``>``), so a reason or actor such as
    ``<!channel>`` never becomes a mention or a link.
``pagerduty``
    PagerDuty Events API v2 (``POST https://events.pagerduty.com/v2/enqueue``): ``trigger`` on a
    kill (severity ``critical``), a shift (``error``) and a ``warn`` alert (``warning``),
    ``resolve`` on a restore. A kill, shift and restore share ``dedup_key``
    ``driftswitch:<flag>:<variant>``, so a restore resolves the incident its kill opened; a
    ``warn`` has its own ``driftswitch:<flag>:<variant>:warn:<guardrail>``, so a kill never merges
    into an open warning. A kill or a restore of a variant also resolves the warning incidents
    of every guardrail that can warn about it (one ``resolve`` per guardrail, after the kill's
    own event): the kill's incident takes over, a restore ends the episode. A guardrail that
    keeps breaching warns again after each cooldown, so a warning that is not raised again for
    the hook's ``warn_resolve_after`` (default one hour, wall-clock) has stopped: its incident is
    resolved then (:class:`WarningCleared`). The open warnings are held in memory: a worker
    restart forgets them, which leaves those to a later kill or restore, to PagerDuty's own
    auto-resolve, or to a person. Other changes (init, hold, rollout steps) are not sent.
``alertmanager``
    One alert in the body of Alertmanager's ``POST /api/v2/alerts`` (``/api/v2/alerts`` is added
    to the configured base URL). A kill or shift fires ``DriftswitchVariantDegraded`` with
    ``endsAt`` one week ahead (Alertmanager resolves alerts that are not re-sent after its
    ``resolve_timeout``); a restore sends the same labels with ``endsAt`` = now, which resolves it.
    ``warn`` fires ``DriftswitchGuardrailWarning`` without ``endsAt`` (resolved by timeout).
    ``startsAt``/``endsAt`` are wall-clock send times; the deciding event's time is the
    ``event_time`` annotation. ``deploy/alertmanager/alertmanager.yml`` inhibits Prometheus's
    ``DriftswitchVariantKilled`` while this alert fires, so one kill pages once.

Signing (generic hooks). Each attempt sends::

    X-Driftswitch-Timestamp: <Unix seconds, integer>
    X-Driftswitch-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The timestamp is taken when the attempt is sent, so a retry is never older than the tolerance.
Receivers recompute the HMAC over the raw body, compare in constant time and reject timestamps
more than a tolerance (:data:`DEFAULT_TOLERANCE_S`, 5 minutes) away from their clock, which
stops replays of captured requests; :func:`verify_signature` does all three. To rotate a secret,
a receiver may accept several ``v1=`` values separated by commas. ``X-Driftswitch-Delivery``
identifies the event (``<flag>/v<version>``), so a receiver can drop duplicates: a receiver
that answers too slowly is retried after it has already acted, and a ``warn`` alert decided
again in a worker's replay after a crash is sent again. Queues live in memory: deliveries still
queued when a worker is killed are lost (the flags topic stays the complete audit record).

Delivery. :class:`HookDispatcher.submit` never blocks and never raises: it puts the event on a
bounded queue per (hook, flag), each drained by its own asyncio task, so deliveries for one flag
reach each hook in order while a slow or failing hook delays only itself. Failed attempts
(connection errors, timeouts, HTTP 408/429/5xx) are retried with exponential backoff and full
jitter (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015); any other HTTP
status fails at once. A delivery whose attempts are exhausted, or that finds its queue full, goes
to the dead-letter callback (the worker publishes it to the dead-letter topic with
:meth:`FailedDelivery.headers`) and is counted. Secrets (signing keys, routing keys, tokens, URLs
read from ``url_env``) are held as :class:`pydantic.SecretStr` and never logged: log lines and
dead-letter details name the hook, never its URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import aiohttp
import orjson
from pydantic import JsonValue, SecretStr

from driftswitch.streams.config.model import Config, GuardrailAction, HookConfig, HookFormat
from driftswitch.streams.contract.errors import DriftswitchError
from driftswitch.streams.contract.events import Action, AlertEvent, FlagChangeEvent, encode
from driftswitch.streams.pipeline.rollout import ALERT_NAME as ROLLOUT_ALERT

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "HEADER_DELIVERY",
    "HEADER_EVENT",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "Delivery",
    "FailedDelivery",
    "Hook",
    "HookDispatcher",
    "HookError",
    "Request",
    "alertmanager_payload",
    "backoff_delay",
    "describe",
    "pagerduty_payload",
    "pagerduty_warning_resolves",
    "render",
    "render_all",
    "resolve_hooks",
    "sign",
    "slack_payload",
    "verify_signature",
    "warning_sources",
]

log = logging.getLogger(__name__)

HEADER_TIMESTAMP = "X-Driftswitch-Timestamp"
HEADER_SIGNATURE = "X-Driftswitch-Signature"
HEADER_EVENT = "X-Driftswitch-Event"
HEADER_DELIVERY = "X-Driftswitch-Delivery"
#: How far a signed timestamp may be from the receiver's clock, seconds (replay window).
DEFAULT_TOLERANCE_S = 300.0
#: How long a kill/shift alert stays firing in Alertmanager unless a restore resolves it first.
ALERT_TTL_S = 7 * 86400.0
#: Deliveries waiting per (hook, flag) before new ones are dead-lettered as ``overflow``.
DEFAULT_QUEUE_SIZE = 256
PAGERDUTY_DEDUP_PREFIX = "driftswitch"

#: Dead-letter record headers of a failed delivery (beside ``driftswitch.reason``/``.detail``).
HEADER_DL_HOOK = "driftswitch.hook.name"
HEADER_DL_FORMAT = "driftswitch.hook.format"
HEADER_DL_ATTEMPTS = "driftswitch.hook.attempts"
HEADER_DL_EVENT = "driftswitch.hook.event"

Event = FlagChangeEvent | AlertEvent


class HookError(DriftswitchError):
    """Hooks cannot be set up, e.g. an environment variable named by the config is missing."""


class Delivery(StrEnum):
    """What became of one delivery attempt or delivery (the ``outcome`` metric label)."""

    DELIVERED = "delivered"  # a 2xx answer
    RETRIED = "retried"  # an attempt failed; another follows
    FAILED = "failed"  # attempts exhausted or a permanent error: dead-lettered
    OVERFLOW = "overflow"  # the (hook, flag) queue was full: dead-lettered without an attempt


@dataclass(frozen=True)
class Hook:
    """One configured webhook with its secrets resolved from the environment."""

    name: str
    format: HookFormat
    url: SecretStr
    secret: SecretStr | None
    #: The flag this hook belongs to, or None for a global hook.
    flag: str | None
    timeout: float
    max_attempts: int
    backoff: float
    max_backoff: float
    #: ``(flag, variant, guardrail)`` of every guardrail that can raise a ``warn`` alert for
    #: this hook: a kill or restore of the variant resolves their PagerDuty incidents.
    warnings: tuple[tuple[str, str, str], ...] = ()
    #: PagerDuty: seconds without a new warning after which its incident is resolved (None: never).
    warn_resolve_after: float | None = None

    def covers(self, flag: str) -> bool:
        """Whether events of ``flag`` go to this hook."""
        return self.flag is None or self.flag == flag

    @classmethod
    def from_config(
        cls,
        cfg: HookConfig,
        name: str,
        flag: str | None,
        environ: Mapping[str, str],
        warnings: tuple[tuple[str, str, str], ...] = (),
    ) -> Hook:
        """Resolve ``url_env``/``secret_env``; raise :class:`HookError` if one is unset."""

        def env(var: str) -> SecretStr:
            value = environ.get(var, "")
            if not value:
                raise HookError(f"hook {name!r}: environment variable {var} is not set")
            return SecretStr(value)

        url = SecretStr(cfg.url) if cfg.url is not None else env(str(cfg.url_env))
        return cls(
            name=name,
            format=cfg.format,
            url=url,
            secret=env(cfg.secret_env) if cfg.secret_env else None,
            flag=flag,
            timeout=cfg.timeout,
            max_attempts=cfg.max_attempts,
            backoff=cfg.backoff,
            max_backoff=cfg.max_backoff,
            warnings=warnings,
            warn_resolve_after=cfg.warn_resolve_after,
        )


def warning_sources(config: Config) -> tuple[tuple[str, str, str], ...]:
    """``(flag, variant, guardrail)`` of everything in ``config`` that can raise a ``warn``
    alert: guardrails with action ``warn``, and a rollout's own alerts about its candidate."""
    out: list[tuple[str, str, str]] = []
    for flag_name, fc in config.flags.items():
        out.extend(
            (flag_name, g.variant, g.name)
            for g in fc.guardrails
            if g.action is GuardrailAction.WARN
        )
        if fc.rollout is not None:
            out.append((flag_name, fc.rollout.variant, ROLLOUT_ALERT))
    return tuple(out)


def resolve_hooks(config: Config, environ: Mapping[str, str]) -> list[Hook]:
    """Every hook of ``config`` (global first, then per flag), secrets read from ``environ``.

    Raises :class:`HookError` naming every missing variable (their values are never shown).
    """
    hooks: list[Hook] = []
    problems: list[str] = []
    scoped: list[tuple[str | None, int, HookConfig]] = [
        (None, i, h) for i, h in enumerate(config.hooks)
    ]
    for flag_name, fc in config.flags.items():
        scoped.extend((flag_name, i, h) for i, h in enumerate(fc.hooks))
    warnings = warning_sources(config)
    for flag, i, cfg in scoped:
        name = cfg.name or f"{flag or 'global'}[{i}]"
        mine = tuple(w for w in warnings if flag is None or w[0] == flag)
        try:
            hooks.append(Hook.from_config(cfg, name, flag, environ, mine))
        except HookError as exc:
            problems.append(str(exc))
    if problems:
        raise HookError("; ".join(problems))
    return hooks


# --------------------------------------------------------------------------- signing


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """``v1=<hex>``: HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_signature(
    secret: str | bytes,
    timestamp: str | int,
    body: bytes,
    signature: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether a generic hook request is authentic and fresh.

    ``timestamp`` and ``signature`` are the ``X-Driftswitch-Timestamp`` and
    ``X-Driftswitch-Signature`` header values, ``body`` the raw request body (before any JSON
    parsing). False if the timestamp is malformed or further than ``tolerance_s`` from ``now``
    (default: the current time), or if no ``v1=`` signature matches.
    """
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    expected = sign(secret, ts, body)
    candidates = [part.strip() for part in signature.split(",")]
    return any(hmac.compare_digest(expected, c) for c in candidates if c.startswith("v1="))


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class Request:
    """One HTTP POST, ready to send."""

    url: str
    body: bytes
    headers: dict[str, str]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class WarningCleared:
    """A ``warn`` alert not raised again within its hook's ``warn_resolve_after``: PagerDuty
    resolves the incident ``alert`` opened. Queued and retried like the events themselves."""

    #: The last warning raised (its dedup key names the incident).
    alert: AlertEvent

    @property
    def flag(self) -> str:
        return self.alert.flag


#: What a hook's queue carries.
Queued = Event | WarningCleared


def _event_kind(event: Queued) -> str:
    if isinstance(event, WarningCleared):
        return "warning-cleared"
    return "alert" if isinstance(event, AlertEvent) else "flag-change"


def _delivery_id(event: Queued) -> str:
    if isinstance(event, WarningCleared):
        return f"{_delivery_id(event.alert)}/cleared"
    if isinstance(event, AlertEvent):
        return f"{event.flag}/v{event.flag_version}/{event.guardrail}/{event.ts:.3f}"
    return f"{event.flag}/v{event.version}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def describe(event: Event) -> str:
    """A one-line human summary: what happened to which variant, why, and the evidence."""
    cause = event.cause
    evidence = ""
    if cause.statistic is not None or cause.threshold is not None:
        evidence = (
            f" ({cause.detector or 'detector'} statistic {_fmt(cause.statistic)}, "
            f"threshold {_fmt(cause.threshold)})"
        )
    if isinstance(event, AlertEvent):
        return (
            f"{event.flag}: guardrail {event.guardrail} warns about variant {event.variant}"
            f"{evidence}"
        )
    what = {
        Action.KILL: "killed",
        Action.SHIFT: "traffic shifted away",
        Action.RESTORE: "restored",
        Action.HOLD: "rollout held",
    }.get(cause.action, cause.action.value)
    subject = f"variant {cause.variant} {what}" if cause.variant else what
    by = f"guardrail {cause.guardrail}" if cause.guardrail else f"{event.actor}"
    reason = f": {cause.reason}" if cause.reason and not cause.guardrail else ""
    return f"{event.flag}: {subject} by {by}{evidence}{reason} (version {event.version})"


def _weights(event: FlagChangeEvent) -> str:
    return ", ".join(
        f"{name} {state.weight}{' (killed)' if state.killed else ''}"
        for name, state in event.variants.items()
    )


def slack_escape(text: str) -> str:
    """Text safe in a Slack message: ``&``, ``<`` and ``>`` as entities, so ``<!channel>`` or
    ``<https://x|y>`` in a reason or an actor stays text (no mass mention, no hidden link)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _when(event: Event, now: float | None) -> str:
    """``event time …`` (if known: an ``init`` state from backtest has ``ts`` 0) and ``sent …``."""
    parts = [f"event time {_iso(event.ts)}"] if event.ts > 0 else []
    if now is not None:
        parts.append(f"sent {_iso(now)}")
    return ", ".join(parts)


def slack_payload(event: Event, now: float | None = None) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` fallback + Block Kit blocks); every text field
    escaped (:func:`slack_escape`)."""
    summary = slack_escape(describe(event))
    cause = event.cause
    variant = event.variant if isinstance(event, AlertEvent) else cause.variant
    version = event.flag_version if isinstance(event, AlertEvent) else event.version
    fields = [
        ("Flag", event.flag),
        ("Variant", variant or "-"),
        ("Action", cause.action.value),
        ("Guardrail", cause.guardrail or "-"),
        ("Detector", cause.detector or "-"),
        ("Statistic / threshold", f"{_fmt(cause.statistic)} / {_fmt(cause.threshold)}"),
        ("Samples", ", ".join(f"{k} {v}" for k, v in cause.samples.items()) or "-"),
        ("Version", str(version)),
    ]
    fields = [(k, slack_escape(v)) for k, v in fields]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": slack_escape(f"driftswitch: {event.flag}")[:150],
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": summary[:3000]}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"[:2000]} for k, v in fields],
        },
    ]
    if isinstance(event, FlagChangeEvent):
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*Weights* {slack_escape(_weights(event))}"},
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": " · ".join(
                        x for x in (slack_escape(event.actor), _when(event, now)) if x
                    ),
                }
            ],
        }
    )
    return {"text": summary, "blocks": blocks}


_PD_TRIGGER = {Action.KILL: "critical", Action.SHIFT: "error", Action.WARN: "warning"}


def pagerduty_dedup_key(event: Event) -> str:
    """The incident an event belongs to: ``driftswitch:<flag>:<variant>`` for a kill, shift or
    restore (a restore resolves what the kill opened); a ``warn`` alert has its own incident per
    guardrail, ``driftswitch:<flag>:<variant>:warn:<guardrail>``, so a later kill is never merged
    into an open warning."""
    if isinstance(event, AlertEvent):
        return f"{PAGERDUTY_DEDUP_PREFIX}:{event.flag}:{event.variant}:warn:{event.guardrail}"
    variant = event.cause.variant
    return f"{PAGERDUTY_DEDUP_PREFIX}:{event.flag}" + (f":{variant}" if variant else "")


def pagerduty_warning_resolves(
    event: Event, routing_key: str, warnings: Iterable[tuple[str, str, str]]
) -> list[dict[str, Any]]:
    """PagerDuty ``resolve`` events for the warning incidents a kill or restore ends: one per
    guardrail in ``warnings`` that can warn about the event's variant (resolving an incident that
    is not open changes nothing)."""
    if not isinstance(event, FlagChangeEvent):
        return []
    variant = event.cause.variant
    if variant is None or event.cause.action not in (Action.KILL, Action.RESTORE):
        return []
    return [
        {
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": f"{PAGERDUTY_DEDUP_PREFIX}:{flag}:{v}:warn:{guardrail}",
        }
        for flag, v, guardrail in warnings
        if flag == event.flag and v == variant
    ]


def pagerduty_payload(event: Event, routing_key: str) -> dict[str, Any] | None:
    """A PagerDuty Events API v2 event, or None for changes that page no one.

    Trigger on kill, shift and warn; resolve on restore; one incident per flag and variant.
    """
    cause = event.cause
    variant = event.variant if isinstance(event, AlertEvent) else cause.variant
    dedup = pagerduty_dedup_key(event)
    if cause.action is Action.RESTORE:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup}
    severity = _PD_TRIGGER.get(cause.action)
    if severity is None:
        return None
    details: dict[str, JsonValue] = {
        "flag": event.flag,
        "variant": variant,
        "cause": cause.model_dump(mode="json", exclude_none=True),
    }
    if isinstance(event, FlagChangeEvent):
        details["version"] = event.version
        details["weights"] = _weights(event)
    else:
        details["version"] = event.flag_version
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup,
        "client": "driftswitch",
        "payload": {
            "summary": describe(event)[:1024],
            "source": "driftswitch",
            "severity": severity,
            "timestamp": _iso(event.ts),
            "component": event.flag,
            "group": variant or event.flag,
            "class": cause.guardrail or cause.action.value,
            "custom_details": details,
        },
    }


def alertmanager_payload(event: Event, now: float) -> list[dict[str, Any]] | None:
    """The body of Alertmanager's ``POST /api/v2/alerts`` (a list of one alert), or None.

    Kill and shift fire ``DriftswitchVariantDegraded``, restore resolves it (same labels,
    ``endsAt`` = now); ``warn`` fires ``DriftswitchGuardrailWarning``. ``startsAt`` and
    ``endsAt`` are wall-clock times (``now``, when the alert is sent): Alertmanager resolves an
    alert whose ``endsAt`` has passed, so event time there would file a decision about old
    events as already resolved. The event time is the ``event_time`` annotation.
    """
    cause = event.cause
    annotations = {
        "event_time": _iso(event.ts),
        "summary": describe(event),
        "action": cause.action.value,
        "guardrail": cause.guardrail or "",
        "detector": cause.detector or "",
        "statistic": _fmt(cause.statistic),
        "threshold": _fmt(cause.threshold),
    }
    if isinstance(event, AlertEvent):
        labels = {
            "alertname": "DriftswitchGuardrailWarning",
            "service": "driftswitch",
            "flag": event.flag,
            "variant": event.variant,
            "guardrail": event.guardrail,
            "severity": "warning",
        }
        return [{"labels": labels, "annotations": annotations, "startsAt": _iso(now)}]
    if cause.variant is None or cause.action not in (Action.KILL, Action.SHIFT, Action.RESTORE):
        return None
    labels = {
        "alertname": "DriftswitchVariantDegraded",
        "service": "driftswitch",
        "flag": event.flag,
        "variant": cause.variant,
        "severity": "critical",
    }
    annotations["version"] = str(event.version)
    annotations["weights"] = _weights(event)
    ends = now if cause.action is Action.RESTORE else now + ALERT_TTL_S
    alert = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": _iso(now),
        "endsAt": _iso(ends),
    }
    return [alert]


def render_all(hook: Hook, event: Queued, now: float) -> list[Request]:
    """Every request ``hook`` sends for ``event``, in order: :func:`render`'s, then (PagerDuty)
    the resolves of the warning incidents a kill or restore ends; for a
    :class:`WarningCleared`, PagerDuty's resolve of that warning (other formats send nothing)."""
    if hook.format is not HookFormat.PAGERDUTY:
        first = None if isinstance(event, WarningCleared) else render(hook, event, now)
        return [first] if first is not None else []
    key = hook.secret.get_secret_value() if hook.secret is not None else ""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "driftswitch",
        HEADER_EVENT: _event_kind(event),
        HEADER_DELIVERY: _delivery_id(event),
    }
    url = hook.url.get_secret_value()
    if isinstance(event, WarningCleared):
        payloads = [
            {
                "routing_key": key,
                "event_action": "resolve",
                "dedup_key": pagerduty_dedup_key(event.alert),
            }
        ]
        return [Request(url, orjson.dumps(p), headers) for p in payloads]
    first = render(hook, event, now)
    requests = [first] if first is not None else []
    requests += [
        Request(url, orjson.dumps(payload), headers)
        for payload in pagerduty_warning_resolves(event, key, hook.warnings)
    ]
    return requests


def render(hook: Hook, event: Event, now: float) -> Request | None:
    """The request ``hook`` sends for ``event`` at time ``now``, or None if it sends nothing."""
    url = hook.url.get_secret_value()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "driftswitch",
        HEADER_EVENT: _event_kind(event),
        HEADER_DELIVERY: _delivery_id(event),
    }
    payload: Any
    if hook.format is HookFormat.GENERIC:
        body = encode(event)
        if hook.secret is not None:
            ts = int(now)
            headers[HEADER_TIMESTAMP] = str(ts)
            headers[HEADER_SIGNATURE] = sign(hook.secret.get_secret_value(), ts, body)
        return Request(url, body, headers)
    if hook.format is HookFormat.SLACK:
        payload = slack_payload(event, now)
    elif hook.format is HookFormat.PAGERDUTY:
        key = hook.secret.get_secret_value() if hook.secret is not None else ""
        payload = pagerduty_payload(event, key)
    else:
        payload = alertmanager_payload(event, now)
        url = url.rstrip("/") + "/api/v2/alerts"
    if payload is None:
        return None
    if hook.secret is not None and hook.format is not HookFormat.PAGERDUTY:
        headers["Authorization"] = f"Bearer {hook.secret.get_secret_value()}"
    return Request(url, orjson.dumps(payload), headers)


# --------------------------------------------------------------------------- delivery


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter wait after failed attempt ``attempt`` (1-based): U(0, min(cap, base·2^(a−1)))."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** (attempt - 1)))


@dataclass(frozen=True)
class FailedDelivery:
    """A delivery that was given up; the worker publishes it to the dead-letter topic."""

    hook: str
    format: HookFormat
    flag: str
    #: ``flag-change``, ``alert`` or ``warning-cleared`` (PagerDuty's resolve of a quiet warning).
    kind: str
    #: The encoded event (what a generic hook would have received; for ``warning-cleared``, the
    #: warning being resolved), for redelivery by hand.
    event: bytes
    #: ``hook_failed`` (attempts exhausted or permanent error), ``hook_overflow`` (queue full)
    #: or ``hook_crashed`` (an unexpected error while delivering; detail redacted).
    reason: str
    detail: str
    attempts: int

    def headers(self) -> list[tuple[str, bytes]]:
        """Dead-letter record headers (UTF-8 values)."""
        return [
            ("driftswitch.reason", self.reason.encode()),
            ("driftswitch.detail", self.detail[:1000].encode()),
            (HEADER_DL_HOOK, self.hook.encode()),
            (HEADER_DL_FORMAT, self.format.value.encode()),
            (HEADER_DL_ATTEMPTS, str(self.attempts).encode()),
            (HEADER_DL_EVENT, self.kind.encode()),
        ]


DeadLetter = Callable[[FailedDelivery], Awaitable[None]]
#: ``record(format, outcome)``: called once per :class:`Delivery`, e.g. to count it in metrics.
Record = Callable[[str, str], None]


class HookDispatcher:
    """Delivers events to hooks in the background; the worker calls :meth:`submit` per event.

    Use as an async context manager (or :meth:`start` / :meth:`close`). ``deadletter`` receives
    every delivery given up; ``record`` counts outcomes; ``rng`` draws the backoff jitter
    (seed it in tests); ``session`` may be shared with the caller.
    """

    def __init__(
        self,
        hooks: Iterable[Hook],
        *,
        deadletter: DeadLetter,
        record: Record | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        rng: random.Random | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.hooks = list(hooks)
        self._deadletter = deadletter
        self._record = record
        self._queue_size = queue_size
        self._rng = rng or random.Random()
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._queues: dict[tuple[str, str], asyncio.Queue[Queued]] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: (hook name, PagerDuty dedup key) → (resolve at, the last warning) of open warnings.
        self._open_warnings: dict[tuple[str, str], tuple[float, AlertEvent]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        #: (hook name, outcome) → count, also kept without a metrics registry.
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self._secrets = [
            s.get_secret_value()
            for h in self.hooks
            for s in (h.secret, h.url)
            if s is not None and s.get_secret_value()
        ]

    async def start(self) -> None:
        """Open the HTTP session (if none was given); start resolving quiet warnings."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        afters = [h.warn_resolve_after for h in self.hooks if h.warn_resolve_after is not None]
        if afters and self._sweeper is None:
            period = min(60.0, max(0.05, min(afters) / 10))
            self._sweeper = asyncio.create_task(self._sweep(period), name="hook warning sweeper")

    async def _sweep(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            self.resolve_quiet_warnings()

    def resolve_quiet_warnings(self) -> int:
        """Queue a :class:`WarningCleared` for every warning not raised again within its hook's
        ``warn_resolve_after``; return how many (the sweeper calls this periodically)."""
        now = self._clock()
        due = [k for k, (at, _) in self._open_warnings.items() if at <= now]
        hooks = {h.name: h for h in self.hooks}
        for k in due:
            _, alert = self._open_warnings.pop(k)
            self._enqueue(hooks[k[0]], WarningCleared(alert))
        return len(due)

    def _track_warnings(self, hook: Hook, event: Event) -> None:
        """Open (or extend) a warning's incident; forget those a kill or restore resolves."""
        if hook.format is not HookFormat.PAGERDUTY or hook.warn_resolve_after is None:
            return
        if isinstance(event, AlertEvent):
            at = self._clock() + hook.warn_resolve_after
            self._open_warnings[(hook.name, pagerduty_dedup_key(event))] = (at, event)
            return
        if event.cause.action in (Action.KILL, Action.RESTORE) and event.cause.variant:
            for k, (_, alert) in list(self._open_warnings.items()):
                if k[0] == hook.name and (alert.flag, alert.variant) == (
                    event.flag,
                    event.cause.variant,
                ):
                    del self._open_warnings[k]

    async def __aenter__(self) -> HookDispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def submit(self, event: Event) -> None:
        """Queue ``event`` for every hook covering its flag; never blocks, never raises."""
        for hook in self.hooks:
            if hook.covers(event.flag):
                self._track_warnings(hook, event)
                self._enqueue(hook, event)

    def _enqueue(self, hook: Hook, event: Queued) -> None:
        key = (hook.name, event.flag)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue(self._queue_size)
            self._tasks[key] = asyncio.create_task(
                self._drain(hook, queue), name=f"hook {hook.name} {event.flag}"
            )
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            log.error(
                "hook %s: queue for flag %s is full (%d waiting); dead-lettering",
                hook.name,
                event.flag,
                queue.qsize(),
                extra={"hook": hook.name, "flag": event.flag},
            )
            task = asyncio.create_task(
                self._give_up(hook, event, "hook_overflow", "queue full", 0, Delivery.OVERFLOW)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait until every queued delivery is delivered or given up."""
        for queue in list(self._queues.values()):
            await queue.join()
        while self._background:
            await asyncio.gather(*list(self._background))

    async def close(self, grace: float = 5.0) -> None:
        """Finish queued deliveries for up to ``grace`` seconds, then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), grace)
        sweeper = [self._sweeper] if self._sweeper is not None else []
        self._sweeper = None
        for task in [*self._tasks.values(), *self._background, *sweeper]:
            task.cancel()
        for task in [*self._tasks.values(), *self._background, *sweeper]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._queues.clear()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _count(self, hook: Hook, outcome: Delivery) -> None:
        self.outcomes[(hook.name, outcome.value)] += 1
        if self._record is not None:
            try:
                self._record(hook.format.value, outcome.value)
            except Exception:  # counting must never stop a delivery
                log.exception("hook %s: recording outcome %s failed", hook.name, outcome)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _drain(self, hook: Hook, queue: asyncio.Queue[Queued]) -> None:
        while True:
            event = await queue.get()
            try:
                await self._deliver(hook, event)
            except Exception as exc:  # a bug here must not kill the queue for this flag
                # No traceback: its frames and message could carry the hook's URL or secret.
                detail = self._redact(f"{type(exc).__name__}: {exc}")
                log.error("hook %s: delivery crashed: %s", hook.name, detail)
                await self._give_up(hook, event, "hook_crashed", detail, 0, Delivery.FAILED)
            finally:
                queue.task_done()

    async def _attempt(self, request: Request, hook: Hook) -> tuple[bool, bool, str]:
        """Send once: (delivered, worth retrying, detail)."""
        if self._session is None:
            raise HookError("HookDispatcher.start() was not called")
        try:
            async with self._session.post(
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=aiohttp.ClientTimeout(total=hook.timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            return False, True, f"timeout after {hook.timeout:g}s"
        except aiohttp.ClientError as exc:
            return False, True, self._redact(f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return True, False, f"HTTP {status}"
        return False, status >= 500 or status in (408, 429), f"HTTP {status}"

    async def _deliver(self, hook: Hook, event: Queued) -> None:
        count = len(render_all(hook, event, self._clock()))
        for i in range(count):  # none if this format does not report this kind of change
            if not await self._deliver_one(hook, event, i):
                return

    async def _deliver_one(self, hook: Hook, event: Queued, index: int) -> bool:
        """Send request ``index`` of :func:`render_all` with retries; False once given up."""
        attempt = 0
        detail = ""
        while attempt < hook.max_attempts:
            attempt += 1
            request = render_all(hook, event, self._clock())[index]
            ok, retry, detail = await self._attempt(request, hook)
            if ok:
                self._count(hook, Delivery.DELIVERED)
                log.debug(
                    "hook %s: delivered %s %s",
                    hook.name,
                    _event_kind(event),
                    _delivery_id(event),
                    extra={"hook": hook.name, "flag": event.flag},
                )
                return True
            if not retry or attempt >= hook.max_attempts:
                break
            self._count(hook, Delivery.RETRIED)
            delay = backoff_delay(attempt, hook.backoff, hook.max_backoff, self._rng)
            log.warning(
                "hook %s: attempt %d/%d for %s failed (%s); retrying in %.3gs",
                hook.name,
                attempt,
                hook.max_attempts,
                _delivery_id(event),
                detail,
                delay,
                extra={"hook": hook.name, "flag": event.flag},
            )
            await asyncio.sleep(delay)
        log.error(
            "hook %s: giving up on %s after %d attempt(s): %s",
            hook.name,
            _delivery_id(event),
            attempt,
            detail,
            extra={"hook": hook.name, "flag": event.flag},
        )
        await self._give_up(hook, event, "hook_failed", detail, attempt, Delivery.FAILED)
        return False

    async def _give_up(
        self, hook: Hook, event: Queued, reason: str, detail: str, attempts: int, outcome: Delivery
    ) -> None:
        self._count(hook, outcome)
        failed = FailedDelivery(
            hook=hook.name,
            format=hook.format,
            flag=event.flag,
            kind=_event_kind(event),
            event=encode(event.alert if isinstance(event, WarningCleared) else event),
            reason=reason,
            detail=detail,
            attempts=attempts,
        )
        try:
            await self._deadletter(failed)
        except Exception:
            log.exception("hook %s: dead-lettering a failed delivery failed", hook.name)
