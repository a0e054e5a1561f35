"""Filesystem and index-file helpers the layout modules share: listing trees, reading
index files, finding a dataset's root, class folders, and user-facing warnings.

Why apart from ``base``: ``base`` says what a source *is* (the types); this
module is how a layout *finds* one on a disk or a bucket.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any

from fsspec.spec import AbstractFileSystem

from tasks.store import is_local

from .base import JUNK_FILE_NAMES, Entry, IgnoredFile, LayoutError, warn_user


def display(fs: AbstractFileSystem, path: str) -> str:
    """A path as the user would write it (no ``file://`` for local files)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def relpath(path: str, root: str) -> str:
    """``path`` relative to ``root``; both are filesystem paths of the same fs."""
    root = root.rstrip("/")
    if root and path.startswith(root + "/"):
        return path[len(root) + 1 :]
    if not root and path.startswith("/"):
        return path[1:]
    return posixpath.relpath(path, root or "/")


def is_junk(name: str) -> bool:
    """Hidden files and OS droppings (``.DS_Store``, ``._x.jpg``, ``Thumbs.db``)."""
    return name.startswith(".") or name in JUNK_FILE_NAMES


def list_tree(fs: AbstractFileSystem, root: str) -> dict[str, dict[str, Any]]:
    """Every file below ``root`` as ``{relative path: info}``, sorted by path.

    One ``find`` call (paginated listing on object stores), so listing costs no
    per-file request. Directories are not listed.
    """
    return dict(sorted(_list_files(fs, root, set()).items()))


def _list_files(fs: AbstractFileSystem, root: str, seen: set[str]) -> dict[str, dict[str, Any]]:
    # Local listings report symbolic links as type "other" without following them
    # (fsspec lists with scandir). Datasets are often prepared as links (ImageNet
    # val sorted into class folders by symlinks, class folders linked from another
    # disk), so links are resolved here: a link to a file is that file, a link to a
    # folder is listed through, and only a dangling link stays "other".
    seen.add(os.path.realpath(root) if is_local(fs) else root)
    out: dict[str, dict[str, Any]] = {}
    for p, info in fs.find(root, detail=True, withdirs=False).items():
        if info.get("type") == "directory":
            continue
        if info.get("islink") and info.get("type") == "other":
            try:
                target = fs.info(p)
            except (FileNotFoundError, OSError):
                target = info  # dangling: stays "other", becomes an 'unreadable' row
            if target.get("type") == "directory":
                real = os.path.realpath(p)
                if real in seen or any(real.startswith(s.rstrip("/") + "/") for s in seen):
                    continue  # a link back into a listed folder would list files twice
                for sub, sub_info in _list_files(fs, p, seen).items():
                    out[relpath(p, root) + "/" + sub] = sub_info
                continue
            info = {**target, "name": p}
        out[relpath(p, root)] = info
    return out


def info_size(info: Mapping[str, Any] | None) -> int | None:
    if info is None:
        return None
    size = info.get("size")
    return int(size) if size is not None else None


def info_regular(info: Mapping[str, Any] | None) -> bool | None:
    """``False`` for FIFOs, sockets and dangling links (local ``type == 'other'``)."""
    if info is None:
        return None
    return info.get("type", "file") == "file"


def require_file(fs: AbstractFileSystem, path: str, what: str, layout: str) -> str:
    if not fs.isfile(path):
        raise LayoutError(f"{layout}: missing {display(fs, path)} — expected {what}")
    return path


def read_text(fs: AbstractFileSystem, path: str, what: str, layout: str) -> str:
    """Text of an index file; a missing or non-UTF-8 file fails with what was expected."""
    require_file(fs, path, what, layout)
    data = fs.cat_file(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LayoutError(f"{layout}: {display(fs, path)} is not UTF-8 text ({e}); expected {what}") from e


def parse_table(
    fs: AbstractFileSystem,
    path: str,
    *,
    n_fields: int | tuple[int, int],
    what: str,
    layout: str,
    int_fields: tuple[int, ...] = (),
) -> list[tuple[int, list[str]]]:
    """Whitespace-separated index file as ``[(line number, fields)]``.

    Blank lines and ``#`` comments are skipped. ``n_fields`` is an exact count or
    an inclusive ``(min, max)`` range. Fields listed in ``int_fields`` must parse as
    integers. Any other line fails with the file, the line number and ``what``.
    """
    lo, hi = (n_fields, n_fields) if isinstance(n_fields, int) else n_fields
    rows: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(read_text(fs, path, what, layout).splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        ok = lo <= len(fields) <= hi
        if ok:
            for i in int_fields:
                try:
                    int(fields[i])
                except (ValueError, IndexError):
                    ok = False
        if not ok:
            raise LayoutError(f"{layout}: {display(fs, path)} line {lineno}: expected {what}, got {line!r}")
        rows.append((lineno, fields))
    if not rows:
        raise LayoutError(f"{layout}: {display(fs, path)} is empty; expected {what}")
    return rows


def find_root(
    fs: AbstractFileSystem,
    root: str,
    marker: str,
    *,
    subdirs: tuple[str, ...],
    what: str,
    layout: str,
) -> str:
    """The folder holding ``marker``: ``root`` itself or one of the usual ``subdirs``.

    Users point at the folder the archive extracted into or at its parent; both work.
    """
    for cand in ("", *subdirs):
        base = posixpath.join(root, cand) if cand else root
        if fs.isfile(posixpath.join(base, marker)) or fs.isdir(posixpath.join(base, marker)):
            return base.rstrip("/")
    where = " or ".join(
        display(fs, posixpath.join(root, c, marker) if c else posixpath.join(root, marker)) for c in ("", *subdirs)
    )
    raise LayoutError(f"{layout}: missing {where} — expected {what}")


def scan_class_folders(
    fs: AbstractFileSystem, root: str
) -> tuple[dict[str, list[tuple[str, dict[str, Any]]]], list[IgnoredFile]]:
    """Group every file below ``root`` by its top-level folder (the class folder).

    Files of all kinds inside a class folder are kept (a text file named ``.jpg``
    must become an error row, not vanish); only hidden files and OS droppings, and
    files lying directly in ``root`` (a README), are set aside in the ignored list.
    Sub-folders of a class folder belong to that class.
    """
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    ignored: list[IgnoredFile] = []
    for rel, info in list_tree(fs, root).items():
        parts = rel.split("/")
        if len(parts) == 1:
            ignored.append(IgnoredFile(rel, "not inside a class folder"))
            continue
        if any(is_junk(p) for p in parts):
            ignored.append(IgnoredFile(rel, "hidden or system file"))
            continue
        groups.setdefault(parts[0], []).append((rel, info))
    return groups, ignored


def entries_from_listing(specs: list[tuple[str, int, str]], listing: Mapping[str, Mapping[str, Any]]) -> list[Entry]:
    """Entries for ``(path, label, image_id)`` specs, with size/kind from a listing.

    A listed-in-the-index file that is absent from the listing stays an entry (it
    becomes a ``missing`` error row when sharded): nothing is dropped.
    """
    return [
        Entry(path=p, label=label, image_id=iid, size=info_size(listing.get(p)), regular=info_regular(listing.get(p)))
        for p, label, iid in specs
    ]


def warn_missing(
    layout: str, fs: AbstractFileSystem, root: str, entries: list[Entry], listing: Mapping[str, Any], index_file: str
) -> None:
    """Warn (once, with a count and an example) about indexed images that are not on disk."""
    missing = [e for e in entries if e.path not in listing]
    if missing:
        warn_user(
            f"{layout}: {len(missing)} of {len(entries)} images listed in {index_file} are not under "
            f"{display(fs, root)} (first: {missing[0].path}); they become 'missing' error rows.",
        )


def readable_name(name: str) -> str:
    """``american_pit_bull_terrier`` -> ``american pit bull terrier`` (case kept)."""
    return " ".join(name.replace("_", " ").split())
