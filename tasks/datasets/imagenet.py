"""ImageNet and its evaluation variants: val, V2, Sketch, A, R.

All five store one folder per class. Val, Sketch, A and R name the folders by
WordNet id (``n01440764``); V2 names them ``0`` .. ``999`` (the label itself).
Labels and names come from what the libraries already ship, never from a copied
list: WordNet ids in label order from timm (``timm.data.ImageNetInfo``), readable
names in label order from open_clip (``open_clip.zero_shot_metadata``), the
same names the CLIP zero-shot templates were written for.

ImageNet-A and -R hold 200 of the 1000 classes. Their ``classnames`` are those
200 (label = position among the folders present, in ImageNet order), while
``text_classnames`` stays the 1000 names and ``subset_indices`` says where the
200 sit, because the usual protocol scores all 1000 texts and keeps the 200
columns. The subset is read from the folders (what was downloaded) and checked
against the official 200-wnid lists timm ships; a difference is warned about,
not silently fixed.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import pkgutil
import posixpath
from typing import Any, ClassVar

from fsspec.spec import AbstractFileSystem

from .base import DatasetSource, Entry, Layout, LayoutError, warn_user
from .listing import display, info_regular, info_size, scan_class_folders
from .registry import register_layout


def _package_file(package: str, *parts: str) -> bytes | None:
    """A file shipped inside an installed package, read without importing the package.

    Why: ``timm`` and ``open_clip`` import torch (seconds and a gigabyte) when
    imported, and sharding an ImageNet folder needs only two of their data files.
    ``None`` when the package or the file is not there (callers then import).
    """
    try:
        spec = importlib.util.find_spec(package)  # a top-level package: found, not executed
    except (ImportError, ValueError):
        return None
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        try:
            with open(os.path.join(base, *parts), "rb") as f:
                return f.read()
        except OSError:
            continue
    return None


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in label order (timm's shipped synset list)."""
    data = _package_file("timm", "data", "_info", "imagenet_synsets.txt")  # what ImageNetInfo("imagenet-1k") reads
    if data is not None:
        wnids = tuple(data.decode("utf-8").splitlines())
    else:
        from timm.data import ImageNetInfo

        wnids = tuple(ImageNetInfo("imagenet-1k").label_names())
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise RuntimeError(f"timm's ImageNet-1k synset list has {len(wnids)} entries, expected 1000 unique ids")
    return wnids


def _literal_assignment(source: bytes, name: str) -> Any:
    """The literal value assigned to ``name`` at the top level of a module's source (``None`` if not one)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


@functools.cache
def imagenet_classnames() -> tuple[str, ...]:
    """The 1000 readable ImageNet class names in label order (open_clip's list)."""
    data = _package_file("open_clip", "zero_shot_metadata.py")
    names = _literal_assignment(data, "IMAGENET_CLASSNAMES") if data is not None else None
    if not isinstance(names, (tuple, list)):
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        names = IMAGENET_CLASSNAMES
    names = tuple(names)
    if len(names) != 1000:
        raise RuntimeError(f"open_clip's IMAGENET_CLASSNAMES has {len(names)} entries, expected 1000")
    return names


@functools.cache
def official_subset_wnids(subset: str) -> tuple[str, ...] | None:
    """The official 200 wnids of ``imagenet_a`` / ``imagenet_r`` as shipped by timm.

    ``None`` when the installed timm does not ship the list (it is only used to
    warn about a folder set that differs from the official one).
    """
    data = _package_file("timm", "data", "_info", f"{subset}_synsets.txt")
    if data is None:
        try:
            data = pkgutil.get_data("timm.data", f"_info/{subset}_synsets.txt")
        except (FileNotFoundError, OSError, ImportError):
            return None
    if data is None:
        return None
    return tuple(line.strip() for line in data.decode().splitlines() if line.strip())


def official_subset_indices(subset: str) -> list[int] | None:
    """Indices of the official 200 classes in the 1000 ImageNet classes (sorted)."""
    wnids = official_subset_wnids(subset)
    if wnids is None:
        return None
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    return sorted(index[w] for w in wnids)


class _ImageNetFolders(Layout):
    """Shared logic: class folders, one image per file, labels from folder names."""

    #: ``None`` for 1000-class layouts; the timm subset stem (``imagenet_a``) for A/R.
    subset: ClassVar[str | None] = None
    default_split: ClassVar[str | None] = None
    splits: ClassVar[tuple[str, ...] | None] = (None,)  # type: ignore[assignment]
    folder_hint: ClassVar[str] = "one folder per class named by WordNet id (n01440764/, ...)"
    #: Folder names the archive extracts into; pointing at their parent works too.
    subdirs: ClassVar[tuple[str, ...]] = ()
    #: CLIP scored ImageNet and its variants (V2, Sketch, A, R) with its 80 ImageNet templates.
    default_templates: ClassVar[str | None] = "imagenet1k"

    def expected_size(self, split: str | None) -> int | None:
        return self.expected_sizes.get("", None)

    def _folder_label(self, folder: str) -> int | None:
        """Index in the 1000 classes of a class folder, ``None`` when not a class."""
        return self._wnid_index().get(folder)

    @staticmethod
    @functools.cache
    def _wnid_index() -> dict[str, int]:
        return {w: i for i, w in enumerate(imagenet_wnids())}

    def _load(
        self, fs: AbstractFileSystem, root: str, *, source: str, split: str | None, **options: Any
    ) -> DatasetSource:
        if options:
            raise TypeError(f"{self.name}: unexpected options {sorted(options)}")
        groups, ignored = scan_class_folders(fs, root)
        if not any(self._folder_label(f) is not None for f in groups):
            # Pointed at the folder the archive extracted into, one level too high?
            for sub in self.subdirs:
                if sub in groups and fs.isdir(posixpath.join(root, sub)):
                    root = posixpath.join(root, sub)
                    groups, ignored = scan_class_folders(fs, root)
                    break
        where = display(fs, root)
        if not groups:
            n_loose = sum(1 for i in ignored if i.reason == "not inside a class folder")
            hint = (
                f" ({n_loose} files lie directly in it: sort them into class folders first, e.g. let "
                "torchvision.datasets.ImageNet(root, split='val') prepare the val set)"
                if n_loose
                else ""
            )
            raise LayoutError(f"{self.name}: no class folders in {where}; expected {self.folder_hint}{hint}")
        folder_index: dict[str, int] = {}
        unknown: list[str] = []
        for folder in groups:
            idx = self._folder_label(folder)
            if idx is None:
                unknown.append(folder)
            else:
                folder_index[folder] = idx
        if unknown:
            raise LayoutError(
                f"{self.name}: {len(unknown)} folder(s) in {where} are not ImageNet classes "
                f"(first: {sorted(unknown)[:3]}); expected {self.folder_hint}"
            )
        present = sorted(folder_index, key=folder_index.__getitem__)
        names = list(imagenet_classnames())
        wnids = list(imagenet_wnids())
        if self.subset is None:
            label_of = dict(folder_index)
            classnames = names
            class_ids = wnids
            text_classnames = None
            subset_indices = None
        else:
            subset_indices = [folder_index[f] for f in present]
            label_of = {f: pos for pos, f in enumerate(present)}
            classnames = [names[i] for i in subset_indices]
            class_ids = [wnids[i] for i in subset_indices]
            text_classnames = names
            self._check_official(set(class_ids), where)
        entries = sorted(
            (
                Entry(path=rel, label=label_of[folder], image_id=rel, size=info_size(info), regular=info_regular(info))
                for folder, files in groups.items()
                for rel, info in files
            ),
            key=lambda e: (e.label, e.path),
        )
        return DatasetSource(
            layout=self.name,
            name=self.name,
            url=source,
            fs=fs,
            root_path=root,
            classnames=classnames,
            entries=entries,
            text_classnames=text_classnames,
            subset_indices=subset_indices,
            class_ids=class_ids,
            split=split,
            ignored=ignored,
        )

    def _check_official(self, found: set[str], where: str) -> None:
        official = official_subset_wnids(self.subset or "")
        if official is None or found == set(official):
            return
        missing = sorted(set(official) - found)
        extra = sorted(found - set(official))
        warn_user(
            f"{self.name}: the class folders in {where} differ from the official {len(official)}-class subset "
            f"({len(missing)} missing, first {missing[:3]}; {len(extra)} extra, first {extra[:3]}). "
            "The subset is taken from the folders present; results are not comparable to published numbers.",
        )


@register_layout("imagenet", "imagenet-val", "imagenet1k")
class ImageNetVal(_ImageNetFolders):
    """ImageNet-1k validation (50,000 images, 1000 classes): point at val/ (or its parent) with WordNet-id class folders."""

    title = "ImageNet-1k validation set in WordNet-id class folders (as torchvision prepares it)"
    expected_sizes = {"": 50_000}
    subdirs = ("val",)


@register_layout("imagenet-sketch", "imagenet-s", "sketch")
class ImageNetSketch(_ImageNetFolders):
    """ImageNet-Sketch (50,889 sketches, 1000 classes): point at sketch/ (or its parent) with WordNet-id class folders."""

    title = "ImageNet-Sketch (sketch/ with 1000 WordNet-id class folders)"
    expected_sizes = {"": 50_889}
    subdirs = ("sketch", "imagenet-sketch")


@register_layout("imagenet-a")
class ImageNetA(_ImageNetFolders):
    """ImageNet-A (7,500 natural adversarial images, 200 classes): point at imagenet-a/ (or its parent) with WordNet-id folders."""

    title = "ImageNet-A (imagenet-a/ with 200 WordNet-id class folders)"
    expected_sizes = {"": 7_500}
    subdirs = ("imagenet-a",)
    subset = "imagenet_a"


@register_layout("imagenet-r")
class ImageNetR(_ImageNetFolders):
    """ImageNet-R (30,000 renditions, 200 classes): point at imagenet-r/ (or its parent) with WordNet-id class folders."""

    title = "ImageNet-R (imagenet-r/ with 200 WordNet-id class folders)"
    expected_sizes = {"": 30_000}
    subdirs = ("imagenet-r",)
    subset = "imagenet_r"


@register_layout("imagenet-v2", "imagenetv2")
class ImageNetV2(_ImageNetFolders):
    """ImageNet-V2 (10,000 images, any of its 3 variants): point at imagenetv2-*-format-val/ with class folders 0 .. 999.

    The folder name is the label itself (``0`` .. ``999``).
    """

    title = "ImageNet-V2 (imagenetv2-*-format-val/ with class folders 0 .. 999)"
    expected_sizes = {"": 10_000}
    folder_hint = "one folder per class named by its label, 0 .. 999"
    subdirs = (
        "imagenetv2-matched-frequency-format-val",
        "imagenetv2-threshold0.7-format-val",
        "imagenetv2-top-images-format-val",
    )

    def _folder_label(self, folder: str) -> int | None:
        if not folder.isdigit() or str(int(folder)) != folder:
            return None
        label = int(folder)
        return label if 0 <= label < 1000 else None
