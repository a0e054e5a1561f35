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
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


def _decode_or_error(data: bytes) -> Image.Image | Exception:
    try:
        return decode(data)
    except Exception as exc:  # decodable at shard time but not now: the caller records it
        return exc


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="decode")
        return _POOL


def iter_decoded(images: pa.ChunkedArray, indices: list[int], batch: int) -> Iterator[list[tuple[int, Any]]]:
    """Decoded images of ``indices`` in batches: ``[(index, PIL image or the exception)]``.

    Why threads and prefetch: JPEG decoding releases the GIL, so a pool decodes a
    batch in parallel while the model works on the previous one; on a GPU that
    keeps the device fed. Only two batches are ever held decoded, not the shard.
    """
    chunks = [indices[s : s + batch] for s in range(0, len(indices), batch)]

    def submit(chunk: list[int]) -> list[Future]:
        return [_pool().submit(_decode_or_error, images[i].as_py()) for i in chunk]

    pending = submit(chunks[0]) if chunks else []
    for k, chunk in enumerate(chunks):
        done = [f.result() for f in pending]
        pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []
        yield list(zip(chunk, done))


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
    progress: Callable[[int, int], None] | None = None,
) -> DinoShardResult:
    """Compute (or reuse) the attention of every image in one shard.

    ``progress(done, total)`` is called after each batch with the images handled
    so far out of the shard's decodable images (see ``tasks.progress.ShardProgress``).
    """
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
    ok = [i for i, st in enumerate(status) if st == "ok"]
    done = 0
    for decoded in iter_decoded(t.column("image"), ok, batch_size):
        done += len(decoded)
        chunk = []
        for i, im in decoded:
            if isinstance(im, Exception):
                status[i], error[i] = DECODE_ERROR, f"{type(im).__name__}: {im}"
            else:
                chunk.append((i, im))
        if not chunk:
            continue
        a = dino_attention(dino, [im for _, im in chunk], max_image_side, dev, autocast, batch_size)
        for (i, _), row in zip(chunk, a):
            att[i] = row.tolist()
        if progress is not None:
            progress(done, len(ok))
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
