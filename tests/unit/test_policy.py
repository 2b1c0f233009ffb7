"""Policy: each action, cooldowns in event time, kills stick, no action without data, versions."""

from __future__ import annotations

from typing import Any

import pytest

from driftswitch.streams.config.model import Config, parse_config
from driftswitch.streams.contract.events import Action, AlertEvent, CauseKind, FlagChangeEvent
from driftswitch.streams.pipeline.monitor import Decision
from driftswitch.streams.pipeline.policy import Cooldowns, apply
from driftswitch.streams.pipeline.transitions import initial_state

CONFIG = """
flags:
  ranker:
    default: control
    variants:
      control:   {weight: 70, value: v1}
      candidate: {weight: 30, value: v2}
      shadow:    {weight: 0, value: v3, shadow: true}
    guardrails:
      - {name: g-kill, variant: candidate, metric: error_rate, action: kill, cooldown: 60,
         detector: {kind: page_hinkley}}
      - {name: g-shift, variant: candidate, metric: error_rate, action: shift, shift_by: 20,
         cooldown: 60, detector: {kind: page_hinkley}}
      - {name: g-hold, variant: candidate, metric: error_rate, action: hold,
         detector: {kind: page_hinkley}}
      - {name: g-warn, variant: candidate, metric: error_rate, action: warn, cooldown: 10m,
         detector: {kind: page_hinkley}}
      - {name: g-shadow, variant: shadow, metric: error_rate, action: kill,
         detector: {kind: page_hinkley}}
"""


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(CONFIG)


def _decision(config: Config, name: str, ts: float = 1000.0, samples: int = 500) -> Decision:
    g = next(g for g in config.flags["ranker"].guardrails if g.name == name)
    return Decision(
        flag="ranker",
        guardrail=g,
        index=7,
        ts=ts,
        detector="page_hinkley",
        statistic=12.5,
        threshold=10.0,
        samples={g.variant: samples},
        window={"first_ts": 900.0, "last_ts": ts, "events": samples},
        interval=None,
        evidence={"detector": "page_hinkley"},
    )


def _weights(state: FlagChangeEvent) -> dict[str, Any]:
    return {n: (v.weight, v.killed) for n, v in state.variants.items()}


def test_initial_state_comes_from_the_config(config: Config) -> None:
    state = initial_state("ranker", config.flags["ranker"], ts=5.0)
    assert state.version == 1
    assert (state.cause.kind, state.cause.action) == (CauseKind.CONFIG, Action.INIT)
    assert _weights(state) == {
        "control": (70, False),
        "candidate": (30, False),
        "shadow": (0, False),
    }
    assert (state.default_variant, state.ts, state.actor) == ("control", 5.0, "driftswitch")


def test_kill_moves_the_weight_to_the_default_with_the_evidence(config: Config) -> None:
    state = initial_state("ranker", config.flags["ranker"])
    out = apply(state, config.flags["ranker"], _decision(config, "g-kill"), Cooldowns())
    assert isinstance(out, FlagChangeEvent)
    assert out.version == 2
    assert _weights(out) == {"control": (100, False), "candidate": (0, True), "shadow": (0, False)}
    c = out.cause
    assert (c.kind, c.action, c.guardrail, c.variant, c.detector) == (
        CauseKind.DETECTOR,
        Action.KILL,
        "g-kill",
        "candidate",
        "page_hinkley",
    )
    assert (c.statistic, c.threshold, c.samples) == (12.5, 10.0, {"candidate": 500})
    assert c.window == {"first_ts": 900.0, "last_ts": 1000.0, "events": 500}
    assert (out.ts, out.actor) == (1000.0, "driftswitch")


def test_a_killed_variant_stays_killed(config: Config) -> None:
    flag = config.flags["ranker"]
    killed = apply(initial_state("ranker", flag), flag, _decision(config, "g-kill"), Cooldowns())
    assert isinstance(killed, FlagChangeEvent)
    # Neither a later kill nor a shift touches it, whatever the cooldowns say.
    later = _decision(config, "g-kill", ts=1e6)
    assert apply(killed, flag, later, Cooldowns()) is None
    assert apply(killed, flag, _decision(config, "g-shift", ts=1e6), Cooldowns()) is None


def test_shift_moves_shift_by_and_respects_the_cooldown_in_event_time(config: Config) -> None:
    flag = config.flags["ranker"]
    cooldowns = Cooldowns()
    first = apply(initial_state("ranker", flag), flag, _decision(config, "g-shift"), cooldowns)
    assert isinstance(first, FlagChangeEvent)
    assert _weights(first)["candidate"] == (10, False)
    assert _weights(first)["control"] == (90, False)
    assert first.cause.action is Action.SHIFT
    # 59 s of event time later: still cooling down.
    assert apply(first, flag, _decision(config, "g-shift", ts=1059.0), cooldowns) is None
    second = apply(first, flag, _decision(config, "g-shift", ts=1060.0), cooldowns)
    assert isinstance(second, FlagChangeEvent)
    assert second.version == 3
    assert _weights(second)["candidate"] == (0, False)  # only 10 left to move
    # Nothing left to shift: no change, no version.
    assert apply(second, flag, _decision(config, "g-shift", ts=2000.0), cooldowns) is None


def test_hold_pauses_once(config: Config) -> None:
    flag = config.flags["ranker"]
    held = apply(initial_state("ranker", flag), flag, _decision(config, "g-hold"), Cooldowns())
    assert isinstance(held, FlagChangeEvent)
    assert held.paused
    assert _weights(held) == _weights(initial_state("ranker", flag))
    assert apply(held, flag, _decision(config, "g-hold", ts=1e6), Cooldowns()) is None


def test_warn_is_an_alert_without_a_state_change(config: Config) -> None:
    flag = config.flags["ranker"]
    state = initial_state("ranker", flag)
    cooldowns = Cooldowns()
    alert = apply(state, flag, _decision(config, "g-warn"), cooldowns)
    assert isinstance(alert, AlertEvent)
    assert (alert.flag, alert.guardrail, alert.variant, alert.flag_version) == (
        "ranker",
        "g-warn",
        "candidate",
        1,
    )
    assert alert.cause.action is Action.WARN
    assert apply(state, flag, _decision(config, "g-warn", ts=1599.0), cooldowns) is None
    assert isinstance(
        apply(state, flag, _decision(config, "g-warn", ts=1600.0), cooldowns), AlertEvent
    )


def test_no_samples_never_flips(config: Config) -> None:
    flag = config.flags["ranker"]
    state = initial_state("ranker", flag)
    assert apply(state, flag, _decision(config, "g-kill", samples=0), Cooldowns()) is None


def test_killing_a_shadow_marks_it_and_moves_no_traffic(config: Config) -> None:
    flag = config.flags["ranker"]
    out = apply(initial_state("ranker", flag), flag, _decision(config, "g-shadow"), Cooldowns())
    assert isinstance(out, FlagChangeEvent)
    assert _weights(out) == {"control": (70, False), "candidate": (30, False), "shadow": (0, True)}
    assert out.served_weights() == {"control": 70, "candidate": 30, "shadow": 0}


def test_versions_are_monotonic_across_actions(config: Config) -> None:
    flag = config.flags["ranker"]
    state = initial_state("ranker", flag)
    cooldowns = Cooldowns()
    versions = [state.version]
    for i, name in enumerate(["g-shift", "g-hold", "g-warn", "g-kill", "g-shadow"]):
        out = apply(state, flag, _decision(config, name, ts=1000.0 + i), cooldowns)
        if isinstance(out, FlagChangeEvent):
            state = out
            versions.append(out.version)
    assert versions == [1, 2, 3, 4, 5]


def test_a_shadow_promoted_into_traffic_is_killed_like_any_variant(config: Config) -> None:
    """A rollout can promote a shadow to serve traffic: once it has weight, its kill moves that
    weight to the default (a shadow that serves no one moves nothing: the test above)."""
    flag = config.flags["ranker"]
    state = initial_state("ranker", flag)
    variants = dict(state.variants)
    variants["shadow"] = variants["shadow"].model_copy(update={"weight": 10})
    variants["control"] = variants["control"].model_copy(update={"weight": 60})
    promoted = state.model_copy(update={"variants": variants})
    out = apply(promoted, flag, _decision(config, "g-shadow"), Cooldowns())
    assert isinstance(out, FlagChangeEvent)
    assert _weights(out) == {"control": (70, False), "candidate": (30, False), "shadow": (0, True)}
    assert out.cause.reason is not None
    assert out.cause.reason.endswith("killed, weight 10 to control")
