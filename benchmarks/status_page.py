"""What one status page poll costs the worker, at F flags.

    .venv/bin/python benchmarks/status_page.py [F]

Builds an engine for F flags (2 variants, 1 CUSUM guardrail each), feeds it simulated traffic
in 1200 batches so the guardrails' traces fill up (it prints how many points each holds; at
most 300), then times building the ``/api/v1/status`` document and encoding it, as the worker
does once a second per open page: without traces (every flag folded), with the traces of 12
open flags, and of 50 (the most one request may ask for). Prints milliseconds per poll (median
of 15) and the body size.
"""

from __future__ import annotations

import heapq
import statistics
import sys
import time

import orjson

from driftswitch.streams.config.model import parse_config
from driftswitch.streams.pipeline.engine import Engine
from driftswitch.streams.pipeline.monitor import TRACE_POINTS
from driftswitch.streams.service.page import build_status
from driftswitch.streams.tools.simulate import Scenario, simulate

GUARDRAIL = """\
    guardrails:
      - name: candidate-accuracy
        variant: candidate
        metric: accuracy
        detector: {kind: cusum, baseline: 0.90, target: 0.80, arl0: 100000}
        min_samples: 100
        action: warn
"""


def main() -> None:
    flags = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    names = [f"flag-{i:03d}" for i in range(flags)]
    text = "flags:\n"
    for name in names:
        text += (
            f"  {name}:\n    owner: team\n    default: control\n    variants:\n"
            "      control: {weight: 50, value: a}\n      candidate: {weight: 50, value: b}\n"
            + GUARDRAIL
        )
    config = parse_config(text)
    engine = Engine(config)
    streams = [
        simulate(Scenario(flag=name, requests=TRACE_POINTS * 4, change_at=None, seed=i))
        for i, name in enumerate(names)
    ]
    events = list(heapq.merge(*streams, key=lambda e: e.ts))
    size = len(events) // (4 * TRACE_POINTS) + 1
    started = time.perf_counter()
    for start in range(0, len(events), size):
        engine.process(events[start : start + size])
    fed = time.perf_counter() - started
    states = {s.flag: s for s in engine.states()}
    points = len(engine.traces()[names[0]]["candidate-accuracy"])
    print(f"{flags} flags, {len(events)} events fed in {fed:.1f} s; {points} trace points each")
    for open_flags in (0, 12, 50):
        wanted = set(names[:open_flags])
        times = []
        body = b""
        for _ in range(15):
            t = time.perf_counter()
            body = orjson.dumps(
                build_status(config, states, engine, "active", wanted, time.time()), default=str
            )
            times.append(time.perf_counter() - t)
        print(
            f"poll with {open_flags:>2} flags' traces: {1000 * statistics.median(times):6.1f} ms, "
            f"{len(body) / 1024:7.1f} KiB"
        )


if __name__ == "__main__":
    main()
