"""Inference per shard: ABS and the baselines, one prediction row per image and method.

Reads the shard (image bytes), its DINO cache part (the crop centres come from
it, no DINO pass here) and the classifier's text bank; writes
``predictions/dataset=<ds>/model=<clip>/config=<hash>/part-<nnnnn>.parquet``
(schema ``tasks.store.tables.PREDICTION_SCHEMA``) atomically, then its rollup (the part's counts,
``rollups/...``, what the aggregate SQL views read), then its done-marker. A
committed part is never recomputed: the config hash already names everything
that could change it. Error rows of the shard (and images that fail to decode
now) become one error row per method, so counts always add up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from prefect import get_run_logger, task

from abs_model import ABSClassifier
from tasks.run import process_cache
from tasks.run.context import resolve
from tasks.run.progress import ShardProgress
from tasks.run.retries import GPU_TAG, TASK_OPTIONS
from tasks.store import Storage, commits, rollups
from tasks.store.datasets import read_shard
from tasks.store.images import (
    STATUS_DECODE_ERROR,
    STATUS_MISSING_DINO,
    RowGroupImages,
    decode_pool,
    iter_decoded,
)
from tasks.store.markers import FeaturesPartMarker, PredictionPartMarker
from tasks.store.paths import features_part, prediction_part, shard_part
from tasks.store.predictions import list_array, method_scores, score_columns
from tasks.store.tables import FEATURES_SCHEMA, PREDICTION_SCHEMA


@dataclass(frozen=True)
class InferShardResult:
    shard: int
    path: str
    computed: bool
    n_images: int
    n_ok: int
    n_error: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _features_committed(storage: Storage, frel: str) -> bool:
    return commits.committed(storage, frel) is not None


def _drop(*lists: list) -> None:
    """Empty ``lists`` (run in a worker thread: the large decoded images are freed there)."""
    for x in lists:
        x.clear()


class _ShardOutputs:
    """Per-image results of a shard in preallocated arrays (row = position in the shard).

    Why arrays: the shard's table is built column by column from them with a few
    vectorised Arrow calls, instead of a Python loop over image x method with a
    ``.tolist()`` per geometry tensor.
    """

    def __init__(self, n: int, n_methods: int):
        self.n, self.nm = n, n_methods
        self.ok: np.ndarray = np.zeros(n, dtype=bool)
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, rows: np.ndarray, name: str, values: np.ndarray) -> None:
        a = self.arrays.get(name)
        if a is None:
            a = self.arrays[name] = np.zeros((self.n, *values.shape[1:]), dtype=values.dtype)
        a[rows] = values


def _prediction_table(
    out: _ShardOutputs,
    methods: list[str],
    *,
    ids: list,
    shard: int,
    labels: list,
    cnames: list,
    status: list,
    error: list,
    classnames: list[str],
    run_id: str,
) -> pa.Table:
    """The shard's prediction rows (image x method, in that order) from ``out``."""
    n, nm = out.n, len(methods)
    ok = out.ok
    ok_rows: np.ndarray = np.repeat(ok, nm)  # [n * nm]
    is_abs = np.tile(np.array([m == "abs" for m in methods]), n)
    geo_rows = ok_rows & is_abs
    a = out.arrays
    f = {fld.name: fld.type for fld in PREDICTION_SCHEMA}
    cols: dict[str, Any] = {
        "image_id": [x for x in ids for _ in range(nm)],
        "shard": pa.array(np.full(n * nm, shard, dtype=np.int32)),
        "label": [x for x in labels for _ in range(nm)],
        "class_name": [x for x in cnames for _ in range(nm)],
        "method": methods * n,
    }
    if ok.any():
        pred = a["pred"].reshape(-1)  # [n * nm], image-major
        score = a["score_true"].reshape(-1)
        margin = a["margin"].reshape(-1)
        top5 = a["top5"].reshape(n * nm, -1)
        cols.update(score_columns(pred, top5, score, margin, ok_rows, classnames))
        img_of_geo = np.repeat(np.arange(n), nm)[geo_rows]  # the image of each geometry row
        cols["width"] = pa.array(np.repeat(a["width"], nm).astype(np.int32), mask=~geo_rows)
        cols["height"] = pa.array(np.repeat(a["height"], nm).astype(np.int32), mask=~geo_rows)
        for name in ("dino_topk_indices", "dino_topk_values", "raw_boxes", "feature_windows"):
            cols[name] = list_array(a[name][img_of_geo], geo_rows, f[name])
    else:
        for name in (
            "pred",
            "pred_name",
            "top5",
            "score_true",
            "margin",
            "width",
            "height",
            "dino_topk_indices",
            "dino_topk_values",
            "raw_boxes",
            "feature_windows",
        ):
            cols[name] = pa.nulls(n * nm, f[name])
    cols["status"] = [("ok" if o else st) for o, st in zip(ok, status) for _ in range(nm)]
    cols["error"] = [(None if o else e) for o, e in zip(ok, error) for _ in range(nm)]
    cols["run_id"] = [run_id] * (n * nm)
    return pa.table({k: cols[k] for k in f}, schema=PREDICTION_SCHEMA)


def _read_attention(
    storage: Storage, rel: str
) -> tuple[dict[str, tuple[int | None, str, str | None]], np.ndarray | None]:
    """The DINO cache part: ``image_id -> (row in the matrix or None, status, error)`` and the
    attention of every cached row as one float32 matrix (same values as ``read_dino_shard``)."""
    t = storage.read_parquet(rel)
    ids = t.column("image_id").to_pylist()
    status = t.column("status").to_pylist()
    error = t.column("error").to_pylist()
    att = t.column("attention").combine_chunks()
    valid = ~np.asarray(att.is_null().to_numpy(zero_copy_only=False), dtype=bool) if len(att) else np.zeros(0, bool)
    offsets = np.asarray(att.offsets.to_numpy()) if len(att) else np.zeros(1, np.int64)
    lengths = np.diff(offsets)
    index = {i: ((r if valid[r] else None), s, e) for r, (i, s, e) in enumerate(zip(ids, status, error))}
    if not valid.any():
        return index, None
    L = int(lengths[valid][0])
    if not (lengths[valid] == L).all():
        raise ValueError(f"{rel}: DINO attention rows of different lengths")
    values = att.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    starts = np.where(valid, offsets[:-1], 0)
    matrix: np.ndarray = np.zeros((len(att), L), dtype=np.float32)
    matrix[valid] = values[starts[valid][:, None] + np.arange(L)]
    return index, matrix


def infer_shard(
    storage: Storage,
    classifier: ABSClassifier,
    *,
    dataset: str,
    model: str,
    config: str,
    shard: int,
    dino_path: str,
    classnames: list[str],
    run_id: str,
    images_per_batch: int = 8,
    keep_features: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> InferShardResult:
    """Predict every image of one shard (or return the committed part untouched).

    ``progress(done, total)`` is called after each batch with the images handled
    so far out of the shard's images that reach the model.

    ``keep_features`` on a part committed without its features computes and
    commits the features only; the committed predictions are left as they are.
    """
    rel = prediction_part(dataset, model, config, shard)
    marker = commits.committed(storage, rel)
    frel = features_part(dataset, model, config, shard)
    if marker is not None and not (keep_features and not _features_committed(storage, frel)):
        return InferShardResult(shard, rel, False, marker["n_images"], marker["n_ok"], marker["n_error"])

    t = read_shard(storage, dataset, shard, columns=["image_id", "label", "class_name", "status", "error"])
    ids = t.column("image_id").to_pylist()
    labels = t.column("label").to_pylist()
    cnames = t.column("class_name").to_pylist()
    status = t.column("status").to_pylist()
    error = t.column("error").to_pylist()
    dino, att_matrix = _read_attention(storage, dino_path)
    images = RowGroupImages(storage, shard_part(dataset, shard))  # read a row group at a time
    methods = classifier.methods
    K = classifier.config.top_k

    out = _ShardOutputs(len(ids), len(methods))
    att_row: np.ndarray = np.zeros(len(ids), dtype=np.int64)
    ok_idx: list[int] = []
    for i, st in enumerate(status):
        if st != "ok":
            continue
        att = dino.get(ids[i])
        if att is None or att[0] is None:
            status[i] = att[1] if att else STATUS_MISSING_DINO
            error[i] = att[2] if att else "no DINO attention cached for this image"
            continue
        att_row[i] = att[0]
        ok_idx.append(i)

    done = 0
    prepare = getattr(classifier, "prepare_image", None) or (lambda im: im)
    try:  # the shard file is closed however the loop ends
        for decoded in iter_decoded(images, ok_idx, images_per_batch, prepare):
            done += len(decoded)
            imgs, good = [], []
            for i, im in decoded:
                if isinstance(im, Exception):
                    status[i], error[i] = STATUS_DECODE_ERROR, f"{type(im).__name__}: {im}"
                else:
                    imgs.append(im)
                    good.append(i)
            if not good:
                if progress is not None:
                    progress(done, len(ok_idx))
                continue
            rows = np.asarray(good)
            assert att_matrix is not None  # None only when no row has attention, and then no image gets here
            att = torch.from_numpy(att_matrix[att_row[rows]])
            vals, idx = torch.topk(att, K, dim=1)
            res = classifier.predict(imgs, [ids[i] for i in good], dino_topk=(idx, vals), return_features=keep_features)
            if sorted(res.logits) != sorted(methods):
                raise RuntimeError(f"classifier returned methods {sorted(res.logits)}, expected {methods}")
            width = next(iter(res.logits.values())).shape[1]
            if width != len(classnames):
                raise ValueError(
                    f"{len(classnames)} class names for {width} logit columns (pass the dataset's classnames)"
                )
            decode_pool().submit(_drop, decoded, imgs)  # freeing the images is not the main thread's job
            del decoded, imgs
            nums = method_scores(torch.stack([res.logits[m] for m in methods]), [labels[i] for i in good])
            for key, v in nums.items():
                out.put(rows, key, np.moveaxis(v, 0, 1))  # [B, methods, ...]
            geo = res.geometry
            out.put(rows, "width", np.array([g.width for g in geo], dtype=np.int64))
            out.put(rows, "height", np.array([g.height for g in geo], dtype=np.int64))
            for key in ("dino_topk_indices", "dino_topk_values", "raw_boxes", "feature_windows"):
                out.put(rows, key, torch.stack([getattr(g, key) for g in geo]).numpy())
            if keep_features:
                out.put(rows, "crop_features", res.extras["crop_features"].numpy())
                out.put(rows, "global_features", res.extras["global_features"].numpy())
            out.ok[rows] = True
            if progress is not None:
                progress(done, len(ok_idx))
    finally:
        images.close()

    ok_rows = np.flatnonzero(out.ok)
    if keep_features:
        ff = {fld.name: fld.type for fld in FEATURES_SCHEMA}
        crops = out.arrays.get("crop_features")
        glob = out.arrays.get("global_features")
        sel: np.ndarray = np.ones(len(ok_rows), dtype=bool)
        ft = pa.table(
            {
                "image_id": [ids[i] for i in ok_rows],
                "crop_features": list_array(crops[ok_rows], sel, ff["crop_features"])
                if crops is not None
                else pa.array([], ff["crop_features"]),
                "global_feature": list_array(glob[ok_rows], sel, ff["global_feature"])
                if glob is not None
                else pa.array([], ff["global_feature"]),
            },
            schema=FEATURES_SCHEMA,
        )
        commits.commit_parquet(
            storage, frel, ft, FeaturesPartMarker(n_images=len(ids), n_ok=len(ok_rows), run_id=run_id)
        )
    if marker is not None:  # committed: only the features were missing
        return InferShardResult(shard, rel, False, marker["n_images"], marker["n_ok"], marker["n_error"])

    table = _prediction_table(
        out,
        methods,
        ids=ids,
        shard=shard,
        labels=labels,
        cnames=cnames,
        status=status,
        error=error,
        classnames=classnames,
        run_id=run_id,
    )
    # the part, then its rollup (the counts the aggregate views read), then the part's marker; a
    # rollup left by a crashed attempt at this part goes first (see tasks.store.rollups.drop_rollup)
    rollups.drop_rollup(storage, rel)
    storage.write_parquet(rel, table)
    rollups.write_rollup(storage, rel, table)
    n_ok = len(ok_rows)
    commits.mark(
        storage, rel, PredictionPartMarker(n_images=len(ids), n_ok=n_ok, n_error=len(ids) - n_ok, run_id=run_id)
    )
    return InferShardResult(shard, rel, True, len(ids), n_ok, len(ids) - n_ok)


@task(name="infer-shard", tags=[GPU_TAG], task_run_name="infer-shard-{shard}", **TASK_OPTIONS)
def infer_shard_task(
    root: str, spec: dict, config_hash: str, shard: int, run_id: str, dino: dict[str, Any]
) -> dict[str, Any]:
    """:func:`infer_shard` for one shard of the evaluation ``spec``, with progress in the task log."""
    ctx = resolve(root, spec, expect_config=config_hash)
    progress = ShardProgress(f"infer shard {shard}", get_run_logger())
    process_cache.limit_heap_arenas()
    try:
        r = infer_shard(
            ctx.storage,
            ctx.classifier,
            dataset=ctx.spec.dataset,
            model=ctx.spec.model_name,
            config=config_hash,
            shard=shard,
            dino_path=dino["path"],
            classnames=list(ctx.info.classnames),
            run_id=run_id,
            images_per_batch=ctx.images_per_batch,
            keep_features=ctx.spec.keep_features,
            progress=progress,
        )
    finally:
        progress.close()
        process_cache.trim_heap()
    return r.to_dict()
