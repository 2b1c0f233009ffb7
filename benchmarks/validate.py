"""How long reading a large config's YAML takes, with libyaml and without.

    .venv/bin/python benchmarks/validate.py [--flags N]

Writes a config of ``N`` copies of the example flag (``examples/ranker.yaml``, renamed) and times
the YAML step of ``parse_config`` (one parse into nodes, with line numbers, and the data built
from them) with PyYAML's C parser, which ``load_config`` uses, and with the pure-Python one, best
of three. Prints the size and both times. The checks after it (pydantic, detectors) cost the
same either way. A config larger than ``MAX_CONFIG_BYTES`` is refused before it is parsed; the
default ``N`` stays just below that cap.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import yaml

from driftswitch.streams.config import model

ROOT = Path(__file__).resolve().parents[1]


def make_config(flags: int) -> str:
    example = yaml.safe_load((ROOT / "examples" / "ranker.yaml").read_text(encoding="utf-8"))
    flag = example["flags"]["ranker"]
    doc = {"flags": {f"ranker-{i}": copy.deepcopy(flag) for i in range(flags)}}
    return yaml.safe_dump(doc, sort_keys=False)


def parse(loader_class: Any, text: str) -> float:
    started = time.perf_counter()
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        loader.construct_document(root)
    finally:
        loader.dispose()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flags", type=int, default=1500)
    args = parser.parse_args()
    text = make_config(args.flags)
    size = len(text.encode())
    print(f"config: {args.flags} flags, {size:,} bytes (cap {model.MAX_CONFIG_BYTES:,})")
    fast = min(parse(yaml.CSafeLoader, text) for _ in range(3))
    slow = min(parse(yaml.SafeLoader, text) for _ in range(3))
    print(f"YAML with libyaml (CSafeLoader, what load_config uses): {fast:.2f} s")
    print(f"YAML with the pure-Python SafeLoader: {slow:.2f} s ({slow / fast:.1f}x slower)")
    print(f"before (compose and safe_load, both pure Python): about {2 * slow:.2f} s")


if __name__ == "__main__":
    main()
