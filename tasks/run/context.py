"""One evaluation's resolved context, built once per worker process.

Why: every shard task of a run needs the same classifier (models, text bank,
config hash). A task receives only small JSON-able arguments (root URL, the
EvalSpec as a dict, a shard index), so it can run in a thread, a Dask worker or
a Ray actor; ``resolve`` turns them into the heavy objects once per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task

from abs_model import ABSClassifier, CLIPBackbone, DINOBackbone, TextBank
from tasks.defaults import DINO_GRID, IMAGES_PER_BATCH_CPU, IMAGES_PER_BATCH_CUDA
from tasks.descriptions import DescriptionError, DescriptionSet, read_descriptions
from tasks.run import process_cache
from tasks.run.evalspec import EvalSpec, EvaluationError, short_hash
from tasks.run.retries import GPU_TAG, TASK_OPTIONS
from tasks.run.text_cache import TextCacheEntry, ensure_text_bank
from tasks.store import Storage, as_storage
from tasks.store.datasets import DatasetInfo, read_dataset_info

__all__ = ["EvalContext", "EvaluationError", "build_context", "model_geometry", "prepare_task", "resolve"]


@dataclass
class EvalContext:
    storage: Storage
    spec: EvalSpec
    info: DatasetInfo
    descriptions: DescriptionSet
    clip: CLIPBackbone
    dino: DINOBackbone
    text: TextBank
    text_entry: TextCacheEntry
    prediction_settings: dict[str, Any]  # every setting that decides the predictions; hashed into config_hash
    config_hash: str
    classifier: ABSClassifier

    @property
    def images_per_batch(self) -> int:
        if self.spec.images_per_batch:
            return self.spec.images_per_batch
        return IMAGES_PER_BATCH_CUDA if self.classifier.device.type == "cuda" else IMAGES_PER_BATCH_CPU


def _check_descriptions(ds: DescriptionSet, info: DatasetInfo, name: str) -> None:
    want = list(info.text_classnames)
    got = list(ds.classnames)
    if got != want:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(got, want)) if a != b][:5]
        raise EvaluationError(
            f"description set {name!r} was made for {len(got)} classes, dataset {info.dataset!r} scores "
            f"{len(want)} classes; first differences (label, descriptions, dataset): {diff}. "
            "Import the descriptions against this dataset's class list."
        )


def build_context(root: str | Storage, spec: EvalSpec, progress: bool = False) -> EvalContext:
    storage = as_storage(root)
    try:
        info = read_dataset_info(storage, spec.dataset)
    except FileNotFoundError as exc:
        raise EvaluationError(str(exc)) from exc
    try:
        ds = read_descriptions(storage, spec.descriptions)
    except DescriptionError as exc:
        raise EvaluationError(f"{exc} (pass a description file with --descriptions, or `abs-eval describe`)") from exc
    _check_descriptions(ds, info, spec.descriptions)
    clip = process_cache.get_clip(spec.clip, spec.device)
    dino = process_cache.get_dino(spec.dino, spec.device)
    if dino.grid != DINO_GRID:
        raise EvaluationError(
            f"DINO model {spec.dino.name} has a {dino.grid}x{dino.grid} grid; ABS expects {DINO_GRID}x{DINO_GRID}"
        )
    subset = list(info.subset_indices) if info.subset_indices is not None else None
    try:
        templates = spec.template_set(info.raw)  # --templates auto: the dataset's own, else its layout's set
    except ValueError as exc:
        raise EvaluationError(f"templates: {exc}") from None
    bank, entry = ensure_text_bank(
        storage,
        clip,
        list(info.text_classnames),
        ds.texts,
        ds.content_hash,
        m=spec.abs.n_descriptions,
        prompt=spec.prompt,
        templates=templates,
        subset=subset,
        progress=progress,
    )
    prediction_settings = spec.prediction_settings_key(
        clip_digest=clip.weights_digest,
        dino_digest=dino.weights_digest,
        descriptions_hash=ds.content_hash,
        dataset_fingerprint=info.fingerprint,
        text_classnames=list(info.text_classnames),
        subset=subset,
        templates=templates,
    )
    clf = ABSClassifier(clip, dino, bank, spec.abs, spec.device, spec.precision, compile=spec.compile)
    return EvalContext(
        storage, spec, info, ds, clip, dino, bank, entry, prediction_settings, short_hash(prediction_settings), clf
    )


def resolve(root: str, spec: EvalSpec | dict, expect_config: str | None = None, progress: bool = False) -> EvalContext:
    """``build_context``, memoised per process by (root, spec).

    ``expect_config``: the config hash the flow resolved; a memoised context with
    another hash (descriptions re-imported since, say) is rebuilt, so a long-lived
    worker never predicts with stale inputs.
    """
    if isinstance(spec, dict):
        spec = EvalSpec.from_dict(spec)
    key = ("eval-context", root, spec)  # EvalSpec hashes by value (frozen, hashable fields)
    ctx = process_cache.cached(key, lambda: build_context(root, spec, progress))
    if expect_config is not None and ctx.config_hash != expect_config:
        ctx = build_context(root, spec, progress)
        process_cache.replace(key, ctx)
        if ctx.config_hash != expect_config:
            raise EvaluationError(
                f"inputs changed during the run: config {ctx.config_hash} here, {expect_config} in the flow"
            )
    return ctx


@task(name="prepare-evaluation", tags=[GPU_TAG], **TASK_OPTIONS)
def prepare_task(root: str, spec: dict) -> dict[str, Any]:
    """Load models, build (or reuse) the text-embedding cache, compute the config hash."""
    ctx = resolve(root, spec, progress=True)
    return {
        "config_hash": ctx.config_hash,
        "prediction_settings": ctx.prediction_settings,
        "text": ctx.text_entry.to_dict(),
        "fingerprint": ctx.info.fingerprint,
        "shards": [s.index for s in ctx.info.shards],
        "clip_digest": ctx.clip.weights_digest,
        "dino_digest": ctx.dino.weights_digest,
        "descriptions_hash": ctx.descriptions.content_hash,
        "model": ctx.spec.model_name,
        "random_weights": ctx.clip.is_random or ctx.dino.is_random,
        "geometry": model_geometry(ctx.clip, ctx.dino),
    }


def model_geometry(clip: CLIPBackbone, dino: DINOBackbone) -> dict[str, int]:
    """Grid sides, patch and input sizes as the loaded models have them.

    Why record them: crop geometry is stored in grid cells (feature windows in CLIP
    cells, DINO top-K in DINO cells), and only the model knows its grid; reading it
    back from a model's name is wrong for any model that is not a stock /14 or /16
    ViT at 224 px (the shipped micro models, a 336 px model, a local checkpoint).
    """
    return {
        "clip_grid": int(clip.grid),
        "clip_image_size": int(clip.norm.size),
        "clip_patch": int(clip.norm.size) // int(clip.grid),
        "dino_grid": int(dino.grid),
        "dino_image_size": int(dino.norm.size),
        "dino_patch": int(dino.norm.size) // int(dino.grid),
    }
