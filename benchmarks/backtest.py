"""Backtest throughput: events/s of ``driftswitch backtest``'s path, and where the time goes.

    .venv/bin/python benchmarks/backtest.py [--requests N] [--config examples/ranker.yaml]

Simulates ``N`` requests (about 2N events: predictions and outcomes) into a temporary JSON Lines
file, then times, best of ``--repeat`` interleaved rounds:

- ``backtest.run`` end to end (read, decode, engine), the figure the 100k events/s target is about;
- decoding alone (``backtest.decode_chunk``: ``decode_line`` per line, as the worker decodes);
- the engine alone on already-decoded events.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from driftswitch.streams.config.model import load_config
from driftswitch.streams.pipeline import backtest
from driftswitch.streams.pipeline.backtest import decode_chunk
from driftswitch.streams.pipeline.engine import Engine, Event
from driftswitch.streams.tools.simulate import Scenario, simulate, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of one run, with the cyclic GC paused as ``backtest.run`` does.

    CPU time is what this process used: on a shared machine it is the steadier figure, wall time
    the one a user waits for.
    """
    gc.collect()
    gc.disable()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - wall, time.process_time() - cpu
        gc.enable()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "ranker.yaml")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    config = load_config(args.config)
    scenario = Scenario(requests=args.requests, change_at=args.requests // 2, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        n = write_jsonl(simulate(scenario), path)
        size = path.stat().st_size
        print(f"{n} events, {size / n:.0f} bytes/event, config {args.config.name}")
        lines = path.read_bytes().splitlines()
        chunks = [lines[i : i + backtest.CHUNK_LINES] for i in range(0, n, backtest.CHUNK_LINES)]
        decoded: list[list[Event]] = [decode_chunk(c)[0] for c in chunks]
        outputs: list[int] = []

        def run() -> None:
            outputs.append(len(backtest.run(config, path).outputs))

        def engine_only() -> None:
            engine = Engine(config)
            for batch in decoded:
                engine.process(batch)

        cases: list[tuple[str, int, Callable[[], object]]] = [
            ("backtest.run end to end", n, run),
            ("decode only", n, lambda: [decode_chunk(c) for c in chunks]),
            ("engine only", n, engine_only),
        ]
        # Interleaved rounds, best of each: every case gets the same chances of a quiet machine.
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for name, _, fn in cases:
                wall, cpu = timed(fn)
                old = best.get(name, (wall, cpu))
                best[name] = (min(old[0], wall), min(old[1], cpu))
        for name, count, _ in cases:
            wall, cpu = best[name]
            print(
                f"{name:<24} {count / wall:>9,.0f} events/s wall {count / cpu:>9,.0f} events/s CPU"
            )
        print(f"flag changes/alerts per replay: {sorted(set(outputs))}")


if __name__ == "__main__":
    main()
