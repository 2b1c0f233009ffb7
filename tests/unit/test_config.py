"""`driftswitch validate` and the config model: every problem named by file, line, path and
expectation; never a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from driftswitch.detectors import registry
from driftswitch.streams.config.model import (
    GuardrailAction,
    Metric,
    _one_edit_apart,
    load_config,
    parse_config,
    parse_duration,
)
from driftswitch.streams.contract.errors import ConfigError
from driftswitch.streams.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
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
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}
        min_samples: 200
        action: kill
      - name: candidate-vs-control
        variant: candidate
        compare_to: control
        metric: accuracy
        detector: {kind: sequential, alpha: 0.05, margin: 0.0}
        action: kill
"""


def bad(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


# (id, config text, substrings the single reported problem must contain)
BAD_CONFIGS = [
    (
        "unknown-detector-kind",
        bad("kind: cusum,", "kind: cusm,"),
        [
            ":11: flags.ranker.guardrails[0].detector.kind",
            "unknown detector kind 'cusm'",
            "known kinds:",
            "cusum",
            "glr",
            "sequential",
            "adwin",
        ],
    ),
    (
        "weights-do-not-add-up",
        bad("weight: 10,", "weight: 20,"),
        [":4: flags.ranker.variants", "must add up to 100, got 110", "control=90", "candidate=20"],
    ),
    (
        "guardrail-names-missing-variant",
        bad(
            "        variant: candidate\n        metric: accuracy\n        detector: {kind: cusum",
            "        variant: candiate\n        metric: accuracy\n        detector: {kind: cusum",
        ),
        [
            ":9: flags.ranker.guardrails[0].variant",
            "'candiate' does not exist",
            "known: control, candidate",
        ],
    ),
    (
        "compare-to-itself",
        bad("compare_to: control", "compare_to: candidate"),
        [":16: flags.ranker.guardrails[1].compare_to", "compared to itself"],
    ),
    (
        "default-variant-missing",
        bad("default: control", "default: stable"),
        [":3: flags.ranker.default", "'stable' is not a variant", "known: control, candidate"],
    ),
    (
        "bad-yaml",
        bad(
            "      control:   {weight: 90, value: ranker-v1}",
            "      control:   {weight: 90, value: ranker-v1",
        ),
        [":6:", "invalid YAML"],
    ),
    (
        "yaml-value-it-cannot-build",  # PyYAML raised ValueError: a traceback, not a problem
        bad("    default: control", "    default: control\n    expires: 2024-13-01"),
        [":4: invalid YAML value '2024-13-01': month must be in 1..12"],
    ),
    (
        "unknown-field",
        bad("        min_samples: 200", "        min_sample: 200"),
        [
            ":12: flags.ranker.guardrails[0].min_sample",
            "unknown field (did you mean 'min_samples'?); allowed:",
            "min_samples",
        ],
    ),
    (
        "unknown-field-near-miss",
        bad("    guardrails:", "    guardrail:"),
        [
            ":7: flags.ranker.guardrail: unknown field (did you mean 'guardrails'?); allowed: "
            "default, description, expires, guardrails, hooks,"
        ],
    ),
    (
        "unknown-top-level-field-lists-names-as-written",
        GOOD + "joins: {ttl: 1h}\n",
        [
            ":20: joins: unknown field (did you mean 'join'?); allowed: $evaluators, flags, "
            "hooks, join"
        ],
    ),
    (
        "unknown-action",
        bad(
            "        action: kill\n      - name: candidate-vs",
            "        action: explode\n      - name: candidate-vs",
        ),
        [
            ":13: flags.ranker.guardrails[0].action",
            "'warn', 'hold', 'shift' or 'kill' (got 'explode')",
        ],
    ),
    (
        "unknown-metric",
        bad("metric: accuracy", "metric: acuracy"),
        [":10: flags.ranker.guardrails[0].metric", "'accuracy'", "'latency_ms'", "(got 'acuracy')"],
    ),
    (
        "negative-weight",
        bad("weight: 90,", "weight: -5,"),
        [":5: flags.ranker.variants.control.weight", "greater than or equal to 0 (got -5)"],
    ),
    (
        "type-error-names-the-value",
        bad("weight: 90,", "weight: ninety,"),
        [
            ":5: flags.ranker.variants.control.weight: Input should be a valid integer, unable to "
            "parse string as an integer (got 'ninety')"
        ],
    ),
    (
        "type-error-names-a-long-value-cut-short",
        bad("min_samples: 200", "min_samples: " + "9" * 30 + " samples or so, whichever first"),
        [
            ":12: flags.ranker.guardrails[0].min_samples: Input should be a valid integer, "
            "unable to parse string as an integer (got '" + "9" * 30 + " samples o...')"
        ],
    ),
    (
        "type-error-names-a-yaml-boolean-as-written",
        bad(
            "        action: kill\n      - name: candidate-vs",
            "        action: yes\n      - name: candidate-vs",
        ),
        [
            ":13: flags.ranker.guardrails[0].action: Input should be 'warn', 'hold', 'shift' or "
            "'kill' (got yes)"
        ],
    ),
    (
        "type-error-names-what-a-container-is",
        bad("detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}", "detector: []"),
        [
            ":11: flags.ranker.guardrails[0].detector: Input should be a valid dictionary or "
            "instance of DetectorSpec (got a list)"
        ],
    ),
    (
        "bad-detector-parameter",
        bad("arl0: 100000}", "arl0: 100000, delta: 0.1}"),
        [
            ":11: flags.ranker.guardrails[0].detector",
            "unknown parameter(s) delta",
            "allowed:",
            "arl0",
        ],
    ),
    (
        "two-sample-detector-without-compare-to",
        bad("        compare_to: control\n", ""),
        [":14: flags.ranker.guardrails[1].compare_to", "compares two variants"],
    ),
    (
        "one-sample-detector-with-compare-to",
        bad(
            "        variant: candidate\n        metric: accuracy\n        detector: {kind: cusum",
            "        variant: candidate\n        compare_to: control\n        metric: accuracy\n"
            "        detector: {kind: cusum",
        ),
        ["flags.ranker.guardrails[0].compare_to", "watches one variant", "'sequential'"],
    ),
    (
        "kill-the-default",
        bad(
            "        variant: candidate\n        metric: accuracy\n        detector: {kind: cusum",
            "        variant: control\n        metric: accuracy\n        detector: {kind: cusum",
        ),
        [":13: flags.ranker.guardrails[0].action", "cannot kill the default variant 'control'"],
    ),
    (
        "detector-does-not-fit-metric",
        bad(
            "metric: accuracy\n        detector: {kind: cusum",
            "metric: score\n        detector: {kind: cusum",
        ),
        [
            ":11: flags.ranker.guardrails[0].detector.kind",
            "does not take distribution input",
            "detectors that do:",
        ],
    ),
    (
        "comparison-tuning-on-an-exact-method",
        bad("{kind: sequential, alpha: 0.05,", "{kind: sequential, tuning_n: 5000, alpha: 0.05,"),
        [
            ":18: flags.ranker.guardrails[1].detector",
            "tuning_n applies to method 'asymptotic' only",
        ],
    ),
    (
        "betting-on-a-continuous-metric",
        bad(
            "metric: accuracy\n        detector: {kind: sequential,",
            "metric: latency_ms\n        detector: {kind: sequential, method: betting,",
        ),
        [
            ":18: flags.ranker.guardrails[1].detector.method",
            "method 'betting' compares 0/1 outcomes",
            "use method 'asymptotic'",
        ],
    ),
    (
        "bad-duration",
        GOOD + "join: {ttl: soon}\n",
        [":20: join.ttl", "expected a duration such as 30s"],
    ),
    (
        "duplicate-guardrail-name",
        bad("name: candidate-vs-control", "name: candidate-accuracy"),
        [":14: flags.ranker.guardrails[1].name", "duplicate guardrail name"],
    ),
    (
        "bad-flag-name",
        bad("  ranker:", "  ranker v2:"),
        ["flags.ranker v2", "String should match pattern"],
    ),
    (
        "mixed-value-kinds",
        bad("value: ranker-v2}", "value: 2}"),
        [":4: flags.ranker.variants", "one kind", "control: string", "candidate: number"],
    ),
    (
        "not-a-mapping",
        "- just\n- a list\n",
        ["expected a mapping with a `flags:` section"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_is_rejected_with_a_clear_message(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    problems = [line for line in result.stderr.splitlines() if not line.endswith("problem)")]
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(path)), problems
    for fragment in expected:
        assert fragment in problems[0], (fragment, problems[0])


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = bad("default: control", "default: stable").replace("weight: 10,", "weight: 20,")
    text = text.replace("kind: cusum,", "kind: cusm,")
    path = tmp_path / "flags.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert "invalid (3 problems)" in result.stderr
    for fragment in ("must add up to 100", "'stable' is not a variant", "unknown detector kind"):
        assert fragment in result.stderr


def test_good_config_passes(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(GOOD, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: ok (1 flags, 2 guardrails)"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "nope.yaml: cannot read: No such file or directory" in result.stderr


@pytest.mark.slow  # the installed console script in a fresh interpreter, like test_first_hour.py
def test_real_command_has_no_traceback(tmp_path: Path) -> None:
    """The installed entry point, as a user runs it."""
    path = tmp_path / "flags.yaml"
    path.write_text(bad("kind: cusum,", "kind: nope,"), encoding="utf-8")
    exe = Path(sys.executable).with_name("driftswitch")
    proc = subprocess.run([exe, "validate", path], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "unknown detector kind 'nope'" in proc.stderr


def test_example_config_is_valid() -> None:
    config = load_config(ROOT / "examples" / "ranker.yaml")
    guardrails = config.flags["ranker"].guardrails
    assert [g.action for g in guardrails] == [GuardrailAction.KILL, GuardrailAction.KILL]
    assert guardrails[0].metric is Metric.ACCURACY
    assert config.join.ttl == 3600.0


def test_defaults_and_two_sample_direction() -> None:
    from driftswitch.streams.config.model import detector_spec

    config = parse_config(GOOD)
    flag = config.flags["ranker"]
    assert flag.guardrails[0].cooldown == 300.0
    assert detector_spec(flag.guardrails[1], flag)["higher_is_better"] is True


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        (" 7 ", 7.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "-3s", "10 minutes", True, None, -1])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_config_error_lists_problems() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent("flags: {}\n"), "x.yaml")
    assert info.value.problems == [
        "x.yaml:1: flags: Dictionary should have at least 1 item after validation, not 0"
    ]


def test_problems_are_listed_in_line_order() -> None:
    """A schema problem low in the file (line 20) comes after a cross-field one above it (line 3),
    though the schema is checked first; two problems on one line keep the order found."""
    text = bad("default: control", "default: stable") + "join: {ttl: soon, max_pending: 0}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert info.value.problems == [
        "c.yaml:3: flags.ranker.default: default variant 'stable' is not a variant; "
        "known: control, candidate",
        "c.yaml:20: join.ttl: expected a duration such as 30s, 10m, 2h or a number of seconds, "
        "got 'soon'",
        "c.yaml:20: join.max_pending: Input should be greater than or equal to 1 (got 0)",
    ]


def test_values_in_hooks_are_never_echoed() -> None:
    """A webhook URL may carry a token (Slack's do): a problem under `hooks` names the field and
    what was expected, never what was given; elsewhere the value is shown."""
    token = "T000/B000/s3cr3tt0k3n"
    text = GOOD.replace("    variants:", "    owner: 7\n    variants:", 1) + textwrap.dedent(
        f"""\
        hooks:
          - url: https://hooks.slack.com/services/{token} ?
            format: slack
            max_attempts: {token}
            timeout: [{token}]
        """
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert info.value.problems == [
        "c.yaml:4: flags.ranker.owner: Input should be a valid string (got 7)",
        "c.yaml:22: hooks[0].url: String should match pattern '^https?://\\S+$'",
        "c.yaml:24: hooks[0].max_attempts: Input should be a valid integer, unable to parse "
        "string as an integer",
        "c.yaml:25: hooks[0].timeout: expected a duration such as 30s, 10m, 2h or a number of "
        "seconds",
    ]


def test_an_unknown_field_unlike_any_allowed_suggests_none() -> None:
    """`colour` is as near `rollout` as difflib's default cutoff (0.6) lets through: no guess."""
    with pytest.raises(ConfigError) as info:
        parse_config(bad("    default: control", "    default: control\n    colour: red"), "c.yaml")
    assert info.value.problems == [
        "c.yaml:4: flags.ranker.colour: unknown field; allowed: default, description, expires, "
        "guardrails, hooks, owner, positive_label, rollout, tags, targeting, task, temporary, "
        "variants"
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (  # difflib's ratio of `tll` and `ttl` is 0.67, under the cutoff
            "join: {tll: 1h}\n",
            "c.yaml:20: join.tll: unknown field (did you mean 'ttl'?); allowed: allowed_lateness, "
            "idle_after, max_clock_skew, max_pending, ttl",
        ),
        (  # two adjacent letters swapped: 0.67 too
            "hooks:\n  - {ulr: https://hooks.example.com/x, format: slack}\n",
            "c.yaml:21: hooks[0].ulr: unknown field (did you mean 'url'?); allowed: backoff, "
            "format, max_attempts, max_backoff, name, secret_env, timeout, url, url_env, "
            "warn_resolve_after",
        ),
        (  # two letters off: not a typo of `ttl`, no guess
            "join: {lat: 1h}\n",
            "c.yaml:20: join.lat: unknown field; allowed: allowed_lateness, idle_after, "
            "max_clock_skew, max_pending, ttl",
        ),
    ],
    ids=["one-letter-replaced", "adjacent-letters-swapped", "two-letters-off"],
)
def test_a_short_field_one_edit_away_is_suggested(extra: str, expected: str) -> None:
    """A short name one edit from an allowed one is suggested, though difflib's ratio is low."""
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD + extra, "c.yaml")
    assert info.value.problems == [expected]


@pytest.mark.parametrize(
    ("a", "b", "apart"),
    [
        ("tll", "ttl", True),  # replaced
        ("ulr", "url", True),  # adjacent letters swapped
        ("owner", "onwer", True),  # swapped in the middle
        ("tags", "tag", True),  # deleted
        ("ttl", "ttll", True),  # inserted
        ("ttl", "ttl", False),  # the same
        ("abcd", "badc", False),  # two swaps
        ("abc", "cba", False),  # swapped but not adjacent
        ("url", "url_env", False),  # four letters more
        ("colour", "rollout", False),
    ],
)
def test_one_edit_apart(a: str, b: str, apart: bool) -> None:
    assert _one_edit_apart(a, b) is apart
    assert _one_edit_apart(b, a) is apart


MANY_MISTAKES = """\
$evaluators:
  internal: {ends_with: [{var: email}, "@example.com"]}
flags:
  ranker:
    default: contrl
    colour: red
    variants:
      control:   {weight: 80, value: ranker-v1}
      candidate: {weight: 10, value: ranker-v2}
    targeting:
      if: [{$ref: internl}, candidat, null]
    guardrails:
      - name: acc
        variant: candidate
        metric: accuracy
        detector: {kind: cusumm, baseline: 0.90, target: 0.80}
        action: explode
      - name: acc
        variant: candidate
        compare_to: contrl
        metric: accuracy
        detector: {kind: sequential, alpha: 2}
        action: kill
      - name: latency
        variant: candidat
        metric: latency_ms
        detecter: {kind: page_hinkley}
        action: warn
      - name: vs-control
        variant: [candidate]
        compare_to: 5
        metric: accuracy
        detector: {kind: sequential}
        action: kill
      - {name: budget, variant: candidate, metric: accuracy, false_alarm_every: 90d,
         expected_rate: fast, detector: {kind: cusum, baseline: 0.9, target: 0.8}, action: warn}
    rollout: {variant: candidate, steps: [10, 50, 100], alpha: 2}
  search:
    default: a
    variants:
      a: {weight: lots, value: 1}
      b: {weight: 0, value: 2}
    guardrails:
      - {name: g, variant: b, metric: accuracy, detector: {kind: cusum, arl0: -1}, action: kill}
      - {name: g, variant: b, metric: accuracy, detector: {kind: cusum}, action: kill}
joins: {ttl: 1h}
"""


def test_schema_and_cross_field_problems_are_reported_in_one_run() -> None:
    """A flag with schema problems is still checked across fields on the parts that parsed: the
    flag without its unknown field, its rollout without the broken `alpha`; each guardrail at its
    own index, on the fields that parsed (`search`, one of whose weights does not parse, on its
    variants' names and what its guardrails say of themselves). Nothing is reported that the
    broken parts would only seem to cause: no `set compare_to` for guardrail 3 (its compare_to is
    there, just not a string), no `cannot kill the default` guessed from a variant that did not
    parse, no `needs expected_rate` for guardrail 4 (its rate is there, just unreadable), no
    weights of `search`; and each problem once (the rollout, compared to the default, does not
    repeat that `contrl` is no variant)."""
    with pytest.raises(ConfigError) as info:
        parse_config(MANY_MISTAKES, "c.yaml")
    known = "known: control, candidate"
    ranker, search = "c.yaml:{}: flags.ranker.", "c.yaml:{}: flags.search."
    assert info.value.problems == [
        ranker.format(5) + f"default: default variant 'contrl' is not a variant; {known}",
        ranker.format(6) + "colour: unknown field; allowed: default, description, expires, "
        "guardrails, hooks, owner, positive_label, rollout, tags, targeting, task, temporary, "
        "variants",
        ranker.format(7) + "variants: weights of served variants must add up to 100, got 90 "
        "(control=80, candidate=10)",
        ranker.format(11)
        + "targeting.if[0].$ref: unknown evaluator 'internl'; known ($evaluators): internal",
        ranker.format(11) + f"targeting.if[1]: variant 'candidat' does not exist; {known}",
        ranker.format(16) + "guardrails[0].detector.kind: unknown detector kind 'cusumm'; "
        f"known kinds: {', '.join(registry.kinds())}",
        ranker.format(17) + "guardrails[0].action: Input should be 'warn', 'hold', 'shift' or "
        "'kill' (got 'explode')",
        ranker.format(18) + "guardrails[1].name: duplicate guardrail name 'acc'",
        ranker.format(20) + f"guardrails[1].compare_to: variant 'contrl' does not exist; {known}",
        ranker.format(22) + "guardrails[1].detector: alpha must be a number in (0, 1), got 2",
        ranker.format(24) + "guardrails[2].detector: required field is missing",
        ranker.format(25) + f"guardrails[2].variant: variant 'candidat' does not exist; {known}",
        ranker.format(27) + "guardrails[2].detecter: unknown field (did you mean 'detector'?); "
        "allowed: action, compare_to, cooldown, detector, expected_rate, false_alarm_every, "
        "feature, max_segments, metric, metric_segments, min_samples, name, segment_by, "
        "shift_by, variant",
        ranker.format(30) + "guardrails[3].variant: Input should be a valid string (got a list)",
        ranker.format(31) + "guardrails[3].compare_to: Input should be a valid string (got 5)",
        ranker.format(36) + "guardrails[4].expected_rate: expected a rate such as 40/s, "
        "2400/m, 100000/d or events per second, got 'fast'",
        ranker.format(37) + "rollout.alpha: Input should be less than 1 (got 2)",
        search.format(41) + "variants.a.weight: Input should be a valid integer, unable to parse "
        "string as an integer (got 'lots')",
        search.format(44) + "guardrails[0].detector: give exactly one of target (accuracy after "
        "the change) or drop",
        search.format(45) + "guardrails[1].detector: give exactly one of target (accuracy after "
        "the change) or drop",
        search.format(45) + "guardrails[1].name: duplicate guardrail name 'g'",
        "c.yaml:46: joins: unknown field (did you mean 'join'?); allowed: $evaluators, flags, "
        "hooks, join",
    ]


def _rollout(*lines: str) -> str:
    """GOOD with a rollout of the flag from line 20 on, one field a line."""
    return GOOD + "    rollout:\n" + "".join(f"      {line}\n" for line in lines)


# (id, config text, every problem reported): two independent mistakes each, one of them a schema
# problem in the rollout or a variant, which used to hide the other (a cross-field rule).
BROKEN_PART_AND_CROSS_FIELD = [
    (
        "rollout-steps-and-unknown-candidate",
        _rollout("variant: candidat", "steps: [10, 500]"),
        [
            "c.yaml:21: flags.ranker.rollout.variant: variant 'candidat' does not exist; "
            "known: control, candidate",
            "c.yaml:22: flags.ranker.rollout.steps[1]: Input should be less than or equal to "
            "100 (got 500)",
        ],
    ),
    (
        "rollout-alpha-and-compared-to-itself",
        _rollout("variant: candidate", "compare_to: candidate", "steps: [10, 100]", "alpha: 2"),
        [
            "c.yaml:22: flags.ranker.rollout.compare_to: the candidate 'candidate' cannot be "
            "compared to itself",
            "c.yaml:24: flags.ranker.rollout.alpha: Input should be less than 1 (got 2)",
        ],
    ),
    (  # steps did not parse: nothing is said of the first step or the order of the steps
        "rollout-steps-and-promote-shadow",
        _rollout("variant: candidate", "steps: [5, many, 1]", "promote_shadow: true"),
        [
            "c.yaml:22: flags.ranker.rollout.steps[1]: Input should be a valid integer, unable "
            "to parse string as an integer (got 'many')",
            "c.yaml:23: flags.ranker.rollout.promote_shadow: 'candidate' is not a shadow variant "
            "(`shadow: true`); it starts at its weight",
        ],
    ),
    (
        "rollout-unknown-field-and-max-duration",
        _rollout(
            "variant: candidate",
            "steps: [10, 100]",
            "min_duration: 1h",
            "max_duration: 10m",
            "colour: red",
        ),
        [
            "c.yaml:24: flags.ranker.rollout.max_duration: max_duration must be at least "
            "min_duration",
            "c.yaml:25: flags.ranker.rollout.colour: unknown field; allowed: alpha, compare_to, "
            "margin, max_duration, metric, min_duration, min_samples, on_harm, promote_shadow, "
            "segments, steps, variant",
        ],
    ),
    (  # the control's `shadow` did not parse: its variants' weights are not added up
        "variant-shadow-and-missing-default",
        bad("default: control", "default: stable").replace(
            "value: ranker-v1}", "value: ranker-v1, shadow: maybe}"
        ),
        [
            "c.yaml:3: flags.ranker.default: default variant 'stable' is not a variant; known: "
            "control, candidate",
            "c.yaml:5: flags.ranker.variants.control.shadow: Input should be a valid boolean, "
            "unable to interpret input (got 'maybe')",
        ],
    ),
    (
        "variant-weight-and-guardrail-on-missing-variant",
        bad("weight: 10,", "weight: ten,").replace(
            "        variant: candidate\n        metric: accuracy\n        detector: {kind: cusum",
            "        variant: candiate\n        metric: accuracy\n        detector: {kind: cusum",
        ),
        [
            "c.yaml:6: flags.ranker.variants.candidate.weight: Input should be a valid integer, "
            "unable to parse string as an integer (got 'ten')",
            "c.yaml:9: flags.ranker.guardrails[0].variant: variant 'candiate' does not exist; "
            "known: control, candidate",
        ],
    ),
    (  # the candidate's weight did not parse: no `first step must equal the weight`
        "variant-weight-and-rollout-control",
        _rollout("variant: candidate", "compare_to: champion", "steps: [20, 100]").replace(
            "weight: 10,", "weight: ten,"
        ),
        [
            "c.yaml:6: flags.ranker.variants.candidate.weight: Input should be a valid integer, "
            "unable to parse string as an integer (got 'ten')",
            "c.yaml:22: flags.ranker.rollout.compare_to: variant 'champion' does not exist; "
            "known: control, candidate",
        ],
    ),
    (  # not a mapping: the variant's name still counts, nothing else of it
        "variant-not-a-mapping-and-missing-default",
        bad("default: control", "default: stable").replace(
            "{weight: 10, value: ranker-v2}", "ranker-v2"
        ),
        [
            "c.yaml:3: flags.ranker.default: default variant 'stable' is not a variant; known: "
            "control, candidate",
            "c.yaml:6: flags.ranker.variants.candidate: Input should be a valid dictionary or "
            "instance of VariantConfig (got 'ranker-v2')",
        ],
    ),
    (  # an unknown field leaves the variant whole: every rule on it still holds
        "variant-unknown-field-and-first-step",
        _rollout("variant: candidate", "steps: [20, 100]").replace(
            "value: ranker-v2}", "value: ranker-v2, colour: red}"
        ),
        [
            "c.yaml:6: flags.ranker.variants.candidate.colour: unknown field; allowed: shadow, "
            "value, weight",
            "c.yaml:22: flags.ranker.rollout.steps[0]: the first step (20) must equal the "
            "candidate's configured weight (10): the rollout starts there",
        ],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [c[1:] for c in BROKEN_PART_AND_CROSS_FIELD],
    ids=[c[0] for c in BROKEN_PART_AND_CROSS_FIELD],
)
def test_a_broken_rollout_or_variant_does_not_hide_the_flags_other_problems(
    text: str, expected: list[str]
) -> None:
    """A rollout or variant with a schema problem: the flag's cross-field rules that do not read
    the broken field are still checked, in the same run; those that do are not guessed at."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert info.value.problems == expected


def test_a_good_rollout_passes() -> None:
    """The base of the rollout cases above is valid: each problem there is the one made."""
    flag = parse_config(_rollout("variant: candidate", "steps: [10, 100]")).flags["ranker"]
    assert flag.rollout is not None
    assert flag.rollout.steps == [10, 100]


def test_a_default_that_is_no_variant_is_reported_once() -> None:
    """A rollout without `compare_to` is compared to the default: a default that is no variant is
    said at `default`, not again at a `compare_to` the file does not have."""
    text = _rollout("variant: candidate", "steps: [10, 100]").replace(
        "default: control", "default: stable"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert info.value.problems == [
        "c.yaml:3: flags.ranker.default: default variant 'stable' is not a variant; known: "
        "control, candidate"
    ]
