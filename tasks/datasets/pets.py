"""Oxford-IIIT Pets: ``annotations/test.txt`` over ``images/``.

``images.tar.gz`` and ``annotations.tar.gz`` extract ``images/`` and
``annotations/`` (torchvision puts both under ``oxford-iiit-pet/``). Split files
hold ``<image name> <class id 1..37> <species> <breed id>``; the breed name is
the image name without its trailing ``_<n>``, so class names come from the
split files themselves (test and, when present, trainval, so a class that the
chosen split lacks still gets its name). Names keep the dataset's case, cats
capitalised and dogs lower case ("Abyssinian", "american bulldog").
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

_ROW = "'<image name> <class id> <species> <breed id>' (e.g. 'Abyssinian_100 1 1 1')"


@register_layout("pets", "oxford-pets", "oxford-iiit-pet", "oxford-pet")
class OxfordPets(Layout):
    """Oxford-IIIT Pets (test split: 3,669 images, 37 breeds): point at oxford-iiit-pet/ with images/ and annotations/."""

    title = "oxford-iiit-pet/ with images/ and annotations/test.txt (annotations/trainval.txt for train)"
    expected_sizes = {"test": 3_669, "trainval": 3_680}
    default_split = "test"
    splits = ("test", "trainval")
    default_templates = "pets"  # CLIP's "a photo of a {c}, a type of pet."

    def _load(
        self, fs: AbstractFileSystem, root: str, *, source: str, split: str | None, **options: Any
    ) -> DatasetSource:
        if options:
            raise TypeError(f"{self.name}: unexpected options {sorted(options)}")
        base = find_root(fs, root, "annotations", subdirs=("oxford-iiit-pet",), what=self.title, layout=self.name)
        split_file = posixpath.join(base, "annotations", f"{split}.txt")
        rows = parse_table(fs, split_file, n_fields=(2, 4), int_fields=(1,), what=_ROW, layout=self.name)

        # Class names from every split file there is, so they do not depend on the split.
        names: dict[int, str] = {}
        sources = [(split_file, rows)]
        for other in ("test", "trainval"):
            path = posixpath.join(base, "annotations", f"{other}.txt")
            if other != split and fs.isfile(path):
                sources.append(
                    (path, parse_table(fs, path, n_fields=(2, 4), int_fields=(1,), what=_ROW, layout=self.name))
                )
        for path, table in sources:
            for lineno, fields in table:
                cid = int(fields[1])
                breed = fields[0].rsplit("_", 1)[0]
                if cid < 1:
                    raise LayoutError(
                        f"{self.name}: {display(fs, path)} line {lineno}: class id {cid}, expected 1 or more"
                    )
                if names.setdefault(cid, breed) != breed:
                    raise LayoutError(
                        f"{self.name}: {display(fs, path)} line {lineno}: class {cid} is {breed!r} here but {names[cid]!r} elsewhere"
                    )
        n_classes = max(names)
        unnamed = [c for c in range(1, n_classes + 1) if c not in names]
        if unnamed:
            raise LayoutError(
                f"{self.name}: class ids {unnamed[:5]} have no image in {display(fs, split_file)} or the other split file, "
                "so they cannot be named; expected class ids 1..N all used"
            )
        folders = [names[c] for c in range(1, n_classes + 1)]
        classnames = [readable_name(n) for n in folders]

        specs = [(f"images/{fields[0]}.jpg", int(fields[1]) - 1, f"{fields[0]}.jpg") for _, fields in rows]
        images_dir = posixpath.join(base, "images")
        listing = {f"images/{k}": v for k, v in (list_tree(fs, images_dir) if fs.isdir(images_dir) else {}).items()}
        entries = entries_from_listing(specs, listing)
        warn_missing(self.name, fs, base, entries, listing, f"annotations/{split}.txt")
        return DatasetSource(
            layout=self.name,
            name=self.name if split == "test" else f"{self.name}-{split}",
            url=source,
            fs=fs,
            root_path=base,
            classnames=classnames,
            entries=entries,
            class_ids=folders,
            split=split,
        )
