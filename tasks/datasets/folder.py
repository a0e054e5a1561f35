"""A user's own image folder: ``<root>/<class name>/<image>``, like torchvision's ImageFolder.

Classes are the folder names, sorted, used as-is as class names (name the folders
the way the text prompts should read them). Sub-folders of a class folder belong
to it. Unlike ImageFolder, files are not filtered by extension: a broken or
mis-named file inside a class folder becomes an error row instead of vanishing.
"""

from __future__ import annotations

import posixpath
from typing import Any

from fsspec.spec import AbstractFileSystem

from .base import DatasetSource, Entry, Layout, LayoutError, warn_user
from .listing import display, info_regular, info_size, is_junk, readable_name, scan_class_folders
from .registry import register_layout


@register_layout("folder", "imagefolder", "image-folder")
class ImageFolder(Layout):
    """Your own images: point at a folder with one sub-folder per class (<root>/<class>/<image>), like ImageFolder.

    Class names are the folder names made readable (``golden_retriever`` ->
    "golden retriever"); ``class_ids`` keep the folder names.
    """

    title = "a folder with one sub-folder of images per class"

    def _load(
        self, fs: AbstractFileSystem, root: str, *, source: str, split: str | None, **options: Any
    ) -> DatasetSource:
        allow_empty = _flag(options.pop("allow_empty_classes", False))
        if options:
            raise TypeError(f"{self.name}: unexpected options {sorted(options)} (known: allow_empty_classes)")
        groups, ignored = scan_class_folders(fs, root)
        if not groups:
            n_loose = sum(1 for i in ignored if i.reason == "not inside a class folder")
            hint = f" ({n_loose} file(s) lie directly in it: move them into class folders)" if n_loose else ""
            raise LayoutError(
                f"{self.name}: no class folders with files in {display(fs, root)}{hint}; expected {self.title}"
            )
        empty = _empty_class_folders(fs, root, groups)
        if empty and not allow_empty:
            raise LayoutError(
                f"{self.name}: {len(empty)} class folder(s) in {display(fs, root)} hold no images: "
                f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}. Leaving them out would change the "
                "class list (and chance level) without a word: add their images, remove the folders, or pass "
                "-o allow_empty_classes=true to leave them out of the class list"
            )
        if empty:
            warn_user(
                f"{self.name}: class folder(s) with no images left out of the class list "
                f"(allow_empty_classes): {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}"
            )
        folders = sorted(groups)
        label_of = {c: i for i, c in enumerate(folders)}
        entries = [
            Entry(path=rel, label=label_of[c], image_id=rel, size=info_size(info), regular=info_regular(info))
            for c in folders
            for rel, info in sorted(groups[c])
        ]
        # Folder names are often identifiers (golden_retriever); the text side reads
        # class names, so they are made readable. Labels follow the folder order.
        classnames = [readable_name(c) for c in folders]
        return DatasetSource(
            layout=self.name,
            name=_safe_name(posixpath.basename(root.rstrip("/")) or "folder"),
            url=source,
            fs=fs,
            root_path=root,
            classnames=classnames,
            entries=entries,
            class_ids=folders,
            split=split,
            ignored=ignored,
        )


def _flag(value: Any) -> bool:
    """A layout option given as a bool or as text (``-o allow_empty_classes=true``)."""
    if isinstance(value, str):
        if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise TypeError(f"allow_empty_classes takes true or false, not {value!r}")
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _empty_class_folders(fs: AbstractFileSystem, root: str, groups: dict[str, Any]) -> list[str]:
    """Top-level folders of ``root`` (not hidden) that hold no file the listing kept: classes
    torchvision's ImageFolder would refuse and a silent listing would drop."""
    try:
        listed = fs.ls(root, detail=True)
    except OSError:
        return []
    names = {posixpath.basename(str(i["name"]).rstrip("/")) for i in listed if i.get("type") == "directory"}
    return sorted(n for n in names if n not in groups and not is_junk(n))


def _safe_name(name: str) -> str:
    """A default dataset name usable in a storage path (letters, digits, ``._-``)."""
    out = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in name).strip("-.")
    return out or "dataset"
