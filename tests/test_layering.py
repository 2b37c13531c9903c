"""Data flows one way: sources → pipeline → store, destinations never import sources, and so on."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "loopwire"

# Layer → the loopwire layers it must never import.
FORBIDDEN = {
    "model": {"sources", "pipeline", "store", "destinations", "app", "cli", "sandbox", "demo", "web"},
    "store": {"sources", "pipeline", "destinations", "app", "cli", "sandbox", "demo", "web"},
    "destinations": {"sources", "pipeline", "store", "app", "cli", "demo", "web"},
    "pipeline": {"sources", "app", "cli", "sandbox", "demo", "web"},
    "sources": {"app", "cli", "sandbox", "demo", "web", "destinations"},
    "sandbox": {"sources", "pipeline", "store", "destinations", "app", "cli", "demo", "web"},
    "contracts": {"sources", "pipeline", "store", "destinations", "app", "cli", "sandbox", "demo", "web"},
    "audiences": {"sources", "destinations", "app", "cli", "sandbox", "demo", "web"},
    "analysis": {"sources", "pipeline", "destinations", "app", "cli", "sandbox", "demo", "web"},
    "identity": {"sources", "pipeline", "app", "cli", "sandbox", "demo", "web"},
}


def imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    layers: set[str] = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "loopwire" and len(parts) > 1:
                layers.add(parts[1])
    return layers


def test_no_module_imports_upstream() -> None:
    problems = []
    for path in PACKAGE.rglob("*.py"):
        layer = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        bad = imported_layers(path) & FORBIDDEN.get(layer, set())
        if bad:
            problems.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert problems == []
