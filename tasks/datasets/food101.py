"""Food-101: ``meta/test.txt`` and ``meta/classes.txt`` over ``images/<class>/``.

``food-101.tar.gz`` extracts to ``food-101/`` with ``images/<class>/<id>.jpg``,
``meta/classes.txt`` (101 folder names in label order), ``meta/labels.txt``
(the same, capitalised) and ``meta/{train,test}.txt`` (``<class>/<id>``, no
extension). Class names are the folder names with spaces ("apple pie"), the
form CLIP prompts and the CuPL descriptions use.
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
    list_tree,
    parse_table,
    readable_name,
    warn_missing,
)
from .registry import register_layout


@register_layout("food101", "food-101")
class Food101(Layout):
    """Food-101 (test split: 25,250 images, 101 dishes): point at food-101/ (or its parent) with images/ and meta/."""

    title = "food-101/ with images/<class>/, meta/classes.txt and meta/test.txt"
    expected_sizes = {"test": 25_250, "train": 75_750}
    default_split = "test"
    splits = ("test", "train")
    default_templates = "food101"  # CLIP's "a photo of {c}, a type of food."

    def _load(
        self, fs: AbstractFileSystem, root: str, *, source: str, split: str | None, **options: Any
    ) -> DatasetSource:
        if options:
            raise TypeError(f"{self.name}: unexpected options {sorted(options)}")
        base = find_root(fs, root, "meta", subdirs=("food-101",), what=self.title, layout=self.name)
        classes_file = posixpath.join(base, "meta", "classes.txt")
        folders = [
            f[0]
            for _, f in parse_table(
                fs, classes_file, n_fields=1, what="one class folder name per line (e.g. 'apple_pie')", layout=self.name
            )
        ]
        if len(set(folders)) != len(folders):
            raise LayoutError(
                f"{self.name}: {display(fs, classes_file)} lists a class twice; expected unique folder names"
            )
        label_of = {c: i for i, c in enumerate(folders)}
        split_file = posixpath.join(base, "meta", f"{split}.txt")
        specs: list[tuple[str, int, str]] = []
        for lineno, (item,) in parse_table(
            fs, split_file, n_fields=1, what="'<class>/<image id>' (e.g. 'apple_pie/1011328')", layout=self.name
        ):
            cls, _, stem = item.partition("/")
            if cls not in label_of or not stem:
                raise LayoutError(
                    f"{self.name}: {display(fs, split_file)} line {lineno}: {item!r} is not '<class>/<image id>' "
                    f"with a class from {display(fs, classes_file)}"
                )
            specs.append((f"images/{item}.jpg", label_of[cls], f"{item}.jpg"))
        images_dir = posixpath.join(base, "images")
        listing = {f"images/{k}": v for k, v in (list_tree(fs, images_dir) if fs.isdir(images_dir) else {}).items()}
        entries = entries_from_listing(specs, listing)
        warn_missing(self.name, fs, base, entries, listing, f"meta/{split}.txt")
        return DatasetSource(
            layout=self.name,
            name=self.name if split == "test" else f"{self.name}-{split}",
            url=source,
            fs=fs,
            root_path=base,
            classnames=[readable_name(f) for f in folders],
            entries=entries,
            class_ids=folders,
            split=split,
        )
