"""What one decide-stage snapshot of a merge costs, with the observations inside or named by tag.

    .venv/bin/python benchmarks/merge_snapshot.py [--buffered 100000] [--sources 4]

Builds a :class:`~driftswitch.streams.pipeline.merge.Merge` holding ``--buffered`` observations
(joined pairs shaped as the join stage sends them, in records of 400, spread over ``--sources``
join partitions, none released), once untagged and once tagged (as the decide stage tags them:
``streams/pipeline/merge.py``, "Snapshots"), and times the merge's part of a snapshot the way the
worker writes it, best of ``--repeat`` (CPU time):

- untagged, as before tags: the buffered observations sorted, JSON, zlib level 1;
- tagged, as now: the buffered observations' tags, JSON, Zstandard level 1
  (:func:`~driftswitch.streams.service.snapshot.compress`).

Prints milliseconds of CPU and the compressed size of each. The restart's side of the trade (the
tagged records read again from the observations topic) is in ``benchmarks/scale.py --stages``'
runs and the decide-stage restart tests.
"""

from __future__ import annotations

import argparse
import random
import time
import zlib

import orjson

from driftswitch.streams.pipeline.merge import TAG_SPAN, Batch, Merge
from driftswitch.streams.pipeline.observations import SCORED, event_order
from driftswitch.streams.service.snapshot import compress

PER_RECORD = 400


def build(buffered: int, sources: int, tagged: bool, seed: int = 1) -> Merge:
    """A merge holding ``buffered`` observations; no watermark lets any of them go."""
    rng = random.Random(seed)
    merge = Merge(sources, 0.5, tagged=tagged)
    for r in range(buffered // PER_RECORD):
        p = r % sources
        batch = []
        for i in range(PER_RECORD):
            k = r * PER_RECORD + i
            obs: list[object] = [SCORED, 0, f"model-{k % 40:02d}", "candidate", 1.7e9 + k * 1e-3]
            obs += [f"{rng.getrandbits(128):032x}", 1, "a", False, "a", {}, None]
            obs += [r * TAG_SPAN + i] if tagged else []
            obs += [p, [[0, k], [1, k]]]
            batch.append(obs)
        merge.add(Batch(p, {0: r + 1}, -1e18, False, batch, "run"))
    return merge


def cost(merge: Merge, repeat: int) -> tuple[float, int]:
    """Best CPU seconds of the merge's part of a snapshot, and its compressed bytes."""
    best, size = float("inf"), 0
    for _ in range(repeat):
        t = time.process_time()
        state = merge.to_state()
        if merge.tagged:
            blob = compress(orjson.dumps(state))
        else:
            state["buffered"] = sorted(state["buffered"], key=event_order)  # as it was
            blob = zlib.compress(orjson.dumps(state), 1)
        best = min(best, time.process_time() - t)
        size = len(blob)
    return best, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buffered", type=int, default=100_000)
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for tagged in (False, True):
        merge = build(args.buffered, args.sources, tagged)
        seconds, size = cost(merge, args.repeat)
        kind = "tagged (now)" if tagged else "untagged, sorted, zlib (before)"
        print(
            f"{kind:<34} {len(merge):>9,} buffered: {seconds * 1e3:7.1f} ms CPU, "
            f"{size / 1e6:6.2f} MB compressed"
        )


if __name__ == "__main__":
    main()
