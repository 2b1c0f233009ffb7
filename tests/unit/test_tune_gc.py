"""``tune_gc``: what ``driftswitch run`` does to the cyclic garbage collector before it starts."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from driftswitch.streams.service.runner import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_start_up_objects_are_frozen_and_passes_are_rarer() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    # Everything alive at start-up (modules, the config) is out of the collector's sight.
    assert gc.get_freeze_count() > 1000
    # Young-generation passes are rarer than Python's default (every 700 allocations).
    assert GC_THRESHOLDS[0] > 700


@pytest.mark.usefixtures("restore_gc")
def test_cycles_are_still_collected() -> None:
    tune_gc()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    # A full pass (what the thresholds schedule, only less often) still frees a cycle.
    assert gc.collect() >= 2
