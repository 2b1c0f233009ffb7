"""Per-segment guardrails (streams/pipeline/segments.py): segments, bounds, the segment kill,
restore with a segment, state round trips, and adversarial attributes."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import orjson
import pytest

from driftswitch.streams.config.model import ConfigError, parse_config
from driftswitch.streams.contract.commands import Command, CommandError
from driftswitch.streams.contract.errors import EventError
from driftswitch.streams.contract.events import (
    AlertEvent,
    FlagChangeEvent,
    OutcomeEvent,
    PredictionEvent,
    decode_line,
)
from driftswitch.streams.contract.flagd import flag_definition
from driftswitch.streams.contract.targeting import evaluate, served_targeting, variant_name
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.segments import MAX_VALUE_LENGTH, extract, split_spec

CONFIG = """
flags:
  ranker:
    default: control
    variants:
      control:   {weight: 50, value: v1}
      candidate: {weight: 50, value: v2}
    guardrails:
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.70, arl0: 10000}
        min_samples: 50
        segment_by: [attributes.region]
        max_segments: MAXSEG
        metric_segments: [jp, us]
        action: ACTION
"""


def config(action: str = "kill", max_segments: int = 10) -> Any:
    return parse_config(
        CONFIG.replace("ACTION", action).replace("MAXSEG", str(max_segments)), "seg.yaml"
    )


def stream(
    n: int,
    bad: str = "jp",
    regions: tuple[str, ...] = ("us", "de", "jp"),
    seed: int = 1,
    attrs: Any = None,
    prefix: str = "r",
    t0: float = 1000.0,
) -> list[PredictionEvent | OutcomeEvent]:
    """Predictions and their outcomes; the candidate is 90 % right, 50 % in region ``bad``.
    The candidate serves the first request of each region (segments appear in that order)."""
    rng = random.Random(seed)
    out: list[PredictionEvent | OutcomeEvent] = []
    for i in range(n):
        region = regions[i % len(regions)]
        variant = "candidate" if rng.random() < 0.5 or i < len(regions) else "control"
        p_right = 0.5 if (variant == "candidate" and region == bad) else 0.9
        ts = t0 + i
        attributes = {"region": region} if attrs is None else attrs(i)
        out.append(
            PredictionEvent(
                request_id=f"{prefix}{i}",
                flag="ranker",
                variant=variant,
                ts=ts,
                prediction=1,
                attributes=attributes,
            )
        )
        label = int(rng.random() < p_right)
        out.append(OutcomeEvent(request_id=f"{prefix}{i}", ts=ts + 0.5, label=label))
    return out


def changes(engine: Engine, events: list[Any], batch: int = 97) -> list[Any]:
    got = []
    for start in range(0, len(events), batch):
        got += [e.event for e in engine.process(events[start : start + batch]).outputs]
    return got


def served(state: FlagChangeEvent, key: str, region: str | None) -> str | None:
    rule = served_targeting(state)
    assert rule is not None
    attrs = {"region": region} if region is not None else {}
    name = variant_name(evaluate(state.flag, rule, key, attrs))
    return name if name in state.variants else state.default_variant


def test_a_bad_segment_is_killed_there_only() -> None:
    engine = Engine(config())
    out = changes(engine, stream(6000))
    kills = [e for e in out if isinstance(e, FlagChangeEvent)]
    assert len(kills) == 1
    state = kills[0]
    assert state.segments[0].match == {"region": "jp"}
    assert state.segments[0].variant == "candidate"
    assert state.variants["candidate"].weight == 50
    assert not state.variants["candidate"].killed
    cause = state.cause
    assert cause.segment == {"region": "jp"}
    assert cause.guardrail == "candidate-accuracy"
    assert "region=jp" in (cause.reason or "")
    assert cause.samples["candidate"] >= 50
    assert cause.statistic is not None
    assert cause.threshold is not None
    assert cause.statistic >= cause.threshold
    # jp users get the default; elsewhere the split still serves the candidate to about half.
    keys = [f"user-{i}" for i in range(400)]
    assert {served(state, k, "jp") for k in keys} == {"control"}
    for region in ("us", "de", None, "fr"):
        got = [served(state, k, region) for k in keys]
        assert 150 < got.count("candidate") < 250, region
    # The flagd document carries the same expression.
    assert flag_definition(state)["targeting"] == served_targeting(state)
    summary = engine.snapshot()["flags"]["ranker"]["guardrails"]["candidate-accuracy"]  # type: ignore[index,call-overload]
    assert summary["segments"]["region=jp"]["breaches"] >= 1  # the stream keeps sending jp
    assert summary["segments"]["region=us"]["breaches"] == 0
    # Exported per segment: the allowlisted jp and us by name, de in `other`.
    segs, exported = summary["segments"], summary["metric_segments"]
    assert exported == {
        name: {
            "samples": segs[f"region={region}"]["samples"]["candidate"],
            "breaches": segs[f"region={region}"]["breaches"],
        }
        for name, region in (("jp", "jp"), ("us", "us"), ("other", "de"))
    }


@pytest.mark.slow  # 6,000 events replayed at four batch sizes, with restarts
def test_batching_and_restarts_decide_alike() -> None:
    events = stream(6000)
    whole = Engine(config())
    expected = [e.model_dump() for e in changes(whole, events, batch=len(events))]
    for batch in (1, 13, 500):
        engine = Engine(config())
        got = []
        for start in range(0, len(events), batch):
            got += [
                e.event.model_dump() for e in engine.process(events[start : start + batch]).outputs
            ]
            if start % (batch * 7) == 0:  # restart from a snapshot now and then
                engine = Engine.from_state(config(), orjson.loads(orjson.dumps(engine.to_state())))
        assert got == expected, batch
    assert expected


def test_warn_names_the_segment() -> None:
    out = changes(Engine(config("warn")), stream(6000))
    alerts = [e for e in out if isinstance(e, AlertEvent)]
    assert alerts
    assert all(a.cause.segment == {"region": "jp"} for a in alerts)


def test_max_segments_overflow_goes_to_other() -> None:
    engine = Engine(config(max_segments=3))
    regions = tuple(f"r{i}" for i in range(20))
    events = stream(2000, bad="none", regions=regions)
    engine.process(events)
    g = engine.snapshot()["flags"]["ranker"]["guardrails"]["candidate-accuracy"]  # type: ignore[index,call-overload]
    assert set(g["segments"]) == {"region=r0", "region=r1", "region=r2", "other"}
    # Every candidate observation from the regions after the first three, and only those.
    beyond = sum(
        1
        for e in events
        if isinstance(e, PredictionEvent)
        and e.variant == "candidate"
        and e.attributes["region"] not in ("r0", "r1", "r2")
    )
    assert beyond > 0
    assert g["overflow"] == beyond
    assert g["segments"]["other"]["samples"]["candidate"] == beyond
    assert g["invalid"] == 0


def test_a_bad_other_bucket_excludes_the_tracked_segments() -> None:
    engine = Engine(config(max_segments=2))
    regions = ("us", "de", "jp", "kr")  # jp and kr fall in `other`; only they are bad
    rng = random.Random(5)
    events = stream(8000, bad="none", regions=regions)
    for ev in events:  # make jp and kr bad for the candidate
        if isinstance(ev, OutcomeEvent):
            i = int(ev.request_id[1:])
            if regions[i % 4] in ("jp", "kr") and rng.random() < 0.45:
                object.__setattr__(ev, "label", 0)
    out = [e for e in changes(engine, events) if isinstance(e, FlagChangeEvent)]
    assert out
    o = out[0].segments[0]
    assert o.match is None
    assert o.exclude == [{"region": "us"}, {"region": "de"}]
    assert out[0].cause.segment == {}
    assert served(out[0], "u1", "jp") == "control"
    assert served(out[0], "u1", None) == "control"
    assert {served(out[0], f"u{i}", "us") for i in range(100)} == {"control", "candidate"}


def test_restore_with_a_segment() -> None:
    engine = Engine(config())
    changes(engine, stream(6000))
    state = engine.state("ranker")
    assert state.segments
    cmd = Command(action="restore", flag="ranker", variant="candidate", segment={"region": "jp"})
    out = engine.apply_command(cmd, 99999.0)
    assert out is not None
    assert out.segments == []
    assert out.cause.segment == {"region": "jp"}
    assert engine.apply_command(cmd, 99999.0) is None  # nothing left to restore
    kill = Command(action="kill", flag="ranker", variant="candidate", segment={"region": "de"})
    out = engine.apply_command(kill, 100000.0)
    assert out is not None
    assert out.segments[0].match == {"region": "de"}
    assert served(out, "u", "de") == "control"
    with pytest.raises(CommandError):
        engine.apply_command(
            Command(action="kill", flag="ranker", variant="control", segment={"region": "de"}),
            100001.0,
        )
    with pytest.raises(ValueError, match="only for kill and restore"):
        Command(action="pause", flag="ranker", segment={"region": "de"})


def test_config_checks() -> None:
    bad = CONFIG.replace("ACTION", "shift").replace("MAXSEG", "5")
    bad = bad.replace("[attributes.region]", "[region]")
    with pytest.raises(ConfigError) as err:
        parse_config(bad, "seg.yaml")
    text = str(err.value)
    assert "seg.yaml:" in text
    assert "segment_by[0]: expected attributes.<name>" in text
    assert "does warn, hold or kill" in text


def test_alpha_is_split_and_arl0_kept() -> None:
    spec = split_spec({"kind": "sequential", "alpha": 0.05, "higher_is_better": True}, 21)
    assert spec["alpha"] == pytest.approx(0.05 / 21)
    assert split_spec({"kind": "cusum", "arl0": 1000}, 21)["arl0"] == 1000


@pytest.mark.slow  # 10,000 distinct values and 1 MB strings through the engine
def test_adversarial_attributes_are_bounded() -> None:
    """10,000 distinct values, 1 MB strings, non-string types: counted, bounded, never a crash;
    nested objects are rejected by the decoder with a clear reason."""
    big = "x" * (1 << 20)
    kinds: list[Any] = [
        lambda i: {"region": f"value-{i}"},  # 10,000 distinct values
        lambda i: {"region": big},  # 1 MB strings
        lambda i: {"region": i},  # numbers
        lambda i: {"region": i % 2 == 0},  # booleans
        lambda i: {"region": 0.5 * i},  # floats
        lambda i: {},  # missing
    ]
    engine = Engine(config(max_segments=20))
    candidates = []  # per kind, the candidate's observations
    tracemalloc.start()
    for n, make in enumerate(kinds):
        events = stream(10_000, bad="none", attrs=make, prefix=f"k{n}-", t0=1000.0 + 20_000 * n)
        engine.process(events)
        candidates.append(
            sum(1 for e in events if isinstance(e, PredictionEvent) and e.variant == "candidate")
        )
        del events
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    g = engine.snapshot()["flags"]["ranker"]["guardrails"]["candidate-accuracy"]  # type: ignore[index,call-overload]
    assert len(g["segments"]) == 21  # 20 segments and other
    # Every candidate observation beyond the first 20 values overflowed; the other kinds are
    # invalid (too long, not a string, missing).
    assert g["overflow"] == candidates[0] - 20
    assert g["invalid"] == sum(candidates[1:])
    assert g["overflow"] > 4000
    assert g["invalid"] > 5 * 4000
    # The join holds only bounded values: no 1 MB string survives in the state.
    state = orjson.dumps(engine.to_state())
    assert len(state) < 1 << 20  # 91 KB when measured: bounded, whatever the attributes held
    assert big not in state.decode()
    assert peak < 100 * (1 << 20)  # the events themselves included (24 MB when measured)
    longest = "y" * MAX_VALUE_LENGTH
    assert extract({"region": longest}, ["region"]) == [longest]
    assert extract({"region": longest + "y", "plan": 3}, ["region", "plan"]) == [None, None]
    nested = (
        '{"kind":"prediction","request_id":"n1","flag":"ranker","variant":"control",'
        '"ts":1000,"prediction":1,"attributes":{"region":{"deep":["x"]}}}'
    )
    with pytest.raises(EventError) as err:
        decode_line(nested)
    assert err.value.reason == "schema"
    assert "attributes" in str(err.value)


def test_a_config_reload_keeps_the_segment_kill_and_the_detectors() -> None:
    engine = Engine(config())
    changes(engine, stream(6000))
    before = engine.state("ranker")
    assert before.segments
    guard = engine.to_state()["flags"]["ranker"]["monitors"]["candidate-accuracy"]  # type: ignore[index,call-overload]
    engine.reconfigure(config(), ts=99999.0)
    assert engine.state("ranker").segments == before.segments
    after = engine.to_state()["flags"]["ranker"]["monitors"]["candidate-accuracy"]  # type: ignore[index,call-overload]
    assert after == guard
    # A changed segment guardrail starts afresh (its detectors), the override stays.
    engine.reconfigure(config(max_segments=5), ts=99999.0)
    assert engine.state("ranker").segments == before.segments
    fresh = engine.snapshot()["flags"]["ranker"]["guardrails"]["candidate-accuracy"]  # type: ignore[index,call-overload]
    assert fresh["segments"] == {}


def test_hold_pauses_the_flag_and_names_the_segment() -> None:
    out = changes(Engine(config("hold")), stream(6000))
    holds = [e for e in out if isinstance(e, FlagChangeEvent)]
    assert len(holds) == 1
    assert holds[0].paused
    assert holds[0].segments == []
    assert holds[0].cause.segment == {"region": "jp"}


def test_the_example_backtest_is_what_the_readme_shows() -> None:
    from pathlib import Path

    from driftswitch.streams.config.model import load_config
    from driftswitch.streams.pipeline import backtest

    root = Path(__file__).resolve().parents[2]
    result = backtest.run(
        load_config(root / "examples" / "segments.yaml"),
        root / "examples" / "segments-events.jsonl",
    )
    assert result.bad_lines == []
    [(line, kill)] = result.outputs
    assert isinstance(kill, FlagChangeEvent)
    assert kill.cause.segment == {"region": "jp"}
    assert [(o.variant, o.match) for o in kill.segments] == [("candidate", {"region": "jp"})]
    assert kill.variants["candidate"].weight == 50
    readme = (root / "README.md").read_text()
    assert f"  line {line}: {kill.cause.reason}".split(" only:")[0] in readme
    assert f"{kill.cause.statistic:.4g}" in readme
