"""What every typed config shares: a strict pydantic base, one-line errors with dotted field
paths, and the merge of nested TOML tables."""

from __future__ import annotations

import re
import types
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A frozen config that refuses unknown fields (a typo in a suite file is an error)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NestedConfigError(ValueError):
    """A config error inside a pydantic validator (a config that picks its own schema, like an
    evaluation protocol): :func:`config_error_from` puts its field under the validator's."""

    def __init__(self, error: ConfigError):
        super().__init__(f"{error.field}: {error.message}" if error.field else error.message)
        self.error = error


def validate_config(model: type[M], data: dict[str, Any], prefix: str = "") -> M:
    """``model(**data)``; a bad value raises a one-line :class:`ConfigError` naming its dotted field."""
    try:
        return model(**data)
    except ValidationError as err:
        raise config_error_from(err, prefix=prefix, model=model) from None


def config_error_from(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> ConfigError:
    """The first problem of a pydantic error as a one-line :class:`ConfigError` with a dotted field path.

    A model-level validator (e.g. ``window > unroll``) reports no field of its own; when ``model``
    (the validated class) is given and the message starts with one of that model's fields, the
    field is named: ``methods.tbptt.window`` rather than ``methods.tbptt``.
    """
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if p != "[key]"]  # "[key]": pydantic's marker for a bad dict key
    msg = first["msg"].removeprefix("Value error, ")
    nested = (first.get("ctx") or {}).get("error")
    if isinstance(nested, NestedConfigError):
        loc += nested.error.field.split(".") if nested.error.field else []
        msg = nested.error.message
    elif first["type"] == "extra_forbidden":
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


def merge(base: dict, override: dict) -> dict:
    """``base`` updated by ``override``, nested tables merged key by key (new dicts)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


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
