"""The evaluate and reevaluate flows.

``evaluate``: one dataset x CLIP model x config -- shard the source, import or
check the descriptions, build the text cache, then per shard (mapped, on the
chosen task runner) the DINO cache and inference, then the run record, the
report and the Prefect artifacts. Parameters are checked before any work.

``reevaluate``: a matrix of datasets x models for scheduled deployments; each
cell is an ``evaluate`` subflow, and one failing cell does not stop the others.

Resume: every step skips what is committed in the storage root, so re-running
the same evaluation after a crash recomputes only what was not committed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from abs_model import ABSConfig, ModelSpec
from flows.runners import RUNNERS, build_task_runner
from tasks.evalspec import EvalSpec
from tasks.pipeline_tasks import (
    descriptions_task,
    dino_shard_task,
    infer_shard_task,
    prepare_task,
    run_record_task,
    shard_task,
)

DEFAULT_ROOT = os.environ.get("ABS_EVAL_ROOT", "abs-output")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ParameterError(ValueError):
    """A flow parameter is wrong; raised before any work starts."""


@dataclass(frozen=True)
class EvaluateJob:
    """Validated parameters of one evaluation."""

    spec: EvalSpec
    root: str
    source: str | None
    layout: str
    layout_options: dict
    descriptions_path: str | None
    descriptions_format: str
    descriptions_key: str | None
    images_per_shard: int
    deployment: str
    runner: str
    workers: int
    report: bool


def _exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def validate_parameters(
    *, dataset: str, source: str | None, layout: str, root: str, clip_model: str, clip_pretrained: str | None,
    dino_model: str, dino_pretrained: str | None, descriptions: str | None, descriptions_name: str | None,
    descriptions_format: str, descriptions_key: str | None, abs_config: dict | None, prompt: str, templates: str,
    images_per_shard: int, device: str, precision: str, images_per_batch: int | None, keep_features: bool,
    compile: bool, deployment: str, runner: str, workers: int, report: bool, layout_options: dict | None,
) -> EvaluateJob:
    """Every check that needs no model and no image: a wrong name or path fails here, with a message."""
    from tasks.datasets import list_layouts

    problems = []
    if not _NAME.match(dataset or ""):
        problems.append(f"dataset name {dataset!r}: use letters, digits, '.', '_' or '-'")
    if layout not in list_layouts():
        problems.append(f"unknown layout {layout!r}; known layouts: {', '.join(list_layouts())}")
    if source is not None and not _exists(source):
        problems.append(f"dataset source not found: {source}")
    if descriptions and not _exists(descriptions):
        problems.append(f"descriptions file not found: {descriptions}")
    if runner not in RUNNERS:
        problems.append(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    if workers < 1:
        problems.append("workers must be >= 1")
    if images_per_shard < 1:
        problems.append("images_per_shard must be >= 1")
    if templates not in ("openai-imagenet", "none"):
        problems.append(f"templates must be 'openai-imagenet' or 'none', got {templates!r}")
    try:
        cfg = ABSConfig.from_dict({**ABSConfig().to_dict(), **(abs_config or {})})
    except (ValueError, TypeError) as exc:
        problems.append(f"abs_config: {exc}")
        cfg = ABSConfig()
    problems += _check_models(clip_model, clip_pretrained, dino_model, dino_pretrained)
    if problems:
        raise ParameterError("invalid evaluate parameters:\n  - " + "\n  - ".join(problems))
    spec = EvalSpec(
        dataset=dataset, clip=ModelSpec(clip_model, clip_pretrained), dino=ModelSpec(dino_model, dino_pretrained),
        descriptions=descriptions_name or dataset, abs=cfg, prompt=prompt, templates=templates, device=device,
        precision=precision, images_per_batch=images_per_batch, keep_features=keep_features, compile=compile,
    )
    return EvaluateJob(spec, root, source, layout, dict(layout_options or {}), descriptions, descriptions_format,
                       descriptions_key, images_per_shard, deployment, runner, workers, report)


def _check_models(clip_model, clip_pretrained, dino_model, dino_pretrained) -> list[str]:
    import open_clip
    import timm

    from abs_model.model_configs import dino_configs, register_clip_configs

    out = []
    register_clip_configs()
    if clip_model not in open_clip.list_models():
        out.append(f"unknown CLIP model {clip_model!r} (open_clip names such as ViT-B-16, or abs-tiny-vit-b16)")
    if dino_model not in dino_configs() and not timm.is_model(dino_model.split(".")[0]):
        out.append(f"unknown DINO model {dino_model!r} (timm names such as vit_base_patch16_224.dino)")
    for what, p in (("clip_pretrained", clip_pretrained), ("dino_pretrained", dino_pretrained)):
        if p and ("/" in p or p.endswith((".pt", ".pth", ".bin", ".safetensors"))) and not os.path.exists(p):
            out.append(f"{what}: checkpoint file not found: {p}")
    return out


@flow(name="evaluate-shards")
def evaluate_shards(root: str, spec: dict, config_hash: str, shards: list[int], run_id: str) -> list[dict]:
    """DINO cache then inference for every shard, mapped on this flow's task runner."""
    from tqdm.auto import tqdm

    dino = dino_shard_task.map(unmapped(root), unmapped(spec), unmapped(config_hash), shards)
    preds = infer_shard_task.map(unmapped(root), unmapped(spec), unmapped(config_hash), shards, unmapped(run_id), dino)
    out = []
    for f in tqdm(preds, desc="shards", unit="shard", total=len(shards)):
        out.append(f.result())
    return out


def run_evaluation(job: EvaluateJob) -> dict[str, Any]:
    """The body of ``evaluate`` (a plain function so reevaluate can reuse it)."""
    from tasks.runs import RunRecord, new_run_id

    log = get_run_logger()
    spec, root = job.spec, job.root
    spec_d = spec.to_dict()
    if job.source is not None:
        sharded = shard_task(job.layout, job.source, root, spec.dataset, job.images_per_shard, job.layout_options)
        log.info("sharded %s: %d images in %d shards (%d written, %d already committed), %d error rows",
                 spec.dataset, sharded["n_total"], sharded["n_shards"], len(sharded["written"]),
                 len(sharded["skipped"]), sharded["n_error"])
    desc = descriptions_task(root, spec.dataset, spec.descriptions, job.descriptions_path, job.descriptions_format,
                             job.descriptions_key, spec.abs.n_descriptions)
    log.info("descriptions %s (%s):\n%s", desc["name"], desc["content_hash"][:16], desc["summary"])
    prep = prepare_task(root, spec_d)
    if prep["random_weights"]:
        log.warning("RANDOM model weights: accuracy will be at chance level (see README: running with real weights)")
    run_id = new_run_id()
    record = dict(
        run_id=run_id, dataset=spec.dataset, model=prep["model"], config=prep["config_hash"],
        deployment=job.deployment, shards_total=len(prep["shards"]),
        clip_model=spec.clip.name, clip_pretrained=spec.clip.pretrained or "random", clip_weights_digest=prep["clip_digest"],
        dino_model=spec.dino.name, dino_pretrained=spec.dino.pretrained or "random", dino_weights_digest=prep["dino_digest"],
        descriptions_hash=prep["descriptions_hash"], config_json={"spec": spec_d, "numbers": prep["numbers"]},
        started_at=datetime.now(timezone.utc),
    )
    run_record_task(root, record)
    log.info("run %s: config %s, %d shards", run_id, prep["config_hash"], len(prep["shards"]))
    runner = build_task_runner(job.runner, job.workers)
    try:
        results = evaluate_shards.with_options(task_runner=runner)(root, spec_d, prep["config_hash"], prep["shards"],
                                                                    run_id)
    except BaseException:
        run_record_task(root, {**record, "status": "failed", "ended_at": datetime.now(timezone.utc)})
        raise
    record.update(
        status="completed", ended_at=datetime.now(timezone.utc),
        n_images=sum(r["n_images"] for r in results), n_ok=sum(r["n_ok"] for r in results),
        n_error=sum(r["n_error"] for r in results), shards_computed=sum(1 for r in results if r["computed"]),
    )
    run_record_task(root, record)
    summary = {"run_id": run_id, "config": prep["config_hash"], "dataset": spec.dataset, "model": prep["model"],
               "n_images": record["n_images"], "n_error": record["n_error"],
               "shards_computed": record["shards_computed"], "shards_total": len(prep["shards"])}
    if job.report:
        summary.update(publish_report(root, run_id))
    return summary


def publish_report(root: str, run_id: str) -> dict[str, Any]:
    """Report files next to the run record, plus the run's Prefect artifacts: a table
    (accuracy by method, from ``sql/``) and the markdown report."""
    from tasks.report import write_report

    manifest = write_report(root, run_id)
    rows = [{k: _plain(v) for k, v in r.items()} for r in manifest.accuracy]
    create_table_artifact(table=rows, key=f"accuracy-{_artifact_key(run_id)}",
                          description=f"Accuracy by method, run {run_id}")
    create_markdown_artifact(markdown=manifest.markdown, key=f"report-{_artifact_key(run_id)}",
                             description=f"ABS evaluation report, run {run_id}")
    return {"accuracy": manifest.accuracy, "report": manifest.report}


def _plain(v: Any) -> Any:
    """JSON-friendly artifact cell."""
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    return str(v)


def _artifact_key(run_id: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", run_id.lower())


@flow(name="evaluate", log_prints=True)
def evaluate(
    dataset: str,
    source: str | None = None,
    layout: str = "folder",
    root: str = DEFAULT_ROOT,
    clip_model: str = "ViT-B-16",
    clip_pretrained: str | None = "openai",
    dino_model: str = "vit_base_patch16_224.dino",
    dino_pretrained: str | None = "timm",
    descriptions: str | None = None,
    descriptions_name: str | None = None,
    descriptions_format: str = "auto",
    descriptions_key: str | None = None,
    abs_config: dict | None = None,
    prompt: str = "a photo of a {}.",
    templates: str = "openai-imagenet",
    images_per_shard: int = 1000,
    device: str = "auto",
    precision: str = "auto",
    images_per_batch: int | None = None,
    keep_features: bool = False,
    compile: bool = False,
    deployment: str = "manual",
    runner: str = "threads",
    workers: int = 1,
    report: bool = True,
    layout_options: dict | None = None,
) -> dict[str, Any]:
    """Evaluate ABS and the baselines on one dataset with one CLIP model.

    ``source`` is the dataset as downloaded (any fsspec URL) read with ``layout``;
    omit it to reuse shards already under ``root``. ``descriptions`` is a
    description file (CuPL JSON, attribute lists, templates); omit it to use the
    set already stored under ``descriptions_name`` (default: the dataset name).
    """
    job = validate_parameters(**{k: v for k, v in locals().items()})
    return run_evaluation(job)


@flow(name="reevaluate", log_prints=True)
def reevaluate(
    datasets: list[dict],
    models: list[dict] | None = None,
    root: str = DEFAULT_ROOT,
    deployment: str = "manual",
    defaults: dict | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every dataset x model. ``datasets``: evaluate() parameters per dataset
    (``dataset``, ``source``, ``layout``, ``descriptions`` ...); ``models``: parameter
    overrides per model (``clip_model``, ``clip_pretrained`` ...); ``defaults`` apply to all."""
    log = get_run_logger()
    jobs = []
    for d in datasets:
        for m in models or [{}]:
            params = {"root": root, "deployment": deployment, **(defaults or {}), **d, **m}
            jobs.append(validate_parameters(**_with_defaults(params)))  # every cell checked before any work
    results, failed = [], []
    for job in jobs:
        name = f"{job.spec.dataset} x {job.spec.model_name}"
        try:
            results.append({"job": name, "status": "completed", **run_evaluation(job)})
        except Exception as exc:  # one broken cell must not cancel the week's other results
            log.error("%s failed: %s", name, exc)
            failed.append(name)
            results.append({"job": name, "status": "failed", "error": str(exc)})
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} evaluations failed: {failed}")
    return results


def _with_defaults(params: dict) -> dict:
    import inspect

    sig = inspect.signature(evaluate.fn)
    unknown = set(params) - set(sig.parameters)
    if unknown:
        raise ParameterError(f"unknown evaluate parameters: {sorted(unknown)}")
    full = {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    full.update(params)
    if "dataset" not in full:
        raise ParameterError("each dataset entry needs a 'dataset' name")
    return full
