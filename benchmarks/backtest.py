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


def best(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best wall and CPU seconds of ``repeat`` runs, with the cyclic GC paused as
    ``backtest.run`` does. CPU time is what this process used: on a shared machine it is the
    steadier figure, wall time the one a user waits for."""
    walls, cpus = [], []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            fn()
        finally:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            gc.enable()
    return min(walls), min(cpus)


def report(name: str, n: int, times: tuple[float, float]) -> None:
    wall, cpu = times
    print(f"{name:<26} {n / wall:>10,.0f} events/s wall  {n / cpu:>10,.0f} events/s CPU")


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
        report(
            "backtest.run end to end",
            n,
            best(lambda: result.append(backtest.run(config, path)), args.repeat),
        )
        result = result[-1:]
        print(f"  flag changes/alerts: {len(result[-1].outputs)}")

        lines = path.read_bytes().splitlines()
        chunks = [lines[i : i + backtest.CHUNK_LINES] for i in range(0, n, backtest.CHUNK_LINES)]
        report("fast decode only", n, best(lambda: [decode_events(c) for c in chunks], args.repeat))
        sample = lines[: min(n, 50_000)]
        report(
            "decode_line (pydantic)", len(sample), best(lambda: [decode_line(x) for x in sample], 1)
        )

        decoded: list[list[Event]] = [
            [e for e in decode_events(c) if not isinstance(e, Exception)] for c in chunks
        ]

        def engine_only() -> None:
            engine = Engine(config)
            for batch in decoded:
                engine.process(batch)

        report("engine only", n, best(engine_only, args.repeat))


if __name__ == "__main__":
    main()
