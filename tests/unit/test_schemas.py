"""The committed JSON Schemas are current, and every example document validates (or fails) with
both jsonschema and the pydantic models, so the two can never disagree silently."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pydantic
import pytest
import yaml

from driftswitch.streams.config.model import load_config
from driftswitch.streams.contract.errors import ConfigError
from driftswitch.streams.tools import schemagen

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
# One folder per schema; `interleaving/` holds event streams that only the engine can judge
# (a team that is not a variant, a click on an item not shown): tests/unit/test_interleaving.py.
EXAMPLES = sorted(
    p for p in (SCHEMAS / "examples").glob("*/*/*") if p.parts[-3] in schemagen.SCHEMAS
)


def _load(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_committed_schemas_are_current() -> None:
    stale = [
        name
        for name in schemagen.SCHEMAS
        if (SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8") != schemagen.render(name)
    ]
    assert not stale, f"stale schemas {stale}: regenerate with `{schemagen.REGENERATE}`"


def test_check_mode_names_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schemagen.main(["--dir", str(tmp_path)]) == 0
    (tmp_path / "outcome.schema.json").write_text("{}", encoding="utf-8")
    assert schemagen.main(["--check", "--dir", str(tmp_path)]) == 1
    assert schemagen.REGENERATE in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(schemagen.SCHEMAS))
def test_schema_has_versioned_id_and_closed_objects(name: str) -> None:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    assert schema["$id"] == f"urn:driftswitch:schema:v1:{name}"
    defs = schema.get("$defs", {}).values()
    objects = [schema, *(d for d in defs if d.get("type") == "object")]
    for obj in objects:
        title = obj.get("title")
        # DetectorSpec is open on purpose: each detector kind validates its own parameters.
        assert obj.get("additionalProperties") is False or title == "DetectorSpec", title
        undocumented = [k for k, v in obj["properties"].items() if "description" not in v]
        assert not undocumented, f"{title}: properties without a description: {undocumented}"


def test_every_schema_has_positive_and_negative_examples() -> None:
    for name in schemagen.SCHEMAS:
        for kind in ("valid", "invalid"):
            assert list((SCHEMAS / "examples" / name / kind).iterdir()), (name, kind)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: "/".join(p.parts[-3:]))
def test_example(path: Path) -> None:
    name, kind = path.parts[-3], path.parts[-2]
    doc = _load(path)
    model = schemagen.SCHEMAS[name]
    errors = list(_validator(name).iter_errors(doc))
    if kind == "valid":
        assert not errors, [e.message for e in errors]
        model.model_validate(doc)
        if name == "config":  # valid configs also pass the cross-field rules
            load_config(path)
    else:
        assert errors, "jsonschema accepted an invalid example"
        with pytest.raises(pydantic.ValidationError):
            model.model_validate(doc)
        if name == "config":
            with pytest.raises(ConfigError):
                load_config(path)
