"""One registry type for every kind of plug-in (in the style of timm's and lm-evaluation-harness's
registries), and one plug-in shape for all six registries.

A :class:`Registry` maps names to objects (usually classes), added by ``@REGISTRY.register("name")``
(or a wrapper: ``register_method``, ``register_dataset``, ...) in a module that is imported. Every
registry finds those modules the same three ways, the first time it is asked for a name:

* its **built-in package** (``builtins=``): the package is imported and so is every module in
  its own folder, so a new built-in is one new file there (never an edit of a list). A
  registry whose built-ins sit beside its declaration names that module instead;
* its **entry-point group** (``group=``): every entry point of every installed package, e.g.
  ``[project.entry-points."ddbench.methods"]`` in a plug-in's ``pyproject.toml`` (a value is a
  module, ``pkg.mod``, or an attribute, ``pkg.mod:attr``);
* ``DDBENCH_PLUGINS``: comma-separated module names imported into every registry, for one's own
  modules without packaging them (they must be importable: on ``PYTHONPATH``). The Ray executor
  passes every ``DDBENCH_*`` variable to its workers, so they import them too.

The six registries::

    kind       registry                                built-in package                     entry-point group
    method     harness.method.registry.METHODS         methods/, as harness.method.builtin  ddbench.methods
    dataset    harness.data.registry.DATASETS          harness.data.sources                 ddbench.datasets
    optimizer  harness.engine.optim.OPTIMIZERS         harness.engine.optim (a module)      ddbench.optimizers
    protocol   harness.evaluation.protocols.PROTOCOLS  harness.evaluation.protocols         ddbench.protocols
    analysis   harness.evaluation.analysis.ANALYSES    harness.evaluation                   ddbench.analyses
    view       harness.report.tables.VIEWS             harness.report.views                 ddbench.views

A built-in module, entry point or ``DDBENCH_PLUGINS`` module that fails to import is an error
naming it (one line, naming every one that failed); all the others are loaded first, and the
registry tries again the next time it is asked, so a broken plug-in never hides another. Asking
for a name that is registered already (a built-in registered when its module was imported)
loads nothing: a registry may be asked while ``harness`` itself is still being imported (a
config default validated at import time), and a plug-in imported then would find ``harness``
half-imported. Listing a registry, or asking for a name it lacks, loads everything.

**Shadowing.** ``harness`` and ``methods`` are generic names, and Python puts the current folder
first on ``sys.path`` (``python -c``, ``python -m``, pytest; the ``ddbench`` console script does
not). The built-in methods are therefore loaded by their folder's path, the ``methods`` folder
beside the running ``harness`` package, under the name ``harness.method.builtin``: a user's own
``methods`` package cannot hide them. A user's ``harness`` package ahead of ddbench's replaces
ddbench entirely (its code never runs, so it cannot say so); where ddbench is running and starts
processes that would import another ``harness`` (Ray's workers put the driver's working folder
first on ``sys.path``), :func:`check_not_shadowed` refuses with one line naming that folder.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from contextlib import contextmanager
from importlib.machinery import PathFinder
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from harness.core.errors import DDBenchError, UnknownNameError, one_line

T = TypeVar("T")

PLUGINS_VARIABLE = "DDBENCH_PLUGINS"


class PluginError(DDBenchError):
    """A built-in module, an entry point or a ``DDBENCH_PLUGINS`` module failed to load, or
    another package would be imported in place of ddbench's."""


class Registry(Generic[T]):
    """Names -> objects of one kind, with lazily loaded built-ins, entry points and DDBENCH_PLUGINS."""

    def __init__(self, kind: str, *, group: str | None = None, builtins: str | tuple[str, ...] = (),
                 check: Callable[[str, T], None] | None = None):
        self.kind = kind  # "method", "dataset", ...: used in messages
        self.group = group  # the entry-point group, "ddbench.<kind>s"
        # The package (or module) holding the built-ins; a tuple names several.
        self.builtins: tuple[str, ...] = (builtins,) if isinstance(builtins, str) else tuple(builtins)
        self._check = check
        self._entries: dict[str, T] = {}
        self._loaded = False
        self._loading = False

    # -- registering

    def register(self, name: str, obj: T | None = None):
        """``@registry.register("name")`` (a decorator), or ``registry.register("name", obj)``."""

        def add(value: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not value:
                raise ValueError(f"{self.kind} {name!r} is registered twice "
                                 f"({_where(existing)} and {_where(value)})")
            if self._check is not None:
                self._check(name, value)
            self._entries[name] = value
            return value

        return add if obj is None else add(obj)

    def class_decorator(self, name: str):
        """``@registry.class_decorator("name")`` on a class: registers it and sets ``cls.name``
        (what ``register_method``, ``register_dataset`` and ``register_analysis`` are)."""

        def decorate(cls):
            self.register(name, cls)
            cls.name = name
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    @contextmanager
    def scoped(self) -> Iterator["Registry[T]"]:
        """Entries added or removed inside the block are undone afterwards (tests, examples)."""
        self.load()
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(saved)

    # -- loading

    def load(self) -> None:
        """Import the built-in package's modules, ``DDBENCH_PLUGINS`` and every entry point of
        ``group``; a :class:`PluginError` naming each one that failed, after all the others."""
        if self._loaded or self._loading:
            return
        self._loading = True
        failures: list[str] = []
        try:
            for package in self.builtins:
                failures += _import_package(package)
            for module in plugin_modules():
                failures += _import(module, f"{PLUGINS_VARIABLE} module {module!r}")
            if self.group is not None:
                for ep in entry_points(group=self.group):
                    try:
                        ep.load()  # takes both "package.module" and "package.module:attr" values
                    except Exception as err:  # noqa: BLE001 - reported below, after the others loaded
                        failures.append(f"entry point {ep.name!r} = {ep.value!r} of group {self.group!r}: "
                                        f"{one_line(err)}")
        finally:
            self._loading = False
        if failures:
            raise PluginError(f"cannot load {self.kind} plug-in{'s' if len(failures) > 1 else ''}: "
                              + "; ".join(failures))
        self._loaded = True

    # -- looking up

    def get(self, name: str, *, field: str | None = None) -> T:
        if name not in self._entries:  # a registered name needs no loading (module docstring)
            self.load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r} (registered: {known})", field=field) from None

    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self.load()
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self.load()
        return name in self._entries


def plugin_modules() -> list[str]:
    """The module names in ``DDBENCH_PLUGINS`` (comma-separated, blanks ignored)."""
    return [m.strip() for m in os.environ.get(PLUGINS_VARIABLE, "").split(",") if m.strip()]


def _import(module: str, what: str) -> list[str]:
    """Import ``module``: [] or the one failure, described as ``what``."""
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - collected: one broken module hides no other
        return [f"{what}: {one_line(err)}"]
    return []


def _import_package(package: str) -> list[str]:
    """Import ``package`` and, if it is a package, every module in its own folder (not those of
    subpackages, which import their own); the failures, each naming its module."""
    failures = _import(package, f"built-in module {package!r}")
    folders = getattr(sys.modules.get(package), "__path__", None)
    if failures or folders is None:
        return failures
    names = [info.name for info in pkgutil.iter_modules(folders)]
    if not names:
        return [f"built-in package {package!r}: no modules in {', '.join(map(str, folders))}"]
    for module in (f"{package}.{name}" for name in names):
        failures += _import(module, f"built-in module {module!r}")
    return failures


def shadowing_folder(name: str, folders: Iterable[str | os.PathLike]) -> Path | None:
    """The first of ``folders`` from which ``import name`` would get a module or a regular package
    other than the running one (``sys.modules[name]``), i.e. what a process with those folders
    first on ``sys.path`` would import instead; None if there is none. A folder without
    ``__init__.py`` (a namespace portion) never wins over a regular package, so it is not one."""
    running = Path(sys.modules[name].__file__).resolve()
    for folder in folders:
        spec = PathFinder.find_spec(name, [os.fspath(folder)])
        if spec is None or spec.origin is None or spec.loader is None:
            continue
        origin = Path(spec.origin).resolve()
        if origin != running:
            return origin.parent if spec.submodule_search_locations is not None else origin
    return None


def check_not_shadowed(name: str, folders: Iterable[str | os.PathLike], *, where: str) -> None:
    """A one-line :class:`PluginError` naming the folder if a process with ``folders`` first on its
    ``sys.path`` (``where``: e.g. "on the Ray workers, which ...") would import another ``name``."""
    other = shadowing_folder(name, folders)
    if other is not None:
        ours = Path(sys.modules[name].__file__).resolve().parent
        raise PluginError(f"{other} would be imported {where} instead of ddbench's {name!r} package ({ours}): "
                          "rename it or run from another folder")


def _where(obj: object) -> str:
    return getattr(obj, "__module__", None) or type(obj).__module__


def first_doc_line(obj: object) -> str:
    """The first line of ``obj``'s docstring ('' without one): what ``ddbench list`` shows."""
    return next(iter((getattr(obj, "__doc__", None) or "").strip().splitlines()), "")
