"""The method registry (timm's style, on the one :class:`harness.core.registry.Registry` type).

A method is a class with a typed ``Config`` (a pydantic model carrying the paper's defaults)
registered under a name::

    @register_method("rat_bptt")
    class RaTBPTT(UnrolledMethod):
        Config = RaTBPTTConfig

and built with ``create_method("rat_bptt", window=40)``. The harness never imports the
``methods`` package by name: the registry loads that folder by its path, as
:mod:`harness.method.builtin`, so a user's own ``methods`` package cannot hide it (a checkout on
``PYTHONPATH`` has its methods without being installed). Other packages add theirs through the
``ddbench.methods`` entry-point group.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from pydantic import BaseModel

from harness.core.config import validate_config
from harness.core.registry import Registry, first_doc_line

M = TypeVar("M", bound=type)


def _check_method(name: str, cls: type) -> None:
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise TypeError(f"method {name!r}: {getattr(cls, '__name__', cls)}.Config must be a pydantic BaseModel")


METHODS: Registry[type] = Registry("method", group="ddbench.methods", builtins="harness.method.builtin",
                                   check=_check_method)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register ``cls`` under ``name``; ``cls.Config`` must be a pydantic model."""
    return METHODS.class_decorator(name)


def method_class(name: str) -> type:
    return METHODS.get(name, field="method")


def list_methods() -> dict[str, str]:
    """Registered method names and the first line of each one's docstring."""
    return {name: first_doc_line(cls) for name, cls in METHODS.items()}


def validate_method_config(name: str, cfg: dict[str, Any]) -> BaseModel:
    """Build ``name``'s typed config from ``cfg``; a bad value raises :class:`ConfigError` naming its field."""
    return validate_config(method_class(name).Config, cfg)


def create_method(name: str, **cfg: Any):
    """An instance of the method registered as ``name``, with its config validated."""
    return method_class(name)(validate_method_config(name, cfg))
