"""False-alarm budgets in time: the arithmetic, `false_alarm_every` in the config, and
`driftswitch validate --explain`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from driftswitch.detectors import registry
from driftswitch.streams.config import budget
from driftswitch.streams.config.model import detector_spec, parse_config
from driftswitch.streams.contract.errors import ConfigError
from driftswitch.streams.tools.cli import main

CONFIG = """\
flags:
  ranker:
    default: control
    variants:
      control:   {weight: 90, value: ranker-v1}
      candidate: {weight: 10, value: ranker-v2}
    guardrails:
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80}
        false_alarm_every: 90d
        expected_rate: 40/s
        action: kill
      - name: candidate-vs-control
        variant: candidate
        compare_to: control
        metric: accuracy
        detector: {kind: sequential, alpha: 0.05}
        action: kill
"""


def test_rates_parse_in_every_unit() -> None:
    assert budget.parse_rate("40/s") == 40.0
    assert budget.parse_rate("2400/m") == 40.0
    assert budget.parse_rate("144000/h") == 40.0
    assert budget.parse_rate("3456000/d") == 40.0
    assert budget.parse_rate(40) == 40.0
    assert budget.parse_rate("1e3/s") == 1000.0
    for wrong in ("40 per s", "-3/s", "0/s", True, "40/w", None):
        with pytest.raises(ValueError, match="rate"):
            budget.parse_rate(wrong)


def test_arl0_means_one_false_alarm_per_arl0_over_rate() -> None:
    # 90 days at 40/s is 311,040,000 events; back to time it is exactly 90 days.
    arl0 = budget.arl0_for(90 * budget.DAY, 40.0)
    assert arl0 == 311_040_000
    info = budget.explain({"arl0": arl0}, rate=40.0, rate_source="expected_rate")
    assert info["mean_seconds_between"] == pytest.approx(90 * budget.DAY)
    # Renewal / Poisson: 1 - exp(-t/T); 63 % within T itself.
    assert budget.within(90 * budget.DAY, 90 * budget.DAY) == pytest.approx(1 - math.exp(-1))
    assert info["chance_within"]["30d"] == pytest.approx(1 - math.exp(-1 / 3))
    assert info["chance_within"]["1d"] == pytest.approx(1 - math.exp(-1 / 90))
    assert "every ~90 days at 40 events/s (expected_rate)" in info["text"]
    assert "63 % chance of one within 90 days" in info["text"]
    # Under 10 %, one decimal: 1.1 % within a day.
    assert info["text"].endswith(" within 90 days, 1.1 % within a day, 28 % within 30 days.")


def test_small_budgets_and_other_detectors_are_said_plainly() -> None:
    # The README's example cusum (arl0 1e5) at 40 labelled events/s: about every 42 minutes.
    info = budget.explain({"arl0": 100_000}, rate=40.0)
    assert info["mean_seconds_between"] == pytest.approx(2500.0)
    assert "every ~42 min" in info["text"]
    assert "> 99.9 % within a day" in info["text"]
    no_rate = budget.explain({"arl0": 100_000}, rate=None)
    assert "rate" not in no_rate
    assert "100,000 events" in no_rate["text"]
    alpha = budget.explain({"alpha": 0.05}, rate=40.0)
    assert alpha["budget"] == "alpha"
    assert "whole comparison" in alpha["text"]
    assert budget.explain({}, rate=40.0)["budget"] == "none"
    assert budget.observed_rate(101, 1000.0, 1010.0) == pytest.approx(10.0)
    assert budget.observed_rate(1, 1000.0, 1010.0) is None
    assert budget.observed_rate(5, 1000.0, 1000.0) is None


def test_false_alarm_every_becomes_the_detectors_arl0() -> None:
    config = parse_config(CONFIG, "ranker.yaml")
    flag = config.flags["ranker"]
    spec = detector_spec(flag.guardrails[0], flag)
    assert spec["arl0"] == 90 * 86_400 * 40
    det = registry.create(spec)
    assert det.explain()["arl0"] == 90 * 86_400 * 40


@pytest.mark.parametrize(
    ("old", "new", "where", "expect"),
    [
        (
            "        expected_rate: 40/s\n",
            "",
            "ranker.yaml:12: flags.ranker.guardrails[0].false_alarm_every:",
            "needs `expected_rate`",
        ),
        (
            "target: 0.80}",
            "target: 0.80, arl0: 1000}",
            "ranker.yaml:11: flags.ranker.guardrails[0].detector.arl0:",
            "not both",
        ),
        (
            "{kind: sequential, alpha: 0.05}\n",
            "{kind: sequential, alpha: 0.05}\n        false_alarm_every: 30d\n",
            "ranker.yaml:20: flags.ranker.guardrails[1].false_alarm_every:",
            "chance of any false harm over the whole comparison",
        ),
        (
            "expected_rate: 40/s",
            "expected_rate: 40 per second",
            "ranker.yaml:13: flags.ranker.guardrails[0].expected_rate:",
            "expected a rate such as 40/s",
        ),
        (
            "false_alarm_every: 90d",
            "false_alarm_every: 0s",
            "ranker.yaml:12: flags.ranker.guardrails[0].false_alarm_every:",
            "positive duration",
        ),
    ],
    ids=["no-rate", "arl0-and-duration", "alpha-detector", "bad-rate", "zero-duration"],
)
def test_budget_errors_name_file_line_and_path(old: str, new: str, where: str, expect: str) -> None:
    assert old in CONFIG
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG.replace(old, new, 1), "ranker.yaml")
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(where), problems
    assert expect in problems[0]


def test_validate_explain_says_it_in_time(tmp_path: Path) -> None:
    path = tmp_path / "ranker.yaml"
    path.write_text(
        CONFIG.replace("        expected_rate: 40/s\n", "", 1).replace(
            "        false_alarm_every: 90d\n", "", 1
        )
    )
    result = CliRunner().invoke(main, ["validate", "--explain", "--rate", "40/s", str(path)])
    assert result.exit_code == 0, result.output
    assert "arl0 = 10,000 events" in result.output  # the cusum default
    assert "every ~4 min at 40 events/s (--rate)" in result.output
    assert "α = 0.05" in result.output
    path.write_text(CONFIG)
    result = CliRunner().invoke(main, ["validate", "--explain", str(path)])
    assert result.exit_code == 0, result.output
    assert "arl0 = 311,040,000 events (from false_alarm_every: 90 days)" in result.output
    assert "every ~90 days at 40 events/s (expected_rate)" in result.output
    result = CliRunner().invoke(main, ["validate", "--explain", "--rate", "fast", str(path)])
    assert result.exit_code != 0
    assert "expected a rate" in result.output
