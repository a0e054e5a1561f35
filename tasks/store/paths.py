"""Every path under a storage root, and every done-marker key, in one place.

Why one module: writers, readers, ``sql/views/10_sources.sql`` and the tests must
agree on where each table lives; a path changed here changes for all of them.
Paths are relative to the root and use hive partitions (``key=value`` folders) so
DuckDB exposes them as columns.

One marker convention: the done-marker of a data file is
``_commits/<the file's path without its extension>.json``; :func:`marker_key`
gives the key that :meth:`tasks.store.Storage.mark_done` takes.

::

    shards/dataset=<ds>/part-<n>.parquet                     images (tables.SHARD_SCHEMA)
    shards/dataset=<ds>/dataset.json                         class lists, fingerprint, counts
    descriptions/name=<name>/descriptions=<hash16>.parquet   descriptions (tables.DESCRIPTIONS_SCHEMA)
    descriptions/name=<name>/latest.json                     the set last written under the name
    descriptions/name=<name>/_generation/settings=<fp>/      LLM generation progress
    cache/text/model=<clip>/key=<key>/text.parquet           text embeddings (tables.TEXT_SCHEMA)
    cache/dino/model=<dino>/key=<key>/dataset=<ds>/part-<n>.parquet   attention (tables.DINO_SCHEMA)
    predictions/dataset=<ds>/model=<clip>/config=<hash>/part-<n>.parquet   (tables.PREDICTION_SCHEMA)
    rollups/dataset=<ds>/model=<clip>/config=<hash>/part-<n>.parquet       counts of that part (tables.ROLLUP_SCHEMA)
    rollups/dataset=<ds>/model=<clip>/config=<hash>/all-<k>-<md5>.parquet  counts of all its k parts, summed
    features/dataset=<ds>/model=<clip>/config=<hash>/part-<n>.parquet      (tables.FEATURES_SCHEMA)
    runs/run=<id>/run.json, run.parquet (tables.RUN_SCHEMA), report.md, *.png, gallery/
    _commits/...                                             done-markers, written last
    _tmp/...                                                 in-flight writes, never globbed
"""

from __future__ import annotations

import posixpath
import re

from tasks.store.storage import COMMITS_DIR, TMP_DIR

SHARDS_DIR = "shards"
DESCRIPTIONS_DIR = "descriptions"
TEXT_CACHE_DIR = "cache/text"
DINO_CACHE_DIR = "cache/dino"
PREDICTIONS_DIR = "predictions"
FEATURES_DIR = "features"
ROLLUPS_DIR = "rollups"
RUNS_DIR = "runs"
#: Hex digits of a content hash used in file names.
SHORT_HASH = 16

__all__ = [
    "COMMITS_DIR",
    "TMP_DIR",
    "SHARDS_DIR",
    "DESCRIPTIONS_DIR",
    "TEXT_CACHE_DIR",
    "DINO_CACHE_DIR",
    "PREDICTIONS_DIR",
    "FEATURES_DIR",
    "ROLLUPS_DIR",
    "RUNS_DIR",
    "SHORT_HASH",
]


#: A dataset or description-set name: one safe path segment (it becomes ``dataset=<name>``).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_valid_name(name: str | None) -> bool:
    """Whether ``name`` can name a dataset or a description set (letters, digits, '.', '_', '-')."""
    return name is not None and name != "" and NAME_PATTERN.match(name) is not None


def slug(text: str) -> str:
    """A partition-safe spelling of a model or dataset name (``ViT-B-16/openai`` -> ``ViT-B-16_openai``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def marker_key(rel_path: str) -> str:
    """The done-marker key of a data file: its path without the extension."""
    return posixpath.splitext(rel_path)[0]


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


_PART_INDEX = re.compile(r"part-(\d+)\.(?:parquet|json)$")


def part_index(path: str) -> int | None:
    """The shard index in a part file or its marker (``.../part-00012.parquet`` or ``.json``), else None."""
    m = _PART_INDEX.search(path)
    return int(m.group(1)) if m else None


def part_markers(data_dir: str) -> str:
    """Glob of the done-markers of every part under ``data_dir`` (e.g. a :func:`predictions_dir`)."""
    return posixpath.join(COMMITS_DIR, data_dir, "part-*.json")


# ---------------------------------------------------------------- shards
def dataset_dir(dataset: str) -> str:
    return f"{SHARDS_DIR}/dataset={dataset}"


def shard_part(dataset: str, index: int) -> str:
    return f"{dataset_dir(dataset)}/{part_name(index)}"


def dataset_info(dataset: str) -> str:
    """``dataset.json``: the dataset's class lists, fingerprint and per-shard counts."""
    return f"{dataset_dir(dataset)}/dataset.json"


# ---------------------------------------------------------------- descriptions
def description_set_dir(name: str) -> str:
    return posixpath.join(DESCRIPTIONS_DIR, f"name={name}")


def description_set(name: str, digest: str) -> str:
    """The Parquet file of set ``name`` with content hash ``digest``."""
    return posixpath.join(description_set_dir(name), f"descriptions={digest[:SHORT_HASH]}.parquet")


def description_latest(name: str) -> str:
    return posixpath.join(description_set_dir(name), "latest.json")


def generation_dir(name: str, settings_fingerprint: str) -> str:
    """Per-class progress files of an LLM generation with these settings."""
    return posixpath.join(description_set_dir(name), "_generation", f"settings={settings_fingerprint[:SHORT_HASH]}")


# ---------------------------------------------------------------- caches
def text_cache(clip_model: str, key: str) -> str:
    return posixpath.join(TEXT_CACHE_DIR, f"model={slug(clip_model)}", f"key={key}", "text.parquet")


def dino_dir(model: str, key: str, dataset: str) -> str:
    """``key`` hashes the DINO weights digest and the preprocessing (see tasks.steps.dino_cache)."""
    return f"{DINO_CACHE_DIR}/model={slug(model)}/key={key}/dataset={slug(dataset)}"


def dino_part(model: str, key: str, dataset: str, shard: int) -> str:
    return f"{dino_dir(model, key, dataset)}/{part_name(shard)}"


# ---------------------------------------------------------------- predictions
def predictions_dir(dataset: str, model: str, config: str) -> str:
    return f"{PREDICTIONS_DIR}/dataset={slug(dataset)}/model={slug(model)}/config={config}"


def prediction_part(dataset: str, model: str, config: str, shard: int) -> str:
    return f"{predictions_dir(dataset, model, config)}/{part_name(shard)}"


def features_part(dataset: str, model: str, config: str, shard: int) -> str:
    """Crop features of a prediction part (``keep_features``)."""
    return f"{FEATURES_DIR}/dataset={slug(dataset)}/model={slug(model)}/config={config}/{part_name(shard)}"


def rollup_part(dataset: str, model: str, config: str, shard: int) -> str:
    """Counts of a prediction part (what the aggregate views read instead of its rows), same partition and name."""
    return f"{ROLLUPS_DIR}/dataset={slug(dataset)}/model={slug(model)}/config={config}/{part_name(shard)}"


def rollup_of(prediction_rel: str) -> str:
    """The rollup path of a prediction part path (``predictions/...`` -> ``rollups/...``)."""
    if not prediction_rel.startswith(PREDICTIONS_DIR + "/"):
        raise ValueError(f"not a prediction part path: {prediction_rel!r}")
    return ROLLUPS_DIR + prediction_rel[len(PREDICTIONS_DIR) :]


def partition_rollup(prediction_dir: str, part_names: list[str]) -> str:
    """The summed counts of the parts ``part_names`` of a :func:`predictions_dir`: ``all-<k>-<md5>.parquet``,
    md5 of the part file names sorted and joined by ``,`` (what ``sql/views/10_sources.sql`` recomputes
    from the file listing: the file stands for the partition only while exactly those parts are there)."""
    import hashlib

    names = sorted(part_names)
    digest = hashlib.md5(",".join(names).encode()).hexdigest()
    return f"{rollup_of(prediction_dir)}/all-{len(names):05d}-{digest}.parquet"


# ---------------------------------------------------------------- runs
def run_dir(run_id: str) -> str:
    """The run's folder: its record, report, plots and gallery."""
    return f"{RUNS_DIR}/run={run_id}"


def run_record_json(run_id: str) -> str:
    return f"{run_dir(run_id)}/run.json"


def run_record_parquet(run_id: str) -> str:
    return f"{run_dir(run_id)}/run.parquet"
