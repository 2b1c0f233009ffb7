"""Structured logs: JSON lines with decision context, text with key=value context."""

from __future__ import annotations

import io
import json
import logging

import pytest

from driftswitch.streams.contract.events import (
    Action,
    AlertEvent,
    Cause,
    CauseKind,
    FlagChangeEvent,
    VariantState,
)
from driftswitch.streams.service.logs import (
    configure_logging,
    decision_context,
    log_format_from_env,
)

KILL = FlagChangeEvent(
    flag="ranker",
    version=2,
    variants={
        "control": VariantState(weight=100, value="v1"),
        "candidate": VariantState(weight=0, killed=True, value="v2"),
    },
    default_variant="control",
    cause=Cause(
        kind=CauseKind.DETECTOR,
        action=Action.KILL,
        guardrail="candidate-accuracy",
        variant="candidate",
    ),
    ts=1767225600.0,
    actor="driftswitch",
)
WARN = AlertEvent(
    flag="ranker",
    guardrail="latency",
    variant="candidate",
    cause=Cause(kind=CauseKind.DETECTOR, action=Action.WARN, guardrail="latency"),
    ts=1767225600.0,
    flag_version=2,
)


@pytest.fixture
def restore_root() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_decision_context(restore_root: object) -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream)
    log = logging.getLogger("driftswitch.streams.service.worker")
    log.info("published %s", "ranker v2", extra=decision_context(KILL))
    log.warning("alert", extra=decision_context(WARN))
    log.debug("not shown")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"topic": "t", "partition": 1, "offset": 7})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert first["level"] == "info"
    assert first["logger"] == "driftswitch.streams.service.worker"
    assert first["message"] == "published ranker v2"
    assert first["ts"].endswith("+00:00")
    assert {k: first[k] for k in ("flag", "variant", "guardrail", "action", "version")} == {
        "flag": "ranker",
        "variant": "candidate",
        "guardrail": "candidate-accuracy",
        "action": "kill",
        "version": 2,
    }
    assert (lines[1]["variant"], lines[1]["guardrail"], lines[1]["action"]) == (
        "candidate",
        "latency",
        "warn",
    )
    assert (lines[2]["topic"], lines[2]["partition"], lines[2]["offset"]) == ("t", 1, 7)
    assert "ValueError: boom" in lines[2]["exc_info"]


def test_text_lines_append_context_and_reconfiguring_does_not_duplicate(
    restore_root: object,
) -> None:
    stream = io.StringIO()
    configure_logging("text", logging.INFO, stream)
    configure_logging("text", logging.INFO, stream)
    logging.getLogger("driftswitch.x").info("killed", extra=decision_context(KILL))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        "INFO driftswitch.x: killed [flag=ranker variant=candidate "
        "guardrail=candidate-accuracy action=kill version=2]"
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "text", id="unset"),
        pytest.param({"DRIFTSWITCH_LOG_FORMAT": "json"}, "json", id="json"),
        pytest.param({"DRIFTSWITCH_LOG_FORMAT": " JSON "}, "json", id="case-and-space"),
        pytest.param({"DRIFTSWITCH_LOG_FORMAT": "text"}, "text", id="text"),
    ],
)
def test_log_format_from_env(env: dict[str, str], expected: str) -> None:
    assert log_format_from_env(env) == expected


def test_bad_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of text, json"):
        log_format_from_env({"DRIFTSWITCH_LOG_FORMAT": "xml"})
