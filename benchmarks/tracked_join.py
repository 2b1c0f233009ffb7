"""The join stage's own join: ``Joiner(track=True)`` on the pipeline benchmark's events, CPU only.

    .venv/bin/python benchmarks/tracked_join.py [--flags 40] [--requests 12500] [--repeat 6]
        [--against REV]

The events are :func:`benchmarks.pipeline.make_events`' (``--flags`` flags, ``--requests``
requests each: predictions and outcomes, 2 × flags × requests records), decoded once by the
worker's ``Ingest`` in batches of :data:`~driftswitch.streams.service.joinstage.
JOIN_MAX_RECORDS` records (each batch's predictions, then its outcomes, as the join stage orders
them) with their input positions. Each round then times, in CPU seconds of this process, one
fresh tracking ``Joiner`` over all the batches: what ``JoinStage._process_partition`` spends in
``Joiner.process``, without Kafka, decoding or encoding. The cyclic GC is paused while timing.

``--against REV`` loads ``streams/pipeline/observations.py`` as it was at git revision ``REV``
(the rest of the package as it is now) and alternates the two in the same process, round by
round: on a shared machine the speed of the whole process drifts by 10-30 % between runs, so a
ratio per pair of neighbouring rounds is the steadier comparison. It first checks that both give
exactly the same observations and rejections, and prints events/s per round and the median
ratio.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from pipeline import make_events

from driftswitch.streams.config.model import Config, load_config
from driftswitch.streams.pipeline import observations
from driftswitch.streams.pipeline.ingest import Ingest
from driftswitch.streams.service.joinstage import JOIN_MAX_RECORDS, OUTCOMES, PREDICTIONS
from driftswitch.streams.tools.testing import load_file

ROOT = Path(__file__).resolve().parents[1]


class Record(NamedTuple):
    """What ``Ingest.decode`` reads of a consumer record."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: int
    headers: tuple[()]


Batch = tuple[list[Any], list[tuple[int, int]]]


def batches(flags: int, requests: int) -> tuple[Config, list[Batch], int]:
    """The config, the decoded batches with their positions, and the record count."""
    text, records = make_events(flags, requests)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        config = load_config(path)
    ingest = Ingest("predictions", "outcomes")
    out: list[Batch] = []
    offsets = [0, 0]
    for start in range(0, len(records), JOIN_MAX_RECORDS):
        chunk = records[start : start + JOIN_MAX_RECORDS]
        got = []
        for topic, t in (("predictions", PREDICTIONS), ("outcomes", OUTCOMES)):
            for is_prediction, key, value in chunk:
                if is_prediction == (t == PREDICTIONS):
                    got.append(Record(topic, 0, offsets[t], key, value, 0, ()))
                    offsets[t] += 1
        decoded = ingest.decode(got)
        assert not decoded.rejected, decoded.rejected[:3]
        positions = [
            (PREDICTIONS if got[k].topic == "predictions" else OUTCOMES, got[k].offset)
            for k in decoded.index
        ]
        out.append((decoded.events, positions))
    return config, out, len(records)


def run(module: ModuleType, config: Config, work: Sequence[Batch]) -> tuple[float, list[Any]]:
    """CPU seconds of one fresh tracking join over ``work``, and what it returned per batch."""
    joiner = module.Joiner(config, track=True)
    results = []
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        for events, positions in work:
            results.append(joiner.process(events, positions))
        return time.process_time() - started, results
    finally:
        gc.enable()


def at_revision(rev: str) -> ModuleType:
    """``streams/pipeline/observations.py`` at git revision ``rev``, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{rev}:streams/pipeline/observations.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "observations_at_rev.py"
        path.write_bytes(source)
        return load_file(path, "observations_at_rev")


def plain(results: list[Any]) -> list[Any]:
    return [(obs, [(r.index, r.reason, r.detail) for r in rej]) for obs, rej in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flags", type=int, default=40)
    parser.add_argument("--requests", type=int, default=12_500, help="requests per flag")
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--against", metavar="REV", help="alternate with this git revision's")
    args = parser.parse_args()
    config, work, records = batches(args.flags, args.requests)
    print(f"{records:,} records in {len(work)} batches, {args.flags} flags")
    if args.against is None:
        rates = [records / run(observations, config, work)[0] for _ in range(args.repeat)]
        print(f"events/s: {', '.join(f'{r:,.0f}' for r in rates)}")
        print(f"median {statistics.median(rates):,.0f} events/s")
        return
    other = at_revision(args.against)
    _, theirs = run(other, config, work)
    _, ours = run(observations, config, work)
    if plain(theirs) != plain(ours):
        raise SystemExit(f"the observations or rejections differ from {args.against}'s")
    print(f"same observations and rejections as {args.against}")
    ratios = []
    for _ in range(args.repeat):
        then = records / run(other, config, work)[0]
        now = records / run(observations, config, work)[0]
        ratios.append(now / then)
        print(f"  {args.against}: {then:,.0f}  now: {now:,.0f} events/s  now/then {now / then:.3f}")
    print(f"median now/then: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
