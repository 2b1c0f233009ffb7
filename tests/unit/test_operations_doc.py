"""The README's operations section stays true: its receiver example works, its tables match."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from driftswitch.streams.config.model import HookFormat
from driftswitch.streams.contract.events import (
    Action,
    Cause,
    CauseKind,
    FlagChangeEvent,
    VariantState,
)
from driftswitch.streams.service.hooks import Hook, render
from driftswitch.streams.service.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "README.md").read_text()


def receiver_example() -> Callable[..., bool]:
    marker = DOC.index("<!-- receiver-example")
    block = re.search(r"```python\n(.*?)```", DOC[marker:], re.S)
    assert block is not None
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    verify: Callable[..., bool] = namespace["verify"]
    return verify


def test_receiver_example_verifies_driftswitch_requests() -> None:
    verify = receiver_example()
    hook = Hook(
        name="audit",
        format=HookFormat.GENERIC,
        url=SecretStr("https://example.com/hook"),
        secret=SecretStr("k3y"),
        flag=None,
        timeout=1.0,
        max_attempts=1,
        backoff=1.0,
        max_backoff=1.0,
    )
    event = FlagChangeEvent(
        flag="ranker",
        version=2,
        variants={"control": VariantState(weight=100, value=1)},
        default_variant="control",
        cause=Cause(kind=CauseKind.MANUAL, action=Action.SET_WEIGHTS),
        ts=1767225600.0,
        actor="alice",
    )
    request = render(hook, event, now=1767225600.0)
    assert request is not None
    assert verify(b"k3y", request.headers, request.body, now=1767225660.0)
    assert not verify(b"k3y", request.headers, request.body + b" ", now=1767225660.0)
    assert not verify(b"other", request.headers, request.body, now=1767225660.0)
    assert not verify(b"k3y", request.headers, request.body, now=1767225600.0 + 301)
    assert not verify(b"k3y", {}, request.body, now=1767225600.0)


def test_metrics_table_matches_the_code() -> None:
    rows = re.findall(r"^\| `(driftswitch_[a-z_]+)` \| (\w+) \| ([^|]+) \| ([^|]+) \|$", DOC, re.M)
    documented = {
        name: (kind, tuple(re.findall(r"`(\w+)`", labels)), meaning.strip())
        for name, kind, labels, meaning in rows
    }
    assert documented == {m.name: (m.type, m.labels, m.help) for m in METRICS}


def test_alert_table_lists_every_shipped_rule() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    shipped = {r["alert"]: r["labels"]["severity"] for g in rules["groups"] for r in g["rules"]}
    documented = dict(re.findall(r"^\| `(Driftswitch\w+)` \| [^|]+ \| (\w+) \|$", DOC, re.M))
    assert documented == shipped
