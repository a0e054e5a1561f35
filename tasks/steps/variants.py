"""ABS variants of a completed run, scored per shard from the crop features it kept: no model runs.

What: a run evaluated with ``keep_features`` stored, beside each prediction part, its images' crop
features and global features (``features/<partition>/part-<n>.parquet``, ``tables.FEATURES_SCHEMA``).
For each variant (``abs_model.variants.VariantSpec``: the first N' crops, one crop branch, the first M'
descriptions, another tau, plain averaging instead of soft matching) :func:`variant_parts` scores one
shard for several variants at once from those features (read once) and the run's text bank (the cache
it was encoded into, found by its marker), and commits each result as a prediction part of the variant's
own partition: the rows of the run's part (``PREDICTION_SCHEMA``, same images, methods, labels, error rows
and crop geometry) with the numbers rescored, then its rollup, then its done-marker
(``VariantPartMarker``), exactly as ``infer`` commits a part. So every SQL view reads a variant like any
run; a committed part is never recomputed. The variants share their scoring
(``abs_model.variants.sweep_logits``: one crop x description product per block, one exponential pass
per tau).

Which partition (:func:`variant_settings`): the hash of the variant's prediction settings, built as
for any run: the run's settings (``config_json["numbers"]`` of its record) with the ``abs`` fields the
variant changes. A variant that equals a fresh run (tau, M', one crop branch:
``VariantSpec.equals_fresh_run``) then has exactly the settings, and so the partition, of a fresh run
with that setting: each reuses what the other committed, like a resumed run (equal within the
README's score tolerance). A variant that does not (N' < N crops: a prefix, other draws than a fresh
N'-run; plain averaging: no run does it) names that in a ``variant`` entry of its settings, so its
hash is its own.

The run records (one per variant, what the views join on) are written by ``flows.analyze``, which
calls this step for every shard: this module reads run records as plain JSON and imports nothing of
the read side (``tasks.results``).
"""

from __future__ import annotations

import copy
import json
import posixpath
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from abs_model import ABSConfig, TextBank
from abs_model.device import resolve_device
from abs_model.variants import VariantSpec, stored_crop_count, sweep_logits
from tasks.run.evalspec import short_hash
from tasks.run.text_cache import load_text_bank
from tasks.store import Storage, commits, rollups
from tasks.store.datasets import DatasetInfo
from tasks.store.markers import VariantPartMarker
from tasks.store.paths import features_part, prediction_part, text_cache
from tasks.store.predictions import committed_parts, method_scores, score_columns
from tasks.store.tables import PREDICTION_SCHEMA

__all__ = [
    "AnalyzedRun",
    "VariantError",
    "VariantPartResult",
    "VariantTarget",
    "find_text_bank",
    "missing_features",
    "read_features",
    "variant_parts",
    "variant_rows",
    "variant_settings",
]


class VariantError(ValueError):
    """What a variant cannot be computed from (a run without features, a setting the run cannot give): one line."""


@dataclass(frozen=True)
class AnalyzedRun:
    """A completed run whose kept features the variants are scored from, as its record describes it."""

    run_id: str
    dataset: str
    model: str
    config: str
    settings: dict[str, Any]
    """Its prediction settings (``config_json["numbers"]``): what its config hash hashes."""
    abs: ABSConfig
    record: dict[str, Any]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AnalyzedRun:
        """From a run's ``run.json``; :class:`VariantError` when the record cannot name its partition's settings."""
        rid = record.get("run_id", "?")
        cfg = record.get("config_json") or {}
        if isinstance(cfg, str):
            cfg = json.loads(cfg)
        settings = cfg.get("numbers") if isinstance(cfg, dict) else None
        if not isinstance(settings, dict) or not isinstance(settings.get("abs"), dict):
            raise VariantError(f"run {rid}: its record holds no prediction settings (config_json.numbers)")
        if short_hash(settings) != record.get("config"):
            raise VariantError(
                f"run {rid}: its recorded settings hash to {short_hash(settings)}, not to its partition "
                f"config={record.get('config')} (a record of another version): variants would be "
                "hashed inconsistently"
            )
        return cls(
            rid,
            record["dataset"],
            record["model"],
            record["config"],
            settings,
            ABSConfig.from_dict(settings["abs"]),
            record,
        )

    @property
    def spec(self) -> VariantSpec:
        """The setting the run itself scored."""
        return VariantSpec.of(self.abs)

    def shards(self, storage: Storage) -> list[int]:
        """The shards of its partition with a committed prediction part (a completed run stands for all of them)."""
        return committed_parts(storage, self.dataset, self.model, self.config)


def missing_features(storage: Storage, run: AnalyzedRun, shards: list[int]) -> list[int]:
    """The shards among ``shards`` whose crop features are not committed."""
    return [
        s for s in shards if commits.committed(storage, features_part(run.dataset, run.model, run.config, s)) is None
    ]


def variant_settings(run: AnalyzedRun, spec: VariantSpec) -> dict[str, Any]:
    """The prediction settings of ``spec`` applied to ``run``: its settings with the variant's ``abs`` fields,
    plus ``variant`` when no fresh run scores it so (``crops_prefix_of``: the first N' of the run's N crops;
    ``matching``: plain averaging). Hashed with ``short_hash`` like any run's (the partition's name)."""
    settings = copy.deepcopy(run.settings)
    settings["abs"] = spec.config(run.abs).to_dict()
    marks: dict[str, Any] = {}
    if spec.is_prefix(run.abs):
        marks["crops_prefix_of"] = run.abs.n_crops
    if spec.matching != "soft":
        marks["matching"] = spec.matching
    if marks:
        settings["variant"] = marks
    return settings


def _templates_marker(templates: Any) -> Any:
    """The ``templates`` a text-cache marker holds for a run's ``templates`` setting: a template set's record
    (JSON, sorted keys) or, in roots written before template sets had records, the set's name."""
    return json.dumps(templates, sort_keys=True) if isinstance(templates, dict) else templates


def find_text_bank(storage: Storage, run: AnalyzedRun, info: DatasetInfo) -> TextBank:
    """The text bank ``run`` scored with, from the text cache: the committed bank whose marker
    (``TextCacheMarker``) names the run's CLIP model and weights, description set, M, prompt, templates
    and class count."""
    s = run.settings
    clip = s["clip"]["name"]
    want = {
        "clip": clip,
        "weights": s["clip"].get("digest"),
        "descriptions_hash": s["descriptions_hash"],
        "m": run.abs.n_descriptions,
        "prompt": s["prompt"],
        "templates": _templates_marker(s["templates"]),
        "n_classes": len(info.text_classnames),
    }
    found = []
    for path in storage.glob(text_cache(clip, "*")):
        rel = posixpath.relpath(path, storage.root_path)
        if commits.committed(storage, rel, **want) is not None:
            found.append(rel)
    if len(found) != 1:
        why = "no committed text bank" if not found else f"{len(found)} text banks ({', '.join(found)})"
        raise VariantError(
            f"run {run.run_id}: {why} under {storage.root} matches its settings (CLIP {clip}, "
            f"M={run.abs.n_descriptions}, descriptions {s['descriptions_hash'][:16]}); rerun the "
            "evaluation (it re-encodes the bank, reusing every committed part)"
        )
    subset = list(info.subset_indices) if info.subset_indices is not None else None
    return load_text_bank(storage, found[0], list(info.text_classnames), run.abs.n_descriptions, subset)


def read_features(storage: Storage, rel: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A features part as ``(image ids, crop features [n, crops, D], global features [n, D])``, float32."""
    t = storage.read_parquet(rel)
    ids = t.column("image_id").to_pylist()
    crops, glob = t.column("crop_features").combine_chunks(), t.column("global_feature").combine_chunks()
    if crops.null_count or glob.null_count:
        raise VariantError(f"{rel}: rows without features")
    if not ids:
        return ids, np.zeros((0, 0, 0), np.float32), np.zeros((0, 0), np.float32)
    rows = crops.flatten()
    k, d = len(rows) // len(ids), (len(rows.flatten()) // len(rows)) if len(rows) else 0
    if not (
        np.all(crops.value_lengths().to_numpy() == k)
        and np.all(rows.value_lengths().to_numpy() == d)
        and np.all(glob.value_lengths().to_numpy() == d)
    ):
        raise VariantError(f"{rel}: crop features of different shapes")
    # copies (writable: torch.from_numpy takes them as they are)
    values = np.array(rows.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    gvalues = np.array(glob.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return ids, values.reshape(len(ids), k, d), gvalues.reshape(len(ids), d)


def variant_rows(
    rows: pa.Table,
    ids: list[str],
    logits: dict[str, torch.Tensor],
    classnames: list[str],
    run_id: str,
    n_crops: int | None = None,
) -> pa.Table:
    """The variant's prediction rows: ``rows`` (the run's part) with ``pred``, ``pred_name``, ``top5``,
    ``score_true`` and ``margin`` of its ok rows rescored from ``logits`` (``{method: [len(ids), C]}``, row j
    is image ``ids[j]``), ``run_id`` set, and, for a prefix (``n_crops``), the geometry cut to the crops kept.

    The numbers are converted as ``infer`` converts them (``tasks.store.predictions``: ``method_scores``,
    ``score_columns``), so a variant's row and a fresh run's row are the same when their logits are."""
    f = {fld.name: fld.type for fld in PREDICTION_SCHEMA}
    n = rows.num_rows
    image_col = rows.column("image_id").to_pylist()
    method_col = rows.column("method").to_pylist()
    ok = np.array([s == "ok" for s in rows.column("status").to_pylist()], dtype=bool)
    methods = list(logits)
    missing = sorted(set(method_col) - set(methods))
    if missing:
        raise VariantError(f"the run's part scores {missing}, which its text bank cannot score again")
    pos = {i: j for j, i in enumerate(ids)}
    absent = sorted({image_col[r] for r in np.flatnonzero(ok) if image_col[r] not in pos})
    if absent:
        raise VariantError(f"{len(absent)} classified images have no stored features, e.g. {absent[:3]}")
    cols = {name: rows.column(name) for name in PREDICTION_SCHEMA.names}
    if ok.any():
        label_of: dict[str, int] = {}
        for i, lab in zip(image_col, rows.column("label").to_pylist()):
            label_of.setdefault(i, lab)
        nums = method_scores(torch.stack([logits[m].cpu() for m in methods]), [label_of.get(i, -1) for i in ids])
        at_m = np.array([methods.index(m) for m in method_col])
        at_i = np.array([pos.get(i, 0) for i in image_col])
        pred, top5 = nums["pred"][at_m, at_i], nums["top5"][at_m, at_i]
        score, margin = nums["score_true"][at_m, at_i], nums["margin"][at_m, at_i]
        cols.update(score_columns(pred, top5, score, margin, ok, classnames))
    cols["run_id"] = pa.array([run_id] * n, f["run_id"])
    if n_crops is not None:
        for name in ("raw_boxes", "feature_windows"):
            cols[name] = pc.list_slice(rows.column(name), 0, n_crops).cast(f[name])
    return pa.table(cols, schema=PREDICTION_SCHEMA)


@dataclass(frozen=True)
class VariantPartResult:
    shard: int
    path: str
    computed: bool
    n_images: int
    n_ok: int
    n_error: int
    seconds: float = 0.0
    """What this call spent on the part: its share of the shard's reads and shared scoring, and its commit."""


@dataclass(frozen=True)
class VariantTarget:
    """One variant to commit on a shard: its setting, its partition (config hash) and its run id."""

    spec: VariantSpec
    config: str
    run_id: str


def variant_parts(
    storage: Storage,
    run: AnalyzedRun,
    targets: Sequence[VariantTarget],
    *,
    text: TextBank | None,
    classnames: list[str],
    shard: int,
    device: str = "cpu",
    exact: bool = True,
) -> list[VariantPartResult]:
    """Score every target not yet committed on one shard of ``run`` from its kept features and commit each
    part under its config; a committed part is returned untouched (``text`` may be None when all are).

    The shard's rows and features are read once and the targets' logits come from one
    ``abs_model.variants.sweep_logits`` call, which shares the crop x description products, one exponential
    pass per tau and the sums per crop and description range between them (each target's numbers are
    ``variant_logits``'s within float rounding). Then each target's part is committed in the order of
    ``targets``, as ``infer`` commits a part: the part, its rollup (a crashed attempt's goes first), its
    done-marker. ``classnames``: the dataset's label names (``pred_name``). ``device``: where the matching
    runs. ``exact``: ``sweep_logits``'s (True: the variants a fresh run scores with the same call, another tau
    or raw crops only, keep that call and its bits; False: they share the work too, equal within rounding).
    Returns one result per target, in order.
    """
    rels = [prediction_part(run.dataset, run.model, t.config, shard) for t in targets]
    results: list[VariantPartResult | None] = []
    for rel in rels:
        marker = commits.committed(storage, rel)
        results.append(
            None
            if marker is None
            else VariantPartResult(shard, rel, False, marker["n_images"], marker["n_ok"], marker["n_error"])
        )
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
        if text is None:
            raise VariantError(f"{rels[todo[0]]} is not committed: pass the run's text bank to compute it")
        t0 = time.perf_counter()
        rows = storage.read_parquet(prediction_part(run.dataset, run.model, run.config, shard))
        ids, crops, glob = read_features(storage, features_part(run.dataset, run.model, run.config, shard))
        if ids and crops.shape[1] != stored_crop_count(run.abs):
            raise VariantError(
                f"shard {shard}: {crops.shape[1]} stored crops per image, the run's settings say "
                f"{stored_crop_count(run.abs)}"
            )
        dev = resolve_device(device)
        specs = [targets[i].spec for i in todo]
        if ids:
            found = sweep_logits(
                torch.from_numpy(crops).to(dev), run.abs, text, specs, torch.from_numpy(glob).to(dev), exact=exact
            )
            logits = [{k: v.cpu() for k, v in f.items()} for f in found]
        else:  # every image of the shard is an error row
            methods = dict.fromkeys(rows.column("method").to_pylist())
            logits = [{m: torch.zeros(0, len(classnames)) for m in methods} for _ in specs]
        shared = (time.perf_counter() - t0) / len(todo)
        for i, lg in zip(todo, logits):
            t1 = time.perf_counter()
            part = _commit_part(storage, run, targets[i], rels[i], shard, rows, ids, lg, classnames)
            results[i] = replace(part, seconds=shared + time.perf_counter() - t1)
    return [r for r in results if r is not None]


def _commit_part(
    storage: Storage,
    run: AnalyzedRun,
    target: VariantTarget,
    rel: str,
    shard: int,
    rows: pa.Table,
    ids: list[str],
    logits: dict[str, torch.Tensor],
    classnames: list[str],
) -> VariantPartResult:
    """``target``'s part from the run's ``rows`` and its ``logits``, committed at ``rel``: part, rollup, marker."""
    spec = target.spec
    table = variant_rows(
        rows,
        ids,
        logits,
        classnames,
        target.run_id,
        n_crops=spec.n_crops if spec.is_prefix(run.abs) else None,
    )
    images = dict(zip(table.column("image_id").to_pylist(), table.column("status").to_pylist()))
    n_ok = sum(1 for s in images.values() if s == "ok")
    rollups.drop_rollup(storage, rel)
    storage.write_parquet(rel, table)
    rollups.write_rollup(storage, rel, table)
    commits.mark(
        storage,
        rel,
        VariantPartMarker(
            n_images=len(images),
            n_ok=n_ok,
            n_error=len(images) - n_ok,
            run_id=target.run_id,
            of_config=run.config,
            of_run=run.run_id,
            variant=spec.name(run.spec),
        ),
    )
    return VariantPartResult(shard, rel, True, len(images), n_ok, len(images) - n_ok)
