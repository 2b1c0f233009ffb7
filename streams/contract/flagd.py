"""flagd flag-definition documents built from flag states, and their atomic file output.

The document follows flagd-schemas ``json/flags.json``: one flag per driftswitch flag with
``state``, ``variants``, ``defaultVariant`` and, when traffic is split, ``targeting`` with the
``fractional`` operator over the fractions of :func:`driftswitch.streams.contract.assign.fractions`
(killed
variants excluded, their share served by the default). flagd, any OpenFeature flagd provider and
:class:`driftswitch.streams.contract.assign.Fractional` then assign every user the same variant.
A flag with a ``targeting`` rule carries it combined with that split, as
:func:`driftswitch.streams.contract.targeting.served_targeting` lays it out.

flagd's schema types a flag by its variant values: give all variants of a flag values of one
kind (booleans, strings, numbers or JSON objects), or flagd and typed OpenFeature calls reject it.

``driftswitch run --flagd-file PATH`` keeps a file current with :class:`FlagdFile`; the same bytes
are what the web server serves at ``GET /flagd/flags.json``.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from driftswitch.streams.contract.targeting import served_targeting

if TYPE_CHECKING:
    from driftswitch.streams.contract.events import FlagChangeEvent

SCHEMA_URL = "https://flagd.dev/schema/v0/flags.json"

#: Smallest mtime step between two writes of the file. Linux stamps files with a coarse clock
#: (one tick, 1-4 ms), and flagd's file watchers reload only when the mtime increases, so two
#: writes within one tick would hide the second; see :func:`write_atomic`.
_MTIME_STEP_NS = 1_000_000


def flag_definition(event: FlagChangeEvent) -> dict[str, Any]:
    """The flagd definition of one flag state.

    Every variant stays in ``variants`` (a restore then only changes the targeting); a killed
    variant never appears in ``fractional``. Without a rule and without any positive live weight
    the flag has no ``targeting`` and flagd serves ``defaultVariant`` (reason STATIC).
    """
    definition: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {name: state.value for name, state in event.variants.items()},
        "defaultVariant": event.default_variant,
        "metadata": {"driftswitchVersion": event.version},
    }
    rule = served_targeting(event)
    if rule is not None:
        definition["targeting"] = rule
    return definition


def document(states: Mapping[str, FlagChangeEvent]) -> dict[str, Any]:
    """The flagd document for the current state of every flag, in flag-name order."""
    return {
        "$schema": SCHEMA_URL,
        "flags": {flag: flag_definition(states[flag]) for flag in sorted(states)},
    }


def dumps(doc: Mapping[str, Any]) -> bytes:
    """Serialise a document as indented JSON (what the file and the HTTP endpoint carry)."""
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: readers see the old or the new file, never half.

    The bytes go to a temporary file in the same directory, are fsynced, and ``os.replace`` moves
    it over ``path``. If the new file's mtime would not exceed the old one's (two writes within
    one clock tick), it is set just past it, so mtime-polling watchers see every change.
    """
    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            previous = target.stat().st_mtime_ns
        except FileNotFoundError:
            previous = None
        if previous is not None and os.stat(tmp).st_mtime_ns <= previous:
            stamp = previous + _MTIME_STEP_NS
            os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FlagdFile:
    """Keeps a flagd document file current with the flag states it is given.

    :meth:`update` ignores a state whose version is not newer than the one held, and rewrites the
    whole file (atomically) on every accepted change. Thread-safe.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._states: dict[str, FlagChangeEvent] = {}
        self._lock = threading.Lock()

    @property
    def states(self) -> dict[str, FlagChangeEvent]:
        """A copy of the flag states the file currently reflects."""
        with self._lock:
            return dict(self._states)

    def update(self, *events: FlagChangeEvent) -> bool:
        """Apply flag states; write the file if any was newer. Returns whether it was written."""
        with self._lock:
            changed = False
            for event in events:
                held = self._states.get(event.flag)
                if held is None or event.version > held.version:
                    self._states[event.flag] = event
                    changed = True
            if changed:
                write_atomic(self.path, dumps(document(self._states)))
            return changed

    def write(self) -> None:
        """Write the file from the current states (also when there are none: ``flags`` is {})."""
        with self._lock:
            write_atomic(self.path, dumps(document(self._states)))
