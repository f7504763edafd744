"""Every dotted ``harness.*`` and ``methods.*`` name that the README, a page of docs/ or a
docstring of harness/ or methods/ mentions resolves: to a module (imported), or to an attribute
of one (``getattr``, a submodule imported where the attribute is one), or, for ``methods.LABEL.
field``, to a suite field path (a registered method's config field, as in an error message
``methods.tbptt.window: ...``). A renamed or moved module cannot leave its old name behind in
the docs (the names the refactors of issue 20 left in docstrings, ``harness.unrolled``,
``harness.optim``, were of that kind).

A suite's own method labels appear as TOML table headers (``[methods.random_teacher]``) and
resolve as such. Only names that are intentionally hypothetical may be listed in
:data:`HYPOTHETICAL`: each must be mentioned, and must not resolve."""

from __future__ import annotations

import ast
import importlib
import re
import types
from pathlib import Path

from test_docs import REPO, doc_pages

NAME = re.compile(r"(?<![\w./-])((?:harness|methods)(?:\.[A-Za-z_]\w*)+)")
# Names mentioned on purpose that do not exist (none today: the worked examples' plug-ins live in
# my_package, outside these prefixes, and a suite's own labels appear as table headers,
# [methods.my_label], which resolve as such). Each entry must be mentioned and must not resolve.
HYPOTHETICAL: set[str] = set()


def _docstrings(path: Path):
    """``(line, docstring)`` of the module, and of every class and function in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=False)
            if text:
                yield (node.body[0].lineno, text)


def _names(line: str) -> list[str]:
    """The dotted names of a line; one that opens a TOML table header (``[methods.my_label]``, a
    suite's own label) is kept with its ``[``."""
    return [("[" if m.start() and line[m.start() - 1] == "[" else "") + m.group(1) for m in NAME.finditer(line)]


def mentions() -> list[tuple[str, str]]:
    """``(where, name)`` of every dotted name mentioned, ``where`` as ``file:line``."""
    found = []
    for page in doc_pages():
        for number, line in enumerate(page.read_text().splitlines(), 1):
            found += [(f"{page.relative_to(REPO)}:{number}", name) for name in _names(line)]
    sources = sorted((REPO / "harness").rglob("*.py")) + sorted((REPO / "methods").glob("*.py"))
    for path in sources:
        for first, text in _docstrings(path):
            for offset, line in enumerate(text.splitlines()):
                found += [(f"{path.relative_to(REPO)}:{first + offset}", name) for name in _names(line)]
    return found


def resolves_in_python(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as err:
            if err.name is not None and not ".".join(parts[:i]).startswith(err.name):
                raise  # the module exists and imports something missing: not a docs problem
            continue
        break
    else:
        return False
    for part in parts[i:]:
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if not isinstance(obj, types.ModuleType):
            return False
        try:  # a submodule its package does not import
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        except ModuleNotFoundError:
            return False
    return True


def resolves_as_suite_field(name: str) -> bool:
    """``methods.LABEL[.by_ipc[.N]][.field...]``: LABEL a placeholder (upper case) or a registered
    method, each field one of that method's config (nested configs followed)."""
    from pydantic import BaseModel

    from harness.method import METHODS

    parts = name.split(".")[1:]
    label, fields = parts[0], parts[1:]
    if label.isupper():
        return all(f.isupper() or f in ("by_ipc", "method") for f in fields)
    if label not in METHODS:
        return False
    config: type | None = METHODS.get(label).Config
    for field in fields:
        if config is None or not (isinstance(config, type) and issubclass(config, BaseModel)):
            return False
        info = config.model_fields.get(field)
        if info is None:
            return False
        config = info.annotation if isinstance(info.annotation, type) else None
    return True


def resolves(name: str) -> bool:
    if name.startswith("["):  # a suite's table header: [methods.LABEL] or [methods.LABEL.by_ipc.N]
        label, *rest = name.removeprefix("[methods.").split(".")
        return name.startswith("[methods.") and re.fullmatch(r"[\w.-]+", label) is not None and rest in ([], ["by_ipc"])
    return resolves_in_python(name) or (name.startswith("methods.") and resolves_as_suite_field(name))


def test_every_dotted_name_in_the_docs_and_docstrings_resolves():
    found = mentions()
    named = {name for _, name in found}
    assert len(named) > 50  # the scan sees the docs and the docstrings
    broken = sorted({(where, name) for where, name in found if name not in HYPOTHETICAL and not resolves(name)})
    assert not broken, "names that do not resolve:\n" + "\n".join(f"  {where}: {name}" for where, name in broken)
    for name in HYPOTHETICAL:
        assert name in named and not resolves(name), f"{name}: no longer mentioned, or it resolves: drop it"


def test_the_resolver_refuses_what_does_not_exist():
    assert resolves("harness.engine.unroll.meta_gradient") and resolves("harness.method.builtin.rat_bptt")
    assert resolves("methods.rat_bptt.RaTBPTT") and resolves("methods.tbptt.window")
    assert resolves("methods.at_bptt.engine.mode") and resolves("methods.LABEL.by_ipc")
    assert resolves("[methods.my_label") and resolves("[methods.my_label.by_ipc")
    for name in ("harness.unrolled", "harness.optim", "harness.engine.unroll.no_such_name",
                 "methods.tbptt.no_such_field", "methods.no_such_method", "harness.tables",
                 "[methods.my_label.window", "[harness.engine"):
        assert not resolves(name), name
