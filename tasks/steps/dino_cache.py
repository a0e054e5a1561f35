"""DINO last-block CLS attention per image, cached per shard.

Why cache the whole map: every run, rerun and method variant (any K, any seed)
draws its crop centres from the same attention. Storing all D*D = 196 values
(784 bytes an image) serves any K and lets reports draw the full heat map.

Layout: ``cache/dino/model=<dino>/key=<hash>/dataset=<ds>/part-<nnnnn>.parquet``
(schema ``tasks.store.tables.DINO_SCHEMA``); ``key`` covers the weights digest and the
preprocessing. A part is reused only when its marker names the same dataset
fingerprint. Error rows of the shard pass through as error rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from prefect import get_run_logger, task

from abs_model import DINOBackbone, dino_attention
from abs_model.device import resolve_device, resolve_precision
from tasks.defaults import DINO_BATCH
from tasks.run import process_cache
from tasks.run.context import resolve
from tasks.run.evalspec import ALGORITHM_VERSION, short_hash
from tasks.run.progress import ShardProgress
from tasks.run.retries import GPU_TAG, TASK_OPTIONS
from tasks.store import Storage, commits
from tasks.store.datasets import read_shard
from tasks.store.images import STATUS_DECODE_ERROR, RowGroupImages, iter_decoded
from tasks.store.markers import DinoPartMarker
from tasks.store.paths import dino_part, shard_part
from tasks.store.tables import DINO_SCHEMA


def dino_key(dino: DINOBackbone, max_image_side: int) -> str:
    n = dino.norm
    return short_hash(
        {
            "weights": dino.weights_digest,
            "size": n.size,
            "mean": n.mean,
            "std": n.std,
            "max_image_side": max_image_side,
            "algorithm": ALGORITHM_VERSION,
        }
    )


@dataclass(frozen=True)
class DinoShardResult:
    shard: int
    path: str
    computed: bool
    n_ok: int
    n_error: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def dino_shard(
    storage: Storage,
    dataset: str,
    shard: int,
    fingerprint: str,
    dino: DINOBackbone,
    *,
    max_image_side: int,
    device: str | torch.device | None = None,
    precision: str | None = None,
    batch_size: int = DINO_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> DinoShardResult:
    """Compute (or reuse) the attention of every image in one shard.

    ``progress(done, total)`` is called after each batch with the images handled
    so far out of the shard's decodable images (see ``tasks.run.progress.ShardProgress``).
    """
    key = dino_key(dino, max_image_side)
    rel = dino_part(dino.spec.name, key, dataset, shard)
    marker = commits.committed(storage, rel, fingerprint=fingerprint)
    if marker is not None:
        return DinoShardResult(shard, rel, False, marker["n_ok"], marker["n_error"])
    dev = resolve_device(device)
    autocast = resolve_precision(dev, precision)
    t = read_shard(storage, dataset, shard, columns=["image_id", "status", "error"])
    ids = t.column("image_id").to_pylist()
    status = t.column("status").to_pylist()
    error = t.column("error").to_pylist()
    att: list[list[float] | None] = [None] * len(ids)
    ok = [i for i, st in enumerate(status) if st == "ok"]
    done = 0
    images = RowGroupImages(storage, shard_part(dataset, shard))  # read a row group at a time
    try:  # the shard file is closed however the loop ends
        for decoded in iter_decoded(images, ok, batch_size):
            done += len(decoded)
            chunk = []
            for i, im in decoded:
                if isinstance(im, Exception):
                    status[i], error[i] = STATUS_DECODE_ERROR, f"{type(im).__name__}: {im}"
                else:
                    chunk.append((i, im))
            if not chunk:
                continue
            a = dino_attention(dino, [im for _, im in chunk], max_image_side, dev, autocast, batch_size)
            for (i, _), row in zip(chunk, a):
                att[i] = row.tolist()
            if progress is not None:
                progress(done, len(ok))
    finally:
        images.close()
    table = pa.table(
        {
            "image_id": ids,
            "shard": [shard] * len(ids),
            "grid": [dino.grid] * len(ids),
            "attention": att,
            "status": status,
            "error": error,
        },
        schema=DINO_SCHEMA,
    )
    n_ok = sum(1 for a in att if a is not None)
    commits.commit_parquet(
        storage,
        rel,
        table,
        DinoPartMarker(
            fingerprint=fingerprint,
            n_ok=n_ok,
            n_error=len(ids) - n_ok,
            dino=dino.spec.name,
            weights=dino.weights_digest,
        ),
    )
    return DinoShardResult(shard, rel, True, n_ok, len(ids) - n_ok)


def read_dino_shard(storage: Storage, rel: str) -> dict[str, tuple[list[float] | None, str, str | None]]:
    """image_id -> (attention or None, status, error)."""
    t = storage.read_parquet(rel).to_pydict()
    return {i: (a, s, e) for i, a, s, e in zip(t["image_id"], t["attention"], t["status"], t["error"])}


@task(name="dino-shard", tags=[GPU_TAG], task_run_name="dino-shard-{shard}", **TASK_OPTIONS)
def dino_shard_task(root: str, spec: dict, config_hash: str, shard: int) -> dict[str, Any]:
    """:func:`dino_shard` for one shard of the evaluation ``spec``, with progress in the task log."""
    ctx = resolve(root, spec, expect_config=config_hash)
    progress = ShardProgress(f"dino shard {shard}", get_run_logger())
    process_cache.limit_heap_arenas()
    try:
        r = dino_shard(
            ctx.storage,
            ctx.spec.dataset,
            shard,
            ctx.info.fingerprint,
            ctx.dino,
            max_image_side=ctx.spec.abs.max_image_side,
            device=ctx.classifier.device,
            precision=ctx.spec.precision,
            progress=progress,
        )
    finally:
        progress.close()
        process_cache.trim_heap()
    return r.to_dict()
