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

import re
import types
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar, Union, get_args, get_origin

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
        # ep.load() accepts both "package" and "package.module:attr" values; importing ep.value
        # by hand breaks on the second form.
        ep.load()


def list_methods() -> dict[str, str]:
    """Registered method names and the first line of each one's docstring."""
    load_plugins()
    return {name: next(iter((cls.__doc__ or "").strip().splitlines()), "") for name, cls in sorted(_METHODS.items())}


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
        raise config_error_from(err, model=cls.Config) from None


def create_method(name: str, **cfg: Any):
    """An instance of the method registered as ``name``, with its config validated."""
    return method_class(name)(validate_method_config(name, cfg))


def config_error_from(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> ConfigError:
    """The first problem of a pydantic error as a one-line :class:`ConfigError` with a dotted field path.

    A model-level validator (e.g. ``window > unroll``) reports no field of its own; when ``model``
    (the validated class) is given and the message starts with one of that model's fields, the
    field is named: ``methods.tbptt.window`` rather than ``methods.tbptt``.
    """
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if p != "[key]"]  # "[key]": pydantic's marker for a bad dict key
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "field required"
    elif first["type"] == "value_error" and model is not None:
        inner = _model_at(model, loc)
        word = re.match(r"[A-Za-z_][A-Za-z0-9_]*", msg)
        if inner is not None and word and word.group() in inner.model_fields:
            loc.append(word.group())
    field = ".".join(p for p in (prefix, *loc) if p) or None
    return ConfigError(msg, field=field)


def _model_class(annotation: Any) -> Any:
    """``annotation`` with ``X | None`` unwrapped to X (the first pydantic model or container in a union)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        for arg in args:
            if (isinstance(arg, type) and issubclass(arg, BaseModel)) or get_origin(arg) in (dict, list, tuple):
                return arg
        return args[0] if args else annotation
    return annotation


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model class found by following ``loc`` from ``model``, or None."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(part)
            if info is None:
                return None
            current = _model_class(info.annotation)
        elif get_origin(current) is dict:
            current = _model_class(get_args(current)[1])
        elif get_origin(current) in (list, tuple) and get_args(current):
            current = _model_class(get_args(current)[0])
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None
