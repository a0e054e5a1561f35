"""What each done-marker holds, as typed records beside the table schemas (``tables.py``).

Why typed: markers are read back by other code than the code that wrote them (a rerun's
skip test, ``tasks.results.runs`` progress counts, ``abs-eval status``), so their fields are an
interface. Each record writes exactly the keys markers held before it existed (roots
written by earlier versions resume unchanged) and reads leniently: unknown keys are
ignored, so a newer writer's markers do not break an older reader.

Written by ``tasks.store.commits.commit_parquet`` / ``mark``; read by
``commits.committed`` (as dicts) and ``Record.from_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

_R = TypeVar("_R", bound="_Marker")

__all__ = [
    "DatasetMarker",
    "DescriptionSetMarker",
    "DinoPartMarker",
    "FeaturesPartMarker",
    "PartitionFileMarker",
    "PredictionPartMarker",
    "RollupPartMarker",
    "ShardPartMarker",
    "TextCacheMarker",
    "VariantPartMarker",
]


class _Marker:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_R], d: Mapping[str, Any]) -> _R:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ShardPartMarker(_Marker):
    """``shards/dataset=<d>/part-<n>.parquet``: what the part holds (``tasks.steps.shard.ShardResult``'s
    fields) and the plan that made it (a rerun skips it only for the same ``fingerprint``)."""

    index: int
    path: str
    n_total: int
    n_ok: int
    n_error: int
    status_counts: dict[str, int]
    first_image_id: str
    last_image_id: str
    digest: str
    n_bytes: int
    dataset: str
    fingerprint: str
    committed_at: str


@dataclass(frozen=True)
class DatasetMarker(_Marker):
    """``shards/dataset=<d>/dataset.json``: the dataset is completely sharded by this plan."""

    dataset: str
    fingerprint: str
    n_shards: int
    n_total: int


@dataclass(frozen=True)
class DinoPartMarker(_Marker):
    """``cache/dino/.../part-<n>.parquet``: attention of one shard (``fingerprint``: the shard's
    dataset fingerprint; ``weights``: digest of the DINO weights)."""

    fingerprint: str
    n_ok: int
    n_error: int
    dino: str
    weights: str | None


@dataclass(frozen=True)
class PredictionPartMarker(_Marker):
    """``predictions/.../part-<n>.parquet``: one shard's prediction rows, by run ``run_id``."""

    n_images: int
    n_ok: int
    n_error: int
    run_id: str


@dataclass(frozen=True)
class RollupPartMarker(_Marker):
    """``rollups/.../part-<n>.parquet``: the counts of one prediction part (``tasks.store.rollups``):
    how many prediction rows they count and in how many (run, shard, method, label, pred) groups."""

    rows: int
    groups: int


@dataclass(frozen=True)
class PartitionFileMarker(_Marker):
    """``rollups/.../{all,shards-all,errors-all}-<k>-<md5>.parquet``: a file made of the per-part files of
    a partition's parts ``parts`` (their file names, sorted). Read back by the next compaction of the
    partition, which starts from the largest earlier file whose parts are all still there."""

    parts: list[str] = field(default_factory=list)
    rows: int = 0


@dataclass(frozen=True)
class VariantPartMarker(PredictionPartMarker):
    """``predictions/.../part-<n>.parquet`` of a variant (``tasks.steps.variants``): one shard's prediction rows
    scored from the crop features another partition kept, by run ``run_id``. The prediction marker's fields
    (what every reader of a prediction part reads) plus where the rows came from: the partition
    ``of_config`` whose features and rows they were scored from, the run ``of_run`` analysed, and the
    variant's name (what differs from that run's setting)."""

    of_config: str
    of_run: str
    variant: str


@dataclass(frozen=True)
class FeaturesPartMarker(_Marker):
    """``features/.../part-<n>.parquet``: the crop features kept for one shard (``keep_features``)."""

    n_images: int
    n_ok: int
    run_id: str


@dataclass(frozen=True)
class TextCacheMarker(_Marker):
    """``cache/text/model=<m>/key=<k>.parquet``: one encoded text bank and what went into it."""

    path: str
    clip: str
    weights: str | None
    descriptions_hash: str
    m: int
    prompt: str | None
    templates: str
    n_classes: int


@dataclass(frozen=True)
class DescriptionSetMarker(_Marker):
    """``descriptions/name=<n>/descriptions=<hash>.parquet``: a committed description set (its
    manifest, ``tasks.descriptions.store.DescriptionManifest``, plus the commit time)."""

    name: str
    path: str
    url: str
    content_hash: str
    n_classes: int
    n_texts: int
    m: int
    source: str
    report: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    committed_at: float = 0.0
