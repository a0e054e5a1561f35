"""Inference per shard: ABS and the baselines, one prediction row per image and method.

Reads the shard (image bytes), its DINO cache part (the crop centres come from
it, no DINO pass here) and the classifier's text bank; writes
``predictions/dataset=<ds>/model=<clip>/config=<hash>/part-<nnnnn>.parquet``
(schema ``tasks.store.tables.PREDICTION_SCHEMA``) atomically, then its done-marker. A
committed part is never recomputed: the config hash already names everything
that could change it. Error rows of the shard (and images that fail to decode
now) become one error row per method, so counts always add up.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from prefect import get_run_logger, task

from abs_model import ABSClassifier
from tasks.context import resolve
from tasks.dino_cache import read_dino_shard
from tasks.progress import ShardProgress
from tasks.retries import GPU_TAG, TASK_OPTIONS
from tasks.shard import read_shard
from tasks.store import Storage
from tasks.store.images import STATUS_DECODE_ERROR, STATUS_MISSING_DINO, iter_decoded
from tasks.store.layout import (
    features_part,
    marker_key,
    prediction_part,
    predictions_dir,
)
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
    return storage.is_done(marker_key(frel)) and storage.exists(frel)


def committed_parts(storage: Storage, dataset: str, model: str, config: str) -> list[int]:
    """Shard indices whose prediction part is committed (marker and file) under this partition."""
    out = []
    pattern = storage.marker_path(posixpath.join(predictions_dir(dataset, model, config), "part-*"))
    for m in storage.glob(pattern):
        shard = int(posixpath.basename(m).removeprefix("part-").removesuffix(".json"))
        if storage.exists(prediction_part(dataset, model, config, shard)):
            out.append(shard)
    return sorted(out)


def _method_rows(logits: torch.Tensor, labels: list[int]) -> dict[str, list]:
    lg = logits.double()
    k = min(5, lg.shape[1])
    top = torch.topk(lg, k, dim=1).indices
    lab = torch.tensor(labels, dtype=torch.long)
    in_range = (lab >= 0) & (lab < lg.shape[1])
    safe = lab.clamp(0, lg.shape[1] - 1)
    true = lg.gather(1, safe[:, None])[:, 0]
    other = lg.scatter(1, safe[:, None], float("-inf")).max(dim=1).values
    return {
        "pred": top[:, 0].tolist(),
        "top5": top.tolist(),
        "score_true": torch.where(in_range, true, torch.full_like(true, float("nan"))).tolist(),
        "margin": torch.where(in_range, true - other, torch.full_like(true, float("nan"))).tolist(),
    }


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
    mkey = marker_key(rel)
    marker = storage.read_marker(mkey)
    committed = marker is not None and storage.exists(rel)
    frel = features_part(dataset, model, config, shard)
    if committed and not (keep_features and not _features_committed(storage, frel)):
        return InferShardResult(shard, rel, False, marker["n_images"], marker["n_ok"], marker["n_error"])

    t = read_shard(storage, dataset, shard, columns=["image_id", "label", "class_name", "image", "status", "error"])
    ids = t.column("image_id").to_pylist()
    labels = t.column("label").to_pylist()
    cnames = t.column("class_name").to_pylist()
    status = t.column("status").to_pylist()
    error = t.column("error").to_pylist()
    dino = read_dino_shard(storage, dino_path)
    images = t.column("image")
    methods = classifier.methods
    K = classifier.config.top_k

    per_image: dict[int, dict[str, Any]] = {}
    feats: dict[int, tuple[list, list]] = {}
    ok_idx: list[int] = []
    for i, st in enumerate(status):
        if st != "ok":
            continue
        att = dino.get(ids[i])
        if att is None or att[0] is None:
            status[i] = att[1] if att else STATUS_MISSING_DINO
            error[i] = att[2] if att else "no DINO attention cached for this image"
            continue
        ok_idx.append(i)

    done = 0
    for decoded in iter_decoded(images, ok_idx, images_per_batch):
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
        att = torch.tensor([dino[ids[i]][0] for i in good], dtype=torch.float32)
        vals, idx = torch.topk(att, K, dim=1)
        out = classifier.predict(imgs, [ids[i] for i in good], dino_topk=(idx, vals), return_features=keep_features)
        if sorted(out.logits) != sorted(methods):
            raise RuntimeError(f"classifier returned methods {sorted(out.logits)}, expected {methods}")
        width = next(iter(out.logits.values())).shape[1]
        if width != len(classnames):
            raise ValueError(f"{len(classnames)} class names for {width} logit columns (pass the dataset's classnames)")
        rows = {m: _method_rows(out.logits[m], [labels[i] for i in good]) for m in methods}
        for j, i in enumerate(good):
            per_image[i] = {m: {k: v[j] for k, v in rows[m].items()} for m in methods}
            per_image[i]["_geo"] = out.geometry[j]
            if keep_features:
                feats[i] = (out.extras["crop_features"][j].tolist(), out.extras["global_features"][j].tolist())
        if progress is not None:
            progress(done, len(ok_idx))

    if keep_features:
        ft = pa.table({"image_id": [ids[i] for i in sorted(feats)],
                       "crop_features": [feats[i][0] for i in sorted(feats)],
                       "global_feature": [feats[i][1] for i in sorted(feats)]}, schema=FEATURES_SCHEMA)
        storage.write_parquet(frel, ft)
        storage.mark_done(marker_key(frel), {"n_images": len(ids), "n_ok": len(feats), "run_id": run_id})
    if committed:  # only the features were missing
        return InferShardResult(shard, rel, False, marker["n_images"], marker["n_ok"], marker["n_error"])

    cols: dict[str, list] = {f.name: [] for f in PREDICTION_SCHEMA}
    for i in range(len(ids)):
        res = per_image.get(i)
        for m in methods:
            r = res[m] if res else None
            g = res["_geo"] if (res and m == "abs") else None
            cols["image_id"].append(ids[i])
            cols["shard"].append(shard)
            cols["label"].append(labels[i])
            cols["class_name"].append(cnames[i])
            cols["method"].append(m)
            cols["pred"].append(r["pred"] if r else None)
            cols["pred_name"].append(classnames[r["pred"]] if r else None)
            cols["top5"].append(r["top5"] if r else None)
            cols["score_true"].append(_finite(r["score_true"]) if r else None)
            cols["margin"].append(_finite(r["margin"]) if r else None)
            cols["status"].append("ok" if r else status[i])
            cols["error"].append(None if r else error[i])
            cols["run_id"].append(run_id)
            cols["width"].append(g.width if g else None)
            cols["height"].append(g.height if g else None)
            cols["dino_topk_indices"].append(g.dino_topk_indices.tolist() if g else None)
            cols["dino_topk_values"].append(g.dino_topk_values.tolist() if g else None)
            cols["raw_boxes"].append(g.raw_boxes.tolist() if g else None)
            cols["feature_windows"].append(g.feature_windows.tolist() if g else None)
    table = pa.table(cols, schema=PREDICTION_SCHEMA)
    storage.write_parquet(rel, table)
    n_ok = len(per_image)
    storage.mark_done(mkey, {"n_images": len(ids), "n_ok": n_ok, "n_error": len(ids) - n_ok, "run_id": run_id})
    return InferShardResult(shard, rel, True, len(ids), n_ok, len(ids) - n_ok)


def _finite(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


@task(name="infer-shard", tags=[GPU_TAG], task_run_name="infer-shard-{shard}", **TASK_OPTIONS)
def infer_shard_task(root: str, spec: dict, config_hash: str, shard: int, run_id: str,
                     dino: dict[str, Any]) -> dict[str, Any]:
    """:func:`infer_shard` for one shard of the evaluation ``spec``, with progress in the task log."""
    ctx = resolve(root, spec, expect_config=config_hash)
    progress = ShardProgress(f"infer shard {shard}", get_run_logger())
    try:
        r = infer_shard(ctx.storage, ctx.classifier, dataset=ctx.spec.dataset, model=ctx.spec.model_name,
                        config=config_hash, shard=shard, dino_path=dino["path"], classnames=list(ctx.info.classnames),
                        run_id=run_id, images_per_batch=ctx.images_per_batch, keep_features=ctx.spec.keep_features,
                        progress=progress)
    finally:
        progress.close()
    return r.to_dict()
