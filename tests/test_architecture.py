"""The package's shape stays readable: imports are explicit and form no cycles.

docs/architecture.md draws the layers; these checks keep the drawing true.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "flared"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flared"):
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("flared")]
            for t in targets:
                if t in mods and t != name:
                    graph[name].add(t)
                    break
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_module_imports_another_in_a_cycle() -> None:
    assert _cycles(_imports()) == []


def test_packages_are_layered_without_cycles() -> None:
    packages: dict[str, set[str]] = {}
    for mod, deps in _imports().items():
        for dep in deps:
            a, b = _package(mod), _package(dep)
            if a != b and a != "flared" and b != "flared":
                packages.setdefault(a, set()).add(b)
    assert _cycles(packages) == []


def test_the_project_never_imports_itself_by_name() -> None:
    """Every module ships: a string import would only hide a dependency from readers and mypy."""
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute | ast.Name)
                and getattr(node.func, "attr", getattr(node.func, "id", ""))
                in {"import_module", "__import__"}
                and node.args
                and isinstance(node.args[0], ast.Constant | ast.JoinedStr)
                and "flared" in ast.unparse(node.args[0])
            ):
                offenders.append(f"{name}: {ast.unparse(node)}")
    assert offenders == []


def test_the_control_api_package_stays_a_leaf_below_the_services() -> None:
    deps = {d for m, ds in _imports().items() if _package(m) == "flared.control" for d in ds}
    assert {_package(d) for d in deps} <= {"flared.control", "flared.config"}
