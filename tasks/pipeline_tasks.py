"""Prefect tasks of the evaluate flow: thin wrappers over the plain pipeline steps.

Each task takes small JSON-able arguments (root URL, EvalSpec dict, shard index)
and returns a small manifest dict, never tensors, so it can run in a thread, a
Dask worker process or a Ray worker. Tasks that touch storage retry; tasks that
run models carry the ``gpu`` tag (give it a concurrency limit on a GPU pool:
``prefect concurrency-limit create gpu 1``). Prefect's result caching is off:
idempotence comes from the commit markers in the storage root, which survive
process crashes and are shared by every worker.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from abs_model import WeightsUnavailableError
from tasks.datasets import LayoutError
from tasks.descriptions import (
    DescriptionError,
    generate_descriptions,
    import_descriptions,
    read_descriptions,
    write_descriptions,
)
from tasks.dino_cache import dino_shard
from tasks.infer import infer_shard
from tasks.pipeline import EvaluationError, resolve
from tasks.progress import ShardProgress
from tasks.shard import read_dataset_info, shard_dataset

def _transient(task, task_run, state) -> bool:
    """Retry storage and device hiccups, not problems with the job itself (they would fail again)."""
    try:
        state.result(raise_on_failure=True)
    except PERMANENT:
        return False
    except Exception:
        return True
    return True


PERMANENT = (EvaluationError, WeightsUnavailableError, DescriptionError, LayoutError, FileNotFoundError,
             ValueError, TypeError, KeyError)
STORAGE_RETRIES = dict(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient)


@task(name="shard-dataset", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def shard_task(layout: str, source: str, root: str, dataset: str, images_per_shard: int,
               layout_options: dict | None = None, progress: bool = True) -> dict[str, Any]:
    m = shard_dataset(layout, source, root, dataset, images_per_shard, layout_options=layout_options or {},
                      progress=progress)
    return {"dataset": dataset, "fingerprint": m.fingerprint, "n_shards": len(m.shards), "n_total": m.n_total,
            "n_ok": m.n_ok, "n_error": m.n_error, "written": m.written, "skipped": m.skipped}


@task(name="descriptions", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def descriptions_task(root: str, dataset: str, name: str, path: str | None, fmt: str = "auto",
                      dataset_key: str | None = None, m: int = 50) -> dict[str, Any]:
    """Import ``path`` against the dataset's class list as set ``name``, or check the stored set."""
    info = read_dataset_info(root, dataset)
    if path:
        ds = import_descriptions(path, list(info.text_classnames), format=fmt, dataset_key=dataset_key, m=m)
        man = write_descriptions(ds, root, name)
        return {"name": name, "content_hash": man.content_hash, "summary": ds.summary()}
    ds = read_descriptions(root, name)
    return {"name": name, "content_hash": ds.content_hash, "summary": ds.summary()}


@task(name="generate-descriptions", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=60,
      retry_condition_fn=_transient)
def generate_descriptions_task(root: str, dataset: str, name: str, *, base_url: str, model: str,
                               **options: Any) -> dict[str, Any]:
    """Ask an LLM endpoint for descriptions of the dataset's classes and store them as ``name``.

    ``options`` go to ``tasks.descriptions.generate_descriptions`` (m, seed, temperature,
    api_key_env, workers ...). A retry resumes class by class: finished classes are
    not asked again.
    """
    info = read_dataset_info(root, dataset)
    ds = generate_descriptions(list(info.text_classnames), root, name, base_url=base_url, model=model, **options)
    return {"name": name, "content_hash": ds.content_hash, "summary": ds.summary()}


@task(name="prepare-evaluation", cache_policy=NO_CACHE, tags=["gpu"], **STORAGE_RETRIES)
def prepare_task(root: str, spec: dict) -> dict[str, Any]:
    """Load models, build (or reuse) the text-embedding cache, compute the config hash."""
    ctx = resolve(root, spec, progress=True)
    return {
        "config_hash": ctx.config_hash, "numbers": ctx.numbers, "text": ctx.text_entry.to_dict(),
        "fingerprint": ctx.info.fingerprint, "shards": [s.index for s in ctx.info.shards],
        "clip_digest": ctx.clip.weights_digest, "dino_digest": ctx.dino.weights_digest,
        "descriptions_hash": ctx.descriptions.content_hash, "model": ctx.spec.model_name,
        "random_weights": ctx.clip.is_random or ctx.dino.is_random,
    }


@task(name="dino-shard", cache_policy=NO_CACHE, tags=["gpu"], task_run_name="dino-shard-{shard}", **STORAGE_RETRIES)
def dino_shard_task(root: str, spec: dict, config_hash: str, shard: int) -> dict[str, Any]:
    ctx = resolve(root, spec, expect_config=config_hash)
    progress = ShardProgress(f"dino shard {shard}", get_run_logger())
    try:
        r = dino_shard(ctx.storage, ctx.spec.dataset, shard, ctx.info.fingerprint, ctx.dino,
                       max_image_side=ctx.spec.abs.max_image_side, device=ctx.classifier.device,
                       precision=ctx.spec.precision, progress=progress)
    finally:
        progress.close()
    return r.to_dict()


@task(name="infer-shard", cache_policy=NO_CACHE, tags=["gpu"], task_run_name="infer-shard-{shard}", **STORAGE_RETRIES)
def infer_shard_task(root: str, spec: dict, config_hash: str, shard: int, run_id: str,
                     dino: dict[str, Any]) -> dict[str, Any]:
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
