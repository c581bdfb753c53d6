"""Model registry: ``@register_model`` maps a name to a builder; unknown names list the known ones."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``fn`` under its function name; the builder returns an uncompiled ``keras.Model``."""
    if fn.__name__ in _BUILDERS:
        raise ValueError(f"model '{fn.__name__}' registered twice")
    _BUILDERS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def get_builder(name: str) -> Callable[..., Any]:
    """The builder registered as ``name`` (the config checks its signature); KeyError lists the known names."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(list_models())}")
    return _BUILDERS[name]


def create_model(name: str, **kwargs: Any) -> Any:
    """Build the registered model ``name`` with keyword arguments (the ``model`` config section)."""
    return get_builder(name)(**kwargs)
