"""Dataset layouts: every benchmark's official on-disk layout, registered by name.

``load_source("imagenet-a", "/data/imagenet-a")`` returns a
:class:`~tasks.datasets.base.DatasetSource`: classes in label order, the classes
the text side scores, the ImageNet-A/R subset indices, the official size and
the ordered images. ``tasks.steps.shard`` turns it into Parquet shards.

Importing this package imports every layout module, which registers itself.
"""

from __future__ import annotations

from . import cub, dtd, folder, food101, hf_parquet, imagenet, manifest, pets, places365, webdataset  # noqa: F401  (registration)
from .base import (
    DatasetSizeWarning,
    DatasetSource,
    Entry,
    EntryReadError,
    IgnoredFile,
    Layout,
    LayoutError,
    SingleClassWarning,
    escape_undecodable,
)
from .registry import (
    get_layout,
    layout_classes,
    list_layouts,
    load_source,
    register_layout,
)

__all__ = [
    "DatasetSizeWarning",
    "DatasetSource",
    "Entry",
    "EntryReadError",
    "IgnoredFile",
    "Layout",
    "LayoutError",
    "SingleClassWarning",
    "escape_undecodable",
    "get_layout",
    "layout_classes",
    "list_layouts",
    "load_source",
    "register_layout",
]
