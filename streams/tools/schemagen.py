"""Generate the JSON Schemas in ``schemas/`` from the pydantic models (never edit them by hand).

python -m driftswitch.streams.tools.schemagen            # rewrite schemas/*.schema.json
python -m driftswitch.streams.tools.schemagen --check    # exit 1 if the committed files are stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from driftswitch.streams.config.model import Config
from driftswitch.streams.contract.commands import Command
from driftswitch.streams.contract.events import (
    SCHEMA_VERSION,
    AlertEvent,
    FlagChangeEvent,
    OutcomeEvent,
    PredictionEvent,
)

#: Schema file stem → model.
SCHEMAS: dict[str, type[BaseModel]] = {
    "prediction": PredictionEvent,
    "outcome": OutcomeEvent,
    "flag-change": FlagChangeEvent,
    "alert": AlertEvent,
    "config": Config,
    "control": Command,
}

REGENERATE = "python -m driftswitch.streams.tools.schemagen"


def schema_id(name: str) -> str:
    """The versioned ``$id`` of a schema."""
    return f"urn:driftswitch:schema:v{SCHEMA_VERSION}:{name}"


def build(name: str) -> dict[str, Any]:
    """The JSON Schema document for one model."""
    model = SCHEMAS[name]
    schema = model.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id(name),
        **schema,
    }


def render(name: str) -> str:
    """The file text for one schema (stable: sorted keys, trailing newline)."""
    return json.dumps(build(name), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def default_dir() -> Path:
    """``schemas/`` of the source checkout this module was installed from."""
    here = Path(__file__).resolve()  # strict editable install: resolves to the checkout
    return here.parents[2] / "schemas"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if files are stale")
    parser.add_argument("--dir", type=Path, default=None, help="schemas directory")
    args = parser.parse_args(argv)
    out: Path = args.dir or default_dir()
    stale = []
    for name in SCHEMAS:
        path = out / f"{name}.schema.json"
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale JSON Schemas: {', '.join(stale)}; regenerate with `{REGENERATE}`")
        return 1
    if not args.check:
        print(f"wrote {len(SCHEMAS)} schemas to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
