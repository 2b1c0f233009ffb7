"""The layers of ``streams/`` import in one direction only (docs/architecture.md "Layers").

contract ← config ← pipeline ← service; the Kafka adapter (``streams/kafka/``) uses the contract
only and serves the service and the client, which otherwise uses the contract only; tools sit on
top.
Every import in a module counts, including those inside functions and ``TYPE_CHECKING`` blocks:
a layer that needs a name from above, even only for typing, is in the wrong place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STREAMS = ROOT / "streams"
PREFIX = "driftswitch.streams."
#: Packages whose ``from … import name`` names a layer (a sub-package), not an attribute.
PACKAGES = ("driftswitch", "driftswitch.streams")

#: What each layer of ``driftswitch.streams`` may import from the project (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "contract": frozenset(),
    "config": frozenset({"contract", "detectors"}),
    "pipeline": frozenset({"contract", "config", "detectors"}),
    "kafka": frozenset({"contract"}),
    "service": frozenset({"contract", "config", "pipeline", "detectors", "kafka"}),
    "client": frozenset({"contract", "kafka"}),
    "tools": frozenset(
        {"contract", "config", "pipeline", "service", "client", "detectors", "kafka"}
    ),
}
#: Third-party packages a layer must never import: the pure layers do no I/O of their own.
#: rocksdict (the join's disk store) belongs to the service: the pipeline defines the store's
#: interface (``pipeline/join.py``) and keeps an in-memory join for backtests.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "contract": ("aiokafka", "aiohttp", "prometheus_client", "rocksdict"),
    "config": ("aiokafka", "aiohttp", "prometheus_client", "rocksdict"),
    "pipeline": ("aiokafka", "aiohttp", "prometheus_client", "rocksdict"),
    "kafka": ("aiohttp", "prometheus_client", "rocksdict"),
    "client": ("aiohttp", "prometheus_client", "rocksdict"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, absolute, with its line number."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            module = node.module or ""
            # `from driftswitch.streams import pipeline` imports the sub-package `pipeline`.
            found.extend(
                (node.lineno, f"{module}.{a.name}" if module in PACKAGES else module)
                for a in node.names
            )
    return found


def _layer(name: str) -> str | None:
    """The layer of a ``driftswitch.*`` module name (``detectors`` for the statistics package)."""
    if name == "driftswitch.detectors" or name.startswith("driftswitch.detectors."):
        return "detectors"
    if name.startswith(PREFIX):
        return name[len(PREFIX) :].split(".", 1)[0]
    return None


def _modules(layer: str) -> list[Path]:
    return sorted((STREAMS / layer).rglob("*.py"))


def test_every_module_is_in_a_layer() -> None:
    top = {p.name for p in STREAMS.glob("*.py")} - {"__init__.py"}
    packages = {p.name for p in STREAMS.iterdir() if (p / "__init__.py").exists()}
    assert not top, f"modules outside the layers: {sorted(top)}"
    assert packages <= set(ALLOWED), sorted(packages - set(ALLOWED))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_point_down(layer: str) -> None:
    allowed = ALLOWED[layer] | {layer}
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in _modules(layer)
        for line, name in _imports(path)
        if (target := _layer(name)) is not None and target not in allowed
    ]
    assert not wrong, "\n".join(dict.fromkeys(wrong))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_pure_layers_do_no_io_of_their_own(layer: str) -> None:
    forbidden = FORBIDDEN[layer]
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in _modules(layer)
        for line, name in _imports(path)
        if name.split(".", 1)[0] in forbidden
    ]
    assert not wrong, "\n".join(dict.fromkeys(wrong))


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The import scan finds imports inside functions and type-checking blocks too."""
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from driftswitch.streams.service.worker import Worker\n"
        "def f() -> None:\n"
        "    import aiokafka\n"
        "    from driftswitch.streams import tools\n"
    )
    names = [name for _, name in _imports(module)]
    assert names == [
        "typing",
        "driftswitch.streams.service.worker",
        "aiokafka",
        "driftswitch.streams.tools",
    ]
    assert [_layer(n) for n in names] == [None, "service", None, "tools"]
