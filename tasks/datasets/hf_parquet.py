"""Hugging Face ``datasets`` Parquet files: one row per image, the image's bytes inside the file.

What a dataset repository on the Hub holds (e.g. ImageNet-1k's
``data/validation-00000-of-00014.parquet`` ...): an image column that is a
struct ``{bytes: binary, path: string}`` (the ``Image`` feature; a plain binary
column works too) and an integer label column (a ``ClassLabel``), whose class
names are in the file's schema metadata under the key ``huggingface``
(``info.features.<label>.names``).

Point at one file, a folder of them (searched recursively) or a glob; any
fsspec URL works (``hf://datasets/<repo>/...`` where ``huggingface_hub`` is
installed). A folder holding several splits (``train-*.parquet``,
``validation-*.parquet``) needs ``split=``.

Why rows are read by row group: listing reads only the label column (and the
image paths, for ids), never the image bytes. Sharding reads the image column
of one row group at a time and keeps the last few in memory, so a shard of
consecutive rows costs one read per row group, not one per image. The bytes are
stored in the shard as they are in the file (never decoded and re-encoded).

Image ids: the struct's ``path`` when every row has one and they are unique
across the files, else ``<file stem>/<row index in the file>``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from tasks.store.images import STATUS_MISSING, STATUS_UNREADABLE

from .base import DatasetSource, Entry, EntryReadError, Layout, LayoutError
from .folder import _safe_name
from .listing import display, relpath
from .registry import register_layout
from .webdataset import _natural_key, _option_fs, read_name_list

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_SPLIT_RE = re.compile(r"^(train|training|validation|valid|val|test|testing|dev)(?=[-_.]|$)", re.IGNORECASE)
_GLOB_CHARS = "*?["
#: Row groups of the image column kept in memory per source while sharding.
CACHED_ROW_GROUPS = 2


@dataclass(frozen=True)
class ParquetEntry(Entry):
    """An image that is row ``row`` of row group ``row_group`` of ``file`` (relative to the source root)."""

    file: str = ""
    row_group: int = 0
    row: int = 0


@dataclass(eq=False)
class HFParquetSource(DatasetSource):
    """A :class:`DatasetSource` whose entries are Parquet rows (:class:`ParquetEntry`).

    Reads the image column one row group at a time (thread-safe: sharding reads
    on several threads), keeping the last :data:`CACHED_ROW_GROUPS` of them.
    """

    image_column: str = "image"
    file_sizes: dict[str, int | None] = field(default_factory=dict, repr=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _groups: Any = field(default_factory=OrderedDict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        state.pop("_groups", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._groups = OrderedDict()

    def resolve(self, entry: Entry) -> tuple[AbstractFileSystem, str]:
        if isinstance(entry, ParquetEntry):
            return self.fs, posixpath.join(self.root_path, entry.file)
        return super().resolve(entry)

    def read_entry_bytes(self, entry: Entry) -> bytes:
        if not isinstance(entry, ParquetEntry):
            return super().read_entry_bytes(entry)
        fs, path = self.resolve(entry)
        column = self._row_group(fs, path, entry.row_group)
        value = column[entry.row].as_py()
        if isinstance(value, dict):
            value = value.get("bytes")
        if value is None:
            raise EntryReadError(
                STATUS_MISSING,
                f"{display(fs, path)} row {entry.path.rsplit('#', 1)[-1]}: column {self.image_column!r} holds no image bytes",
            )
        return bytes(value)

    def _row_group(self, fs: AbstractFileSystem, path: str, index: int) -> pa.Array:
        """The image column of one row group (read once, then from the cache)."""
        key = (path, index)
        with self._lock:
            hit = self._groups.get(key)
            if hit is None:
                try:
                    with fs.open(path, "rb") as f:
                        table = pq.ParquetFile(f).read_row_group(index, columns=[self.image_column])
                    hit = table.column(0).combine_chunks()
                except (
                    pa.ArrowInvalid,
                    pa.ArrowNotImplementedError,
                ) as e:  # a damaged file: about its rows, not the network
                    hit = EntryReadError(
                        STATUS_UNREADABLE, f"{display(fs, path)} row group {index}: {type(e).__name__}: {e}"
                    )
                self._groups[key] = hit
                while len(self._groups) > CACHED_ROW_GROUPS:
                    self._groups.popitem(last=False)
            else:
                self._groups.move_to_end(key)
        if isinstance(hit, EntryReadError):
            raise EntryReadError(hit.status, str(hit))
        return hit

    def fingerprint(self) -> str:
        """The base fingerprint plus the byte size of every file (a replaced file reshards)."""
        h = hashlib.sha256(super().fingerprint().encode())
        h.update(json.dumps(sorted(self.file_sizes.items())).encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "files": sorted(self.file_sizes), "image_column": self.image_column}


@register_layout("hf-parquet", "huggingface-parquet", "hf")
class HFParquet(Layout):
    """Hugging Face datasets Parquet files (e.g. ImageNet-1k validation from the Hub): point at a .parquet file, a folder of them or a glob.

    Options: ``image_column`` (default ``image``: a struct {bytes, path} or
    binary), ``label_column`` (default ``label``: integers), ``classnames`` (a
    text file, one name per line; used instead of the files' ClassLabel names).
    """

    title = "Hugging Face Parquet files with an image column {bytes, path} and an integer label column"
    source_is_file = None  # a file, a folder or a glob

    def _load(
        self, fs: AbstractFileSystem, root: str, *, source: str, split: str | None, **options: Any
    ) -> DatasetSource:
        unknown = sorted(set(options) - {"image_column", "label_column", "classnames"})
        if unknown:
            raise TypeError(
                f"{self.name}: unexpected options {unknown}; known: ['classnames', 'image_column', 'label_column']"
            )
        image_col = str(options.get("image_column") or "image")
        label_col = str(options.get("label_column") or "label")
        base, files, single = self._find_files(fs, root, source)
        files, split = self._pick_split(fs, base, files, split, single)

        rels = [relpath(p, base) for p, _ in files]
        stems = [posixpath.splitext(posixpath.basename(r))[0] for r in rels]
        if len(set(stems)) < len(stems):
            stems = [posixpath.splitext(r)[0] for r in rels]
        specs: list[
            tuple[str, int, int, int, int, str | None]
        ] = []  # rel, row in file, group, row in group, label, path
        meta_names: list[str] | None = None
        meta_from: str | None = None
        for (path, _size), rel in zip(files, rels):
            where = display(fs, path)
            try:
                with fs.open(path, "rb") as f:
                    pf = pq.ParquetFile(f)
                    schema = pf.schema_arrow
                    self._check_columns(schema, image_col, label_col, where)
                    names = _classlabel_names(schema, label_col)
                    if names is not None:
                        if meta_names is not None and names != meta_names:
                            raise LayoutError(
                                f"{self.name}: the ClassLabel names of {label_col!r} in {where} differ from those in {meta_from}"
                            )
                        meta_names, meta_from = names, where
                    labels = pf.read(columns=[label_col]).column(0).to_pylist()
                    img_type = schema.field(image_col).type
                    if pa.types.is_struct(img_type) and img_type.get_field_index("path") >= 0:
                        paths = (
                            pf.read(columns=[f"{image_col}.path"]).column(0).combine_chunks().field("path").to_pylist()
                        )
                    else:
                        paths = [None] * len(labels)
                    group_rows = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            except LayoutError:
                raise
            except (OSError, pa.ArrowException, ValueError) as e:
                raise LayoutError(
                    f"{self.name}: {where} is not a readable Parquet file ({type(e).__name__}: {e}); expected {self.title}"
                ) from e
            i = 0
            for g, n in enumerate(group_rows):
                for r in range(n):
                    label = labels[i]
                    if label is None or label < 0:
                        raise LayoutError(
                            f"{self.name}: {where} row {i} has label {label!r}; expected a class index 0..K-1 "
                            "(rows without a label, e.g. a test split, cannot be evaluated)"
                        )
                    specs.append((rel, i, g, r, int(label), paths[i]))
                    i += 1

        if options.get("classnames"):
            cfs, cpath = _option_fs(options["classnames"], fs)
            classnames = read_name_list(cfs, cpath, "class names, one per line in label order", self.name)
        elif meta_names is not None:
            classnames = meta_names
        else:
            raise LayoutError(
                f"{self.name}: no class names: the files under {display(fs, base)} have no Hugging Face ClassLabel names "
                f"for column {label_col!r}; pass layout_options={{'classnames': '<text file, one class name per line in label order>'}}"
            )

        all_paths = [s[5] for s in specs]
        use_paths = all(all_paths) and len(set(all_paths)) == len(all_paths)
        stem_of = dict(zip(rels, stems))
        entries: list[Entry] = [
            ParquetEntry(
                path=f"{rel}#{i}",
                label=label,
                image_id=p if use_paths else f"{stem_of[rel]}/{i}",  # type: ignore[arg-type]
                size=None,
                regular=True,
                file=rel,
                row_group=g,
                row=r,
            )
            for rel, i, g, r, label, p in specs
        ]
        return HFParquetSource(
            layout=self.name,
            name=self._name(base, rels, split, single),
            url=source,
            fs=fs,
            root_path=base,
            classnames=classnames,
            entries=entries,
            split=split,
            options=dict(options),
            image_column=image_col,
            file_sizes={rel: size for (_, size), rel in zip(files, rels)},
        )

    # ------------------------------------------------------------------ helpers
    def _find_files(
        self, fs: AbstractFileSystem, root: str, source: str
    ) -> tuple[str, list[tuple[str, int | None]], bool]:
        """``(base folder, [(path, size)], single file?)`` for a file, a folder or a glob."""
        if any(c in root for c in _GLOB_CHARS):
            found = fs.glob(root, detail=True)
            files = [
                (p, _size(i))
                for p, i in found.items()
                if i.get("type") != "directory" and p.lower().endswith(PARQUET_SUFFIXES)
            ]
            head = root[: min(root.index(c) for c in _GLOB_CHARS if c in root)]
            base = (head.rsplit("/", 1)[0] if "/" in head else "") or "/"
            single = False
        elif fs.isfile(root):
            files, base, single = [(root, _size(fs.info(root)))], posixpath.dirname(root) or "/", True
        elif fs.isdir(root):
            found = fs.find(root, detail=True)
            files = [
                (p, _size(i))
                for p, i in found.items()
                if p.lower().endswith(PARQUET_SUFFIXES) and not _hidden(relpath(p, root))
            ]
            base, single = root, False
        else:
            raise LayoutError(
                f"{self.name}: {source} does not exist; expected a .parquet file, a folder of them or a glob"
            )
        if not files:
            raise LayoutError(f"{self.name}: no .parquet files at {source}; expected {self.title}")
        files.sort(key=lambda t: _natural_key(relpath(t[0], base)))
        return base, files, single

    def _pick_split(
        self, fs: AbstractFileSystem, base: str, files: list[tuple[str, int | None]], split: str | None, single: bool
    ) -> tuple[list[tuple[str, int | None]], str | None]:
        """Keep the files of ``split`` (by file-name prefix or folder name); refuse a silent mix of splits."""
        found = {i: _split_of(relpath(p, base)) for i, (p, _) in enumerate(files)}
        if split is not None and not single:
            keep = [f for i, f in enumerate(files) if (found[i] or "").lower() == split.lower()]
            if not keep:
                seen = sorted({s for s in found.values() if s})
                raise LayoutError(
                    f"{self.name}: no .parquet files of split {split!r} under {display(fs, base)} (splits found: {seen or 'none'})"
                )
            return keep, split
        splits = sorted({s.lower() for s in found.values() if s})
        if len(splits) > 1:
            raise LayoutError(f"{self.name}: {display(fs, base)} holds the splits {splits}; pass split= to pick one")
        return files, split if split is not None else (splits[0] if splits and all(found.values()) else None)

    def _check_columns(self, schema: pa.Schema, image_col: str, label_col: str, where: str) -> None:
        names = schema.names
        for col, opt in ((image_col, "image_column"), (label_col, "label_column")):
            if col not in names:
                raise LayoutError(
                    f"{self.name}: {where} has no column {col!r} (columns: {names}); pass layout_options={{'{opt}': ...}}"
                )
        t = schema.field(image_col).type
        ok = (
            pa.types.is_struct(t)
            and t.get_field_index("bytes") >= 0
            and _is_binary(t.field(t.get_field_index("bytes")).type)
        ) or _is_binary(t)
        if not ok:
            raise LayoutError(
                f"{self.name}: {where} column {image_col!r} is {t}; expected a struct {{bytes: binary, path: string}} or binary"
            )
        if not pa.types.is_integer(schema.field(label_col).type):
            raise LayoutError(
                f"{self.name}: {where} column {label_col!r} is {schema.field(label_col).type}; expected integer class labels"
            )

    def _name(self, base: str, rels: list[str], split: str | None, single: bool) -> str:
        folder = base.rstrip("/")
        if posixpath.basename(folder) in ("data", "") or (
            split and posixpath.basename(folder).lower() == split.lower()
        ):
            folder = posixpath.dirname(folder)
            if posixpath.basename(folder) == "data":
                folder = posixpath.dirname(folder)
        if single and not split:
            return _safe_name(posixpath.splitext(posixpath.basename(rels[0]))[0])
        name = _safe_name(posixpath.basename(folder) or "hf-parquet")
        return f"{name}-{_safe_name(split)}" if split else name


def _classlabel_names(schema: pa.Schema, label_col: str) -> list[str] | None:
    """``info.features.<label_col>.names`` of the ``huggingface`` schema metadata, if any."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        meta = json.loads(raw)
        feats = meta.get("info", {}).get("features", {})
        feat = feats.get(label_col) if isinstance(feats, dict) else None
        names = feat.get("names") if isinstance(feat, dict) else None
    except (ValueError, AttributeError):
        return None
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _split_of(rel: str) -> str | None:
    """The split a Hub file belongs to: ``validation-00000-of-00014.parquet`` or ``.../validation/0000.parquet``."""
    parts = rel.split("/")
    m = _SPLIT_RE.match(parts[-1])
    if m:
        return m.group(1)
    for part in reversed(parts[:-1]):
        m = _SPLIT_RE.match(part)
        if m and m.group(1) == part:
            return part
    return None


def _is_binary(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or getattr(pa.types, "is_binary_view", lambda _: False)(t)
    )


def _size(info: dict[str, Any]) -> int | None:
    size = info.get("size")
    return None if size is None else int(size)


def _hidden(rel: str) -> bool:
    return any(p.startswith(".") for p in rel.split("/"))
