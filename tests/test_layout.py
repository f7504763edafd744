"""The shape of the house: harness/ in layers whose imports point down only, without cycles,
modules of readable size, documented sub-packages, and methods that use the public API.

The import graph is read from the source with ``ast`` (module-level *and* function-level
imports), so a cycle or an upward import cannot hide inside a function. Run this file directly
(``python tests/test_layout.py``) to print the graph by layer.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "harness"
MAX_LINES = 500

# Sub-package -> rank. A module may import modules of its own sub-package and of strictly lower
# ranks; sub-packages of one rank are independent of each other. The root package (the public
# API) sits on top, and only the CLI-level code of ``run`` is above everything but it.
LAYERS = {"core": 0, "data": 1, "models": 1, "report": 1, "engine": 2, "method": 3, "train": 3, "evaluation": 4,
          "run": 5}
ROOT_RANK = 6
# What methods/ may import: the public API and the documented layers a method builds on.
METHOD_IMPORTS = ("harness", "harness.core", "harness.data", "harness.models", "harness.engine", "harness.method",
                  "harness.train")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(root: Path) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every ``harness`` module ``path`` imports anywhere in its body (module or function level)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from harness.x import y`: y may be a submodule or a name defined in harness.x.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found |= {n for n in names if n == "harness" or n.startswith("harness.")}
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def rank(module: str) -> int:
    name = layer(module)
    return ROOT_RANK if name is None else LAYERS[name]


def import_graph() -> dict[str, set[str]]:
    modules = all_modules(HARNESS)
    return {name: imports_of(path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            same = layer(module) == layer(target)
            if target == "harness" and module != "harness":
                bad.append(f"{module} -> harness (the public API is for users of the harness, not its layers)")
            elif not same and rank(target) >= rank(module):
                bad.append(f"{module} (rank {rank(module)}) -> {target} (rank {rank(target)})")
    return bad


def test_every_subpackage_is_a_known_layer():
    found = {p.name for p in HARNESS.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert found == set(LAYERS), "a new sub-package needs its rank in LAYERS (and a docstring saying it)"


def test_imports_point_down_the_layers_only():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle_even_through_function_level_imports():
    assert find_cycle(import_graph()) is None


def test_the_checks_catch_what_they_are_for():
    """The two checks above on small made-up graphs: they fail where they must."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert upward_imports({"harness.data.x": {"harness.engine.unroll"}}) == [
        "harness.data.x (rank 1) -> harness.engine.unroll (rank 2)"]
    assert upward_imports({"harness.data.x": {"harness.models.networks"}})  # same rank: siblings stay apart
    assert upward_imports({"harness.engine.x": {"harness.core.rng", "harness.engine.y"}}) == []


def test_function_level_imports_are_seen(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from harness.run.cli import main\n    return main\n")
    assert imports_of(tmp_path / "m.py", {"harness.run.cli"}) == {"harness.run.cli"}


@pytest.mark.parametrize("path", sorted(HARNESS.rglob("*.py")) + sorted((REPO / "methods").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_exceeds_the_line_budget(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines: split it by job"


MAX_FUNCTION_LINES = 80


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name (n lines)`` for every function or method of ``path`` longer than ``limit`` lines."""
    tree = ast.parse(path.read_text())
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


@pytest.mark.parametrize("path", sorted(HARNESS.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_no_function_exceeds_the_line_budget(path):
    """A function a newcomer reads whole: split longer ones by step (issue 20)."""
    assert not long_functions(path), f"{path.relative_to(REPO)}: {', '.join(long_functions(path))}"


def test_the_function_budget_check_sees_a_long_function(tmp_path):
    module = tmp_path / "long.py"
    module.write_text("def f():\n" + "    x = 1\n" * 90)
    assert long_functions(module) == ["f (91 lines)"]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_every_layer_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((HARNESS / package / "__init__.py").read_text()))
    assert doc and "May import" in doc, f"harness/{package}/__init__.py: say what it owns and what it may import"


def test_methods_use_the_public_api_and_the_layers_below_evaluation():
    for path in sorted((REPO / "methods").rglob("*.py")):
        for target in imports_of(path, set(all_modules(HARNESS))):
            assert target.startswith(METHOD_IMPORTS) and not target.startswith("harness.run"), (path.name, target)


def test_public_api_names_resolve():
    import harness

    for name in harness.__all__:
        assert getattr(harness, name) is not None, name
    for required in ("meta_gradient", "FunctionalModel", "class_balanced_schedule", "InnerOptimizerConfig",
                     "make_inner_optimizer", "register_method", "create_method", "load_suite", "run_suite",
                     "RunRecord"):
        assert required in harness.__all__


def main() -> None:
    graph = import_graph()
    by_layer: dict[str, list[str]] = defaultdict(list)
    for module in graph:
        by_layer[layer(module) or "harness"].append(module)
    for name in sorted(by_layer, key=lambda n: LAYERS.get(n, ROOT_RANK)):
        deps = sorted({layer(t) or "harness" for m in by_layer[name] for t in graph[m]} - {name})
        print(f"{name:11s} rank {LAYERS.get(name, ROOT_RANK)}  {len(by_layer[name]):2d} modules  imports: "
              f"{', '.join(deps) or '-'}")
    print(f"upward imports: {upward_imports(graph) or 'none'}")
    print(f"cycle: {find_cycle(graph) or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
