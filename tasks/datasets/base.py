"""Typed pieces every dataset layout shares: the source it describes and small fs helpers.

Why a layout returns plain data (a :class:`DatasetSource` with an ordered list of
:class:`Entry`) instead of an iterator of images: sharding needs the full, ordered
list up front to cut fixed-size shards, to fingerprint the source (so a rerun can
tell whether committed shards still describe it) and to warn about partial
downloads before anything is written. Bytes are read later, per shard,
possibly on another worker, at the path :meth:`DatasetSource.resolve` gives.

This module holds the types; ``listing`` holds the filesystem and index-file
helpers the layout modules share.

All paths inside a source are POSIX paths relative to its root, whatever the
filesystem (local disk, ``memory://``, ``s3://``, ``gs://``), so the same source
gives the same entries, image ids and fingerprint wherever it is stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import sys
import types
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import fsspec
from fsspec.spec import AbstractFileSystem

# Files that operating systems and download tools drop next to images. They are
# never images of the dataset; they are listed in ``DatasetSource.ignored`` (not
# silently dropped) so the metadata says what was left out and why.
JUNK_FILE_NAMES = frozenset({"Thumbs.db", "desktop.ini", "Icon\r"})


def escape_undecodable(text: str) -> str:
    """``text`` as valid UTF-8: undecodable file-name bytes become ``\\xNN`` escapes.

    On Linux a file name is bytes; Python lists a name that is not valid UTF-8
    with each bad byte as a lone surrogate (``'bad\\udcff.jpg'`` for
    ``b'bad\\xff.jpg'``), which opens the file fine but cannot be written to
    Parquet, JSON-as-UTF-8 or a terminal. This returns the real bytes decoded
    with ``backslashreplace`` (``'bad\\\\xff.jpg'``, i.e. a literal backslash,
    ``x``, ``ff``): deterministic, so ids stay the same from run to run. Text that
    is already valid is returned unchanged (the same object).
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def is_undecodable(text: str) -> bool:
    """``True`` when ``text`` holds lone surrogates (an undecodable file name)."""
    return escape_undecodable(text) is not text


def _unique_escaped_ids(entries: list[Entry]) -> list[Entry]:
    """Entries whose ids are valid UTF-8, unique wherever the raw ids were.

    Valid ids are kept as they are (so every existing dataset keeps its ids); an
    id with undecodable bytes becomes :func:`escape_undecodable` of it, and in the
    rare case that a real file already has that escaped name (a literal
    backslash), ``~`` and 8 hex digits of the sha256 of its raw bytes are
    appended. Both depend only on the names, so ids are stable across runs and
    resume keeps working. The entry's ``path`` keeps the real name: it is what is
    opened.
    """
    if all(not is_undecodable(e.image_id) for e in entries):
        return entries
    taken = {e.image_id for e in entries if not is_undecodable(e.image_id)}
    out: list[Entry] = []
    for e in entries:
        if not is_undecodable(e.image_id):
            out.append(e)
            continue
        new = escape_undecodable(e.image_id)
        if new in taken:
            try:
                raw = e.image_id.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = e.image_id.encode("utf-8", "surrogatepass")
            base, k = f"{new}~{hashlib.sha256(raw).hexdigest()[:8]}", 1
            new = base
            while new in taken:
                k += 1
                new = f"{base}-{k}"
        taken.add(new)
        out.append(dataclasses.replace(e, image_id=new))
    return out


def update_with_entries(h: Any, entries: list[Entry]) -> None:
    """Feed the ordered entries (id, path, label, listed size) into hash ``h``: the one
    definition of "the same images" used by the source fingerprint and each shard's digest."""
    for e in entries:
        h.update(json.dumps([e.image_id, e.path, e.label, e.size]).encode())
        h.update(b"\n")


class LayoutError(ValueError):
    """A source does not have the on-disk layout its layout expects.

    The message always names the file or folder and what was expected, so a user
    can fix a download without reading the code. It is one line, and always
    printable: undecodable bytes of a file name are shown escaped (``bad\\xff.jpg``).
    A subclass of ``ValueError``, so older ``except ValueError`` still catches it.
    """

    def __init__(self, message: str = "", *args: Any) -> None:
        super().__init__(" ".join(escape_undecodable(str(message)).splitlines()), *args)


class EntryReadError(Exception):
    """The bytes of one entry cannot be had, for a reason about that image alone.

    Raised by :meth:`DatasetSource.read_entry_bytes` of layouts whose images are
    not whole files (a tar member cut short, a Parquet row without bytes); the
    shard then holds an error row with ``status`` (one of
    ``tasks.store.images.ERROR_STATUSES``) and this message, and is not retried.
    """

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class SingleClassWarning(UserWarning):
    """A source whose images all carry one label: every method scores it at 100%.

    Zero-shot accuracy over one class present is trivial (the argmax can only be
    right when nothing else is scored), so such a dataset says nothing about a
    method. Usually a wrong ``source`` (one class folder instead of its parent).
    """


class DatasetSizeWarning(UserWarning):
    """A benchmark source holds a different number of images than its official split.

    Usually a partial or interrupted download. Sharding goes on (every image that
    is there is kept), but accuracies are not comparable to published numbers.
    """


@dataclass(frozen=True)
class Entry:
    """One image of a source, before it is read.

    ``path`` is relative to the source root (or, for manifests only, an absolute
    path or URL). ``image_id`` is stable and unique within the dataset: it is the
    path below the layout's image folder, so it does not change when the same
    files are copied elsewhere. ``size`` and ``regular`` come from the listing when
    the layout lists files (``None`` when unknown); ``regular=False`` marks things
    that must not be opened (a FIFO would block forever, a dangling link cannot be
    read).
    """

    path: str
    label: int
    image_id: str
    size: int | None = None
    regular: bool | None = None


@dataclass(frozen=True)
class IgnoredFile:
    """A file found in the source that is not an image of the chosen split, and why."""

    path: str
    reason: str


@dataclass
class DatasetSource:
    """What a layout found in a source: classes, their order, and the ordered images.

    ``classnames`` are in label order (``label`` indexes them). ``text_classnames``
    are the classes the text side scores: the 1000 ImageNet names for ImageNet-A
    and -R, whose 200 classes sit at ``subset_indices`` of that list; for every
    other layout they equal ``classnames`` and ``subset_indices`` is ``None``.
    """

    layout: str
    name: str
    url: str
    fs: AbstractFileSystem = field(repr=False, compare=False)
    root_path: str
    classnames: list[str]
    entries: list[Entry] = field(repr=False)
    text_classnames: list[str] | None = None
    subset_indices: list[int] | None = None
    class_ids: list[str] | None = None
    expected_size: int | None = None
    split: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    ignored: list[IgnoredFile] = field(default_factory=list, repr=False)
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # Names listed from disk may hold undecodable bytes (lone surrogates): every
        # text that is stored (ids, class names) is made valid UTF-8 here, once, for
        # every layout; ``Entry.path`` keeps the real name, which is what is opened.
        self.classnames = [escape_undecodable(c) for c in self.classnames]
        if self.text_classnames is None:
            self.text_classnames = list(self.classnames)
        else:
            self.text_classnames = [escape_undecodable(c) for c in self.text_classnames]
        if self.class_ids is not None:
            self.class_ids = [escape_undecodable(c) for c in self.class_ids]
        self.entries = _unique_escaped_ids(self.entries)
        self.ignored = [
            IgnoredFile(escape_undecodable(i.path), i.reason) if is_undecodable(i.path) else i for i in self.ignored
        ]
        if self.subset_indices is not None:
            if len(self.subset_indices) != len(self.classnames):
                raise ValueError("subset_indices must have one index per class")
            bad = [i for i in self.subset_indices if not 0 <= i < len(self.text_classnames)]
            if bad:
                raise ValueError(f"subset_indices out of range of text_classnames: {bad[:5]}")
        n = len(self.classnames)
        bad_labels = sorted({e.label for e in self.entries if not 0 <= e.label < n})
        if bad_labels:
            raise LayoutError(
                f"{self.layout}: labels {bad_labels[:5]} in {self.url} are outside 0..{n - 1}; expected one of the {n} class labels"
            )
        seen: set[str] = set()
        for e in self.entries:
            if e.image_id in seen:
                raise LayoutError(f"{self.layout}: image id {e.image_id!r} appears twice in {self.url}")
            seen.add(e.image_id)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]

    @property
    def size_matches(self) -> bool | None:
        """``None`` when there is no official size to compare with."""
        return None if self.expected_size is None else len(self.entries) == self.expected_size

    @property
    def n_classes_present(self) -> int:
        """Number of distinct labels among the entries (not the number of classes).

        ``1`` means every image has the same label: zero-shot accuracy is then
        trivially 100% for every method (see :class:`SingleClassWarning`).
        """
        return len({e.label for e in self.entries})

    # ------------------------------------------------------------------ reading
    def resolve(self, entry: Entry) -> tuple[AbstractFileSystem, str]:
        """Filesystem and path of an entry; relative paths are under the source root."""
        if "://" in entry.path:
            fs, path = fsspec.core.url_to_fs(entry.path, **self.storage_options)
            return fs, path
        if entry.path.startswith("/"):
            return self.fs, entry.path
        return self.fs, posixpath.join(self.root_path, entry.path)

    def read_entry_bytes(self, entry: Entry) -> bytes:
        """The original bytes of one entry, never re-encoded.

        The default reads the whole file at :meth:`resolve`. Layouts whose images
        are parts of bigger files (tar members, Parquet rows) override this (and
        ``resolve``, to name the file the bytes come from). Raises what the
        filesystem raises (``FileNotFoundError``, ``OSError``, client errors: the
        caller maps them to error rows or retries), or :class:`EntryReadError` for
        a problem of this one image.
        """
        fs, path = self.resolve(entry)
        return fs.cat_file(path)

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """sha256 over everything that defines the shard rows of this source.

        Covers the layout, split, classes and the ordered entries with their listed
        sizes, but not the source URL: the same files copied from a disk to a bucket
        give the same fingerprint (and the same shards). File contents are not
        hashed (that would mean reading everything twice); a file replaced in place
        by one of the same name and size is not noticed, use ``force=True`` then.
        """
        h = hashlib.sha256()
        head = {
            "layout": self.layout,
            "split": self.split,
            "options": {k: self.options[k] for k in sorted(self.options)},
            "classnames": self.classnames,
            "text_classnames": self.text_classnames,
            "subset_indices": self.subset_indices,
        }
        h.update(json.dumps(head, sort_keys=True, default=str).encode())
        update_with_entries(h, self.entries)
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (no entries) for metadata files and logs."""
        return {
            "layout": self.layout,
            "name": self.name,
            "source": self.url,
            "split": self.split,
            "options": dict(self.options),
            "classnames": list(self.classnames),
            "text_classnames": list(self.text_classnames or []),
            "subset_indices": None if self.subset_indices is None else list(self.subset_indices),
            "class_ids": None if self.class_ids is None else list(self.class_ids),
            "n_images": len(self.entries),
            "expected_size": self.expected_size,
            "size_matches": self.size_matches,
            "n_ignored": len(self.ignored),
            "ignored_sample": [{"path": i.path, "reason": i.reason} for i in self.ignored[:20]],
        }


class Layout(ABC):
    """One official on-disk layout. Subclasses are registered with ``register_layout``.

    A subclass implements :meth:`_load`; :meth:`load` opens the filesystem, checks
    the split and warns when the count differs from the official one.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    title: ClassVar[str] = ""
    #: Official number of images per split (empty when there is none).
    expected_sizes: ClassVar[Mapping[str, int]] = {}
    #: Split used when the caller gives none (``None``: the layout has no splits).
    default_split: ClassVar[str | None] = None
    #: Allowed splits; ``None`` means "any name the layout's files define".
    splits: ClassVar[tuple[str, ...] | None] = None
    #: The prompt-template set ``clip-e`` uses by default for this layout's datasets: a set of
    #: ``tasks/datasets/templates/clip.json`` (the CLIP paper's), ``None`` for none (then the
    #: dataset's own templates, else ``imagenet1k``: ``tasks.datasets.template_sets``). Each layout
    #: module sets it on its class, beside the files it reads, so a new layout brings its set along.
    default_templates: ClassVar[str | None] = None
    #: ``True`` when ``source`` is a file (a manifest) rather than a folder;
    #: ``None`` when it may be a file, a folder or a glob (``_load`` checks it).
    source_is_file: ClassVar[bool | None] = False

    def load(
        self,
        source: str,
        *,
        split: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> DatasetSource:
        """Read the layout's index files / folders under ``source`` (any fsspec URL)."""
        storage_options = dict(storage_options or {})
        split = split if split is not None else self.default_split
        if self.splits is not None and split not in self.splits:
            if self.splits == (None,):
                raise LayoutError(
                    f"{self.name}: this layout has no splits (the folder is the evaluation set); leave split unset"
                )
            raise LayoutError(f"{self.name}: unknown split {split!r}; expected one of {list(self.splits)}")
        fs, root = fsspec.core.url_to_fs(source, **storage_options)
        root = root.rstrip("/") or "/"
        if self.source_is_file is None:
            pass  # a file, a folder or a glob: the layout's _load checks what it got
        elif self.source_is_file:
            if not fs.isfile(root):
                raise LayoutError(f"{self.name}: {source} is not a file; expected {self.title}")
        elif not fs.isdir(root):
            raise LayoutError(f"{self.name}: {source} does not exist or is not a folder; expected {self.title}")
        ds = self._load(fs, root, source=source, split=split, **options)
        ds.storage_options = storage_options
        if ds.expected_size is None:
            ds.expected_size = self.expected_size(split)
        if ds.expected_size is not None and len(ds.entries) != ds.expected_size:
            warn_user(
                f"{self.name}: {source} holds {len(ds.entries)} images"
                f"{f' in split {split!r}' if split else ''}, but the official evaluation set has "
                f"{ds.expected_size} (a partial download?). Every image found is kept; "
                "accuracies will not be comparable to published numbers.",
            )
        return ds

    def expected_size(self, split: str | None) -> int | None:
        return self.expected_sizes.get(split or "", None)

    @abstractmethod
    def _load(
        self, fs: AbstractFileSystem, root: str, *, source: str, split: str | None, **options: Any
    ) -> DatasetSource:
        """Build the :class:`DatasetSource`; ``root`` is the filesystem path of ``source``."""


# ---------------------------------------------------------------------- fs helpers


_INTERNAL_PREFIXES = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "steps", "shard.py"),
)


def warn_user(message: str, category: type[Warning] = DatasetSizeWarning) -> None:
    """Warn with the location of the first caller outside this package and ``tasks.steps.shard``.

    A partial-download warning is about the caller's dataset, so it should point at
    the caller's line, not at whichever layout module noticed.
    """
    level = 2
    frame: types.FrameType | None = sys._getframe(1)  # stacklevel 1 would be this function
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_PREFIXES):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
