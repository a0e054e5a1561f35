"""The commit protocol, in one place: a unit of work is a data file plus its done-marker.

Why one home: resume rests on this protocol. Every step (sharding, the DINO cache,
the text bank, inference, description sets, rollups) saves its unit the same way,
and a rerun skips a unit on the same test; written out in each step, the five
copies drifted (which fields a marker holds, whether the data file is checked,
whether a marker vanishing mid-read is tolerated).

The rules:

* **write**: the data file goes to ``_tmp/`` and is moved to its final path
  (``Storage.write_parquet`` / ``write_json``), and only then is the marker written
  (``_commits/<path without extension>.json``), so a reader that finds a marker
  always finds the whole file;
* **skip**: a unit is committed when its marker exists, holds the expected values
  (e.g. the fingerprint of the settings that made it) and its data file exists
  (:func:`committed`); anything else is recomputed and moved over whatever is there;
* **remove**: marker first, then the file (:func:`uncommit`), so no marker ever
  names a missing file.

Markers are typed records (``tasks.store.markers``); what they hold is part of the
storage format (older roots are read by key, unknown keys are ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tasks.store.paths import marker_key

if TYPE_CHECKING:
    import pyarrow as pa

    from tasks.store.storage import Storage

__all__ = ["commit_json", "commit_parquet", "committed", "mark", "marker_of", "read_json_or_none", "remove", "uncommit"]


def marker_of(storage: Storage, rel: str) -> dict[str, Any] | None:
    """The done-marker of the unit whose data file is ``rel``; ``None`` when absent (also when
    it vanishes while being read: another run may be replacing it)."""
    try:
        return storage.read_marker(marker_key(rel))
    except FileNotFoundError:
        return None


def committed(storage: Storage, rel: str, **expect: Any) -> dict[str, Any] | None:
    """The marker of ``rel`` when the unit is committed: marker present, holding ``expect``'s
    values (e.g. ``fingerprint=...``), and the data file there. Else ``None`` (recompute it)."""
    marker = marker_of(storage, rel)
    if marker is None or any(marker.get(k) != v for k, v in expect.items()):
        return None
    return marker if storage.exists(rel) else None


def _as_dict(marker: Any) -> dict[str, Any]:
    to_dict = getattr(marker, "to_dict", None)
    return to_dict() if to_dict is not None else dict(marker)


def mark(storage: Storage, rel: str, marker: Any) -> None:
    """Write the marker of ``rel`` (a record of ``tasks.store.markers`` or a mapping) -- LAST,
    after its data file is in place."""
    storage.mark_done(marker_key(rel), _as_dict(marker))


def commit_parquet(storage: Storage, rel: str, table: pa.Table, marker: Any, **parquet_options: Any) -> str:
    """Commit ``table`` as the unit ``rel``: file (tmp, move), then marker. Returns the final path."""
    final = storage.write_parquet(rel, table, **parquet_options)
    mark(storage, rel, marker)
    return final


def commit_json(storage: Storage, rel: str, obj: Any, marker: Any) -> str:
    """Commit ``obj`` as the JSON unit ``rel``: file (tmp, move), then marker."""
    final = storage.write_json(rel, obj)
    mark(storage, rel, marker)
    return final


def remove(storage: Storage, rel: str) -> bool:
    """Remove the file ``rel``; ``False`` when it is not there (another run may have removed it first)."""
    try:
        if not storage.exists(rel):
            return False
        storage.fs.rm(storage.path(rel))
    except FileNotFoundError:
        return False
    return True


def uncommit(storage: Storage, rel: str, *, data: bool = True) -> list[str]:
    """Remove the marker of ``rel`` and then (``data``) the file; returns what was removed."""
    out = []
    for path in [storage.marker_path(marker_key(rel))] + ([rel] if data else []):
        if remove(storage, path):
            out.append(path)
    return out


def read_json_or_none(storage: Storage, rel: str) -> Mapping[str, Any] | None:
    """``rel``'s JSON, ``None`` when absent (also when it vanishes while being read)."""
    try:
        return storage.read_json(rel) if storage.exists(rel) else None
    except FileNotFoundError:
        return None
