"""DTD (Describable Textures Dataset): ``labels/<split>.txt`` over ``images/<class>/``.

``dtd-r1.0.1.tar.gz`` extracts to ``dtd/`` with ``images/<class>/<class>_NNNN.jpg``
and ``labels/{train,val,test}{1..10}.txt`` (one ``<class>/<file>.jpg`` per line).
The usual zero-shot protocol evaluates ``test1`` (1,880 images); every split
file has 1,880 lines. Classes are the 47 texture names in sorted order (the
folder names, which are already readable words).
"""

from __future__ import annotations

import posixpath
from typing import Any

from fsspec.spec import AbstractFileSystem

from .base import DatasetSource, Layout, LayoutError
from .listing import (
    display,
    entries_from_listing,
    find_root,
    is_junk,
    list_tree,
    parse_table,
    warn_missing,
)
from .registry import register_layout

_SPLITS = tuple(f"{kind}{i}" for kind in ("test", "val", "train") for i in range(1, 11))


@register_layout("dtd")
class DTD(Layout):
    """DTD textures (split test1: 1,880 images, 47 classes): point at dtd/ (or its parent) with images/ and labels/."""

    title = "dtd/ with images/<class>/ and labels/test1.txt (one '<class>/<file>.jpg' per line)"
    expected_sizes = {s: 1_880 for s in _SPLITS}
    default_split = "test1"
    splits = _SPLITS
    default_templates = "dtd"  # CLIP's 8 texture templates

    def _load(
        self, fs: AbstractFileSystem, root: str, *, source: str, split: str | None, **options: Any
    ) -> DatasetSource:
        if options:
            raise TypeError(f"{self.name}: unexpected options {sorted(options)}")
        base = find_root(fs, root, "labels", subdirs=("dtd",), what=self.title, layout=self.name)
        split_file = posixpath.join(base, "labels", f"{split}.txt")
        rows = parse_table(fs, split_file, n_fields=1, what="'<class>/<file>.jpg'", layout=self.name)
        for lineno, (rel,) in rows:
            if rel.count("/") != 1:
                raise LayoutError(
                    f"{self.name}: {display(fs, split_file)} line {lineno}: expected '<class>/<file>.jpg', got {rel!r}"
                )

        images_dir = posixpath.join(base, "images")
        listing = {f"images/{k}": v for k, v in (list_tree(fs, images_dir) if fs.isdir(images_dir) else {}).items()}
        folders = {k.split("/")[1] for k in listing if k.count("/") >= 2 and not is_junk(k.split("/")[1])}
        classnames = sorted(folders | {rel.split("/")[0] for _, (rel,) in rows})
        label_of = {c: i for i, c in enumerate(classnames)}
        specs = [(f"images/{rel}", label_of[rel.split("/")[0]], rel) for _, (rel,) in rows]
        entries = entries_from_listing(specs, listing)
        warn_missing(self.name, fs, base, entries, listing, f"labels/{split}.txt")
        return DatasetSource(
            layout=self.name,
            name=self.name if split == self.default_split else f"{self.name}-{split}",
            url=source,
            fs=fs,
            root_path=base,
            classnames=classnames,
            entries=entries,
            class_ids=list(classnames),
            split=split,
        )
