"""Decoding many JSON Lines events at once, with the same results as ``decode_line``.

:func:`driftswitch.streams.events.decode_line` pays pydantic's per-call overhead for every event.
:func:`decode_events` parses each line with orjson (so line boundaries stay exactly what they
are) and validates the whole chunk in one pydantic-core call through a ``kind``-discriminated
union of the same models. If any line of the chunk fails (bad JSON, oversize, schema), the chunk
falls back to ``decode_line`` line by line, so every event is accepted with identical values, or
rejected with the identical reason and detail; ``tests/unit/test_decoding.py`` checks that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from driftswitch.streams.errors import EventError
from driftswitch.streams.events import MAX_EVENT_BYTES, OutcomeEvent, PredictionEvent, decode_line

Event = PredictionEvent | OutcomeEvent

_CHUNK = TypeAdapter(list[Annotated[PredictionEvent | OutcomeEvent, Field(discriminator="kind")]])


def decode_events(lines: Sequence[bytes | str]) -> list[Event | EventError]:
    """Decode a chunk of lines: each an event, or the ``EventError`` that rejects it."""
    try:
        objs = []
        for line in lines:
            if len(line) > MAX_EVENT_BYTES:
                raise ValueError("oversize")
            obj = orjson.loads(line)
            if type(obj) is not dict:
                raise ValueError("not an object")
            objs.append(obj)
        return list(_CHUNK.validate_python(objs))
    except (ValueError, ValidationError):  # orjson.JSONDecodeError is a ValueError
        pass
    out: list[Event | EventError] = []
    for line in lines:
        try:
            out.append(decode_line(line))
        except EventError as exc:
            out.append(exc)
    return out
