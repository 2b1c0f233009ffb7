"""Event-time alignment of the join stage's reads (``held_back``), without a broker."""

from __future__ import annotations

from driftswitch.streams.service.joinstage import held_back


def test_nothing_is_held_back_without_input_waiting() -> None:
    held: dict[str, float] = {"p0": 1.0}
    assert held_back({"p0": 100.0, "p1": 5.0}, [], held, now=2.0) == set()
    assert held == {}


def test_topics_ahead_of_the_slowest_waiting_one_are_held_back() -> None:
    held: dict[str, float] = {}
    times = {"slow": 10.0, "near": 10.9, "ahead": 11.5, "far": 40.0}
    ahead = held_back(times, [10.0, 11.5, 40.0], held, now=0.0, alignment=1.0, hold=2.0)
    assert ahead == {"ahead", "far"}
    assert held == {"ahead": 0.0, "far": 0.0}


def test_the_slowest_waiting_topic_sets_the_limit_not_an_idle_one() -> None:
    # "idle" is behind but has nothing to read: waiting for it would stall everything.
    times = {"idle": 1.0, "a": 10.0, "b": 12.0}
    assert held_back(times, [10.0, 12.0], {}, now=0.0, alignment=1.0) == {"b"}


def test_a_held_topic_is_read_again_after_the_hold_then_held_again() -> None:
    held: dict[str, float] = {}
    times = {"slow": 0.0, "ahead": 50.0}
    waiting = [0.0]
    assert held_back(times, waiting, held, now=0.0, hold=2.0) == {"ahead"}
    assert held_back(times, waiting, held, now=1.9, hold=2.0) == {"ahead"}
    # The hold ran out: read once (a topic whose times stop advancing cannot stall the others).
    assert held_back(times, waiting, held, now=2.1, hold=2.0) == set()
    assert "ahead" not in held
    assert held_back(times, waiting, held, now=2.2, hold=2.0) == {"ahead"}
    assert held == {"ahead": 2.2}


def test_a_topic_that_fell_back_within_the_window_is_released() -> None:
    held: dict[str, float] = {}
    assert held_back({"slow": 0.0, "b": 3.0}, [0.0], held, now=0.0, alignment=1.0) == {"b"}
    assert held_back({"slow": 2.5, "b": 3.0}, [2.5], held, now=0.5, alignment=1.0) == set()
    assert held == {}


def test_topics_no_longer_owned_are_forgotten() -> None:
    held: dict[str, float] = {"gone": 0.0}
    held_back({"slow": 0.0, "b": 9.0}, [0.0], held, now=0.1)
    assert set(held) == {"b"}
