"""Webhook delivery against a real HTTP receiver on 127.0.0.1 (aiohttp server, random port)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from driftswitch.streams.config.model import HookFormat
from driftswitch.streams.contract.events import (
    Action,
    AlertEvent,
    Cause,
    CauseKind,
    FlagChangeEvent,
    VariantState,
)
from driftswitch.streams.service.hooks import (
    HEADER_DELIVERY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    FailedDelivery,
    Hook,
    HookDispatcher,
    verify_signature,
)

SECRET = "whsec-test-0123456789"
TS = 1767225600.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every request; ``respond`` decides each answer (status code, or awaits)."""

    respond: Callable[[web.Request, int], Awaitable[int]]
    requests: list[Received] = field(default_factory=list)
    url: str = ""


@asynccontextmanager
async def receiver(
    respond: Callable[[web.Request, int], Awaitable[int]],
) -> AsyncIterator[Receiver]:
    rec = Receiver(respond)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        n = len(rec.requests)
        rec.requests.append(Received(request.path, dict(request.headers), body))
        return web.Response(status=await rec.respond(request, n))

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


def make_hook(
    url: str, *, name: str = "h", attempts: int = 4, fmt: HookFormat = HookFormat.GENERIC
) -> Hook:
    return Hook(
        name=name,
        format=fmt,
        url=SecretStr(url),
        secret=SecretStr(SECRET),
        flag=None,
        timeout=2.0,
        max_attempts=attempts,
        backoff=0.002,
        max_backoff=0.01,
    )


def kill(flag: str = "ranker", version: int = 2) -> FlagChangeEvent:
    return FlagChangeEvent(
        flag=flag,
        version=version,
        variants={
            "control": VariantState(weight=100, value="v1"),
            "candidate": VariantState(weight=0, killed=True, value="v2"),
        },
        default_variant="control",
        cause=Cause(kind=CauseKind.DETECTOR, action=Action.KILL, variant="candidate"),
        ts=TS,
        actor="driftswitch",
    )


class Sink:
    """The dead-letter callback and the metrics callback, recording what they get."""

    def __init__(self) -> None:
        self.dead: list[FailedDelivery] = []
        self.records: list[tuple[str, str]] = []

    async def deadletter(self, failed: FailedDelivery) -> None:
        self.dead.append(failed)

    def record(self, fmt: str, outcome: str) -> None:
        self.records.append((fmt, outcome))


async def ok(request: web.Request, n: int) -> int:
    return 200


def test_signed_delivery_verifies_and_tampering_fails() -> None:
    async def scenario() -> Received:
        sink = Sink()
        async with receiver(ok) as rec:
            async with HookDispatcher(
                [make_hook(rec.url)], deadletter=sink.deadletter, record=sink.record
            ) as dispatcher:
                dispatcher.submit(kill())
                await dispatcher.drain()
            assert sink.records == [("generic", "delivered")]
            assert sink.dead == []
            assert len(rec.requests) == 1
            return rec.requests[0]

    got = asyncio.run(scenario())
    ts, sig = got.headers[HEADER_TIMESTAMP], got.headers[HEADER_SIGNATURE]
    assert got.headers[HEADER_DELIVERY] == "ranker/v2"
    assert FlagChangeEvent.model_validate_json(got.body) == kill()
    assert verify_signature(SECRET, ts, got.body, sig)
    assert not verify_signature(SECRET, ts, got.body.replace(b'"weight":0', b'"weight":9'), sig)
    assert not verify_signature("wrong-secret", ts, got.body, sig)
    assert not verify_signature(SECRET, ts, got.body, sig, now=int(ts) + 301)  # a replay


def test_retries_until_the_receiver_recovers() -> None:
    async def flaky(request: web.Request, n: int) -> int:
        return 503 if n < 3 else 200

    async def scenario() -> tuple[Sink, Receiver, HookDispatcher]:
        sink = Sink()
        async with (
            receiver(flaky) as rec,
            HookDispatcher(
                [make_hook(rec.url, attempts=5)],
                deadletter=sink.deadletter,
                record=sink.record,
                rng=random.Random(1),
            ) as dispatcher,
        ):
            dispatcher.submit(kill())
            await dispatcher.drain()
        return sink, rec, dispatcher

    sink, rec, dispatcher = asyncio.run(scenario())
    assert len(rec.requests) == 4
    assert sink.records == [("generic", "retried")] * 3 + [("generic", "delivered")]
    assert sink.dead == []
    assert dispatcher.outcomes == {("h", "retried"): 3, ("h", "delivered"): 1}
    # Every attempt is signed afresh and verifies.
    for r in rec.requests:
        assert verify_signature(
            SECRET, r.headers[HEADER_TIMESTAMP], r.body, r.headers[HEADER_SIGNATURE]
        )


@pytest.mark.parametrize(
    ("status", "attempts"),
    [
        pytest.param(500, 3, id="5xx-retried-then-dead-lettered"),
        pytest.param(429, 3, id="429-retried-then-dead-lettered"),
        pytest.param(400, 1, id="4xx-dead-lettered-at-once"),
    ],
)
def test_exhausted_deliveries_are_dead_lettered_and_counted(status: int, attempts: int) -> None:
    async def failing(request: web.Request, n: int) -> int:
        return status

    async def scenario() -> tuple[Sink, Receiver]:
        sink = Sink()
        async with (
            receiver(failing) as rec,
            HookDispatcher(
                [make_hook(rec.url, attempts=3)], deadletter=sink.deadletter, record=sink.record
            ) as dispatcher,
        ):
            dispatcher.submit(kill())
            dispatcher.submit(kill(version=3))
            await dispatcher.drain()
        return sink, rec

    sink, rec = asyncio.run(scenario())
    assert len(rec.requests) == 2 * attempts
    assert [(d.reason, d.attempts, d.detail) for d in sink.dead] == [
        ("hook_failed", attempts, f"HTTP {status}")
    ] * 2
    assert [FlagChangeEvent.model_validate_json(d.event).version for d in sink.dead] == [2, 3]
    assert sink.dead[0].flag == "ranker"
    assert dict(sink.dead[0].headers())["driftswitch.reason"] == b"hook_failed"
    assert sink.records.count(("generic", "failed")) == 2
    assert sink.records.count(("generic", "retried")) == 2 * (attempts - 1)


def test_order_per_flag_is_kept_under_concurrency_and_failures() -> None:
    """Three flags x 30 versions to two hooks; the receiver fails and stalls at random."""
    rng = random.Random(42)
    plan = [(rng.random() < 0.3, rng.random() * 0.004) for _ in range(5000)]

    async def chaotic(request: web.Request, n: int) -> int:
        fail, delay = plan[n]
        await asyncio.sleep(delay)
        return 500 if fail else 200

    flags = ["a", "b", "c"]

    async def scenario() -> tuple[Sink, Receiver]:
        sink = Sink()
        async with receiver(chaotic) as rec:
            hooks = [
                make_hook(rec.url + "/one", name="one", attempts=20),
                make_hook(rec.url + "/two", name="two", attempts=20),
            ]
            async with HookDispatcher(
                hooks, deadletter=sink.deadletter, rng=random.Random(3)
            ) as dispatcher:
                for version in range(1, 31):
                    for flag in flags:
                        dispatcher.submit(kill(flag, version))
                    if version % 7 == 0:
                        await asyncio.sleep(0)  # let deliveries interleave with submissions
                await dispatcher.drain()
        return sink, rec

    sink, rec = asyncio.run(scenario())
    assert sink.dead == []
    failures = sum(1 for i in range(len(rec.requests)) if plan[i][0])
    assert failures > 30  # the scenario really did retry
    delivered: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rec.requests):
        if plan[i][0]:
            continue
        event = FlagChangeEvent.model_validate_json(r.body)
        delivered.setdefault((r.path, event.flag), []).append(event.version)
    assert sorted(delivered) == [(p, f) for p in ("/hook/one", "/hook/two") for f in flags]
    for versions in delivered.values():
        assert versions == list(range(1, 31))


def test_a_stalled_hook_blocks_neither_the_caller_nor_other_hooks() -> None:
    async def scenario() -> tuple[Sink, Receiver, Receiver, list[str]]:
        sink = Sink()
        release = asyncio.Event()
        fast_got = [asyncio.Event() for _ in range(6)]

        async def stalled(request: web.Request, n: int) -> int:
            await release.wait()
            return 200

        async def fast_ok(request: web.Request, n: int) -> int:
            fast_got[n].set()
            return 200

        async with receiver(stalled) as slow, receiver(fast_ok) as fast:
            hooks = [make_hook(slow.url, name="slow"), make_hook(fast.url, name="fast")]
            async with HookDispatcher(
                hooks, deadletter=sink.deadletter, queue_size=2
            ) as dispatcher:
                for version in range(1, 7):
                    dispatcher.submit(kill(version=version))  # returns at once: no await
                    # The fast hook keeps up while the slow one is stuck on version 1.
                    await asyncio.wait_for(fast_got[version - 1].wait(), 30)
                seen_before_release = [r.headers[HEADER_DELIVERY] for r in slow.requests]
                release.set()
                await dispatcher.drain()
        return sink, slow, fast, seen_before_release

    sink, slow, fast, seen = asyncio.run(scenario())
    # The fast hook got everything in order while the slow one was stuck on version 1.
    assert [r.headers[HEADER_DELIVERY] for r in fast.requests] == [
        f"ranker/v{v}" for v in range(1, 7)
    ]
    assert seen == ["ranker/v1"]
    # Version 1 in flight, 2 and 3 queued (queue_size 2), 4-6 overflowed to the dead letters.
    assert [(d.hook, d.reason) for d in sink.dead] == [("slow", "hook_overflow")] * 3
    assert [FlagChangeEvent.model_validate_json(d.event).version for d in sink.dead] == [4, 5, 6]
    assert [r.headers[HEADER_DELIVERY] for r in slow.requests] == [
        "ranker/v1",
        "ranker/v2",
        "ranker/v3",
    ]


def test_timeouts_are_retried() -> None:
    async def scenario() -> tuple[Sink, Receiver]:
        sink = Sink()
        hang = asyncio.Event()

        async def first_hangs(request: web.Request, n: int) -> int:
            if n == 0:
                await hang.wait()  # until the client has timed out and retried
            return 200

        async with receiver(first_hangs) as rec:
            hook = make_hook(rec.url)
            hook = Hook(**{**hook.__dict__, "timeout": 0.2})
            async with HookDispatcher(
                [hook], deadletter=sink.deadletter, record=sink.record
            ) as dispatcher:
                dispatcher.submit(kill())
                await dispatcher.drain()
            hang.set()
        return sink, rec

    sink, rec = asyncio.run(scenario())
    assert sink.records == [("generic", "retried"), ("generic", "delivered")]
    assert len(rec.requests) == 2


def test_secrets_never_reach_logs_or_dead_letters(caplog: pytest.LogCaptureFixture) -> None:
    url_token = "T000/B000/SLACKSECRETTOKEN"

    async def scenario() -> tuple[Sink, str]:
        sink = Sink()
        async with receiver(ok) as rec:
            closed_port_url = rec.url  # the server stops before the hooks run
        hooks = [
            Hook(
                name="slack",
                format=HookFormat.SLACK,
                url=SecretStr(f"{closed_port_url}/{url_token}"),
                secret=SecretStr(SECRET),
                flag=None,
                timeout=1.0,
                max_attempts=2,
                backoff=0.001,
                max_backoff=0.001,
            ),
            make_hook(f"{closed_port_url}/{url_token}", name="generic", attempts=2),
        ]
        async with HookDispatcher(hooks, deadletter=sink.deadletter) as dispatcher:
            text = repr(dispatcher.hooks)
            dispatcher.submit(kill())
            await dispatcher.drain()
        return sink, text

    with caplog.at_level(logging.DEBUG, logger="driftswitch"):
        sink, hooks_repr = asyncio.run(scenario())
    assert sorted(d.hook for d in sink.dead) == ["generic", "slack"]
    assert caplog.records, "the failures were logged"
    everything = (
        caplog.text
        + hooks_repr
        + "".join(d.detail + repr(d) + repr(d.headers()) for d in sink.dead)
    )
    assert "giving up" in caplog.text
    assert SECRET not in everything
    assert url_token not in everything


def test_a_crashing_delivery_is_dead_lettered_with_a_redacted_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error while delivering loses nothing and leaks no secret into the logs."""
    import driftswitch.streams.service.hooks as hooks_module

    def broken(hook: Hook, event: FlagChangeEvent, now: float) -> None:
        raise RuntimeError(f"cannot render for {hook.secret.get_secret_value()}")

    monkeypatch.setattr(hooks_module, "render", broken)

    async def scenario() -> Sink:
        sink = Sink()
        async with HookDispatcher(
            [make_hook("http://127.0.0.1:9/never")], deadletter=sink.deadletter, record=sink.record
        ) as dispatcher:
            dispatcher.submit(kill())
            dispatcher.submit(kill(version=3))
            await dispatcher.drain()
        return sink

    with caplog.at_level(logging.DEBUG):
        sink = asyncio.run(scenario())
    assert [(d.reason, d.detail) for d in sink.dead] == [
        ("hook_crashed", "RuntimeError: cannot render for ***")
    ] * 2
    assert [FlagChangeEvent.model_validate_json(d.event).version for d in sink.dead] == [2, 3]
    assert sink.records.count(("generic", "failed")) == 2
    assert SECRET not in caplog.text
    assert "delivery crashed" in caplog.text


def test_pagerduty_warning_incident_is_resolved_by_the_kill_and_the_restore() -> None:
    cause = Cause(
        kind=CauseKind.DETECTOR, action=Action.WARN, guardrail="slow", variant="candidate"
    )
    warn = AlertEvent(
        flag="ranker", guardrail="slow", variant="candidate", cause=cause, ts=TS, flag_version=1
    )
    restore = kill(version=3).model_copy(
        update={"cause": Cause(kind=CauseKind.MANUAL, action=Action.RESTORE, variant="candidate")}
    )

    async def scenario() -> tuple[Sink, Receiver]:
        sink = Sink()
        async with receiver(ok) as rec:
            hook = make_hook(rec.url, fmt=HookFormat.PAGERDUTY)
            hook = Hook(**{**hook.__dict__, "warnings": (("ranker", "candidate", "slow"),)})
            async with HookDispatcher(
                [hook], deadletter=sink.deadletter, record=sink.record
            ) as dispatcher:
                for event in (warn, kill(), restore):
                    dispatcher.submit(event)
                await dispatcher.drain()
        return sink, rec

    sink, rec = asyncio.run(scenario())
    sent = [orjson.loads(r.body) for r in rec.requests]
    warn_key = "driftswitch:ranker:candidate:warn:slow"
    assert [(b["event_action"], b["dedup_key"]) for b in sent] == [
        ("trigger", warn_key),
        ("trigger", "driftswitch:ranker:candidate"),
        ("resolve", warn_key),
        ("resolve", "driftswitch:ranker:candidate"),
        ("resolve", warn_key),
    ]
    assert all(b["routing_key"] == SECRET for b in sent)
    assert sink.dead == []
    assert sink.records == [("pagerduty", "delivered")] * 5


def test_pagerduty_warning_that_stops_recurring_is_resolved_after_the_quiet_period() -> None:
    def warn(variant: str, guardrail: str, ts: float) -> AlertEvent:
        cause = Cause(
            kind=CauseKind.DETECTOR, action=Action.WARN, guardrail=guardrail, variant=variant
        )
        return AlertEvent(
            flag="ranker", guardrail=guardrail, variant=variant, cause=cause, ts=ts, flag_version=1
        )

    now = [1000.0]

    async def scenario() -> tuple[Sink, Receiver, list[int]]:
        sink = Sink()
        due: list[int] = []
        async with receiver(ok) as rec:
            hook = make_hook(rec.url, fmt=HookFormat.PAGERDUTY)
            warnings = (("ranker", "candidate", "slow"), ("ranker", "control", "acc"))
            hook = Hook(**{**hook.__dict__, "warn_resolve_after": 600.0, "warnings": warnings})
            async with HookDispatcher(
                [hook], deadletter=sink.deadletter, record=sink.record, clock=lambda: now[0]
            ) as dispatcher:
                dispatcher.submit(warn("candidate", "slow", TS))
                dispatcher.submit(warn("control", "acc", TS))
                now[0] += 400  # both still recent
                due.append(dispatcher.resolve_quiet_warnings())
                dispatcher.submit(warn("candidate", "slow", TS + 60))  # raised again: extended
                dispatcher.submit(kill())  # the kill of the candidate resolves its warning
                dispatcher.submit(warn("candidate", "slow", TS + 120))  # and a new one opens
                now[0] += 300  # control's warning quiet for 700 s, candidate's for 0
                due.append(dispatcher.resolve_quiet_warnings())
                await dispatcher.drain()
                now[0] += 700
                due.append(dispatcher.resolve_quiet_warnings())
                due.append(dispatcher.resolve_quiet_warnings())  # resolved once only
                await dispatcher.drain()
        return sink, rec, due

    sink, rec, due = asyncio.run(scenario())
    sent = [
        (b["event_action"], b["dedup_key"])
        for b in map(orjson.loads, (r.body for r in rec.requests))
    ]
    slow, acc = "driftswitch:ranker:candidate:warn:slow", "driftswitch:ranker:control:warn:acc"
    assert due == [0, 1, 1, 0]
    assert sent == [
        ("trigger", slow),
        ("trigger", acc),
        ("trigger", slow),
        ("trigger", "driftswitch:ranker:candidate"),
        ("resolve", slow),  # by the kill
        ("trigger", slow),
        ("resolve", acc),  # quiet for 700 s
        ("resolve", slow),  # the new one, quiet for 700 s
    ]
    assert [r.headers["X-Driftswitch-Event"] for r in rec.requests][-2:] == ["warning-cleared"] * 2
    assert sink.dead == []


def test_pagerduty_quiet_warnings_are_resolved_by_the_dispatcher_itself() -> None:
    cause = Cause(
        kind=CauseKind.DETECTOR, action=Action.WARN, guardrail="slow", variant="candidate"
    )
    alert = AlertEvent(
        flag="ranker", guardrail="slow", variant="candidate", cause=cause, ts=TS, flag_version=1
    )

    async def scenario() -> Receiver:
        sink = Sink()
        async with receiver(ok) as rec:
            hook = make_hook(rec.url, fmt=HookFormat.PAGERDUTY)
            hook = Hook(**{**hook.__dict__, "warn_resolve_after": 0.3})
            async with HookDispatcher([hook], deadletter=sink.deadletter) as dispatcher:
                dispatcher.submit(alert)
                for _ in range(200):  # the sweeper runs every 0.05 s here
                    if len(rec.requests) == 2:
                        break
                    await asyncio.sleep(0.05)
        return rec

    rec = asyncio.run(scenario())
    assert [orjson.loads(r.body)["event_action"] for r in rec.requests] == ["trigger", "resolve"]
