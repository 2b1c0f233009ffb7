"""The examples in the engine modules' docstrings run and print what they claim."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

import driftswitch.streams.pipeline.engine
import driftswitch.streams.pipeline.join
import driftswitch.streams.tools.simulate

MODULES = [
    driftswitch.streams.pipeline.engine,
    driftswitch.streams.pipeline.join,
    driftswitch.streams.tools.simulate,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
