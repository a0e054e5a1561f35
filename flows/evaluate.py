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

import difflib
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
    allow_single_class: bool = False


def _exists(url: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def validate_parameters(
    *, dataset: str, source: str | None, layout: str, root: str, clip_model: str, clip_pretrained: str | None,
    dino_model: str, dino_pretrained: str | None, descriptions: str | None, descriptions_name: str | None,
    descriptions_format: str, descriptions_key: str | None, abs_config: dict | None, prompt: str, templates: str,
    images_per_shard: int, device: str, precision: str, images_per_batch: int | None, keep_features: bool,
    compile: bool, deployment: str | None, runner: str, workers: int, report: bool, layout_options: dict | None,
    allow_single_class: bool = False,
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
    if len(problems) == 1:
        raise ParameterError(problems[0])
    if problems:
        raise ParameterError(f"{len(problems)} problems with the job:\n  - " + "\n  - ".join(problems))
    spec = EvalSpec(
        dataset=dataset, clip=ModelSpec(clip_model, clip_pretrained), dino=ModelSpec(dino_model, dino_pretrained),
        descriptions=descriptions_name or dataset, abs=cfg, prompt=prompt, templates=templates, device=device,
        precision=precision, images_per_batch=images_per_batch, keep_features=keep_features, compile=compile,
    )
    return EvaluateJob(spec, root, source, layout, dict(layout_options or {}), descriptions, descriptions_format,
                       descriptions_key, images_per_shard, deployment, runner, workers, report, allow_single_class)


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
        if p and _is_path(p) and not os.path.exists(p):
            out.append(f"{what}: checkpoint file not found: {p}")
    if clip_pretrained and not _is_path(clip_pretrained) and clip_model in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(clip_model)
        if clip_pretrained not in tags:
            near = difflib.get_close_matches(clip_pretrained, tags, n=3, cutoff=0.3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            out.append(f"unknown pretrained tag {clip_pretrained!r} for {clip_model}: its tags are "
                       f"{', '.join(tags) or 'none (use a checkpoint path or random)'}{hint}")
    if dino_pretrained and not _is_path(dino_pretrained) and dino_pretrained != "timm":
        out.append(f"dino_pretrained {dino_pretrained!r}: use 'timm' (the hub weights of the timm name), "
                   "a checkpoint path, or random")
    return out


def _is_path(p: str) -> bool:
    return "/" in p or os.sep in p or p.endswith((".pt", ".pth", ".bin", ".safetensors"))


def preflight(job: EvaluateJob) -> None:
    """Checks that need the dataset's class list but no image and no model, before any work.

    With a ``source``: list it through its layout (file names and index files only)
    and check the description file against its classes, so descriptions made for
    another class list fail before 50,000 images are sharded. Without one: the
    dataset must already be sharded under the root, and the stored description set
    must fit it. A dataset whose images all carry one label is refused unless
    ``allow_single_class`` (every method scores 100% there, which tells nothing).
    """
    from tasks.datasets import LayoutError, load_source
    from tasks.descriptions import DescriptionError, import_descriptions, read_descriptions
    from tasks.shard import read_dataset_info

    spec = job.spec
    if job.source is not None:
        try:
            src = load_source(job.layout, job.source, **job.layout_options)
        except (LayoutError, ValueError, TypeError, KeyError, FileNotFoundError) as exc:
            raise ParameterError(f"{job.layout} layout at {job.source}: {exc}") from None
        if not src.entries:
            raise ParameterError(f"{job.layout} layout: no images found in {job.source}")
        text_classnames = list(src.text_classnames or src.classnames)
        single = src.n_classes_present == 1
    else:
        try:
            info = read_dataset_info(job.root, spec.dataset)
        except FileNotFoundError:
            raise ParameterError(f"dataset {spec.dataset!r} is not sharded under {job.root}: pass --source "
                                 "(and --layout) to shard it") from None
        text_classnames = list(info.text_classnames)
        single = False  # checked (and warned about) when it was sharded
    try:
        if job.descriptions_path:
            import_descriptions(job.descriptions_path, text_classnames, format=job.descriptions_format,
                                dataset_key=job.descriptions_key, m=spec.abs.n_descriptions)
        else:
            stored = read_descriptions(job.root, spec.descriptions)
            if list(stored.classnames) != text_classnames:
                raise DescriptionError(
                    f"stored description set {spec.descriptions!r} has {len(stored.classnames)} classes, the dataset "
                    f"{len(text_classnames)}: pass the description file for this dataset with --descriptions")
    except DescriptionError as exc:
        raise ParameterError(f"descriptions: {exc}") from None
    if single and not job.allow_single_class:
        raise ParameterError(
            f"every image of {spec.dataset!r} has the same label: every method scores 100% on a one-class dataset. "
            "Point --source at the folder holding all class folders, or pass --allow-single-class.")


def _shards_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"shards {(p.get('spec') or {}).get('dataset', '?')} run {p.get('run_id', '?')}"


@flow(name="evaluate-shards", flow_run_name=_shards_run_name)
def evaluate_shards(root: str, spec: dict, config_hash: str, shards: list[int], run_id: str) -> list[dict]:
    """DINO cache then inference for every shard, mapped on this flow's task runner."""
    from tqdm.auto import tqdm

    dino = dino_shard_task.map(unmapped(root), unmapped(spec), unmapped(config_hash), shards)
    preds = infer_shard_task.map(unmapped(root), unmapped(spec), unmapped(config_hash), shards, unmapped(run_id), dino)
    out = []
    for f in tqdm(preds, desc="shards", unit="shard", total=len(shards)):
        out.append(f.result())
    return out


def deployment_label(given: str | None) -> str:
    """The label runs are compared by: the given one, else the Prefect deployment's name, else ``manual``."""
    if given:
        return given
    from prefect.runtime import deployment

    return deployment.name or "manual"


def run_evaluation(job: EvaluateJob) -> dict[str, Any]:
    """The body of ``evaluate`` (a plain function so reevaluate can reuse it)."""
    from prefect.runtime import flow_run

    from tasks.infer import committed_parts
    from tasks.runs import COMPLETED, FAILED, RunRecord, RunTracker, new_run_id
    from tasks.storage import Storage

    log = get_run_logger()
    spec, root = job.spec, job.root
    spec_d = spec.to_dict()
    deployment = deployment_label(job.deployment)
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
    storage = Storage(root)
    run_id = new_run_id()
    reused = [s for s in committed_parts(storage, spec.dataset, prep["model"], prep["config_hash"])
              if s in set(prep["shards"])]
    record = RunRecord(
        run_id=run_id, dataset=spec.dataset, model=prep["model"], config=prep["config_hash"],
        deployment=deployment, shards_total=len(prep["shards"]), shards_reused=len(reused), reused_shards=reused,
        clip_model=spec.clip.name, clip_pretrained=spec.clip.pretrained or "random", clip_weights_digest=prep["clip_digest"],
        dino_model=spec.dino.name, dino_pretrained=spec.dino.pretrained or "random", dino_weights_digest=prep["dino_digest"],
        descriptions_hash=prep["descriptions_hash"], config_json={"spec": spec_d, "numbers": prep["numbers"]},
        flow_run_id=str(flow_run.id) if flow_run.id else None, flow_run_name=flow_run.name,
    )
    tracker = RunTracker(storage, record).start()
    log.info("run %s: config %s, %d shards (%d already committed, reused)", run_id, prep["config_hash"],
             len(prep["shards"]), len(reused))
    runner = build_task_runner(job.runner, job.workers)
    try:
        results = evaluate_shards.with_options(task_runner=runner)(root, spec_d, prep["config_hash"], prep["shards"],
                                                                    run_id)
    except BaseException:
        tracker.finish(FAILED)
        raise
    computed = sum(1 for r in results if r["computed"])
    tracker.finish(
        COMPLETED, n_images=sum(r["n_images"] for r in results), n_ok=sum(r["n_ok"] for r in results),
        n_error=sum(r["n_error"] for r in results), shards_computed=computed,
        shards_reused=len(results) - computed,
    )
    summary = {"run_id": run_id, "config": prep["config_hash"], "dataset": spec.dataset, "model": prep["model"],
               "deployment": deployment, "n_images": record.n_images, "n_error": record.n_error,
               "shards_computed": computed, "shards_reused": len(results) - computed,
               "shards_total": len(prep["shards"]), "flow_run_id": record.flow_run_id}
    if job.report:
        summary.update(publish_report(root, run_id, deployment, spec.dataset, prep["model"]))
    return summary


def artifact_key(kind: str, deployment: str, dataset: str, model: str) -> str:
    """A stable artifact key per (deployment, dataset, model), so Prefect keeps each one's version history.

    Prefect keys allow lowercase letters, digits and dashes only.
    """
    text = f"{kind}-{deployment}-{dataset}-{model}".lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")


def publish_report(root: str, run_id: str, deployment: str = "manual", dataset: str = "", model: str = "") -> dict[str, Any]:
    """Report files next to the run record, plus the run's Prefect artifacts: a table
    (accuracy by method, from ``sql/``) and the markdown report with its plots embedded."""
    from tasks.report import write_report

    manifest = write_report(root, run_id)
    rows = [{k: _plain(v) for k, v in r.items()} for r in manifest.accuracy]
    create_table_artifact(table=rows, key=artifact_key("accuracy", deployment, dataset, model),
                          description=f"Accuracy by method, run {run_id} ({dataset} x {model})")
    markdown = getattr(manifest, "artifact_markdown", None) or manifest.markdown
    create_markdown_artifact(markdown=markdown, key=artifact_key("report", deployment, dataset, model),
                             description=f"ABS evaluation report, run {run_id} ({dataset} x {model})")
    return {"accuracy": manifest.accuracy, "report": manifest.report}


def _plain(v: Any) -> Any:
    """JSON-friendly artifact cell."""
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    return str(v)


def _evaluate_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"{p.get('dataset', '?')} x {p.get('clip_model', '?')} {datetime.now(timezone.utc):%Y-%m-%d %H:%M}"


def _reevaluate_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    names = [d.get("dataset", "?") for d in (p.get("datasets") or [])]
    shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    return f"reevaluate {p.get('deployment') or ''} [{shown}] {datetime.now(timezone.utc):%Y-%m-%d %H:%M}".replace("  ", " ")


@flow(name="evaluate", log_prints=True, flow_run_name=_evaluate_run_name)
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
    deployment: str | None = None,
    runner: str = "threads",
    workers: int = 1,
    report: bool = True,
    layout_options: dict | None = None,
    allow_single_class: bool = False,
) -> dict[str, Any]:
    """Evaluate ABS and the baselines on one dataset with one CLIP model.

    ``source`` is the dataset as downloaded (any fsspec URL) read with ``layout``;
    omit it to reuse shards already under ``root``. ``descriptions`` is a
    description file (CuPL JSON, attribute lists, templates); omit it to use the
    set already stored under ``descriptions_name`` (default: the dataset name).
    """
    job = validate_parameters(**{k: v for k, v in locals().items()})
    preflight(job)
    return run_evaluation(job)


@flow(name="reevaluate", log_prints=True, flow_run_name=_reevaluate_run_name)
def reevaluate(
    datasets: list[dict],
    models: list[dict] | None = None,
    root: str = DEFAULT_ROOT,
    deployment: str | None = None,
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
            preflight(job)
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
