"""One-way layers: ``writers`` never imports ``jit_ffcv``, and no module import cycle exists.

Show the graph with ``python -m tests.helpers.import_graph`` (one line per module and what it imports).
"""

from __future__ import annotations

from tests.helpers.import_graph import cycles, module_graph


def test_writers_import_nothing_from_jit_ffcv() -> None:
    graph = module_graph()
    upward = sorted(f"{mod} -> {dep}" for mod, deps in graph.items() if mod.startswith("writers")
                    for dep in deps if dep.startswith("jit_ffcv"))
    assert upward == []


def test_no_import_cycle() -> None:
    assert cycles(module_graph()) == []


def test_a_cycle_is_found() -> None:  # negative control for the search above
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_crosses_modules() -> None:
    from tests.helpers.import_graph import private_imports

    assert private_imports() == []
