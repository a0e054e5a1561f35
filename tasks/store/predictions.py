"""Prediction parts: which are committed, and how a method's logits become a row's score columns.

Why one home: two steps write prediction parts, ``tasks.steps.infer`` (from the models) and
``tasks.steps.variants`` (from a run's kept crop features), and a variant that equals a fresh run
shares that run's partition, so their rows must be the same whenever their logits are: one
conversion (:func:`method_scores`, then :func:`score_columns`) for both. The flows ask which parts a
partition has committed (:func:`committed_parts`: what a run reuses, what a variant scores).

Why in the store and not in a step: the variants step and ``flows.analyze`` read these without
loading Prefect or the inference step. Importing this module costs numpy and pyarrow; torch is
loaded by :func:`method_scores` only, whose callers hold torch tensors already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from tasks.store.paths import part_index, part_markers, prediction_part, predictions_dir
from tasks.store.storage import Storage
from tasks.store.tables import PREDICTION_SCHEMA

if TYPE_CHECKING:
    import torch

__all__ = ["committed_parts", "list_array", "method_scores", "score_columns"]


def committed_parts(storage: Storage, dataset: str, model: str, config: str) -> list[int]:
    """Shard indices whose prediction part is committed (marker and file) under this partition."""
    out = []
    for m in storage.glob(part_markers(predictions_dir(dataset, model, config))):
        shard = part_index(m)
        if shard is not None and storage.exists(prediction_part(dataset, model, config, shard)):
            out.append(shard)
    return sorted(out)


def method_scores(logits: torch.Tensor, labels: list[int]) -> dict[str, np.ndarray]:
    """``pred`` / ``top5`` / ``score_true`` / ``margin`` for a batch, as arrays.

    ``logits``: ``[B, C]`` for one method, or ``[methods, B, C]`` for all of them at
    once (every number is computed row by row, so the two give the same values). A label
    outside ``[0, C)`` gets NaN ``score_true`` and ``margin``.
    """
    import torch

    lg = logits.double()
    k = min(5, lg.shape[-1])
    top = torch.topk(lg, k, dim=-1).indices
    lab = torch.tensor(labels, dtype=torch.long).expand(lg.shape[:-1])
    in_range = (lab >= 0) & (lab < lg.shape[-1])
    safe = lab.clamp(0, lg.shape[-1] - 1)
    true = lg.gather(-1, safe[..., None])[..., 0]
    other = lg.scatter(-1, safe[..., None], float("-inf")).max(dim=-1).values
    nan = torch.full_like(true, float("nan"))
    return {
        "pred": top[..., 0].numpy(),
        "top5": top.numpy(),
        "score_true": torch.where(in_range, true, nan).numpy(),
        "margin": torch.where(in_range, true - other, nan).numpy(),
    }


def list_array(values: np.ndarray, valid: np.ndarray, typ: pa.ListType) -> pa.Array:
    """A list column from ``values [n_valid, L, ...]`` (the valid rows, in order) and a row mask.

    Why not ``pa.array(values.tolist())``: one offsets array and one flat buffer per column, not a
    Python object per number (a shard's geometry and crop features are millions of them)."""
    lengths = np.where(valid, values.shape[1], 0)
    offsets: np.ndarray = np.zeros(len(valid) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = values.reshape(-1, *values.shape[2:])
    if isinstance(typ.value_type, pa.ListType):
        inner = list_array(flat, np.ones(flat.shape[0], dtype=bool), typ.value_type)
    else:
        inner = pa.array(flat.astype(typ.value_type.to_pandas_dtype(), copy=False), type=typ.value_type)
    mask = None if valid.all() else pa.array(~valid)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), inner, type=typ, mask=mask)


def score_columns(
    pred: np.ndarray, top5: np.ndarray, score: np.ndarray, margin: np.ndarray, ok: np.ndarray, classnames: list[str]
) -> dict[str, pa.Array]:
    """``pred``, ``pred_name``, ``top5``, ``score_true`` and ``margin`` of prediction rows (one entry per
    row; rows not ``ok`` are null), typed as ``PREDICTION_SCHEMA`` says."""
    f = {fld.name: fld.type for fld in PREDICTION_SCHEMA}
    names = np.asarray(classnames, dtype=object)
    return {
        "pred": pa.array(pred.astype(np.int32), mask=~ok),
        "pred_name": pa.array(np.where(ok, names[np.where(ok, pred, 0)], None), f["pred_name"]),
        "top5": list_array(top5[ok], ok, f["top5"]),
        # float32 as Arrow converts Python floats (round to nearest); non-finite -> null
        "score_true": pa.array(score.astype(np.float32), mask=~(ok & np.isfinite(score))),
        "margin": pa.array(margin.astype(np.float32), mask=~(ok & np.isfinite(margin))),
    }
