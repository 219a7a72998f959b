"""Method registry: name -> method class; unknown names and parameters list the valid ones.

A hyperparameter's description is the docstring under its dataclass field (the attribute-docstring
convention used throughout), read from the source with `ast`: one place to write it, shown by
`unlearn methods -v`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from functools import cache
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


def method_class(name: str) -> type[UnlearningMethod]:
    """The class registered as `name`."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(available())}")
    return _METHODS[name]


def parameters(name: str) -> dict[str, Any]:
    """The hyperparameters of a method with their defaults."""
    defaults = method_class(name)()
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}


def parameter_docs(name: str) -> dict[str, str]:
    """Each hyperparameter of a method -> the first line of its field docstring ('' if it has none).

    A field redeclared in a subclass only to change its default keeps its base class's docstring.
    """
    cls = method_class(name)
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # base classes first, so a subclass's docstring wins
        docs.update(_field_docstrings(klass))
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


@cache
def _field_docstrings(klass: type) -> dict[str, str]:
    """`name: type = value` followed by a string literal, in the class body's source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError):  # a class without source (builtins, an interactive session)
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value).splitlines()[0]
    return docs


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
        if isinstance(value, float) and not math.isfinite(value):
            # NaN passes every `<=` check a method makes and trains a NaN model: refuse it here, once.
            raise ValueError(f"{name}.{key} must be a finite number, got {value!r}")
        coerced[key] = value
    return cls(**coerced)
