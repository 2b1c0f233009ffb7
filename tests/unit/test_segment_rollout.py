"""Rollouts by segment: the steps run in each segment on that segment's outcomes, a finished
segment keeps the last step's share, and the served gate equals flagd's evaluation."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import ProviderStatus

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.config.model import ConfigError, parse_config
from driftswitch.streams.contract.events import FlagChangeEvent, OutcomeEvent, PredictionEvent
from driftswitch.streams.contract.flagd import FlagdFile
from driftswitch.streams.pipeline.engine import Engine

CONFIG = """
flags:
  ranker:
    default: control
    variants:
      control:   {weight: 90, value: v1}
      candidate: {weight: 10, value: v2}
    rollout:
      variant: candidate
      steps: [10, 50, 100]
      min_samples: 100
      margin: 0.05
      segments:
        - {name: internal, when: {ends_with: [{var: email}, "@example.com"]}}
        - {name: nz, when: {in: [{var: region}, [nz]]}}
        - {name: everyone}
"""


def context(i: int) -> dict[str, Any]:
    kind = i % 3
    if kind == 0:
        return {"email": f"u{i}@example.com", "region": "us"}
    return {"region": "nz" if kind == 1 else "us"}


def events(
    n: int, who: Any = context, seed: int = 3, serve: Any = None
) -> list[PredictionEvent | OutcomeEvent]:
    """Both variants 90 % right; half the requests each (or as ``serve`` decides)."""
    rng = random.Random(seed)
    out: list[PredictionEvent | OutcomeEvent] = []
    for i in range(n):
        attrs = who(i)
        variant = serve(i, attrs) if serve is not None else rng.choice(["control", "candidate"])
        out.append(
            PredictionEvent(
                request_id=f"q{i}",
                flag="ranker",
                variant=variant,
                ts=1000.0 + i,
                prediction=1,
                subject=f"user-{i}",
                attributes=attrs,
            )
        )
        out.append(OutcomeEvent(request_id=f"q{i}", ts=1000.5 + i, label=int(rng.random() < 0.9)))
    return out


def run(engine: Engine, evs: list[Any], batch: int = 250) -> list[FlagChangeEvent]:
    got = []
    for s in range(0, len(evs), batch):
        got += [
            e.event
            for e in engine.process(evs[s : s + batch]).outputs
            if isinstance(e.event, FlagChangeEvent)
        ]
    return got


@pytest.mark.slow  # a 60,000-event simulated rollout
def test_steps_run_segment_by_segment() -> None:
    engine = Engine(parse_config(CONFIG, "r.yaml"))
    first = engine.state("ranker").rollout_gate
    assert first is not None
    assert first.name == "internal"
    assert first.done == []
    changes = run(engine, events(60_000))
    path = [
        (c.rollout_gate.name if c.rollout_gate else None, c.variants["candidate"].weight)
        for c in changes
    ]
    # internal: 10 -> 50 -> (done at 100) nz at 10 -> 50 -> everyone at 10 -> 50 -> 100.
    assert path == [
        ("internal", 50),
        ("nz", 10),
        ("nz", 50),
        ("everyone", 10),
        ("everyone", 50),
        ("everyone", 100),
    ]
    assert "segment internal done at 100%, segment nz starts" in (changes[1].cause.reason or "")
    assert changes[1].cause.evidence["segment"] == "nz"
    # Decisions do not depend on batching or restarts.
    again = Engine(parse_config(CONFIG, "r.yaml"))
    evs = events(60_000)
    got: list[FlagChangeEvent] = []
    for s in range(0, len(evs), 777):
        got += run(again, evs[s : s + 777], batch=777)
        again = Engine.from_state(
            parse_config(CONFIG, "r.yaml"), orjson.loads(orjson.dumps(again.to_state()))
        )
    assert [c.model_dump() for c in got] == [c.model_dump() for c in changes]


def test_only_the_current_segments_outcomes_count() -> None:
    engine = Engine(parse_config(CONFIG, "r.yaml"))
    # Plenty of evidence, none of it from internal users: the rollout stays where it is.
    changes = run(engine, events(20_000, who=lambda i: {"region": "nz" if i % 2 else "us"}))
    assert changes == []
    summary = engine.snapshot()["flags"]["ranker"]["rollout"]  # type: ignore[index,call-overload]
    assert summary["segment"] == "internal"
    assert summary["samples"] == {"candidate": 0, "control": 0}


def test_config_checks() -> None:
    bad = CONFIG.replace("- {name: everyone}", "- {name: nz}").replace(
        "{name: nz, when: {in: [{var: region}, [nz]]}}", "{name: mid}"
    )
    bad = bad.replace("ends_with: [{var: email}", "ends_wit: [{var: email}")
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "r.yaml")
    assert err.value.problems == [
        "r.yaml:14: flags.ranker.rollout.segments[0].when.ends_wit: unknown operator 'ends_wit'; "
        "known: !, !!, !=, !==, %, *, +, -, /, <, <=, ==, ===, >, >=, ?:, all, and, cat, "
        "ends_with, filter, fractional, if, in, map, max, merge, min, missing, missing_some, none, "
        "or, reduce, sem_ver, some, starts_with, substr, var",
        "r.yaml:15: flags.ranker.rollout.segments[1].when: only the last segment may omit `when` "
        "(everyone)",
    ]


def served_contexts() -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(9)
    out = []
    for i in range(3000):
        attrs: dict[str, Any] = {}
        r = rng.random()
        if r < 0.3:
            attrs["email"] = f"x{i}@example.com" if rng.random() < 0.7 else f"x{i}@other.org"
        if rng.random() < 0.8:
            attrs["region"] = rng.choice(["nz", "us", "jp", 5, ""])
        out.append((f"key-{i}", attrs))
    return out


def test_the_gate_is_served_alike_by_the_client_and_flagd(tmp_path: Path) -> None:
    engine = Engine(parse_config(CONFIG, "r.yaml"))
    states = [engine.state("ranker")]
    states += run(engine, events(60_000))
    # At the first nz step: internal users get the candidate, nz the split, others control.
    nz = next(s for s in states if s.rollout_gate and s.rollout_gate.name == "nz")
    file = FlagdFile(tmp_path / "flags.json")
    client = DriftswitchClient("127.0.0.1:1", follow_flags=False, record_events=False)
    logging.getLogger("openfeature").setLevel(logging.CRITICAL)
    try:
        for state in (states[0], nz, states[-1]):
            file.update(state)
            client.apply(state)
            domain = f"gate-{state.version}"
            api.set_provider(
                FlagdProvider(
                    resolver_type=ResolverType.FILE, offline_flag_source_path=str(file.path)
                ),
                domain=domain,
            )
            flagd = api.get_client(domain)
            deadline = time.monotonic() + 30
            while flagd.get_provider_status() is not ProviderStatus.READY:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            mismatches = 0
            for key, attrs in served_contexts():
                theirs = flagd.get_string_details(
                    "ranker", "fallback", EvaluationContext(targeting_key=key, attributes=attrs)
                ).variant
                mismatches += theirs != client.variant("ranker", key, attrs)
            assert mismatches == 0, state.version
        internal = {"email": "a@example.com"}
        assert {client.variant("ranker", f"k{i}", internal) for i in range(200)} == {"candidate"}
        client.apply(nz.model_copy(update={"version": 10_000}))
        got = [client.variant("ranker", f"k{i}", {"region": "nz"}) for i in range(400)]
        assert 0.03 < got.count("candidate") / 400 < 0.2  # the first step: 10 %
        assert {client.variant("ranker", f"k{i}", {"region": "us"}) for i in range(200)} == {
            "control"
        }
    finally:
        api.clear_providers()
        client.close(timeout_s=1.0)


def test_a_reload_keeps_the_segment_and_takes_new_conditions() -> None:
    engine = Engine(parse_config(CONFIG, "r.yaml"))
    evs = events(60_000)
    for start in range(0, len(evs), 500):  # up to the first nz step
        run(engine, evs[start : start + 500])
        if engine.state("ranker").rollout_gate.name == "nz":  # type: ignore[union-attr]
            break
    gate = engine.state("ranker").rollout_gate
    assert gate is not None
    assert gate.name == "nz"
    assert engine.reconfigure(parse_config(CONFIG, "r.yaml"), ts=50_000.0) == []
    wider = CONFIG.replace("[{var: region}, [nz]]", "[{var: region}, [nz, au]]")
    [change] = engine.reconfigure(parse_config(wider, "r.yaml"), ts=50_000.0)
    assert change.rollout_gate is not None
    assert change.rollout_gate.segment == 1
    assert change.rollout_gate.current == {"in": [{"var": "region"}, ["nz", "au"]]}
    assert "rollout segments updated" in (change.cause.reason or "")
