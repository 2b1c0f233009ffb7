"""The status page's pieces that need no browser: the guardrail traces the engine keeps for its
charts, and the page itself shipped as package data with no reference outside the worker."""

from __future__ import annotations

import re

from driftswitch.streams.config import budget
from driftswitch.streams.config.model import detector_spec, parse_config
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.monitor import TRACE_POINTS
from driftswitch.streams.service.page import build_status, page_html
from driftswitch.streams.tools.simulate import Scenario, config_yaml, simulate

GUARDRAIL = """\
      - name: acc
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 10000}
        min_samples: 50
        action: warn
"""


def test_each_flush_adds_one_trace_point_with_the_statistic_then() -> None:
    scenario = Scenario(requests=3000, change_at=1500, seed=5)
    engine = Engine(parse_config(config_yaml(scenario, GUARDRAIL)))
    events = list(simulate(scenario))
    assert engine.traces() == {"ranker": {"acc": []}}
    seen = []
    for start in range(0, len(events), 500):
        batch = events[start : start + 500]
        engine.process(batch)
        g = engine.snapshot()["flags"]["ranker"]["guardrails"]["acc"]
        seen.append((g["statistic"], g["threshold"], g["breaches"]))
    trace = engine.traces()["ranker"]["acc"]
    # One point per batch that fed the detector (the first batches may hold no outcome yet).
    assert 0 < len(trace) <= len(seen)
    assert [(s, t, b) for _, s, t, b in trace] == seen[len(seen) - len(trace) :]
    assert trace[-1][3] > 0  # the degraded candidate raised alarms, counted in the trace
    times = [ts for ts, _, _, _ in trace]
    assert times == sorted(times)
    assert times[-1] <= events[-1].ts


def test_the_trace_is_bounded() -> None:
    scenario = Scenario(requests=15 * TRACE_POINTS, change_at=None, label_delay=0.0, seed=1)
    engine = Engine(parse_config(config_yaml(scenario, GUARDRAIL)))
    for event in simulate(scenario):
        engine.process([event])
    trace = engine.traces()["ranker"]["acc"]
    assert len(trace) == TRACE_POINTS
    assert trace[-1][0] == max(p[0] for p in trace)


def test_the_page_is_packaged_and_refers_to_nothing_outside_the_worker() -> None:
    html = page_html().decode("utf-8")
    assert html.startswith("<!doctype html>")
    # Only the SVG namespace, which names the vocabulary and is never fetched.
    urls = re.findall(r"[a-z]+://[^\s\"'`)]+", html)
    assert set(urls) == {"http://www.w3.org/2000/svg"}
    assert '<link rel="icon" href="data:,">' in html  # no favicon request either
    assert not re.search(r"<(script|img|link|iframe)[^>]*\s(src|href)=\"(?!data:)", html)
    # Every request the script makes is a relative path on the worker.
    fetched = re.findall(r"fetch\(\s*([^,)]+)", html)
    assert fetched
    assert all(f.lstrip().startswith('"/') for f in fetched), fetched


def test_the_status_document_of_an_active_and_of_a_standby_worker() -> None:
    text = config_yaml(Scenario(), GUARDRAIL).replace("  ranker:\n", "  ranker:\n    owner: ml\n")
    config = parse_config(
        text + "  old:\n    expires: 2020-01-01\n    default: a\n"
        "    variants:\n      a: {weight: 100, value: a}\n"
    )
    engine = Engine(config)
    events = list(simulate(Scenario(requests=2000, change_at=None, seed=2)))
    engine.process(events)
    states = {s.flag: s for s in engine.states()}
    now = events[-1].ts + 60
    doc = build_status(config, states, engine, "active", {"ranker"}, now)
    assert list(doc["flags"]) == ["old", "ranker"]
    ranker = doc["flags"]["ranker"]
    assert ranker["meta"]["owner"] == "ml"
    assert ranker["meta"]["guardrails"] == ["acc"]
    assert ranker["state"]["version"] == 1
    acc = ranker["evaluation"]["guardrails"]["acc"]
    assert acc["samples"]["candidate"] > 0
    # Each guardrail's false-alarm budget in time, at the rate its variant's samples arrived.
    stats = ranker["evaluation"]["variants"]["candidate"]
    rate = budget.observed_rate(acc["samples"]["candidate"], stats["first_ts"], stats["last_ts"])
    assert rate is not None
    assert rate > 0
    guardrail = config.flags["ranker"].guardrails[0]
    expected = budget.explain(detector_spec(guardrail, config.flags["ranker"]), rate=rate)
    assert acc["budget"] == expected
    assert acc["budget"]["text"].startswith("one false alarm every ~")
    assert "(observed) for this variant" in acc["budget"]["text"]
    assert ranker["traces"] == engine.traces()["ranker"]
    assert ranker["traces"]["acc"]
    assert ranker["findings"] == []
    old = doc["flags"]["old"]
    assert old["traces"] is None  # not asked for
    assert [f["kind"] for f in old["findings"]] == ["expired"]
    assert doc["worker"] == {"role": "active", "watermark": engine.snapshot()["watermark"]}
    # A standby worker has the published states only: no statistics, no traffic judgement.
    doc = build_status(config, states, None, "standby", {"ranker"}, now + 30 * 86400)
    ranker = doc["flags"]["ranker"]
    assert ranker["evaluation"] is None
    assert ranker["traces"] is None
    assert ranker["findings"] == []
    assert doc["worker"] == {"role": "standby", "watermark": None}
