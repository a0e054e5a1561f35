"""Name -> layout registry.

Why a registry and not an if/elif over names: each layout lives in its own module
and registers itself with ``@register_layout("name")``; adding a dataset means
adding one module, and the command line / flows list what exists with
``list_layouts()`` instead of keeping their own copy of the names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
                raise ValueError(
                    f"layout name {key!r} is already registered by {other.__module__}.{other.__qualname__}"
                )
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


def is_layout(name: str) -> bool:
    """Whether ``name`` names a registered layout, aliases (``wds``) and spellings (``Web_Dataset``) included."""
    return _norm(name) in _LAYOUTS


def list_layouts() -> list[str]:
    """Primary names of all registered layouts, sorted."""
    return sorted(_PRIMARY)


def load_source(layout: str, source: str, **kwargs: Any) -> DatasetSource:
    """``get_layout(layout).load(source, **kwargs)``: the one call most code needs."""
    return get_layout(layout).load(source, **kwargs)


def layout_classes(
    layout: str,
    source: str,
    layout_options: Mapping[str, Any] | None = None,
    *,
    split: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """``(classnames, text_classnames)`` of a source, without sharding it.

    Exactly what ``read_dataset_info(...).classnames`` and ``.text_classnames``
    hold after sharding the same source with the same ``split`` and options:
    ``classnames`` in label order (one per label), ``text_classnames`` the classes
    the text side scores and descriptions are matched against (equal to
    ``classnames`` except for ImageNet-A/-R, where it is the 1000 ImageNet names).
    Lists files and reads the layout's index files only, never image bytes, so a
    description file can be checked against the classes before sharding. Raises
    :class:`LayoutError` like :func:`load_source` (and warns the same way about
    partial downloads). For the rest (``class_ids``, ``subset_indices``,
    ``n_classes_present``) use :func:`load_source` and read the attributes of the
    returned :class:`DatasetSource`.
    """
    ds = load_source(layout, source, split=split, storage_options=storage_options, **dict(layout_options or {}))
    return list(ds.classnames), list(ds.text_classnames or ds.classnames)
