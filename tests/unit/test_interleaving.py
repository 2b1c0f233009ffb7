"""Team-draft interleaving, click credit, the interleaving detector and its config rules."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftswitch.detectors import registry
from driftswitch.detectors.interleaving import Interleaving, log_mixture, prior_a
from driftswitch.streams.client.client import DriftswitchClient
from driftswitch.streams.config.model import load_config, parse_config
from driftswitch.streams.contract.errors import ConfigError
from driftswitch.streams.contract.events import (
    FlagChangeEvent,
    OutcomeEvent,
    Placement,
    PredictionEvent,
)
from driftswitch.streams.contract.interleave import credit, seed, team_draft
from driftswitch.streams.pipeline.backtest import decode_chunk
from driftswitch.streams.pipeline.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
A = [f"a{i}" for i in range(10)]
B = [f"b{i}" for i in range(10)]

# ---------------------------------------------------------------------------- team-draft


def test_same_request_same_list_and_dict_order_does_not_matter() -> None:
    one = team_draft({"x": A, "y": B}, 6, flag="f", request_id="r-9")
    two = team_draft({"y": B, "x": A}, 6, flag="f", request_id="r-9")
    assert one == two
    assert seed("f", "r-9") == seed("f", "r-9") != seed("f", "r-10")


def test_the_draw_depends_on_the_request() -> None:
    firsts = Counter(
        team_draft({"x": A, "y": B}, 1, flag="f", request_id=f"r{i}")[0][1] for i in range(2000)
    )
    # A fair coin for the first pick: 2,000 draws land within 4 standard deviations of 1,000.
    assert abs(firsts["x"] - 1000) < 4 * math.sqrt(500)


def test_teams_alternate_in_rounds() -> None:
    for i in range(200):
        merged = team_draft({"x": A, "y": B}, 10, flag="f", request_id=str(i))
        teams = [t for _, t in merged]
        for r in range(0, 10, 2):  # each round: one pick per team, in a random order
            assert sorted(teams[r : r + 2]) == ["x", "y"]
        # Each team's items keep their own ranking's order.
        assert [it for it, t in merged if t == "x"] == A[:5]


def test_an_item_both_rank_is_shown_once_credited_to_the_team_that_placed_it() -> None:
    x = ["shared", "x1", "x2", "x3"]
    y = ["shared", "y1", "y2", "y3"]
    for i in range(100):
        merged = team_draft({"x": x, "y": y}, 4, flag="f", request_id=str(i))
        items = [it for it, _ in merged]
        assert items.count("shared") == 1
        first_team = merged[0][1]
        assert merged[0][0] == "shared"
        # The other team's first pick skips the item already shown.
        other = next(t for _, t in merged if t != first_team)
        other_first = next(it for it, t in merged if t == other)
        assert other_first == ("y1" if other == "y" else "x1")


def test_stops_at_k_and_when_the_team_on_turn_is_exhausted() -> None:
    assert len(team_draft({"x": A, "y": B}, 3, flag="f", request_id="r")) == 3
    short = team_draft({"x": ["x1"], "y": B}, 10, flag="f", request_id="r")
    assert len(short) in (2, 3)  # x picks once; then it is x's turn again and it has nothing
    assert [t for _, t in short].count("x") == 1
    with pytest.raises(ValueError, match="k must be >= 1"):
        team_draft({"x": A}, 0, flag="f", request_id="r")
    with pytest.raises(ValueError, match="at least one team"):
        team_draft({}, 3, flag="f", request_id="r")


def test_a_golden_list() -> None:  # the docstring example of team_draft
    """Any consumer in any process recomputes exactly this list for this flag and request."""
    got = team_draft({"a": ["x", "y", "z"], "b": ["y", "w", "x"]}, 4, flag="f", request_id="r1")
    assert got == [("y", "b"), ("x", "a"), ("w", "b"), ("z", "a")]


# ---------------------------------------------------------------------------- credit

RANKING = [("d1", "x"), ("d2", "y"), ("d3", "x"), ("d4", "y")]


@pytest.mark.parametrize(
    ("items", "positions", "clicks", "outcome"),
    [
        pytest.param(["d1"], [], {"x": 1, "y": 0}, 0.0, id="win"),
        pytest.param(["d2", "d4"], [], {"x": 0, "y": 2}, 1.0, id="loss"),
        pytest.param([], [], {"x": 0, "y": 0}, 0.5, id="no-click-tie"),
        pytest.param(["d1"], [1], {"x": 1, "y": 1}, 0.5, id="one-each-tie"),
        pytest.param(["d1"], [0], {"x": 1, "y": 0}, 0.0, id="same-click-twice-counts-once"),
        pytest.param([], [2, 3, 0], {"x": 2, "y": 1}, 0.0, id="positions"),
    ],
)
def test_credit(
    items: list[str], positions: list[int], clicks: dict[str, int], outcome: float
) -> None:
    got = credit(RANKING, items, positions)
    assert got.error is None
    assert got.clicks == clicks
    assert got.outcome("x", "y") == outcome


def test_credit_refuses_clicks_on_what_was_not_shown() -> None:
    assert credit(RANKING, ["d9"]).error == "clicked item 'd9' was not shown"
    assert credit(RANKING, [], [4]).error == "clicked position 4 was not shown (4 shown)"
    # An impression without one of the teams does not compare them.
    assert credit(RANKING, ["d1"]).outcome("x", "z") is None


# ---------------------------------------------------------------------------- detector


def test_log_mixture_is_the_product_of_predictive_ratios() -> None:
    """The closed form equals the running product of the Beta posterior's predictive
    probability over ``p`` (the martingale the guarantee rests on)."""
    a, p = prior_a(0.05, 1000), 0.5
    rng = random.Random(1)
    w = lo = 0
    log_m = 0.0
    for _ in range(300):
        won = rng.random() < 0.6
        pred = (a + w) / (2 * a + w + lo) if won else (a + lo) / (2 * a + w + lo)
        log_m += math.log(pred) - math.log(p if won else 1 - p)
        w, lo = (w + 1, lo) if won else (w, lo + 1)
        assert log_m == pytest.approx(log_mixture(w, lo, p, a), abs=1e-9)


def test_harm_edge_interval_and_evidence() -> None:
    det = Interleaving(alpha=0.05, tuning_n=200)
    det.update(0.5)
    assert not det.drift_detected
    assert det.interval == (0.0, 1.0)
    alarms = []
    for i in range(400):
        det.update(1.0 if i % 3 else 0.0)  # loses two impressions in three
        if det.drift_detected:  # the edge: harm newly declared
            assert det.harm
            alarms.append(i)
    assert alarms[0] == 86  # first harm after 87 impressions (29 wins, 58 losses)
    assert det.harm
    assert det.harm
    lo, hi = det.interval
    assert lo < det.win_rate < hi < 0.5  # type: ignore[operator]
    ev = det.explain()
    assert ev["decision"] == "harm"
    assert (ev["wins"], ev["losses"], ev["ties"]) == (134, 266, 1)
    assert ev["interval"] == [lo, hi]
    # Restored from JSON, it continues identically.
    clone = registry.restore(json.loads(json.dumps(det.to_state())))
    for x in (0.0, 1.0, 0.5, 1.0):
        det.update(x)
        clone.update(x)
        assert clone.explain() == det.explain()


def test_superiority_and_non_inferiority() -> None:
    det = Interleaving(alpha=0.05, margin=0.05, tuning_n=500)
    rng = random.Random(4)
    while not det.non_inferior:
        det.update(0.0 if rng.random() < 0.52 else 1.0)
    assert not det.superior
    assert not det.harm
    assert det.interval[0] > 0.45
    while not det.superior:
        det.update(0.0 if rng.random() < 0.6 else 1.0)
    assert det.interval[0] > 0.5
    assert det.explain()["decision"] == "superior"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"alpha": 0}, r"alpha must be a number in \(0, 1\)"),
        ({"margin": 0.5}, r"margin must be a number in \[0, 0.5\)"),
        ({"tuning_n": 5}, "tuning_n must be an integer >= 10"),
    ],
)
def test_bad_parameters(params: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        registry.create({"kind": "interleaving", **params})
    with pytest.raises(ValueError, match=r"0 \(win\), 1 \(loss\) or 0\.5"):
        Interleaving().update(0.3)


def _aa_false_positive_rate(runs: int, impressions: int, alpha: float) -> float:
    """A/A: two equal rankers, so every non-tied impression is a fair coin; the detector is
    checked after every impression. Returns the share of runs that ever declared harm or
    superiority."""
    rng = np.random.default_rng(2026)
    fired = 0
    for _ in range(runs):
        det = Interleaving(alpha=alpha, tuning_n=1000)
        for x in rng.integers(0, 2, impressions):
            det.update(float(x))
            if det.harm or det.superior:
                fired += 1
                break
    return fired / runs


def test_aa_false_positives_stay_below_alpha() -> None:
    assert _aa_false_positive_rate(200, 500, alpha=0.05) <= 0.05


@pytest.mark.slow
def test_aa_false_positives_stay_below_alpha_over_1000_runs() -> None:
    assert _aa_false_positive_rate(1000, 3000, alpha=0.05) <= 0.05


# ---------------------------------------------------------------------------- config

BASE = """
flags:
  search:
    default: control
    variants:
      control:   {weight: 50, value: v1}
      candidate: {weight: 50, value: v2}
    guardrails:
      - name: g
        variant: candidate
"""


@pytest.mark.parametrize(
    ("rest", "message"),
    [
        pytest.param(
            "        metric: interleaving\n        detector: {kind: interleaving}\n"
            "        action: kill\n",
            "<config>:9: flags.search.guardrails[0].compare_to: metric 'interleaving' compares",
            id="no-compare-to",
        ),
        pytest.param(
            "        compare_to: control\n        metric: interleaving\n"
            "        detector: {kind: sequential}\n        action: kill\n",
            "detector 'sequential' does not take preference input, which metric 'interleaving' "
            "produces; detectors that do: interleaving",
            id="wrong-detector",
        ),
        pytest.param(
            "        metric: accuracy\n        detector: {kind: interleaving}\n"
            "        action: kill\n",
            "detector 'interleaving' does not take bernoulli input",
            id="detector-on-another-metric",
        ),
        pytest.param(
            "        compare_to: control\n        metric: interleaving\n"
            "        detector: {kind: interleaving, margin: 0.7}\n        action: kill\n",
            "margin must be a number in [0, 0.5)",
            id="bad-margin",
        ),
    ],
)
def test_config_errors(rest: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + rest)
    assert any(message in p for p in info.value.problems), info.value.problems


def test_the_example_config_loads() -> None:
    config = load_config(ROOT / "examples" / "interleaving.yaml")
    (g,) = config.flags["search"].guardrails
    assert (g.metric.value, g.compare_to, g.detector.kind) == (
        "interleaving",
        "control",
        "interleaving",
    )


# ---------------------------------------------------------------------------- engine

EXAMPLES = ROOT / "schemas" / "examples" / "interleaving"
EXPECTED = {
    "unknown-team": "unknown_variant",
    "click-not-shown": "click_not_shown",
    "click-position-not-shown": "click_not_shown",
    "duplicate-item": "duplicate_item",
    "empty-list": "schema",
    "clicks-for-a-label-prediction": "outcome_mismatch",
}


def _replay(path: Path) -> tuple[Engine, list[str]]:
    engine = Engine(load_config(ROOT / "examples" / "interleaving.yaml"))
    events, errors = decode_chunk(path.read_bytes().splitlines())
    result = engine.process(events)
    return engine, [e.reason for _, e in errors] + [r.reason for r in result.rejections]


def test_every_invalid_example_has_an_expected_reason() -> None:
    assert {p.stem for p in (EXAMPLES / "invalid").glob("*.jsonl")} == set(EXPECTED)


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES / "invalid").glob("*.jsonl")), ids=lambda p: p.stem
)
def test_invalid_example_is_rejected_with_its_reason(path: Path) -> None:
    _, reasons = _replay(path)
    assert reasons == [EXPECTED[path.stem]]


def test_valid_example_credits_a_win_a_loss_and_a_tie() -> None:
    engine, reasons = _replay(EXAMPLES / "valid" / "win-loss-tie.jsonl")
    assert reasons == []
    detector = engine._flags["search"].monitors[0].detector
    assert (detector.wins, detector.losses, detector.ties) == (1, 1, 1)
    status = engine.snapshot()["flags"]["search"]["guardrails"]["candidate-interleaved"]  # type: ignore[call-overload,index]
    assert status["samples"] == {"candidate": 3, "control": 3}
    assert status["state"] == "no decision yet"


# ---------------------------------------------------------------------------- rollout gate

ROLLOUT = """
flags:
  search:
    default: control
    variants:
      control:   {weight: 90, value: v1}
      candidate: {weight: 10, value: v2}
    rollout:
      variant: candidate
      steps: [10, 50, 100]
      metric: interleaving
      min_samples: 50
      margin: MARGIN
"""


def _impressions(n: int, win_share: float, seed: int) -> list[PredictionEvent | OutcomeEvent]:
    """``n`` interleaved impressions with one click each, on the candidate's item with
    probability ``win_share`` (a win), else on control's (a loss)."""
    rng = random.Random(seed)
    shown = [Placement(item="c1", team="candidate"), Placement(item="k1", team="control")]
    events: list[PredictionEvent | OutcomeEvent] = []
    for i in range(n):
        ts = 1_000.0 + i
        events.append(
            PredictionEvent(
                request_id=f"r{i}", flag="search", variant="candidate", ts=ts, ranking=shown
            )
        )
        click = "c1" if rng.random() < win_share else "k1"
        events.append(OutcomeEvent(request_id=f"r{i}", ts=ts + 0.5, clicks=[click]))
    return events


def test_a_rollout_advances_on_superiority_and_completes() -> None:
    engine = Engine(parse_config(ROLLOUT.replace("MARGIN", "0.0")))
    out = engine.process(_impressions(2000, 0.7, seed=1)).outputs
    changes = [o.event for o in out if isinstance(o.event, FlagChangeEvent)]
    assert [(c.cause.action.value, c.variants["candidate"].weight) for c in changes] == [
        ("advance", 50),
        ("advance", 100),
    ]
    cause = changes[0].cause
    assert (cause.kind.value, cause.metric, cause.detector) == (
        "rollout",
        "interleaving",
        "interleaving",
    )
    assert cause.threshold == 0.5
    assert cause.interval is not None
    assert cause.interval[0] > 0.5  # superiority: the whole interval above one half
    comparison = cause.evidence["comparison"]
    assert isinstance(comparison, dict)
    assert comparison["decision"] == "superior"
    assert comparison["wins"] > comparison["losses"] > 0  # type: ignore[operator]


def test_a_rollout_kills_a_candidate_that_loses() -> None:
    engine = Engine(parse_config(ROLLOUT.replace("MARGIN", "0.05")))
    out = engine.process(_impressions(2000, 0.3, seed=2)).outputs
    changes = [o.event for o in out if isinstance(o.event, FlagChangeEvent)]
    assert [(c.cause.action.value, c.variants["candidate"].killed) for c in changes] == [
        ("kill", True)
    ]
    assert changes[0].cause.threshold == pytest.approx(0.45)
    assert changes[0].cause.interval is not None
    assert changes[0].cause.interval[1] < 0.45
    # The state survives a restart through plain JSON.
    state = json.loads(json.dumps(engine.to_state()))
    again = Engine.from_state(engine.config, state)
    assert again.snapshot()["flags"] == engine.snapshot()["flags"]


def test_a_rollout_margin_is_in_win_probability_units() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(ROLLOUT.replace("MARGIN", "0.5"))
    assert any(
        "flags.search.rollout.margin: with metric 'interleaving' the margin is in "
        "win-probability units, in [0, 0.5); got 0.5" in p
        for p in info.value.problems
    ), info.value.problems


# ---------------------------------------------------------------------------- client


def _state(weights: dict[str, int], killed: tuple[str, ...] = ()) -> FlagChangeEvent:
    return FlagChangeEvent.model_validate(
        {
            "flag": "search",
            "version": 1,
            "variants": {
                n: {"weight": w, "killed": n in killed, "value": n} for n, w in weights.items()
            },
            "default_variant": "control",
            "cause": {"kind": "manual", "action": "set_weights"},
            "ts": 1_767_225_600.0,
            "actor": "test",
        }
    )


def _recorded(client: DriftswitchClient) -> list[PredictionEvent | OutcomeEvent]:
    """What the client queued, validated as the worker would (the buffer is internal)."""
    out: list[PredictionEvent | OutcomeEvent] = []
    for role, _, payload in client._buffer:
        assert isinstance(payload, dict)
        model = PredictionEvent if role == "predictions" else OutcomeEvent
        out.append(model.model_validate(payload))
    return out


def test_the_client_interleaves_the_assigned_variant_with_the_default() -> None:
    client = DriftswitchClient("127.0.0.1:1", defaults={"search": "control"})
    client.apply(_state({"control": 50, "candidate": 50}))
    rankings = {"control": A, "candidate": B}
    users = [f"user-{i}" for i in range(40)]
    shown = {u: client.interleave("search", u, rankings, k=4, request_id=f"q-{u}") for u in users}
    assert client.record_clicks("q-user-0", [shown["user-0"][0]], positions=[1], ts=5.0)
    events = _recorded(client)
    impressions = [e for e in events if isinstance(e, PredictionEvent)]
    assert len(impressions) == len(users)
    for user, ev in zip(users, impressions, strict=True):
        assert ev.ranking is not None
        assert [p.item for p in ev.ranking] == shown[user]
        assert ev.subject == user
        if client.variant("search", user) == "candidate":
            merged = team_draft(rankings, 4, flag="search", request_id=f"q-{user}")
            assert [(p.item, p.team) for p in ev.ranking] == merged
            assert ev.variant == "candidate"
        else:
            assert shown[user] == A[:4]
            assert {p.team for p in ev.ranking} == {"control"}
    assert {e.variant for e in impressions} == {"control", "candidate"}
    (clicks,) = [e for e in events if isinstance(e, OutcomeEvent)]
    assert (clicks.clicks, clicks.clicked_positions, clicks.label) == (
        [shown["user-0"][0]],
        [1],
        None,
    )


def test_a_killed_candidate_leaves_the_experiment_and_bad_input_never_raises() -> None:
    client = DriftswitchClient("127.0.0.1:1", defaults={"search": "control"})
    client.apply(_state({"control": 100, "candidate": 0}, killed=("candidate",)))
    rankings = {"control": A, "candidate": B}
    assert {
        tuple(client.interleave("search", f"u{i}", rankings, k=3, request_id=f"r{i}"))
        for i in range(30)
    } == {tuple(A[:3])}
    # A last rollout step (the default serves no one): the candidate's list alone.
    client.apply(_state({"control": 0, "candidate": 100}).model_copy(update={"version": 2}))
    assert client.interleave("search", "u1", rankings, k=3, request_id="r") == B[:3]
    # Unknown flag: no state, no default → the first ranking; garbage → never raises.
    assert client.interleave("other", "u1", {"x": ["1", "2"]}, k=5, request_id="r") == ["1", "2"]
    assert client.interleave("search", "u1", {}, k=3, request_id="r") == []
    assert client.interleave("search", "u1", None, k=3, request_id="r") == []  # type: ignore[arg-type]


def test_interleaving_applies_targeting_and_segment_kills_to_the_attributes_given() -> None:
    """A candidate killed in one segment (region=jp) interleaves nobody there, as variant()
    serves it to nobody there; elsewhere the experiment goes on."""
    client = DriftswitchClient("127.0.0.1:1", defaults={"search": "control"})
    kill_in_jp = FlagChangeEvent.model_validate(
        {
            **_state({"control": 50, "candidate": 50}).model_dump(mode="json"),
            "segments": [{"variant": "candidate", "match": {"region": "jp"}}],
        }
    )
    client.apply(kill_in_jp)
    rankings = {"control": A, "candidate": B}
    users = [f"user-{i}" for i in range(200)]

    def shown(region: str) -> list[list[str]]:
        attributes = {"region": region}
        return [
            client.interleave(
                "search", u, rankings, k=4, request_id=f"{region}-{u}", attributes=attributes
            )
            for u in users
        ]

    assert all(items == A[:4] for items in shown("jp"))
    assert {client.variant("search", u, {"region": "jp"}) for u in users} == {"control"}
    jp_impressions = [e for e in _recorded(client) if isinstance(e, PredictionEvent)]
    assert {e.variant for e in jp_impressions} == {"control"}
    assert sum(any(i in B for i in items) for items in shown("us")) > 0


def test_docstring_examples_print_what_they_claim() -> None:
    import doctest

    import driftswitch.detectors.interleaving
    import driftswitch.streams.contract.interleave

    for module in (driftswitch.detectors.interleaving, driftswitch.streams.contract.interleave):
        result = doctest.testmod(module)
        assert result.attempted > 0
        assert result.failed == 0, module.__name__


@pytest.mark.parametrize("action", ["kill", "shift", "hold", "warn"])
def test_a_guardrail_acts_on_harm_with_its_action(action: str) -> None:
    config = parse_config(
        BASE.replace("weight: 50, value: v1", "weight: 60, value: v1").replace(
            "weight: 50, value: v2", "weight: 40, value: v2"
        )
        + "        compare_to: control\n        metric: interleaving\n"
        + "        detector: {kind: interleaving, tuning_n: 200}\n"
        + f"        min_samples: 50\n        action: {action}\n        shift_by: 15\n"
    )
    out = [o.event for o in Engine(config).process(_impressions(300, 0.2, seed=3)).outputs]
    first = out[0]
    assert first.cause.action.value == action
    assert first.cause.evidence["decision"] == "harm"
    assert first.cause.samples == {"candidate": 50, "control": 50}
    if action == "kill":
        assert isinstance(first, FlagChangeEvent)
        assert first.variants["candidate"].killed
    elif action == "shift":
        assert isinstance(first, FlagChangeEvent)
        assert (first.variants["candidate"].weight, first.variants["control"].weight) == (25, 75)
    elif action == "hold":
        assert isinstance(first, FlagChangeEvent)
        assert first.paused
    else:
        assert not isinstance(first, FlagChangeEvent)


def test_the_example_events_kill_the_candidate_in_a_backtest() -> None:
    """What the README promises of ``driftswitch backtest`` on the example events (written by
    ``benchmarks/interleaving.py --write-events``)."""
    from driftswitch.streams.pipeline.backtest import run

    result = run(
        load_config(ROOT / "examples" / "interleaving.yaml"),
        ROOT / "examples" / "interleaving-events.jsonl",
    )
    assert result.bad_lines == []
    (line, kill), *_ = result.outputs
    assert isinstance(kill, FlagChangeEvent)
    assert (line, kill.cause.action.value, kill.variants["candidate"].killed) == (
        1940,
        "kill",
        True,
    )
    evidence = kill.cause.evidence
    assert evidence["wins"] < evidence["losses"]  # type: ignore[operator]
    assert kill.cause.interval is not None
    assert kill.cause.interval[1] < 0.5


def test_an_interleaving_that_keeps_failing_logs_its_traceback_once_then_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A ranking that is not a list of items fails the calls that use it: a plain ranking serves
    # (the first given, truncated), and the log gets one traceback, then a line at 2, 4, 8, ...
    client = DriftswitchClient("127.0.0.1:1", defaults={"search": "control"})
    client.apply(_state({"control": 50, "candidate": 50}))
    rankings: dict[str, Any] = {"control": A, "candidate": 7}
    with caplog.at_level("WARNING", logger="driftswitch.streams.client.client"):
        for i in range(100):
            client.interleave("search", f"user-{i}", rankings, k=4, request_id=f"q-{i}")
    # The calls that fail are those of users assigned the candidate (the others see control's
    # ranking alone): logged at the 1st, 2nd, 4th, ... of them.
    failed = sum(client.variant("search", f"user-{i}") == "candidate" for i in range(100))
    assert failed > 8
    counted = failed.bit_length() - 1  # the powers of two up to ``failed``, after the first
    records = [r for r in caplog.records if "interleaving flag 'search' failed" in r.getMessage()]
    assert [r.exc_info is not None for r in records] == [True] + [False] * counted
    assert records[-1].getMessage() == (
        f"driftswitch: interleaving flag 'search' failed {2**counted} times so far; "
        "serving a plain ranking"
    )
