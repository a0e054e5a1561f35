"""The read side of committed datasets: what a sharded dataset holds, and its shards.

Why apart from ``tasks.steps.shard`` (the writer): every later step, the report, the parameter
checks and the analysts' tools read a committed dataset; importing the writer to do so
pulled in its planning, its worker processes and (through its Prefect task) Prefect and
torch, ~11 s of imports against a few hundred ms here. Nothing in this module imports
torch, Prefect or DuckDB. ``tasks.steps.shard`` re-exports these names for older callers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from tasks.store import commits
from tasks.store.paths import SHARDS_DIR, dataset_info, marker_key, shard_part
from tasks.store.storage import COMMITS_DIR, Storage, as_storage

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "DatasetInfo",
    "ShardResult",
    "iter_shards",
    "list_datasets",
    "list_shards",
    "read_dataset_info",
    "read_shard",
]


@dataclass
class ShardResult:
    """What one committed shard holds (also the content of its done-marker)."""

    index: int
    path: str  # relative to the storage root
    n_total: int
    n_ok: int
    n_error: int
    status_counts: dict[str, int]
    first_image_id: str
    last_image_id: str
    digest: str  # sha256 of the shard's entry list (ids, paths, labels, sizes)
    n_bytes: int = 0
    skipped: bool = False  # True when this run found it already committed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("skipped")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, skipped: bool = False) -> ShardResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and k != "skipped"}, skipped=skipped)


@dataclass
class DatasetInfo:
    """The committed ``dataset.json``: what later steps need without re-reading the source."""

    dataset: str
    layout: str
    source: str
    split: str | None
    fingerprint: str
    source_fingerprint: str
    classnames: list[str]
    text_classnames: list[str]
    subset_indices: list[int] | None
    class_ids: list[str] | None
    expected_size: int | None
    images_per_shard: int
    n_shards: int
    n_total: int
    n_ok: int
    n_error: int
    status_counts: dict[str, int]
    shards: list[ShardResult]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetInfo:
        names = {f.name for f in fields(cls)} - {"shards", "raw"}
        values: dict[str, Any] = {k: d.get(k) for k in names}
        return cls(
            **values,
            shards=[ShardResult.from_dict(s) for s in d.get("shards", [])],
            raw=dict(d),
        )


def list_datasets(root: str | Storage, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Names of datasets completely sharded under ``root``."""
    st = as_storage(root, storage_options)
    out = []
    for p in st.glob(f"{COMMITS_DIR}/{SHARDS_DIR}/dataset=*/dataset.json"):
        m = re.search(r"dataset=([^/]+)/dataset\.json$", p)
        if m:
            out.append(m.group(1))
    return sorted(out)


def read_dataset_info(
    root: str | Storage, dataset: str, storage_options: Mapping[str, Any] | None = None
) -> DatasetInfo:
    """The committed metadata of ``dataset``; fails clearly when it is not completely sharded."""
    st = as_storage(root, storage_options)
    marker = commits.marker_of(st, dataset_info(dataset))
    if marker is None:
        raise FileNotFoundError(
            f"dataset {dataset!r} is not (completely) sharded under {st.root}: no {st.marker_path(marker_key(dataset_info(dataset)))}; "
            "run shard_dataset for it first"
        )
    info = st.read_json(dataset_info(dataset))
    if info.get("fingerprint") != marker.get("fingerprint"):
        raise RuntimeError(
            f"{dataset_info(dataset)} does not match its done-marker under {st.root}; shard the dataset again"
        )
    return DatasetInfo.from_dict(info)


def list_shards(
    root: str | Storage, dataset: str, storage_options: Mapping[str, Any] | None = None
) -> list[ShardResult]:
    """Committed shards of a completely sharded dataset, in order (paths relative to the root)."""
    return read_dataset_info(root, dataset, storage_options).shards


def read_shard(
    root: str | Storage,
    dataset: str,
    index: int,
    columns: list[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """One committed shard as a table (pass ``columns`` to skip the image bytes)."""
    st = as_storage(root, storage_options)
    if commits.marker_of(st, shard_part(dataset, index)) is None:
        raise FileNotFoundError(f"shard {index} of {dataset!r} is not committed under {st.root}")
    return st.read_parquet(shard_part(dataset, index), columns=columns)


def iter_shards(
    root: str | Storage,
    dataset: str,
    columns: list[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[tuple[ShardResult, pa.Table]]:
    """``(shard, table)`` for every committed shard of ``dataset``, in order."""
    st = as_storage(root, storage_options)
    for shard in list_shards(st, dataset):
        yield shard, st.read_parquet(shard.path, columns=columns)
