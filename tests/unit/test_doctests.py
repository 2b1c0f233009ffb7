"""Every example in a module docstring of streams/ or detectors/ runs and prints what it claims.

Modules are found by their ``>>>`` prompts, so a new example is run without being listed here.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"streams": "driftswitch.streams", "detectors": "driftswitch.detectors"}


def _modules_with_examples() -> list[str]:
    found = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if ">>> " in path.read_text():
                parts = path.relative_to(ROOT / folder).with_suffix("").parts
                found.append(".".join([package, *parts]))
    return found


MODULES = _modules_with_examples()


def test_the_examples_are_found() -> None:
    assert "driftswitch.detectors.binary.cusum" in MODULES
    assert "driftswitch.streams.pipeline.engine" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0
    assert result.failed == 0
