"""Assignment equals flagd's ``fractional`` (the real provider, file mode) and moves few users."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import cbor2
import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

from driftswitch.streams.contract.assign import (
    MAX_TOTAL_WEIGHT,
    Fractional,
    bucket_hash,
    bucketing_bytes,
    fractions,
)
from driftswitch.streams.contract.events import FlagChangeEvent
from driftswitch.streams.contract.flagd import document, dumps, write_atomic

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@:éß日本🙂"


def make_event(
    flag: str,
    variants: Mapping[str, tuple[int, bool]],
    default: str,
    version: int = 1,
) -> FlagChangeEvent:
    """A flag state with ``name -> (weight, killed)``; each value is the name upper-cased."""
    return FlagChangeEvent.model_validate(
        {
            "flag": flag,
            "version": version,
            "variants": {
                name: {"weight": w, "killed": k, "value": name.upper()}
                for name, (w, k) in variants.items()
            },
            "default_variant": default,
            "cause": {"kind": "config", "action": "init"},
            "ts": 1_767_225_600.0,
            "actor": "test",
        }
    )


def random_keys(n: int, seed: int) -> list[str]:
    """Targeting keys of every CBOR length class: short ids, UUID-like, unicode, > 255 bytes."""
    rng = random.Random(seed)
    keys = []
    for i in range(n):
        kind = i % 10
        if kind < 6:
            keys.append(f"user-{rng.getrandbits(48):x}")
        elif kind < 8:
            keys.append(f"{rng.getrandbits(128):032x}")
        elif kind == 8:
            keys.append("".join(rng.choices(_ALPHABET, k=rng.randint(1, 40))))
        else:
            keys.append("".join(rng.choices(_ALPHABET, k=rng.randint(100, 300))))
    return keys


WEIGHT_SETS = {
    "half": make_event("half", {"a": (50, False), "b": (50, False)}, "a"),
    "canary": make_event("canary", {"control": (95, False), "candidate": (5, False)}, "control"),
    "three-one-killed": make_event(
        "three-one-killed",
        {"control": (50, False), "c1": (30, True), "c2": (20, False)},
        "control",
    ),
    "near-max-total": make_event(
        "near-max-total", {"a": (1_000_000_000, False), "b": (1_147_483_647, False)}, "b"
    ),
    "zeros-and-killed-default": make_event(
        "zeros-and-killed-default",
        {"a": (10, True), "b": (0, False), "c": (7, False), "d": (3, False), "e": (0, True)},
        "a",
    ),
}


@pytest.fixture(scope="module")
def flagd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flagd") / "flags.json"
    write_atomic(path, dumps(document(WEIGHT_SETS)))
    return path


@pytest.fixture(scope="module")
def flagd_provider(flagd_file: Path) -> Iterator[FlagdProvider]:
    provider = FlagdProvider(
        resolver_type=ResolverType.FILE, offline_flag_source_path=str(flagd_file)
    )
    provider.initialize(EvaluationContext())
    yield provider
    provider.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("flag", list(WEIGHT_SETS))
def test_variant_equals_flagd_provider_for_100k_keys(
    flag: str, flagd_provider: FlagdProvider
) -> None:
    ours = Fractional.from_event(WEIGHT_SETS[flag])
    seen: Counter[str] = Counter()
    mismatches = []
    for key in random_keys(100_000, seed=sum(map(ord, flag))):
        theirs = flagd_provider.resolve_string_details(
            flag, "fallback", EvaluationContext(targeting_key=key)
        )
        mine = ours.variant(key)
        seen[mine] += 1
        if theirs.variant != mine or theirs.reason != Reason.TARGETING_MATCH:
            mismatches.append((key, mine, theirs.variant, theirs.reason))
    assert mismatches == []
    killed = {n for n, v in WEIGHT_SETS[flag].variants.items() if v.killed}
    assert killed.isdisjoint(seen)
    live = {n for n, w in fractions(WEIGHT_SETS[flag])}
    assert set(seen) == live


def test_variant_equals_flagd_through_the_openfeature_api(flagd_file: Path) -> None:
    provider = FlagdProvider(
        resolver_type=ResolverType.FILE, offline_flag_source_path=str(flagd_file)
    )
    api.set_provider(provider, domain="test-assign")
    try:
        client = api.get_client(domain="test-assign")
        # The provider loads the file on its own thread: evaluate only once it says READY
        # (under load the first evaluations could otherwise race the load and fall back).
        deadline = time.monotonic() + 30
        while client.get_provider_status() is not ProviderStatus.READY:
            assert time.monotonic() < deadline, client.get_provider_status()
            time.sleep(0.01)
        for flag, event in WEIGHT_SETS.items():
            ours = Fractional.from_event(event)
            for key in random_keys(2_000, seed=7):
                details = client.get_string_details(
                    flag, "fallback", EvaluationContext(targeting_key=key)
                )
                assert (details.variant, details.value) == (
                    ours.variant(key),
                    ours.variant(key).upper(),
                )
    finally:
        api.clear_providers()


def test_unsplit_flags_serve_the_default_like_flagd(tmp_path: Path) -> None:
    states = {
        "all-killed": make_event("all-killed", {"a": (5, True), "b": (5, True)}, "b"),
        "no-weight": make_event("no-weight", {"a": (0, False), "b": (0, False)}, "a"),
    }
    path = tmp_path / "flags.json"
    write_atomic(path, dumps(document(states)))
    provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(path))
    provider.initialize(EvaluationContext())
    try:
        for flag, event in states.items():
            assert fractions(event) == []
            ours = Fractional.from_event(event)
            for key in random_keys(200, seed=3):
                theirs = provider.resolve_string_details(
                    flag, "fallback", EvaluationContext(targeting_key=key)
                )
                assert theirs.variant == ours.variant(key) == event.default_variant
    finally:
        provider.shutdown()


def test_empty_targeting_key_gets_the_default_like_flagd(flagd_provider: FlagdProvider) -> None:
    ours = Fractional.from_event(WEIGHT_SETS["canary"])
    theirs = flagd_provider.resolve_string_details(
        "canary", "fallback", EvaluationContext(targeting_key="")
    )
    assert (theirs.variant, theirs.reason) == ("control", Reason.DEFAULT)
    assert ours.variant("") == "control"


@given(flag=st.text(min_size=1, max_size=300), key=st.text(max_size=600))
def test_bucketing_bytes_are_canonical_cbor_of_the_pair(flag: str, key: str) -> None:
    try:
        expected = cbor2.dumps([flag, key], canonical=True)
    except UnicodeEncodeError:  # lone surrogates cannot be encoded by anyone
        return
    assert bucketing_bytes(flag, key) == expected
    assert bucket_hash(flag, key) == mmh3.hash(expected, 0, False)


def test_layout_puts_default_second_and_serves_killed_share_to_default() -> None:
    event = make_event(
        "f",
        {"ctl": (40, False), "a": (10, True), "b": (20, False), "c": (30, True)},
        "ctl",
    )
    assert fractions(event) == [("ctl", 50), ("b", 20), ("ctl", 30)]


def test_total_above_flagd_limit_serves_the_default() -> None:
    event = make_event("f", {"a": (MAX_TOTAL_WEIGHT, False), "b": (1, False)}, "b")
    assert fractions(event) == []
    assert Fractional.from_event(event).variant("someone") == "b"
    with pytest.raises(ValueError, match="exceeds"):
        Fractional.from_fractions("f", [("a", MAX_TOTAL_WEIGHT), ("b", 1)], "b")


# --- movement when weights change -------------------------------------------------------------

POPULATION = random_keys(4_000, seed=11)


def assign_all(split: Fractional) -> list[str]:
    return [split.variant(key) for key in POPULATION]


def movers(before: list[str], after: list[str]) -> list[tuple[str, str]]:
    return [(b, a) for b, a in zip(before, after, strict=True) if b != a]


def minimum_movers(before: list[str], after: list[str]) -> int:
    """The fewest users any assignment with these new per-variant counts must move."""
    old, new = Counter(before), Counter(after)
    return sum(max(0, old[v] - new[v]) for v in old)


weights = st.integers(min_value=0, max_value=10_000)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    others=st.lists(weights, min_size=1, max_size=4),
    default_weight=weights,
    killed_index=st.integers(min_value=0, max_value=3),
)
def test_a_kill_moves_only_the_killed_variants_users_to_the_default(
    others: list[int], default_weight: int, killed_index: int
) -> None:
    killed_index %= len(others)
    names = [f"v{i}" for i in range(len(others))]
    live = {n: (w, False) for n, w in zip(names, others, strict=True)}
    before = assign_all(
        Fractional.from_event(make_event("k", {**live, "d": (default_weight, False)}, "d"))
    )
    victim = names[killed_index]
    live[victim] = (others[killed_index], True)
    after = assign_all(
        Fractional.from_event(make_event("k", {**live, "d": (default_weight, False)}, "d", 2))
    )
    moved = movers(before, after)
    assert all(move == (victim, "d") for move in moved)
    assert len(moved) == before.count(victim)
    assert victim not in after


@pytest.mark.slow
@settings(max_examples=80, deadline=None)
@given(a=weights, b=weights, a2=weights, b2=weights)
def test_two_variants_move_only_towards_the_grown_share_and_minimally(
    a: int, b: int, a2: int, b2: int
) -> None:
    before = assign_all(
        Fractional.from_event(make_event("two", {"cand": (a, False), "ctl": (b, False)}, "ctl"))
    )
    after = assign_all(
        Fractional.from_event(
            make_event("two", {"cand": (a2, False), "ctl": (b2, False)}, "ctl", 2)
        )
    )
    moved = movers(before, after)
    assert len(moved) == minimum_movers(before, after)
    assert len(set(moved)) <= 1  # one direction only


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(
    others=st.lists(weights, min_size=1, max_size=4),
    candidate=st.sampled_from([0, 1]),
    default_weight=st.integers(min_value=0, max_value=10_000),
    data=st.data(),
)
def test_weight_shifted_between_default_and_a_neighbour_moves_only_those_users(
    others: list[int], candidate: int, default_weight: int, data: st.DataObject
) -> None:
    """The first two non-default variants border the default: shifts either way are minimal."""
    candidate %= len(others)
    shift = data.draw(st.integers(min_value=-others[candidate], max_value=default_weight))
    names = [f"v{i}" for i in range(len(others))]
    grown = list(others)
    grown[candidate] += shift

    def layout(weights_: list[int], default_weight_: int, version: int) -> Fractional:
        variants = {n: (w, False) for n, w in zip(names, weights_, strict=True)}
        return Fractional.from_event(
            make_event("g", {**variants, "ctl": (default_weight_, False)}, "ctl", version)
        )

    before = assign_all(layout(others, default_weight, 1))
    after = assign_all(layout(grown, default_weight - shift, 2))
    moved = movers(before, after)
    towards = ("ctl", names[candidate]) if shift > 0 else (names[candidate], "ctl")
    assert all(move == towards for move in moved)
    assert len(moved) == minimum_movers(before, after)


def test_zero_weight_kill_without_default_substitution_would_move_bystanders() -> None:
    """Why kills are served by the default in place: dropping the weight rescales every bucket."""
    ctl, a, b = ("ctl", 25), ("a", 50), ("b", 25)
    before = assign_all(Fractional.from_fractions("k", [a, b, ctl], "ctl"))
    naive = assign_all(Fractional.from_fractions("k", [b, ctl], "ctl"))  # a killed: weight 0
    ours = assign_all(Fractional.from_fractions("k", [("ctl", 50), b, ctl], "ctl"))
    assert any(old == "b" and new == "ctl" for old, new in movers(before, naive))
    assert all(old == "a" for old, _ in movers(before, ours))
