"""The client's request path and the OpenFeature provider without a broker (state applied)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.flag_evaluation import Reason

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.client.openfeature import DriftswitchProvider
from driftswitch.streams.contract.assign import Fractional
from driftswitch.streams.contract.events import FlagChangeEvent, PredictionEvent

KEYS = [f"user-{i}" for i in range(1_000)]


def state(
    version: int, variants: dict[str, tuple[int, bool, Any]], default: str, flag: str = "f"
) -> FlagChangeEvent:
    return FlagChangeEvent.model_validate(
        {
            "flag": flag,
            "version": version,
            "variants": {
                n: {"weight": w, "killed": k, "value": v} for n, (w, k, v) in variants.items()
            },
            "default_variant": default,
            "cause": {"kind": "manual", "action": "set_weights"},
            "ts": 1_767_225_600.0,
            "actor": "test",
        }
    )


def held(client: DriftswitchClient, flag: str) -> FlagChangeEvent:
    found = client.flag_state(flag)
    assert found is not None
    return found


def unstarted(**kwargs: Any) -> DriftswitchClient:
    """A client whose background thread never runs: state comes from :meth:`apply`."""
    return DriftswitchClient("127.0.0.1:1", **kwargs)


def test_client_import_stays_light() -> None:
    code = (
        "import sys, driftswitch.streams.client.client; "
        "print(sorted(m for m in ('numpy', 'river', 'scipy', 'openfeature') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_apply_keeps_the_newest_version_and_calls_back_once_per_change() -> None:
    client = unstarted()
    seen: list[int] = []
    unsubscribe = client.on_change(lambda s: seen.append(s.version))
    v1 = state(1, {"a": (50, False, 1), "b": (50, False, 2)}, "a")
    v2 = state(2, {"a": (50, False, 1), "b": (50, True, 2)}, "a")
    assert [client.apply(s) for s in (v1, v2, v1, v2)] == [True, True, False, False]
    assert client.flag_state("f") == v2
    assert seen == [1, 2]
    unsubscribe()
    client.apply(state(3, {"a": (1, False, 1)}, "a"))
    assert seen == [1, 2]
    assert client.stats().stale_versions_ignored == 2


def test_a_failing_callback_does_not_stop_the_others() -> None:
    client = unstarted()
    seen: list[str] = []

    def broken(_: FlagChangeEvent) -> None:
        raise RuntimeError("bug in a consumer")

    client.on_change(broken)
    client.on_change(lambda s: seen.append(s.flag))
    assert client.apply(state(1, {"a": (1, False, 1)}, "a"))
    assert seen == ["f"]


def test_variant_matches_assignment_and_never_serves_a_killed_variant() -> None:
    client = unstarted()
    live = state(1, {"a": (20, False, "A"), "b": (30, False, "B"), "c": (50, False, "C")}, "c")
    client.apply(live)
    assert [client.variant("f", k) for k in KEYS] == [
        Fractional.from_event(live).variant(k) for k in KEYS
    ]
    client.apply(
        state(2, {"a": (20, False, "A"), "b": (30, True, "B"), "c": (50, False, "C")}, "c")
    )
    served = {client.variant("f", k) for k in KEYS}
    assert served == {"a", "c"}
    assert {client.value("f", k) for k in KEYS} == {"A", "C"}


@pytest.mark.parametrize(
    "key",
    [None, 123, b"bytes", "", "\ud800"],
    ids=["none", "int", "bytes", "empty", "lone-surrogate"],
)
def test_variant_never_raises_and_falls_back_to_the_default(key: Any) -> None:
    client = unstarted(defaults={"f": "b", "unknown": "x"})
    client.apply(state(1, {"a": (0, False, 1), "b": (10, False, 2)}, "a"))
    assert client.variant("f", key) == "a"  # the state's default wins over the configured one
    assert client.variant("unknown", key) == "x"
    assert client.variant("no-default", key) is None
    unhashable: Any = ["flag"]
    assert client.variant(unhashable, key) is None
    assert client.resolve(unhashable, key).reason == "error"


def test_resolve_reports_why() -> None:
    client = unstarted(defaults={"later": "off"})
    client.apply(state(4, {"on": (10, False, True), "off": (90, False, False)}, "off"))
    client.apply(state(1, {"on": (1, True, True), "off": (0, False, False)}, "off", flag="dead"))
    split = client.resolve("f", "user-1")
    assert (split.reason, split.version) == ("split", 4)
    assert split.value is (split.variant == "on")
    assert client.resolve("f", None).reason == "default"
    dead = client.resolve("dead", "user-1")
    assert (dead.variant, dead.value, dead.reason) == ("off", False, "default")
    client.apply(state(1, {"new": (5, False, 1), "old": (0, False, 0)}, "old", flag="done"))
    done = client.resolve("done", "user-1")
    assert (done.variant, done.value, done.reason) == ("new", 1, "static")
    later = client.resolve("later", "user-1", default="fallback")
    assert (later.variant, later.value, later.reason) == ("off", "fallback", "unknown")


def test_recording_is_bounded_and_counts_drops_without_a_broker() -> None:
    client = unstarted(buffer_size=10)
    accepted = [client.record_prediction(f"r{i}", "f", "a", 0.5, score=0.5) for i in range(8)]
    accepted.append(
        client.record(PredictionEvent(request_id="r8", flag="f", variant="a", ts=1.0, prediction=1))
    )
    accepted += [client.record_outcome(f"r{i}", 1) for i in range(6)]
    stats = client.stats()
    assert accepted == [True] * 10 + [False] * 5
    assert (stats.recorded, stats.buffered, stats.dropped, stats.sent) == (15, 10, 5, 0)


def test_provider_resolves_each_type_with_reason_and_version() -> None:
    client = unstarted(defaults={"pending": "a"})
    values = {
        "bool": (True, False),
        "int": (7, 8),
        "float": (0.5, 2),
        "obj": ({"model": "a"}, ["b"]),
        "str": ("x", "y"),
    }
    for flag, (va, vb) in values.items():
        client.apply(state(3, {"a": (50, False, va), "b": (50, False, vb)}, "a", flag=flag))
    provider = DriftswitchProvider(client)
    ctx = EvaluationContext(targeting_key="user-5")
    picked = Fractional.from_event(held(client, "bool")).variant("user-5")
    details = [
        provider.resolve_boolean_details("bool", False, ctx),
        provider.resolve_integer_details("int", 0, ctx),
        provider.resolve_float_details("float", 0.0, ctx),
        provider.resolve_object_details("obj", {}, ctx),
        provider.resolve_string_details("str", "", ctx),
    ]
    for flag, d in zip(values, details, strict=True):
        expected = Fractional.from_event(held(client, flag)).variant("user-5")
        assert (d.variant, d.reason, d.error_code, d.flag_metadata) == (
            expected,
            Reason.SPLIT,
            None,
            {"version": 3},
        )
    assert details[0].value is (picked == "a")
    assert isinstance(details[2].value, float)
    wrong = provider.resolve_integer_details("bool", 1, ctx)
    assert (wrong.value, wrong.reason, wrong.error_code) == (1, Reason.ERROR, "TYPE_MISMATCH")
    pending = provider.resolve_string_details("pending", "dflt", ctx)
    assert (pending.value, pending.variant, pending.reason) == ("dflt", "a", Reason.DEFAULT)
    no_key = provider.resolve_string_details("str", "", EvaluationContext())
    assert (no_key.value, no_key.variant, no_key.reason) == ("x", "a", Reason.DEFAULT)


def test_provider_emits_configuration_changed_per_accepted_change() -> None:
    client = unstarted(follow_flags=False)
    provider = DriftswitchProvider(client)
    emitted: list[tuple[ProviderEvent, list[str] | None, object]] = []
    provider.attach(lambda _, event, d: emitted.append((event, d.flags_changed, d.metadata)))
    provider.initialize(EvaluationContext())
    client.apply(state(1, {"a": (1, False, 1)}, "a"))
    client.apply(state(1, {"a": (1, False, 1)}, "a"))
    provider.shutdown()
    client.apply(state(2, {"a": (1, False, 1)}, "a"))
    assert emitted == [(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, ["f"], {"version": 1})]


def test_a_client_can_be_closed_without_a_broker_and_started_again() -> None:
    client = unstarted(follow_flags=False, buffer_size=5)
    for _ in range(2):
        assert client.start(wait_s=0.1)
        assert client.record_outcome("r", 1)
        client.close(timeout_s=0.2)
    stats = client.stats()
    assert (stats.recorded, stats.failed, stats.buffered, stats.producer_connected) == (
        2,
        2,
        0,
        False,
    )


def test_recording_after_close_is_refused_and_counted_as_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing sends what is recorded after close(): say so (False, dropped, one warning)."""
    client = unstarted(follow_flags=False)
    client.start(wait_s=0)
    client.close(timeout_s=0.2)
    accepted = [client.record_prediction(f"r{i}", "f", "a", 1) for i in range(3)]
    accepted.append(client.record_outcome("r0", 1))
    accepted.append(client.record_clicks("r0", ["doc-7"]))
    stats = client.stats()
    assert accepted == [False] * 5
    assert (stats.recorded, stats.dropped, stats.buffered) == (5, 5, 0)
    warnings = [r for r in caplog.records if "after close()" in r.getMessage()]
    assert len(warnings) == 1
    client.start(wait_s=0)  # started again: recording works again
    try:
        assert client.record_outcome("r1", 1)
        # ... and a reconnect's stop gets its usual bound again, not close()'s short grace.
        assert client._stop_timeout_s == client.STOP_TIMEOUT_S > client.STOP_GRACE_S
    finally:
        client.close(timeout_s=0.2)


@pytest.mark.parametrize("clicked", ["doc-7", b"doc-7"])
def test_record_clicks_refuses_a_bare_string(clicked: Any) -> None:
    """A str is an iterable of str: "doc-7" would record the clicks d, o, c, -, 7."""
    client = unstarted()
    with pytest.raises(TypeError, match=r"list of clicked item ids.*pass \["):
        client.record_clicks("r1", clicked)
    assert client.stats().recorded == 0
    assert client.record_clicks("r1", ["doc-7"])


def test_an_evaluation_that_keeps_failing_logs_its_traceback_once_then_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A context every request sends (here a datetime, which OpenFeature allows and the rule's
    # comparison cannot take) fails each evaluation: the default serves, and the log gets the
    # first traceback and then one line at 2, 4, 8, ... failures, not 1,000 tracebacks.
    import datetime

    client = DriftswitchClient("127.0.0.1:1", defaults={"ranker": "control"})
    client.apply(
        FlagChangeEvent.model_validate(
            {
                "flag": "ranker",
                "version": 1,
                "default_variant": "control",
                "variants": {
                    "control": {"weight": 90, "value": "a"},
                    "candidate": {"weight": 10, "value": "b"},
                },
                "targeting": {"if": [{"<": [{"var": "age"}, 18]}, "candidate", None]},
                "cause": {"kind": "config", "action": "init"},
                "ts": 1_767_225_600.0,
                "actor": "driftswitch",
            }
        )
    )
    # A naive datetime: the interpreter's comparison raises (an aware one compares as None).
    when = {"age": datetime.datetime(2026, 1, 1)}
    with caplog.at_level("WARNING", logger="driftswitch.streams.client.client"):
        served = {client.variant("ranker", f"user-{i}", when) for i in range(1000)}
        resolved = client.resolve("ranker", "user-1", when)
    assert served == {"control"}
    assert (resolved.variant, resolved.reason) == ("control", "error")
    records = [r for r in caplog.records if "evaluating flag 'ranker' failed" in r.getMessage()]
    assert [r.exc_info is not None for r in records] == [True] + [False] * 9  # 1, 2, 4, ... 512
    assert records[-1].getMessage() == (
        "driftswitch: evaluating flag 'ranker' failed 512 times so far; serving the default"
    )


def test_an_older_state_checked_before_a_newer_one_was_held_does_not_replace_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # apply() from two threads (the follower's, an embedder's): version 2 is checked against
    # version 1 and is being prepared when version 3 comes; version 3 must be what is held.
    import threading

    from driftswitch.streams.client import client as module

    def version(n: int) -> FlagChangeEvent:
        return state(n, {"a": (50, False, 1), "b": (50, False, 2)}, "a")

    client = unstarted()
    client.apply(version(1))
    preparing, newer_came = threading.Event(), threading.Event()
    prepare = module.Fractional.from_event

    def slow_for_version_2(event: FlagChangeEvent) -> Fractional:
        if event.version == 2:
            preparing.set()
            newer_came.wait(0.5)  # with the lock, version 3 waits for this apply instead
        return prepare(event)

    monkeypatch.setattr(module.Fractional, "from_event", slow_for_version_2)
    older = threading.Thread(target=client.apply, args=(version(2),))
    older.start()
    assert preparing.wait(10)

    def newer() -> None:
        newer_came.set()
        client.apply(version(3))

    later = threading.Thread(target=newer)
    later.start()
    older.join(10)
    later.join(10)
    assert held(client, "f").version == 3
