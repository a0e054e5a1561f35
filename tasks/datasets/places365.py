"""Places365-Standard validation set: ``places365_val.txt`` over ``val_large/`` or ``val_256/``.

The images come from ``val_large.tar`` (original size) or ``val_256.tar``
(256x256); the lists from ``filelist_places365-standard.tar``:
``categories_places365.txt`` (``/a/airfield 0``) and ``places365_val.txt``
(``Places365_val_00000001.jpg 165``). This is the layout
``torchvision.datasets.Places365`` uses; the two list files may sit next to the
image folder or inside ``filelist_places365-standard/``.

Class names drop the ``/a/`` prefix and put a qualifier in brackets:
``/a/arena/hockey`` -> "arena (hockey)", ``/b/bus_interior`` -> "bus interior".
The bracket keeps the 365 names distinct (dropping the qualifier, as some
codebases do, merges 21 pairs into identical prompts).
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

IMAGE_DIRS = ("val_large", "val_256")


def category_name(category: str) -> str:
    """``/a/apartment_building/outdoor`` -> ``apartment building (outdoor)``."""
    parts = [p for p in category.strip("/").split("/") if p]
    if len(parts) >= 2 and len(parts[0]) == 1:
        parts = parts[1:]
    head, *rest = parts
    name = readable_name(head)
    return f"{name} ({' '.join(readable_name(r) for r in rest)})" if rest else name


@register_layout("places365", "places")
class Places365(Layout):
    """Places365-Standard validation (36,500 images, 365 scenes): point at the folder holding val_large/ or val_256/.

    The two file lists may sit next to the image folder or in filelist_places365-standard/.
    """

    title = (
        "a folder with categories_places365.txt, places365_val.txt (or filelist_places365-standard/ holding them) "
        "and val_large/ or val_256/"
    )
    expected_sizes = {"val": 36_500}
    default_split = "val"
    splits = ("val",)
    #: CLIP published no Places365 set: the ImageNet one, CLIP_benchmark's fallback and the ABS spec's clip-e
    #: (``--templates sun397`` picks CLIP's scene set instead).
    default_templates = "imagenet1k"

    def _load(
        self,
        fs: AbstractFileSystem,
        root: str,
        *,
        source: str,
        split: str | None,
        images_dir: str | None = None,
        **options: Any,
    ) -> DatasetSource:
        """``images_dir`` picks the image folder; by default the first of val_large/, val_256/ present."""
        if options:
            raise TypeError(f"{self.name}: unexpected options {sorted(options)}")
        lists = find_root(
            fs,
            root,
            "categories_places365.txt",
            subdirs=("filelist_places365-standard",),
            what=self.title,
            layout=self.name,
        )
        cat_file = posixpath.join(lists, "categories_places365.txt")
        cats = parse_table(
            fs, cat_file, n_fields=2, int_fields=(1,), what="'/<letter>/<category> <index>'", layout=self.name
        )
        by_index = {int(f[1]): f[0] for _, f in cats}
        if sorted(by_index) != list(range(len(cats))):
            raise LayoutError(f"{self.name}: {display(fs, cat_file)}: indices must run 0..{len(cats) - 1} once each")
        categories = [by_index[i] for i in range(len(cats))]

        if images_dir is None:
            images_dir = next((d for d in IMAGE_DIRS if fs.isdir(posixpath.join(root, d))), None)
            if images_dir is None:
                raise LayoutError(
                    f"{self.name}: no image folder in {display(fs, root)}; expected one of {', '.join(d + '/' for d in IMAGE_DIRS)} "
                    "holding Places365_val_*.jpg"
                )
        elif not fs.isdir(posixpath.join(root, images_dir)):
            raise LayoutError(
                f"{self.name}: missing {display(fs, posixpath.join(root, images_dir))}/ (images_dir option)"
            )

        val_file = posixpath.join(lists, "places365_val.txt")
        specs: list[tuple[str, int, str]] = []
        for lineno, (name, label) in parse_table(
            fs,
            val_file,
            n_fields=2,
            int_fields=(1,),
            what="'<file>.jpg <label>' (e.g. 'Places365_val_00000001.jpg 165')",
            layout=self.name,
        ):
            if not 0 <= int(label) < len(categories):
                raise LayoutError(
                    f"{self.name}: {display(fs, val_file)} line {lineno}: label {label}, expected 0..{len(categories) - 1}"
                )
            specs.append((f"{images_dir}/{name.lstrip('/')}", int(label), name.lstrip("/")))
        listing = {f"{images_dir}/{k}": v for k, v in list_tree(fs, posixpath.join(root, images_dir)).items()}
        entries = entries_from_listing(specs, listing)
        warn_missing(self.name, fs, root, entries, listing, "places365_val.txt")
        return DatasetSource(
            layout=self.name,
            name=self.name,
            url=source,
            fs=fs,
            root_path=root,
            classnames=[category_name(c) for c in categories],
            entries=entries,
            class_ids=categories,
            split=split,
            options={"images_dir": images_dir},
        )
