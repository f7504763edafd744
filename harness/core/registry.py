"""One registry type for every kind of plug-in: methods, datasets, inner optimizers, analyses,
table views (in the style of timm's and lm-evaluation-harness's registries).

A :class:`Registry` maps names to objects (usually classes). Entries arrive in three ways:

* ``@REGISTRY.register("name")`` in a module that has been imported;
* the registry's ``builtins``: modules it imports itself the first time it is asked for a
  name, so a source checkout on ``PYTHONPATH`` has its built-ins without being installed;
* the entry-point group ``group`` (``pyproject.toml``'s ``[project.entry-points."ddbench.methods"]``
  of any installed package), loaded lazily at the same moment.

A plug-in that fails to import is an error naming its entry point (or module); the others are
loaded first, and the registry tries again the next time it is asked, so a broken plug-in is
never hidden. ``DDBENCH_PLUGINS`` (comma-separated module names) imports modules of one's own
without packaging them into the plug-in registries (methods, datasets, analyses): on a Ray
cluster, the workers import them too.
"""

from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from harness.core.errors import DDBenchError, UnknownNameError, one_line

T = TypeVar("T")


class PluginError(DDBenchError):
    """A built-in module or an entry point of a registry failed to load."""


class Registry(Generic[T]):
    """Names -> objects of one kind, with lazily loaded built-ins and entry points."""

    def __init__(self, kind: str, *, group: str | None = None, builtins: tuple[str, ...] = (),
                 check: Callable[[str, T], None] | None = None):
        self.kind = kind  # "method", "dataset", ...: used in messages
        self.group = group
        self.builtins = builtins
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
        """Import the built-in modules and every entry point of ``group`` (until all succeed)."""
        if self._loaded or self._loading:
            return
        self._loading = True
        failures: list[str] = []
        # Plug-in registries (those with an entry-point group) also import DDBENCH_PLUGINS.
        extra = () if self.group is None else tuple(
            m.strip() for m in os.environ.get("DDBENCH_PLUGINS", "").split(",") if m.strip())
        try:
            for module in (*self.builtins, *extra):
                try:
                    importlib.import_module(module)
                except Exception as err:  # noqa: BLE001 - reported below, after the others loaded
                    kind = "built-in module" if module in self.builtins else "DDBENCH_PLUGINS module"
                    failures.append(f"{kind} {module!r}: {one_line(err)}")
            if self.group is not None:
                for ep in entry_points(group=self.group):
                    try:
                        # ep.load() takes both "package" and "package.module:attr" values.
                        ep.load()
                    except Exception as err:  # noqa: BLE001
                        failures.append(f"entry point {ep.name!r} = {ep.value!r} of group {self.group!r}: "
                                        f"{one_line(err)}")
        finally:
            self._loading = False
        if failures:
            raise PluginError(f"cannot load {self.kind} plug-in {failures[0]}"
                              + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
        self._loaded = True

    # -- looking up

    def get(self, name: str, *, field: str | None = None) -> T:
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
        self.load()
        return name in self._entries


def _where(obj: object) -> str:
    return getattr(obj, "__module__", None) or type(obj).__module__


def first_doc_line(obj: object) -> str:
    """The first line of ``obj``'s docstring ('' without one): what ``ddbench list`` shows."""
    return next(iter((getattr(obj, "__doc__", None) or "").strip().splitlines()), "")
