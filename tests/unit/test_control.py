"""Manual commands, their flag changes, config reload and admin authentication (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from driftswitch.streams.config.model import Config, parse_config
from driftswitch.streams.contract.commands import Command, CommandError, decode_command
from driftswitch.streams.contract.errors import EventError
from driftswitch.streams.contract.events import (
    Action,
    CauseKind,
    FlagChangeEvent,
    OutcomeEvent,
    PredictionEvent,
)
from driftswitch.streams.pipeline.control import reconcile, transition, validate
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.service.auth import ADMIN_TOKEN_ENV, AdminAuth

CONFIG = """\
flags:
  ranker:
    default: control
    variants:
      control: {weight: 70, value: v1}
      candidate: {weight: 30, value: v2}
      shadow: {weight: 0, value: v3, shadow: true}
    guardrails:
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}
        min_samples: 10
        action: kill
"""


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG)


def cmd(**fields: Any) -> Command:
    return Command(flag="ranker", **fields)


def weights(event: FlagChangeEvent | None) -> dict[str, int]:
    assert event is not None
    return {n: v.weight for n, v in event.variants.items()}


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action": "kill"}, "kill needs `variant`"),
        ({"action": "pin"}, "pin needs `variant`"),
        ({"action": "pause", "variant": "candidate"}, "pause takes no `variant`"),
        ({"action": "set_weights"}, "`weights` is required for set_weights"),
        ({"action": "resume", "weights": {"control": 100}}, "`weights` is required"),
        ({"action": "kill", "variant": "candidate", "weight": 5}, "`weight` is only for restore"),
        ({"action": "explode"}, "Input should be 'kill'"),
        ({"action": "pause", "ts": 1767225600000.0}, "milliseconds"),
        ({"action": "pause", "actor": ""}, "at least 1 character"),
        ({"action": "pause", "token": "x"}, "Extra inputs are not permitted"),
    ],
    ids=[
        "kill-no-variant",
        "pin-no-variant",
        "pause-variant",
        "set-weights-no-weights",
        "weights-elsewhere",
        "weight-on-kill",
        "unknown-action",
        "milliseconds",
        "empty-actor",
        "unknown-field",
    ],
)
def test_command_shape_is_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        cmd(**fields)


def test_decode_command_reasons() -> None:
    ok = decode_command(b'{"action": "kill", "flag": "ranker", "variant": "candidate"}')
    assert (ok.action, ok.actor, ok.id, ok.ts) == ("kill", "admin", None, None)
    with pytest.raises(EventError) as err:
        decode_command(b"{nope")
    assert err.value.reason == "malformed_json"
    with pytest.raises(EventError) as err:
        decode_command(b'{"action": "kill", "flag": "ranker"}')
    assert err.value.reason == "schema"
    assert "kill needs `variant`" in err.value.detail
    with pytest.raises(EventError) as err:
        decode_command(b" " * 70_000)
    assert err.value.reason == "oversize"


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        (Command(flag="search", action="pause"), "unknown_flag", "known: ranker"),
        (cmd(action="kill", variant="nope"), "unknown_variant", "known: control, candidate"),
        (cmd(action="set_weights", weights={"control": 50}), "invalid_command", "got 50"),
        (
            cmd(action="set_weights", weights={"control": 90, "shadow": 10}),
            "invalid_command",
            "shadow variant",
        ),
        (cmd(action="pin", variant="shadow"), "invalid_command", "cannot be pinned"),
        (cmd(action="set_weights", weights={"x": 100}), "unknown_variant", "'x'"),
    ],
    ids=["unknown-flag", "unknown-variant", "sum", "shadow-weight", "pin-shadow", "weights-name"],
)
def test_validate_against_config(config: Config, command: Command, code: str, message: str) -> None:
    with pytest.raises(CommandError, match=message) as err:
        validate(command, config)
    assert err.value.code == code


# --------------------------------------------------------------------------- transitions


def test_kill_moves_weight_to_default_with_actor_reason_and_id(config: Config) -> None:
    engine = Engine(config)
    change = engine.apply_command(
        cmd(action="kill", variant="candidate", reason="bad", actor="alice", id="c1"), 5.0
    )
    assert change is not None
    assert change.version == 2
    assert weights(change) == {"control": 100, "candidate": 0, "shadow": 0}
    assert change.variants["candidate"].killed
    assert (change.actor, change.ts) == ("alice", 5.0)
    assert change.cause.kind is CauseKind.MANUAL
    assert change.cause.action is Action.KILL
    assert change.cause.reason == "bad"
    assert change.cause.variant == "candidate"
    assert change.cause.evidence == {
        "summary": "candidate killed, weight 30 to control",
        "command_id": "c1",
    }
    assert engine.state("ranker") == change
    assert engine.apply_command(cmd(action="kill", variant="candidate"), 6.0) is None
    assert engine.state("ranker").version == 2


def test_kill_of_the_default_is_refused(config: Config) -> None:
    with pytest.raises(CommandError, match="traffic falls back to it") as err:
        Engine(config).apply_command(cmd(action="kill", variant="control"), 1.0)
    assert err.value.code == "invalid_command"


def test_restore_gives_back_the_configured_or_an_explicit_weight(config: Config) -> None:
    engine = Engine(config)
    assert engine.apply_command(cmd(action="restore", variant="candidate"), 1.0) is None
    engine.apply_command(cmd(action="kill", variant="candidate"), 1.0)
    restored = engine.apply_command(cmd(action="restore", variant="candidate"), 2.0)
    assert weights(restored) == {"control": 70, "candidate": 30, "shadow": 0}
    assert restored is not None
    assert not restored.variants["candidate"].killed
    assert restored.cause.action is Action.RESTORE
    engine.apply_command(cmd(action="kill", variant="candidate"), 3.0)
    again = engine.apply_command(cmd(action="restore", variant="candidate", weight=5), 4.0)
    assert weights(again) == {"control": 95, "candidate": 5, "shadow": 0}


def test_restore_cannot_take_more_than_the_default_has(config: Config) -> None:
    killed = Engine(config).apply_command(cmd(action="kill", variant="candidate"), 1.0)
    assert killed is not None
    # A state where the default serves only 10 (the rest went to a third variant, say).
    control = killed.variants["control"].model_copy(update={"weight": 10})
    state = killed.model_copy(update={"variants": {**killed.variants, "control": control}})
    restore = cmd(action="restore", variant="candidate", weight=30)
    with pytest.raises(CommandError, match="serves only 10"):
        transition(state, config.flags["ranker"], restore, 2.0)


def test_a_guardrail_never_revives_a_manually_killed_variant(config: Config) -> None:
    engine = Engine(config)
    engine.apply_command(cmd(action="kill", variant="candidate"), 1.0)
    events: list[PredictionEvent | OutcomeEvent] = []
    for i in range(200):
        events.append(
            PredictionEvent(
                request_id=f"r{i}", flag="ranker", variant="candidate", ts=2.0 + i, prediction=1
            )
        )
        events.append(OutcomeEvent(request_id=f"r{i}", ts=2.5 + i, label=0))
    result = engine.process(events)
    assert result.outputs == []  # the kill guardrail on a killed variant changes nothing
    assert engine.state("ranker").variants["candidate"].killed
    assert engine.state("ranker").version == 2


def test_set_weights(config: Config) -> None:
    engine = Engine(config)
    change = engine.apply_command(
        cmd(action="set_weights", weights={"control": 40, "candidate": 60}), 1.0
    )
    assert weights(change) == {"control": 40, "candidate": 60, "shadow": 0}
    assert change is not None
    assert change.cause.action is Action.SET_WEIGHTS
    same = cmd(action="set_weights", weights={"control": 40, "candidate": 60})
    assert engine.apply_command(same, 2.0) is None
    engine.apply_command(cmd(action="kill", variant="candidate"), 3.0)
    with pytest.raises(CommandError, match="restore it before"):
        engine.apply_command(same, 4.0)
    # Unnamed variants get 0: everything to control.
    only = engine.apply_command(cmd(action="restore", variant="candidate", weight=0), 5.0)
    assert weights(only) == {"control": 100, "candidate": 0, "shadow": 0}


def test_pause_and_resume(config: Config) -> None:
    engine = Engine(config)
    assert engine.apply_command(cmd(action="resume"), 1.0) is None
    paused = engine.apply_command(cmd(action="pause", reason="freeze"), 1.0)
    assert paused is not None
    assert paused.paused
    assert weights(paused) == {"control": 70, "candidate": 30, "shadow": 0}
    assert engine.apply_command(cmd(action="pause"), 2.0) is None
    resumed = engine.apply_command(cmd(action="resume"), 3.0)
    assert resumed is not None
    assert not resumed.paused
    assert resumed.version == 3


def test_pin_and_unpin(config: Config) -> None:
    engine = Engine(config)
    assert engine.apply_command(cmd(action="unpin"), 1.0) is None
    pinned = engine.apply_command(cmd(action="pin", variant="candidate"), 1.0)
    assert weights(pinned) == {"control": 0, "candidate": 100, "shadow": 0}
    assert pinned is not None
    assert pinned.pinned is not None
    assert pinned.pinned.variant == "candidate"
    assert engine.apply_command(cmd(action="pin", variant="candidate"), 2.0) is None
    # Re-pinning to another variant keeps the weights from before the first pin.
    other = engine.apply_command(cmd(action="pin", variant="control"), 3.0)
    assert weights(other) == {"control": 100, "candidate": 0, "shadow": 0}
    with pytest.raises(CommandError, match="unpin first") as err:
        engine.apply_command(cmd(action="set_weights", weights={"control": 100}), 4.0)
    assert err.value.code == "conflict"
    unpinned = engine.apply_command(cmd(action="unpin"), 5.0)
    assert weights(unpinned) == {"control": 70, "candidate": 30, "shadow": 0}
    assert unpinned is not None
    assert unpinned.pinned is None
    assert unpinned.cause.action is Action.UNPIN


def test_kill_during_a_pin_keeps_the_variant_out_after_unpin(config: Config) -> None:
    engine = Engine(config)
    engine.apply_command(cmd(action="pin", variant="candidate"), 1.0)
    killed = engine.apply_command(cmd(action="kill", variant="candidate"), 2.0)
    assert weights(killed) == {"control": 100, "candidate": 0, "shadow": 0}
    with pytest.raises(CommandError, match="unpin first"):
        engine.apply_command(cmd(action="restore", variant="candidate"), 3.0)
    with pytest.raises(CommandError, match="restore it first"):
        engine.apply_command(cmd(action="pin", variant="candidate"), 3.0)
    unpinned = engine.apply_command(cmd(action="unpin"), 4.0)
    assert weights(unpinned) == {"control": 100, "candidate": 0, "shadow": 0}
    assert unpinned is not None
    assert unpinned.variants["candidate"].killed


def test_pin_survives_a_restart_through_engine_state(config: Config) -> None:
    engine = Engine(config)
    engine.apply_command(cmd(action="pin", variant="candidate"), 1.0)
    restored = Engine.from_state(config, engine.to_state())
    unpinned = restored.apply_command(cmd(action="unpin"), 2.0)
    assert weights(unpinned) == {"control": 70, "candidate": 30, "shadow": 0}


# --------------------------------------------------------------------------- config reload


def state_of(engine: Engine) -> Any:
    return engine.to_state()


def status(engine: Engine) -> Any:
    snapshot: Any = engine.snapshot()
    return snapshot["flags"]["ranker"]


def labelled(n: int, start: int = 0) -> list[PredictionEvent | OutcomeEvent]:
    out: list[PredictionEvent | OutcomeEvent] = []
    for i in range(start, start + n):
        variant = "candidate" if i % 2 else "control"
        out.append(
            PredictionEvent(
                request_id=f"r{i}", flag="ranker", variant=variant, ts=float(i), prediction=1
            )
        )
        out.append(OutcomeEvent(request_id=f"r{i}", ts=i + 0.5, label=1 if i % 3 else 0))
    return out


def test_reconfigure_keeps_versions_statistics_and_unchanged_detectors(config: Config) -> None:
    engine = Engine(config)
    engine.apply_command(cmd(action="set_weights", weights={"control": 50, "candidate": 50}), 1.0)
    engine.process(labelled(60))
    before = state_of(engine)["flags"]["ranker"]
    new = parse_config(
        CONFIG.replace("weight: 70", "weight: 80").replace("weight: 30", "weight: 20")
        + "  search:\n    default: a\n    variants:\n      a: {weight: 100, value: x}\n"
    )
    changes = engine.reconfigure(new, ts=100.0)
    # The live 50/50 stays (the file's 80/20 does not override it): only the new flag changes.
    assert [(c.flag, c.version, c.cause.action) for c in changes] == [("search", 1, Action.INIT)]
    assert changes[0].ts == 100.0
    after = state_of(engine)["flags"]["ranker"]
    assert after == before
    assert engine.state("ranker").version == 2
    assert weights(engine.state("ranker")) == {"control": 50, "candidate": 50, "shadow": 0}
    assert engine.config is new
    # The engine goes on from there: same result as one that never reloaded.
    twin = Engine.from_state(new, engine.to_state())
    engine.process(labelled(40, start=60))
    twin.process(labelled(40, start=60))
    assert engine.to_state() == twin.to_state()


def test_reconfigure_restarts_a_changed_guardrail_and_drops_removed_flags(config: Config) -> None:
    engine = Engine(config)
    engine.process(labelled(60))
    guardrail = status(engine)["guardrails"]["candidate-accuracy"]
    assert guardrail["samples"] == {"candidate": 30}
    two = parse_config(
        CONFIG.replace("min_samples: 10", "min_samples: 20")
        + "  search:\n    default: a\n    variants:\n      a: {weight: 100, value: x}\n"
    )
    engine.reconfigure(two)
    guardrail = status(engine)["guardrails"]["candidate-accuracy"]
    assert guardrail["samples"] == {"candidate": 0}
    assert guardrail["min_samples"] == 20
    assert status(engine)["variants"]["candidate"]["labelled"] == 30
    engine.reconfigure(parse_config(CONFIG))
    assert [s.flag for s in engine.states()] == ["ranker"]


def test_reconcile_variants_added_removed_and_pins(config: Config) -> None:
    flag = config.flags["ranker"]
    engine = Engine(config)
    state = engine.apply_command(
        cmd(action="set_weights", weights={"control": 60, "candidate": 40}), 1.0
    )
    assert state is not None
    assert reconcile(state, flag, 2.0) is None  # nothing the live state cannot keep
    three = parse_config(
        CONFIG.replace("candidate: {weight: 30, value: v2}", "c3: {weight: 30, value: v9}")
        .replace("variant: candidate", "variant: c3")
    ).flags["ranker"]  # fmt: skip
    out = reconcile(state, three, 2.0)
    assert out is not None
    assert weights(out) == {"control": 100, "c3": 0, "shadow": 0}
    assert (out.version, out.cause.kind, out.cause.action) == (
        3,
        CauseKind.CONFIG,
        Action.RECONFIGURE,
    )
    assert out.cause.reason == "config reloaded: variants added c3 (weight 0) removed candidate"
    pinned = Engine(config).apply_command(cmd(action="pin", variant="candidate"), 1.0)
    assert pinned is not None
    unpinned = reconcile(pinned, three, 2.0)
    assert unpinned is not None
    assert unpinned.pinned is None
    assert weights(unpinned) == {"control": 100, "c3": 0, "shadow": 0}


# --------------------------------------------------------------------------- authentication


def test_auth_without_a_token_is_disabled_never_open() -> None:
    auth = AdminAuth.from_env({ADMIN_TOKEN_ENV: ""})
    assert not auth.enabled
    for header in (None, "Bearer ", "Bearer anything"):
        failure = auth.check(header)
        assert failure is not None
        assert (failure.status, failure.code) == (503, "admin_disabled")


@pytest.mark.parametrize(
    ("header", "status", "code"),
    [
        (None, 401, "unauthenticated"),
        ("", 401, "unauthenticated"),
        ("Bearer", 401, "unauthenticated"),
        ("Basic dG9rZW4=", 401, "unauthenticated"),
        ("Bearer wrong", 403, "forbidden"),
        ("Bearer t0ken-xyz ", None, None),
        ("bearer t0ken-xyz", None, None),
        ("Bearer t0ken-xy", 403, "forbidden"),
        ("Bearer t0ken-xyzz", 403, "forbidden"),
    ],
    ids=["none", "empty", "no-token", "basic", "wrong", "ok", "ok-lowercase", "prefix", "longer"],
)
def test_auth_checks_the_bearer_token(
    header: str | None, status: int | None, code: str | None
) -> None:
    auth = AdminAuth.from_env({ADMIN_TOKEN_ENV: "t0ken-xyz"})
    failure = auth.check(header)
    if status is None:
        assert failure is None
    else:
        assert failure is not None
        assert (failure.status, failure.code) == (status, code)


def test_the_token_never_shows_in_reprs() -> None:
    auth = AdminAuth(SecretStr("t0ken-xyz"))
    assert "t0ken-xyz" not in repr(auth)
    assert "t0ken-xyz" not in str(auth)
    failure = auth.check("Bearer wrong")
    assert "t0ken-xyz" not in repr(failure)
