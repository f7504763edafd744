"""The method registry, in the style of timm's model registry.

A method is a class with a typed ``Config`` (a pydantic model carrying the paper's defaults)
registered under a name::

    @register_method("rat_bptt")
    class RaTBPTT(UnrolledMethod):
        Config = RaTBPTTConfig

and built with ``create_method("rat_bptt", window=40)``. The harness never imports the
``methods`` package by name: methods are loaded through the ``ddbench.methods`` entry-point
group (``pyproject.toml``), so another package can add its own.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from harness.errors import ConfigError, UnknownNameError

_METHODS: dict[str, type] = {}
_plugins_loaded = False
M = TypeVar("M", bound=type)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register ``cls`` under ``name``; ``cls.Config`` must be a pydantic model."""

    def decorator(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__module__} and {cls.__module__})")
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, BaseModel)):
            raise TypeError(f"method {name!r}: {cls.__name__}.Config must be a pydantic BaseModel")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorator


def load_plugins() -> None:
    """Import every module named in the ``ddbench.methods`` entry-point group (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group="ddbench.methods"):
        importlib.import_module(ep.value)


def list_methods() -> dict[str, str]:
    """Registered method names and the first line of each one's docstring."""
    load_plugins()
    return {name: (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "" for name, cls in sorted(_METHODS.items())}


def method_class(name: str) -> type:
    load_plugins()
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS)) or "none"
        raise UnknownNameError(f"unknown method {name!r} (registered: {known})", field="method") from None


def validate_method_config(name: str, cfg: dict[str, Any]) -> BaseModel:
    """Build ``name``'s typed config from ``cfg``; a bad value raises :class:`ConfigError` naming its field."""
    cls = method_class(name)
    try:
        return cls.Config(**cfg)
    except ValidationError as err:
        raise config_error_from(err) from None


def create_method(name: str, **cfg: Any):
    """An instance of the method registered as ``name``, with its config validated."""
    return method_class(name)(validate_method_config(name, cfg))


def config_error_from(err: ValidationError, prefix: str = "") -> ConfigError:
    """The first problem of a pydantic error as a one-line :class:`ConfigError` with a dotted field path."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    field = ".".join(p for p in (prefix, loc) if p) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "field required"
    return ConfigError(msg, field=field)
