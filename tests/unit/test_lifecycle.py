"""Flag lifecycle: the config fields, ``findings`` for each case, validate's owner warning, and
the ``driftswitch_flag_expired`` / ``driftswitch_flag_stale`` metrics."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from driftswitch.streams.config.model import config_warnings, load_config, parse_config
from driftswitch.streams.contract.errors import ConfigError
from driftswitch.streams.contract.events import (
    Action,
    Cause,
    CauseKind,
    FlagChangeEvent,
    VariantState,
)
from driftswitch.streams.pipeline.lifecycle import findings
from driftswitch.streams.service.metrics import Metrics
from driftswitch.streams.tools.cli import main

DAY = 86400.0
NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC).timestamp()
CONFIG = """\
flags:
  release:
    owner: web
    temporary: true
    expires: 2026-05-31
    default: old
    variants:
      old: {weight: 50, value: old}
      new: {weight: 50, value: new}
  fresh:
    owner: web
    temporary: true
    expires: 2026-06-01
    default: old
    variants:
      old: {weight: 50, value: old}
      new: {weight: 50, value: new}
  quiet:
    description: nobody calls it
    tags: [search]
    default: a
    variants:
      a: {weight: 100, value: a}
  broken:
    owner: ml
    default: a
    variants:
      a: {weight: 80, value: a}
      b: {weight: 20, value: b}
"""


def change(
    flag: str,
    version: int,
    ts: float,
    weights: dict[str, int],
    killed: frozenset[str] = frozenset(),
) -> FlagChangeEvent:
    return FlagChangeEvent(
        flag=flag,
        version=version,
        variants={
            v: VariantState(weight=w, killed=v in killed, value=v) for v, w in weights.items()
        },
        default_variant=next(iter(weights)),
        cause=Cause(kind=CauseKind.MANUAL, action=Action.SET_WEIGHTS),
        ts=ts,
        actor="test",
    )


def histories() -> dict[str, list[FlagChangeEvent]]:
    return {
        # Fully rolled out (new at 100) 20 days ago, after a 50/50 start 30 days ago; a pause
        # 3 days ago does not reset the run.
        "release": [
            change("release", 1, NOW - 30 * DAY, {"old": 50, "new": 50}),
            change("release", 2, NOW - 20 * DAY, {"old": 0, "new": 100}),
            change("release", 3, NOW - 3 * DAY, {"old": 0, "new": 100}),
        ],
        # Fully rolled out only 2 days ago.
        "fresh": [
            change("fresh", 1, NOW - 30 * DAY, {"old": 50, "new": 50}),
            change("fresh", 2, NOW - 2 * DAY, {"old": 0, "new": 100}),
        ],
        "quiet": [change("quiet", 1, NOW - 40 * DAY, {"a": 100})],
        # b killed 15 days ago, still killed (a later change kept it killed).
        "broken": [
            change("broken", 1, NOW - 60 * DAY, {"a": 80, "b": 20}),
            change("broken", 2, NOW - 15 * DAY, {"a": 100, "b": 0}, frozenset({"b"})),
            change("broken", 3, NOW - 1 * DAY, {"a": 100, "b": 0}, frozenset({"b"})),
        ],
    }


def test_the_config_takes_owner_description_tags_expiry_and_temporary() -> None:
    config = parse_config(CONFIG)
    release = config.flags["release"]
    expected = ("web", True, dt.date(2026, 5, 31))
    assert (release.owner, release.temporary, release.expires) == expected
    quiet = config.flags["quiet"]
    assert (quiet.owner, quiet.description, quiet.tags, quiet.temporary, quiet.expires) == (
        None,
        "nobody calls it",
        ["search"],
        False,
        None,
    )


def test_a_bad_expiry_date_is_a_config_error_with_its_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(CONFIG.replace("expires: 2026-05-31", "expires: next spring"), "c.yaml")
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith("c.yaml:5: flags.release.expires: ")


def test_findings_cover_each_case_and_only_those() -> None:
    config = parse_config(CONFIG)
    traffic = {"release": NOW - 1 * DAY, "fresh": NOW - 60, "quiet": None, "broken": NOW - 20 * DAY}
    found = findings(config, histories(), traffic, NOW, days=14)
    assert [(f.flag, f.kind) for f in found] == [
        ("release", "expired"),
        ("release", "fully_rolled_out"),
        ("quiet", "no_traffic"),
        ("broken", "no_traffic"),
        ("broken", "killed"),
    ]
    by = {(f.flag, f.kind): f for f in found}
    assert by["release", "expired"].since == dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp()
    assert by["release", "fully_rolled_out"].since == NOW - 20 * DAY
    assert by["release", "fully_rolled_out"].detail == (
        "temporary flag serving new to everyone for 20.0 days"
    )
    assert by["quiet", "no_traffic"].detail == (
        "no prediction seen since it was created 40.0 days ago"
    )
    assert by["quiet", "no_traffic"].owner is None
    assert by["broken", "no_traffic"].detail == "no prediction for 20.0 days"
    assert by["broken", "killed"].since == NOW - 15 * DAY
    assert by["broken", "killed"].detail == "variant b killed 15.0 days ago, never restored"


def test_the_day_limit_and_unknown_traffic() -> None:
    config = parse_config(CONFIG)
    # With 25 days, only the expiry and the 40-day-old silent flag remain; unknown traffic
    # (None) skips the traffic check altogether.
    found = findings(config, histories(), None, NOW, days=25)
    assert [(f.flag, f.kind) for f in found] == [("release", "expired")]
    traffic = {"release": NOW - DAY, "fresh": NOW - 60, "quiet": None, "broken": NOW - 20 * DAY}
    found = findings(config, histories(), traffic, NOW, days=25)
    assert [(f.flag, f.kind) for f in found] == [("release", "expired"), ("quiet", "no_traffic")]
    # A flag never seen is stale only once it is older than the limit: quiet is 40 days old.
    found = findings(config, histories(), traffic, NOW, days=45)
    assert [(f.flag, f.kind) for f in found] == [("release", "expired")]


def test_a_change_stamped_at_time_zero_has_no_age() -> None:
    """A worker's version 1 from the config is stamped 0: no age is counted from it."""
    config = parse_config(CONFIG)
    born = {
        "quiet": [change("quiet", 1, 0.0, {"a": 100})],
        "release": [change("release", 1, 0.0, {"old": 0, "new": 100})],
        # Killed from the start: the kill has no known time either.
        "broken": [change("broken", 1, 0.0, {"a": 100, "b": 0}, frozenset({"b"}))],
    }
    traffic = {"quiet": None, "release": None, "broken": None}
    found = findings(config, born, traffic, NOW, days=14)
    assert [(f.flag, f.kind) for f in found] == [("release", "expired")]


def test_a_restored_variant_is_not_a_finding() -> None:
    config = parse_config(CONFIG)
    history = [
        *histories()["broken"],
        change("broken", 4, NOW - 0.5 * DAY, {"a": 80, "b": 20}),
    ]
    found = findings(config, {"broken": history}, None, NOW)
    assert [(f.flag, f.kind) for f in found] == [("release", "expired")]


def test_validate_warns_about_a_flag_without_an_owner(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    assert config_warnings(path, load_config(path)) == [
        f"{path}:18: flags.quiet: no owner: add `owner:` (a team or person) so stale flags "
        "reach someone"
    ]
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0  # a warning, not an error
    assert f"warning: {path}:18: flags.quiet: no owner" in result.stderr
    assert f"{path}: ok (4 flags, 0 guardrails)" in result.stdout


def test_metrics_export_expired_and_stale_per_flag() -> None:
    config = parse_config(CONFIG)
    metrics = Metrics(CollectorRegistry())
    states = {name: h[-1] for name, h in histories().items()}
    metrics.observe_snapshot(
        {
            "flags": {
                "release": {"variants": {"new": {"last_ts": NOW - DAY}}},
                "fresh": {"variants": {"new": {"last_ts": NOW - 60}}},
                "quiet": {"variants": {"a": {"last_ts": None}}},
                "broken": {"variants": {"a": {"last_ts": NOW - 20 * DAY}}},
            }
        }
    )
    # Only the current state is known to a worker: "fully rolled out" counts from its last
    # change (3 days for release), the kill from the state's time (1 day for broken).
    metrics.observe_lifecycle(config, states, True, NOW)
    text = metrics.exposition().decode()
    lines = {line for line in text.splitlines() if line.startswith("driftswitch_flag_")}
    assert 'driftswitch_flag_expired{flag="release"} 1.0' in lines
    assert 'driftswitch_flag_expired{flag="fresh"} 0.0' in lines
    assert 'driftswitch_flag_stale{flag="broken",reason="no_traffic"} 1.0' in lines
    assert 'driftswitch_flag_stale{flag="broken",reason="killed"} 0.0' in lines
    assert 'driftswitch_flag_stale{flag="release",reason="fully_rolled_out"} 0.0' in lines
    assert 'driftswitch_flag_stale{flag="quiet",reason="no_traffic"} 1.0' in lines
    # A standby worker has no traffic figures: no no_traffic series at all.
    metrics.observe_lifecycle(config, states, False, NOW)
    text = metrics.exposition().decode()
    assert 'reason="no_traffic"' not in text
    assert 'driftswitch_flag_expired{flag="release"} 1.0' in text
