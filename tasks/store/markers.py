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

__all__ = ["DatasetMarker", "DescriptionSetMarker", "DinoPartMarker", "FeaturesPartMarker", "PredictionPartMarker",
           "ShardPartMarker", "TextCacheMarker"]


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
