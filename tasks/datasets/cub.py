"""CUB-200-2011 (Caltech-UCSD Birds): the official index files, test split by default.

``CUB_200_2011.tgz`` extracts to ``CUB_200_2011/`` holding ``images/``,
``images.txt`` (``<image_id> <path below images/>``), ``image_class_labels.txt``
(``<image_id> <class_id>``), ``train_test_split.txt`` (``<image_id> <1 = train,
0 = test>``) and ``classes.txt`` (``<class_id> 001.Black_footed_Albatross``).
Labels are ``class_id - 1``; names drop the ``001.`` prefix and the underscores
("Black footed Albatross"). Images keep the order of ``images.txt``.
"""

from __future__ import annotations

import posixpath
import re
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

_SPLIT_FLAG = {"train": {"1"}, "test": {"0"}, "all": {"0", "1"}}


@register_layout("cub", "cub-200-2011", "cub200")
class CUB(Layout):
    """CUB-200-2011 birds (test split: 5,794 images, 200 species): point at CUB_200_2011/ (or its parent)."""

    title = "CUB_200_2011/ with images/, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt"
    expected_sizes = {"test": 5_794, "train": 5_994, "all": 11_788}
    default_split = "test"
    splits = ("test", "train", "all")
    #: CLIP published no CUB set: the ImageNet one, CLIP_benchmark's fallback and the ABS spec's clip-e
    #: (``--templates birdsnap`` picks CLIP's bird set instead).
    default_templates = "imagenet1k"

    def _load(
        self, fs: AbstractFileSystem, root: str, *, source: str, split: str | None, **options: Any
    ) -> DatasetSource:
        if options:
            raise TypeError(f"{self.name}: unexpected options {sorted(options)}")
        base = find_root(fs, root, "images.txt", subdirs=("CUB_200_2011",), what=self.title, layout=self.name)
        p = lambda name: posixpath.join(base, name)  # noqa: E731

        classes = parse_table(
            fs, p("classes.txt"), n_fields=2, int_fields=(0,), what="'<class_id> <NNN.Class_Name>'", layout=self.name
        )
        class_ids = [int(f[0]) for _, f in classes]
        if class_ids != list(range(1, len(class_ids) + 1)):
            raise LayoutError(
                f"{self.name}: {display(fs, p('classes.txt'))}: class ids must run 1..N in order, got {class_ids[:5]}..."
            )
        folders = [f[1] for _, f in classes]
        classnames = [readable_name(re.sub(r"^\d+\.", "", f)) for f in folders]

        images = parse_table(
            fs,
            p("images.txt"),
            n_fields=2,
            int_fields=(0,),
            what="'<image_id> <class_folder/file.jpg>'",
            layout=self.name,
        )
        labels = dict(
            (int(f[0]), int(f[1]))
            for _, f in parse_table(
                fs,
                p("image_class_labels.txt"),
                n_fields=2,
                int_fields=(0, 1),
                what="'<image_id> <class_id>'",
                layout=self.name,
            )
        )
        flags = dict(
            (int(f[0]), f[1])
            for _, f in parse_table(
                fs,
                p("train_test_split.txt"),
                n_fields=2,
                int_fields=(0, 1),
                what="'<image_id> <1 (train) or 0 (test)>'",
                layout=self.name,
            )
        )
        wanted = _SPLIT_FLAG[split or "test"]
        specs: list[tuple[str, int, str]] = []
        for lineno, (sid, rel) in images:
            iid = int(sid)
            if iid not in labels:
                raise LayoutError(
                    f"{self.name}: image {iid} (images.txt line {lineno}) has no line in {display(fs, p('image_class_labels.txt'))}"
                )
            if iid not in flags:
                raise LayoutError(
                    f"{self.name}: image {iid} (images.txt line {lineno}) has no line in {display(fs, p('train_test_split.txt'))}"
                )
            if flags[iid] not in ("0", "1"):
                raise LayoutError(
                    f"{self.name}: {display(fs, p('train_test_split.txt'))}: image {iid} has flag {flags[iid]!r}, expected 0 or 1"
                )
            cid = labels[iid]
            if not 1 <= cid <= len(classnames):
                raise LayoutError(
                    f"{self.name}: {display(fs, p('image_class_labels.txt'))}: image {iid} has class {cid}, expected 1..{len(classnames)}"
                )
            if flags[iid] in wanted:
                specs.append((posixpath.join("images", rel), cid - 1, rel))

        listing = list_tree(fs, p("images")) if fs.isdir(p("images")) else {}
        listing = {posixpath.join("images", k): v for k, v in listing.items()}
        entries = entries_from_listing(specs, listing)
        warn_missing(self.name, fs, base, entries, listing, "images.txt")
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
