"""One storage root on any fsspec filesystem, with atomic commits.

Why: every later step (and every worker of a cluster) reads committed files by
glob. A reader must never see a half-written file, and a crash must never leave
one behind under a globbed path. So data files are written to ``_tmp/`` (never
globbed), moved to their final name, and only then is a done-marker written under
``_commits/``. A rerun trusts the marker, not the data file, so a crash between
the move and the marker only costs recomputing that one unit.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

# fsspec and pyarrow are imported where they are used: importing ``tasks.store`` (as the
# shard worker processes do, for ``tasks.store.images``) then costs neither.

TMP_DIR = "_tmp"
COMMITS_DIR = "_commits"


@dataclass
class Storage:
    """A root URL (``/data/abs``, ``memory://abs``, ``s3://bucket/abs``) and its filesystem."""

    root: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import fsspec

        self.fs, path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self.root_path = path.rstrip("/") or "/"
        self.protocol = _protocol(self.fs)

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> str:
        """Filesystem path (no protocol) of ``parts`` under the root."""
        return posixpath.join(self.root_path, *parts)

    def url(self, *parts: str) -> str:
        """Full URL (with protocol, except for local files) of ``parts`` under the root."""
        p = self.path(*parts)
        if self.is_local:
            return p
        return f"{self.protocol}://{p.lstrip('/')}" if self.protocol != "memory" else f"memory://{p}"

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def glob(self, pattern: str) -> list[str]:
        """Paths under the root matching ``pattern`` (relative to the root), sorted."""
        return sorted(self.fs.glob(self.path(pattern)))

    # ------------------------------------------------------------------ writes
    def _tmp_path(self, suffix: str) -> str:
        return self.path(TMP_DIR, f"{uuid.uuid4().hex}{suffix}")

    def _commit_bytes(self, rel_path: str, data: bytes) -> str:
        tmp = self._tmp_path(posixpath.splitext(rel_path)[1] or ".bin")
        final = self.path(rel_path)
        self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        # A move within one filesystem: atomic rename on local disks, a single
        # object copy on object stores (readers see the old state or the whole file).
        self.fs.mv(tmp, final)
        return final

    def write_parquet(self, rel_path: str, table: pa.Table, **kwargs: Any) -> str:
        """Write ``table`` to ``rel_path`` atomically; returns the final path.

        On a local disk the writer streams straight into the temporary file (no
        copy of the whole file in memory); elsewhere the file is built in memory
        and uploaded once. The bytes are the same either way.
        """
        import pyarrow.parquet as pq

        if self.is_local:
            tmp = self._tmp_path(posixpath.splitext(rel_path)[1] or ".bin")
            final = self.path(rel_path)
            self.fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
            self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
            try:
                pq.write_table(table, tmp, **kwargs)
                self.fs.mv(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
            return final
        buf = io.BytesIO()
        pq.write_table(table, buf, **kwargs)
        return self._commit_bytes(rel_path, buf.getvalue())

    def write_bytes(self, rel_path: str, data: bytes) -> str:
        """Write ``data`` to ``rel_path`` atomically; returns the final path."""
        return self._commit_bytes(rel_path, data)

    def write_json(self, rel_path: str, obj: Any) -> str:
        return self._commit_bytes(rel_path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel_path: str) -> Any:
        with self.fs.open(self.path(rel_path), "rb") as f:
            return json.loads(f.read())

    def read_parquet(self, rel_path: str, columns: list[str] | None = None) -> pa.Table:
        import pyarrow.parquet as pq

        with self.fs.open(self.path(rel_path), "rb") as f:
            return pq.read_table(f, columns=columns)

    # ------------------------------------------------------------------ commit markers
    def marker_path(self, key: str) -> str:
        return posixpath.join(COMMITS_DIR, key + ".json")

    def mark_done(self, key: str, manifest: dict[str, Any]) -> None:
        """Write the done-marker for ``key`` LAST, after its data file is in place."""
        self.write_json(self.marker_path(key), manifest)

    def is_done(self, key: str) -> bool:
        return self.exists(self.marker_path(key))

    def read_marker(self, key: str) -> dict[str, Any] | None:
        if not self.is_done(key):
            return None
        return self.read_json(self.marker_path(key))

    @property
    def is_local(self) -> bool:
        """A folder on this machine (not memory://, s3:// ...)."""
        return self.protocol in LOCAL_PROTOCOLS


#: fsspec protocol names of the local filesystem.
LOCAL_PROTOCOLS = ("file", "local")


def as_storage(root: str | Storage, storage_options: Mapping[str, Any] | None = None) -> Storage:
    """A ``Storage`` for ``root`` (a root URL, or a ``Storage`` returned as is).

    Every plain function of the pipeline takes either, so callers pass what they have.
    """
    return root if isinstance(root, Storage) else Storage(root, dict(storage_options or {}))


def is_local(fs: Any) -> bool:
    """Whether an fsspec filesystem (or a ``Storage``) is the local one."""
    if isinstance(fs, Storage):
        return fs.is_local
    return _protocol(fs) in LOCAL_PROTOCOLS


def _protocol(fs: Any) -> str:
    """An fsspec filesystem's protocol name (its first, where it has several: ``("file", "local")``)."""
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
