"""The flagd document built from flag states, and the atomic file writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.contract.flagd import SCHEMA_URL, FlagdFile, document, dumps, write_atomic


def state(flag: str, version: int, killed: tuple[str, ...] = ()) -> FlagChangeEvent:
    weights = {"control": 70, "candidate": 20, "challenger": 10}
    return FlagChangeEvent.model_validate(
        {
            "flag": flag,
            "version": version,
            "variants": {
                n: {"weight": w, "killed": n in killed, "value": {"model": n}}
                for n, w in weights.items()
            },
            "default_variant": "control",
            "cause": {"kind": "detector", "action": "kill"},
            "ts": 1_767_225_600.0,
            "actor": "driftswitch",
        }
    )


def test_document_has_flagd_shape_with_killed_variants_out_of_the_split() -> None:
    doc = json.loads(
        dumps(document({"b": state("b", 3, killed=("candidate",)), "a": state("a", 1)}))
    )
    assert doc["$schema"] == SCHEMA_URL
    assert list(doc["flags"]) == ["a", "b"]
    assert doc["flags"]["b"] == {
        "state": "ENABLED",
        "variants": {
            "control": {"model": "control"},
            "candidate": {"model": "candidate"},
            "challenger": {"model": "challenger"},
        },
        "defaultVariant": "control",
        "metadata": {"driftswitchVersion": 3},
        "targeting": {"fractional": [["control", 90], ["challenger", 10]]},
    }
    assert doc["flags"]["a"]["targeting"] == {
        "fractional": [["candidate", 20], ["control", 70], ["challenger", 10]]
    }


def test_a_flag_with_everything_killed_has_no_targeting() -> None:
    doc = document({"a": state("a", 2, killed=("control", "candidate", "challenger"))})
    assert "targeting" not in doc["flags"]["a"]
    assert doc["flags"]["a"]["defaultVariant"] == "control"


def test_write_atomic_replaces_the_file_and_always_advances_its_mtime(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    write_atomic(path, b"one")
    first = path.stat().st_mtime_ns
    future = first + 10**9  # a clock step back: the next write must still look newer
    os.utime(path, ns=(future, future))
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert path.stat().st_mtime_ns > future
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags.json"]


def test_flagd_file_writes_only_newer_versions(tmp_path: Path) -> None:
    out = FlagdFile(tmp_path / "flags.json")
    out.write()
    assert json.loads(out.path.read_bytes())["flags"] == {}
    assert out.update(state("a", 2))
    assert not out.update(state("a", 2, killed=("candidate",)), state("a", 1))
    assert json.loads(out.path.read_bytes())["flags"]["a"]["metadata"] == {"driftswitchVersion": 2}
    assert out.update(state("a", 3, killed=("candidate",)), state("b", 1))
    flags = json.loads(out.path.read_bytes())["flags"]
    assert (flags["a"]["metadata"], sorted(flags)) == ({"driftswitchVersion": 3}, ["a", "b"])
    assert {f: s.version for f, s in out.states.items()} == {"a": 3, "b": 1}
