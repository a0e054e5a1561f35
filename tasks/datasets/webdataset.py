"""WebDataset tar shards, as LAION's CLIP_benchmark stores its converted datasets.

On disk (or in a bucket, or a Hugging Face dataset repository such as
``clip-benchmark/wds_cars``)::

    <dataset>/classnames.txt                          one class name per line, label order
    <dataset>/zeroshot_classification_templates.txt   optional: one prompt template per line ({c}: the class)
    <dataset>/test/0.tar, 1.tar, ...                  the split folder of tar shards

Each tar holds samples: members that share a key (the member name up to the
first dot of its file name) belong together, an image (``<key>.webp``,
``.jpg``, ``.jpeg``, ``.png``) and its label (``<key>.cls``, an integer as
text). Other members (``.txt``, ``.json``) are not used.

Why offsets: listing reads each tar's headers once (one pass, seeking over the
image data) and records where every image's bytes start and how long they are,
so sharding later reads exactly those bytes with one ranged read per image
(``fs.cat_file(tar, start, end)``), on any worker, without re-scanning a tar.
The bytes are stored as they are in the tar (never re-encoded).

Bad members: a member cut short by a truncated tar becomes a ``truncated``
error row, a member whose bytes are not an image becomes a ``not_image`` (or
``decode_error``) row, and a ``.cls`` without an image becomes a ``missing``
row; a tar that cannot be opened at all is a :class:`LayoutError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from tasks.store.images import STATUS_MISSING, STATUS_TRUNCATED

from .base import DatasetSource, Entry, EntryReadError, IgnoredFile, Layout, LayoutError, warn_user
from .folder import _safe_name
from .listing import display, is_junk
from .registry import register_layout

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
#: Member extensions read as the sample's image, in order of preference.
IMAGE_EXTENSIONS = ("webp", "jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "ppm")
LABEL_EXTENSION = "cls"
#: Folder names taken as the split folder itself (the dataset is their parent).
SPLIT_NAMES = ("test", "train", "val", "validation", "valid")
DEFAULT_SPLIT = "test"

_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's base_plus_ext


@dataclass(frozen=True)
class TarEntry(Entry):
    """An image that is a member of a tar: ``size`` bytes from ``offset`` of ``tar``.

    ``tar`` is relative to the source root. ``offset`` is ``-1`` for a sample
    that has a label but no image member (read as a ``missing`` error row).
    """

    tar: str = ""
    offset: int = -1


@dataclass(eq=False)
class WebDatasetSource(DatasetSource):
    """A :class:`DatasetSource` whose entries are tar members (:class:`TarEntry`).

    ``templates`` are the lines of ``zeroshot_classification_templates.txt`` when
    the dataset has one (``None`` otherwise), blank lines dropped, as written: kept in
    :meth:`describe` (so in ``dataset.json``), they are the ``clip-e`` templates of
    ``--templates auto``, as in CLIP_benchmark (checked where they are used:
    ``tasks.datasets.template_sets``, so a bad file does not stop other methods).
    """

    templates: list[str] | None = None
    templates_file: str | None = None
    classnames_file: str | None = None
    tar_sizes: dict[str, int | None] = field(default_factory=dict, repr=False)

    def resolve(self, entry: Entry) -> tuple[AbstractFileSystem, str]:
        if isinstance(entry, TarEntry):
            return self.fs, posixpath.join(self.root_path, entry.tar)
        return super().resolve(entry)

    def read_entry_bytes(self, entry: Entry) -> bytes:
        if not isinstance(entry, TarEntry):
            return super().read_entry_bytes(entry)
        fs, path = self.resolve(entry)
        where = display(fs, path)
        if entry.offset < 0:
            raise EntryReadError(
                STATUS_MISSING, f"{where}: sample {entry.image_id!r} has a .{LABEL_EXTENSION} label but no image member"
            )
        size = entry.size or 0
        data = fs.cat_file(path, start=entry.offset, end=entry.offset + size)
        if len(data) < size:
            raise EntryReadError(
                STATUS_TRUNCATED,
                f"{where}: member {entry.path.split('/', 1)[-1]} ends after {len(data)} of its {size} bytes (truncated tar)",
            )
        return data

    def fingerprint(self) -> str:
        """The base fingerprint plus the byte size of every tar and the members' offsets.

        A tar rewritten with other content moves offsets or changes its size, so
        committed shards are not taken for the new data.
        """
        h = hashlib.sha256(super().fingerprint().encode())
        h.update(json.dumps(sorted(self.tar_sizes.items())).encode())
        for e in self.entries:
            h.update(b"%d\n" % (e.offset if isinstance(e, TarEntry) else -1))
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "n_tars": len(self.tar_sizes),
            "classnames_file": self.classnames_file,
            "templates_file": self.templates_file,
            "templates": None if self.templates is None else list(self.templates),
        }


@register_layout("webdataset", "wds", "clip-benchmark")
class WebDatasetLayout(Layout):
    """WebDataset tar shards (CLIP_benchmark's wds_* datasets): point at the split folder of .tar files (or the folder holding test/).

    ``classnames.txt`` (and optionally ``zeroshot_classification_templates.txt``)
    are looked for in the split folder and its parent; option ``classnames``
    gives another class list (a path or URL). ``split`` picks the split folder
    under the given one (default ``test``).
    """

    title = "a split folder of WebDataset .tar shards (<key>.jpg/.png/.webp + <key>.cls) with classnames.txt beside it"

    def _load(
        self, fs: AbstractFileSystem, root: str, *, source: str, split: str | None, **options: Any
    ) -> DatasetSource:
        unknown = sorted(set(options) - {"classnames"})
        if unknown:
            raise TypeError(f"{self.name}: unexpected options {unknown}; known: ['classnames']")
        split_dir, tars = self._find_tars(fs, root, split)
        parent = posixpath.dirname(split_dir.rstrip("/")) or "/"
        search = [split_dir] if parent == split_dir else [split_dir, parent]

        if options.get("classnames"):
            cfs, cpath = _option_fs(options["classnames"], fs)
            classnames_file = display(cfs, cpath)
            classnames = read_name_list(cfs, cpath, "class names, one per line in label order", self.name)
        else:
            names_path = _first_file(fs, search, CLASSNAMES_FILE)
            if names_path is None:
                where = " or ".join(display(fs, posixpath.join(d, CLASSNAMES_FILE)) for d in search)
                raise LayoutError(
                    f"{self.name}: missing {where} — expected {CLASSNAMES_FILE} (one class name per line, in label order) "
                    "beside the split folder, or pass layout_options={'classnames': '<path or URL of a class list>'}"
                )
            classnames_file = display(fs, names_path)
            classnames = read_name_list(fs, names_path, "class names, one per line in label order", self.name)
        tpath = _first_file(fs, search, TEMPLATES_FILE)
        templates = (
            None
            if tpath is None
            else read_name_list(
                fs, tpath, "prompt templates, one per line", self.name, allow_blank=True, allow_empty=True
            )
        )

        entries: list[Entry] = []
        ignored: list[IgnoredFile] = []
        tar_sizes: dict[str, int | None] = {}
        unlabelled: list[str] = []
        for rel, size in tars:
            tar_sizes[rel] = size
            found, skipped, no_label = self._scan_tar(fs, posixpath.join(split_dir, rel), rel, size)
            entries.extend(found)
            ignored.extend(skipped)
            unlabelled.extend(no_label)
        if unlabelled:
            warn_user(
                f"{self.name}: {len(unlabelled)} image(s) in the tars of {display(fs, split_dir)} have no readable "
                f".{LABEL_EXTENSION} label (first: {unlabelled[0]}); they are left out and listed as ignored",
            )
        dataset_dir = parent if posixpath.basename(split_dir) in SPLIT_NAMES else split_dir
        name = _safe_name(posixpath.basename(dataset_dir.rstrip("/")) or "webdataset")
        split_name = posixpath.basename(split_dir)
        if split_name in SPLIT_NAMES and split_name != DEFAULT_SPLIT:
            name = f"{name}-{split_name}"
        return WebDatasetSource(
            layout=self.name,
            name=name,
            url=source,
            fs=fs,
            root_path=split_dir,
            classnames=classnames,
            entries=entries,
            split=split_name,
            options=dict(options),
            ignored=ignored,
            templates=templates,
            templates_file=None if tpath is None else display(fs, tpath),
            classnames_file=classnames_file,
            tar_sizes=tar_sizes,
        )

    # ------------------------------------------------------------------ helpers
    def _find_tars(
        self, fs: AbstractFileSystem, root: str, split: str | None
    ) -> tuple[str, list[tuple[str, int | None]]]:
        """``(split folder, [(tar name, size)])``: the given folder, or its ``split`` (default ``test``) sub-folder."""
        here = _list_tars(fs, root)
        if split is None or (here and posixpath.basename(root) == split):
            if here:
                return root, here
            split = DEFAULT_SPLIT
        sub = posixpath.join(root, split)
        tars = _list_tars(fs, sub) if fs.isdir(sub) else []
        if not tars:
            hint = (
                f" ({display(fs, root)} holds .tar files itself: leave split unset)"
                if here
                else f" nor in {display(fs, root)}"
            )
            raise LayoutError(f"{self.name}: no .tar files in {display(fs, sub)}{hint}; expected {self.title}")
        return sub, tars

    def _scan_tar(
        self, fs: AbstractFileSystem, path: str, rel: str, size: int | None
    ) -> tuple[list[Entry], list[IgnoredFile], list[str]]:
        """One pass over the headers of one tar: its samples as entries, in tar order."""
        where = display(fs, path)
        samples: dict[str, dict[str, Any]] = {}
        ignored: list[IgnoredFile] = []
        end_ok = True
        try:
            f = fs.open(path, "rb")
        except (OSError, ValueError) as e:
            raise LayoutError(f"{self.name}: cannot open {where} ({type(e).__name__}: {e}); expected a tar file") from e
        with f:
            try:
                tf = tarfile.open(fileobj=f, mode="r:")
            except (tarfile.TarError, OSError, EOFError, ValueError) as e:
                raise LayoutError(
                    f"{self.name}: {where} is not a readable tar file ({e}); expected WebDataset .tar shards"
                ) from e
            try:
                for m in tf:
                    if not m.isfile():
                        continue
                    match = _KEY_EXT.match(m.name)
                    if match is None or is_junk(posixpath.basename(m.name)):
                        continue
                    key, ext = match.group(1), match.group(2).lower()
                    sample = samples.setdefault(key, {"image": None, "label": None, "extra": []})
                    if ext == LABEL_EXTENSION:
                        raw = tf.extractfile(m).read()  # type: ignore[union-attr]
                        try:
                            sample["label"] = int(raw.decode("utf-8").strip())
                        except (UnicodeDecodeError, ValueError):
                            sample["label"] = f"not an integer: {raw[:40]!r}"
                    elif ext in IMAGE_EXTENSIONS:
                        if sample["image"] is None:
                            sample["image"] = m
                        else:
                            sample["extra"].append(m)
            except (tarfile.ReadError, EOFError) as e:
                end_ok = False
                if not samples:
                    raise LayoutError(
                        f"{self.name}: {where} is not a readable tar file ({e}); expected WebDataset .tar shards"
                    ) from e
            else:
                # tarfile stops silently at a broken header after the first member: a
                # well-formed tar ends with zero blocks (or exactly at its end).
                if size is not None and tf.offset < size:
                    f.seek(tf.offset)
                    tail = f.read(1024)
                    end_ok = not tail.strip(b"\0")
        if not end_ok:
            last = next(reversed(samples)) if samples else "?"
            warn_user(
                f"{self.name}: {where} is truncated or damaged after sample {last!r}; the samples before are kept "
                "(a member cut short becomes a 'truncated' error row), anything after is lost",
            )
            ignored.append(IgnoredFile(rel, f"tar truncated or damaged after sample {last!r}"))

        entries: list[Entry] = []
        unlabelled: list[str] = []
        for key, s in samples.items():
            image, label = s["image"], s["label"]
            for extra in s["extra"]:
                ignored.append(
                    IgnoredFile(f"{rel}/{extra.name}", f"a second image of sample {key!r} (kept {image.name})")
                )
            if not isinstance(label, int):
                if image is not None:
                    reason = f"no .{LABEL_EXTENSION} label" if label is None else f".{LABEL_EXTENSION} label {label}"
                    ignored.append(IgnoredFile(f"{rel}/{image.name}", reason))
                    unlabelled.append(f"{rel}/{image.name}")
                continue
            if image is None:
                entries.append(
                    TarEntry(
                        path=f"{rel}/{key}",
                        label=label,
                        image_id=f"{rel}/{key}",
                        size=None,
                        regular=True,
                        tar=rel,
                        offset=-1,
                    )
                )
            else:
                entries.append(
                    TarEntry(
                        path=f"{rel}/{image.name}",
                        label=label,
                        image_id=f"{rel}/{key}",
                        size=image.size,
                        regular=True,
                        tar=rel,
                        offset=image.offset_data,
                    )
                )
        return entries, ignored, unlabelled


# ---------------------------------------------------------------------- shared helpers
def _natural_key(name: str) -> list[Any]:
    """``2.tar`` before ``10.tar``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _list_tars(fs: AbstractFileSystem, folder: str) -> list[tuple[str, int | None]]:
    """``[(name, size)]`` of the ``.tar`` files directly in ``folder``, in natural order."""
    try:
        listing = fs.ls(folder, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for info in listing:
        name = posixpath.basename(str(info["name"]).rstrip("/"))
        if info.get("type") == "directory" or is_junk(name) or not name.lower().endswith(".tar"):
            continue
        size = info.get("size")
        out.append((name, None if size is None else int(size)))
    return sorted(out, key=lambda t: _natural_key(t[0]))


def _first_file(fs: AbstractFileSystem, folders: list[str], name: str) -> str | None:
    for d in folders:
        p = posixpath.join(d, name)
        if fs.isfile(p):
            return p
    return None


def _option_fs(url: str, fs: AbstractFileSystem) -> tuple[AbstractFileSystem, str]:
    """Filesystem and path of a file given as an option: a URL, else a local path."""
    try:
        return fsspec.core.url_to_fs(str(url))
    except Exception as e:  # an unknown protocol, a missing client library
        raise LayoutError(f"cannot open {url} ({type(e).__name__}: {e})") from e


def read_name_list(
    fs: AbstractFileSystem, path: str, what: str, layout: str, *, allow_blank: bool = False, allow_empty: bool = False
) -> list[str]:
    """The lines of a text file (class names, templates), stripped; trailing blank lines dropped.

    A blank line inside a class list would shift every later label, so it fails
    with its line number (unless ``allow_blank``, where blank lines are dropped).
    An empty file fails unless ``allow_empty`` (then ``[]``: whoever uses it says why it cannot).
    """
    where = display(fs, path)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise LayoutError(f"{layout}: missing {where} — expected {what}") from None
    except OSError as e:
        raise LayoutError(f"{layout}: cannot read {where} ({type(e).__name__}: {e}); expected {what}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LayoutError(f"{layout}: {where} is not UTF-8 text ({e}); expected {what}") from e
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if allow_blank:
        lines = [ln for ln in lines if ln]
    elif "" in lines:
        raise LayoutError(f"{layout}: {where} line {lines.index('') + 1} is blank; expected {what}")
    if not lines and not allow_empty:
        raise LayoutError(f"{layout}: {where} is empty; expected {what}")
    return lines
