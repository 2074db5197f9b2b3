"""The import graph of the project's packages, read from the source (no import is executed).

``python -m tests.helpers.import_graph`` prints it, one module a line, then any cycle.
Every import counts, also those inside functions: a lazy import still ties two layers.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jit_ffcv", "writers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every absolute import in ``path``; ``import a.b`` gives ("a.b", [])."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def module_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    sources = _sources()
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        deps: set[str] = set()
        for module, names in _imports(path):
            if module in sources:
                subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in sources]
                deps.update(subs or [module])
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each sorted; [] when the graph is acyclic.

    A package ``__init__`` that re-exports lazily (PEP 562) has no edge, so it cannot close a cycle.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def private_imports() -> list[str]:
    """``module: name`` for every ``from project_module import _private`` across modules."""
    sources = _sources()
    return sorted(f"{name}: from {module} import {n}" for name, path in sources.items()
                  for module, names in _imports(path) if module in sources and module != name
                  for n in names if n.startswith("_") and not n.startswith("__"))


def main() -> int:
    graph = module_graph()
    for name in sorted(graph):
        print(f"{name}: {', '.join(sorted(graph[name])) or '-'}")
    found = cycles(graph)
    for group in found:
        print("CYCLE:", " <-> ".join(group))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
