"""A CSV or Parquet manifest: one row per image with ``path``, ``label`` and optionally ``class_name``.

For datasets whose layout is none of the above, or a hand-picked subset. The
source URL is the manifest file itself. ``path`` is relative to the manifest's
folder, or absolute (same filesystem), or a full URL (``s3://...``). Labels are
integers ``0..K-1``; class names come from the ``class_name`` column (one name
per label, checked), else the label's digits. An optional ``image_id`` column
overrides the default id (the path). Rows keep the manifest's order.
"""

from __future__ import annotations

import csv
import io
import posixpath
from typing import Any

import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from .base import DatasetSource, Entry, Layout, LayoutError, warn_user
from .folder import _safe_name
from .listing import display, read_text
from .registry import register_layout

REQUIRED = ("path", "label")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@register_layout("manifest", "csv", "parquet-manifest")
class Manifest(Layout):
    """Any dataset listed in a table: point at a .csv or .parquet file with columns path, label[, class_name][, image_id].

    Paths are relative to the manifest's folder, absolute, or URLs. A Parquet
    ``path`` column may be binary, for file names that are not valid UTF-8.
    """

    title = "a .csv or .parquet file with columns path, label[, class_name][, image_id]"
    source_is_file = True

    def _load(
        self, fs: AbstractFileSystem, root: str, *, source: str, split: str | None, **options: Any
    ) -> DatasetSource:
        if options:
            raise TypeError(f"{self.name}: unexpected options {sorted(options)}")
        where = display(fs, root)
        columns, rows = self._read_rows(fs, root, where)
        if not columns and not rows:
            raise LayoutError(f"{self.name}: {where} is empty; expected {self.title}")
        missing_cols = [c for c in REQUIRED if c not in columns]
        if missing_cols:
            raise LayoutError(
                f"{self.name}: {where} lacks column(s) {missing_cols}; found {sorted(columns)}, expected {self.title}"
            )
        if not rows:
            raise LayoutError(f"{self.name}: {where} has no rows; expected {self.title}")

        entries: list[Entry] = []
        names: dict[int, str] = {}
        for n, row in enumerate(rows, start=2 if not root.endswith(PARQUET_SUFFIXES) else 1):
            path = _text(row["path"]).strip()
            if not path:
                raise LayoutError(f"{self.name}: {where} row {n}: empty path")
            try:
                label = int(str(row["label"]).strip())
            except (TypeError, ValueError):
                raise LayoutError(f"{self.name}: {where} row {n}: label {row['label']!r} is not an integer") from None
            if label < 0:
                raise LayoutError(f"{self.name}: {where} row {n}: label {label} is negative; expected 0..K-1")
            name = row.get("class_name")
            if name is not None and _text(name).strip() != "":
                name = _text(name).strip()
                if names.setdefault(label, name) != name:
                    raise LayoutError(
                        f"{self.name}: {where} row {n}: label {label} is named {name!r} here but {names[label]!r} before"
                    )
            # Ids with undecodable bytes are escaped (and kept unique) by DatasetSource.
            image_id = _text(row.get("image_id")).strip() or path
            entries.append(Entry(path=path, label=label, image_id=image_id))

        n_classes = max(e.label for e in entries) + 1
        if names:
            unnamed = [i for i in range(n_classes) if i not in names]
            if unnamed:
                warn_user(
                    f"{self.name}: {where} names no class for labels {unnamed[:10]}; their names are the label digits",
                )
        classnames = [names.get(i, str(i)) for i in range(n_classes)]
        stem = posixpath.splitext(posixpath.basename(root))[0]
        return DatasetSource(
            layout=self.name,
            name=_safe_name(stem),
            url=source,
            fs=fs,
            root_path=posixpath.dirname(root) or "/",
            classnames=classnames,
            entries=entries,
            split=split,
        )

    def _read_rows(self, fs: AbstractFileSystem, path: str, where: str) -> tuple[list[str], list[dict[str, Any]]]:
        """``(column names, rows)``; the columns come from the header, so a file without rows still names them."""
        if path.lower().endswith(PARQUET_SUFFIXES):
            try:
                with fs.open(path, "rb") as f:
                    table = pq.read_table(f)
            except Exception as e:  # pyarrow raises several types for a broken file
                raise LayoutError(
                    f"{self.name}: {where} is not a readable Parquet file ({e}); expected {self.title}"
                ) from e
            columns = [str(c).strip() for c in table.column_names]
            return columns, [{str(k).strip(): v for k, v in row.items()} for row in table.to_pylist()]
        text = read_text(fs, path, self.title, self.name)
        try:
            dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(io.StringIO(text), dialect=dialect)
        columns = [(k or "").strip() for k in (reader.fieldnames or [])]
        rows = []
        for row in reader:
            if None in row:
                raise LayoutError(f"{self.name}: {where} line {reader.line_num}: more fields than the header has")
            rows.append({(k or "").strip(): v for k, v in row.items()})
        return columns, rows


def _text(value: Any) -> str:
    """A manifest cell as text; binary cells (Parquet) are file-name bytes, kept exactly.

    Bytes that are not valid UTF-8 decode to lone surrogates (``surrogateescape``),
    as Python does for file names, so the file still opens by its real name.
    """
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)
