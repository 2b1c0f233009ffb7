"""Backtest throughput: events/s of ``driftswitch backtest``'s path, where the time goes, and RSS.

    .venv/bin/python benchmarks/backtest.py [--requests 500000] [--repeat 3]
        [--config examples/ranker.yaml] [--profile] [--rss-rounds 10]

Simulates ``--requests`` requests (about 2N events: predictions and outcomes; the default makes
1M events) into a temporary JSON Lines file, prints the machine's speed on a fixed workload
(``machine_speed`` in ``streams/tools/testing.py``), then times ``--repeat`` interleaved rounds
and prints min / median / max events/s, wall and CPU, of:

- ``backtest.run`` end to end (read, decode, engine): the figure the 200k events/s target is about;
- the same with ``event_order`` (``--order event``: every event decoded, sorted, then replayed);
- the decoders side by side, on the same lines: ``decode_lines`` (what backtest and the worker use:
  msgspec structs, the pydantic model deciding what msgspec refuses), pydantic-core's
  ``validate_json`` on the bytes (``decode_line``, the previous path), and msgspec decoding a whole
  chunk as one JSON array (fastest, but not used: joining lines could pair the halves of two
  invalid lines into one valid document);
- the engine alone on already-decoded events.

CPU time is what this process used; on a shared machine it is the steadier figure, and the
machine's load average is printed with the results. ``--profile`` prints cProfile's top functions
of one end-to-end run. ``--rss-rounds K`` replays the decoded events K times (request ids and
event times shifted per round, so the join's pending count stays steady) through one engine and
prints the process RSS and pending count after every round.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.events import (
    OutcomeStruct,
    PredictionStruct,
    decode_line,
    decode_lines,
)
from driftswitch.streams.pipeline import backtest
from driftswitch.streams.pipeline.backtest import decode_chunk
from driftswitch.streams.pipeline.engine import Engine, Event
from driftswitch.streams.tools.simulate import Scenario, simulate, write_jsonl
from driftswitch.streams.tools.testing import machine_speed

ROOT = Path(__file__).resolve().parents[1]
_ARRAY = msgspec.json.Decoder(list[PredictionStruct | OutcomeStruct])


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of one run, with the cyclic GC paused as ``backtest.run`` does."""
    gc.collect()
    gc.disable()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - wall, time.process_time() - cpu
        gc.enable()
    return elapsed


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def rss_mib() -> float:
    """Resident set size of this process now (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def rss_run(config_path: Path, decoded: list[list[Event]], rounds: int) -> None:
    """Replay the events ``rounds`` times through one engine; RSS and pending after each."""
    engine = Engine(load_config(config_path))
    first_ts = decoded[0][0].ts
    last_ts = decoded[-1][-1].ts
    span = last_ts - first_ts + 60.0
    replace = msgspec.structs.replace
    events = 0
    wall = time.perf_counter()
    for k in range(rounds):
        shift = k * span
        for batch in decoded:
            engine.process(
                [replace(e, request_id=f"{k}/{e.request_id}", ts=e.ts + shift) for e in batch]  # type: ignore[type-var]
            )
            events += len(batch)
        pending = engine._join.pending_predictions + engine._join.pending_outcomes
        gc.collect()
        print(
            f"after round {k + 1} ({events:,} events): RSS {rss_mib():.0f} MiB, pending "
            f"{pending} ({time.perf_counter() - wall:.0f} s); {load()}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500_000)
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "ranker.yaml")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one end-to-end run")
    parser.add_argument("--rss-rounds", type=int, default=0, help="RSS over K replays (0: skip)")
    args = parser.parse_args()
    config = load_config(args.config)
    scenario = Scenario(requests=args.requests, change_at=args.requests // 2, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        n = write_jsonl(simulate(scenario), path)
        size = path.stat().st_size
        print(f"{n:,} events, {size / n:.0f} bytes/event, config {args.config.name}")
        print(f"machine: {machine_speed() / 1e6:.2f}M reference operations per CPU-second")
        lines = path.read_bytes().splitlines()
        chunks = [lines[i : i + backtest.CHUNK_LINES] for i in range(0, n, backtest.CHUNK_LINES)]
        decoded: list[list[Event]] = [decode_chunk(c)[0] for c in chunks]
        if args.rss_rounds:
            rss_run(args.config, decoded, args.rss_rounds)
            return
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(backtest.run, config, path)
            pstats.Stats(profile).sort_stats("tottime").print_stats(20)
            return
        outputs: list[int] = []

        def run() -> None:
            outputs.append(len(backtest.run(config, path).outputs))

        def run_sorted() -> None:
            outputs.append(len(backtest.run(config, path, event_order=True).outputs))

        def engine_only() -> None:
            engine = Engine(config)
            for batch in decoded:
                engine.process(batch)

        def pydantic_decode() -> None:
            for chunk in chunks:
                for line in chunk:
                    decode_line(line)

        cases: list[tuple[str, Callable[[], object]]] = [
            ("backtest.run end to end", run),
            ("backtest.run --order event", run_sorted),
            ("decode_lines (msgspec + model fallback)", lambda: [decode_lines(c) for c in chunks]),
            ("pydantic-core validate_json per line", pydantic_decode),
            (
                "msgspec array per chunk (unused)",
                lambda: [_ARRAY.decode(b"[" + b",".join(c) + b"]") for c in chunks],
            ),
            ("engine only", engine_only),
        ]
        # Interleaved rounds: every case gets the same chances of a quiet machine.
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
        for _ in range(args.repeat):
            for name, fn in cases:
                times[name].append(timed(fn))
        print(f"{args.repeat} rounds; events/s as min / median / max; {load()}")
        for name, _ in cases:
            walls = sorted(n / w for w, _ in times[name])
            cpus = sorted(n / c for _, c in times[name])
            print(
                f"{name:<42} wall {walls[0]:>9,.0f} {statistics.median(walls):>9,.0f} "
                f"{walls[-1]:>9,.0f}   CPU {cpus[0]:>9,.0f} {statistics.median(cpus):>9,.0f} "
                f"{cpus[-1]:>9,.0f}"
            )
        print(f"flag changes/alerts per replay: {sorted(set(outputs))}")


if __name__ == "__main__":
    main()
