"""The shipped Prometheus alert rules: promtool checks and unit-tests them; names match the code.

promtool comes from Debian's ``prometheus`` package (``.ci/run`` installs it). Without it these
tests FAIL, with the command to install it: the rules are part of what CI must verify.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from driftswitch.streams.service.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
#: The series of a histogram metric a rule may use.
HISTOGRAM_SERIES = ("count", "sum", "bucket")
EXPECTED_ALERTS = {
    "DriftswitchDeadLetterRateHigh",
    "DriftswitchWorkerLagging",
    "DriftswitchJoinLagging",
    "DriftswitchVariantKilled",
    "DriftswitchFlagStateStale",
    "DriftswitchNoActiveWorker",
    "DriftswitchHookFailing",
    "DriftswitchInputReset",
    "DriftswitchEngineRecovered",
    "DriftswitchObservationsLate",
    "DriftswitchInputDisordered",
    "DriftswitchFlagDebt",
}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, (
        "promtool is not installed; it checks the shipped alert rules. Install it with "
        "`apt-get update && apt-get install -y prometheus` (Debian/Ubuntu), as .ci/run does."
    )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )


def test_promtool_check_rules() -> None:
    result = run("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = run("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_and_uses_real_metrics() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = [r for group in rules["groups"] for r in group["rules"]]
    assert {r["alert"] for r in alerts} == EXPECTED_ALERTS
    tests = yaml.safe_load(RULES_TEST.read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert tested == EXPECTED_ALERTS  # each alert is shown to fire at least once
    known = {m.name for m in METRICS}
    # A histogram's series: _count, _sum and _bucket.
    known |= {f"{m.name}_{s}" for m in METRICS if m.type == "histogram" for s in HISTOGRAM_SERIES}
    for rule in alerts:
        used = set(re.findall(r"\bdriftswitch_[a-z_]+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= known, (rule["alert"], used - known)
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_a_broken_rule_file_is_caught(tmp_path: Path) -> None:
    """The check is real: promtool rejects a rule with a bad expression."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Bad\n"
        "        expr: sum by (flag) (driftswitch_flag_version >\n"
    )
    result = subprocess.run(
        [promtool(), "check", "rules", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
