"""Targeting rules: checked by ``validate``, and evaluated exactly as flagd evaluates them.

The equivalence test writes the flagd document of flag states with rules (the worker's
:class:`~driftswitch.streams.contract.flagd.FlagdFile`), loads it into openfeature-provider-flagd
in file mode, and compares its variant with the client's for 100,000 random contexts across
the rule sets below.
"""

from __future__ import annotations

import json
import logging
import random
import string
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.client.openfeature import DriftswitchProvider
from driftswitch.streams.config.model import parse_config
from driftswitch.streams.contract.commands import Command, CommandAction
from driftswitch.streams.contract.events import FlagChangeEvent, Pin
from driftswitch.streams.contract.flagd import FlagdFile, flag_definition
from driftswitch.streams.contract.targeting import evaluate, served_targeting
from driftswitch.streams.pipeline.control import reconcile, transition
from driftswitch.streams.pipeline.transitions import initial_state
from driftswitch.streams.tools.cli import main

CONFIG = """\
$evaluators:
  internal:
    ends_with: [{var: email}, "@example.com"]
  oceania:
    in: [{var: region}, [nz, au]]
flags:
  by-region:
    default: control
    variants:
      control:   {weight: 80, value: CONTROL}
      candidate: {weight: 20, value: CANDIDATE}
    targeting:
      if:
        - {in: [{var: region}, [jp, kr, "tw"]]}
        - control
        - {==: [{var: region}, nz]}
        - candidate
        - null
  by-version:
    default: control
    variants:
      control:   {weight: 50, value: CONTROL}
      candidate: {weight: 30, value: CANDIDATE}
      internal:  {weight: 20, value: INTERNAL}
    targeting:
      if:
        - {$ref: internal}
        - internal
        - {sem_ver: [{var: app_version}, ">=", "2.1.0"]}
        - candidate
        - {sem_ver: [{var: app_version}, "~", "1.4"]}
        - control
        - null
  by-account:
    default: control
    variants:
      control:   {weight: 90, value: CONTROL}
      candidate: {weight: 10, value: CANDIDATE}
    targeting:
      if:
        - {==: [{var: tier}, pro]}
        - fractional: [{cat: [{var: account}, "-", {var: region}]}, [control, 30], [candidate, 70]]
        - {starts_with: [{var: targetingKey}, "qa-"]}
        - candidate
        - null
  by-numbers:
    default: control
    variants:
      control:   {weight: 60, value: CONTROL}
      candidate: {weight: 40, value: CANDIDATE}
    targeting:
      if:
        - and:
            - {">=": [{var: age}, 18]}
            - {"<": [{var: age}, 65]}
            - {"!": {var: beta_opt_out}}
        - candidate
        - or:
            - {"<=": [{var: score}, 0.25]}
            - {"!=": [{var: plan}, paid]}
        - control
        - null
  refs-and-kills:
    default: control
    variants:
      control: {weight: 40, value: CONTROL}
      green:   {weight: 30, value: GREEN}
      blue:    {weight: 30, value: BLUE}
    targeting:
      if:
        - {$ref: oceania}
        - blue
        - {$ref: internal}
        - green
        - {"<": [1, {var: seats}, 50]}
        - fractional: [[green, 50], [blue, 50]]
        - {var: region}
  fall-through:
    default: control
    variants:
      control:   {weight: 70, value: CONTROL}
      candidate: {weight: 30, value: CANDIDATE}
    targeting:
      if:
        - {ends_with: [{var: targetingKey}, "7"]}
        - candidate
        - {var: wanted}
"""

REGIONS = ["nz", "au", "jp", "kr", "tw", "us", "de", "NZ", "", "nz "]
VERSIONS = ["2.1.0", "2.0.9", "v2.3", "1.4.7", "1.4", "1.5.0", "3", "2.1.0-beta", "junk", ""]


def states() -> dict[str, FlagChangeEvent]:
    config = parse_config(CONFIG, "targeting.yaml")
    out = {name: initial_state(name, flag) for name, flag in config.flags.items()}
    # A killed variant: the rule's "blue" users go to the default, the split's too.
    kill = out["refs-and-kills"]
    variants = dict(kill.variants)
    variants["blue"] = variants["blue"].model_copy(update={"killed": True})
    out["refs-and-kills"] = kill.model_copy(update={"variants": variants, "version": 2})
    return out


def random_context(rng: random.Random) -> tuple[str | None, dict[str, Any]]:
    key: str | None
    roll = rng.random()
    if roll < 0.02:
        key = None
    elif roll < 0.05:
        key = "qa-" + str(rng.randrange(10_000))
    else:
        key = "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(1, 30)))
    attributes: dict[str, Any] = {}
    candidates: dict[str, Any] = {
        "region": lambda: rng.choice(REGIONS),
        "email": lambda: (
            rng.choice(["a", "ops", "x.y"])
            + rng.choice(["@example.com", "@example.org", "example.com"])
        ),
        "app_version": lambda: rng.choice(VERSIONS),
        "tier": lambda: rng.choice(["pro", "free", "PRO"]),
        "account": lambda: rng.choice([rng.randrange(1_000), float(rng.randrange(100)), "acme"]),
        "age": lambda: rng.choice([rng.randrange(0, 100), rng.uniform(0, 100), "40"]),
        "beta_opt_out": lambda: rng.choice([True, False]),
        "score": lambda: rng.random(),
        "plan": lambda: rng.choice(["paid", "trial"]),
        "seats": lambda: rng.randrange(0, 100),
        "wanted": lambda: rng.choice(["control", "candidate", "nope", 3, True]),
    }
    for name, make in candidates.items():
        if rng.random() < 0.8:
            attributes[name] = make()
    return key, attributes


@pytest.fixture
def flagd_file(tmp_path: Path) -> Path:
    file = FlagdFile(tmp_path / "flags.json")
    assert file.update(*states().values())
    return file.path


def ready_client(domain: str, provider: Any) -> Any:
    api.set_provider(provider, domain=domain)
    client = api.get_client(domain=domain)
    deadline = time.monotonic() + 30
    while client.get_provider_status() is not ProviderStatus.READY:
        assert time.monotonic() < deadline, client.get_provider_status()
        time.sleep(0.01)
    return client


@pytest.mark.slow
def test_client_and_provider_equal_flagd_for_100k_random_contexts(flagd_file: Path) -> None:
    held = states()
    ours = DriftswitchClient("127.0.0.1:1")
    for state in held.values():
        assert ours.apply(state)
    # flagd's core logs a traceback for every version sem_ver cannot parse (then yields null,
    # as ours does): silence it, or formatting them dominates the run.
    flagd_log = logging.getLogger("openfeature.contrib")
    level = flagd_log.level
    flagd_log.setLevel(logging.CRITICAL)
    try:
        flagd = ready_client(
            "targeting-flagd",
            FlagdProvider(
                resolver_type=ResolverType.FILE, offline_flag_source_path=str(flagd_file)
            ),
        )
        provider = ready_client("targeting-ours", DriftswitchProvider(ours))
        rng = random.Random(15)
        flags = sorted(held)
        mismatches: list[tuple[str, str | None, dict[str, Any], str | None, str | None]] = []
        seen: dict[str, set[str]] = {flag: set() for flag in flags}
        reasons: set[str] = set()
        for i in range(100_000):
            flag = flags[i % len(flags)]
            key, attributes = random_context(rng)
            context = EvaluationContext(targeting_key=key, attributes=attributes)
            theirs = flagd.get_string_details(flag, "fallback", context)
            resolved = ours.resolve(flag, key, attributes)
            mine = ours.variant(flag, key, attributes) if key is not None else resolved.variant
            if not theirs.variant == mine == resolved.variant:
                mismatches.append((flag, key, attributes, theirs.variant, mine))
            if i % 10 == 0:  # driftswitch's own OpenFeature provider (slower: the SDK's hooks)
                via_provider = provider.get_string_details(flag, "fallback", context)
                if not (
                    via_provider.variant == theirs.variant
                    and via_provider.value == theirs.value == str(mine).upper()
                    and via_provider.reason == theirs.reason
                ):
                    mismatches.append((flag, key, attributes, via_provider.variant, mine))
            seen[flag].add(str(theirs.variant))
            reasons.add(str(theirs.reason))
        assert mismatches[:5] == []
        # The contexts reach every branch: each flag serves all its live variants, the
        # killed one never.
        assert seen == {
            "by-region": {"control", "candidate"},
            "by-version": {"control", "candidate", "internal"},
            "by-account": {"control", "candidate"},
            "by-numbers": {"control", "candidate"},
            "refs-and-kills": {"control", "green"},
            "fall-through": {"control", "candidate"},
        }
        assert {Reason.TARGETING_MATCH, Reason.DEFAULT} <= reasons
    finally:
        flagd_log.setLevel(level)
        api.clear_providers()
        ours.close()


def test_served_targeting_uses_the_rule_then_the_weights_and_sends_killed_to_default() -> None:
    held = states()
    rule = served_targeting(held["refs-and-kills"])
    assert rule is not None
    # nz is oceania -> blue, which is killed: served the default.
    assert evaluate("refs-and-kills", rule, "k", {"region": "nz"}) == "control"
    # A region that names no variant falls through to the weights (green/control/blue-killed).
    for key in (str(i) for i in range(200)):
        got = evaluate("refs-and-kills", rule, key, {"region": "us"})
        assert got in {"green", "control"}
    definition = flag_definition(held["by-region"])
    assert definition["targeting"]["if"][-1] == {"fractional": [["candidate", 20], ["control", 80]]}


def test_a_pin_overrides_the_rule() -> None:
    state = states()["by-region"]
    pinned = state.model_copy(
        update={
            "pinned": Pin(variant="candidate", weights={"control": 80, "candidate": 20}),
            "variants": {
                "control": state.variants["control"].model_copy(update={"weight": 0}),
                "candidate": state.variants["candidate"].model_copy(update={"weight": 100}),
            },
        }
    )
    assert served_targeting(pinned) == {"fractional": [["candidate", 100]]}


def test_expanded_refs_reach_the_flag_state() -> None:
    state = states()["by-version"]
    assert state.targeting is not None
    assert state.targeting["if"][0] == {"ends_with": [{"var": "email"}, "@example.com"]}


GOOD = """\
flags:
  ranker:
    default: control
    variants:
      control:   {weight: 90, value: ranker-v1}
      candidate: {weight: 10, value: ranker-v2}
    targeting:
      if:
        - {in: [{var: region}, [nz, au]]}
        - candidate
        - null
"""

BAD_RULES = [
    (
        "unknown-operator",
        GOOD.replace("{in: [", "{inn: ["),
        [":9: flags.ranker.targeting.if[0].inn", "unknown operator 'inn'", "known:", "sem_ver"],
    ),
    (
        "unknown-variant",
        GOOD.replace("- candidate", "- candidat"),
        [
            ":10: flags.ranker.targeting.if[1]",
            "variant 'candidat' does not exist",
            "known: control, candidate",
        ],
    ),
    (
        "wrong-arity",
        GOOD.replace("{in: [{var: region}, [nz, au]]}", "{in: [{var: region}]}"),
        [":9: flags.ranker.targeting.if[0].in", "'in' takes exactly 2 arguments, got 1"],
    ),
    (
        "sem-ver-arity",
        GOOD.replace("{in: [{var: region}, [nz, au]]}", '{sem_ver: [{var: v}, ">="]}'),
        [":9: flags.ranker.targeting.if[0].sem_ver", "exactly 3 arguments, got 2"],
    ),
    (
        "fractional-unknown-variant",
        GOOD.replace("- candidate", "- fractional: [[control, 50], [canary, 50]]"),
        [":10: flags.ranker.targeting.if[1].fractional[1][0]", "variant 'canary' does not exist"],
    ),
    (
        "unknown-ref",
        GOOD.replace("- {in: [{var: region}, [nz, au]]}", "- {$ref: oceana}"),
        [":9: flags.ranker.targeting.if[0].$ref", "unknown evaluator 'oceana'", "none defined"],
    ),
    (
        "ref-to-missing-variant",
        "$evaluators:\n  pick: {if: [true, canary]}\n"
        + GOOD.replace(
            "- {in: [{var: region}, [nz, au]]}\n        - candidate",
            "- true\n        - {$ref: pick}",
        ),
        [
            "flags.ranker.targeting.if[1].$ref.if[1]",
            "variant 'canary' does not exist",
            "through $evaluators.pick",
        ],
    ),
    (
        "boolean-result-without-its-variant",
        GOOD.replace("- candidate", "- true"),
        [
            ":10: flags.ranker.targeting.if[1]",
            "variant 'true' does not exist (true names it, as in flagd)",
            "known: control, candidate",
        ],
    ),
    (
        "comparison-as-the-result",
        GOOD.split("    targeting:")[0] + "    targeting: {in: [{var: region}, [nz, au]]}\n",
        [
            ":7: flags.ranker.targeting.in",
            "variant 'true' or 'false' does not exist ('in' yields one",
            "if: [<this>, <variant>, null]",
        ],
    ),
    (
        "comparison-as-the-result-through-a-ref",
        "$evaluators:\n  staff: {ends_with: [{var: email}, '@example.com']}\n"
        + GOOD.replace("- {in: [{var: region}, [nz, au]]}\n        - candidate", "- true").replace(
            "- null", "- {$ref: staff}"
        ),
        [
            ":12: flags.ranker.targeting.if[1].$ref.ends_with",
            "variant 'true' or 'false' does not exist ('ends_with' yields one",
            "(through $evaluators.staff)",
        ],
    ),
    (
        "evaluator-cycle",
        "$evaluators:\n  a: {$ref: b}\n  b: {$ref: a}\n" + GOOD,
        [":2: $evaluators.a", "cycle: a -> b -> a"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in BAD_RULES], ids=[c[0] for c in BAD_RULES]
)
def test_bad_rule_is_rejected_by_validate(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    problems = [line for line in result.stderr.splitlines() if not line.endswith("problem)")]
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(path)), problems
    for fragment in expected:
        assert fragment in problems[0], (fragment, problems[0])


def test_good_rules_validate(tmp_path: Path) -> None:
    for text in (GOOD, CONFIG, BOOLEAN):
        path = tmp_path / "flags.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        result = CliRunner().invoke(main, ["validate", str(path)])
        assert result.exit_code == 0, result.output


def test_a_kill_keeps_the_rule_and_a_reload_replaces_it() -> None:
    config = parse_config(GOOD, "flags.yaml")
    state = initial_state("ranker", config.flags["ranker"])
    assert state.targeting == {"if": [{"in": [{"var": "region"}, ["nz", "au"]]}, "candidate", None]}
    assert reconcile(state, config.flags["ranker"], 1.0) is None
    changed = parse_config(GOOD.replace("[nz, au]", "[nz]"), "flags.yaml").flags["ranker"]
    reloaded = reconcile(state, changed, 2.0)
    assert reloaded is not None
    assert reloaded.targeting == {"if": [{"in": [{"var": "region"}, ["nz"]]}, "candidate", None]}
    assert "targeting updated" in reloaded.cause.reason
    kill = Command(action=CommandAction.KILL, flag="ranker", variant="candidate", actor="t")
    killed = transition(reloaded, changed, kill, 3.0)
    assert killed is not None
    assert killed.targeting == reloaded.targeting
    assert killed.variants["candidate"].killed
    # The rule sends nz to the candidate; killed, nz gets the default, like everyone else.
    client = DriftswitchClient("127.0.0.1:1")
    try:
        client.apply(killed)
        assert {client.variant("ranker", str(i), {"region": "nz"}) for i in range(50)} == {
            "control"
        }
    finally:
        client.close()


BOOLEAN = """\
flags:
  beta:
    default: "false"
    variants:
      "true":  {weight: 30, value: ON}
      "false": {weight: 70, value: OFF}
    targeting:
      if:
        - {==: [{var: tier}, pro]}
        - true
        - {var: wanted}
"""

#: What ``wanted`` may be: booleans name a variant in flagd, as does the string "true"; numbers,
#: other spellings and null do not (flagd's core names ``1`` "1", not "true"): the weights decide.
WANTED: list[Any] = [True, False, 1, 0, 1.0, 0.0, "true", "True", "FALSE", None, [True], "nope"]


def test_a_boolean_result_names_the_true_or_false_variant_as_flagd_does(tmp_path: Path) -> None:
    # The oracle: flagd's own core given the flag's rule as written (no driftswitch wrapping),
    # through openfeature-provider-flagd in file mode.
    state = initial_state("beta", parse_config(BOOLEAN, "flags.yaml").flags["beta"])
    raw = tmp_path / "raw.json"
    raw.write_text(
        json.dumps(
            {
                "flags": {
                    "beta": {
                        "state": "ENABLED",
                        "variants": {"true": "ON", "false": "OFF"},
                        "defaultVariant": "false",
                        "targeting": state.targeting,
                    }
                }
            }
        )
    )
    weights = served_targeting(state.model_copy(update={"targeting": None}))
    assert weights == {"fractional": [["true", 30], ["false", 70]]}
    ours = DriftswitchClient("127.0.0.1:1")
    flagd_log = logging.getLogger("openfeature.contrib")
    level = flagd_log.level
    flagd_log.setLevel(logging.CRITICAL)  # flagd logs every result that names no variant
    try:
        assert ours.apply(state)
        flagd = ready_client(
            "boolean-raw",
            FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(raw)),
        )
        served: dict[str, set[str]] = {}
        for i in range(600):
            key = f"user-{i}"
            wanted = WANTED[i % len(WANTED)]
            attributes = {"tier": "pro" if i % 7 == 0 else "free", "wanted": wanted}
            context = EvaluationContext(key, attributes)
            theirs = flagd.get_string_details("beta", "fallback", context)
            expected = (
                theirs.variant
                if theirs.reason == Reason.TARGETING_MATCH
                else evaluate("beta", weights, key, attributes)
            )
            got = ours.resolve("beta", key, attributes)
            assert (got.variant, repr(wanted), attributes["tier"]) == (
                expected,
                repr(wanted),
                attributes["tier"],
            )
            assert got.reason == "targeting"
            served.setdefault(repr(wanted) if attributes["tier"] == "free" else "pro", set()).add(
                str(got.variant)
            )
        # Every kind of result was met: booleans name their variant, everything else splits.
        assert served["pro"] == served["True"] == served["'true'"] == {"true"}
        assert served["False"] == {"false"}
        for other in ("1", "0", "1.0", "0.0", "'True'", "'FALSE'", "None", "[True]", "'nope'"):
            assert served[other] == {"true", "false"}, other
        # A kill of "true" sends the users a boolean true names to the default, as any kill.
        kill = Command(action=CommandAction.KILL, flag="beta", variant="true", actor="t")
        killed = transition(state, parse_config(BOOLEAN, "flags.yaml").flags["beta"], kill, 1.0)
        assert killed is not None
        assert ours.apply(killed)
        assert {ours.variant("beta", f"u{i}", {"tier": "pro"}) for i in range(50)} == {"false"}
    finally:
        flagd_log.setLevel(level)
        api.clear_providers()
        ours.close()
