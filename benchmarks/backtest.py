"""Backtest throughput: events/s of ``driftswitch backtest``'s path, and where the time goes.

    .venv/bin/python benchmarks/backtest.py [--requests N] [--config examples/ranker.yaml]

Simulates ``N`` requests (about 2N events: predictions and outcomes) into a temporary JSON Lines
file, then times, best of ``--repeat`` runs each:

- ``backtest.run`` end to end (read, decode, engine), the figure the 100k events/s target is about;
- reading + bulk decoding alone, and ``decode_line`` per line (pydantic) for comparison;
- the engine alone on already-decoded events.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from driftswitch.streams import backtest
from driftswitch.streams.config import load_config
from driftswitch.streams.decoding import decode_events
from driftswitch.streams.engine import Engine, Event
from driftswitch.streams.events import decode_line
from driftswitch.streams.simulate import Scenario, simulate, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def best(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` runs, with the cyclic GC paused as ``backtest.run`` does."""
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        start = time.perf_counter()
        try:
            fn()
        finally:
            times.append(time.perf_counter() - start)
            gc.enable()
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "ranker.yaml")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = load_config(args.config)
    scenario = Scenario(requests=args.requests, change_at=args.requests // 2, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        n = write_jsonl(simulate(scenario), path)
        size = path.stat().st_size
        print(f"{n} events, {size / n:.0f} bytes/event, config {args.config.name}")

        result: list[backtest.Backtest] = []
        t_run = best(lambda: result.append(backtest.run(config, path)), args.repeat)
        result = result[-1:]
        print(f"backtest.run end to end:   {n / t_run:>10,.0f} events/s  ({t_run:.2f} s)")
        print(f"  flag changes/alerts: {len(result[-1].outputs)}")

        lines = path.read_bytes().splitlines()
        chunks = [lines[i : i + backtest.CHUNK_LINES] for i in range(0, n, backtest.CHUNK_LINES)]
        t_dec = best(lambda: [decode_events(c) for c in chunks], args.repeat)
        print(f"bulk decode only:          {n / t_dec:>10,.0f} events/s")
        sample = lines[: min(n, 50_000)]
        t_line = best(lambda: [decode_line(x) for x in sample], 1)
        print(f"decode_line (pydantic):    {len(sample) / t_line:>10,.0f} events/s")

        decoded: list[list[Event]] = [
            [e for e in decode_events(c) if not isinstance(e, Exception)] for c in chunks
        ]

        def engine_only() -> None:
            engine = Engine(config)
            for batch in decoded:
                engine.process(batch)

        t_eng = best(engine_only, args.repeat)
        print(f"engine only:               {n / t_eng:>10,.0f} events/s")


if __name__ == "__main__":
    main()
