"""Packaging rules that are easy to break by accident (docs/architecture.md "Layers")."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"streams": "driftswitch.streams", "detectors": "driftswitch.detectors"}


def test_every_sub_package_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(
            [
                FOLDERS[init.parent.relative_to(ROOT).parts[0]],
                *init.parent.relative_to(ROOT).parts[1:],
            ]
        )
        for folder in FOLDERS
        for init in (ROOT / folder).rglob("__init__.py")
    }
    assert found == listed


def test_detectors_never_import_kafka_or_streams() -> None:
    forbidden = ("driftswitch.streams", "aiokafka", "confluent_kafka")
    for path in (ROOT / "detectors").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(forbidden), f"{path}: imports {name}"


def test_client_modules_import_without_the_service_stack() -> None:
    """A model service that only records events and reads flags needs no numpy/river."""
    import subprocess
    import sys

    code = (
        "import sys, driftswitch.streams.contract.events, driftswitch.streams.contract.assign,"
        " driftswitch.streams.contract.flagd;"
        "heavy = [m for m in ('numpy', 'river', 'prometheus_client') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
