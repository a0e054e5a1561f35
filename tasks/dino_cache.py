"""DINO last-block CLS attention per image, cached per shard.

Why cache the whole map: every run, rerun and method variant (any K, any seed)
draws its crop centres from the same attention. Storing all D*D = 196 values
(784 bytes an image) serves any K and lets reports draw the full heat map.

Layout: ``cache/dino/model=<dino>/key=<hash>/dataset=<ds>/part-<nnnnn>.parquet``
(schema ``tasks.schema.DINO_SCHEMA``); ``key`` covers the weights digest and the
preprocessing. A part is reused only when its marker names the same dataset
fingerprint. Error rows of the shard pass through as error rows.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from PIL import Image

from abs_model import DINOBackbone, dino_attention
from abs_model.device import resolve_device, resolve_precision
from tasks.evalspec import ALGORITHM_VERSION, short_hash
from tasks.schema import DINO_SCHEMA, dino_part
from tasks.shard import read_shard
from tasks.storage import Storage

DECODE_ERROR = "decode_error"


def decode(data: bytes) -> Image.Image:
    """Open and fully decode image bytes (the shard step already checked them once)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def dino_key(dino: DINOBackbone, max_image_side: int) -> str:
    n = dino.norm
    return short_hash({"weights": dino.weights_digest, "size": n.size, "mean": n.mean, "std": n.std,
                       "max_image_side": max_image_side, "algorithm": ALGORITHM_VERSION})


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
    batch_size: int = 32,
) -> DinoShardResult:
    """Compute (or reuse) the attention of every image in one shard."""
    key = dino_key(dino, max_image_side)
    rel = dino_part(dino.spec.name, key, dataset, shard)
    marker_key = rel.removesuffix(".parquet")
    marker = storage.read_marker(marker_key)
    if marker is not None and marker.get("fingerprint") == fingerprint and storage.exists(rel):
        return DinoShardResult(shard, rel, False, marker["n_ok"], marker["n_error"])
    dev = resolve_device(device)
    autocast = resolve_precision(dev, precision)
    t = read_shard(storage, dataset, shard, columns=["image_id", "image", "status", "error"])
    ids = t.column("image_id").to_pylist()
    status = t.column("status").to_pylist()
    error = t.column("error").to_pylist()
    att: list[list[float] | None] = [None] * len(ids)
    todo: list[tuple[int, Image.Image]] = []
    images = t.column("image")
    for i, st in enumerate(status):
        if st != "ok":
            continue
        try:
            todo.append((i, decode(images[i].as_py())))
        except Exception as exc:  # decodable at shard time but not now: record, do not crash
            status[i], error[i] = DECODE_ERROR, f"{type(exc).__name__}: {exc}"
    for s in range(0, len(todo), batch_size):
        chunk = todo[s : s + batch_size]
        a = dino_attention(dino, [im for _, im in chunk], max_image_side, dev, autocast, batch_size)
        for (i, _), row in zip(chunk, a):
            att[i] = row.tolist()
    table = pa.table({
        "image_id": ids, "shard": [shard] * len(ids), "grid": [dino.grid] * len(ids),
        "attention": att, "status": status, "error": error,
    }, schema=DINO_SCHEMA)
    storage.write_parquet(rel, table)
    n_ok = sum(1 for a in att if a is not None)
    storage.mark_done(marker_key, {"fingerprint": fingerprint, "n_ok": n_ok, "n_error": len(ids) - n_ok,
                                   "dino": dino.spec.name, "weights": dino.weights_digest})
    return DinoShardResult(shard, rel, True, n_ok, len(ids) - n_ok)


def read_dino_shard(storage: Storage, rel: str) -> dict[str, tuple[list[float] | None, str, str | None]]:
    """image_id -> (attention or None, status, error)."""
    t = storage.read_parquet(rel).to_pydict()
    return {i: (a, s, e) for i, a, s, e in zip(t["image_id"], t["attention"], t["status"], t["error"])}
