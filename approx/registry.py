"""Method registry: name -> method class; unknown names and parameters list the valid ones."""

from __future__ import annotations

import dataclasses
from typing import Any

from approx.base import UnlearningMethod

_METHODS: dict[str, type[UnlearningMethod]] = {}


def register(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    """Class decorator adding a method under its `name`."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _METHODS[cls.name] = cls
    return cls


def available() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def describe() -> dict[str, str]:
    """Name -> one-line summary of every method."""
    return {name: _METHODS[name].summary for name in available()}


def parameters(name: str) -> dict[str, Any]:
    """The hyperparameters of a method with their defaults."""
    return {f.name: getattr(method_class(name)(), f.name) for f in dataclasses.fields(method_class(name))}


def method_class(name: str) -> type[UnlearningMethod]:
    """The class registered as `name`."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(available())}")
    return _METHODS[name]


def create(name: str, **params: Any) -> UnlearningMethod:
    """A method instance with `params` replacing its defaults (values are coerced to the field types)."""
    cls = method_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(f"method {name!r} has no parameter(s) {unknown}; valid: {', '.join(sorted(fields))}")
    defaults = cls()
    coerced = {}
    for key, value in params.items():
        kind = type(getattr(defaults, key))
        if isinstance(value, str) and kind is not str:
            try:
                value = (value.lower() == "true") if kind is bool else kind(value)
            except ValueError:
                raise ValueError(f"{name}.{key} must be a {kind.__name__}, got {value!r}") from None
        coerced[key] = value
    return cls(**coerced)
