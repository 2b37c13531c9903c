"""Data flows one way: sources → pipeline → store, destinations never import sources, and so on."""

from __future__ import annotations

import ast
import re
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


# Nothing above `store/` knows which database it runs on (DESIGN.md, "Storage"; issue 11): it calls
# the named operations of `loopwire.store` (the `Store` Protocol of store/base.py and the functions
# of its modules) and never a driver, a connection, SQL, or the jobs the store's modules run.
DRIVERS = {"sqlite3", "psycopg", "psycopg_pool", "duckdb"}
CONNECTION_CALLS = {"execute", "executemany", "executescript"}
STORE_INTERNALS = {"run", "read", "write", "submit", "reader", "_conn", "_reader"}
SQL = re.compile(
    r"^\s*(SELECT\b.+\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|VIEW|TRIGGER)"
    r"|DROP\s+(TABLE|INDEX)|PRAGMA\s|BEGIN\b|COMMIT\b|WITH\s+RECURSIVE)",
    re.DOTALL,
)


def _store_like(node: ast.expr) -> bool:
    """`store`, `self._store`, `runtime.store` …"""
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name.lstrip("_").endswith("store")


def database_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found: list[str] = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        found += [f"line {node.lineno}: imports {m}" for m in modules if m.split(".")[0] in DRIVERS]
        call = node.func if isinstance(node, ast.Call) else None
        if isinstance(call, ast.Attribute) and call.attr in CONNECTION_CALLS:
            found.append(f"line {node.lineno}: calls .{call.attr}()")
        if isinstance(node, ast.Attribute) and node.attr in STORE_INTERNALS and _store_like(node.value):
            found.append(f"line {node.lineno}: uses the store's .{node.attr}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            found.append(f"line {node.lineno}: SQL {node.value[:40]!r}")
    return found


def test_nothing_above_the_store_runs_sql() -> None:
    problems = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "store":
            continue
        problems += [f"{path.relative_to(PACKAGE)} {use}" for use in database_uses(path)]
    assert problems == []


def test_the_sql_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sqlite3\n"
        "def f(store, conn):\n"
        "    conn.execute('SELECT seq FROM events WHERE id = ?', ('x',))\n"
        "    return store.run(lambda c: c)\n"
    )
    assert [use.split(":")[0] for use in database_uses(probe)] == ["line 1", "line 3", "line 3", "line 4"]
