"""Sticky assignment of targeting keys to variants, bit-for-bit equal to flagd's ``fractional``.

The algorithm is the one of openfeature-flagd-core 2.0.0 (what openfeature-provider-flagd 0.6.1
evaluates with): the bucketing value ``[flag_key, targeting_key]`` is encoded as
canonical CBOR, hashed with MurmurHash3 x86 32-bit (seed 0, unsigned), and the key falls in
``bucket = (hash * total) >> 32`` over the cumulative integer weights, in document order. Key
``k`` therefore gets fraction ``i`` exactly when ``C[i-1] * 2**32 / total <= hash < C[i] * 2**32 /
total``: every fraction owns a fixed interval of the hash space.

Movement when weights change follows from that (the reason for the layout in :func:`fractions`):

- if the total is unchanged and weight moves between two *adjacent* fractions, only the boundary
  between them moves: users move only towards the fraction that grew, and exactly as many as the
  new weights require;
- with two fractions, any change of weights (total or not) moves one boundary: same guarantee;
- otherwise every boundary is rescaled and users can move between fractions whose weights did not
  change (e.g. ``a, b, c = 1, 1, 1 -> 1, 1, 2`` moves some ``a`` users to ``b``).

:func:`fractions` therefore lays a flag out as its non-default variants in their configured order
with the default variant second, right after the first of them, and serves a killed variant's
interval to the default variant in place (flagd accepts a variant more than once in
``fractional``). Then, for every flag:

- a kill or a restore moves exactly the killed variant's users to or from the default, nobody
  else, whatever the weights;
- shifting weight between the default and either of its neighbours (the first two non-default
  variants; with one or two candidates, every candidate) with the total unchanged moves only
  users between those two, in the direction of the shift, and only as many as it requires.

A shift that changes the total, or involves a third candidate, can move users between variants
whose weights did not change. That is a property of ``fractional`` itself: no order fixes it for
every change (with three variants, moving weight a→b, b→c and c→a each minimally would need the
three pairs to be adjacent), so keep the total constant (weights as shares of 100 or 10,000) and
the variant order stable across versions (it is the configuration's order).

Pure: no I/O, imports only ``cbor2`` (for the flag key, once) and ``mmh3``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cbor2
import mmh3

if TYPE_CHECKING:
    from driftswitch.streams.contract.events import FlagChangeEvent

#: flagd rejects a ``fractional`` whose weights sum above MaxInt32 (it then serves the default).
MAX_TOTAL_WEIGHT = 2_147_483_647

_ARRAY_OF_TWO = b"\x82"  # CBOR major type 4 (array), 2 items


def _text_head(n: int) -> bytes:
    """CBOR header of a UTF-8 text string of ``n`` bytes (major type 3, shortest form)."""
    if n < 24:
        return bytes((0x60 | n,))
    if n < 0x100:
        return b"\x78" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\x79" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\x7a" + n.to_bytes(4, "big")
    return b"\x7b" + n.to_bytes(8, "big")


def bucketing_bytes(flag_key: str, targeting_key: str) -> bytes:
    """Canonical CBOR of flagd's default bucketing value ``[flag_key, targeting_key]``."""
    data = targeting_key.encode()
    return _ARRAY_OF_TWO + cbor2.dumps(flag_key, canonical=True) + _text_head(len(data)) + data


def bucket_hash(flag_key: str, targeting_key: str) -> int:
    """MurmurHash3 x86 32-bit, seed 0, unsigned, of :func:`bucketing_bytes`."""
    return int(mmh3.hash(bucketing_bytes(flag_key, targeting_key), 0, False))


def fractions(event: FlagChangeEvent) -> list[tuple[str, int]]:
    """The ordered ``(variant, weight)`` fractions that serve a flag state (module docstring).

    Non-default variants in their order with the default second; a killed variant's weight is
    served by the default in place, so a kill moves only that variant's users. A killed default
    is left out (its users spread over the live variants: there is nowhere better to send them).
    Zero weights are dropped and adjacent fractions of one variant merged: neither changes any
    assignment. An empty list means "no split": everyone gets the default.
    """
    default = event.default_variant
    default_state = event.variants.get(default)
    default_live = default_state is not None and not default_state.killed
    out: list[tuple[str, int]] = []

    def add(name: str, weight: int) -> None:
        if weight <= 0:
            return
        if out and out[-1][0] == name:
            out[-1] = (name, out[-1][1] + weight)
        else:
            out.append((name, weight))

    others = [(name, state) for name, state in event.variants.items() if name != default]
    for position, (name, state) in enumerate(others):
        if not state.killed:
            add(name, state.weight)
        elif default_live:
            add(default, state.weight)
        if position == 0 and default_state is not None and default_live:
            add(default, default_state.weight)
    if not others and default_state is not None and default_live:
        add(default, default_state.weight)
    if sum(w for _, w in out) > MAX_TOTAL_WEIGHT:
        return []
    return out


@dataclass(frozen=True, slots=True)
class Fractional:
    """A compiled ``fractional`` split of one flag: ``variant(key)`` is the hot path.

    Build it once per flag state (:meth:`from_event` or :meth:`from_fractions`); the CBOR prefix
    of the flag key and the cumulative weights are precomputed, so one call is one ``encode``,
    one concatenation, one MurmurHash3 and one bisection.
    """

    flag: str
    default: str
    fractions: tuple[tuple[str, int], ...]
    total: int = field(init=False)
    _bounds: tuple[int, ...] = field(init=False, repr=False)
    _names: tuple[str, ...] = field(init=False, repr=False)
    _heads: tuple[bytes, ...] = field(init=False, repr=False)
    _prefix: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        bounds: list[int] = []
        running = 0
        for name, weight in self.fractions:
            if weight < 0:
                raise ValueError(f"fraction {name!r}: weight must be >= 0, got {weight}")
            running += weight
            bounds.append(running)
        if running > MAX_TOTAL_WEIGHT:
            raise ValueError(f"total weight {running} exceeds {MAX_TOTAL_WEIGHT} (flagd's limit)")
        prefix = _ARRAY_OF_TWO + cbor2.dumps(self.flag, canonical=True)
        object.__setattr__(self, "total", running)
        object.__setattr__(self, "_bounds", tuple(bounds))
        object.__setattr__(self, "_names", tuple(name for name, _ in self.fractions))
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_heads", tuple(prefix + _text_head(n) for n in range(24)))

    @classmethod
    def from_fractions(
        cls, flag: str, fractions: Sequence[tuple[str, int]], default: str
    ) -> Fractional:
        """A split over explicit ordered fractions (as written in a flagd document)."""
        return cls(flag, default, tuple(fractions))

    @classmethod
    def from_weights(cls, flag: str, weights: Mapping[str, int], default: str) -> Fractional:
        """A split over weights in mapping order (no kill handling, no reordering)."""
        return cls(flag, default, tuple(weights.items()))

    @classmethod
    def from_event(cls, event: FlagChangeEvent) -> Fractional:
        """The split that serves a flag state, laid out by :func:`fractions`."""
        return cls(event.flag, event.default_variant, tuple(fractions(event)))

    def variant(self, targeting_key: str) -> str:
        """The variant of ``targeting_key``: the same as flagd's ``fractional`` would serve.

        Where flagd's operator yields nothing and the flag falls back to its ``defaultVariant``
        (no positive weight, an empty targeting key), this returns the default.
        """
        total = self.total
        if total == 0 or not targeting_key:
            return self.default
        try:
            data = targeting_key.encode()
        except UnicodeEncodeError:  # lone surrogates: flagd's CBOR encoding fails too
            return self.default
        n = len(data)
        head = self._heads[n] if n < 24 else self._prefix + _text_head(n)
        h: int = mmh3.hash(head + data, 0, False)
        return self._names[bisect_right(self._bounds, (h * total) >> 32)]
