"""Name -> layout registry.

Why a registry and not an if/elif over names: each layout lives in its own module
and registers itself with ``@register_layout("name")``; adding a dataset means
adding one module, and the command line / flows list what exists with
``list_layouts()`` instead of keeping their own copy of the names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .base import DatasetSource, Layout

L = TypeVar("L", bound=type[Layout])

_LAYOUTS: dict[str, type[Layout]] = {}
_PRIMARY: dict[str, type[Layout]] = {}


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_layout(name: str, *aliases: str) -> Callable[[L], L]:
    """Class decorator: register a :class:`Layout` subclass under ``name`` (and aliases).

    Registering a different class under a name already taken is an error, so two
    modules can never silently shadow each other.
    """

    def deco(cls: L) -> L:
        if not (isinstance(cls, type) and issubclass(cls, Layout)):
            raise TypeError(f"register_layout({name!r}) expects a Layout subclass, got {cls!r}")
        keys = [_norm(n) for n in (name, *aliases)]
        for key in keys:
            other = _LAYOUTS.get(key)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise ValueError(f"layout name {key!r} is already registered by {other.__module__}.{other.__qualname__}")
        cls.name = _norm(name)
        cls.aliases = tuple(_norm(a) for a in aliases)
        for key in keys:
            _LAYOUTS[key] = cls
        _PRIMARY[cls.name] = cls
        return cls

    return deco


def get_layout(name: str) -> Layout:
    """A fresh instance of the layout registered as ``name`` (aliases accepted)."""
    cls = _LAYOUTS.get(_norm(name))
    if cls is None:
        raise KeyError(f"unknown dataset layout {name!r}; known layouts: {', '.join(list_layouts())}")
    return cls()


def list_layouts() -> list[str]:
    """Primary names of all registered layouts, sorted."""
    return sorted(_PRIMARY)


def layout_aliases() -> dict[str, str]:
    """Every accepted name (aliases included) -> its primary name."""
    return {k: v.name for k, v in sorted(_LAYOUTS.items())}


def load_source(layout: str, source: str, **kwargs: Any) -> DatasetSource:
    """``get_layout(layout).load(source, **kwargs)``: the one call most code needs."""
    return get_layout(layout).load(source, **kwargs)
