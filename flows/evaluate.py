"""The evaluate and reevaluate flows: the only code that chains the pipeline's tasks.

``evaluate``: one :class:`flows.params.EvaluateParams` (dataset x CLIP model x
config): shard the source, import or check the descriptions, build the text
cache, then per shard (mapped, on the chosen task runner) the DINO cache and
inference, then the run record, the report and the Prefect artifacts. Every
check of the parameters runs before any work (``flows.params``).

``reevaluate``: a matrix of datasets x models for scheduled deployments; each
cell is an ``evaluate`` run, and one failing cell does not stop the others.

Resume: every step skips what is committed in the storage root, so re-running
the same evaluation after a crash recomputes only what was not committed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import EvaluateParams, ParameterError, make_params, preflight
from flows.runners import build_task_runner
from tasks import defaults
from tasks.defaults import ROOT as DEFAULT_ROOT
from tasks.results.artifacts import artifact_key  # the artifacts' keys and texts: tasks/results/artifacts.py
from tasks.run.context import prepare_task
from tasks.run.evalspec import EvalSpec
from tasks.steps.describe import descriptions_task
from tasks.steps.dino_cache import dino_shard_task
from tasks.steps.infer import infer_shard_task
from tasks.steps.shard import shard_task

__all__ = ["EvaluateParams", "ParameterError", "evaluate", "reevaluate", "run_evaluation"]


def _shards_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"shards {(p.get('spec') or {}).get('dataset', '?')} run {p.get('run_id', '?')}"


@flow(name="evaluate-shards", flow_run_name=_shards_run_name)
def evaluate_shards(root: str, spec: dict, config_hash: str, shards: list[int], run_id: str) -> list[dict]:
    """DINO cache then inference for every shard, mapped on this flow's task runner; as each shard's
    predictions commit, the run's progress artifact is updated (``flows.live``)."""
    from prefect.futures import as_completed
    from tqdm.auto import tqdm

    from flows.live import LiveProgress

    live = LiveProgress.start(root, spec, shards, run_id)
    dino = dino_shard_task.map(unmapped(root), unmapped(spec), unmapped(config_hash), shards)
    preds = infer_shard_task.map(unmapped(root), unmapped(spec), unmapped(config_hash), shards, unmapped(run_id), dino)
    done: dict[int, dict] = {}
    for f in tqdm(as_completed(list(preds)), desc="shards", unit="shard", total=len(shards)):
        r = f.result()
        done[r["shard"]] = r
        live.shard_done(r)
    live.finish()
    return [done[s] for s in shards]


def deployment_label(given: str | None) -> str:
    """The label runs are compared by: the given one, else the Prefect deployment's name, else ``manual``."""
    if given:
        return given
    from prefect.runtime import deployment

    return deployment.name or defaults.DEPLOYMENT


def run_evaluation(params: EvaluateParams, spec: EvalSpec) -> dict[str, Any]:
    """The body of ``evaluate`` for checked parameters (a plain function so reevaluate can reuse it)."""
    from prefect.runtime import flow_run

    from tasks.results.runs import COMPLETED, FAILED, RunRecord, RunTracker, claim_run_id
    from tasks.store import Storage
    from tasks.store.predictions import committed_parts

    log = get_run_logger()
    root = params.root
    spec_d = spec.to_dict()
    deployment = deployment_label(params.deployment)
    run_id = claim_run_id(root, spec.dataset, spec.model_name)  # the record `abs-eval run` wrote at once, else new
    if params.source is not None:
        sharded = shard_task(
            params.layout, params.source, root, spec.dataset, params.images_per_shard, params.layout_options
        )
        log.info(
            "sharded %s: %d images in %d shards (%d written, %d already committed), %d error rows",
            spec.dataset,
            sharded["n_total"],
            sharded["n_shards"],
            len(sharded["written"]),
            len(sharded["skipped"]),
            sharded["n_error"],
        )
    desc = descriptions_task(
        root,
        spec.dataset,
        spec.descriptions,
        params.descriptions,
        params.descriptions_format,
        params.descriptions_key,
        spec.abs.n_descriptions,
    )
    log.info("descriptions %s (%s):\n%s", desc["name"], desc["content_hash"][:16], desc["summary"])
    prep = prepare_task(root, spec_d)
    if prep["random_weights"]:
        log.warning("RANDOM model weights: accuracy will be at chance level (see README: running with real weights)")
    storage = Storage(root)
    reused = [
        s
        for s in committed_parts(storage, spec.dataset, prep["model"], prep["config_hash"])
        if s in set(prep["shards"])
    ]
    # config_json["numbers"]: the prediction settings under the key run records have always used (kept,
    # so records of older roots compare: tasks.results.runs.setting_differences, the regressions view)
    record = RunRecord(
        run_id=run_id,
        dataset=spec.dataset,
        model=prep["model"],
        config=prep["config_hash"],
        deployment=deployment,
        shards_total=len(prep["shards"]),
        shards_reused=len(reused),
        reused_shards=reused,
        clip_model=spec.clip.name,
        clip_pretrained=spec.clip.pretrained or "random",
        clip_weights_digest=prep["clip_digest"],
        dino_model=spec.dino.name,
        dino_pretrained=spec.dino.pretrained or "random",
        dino_weights_digest=prep["dino_digest"],
        descriptions_hash=prep["descriptions_hash"],
        config_json={"spec": spec_d, "numbers": prep["prediction_settings"]},
        model_geometry=prep["geometry"],
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        flow_run_name=flow_run.name,
    )
    tracker = RunTracker(storage, record).start()
    log.info(
        "run %s: config %s, %d shards (%d already committed, reused)",
        run_id,
        prep["config_hash"],
        len(prep["shards"]),
        len(reused),
    )
    runner = build_task_runner(params.runner, params.workers)
    try:
        results = evaluate_shards.with_options(task_runner=runner)(
            root, spec_d, prep["config_hash"], prep["shards"], run_id
        )
    except BaseException:
        tracker.finish(FAILED)
        raise
    computed = sum(1 for r in results if r["computed"])
    tracker.finish(
        COMPLETED,
        n_images=sum(r["n_images"] for r in results),
        n_ok=sum(r["n_ok"] for r in results),
        n_error=sum(r["n_error"] for r in results),
        shards_computed=computed,
        shards_reused=len(results) - computed,
    )
    summary = {
        "run_id": run_id,
        "config": prep["config_hash"],
        "dataset": spec.dataset,
        "model": prep["model"],
        "deployment": deployment,
        "n_images": record.n_images,
        "n_error": record.n_error,
        "shards_computed": computed,
        "shards_reused": len(results) - computed,
        "shards_total": len(prep["shards"]),
        "flow_run_id": record.flow_run_id,
    }
    if params.report:
        summary.update(publish_report(root, run_id, deployment, spec.dataset, prep["model"]))
    summary["regressions"] = announce_regressions(root, run_id, deployment)
    return summary


def publish_report(
    root: str, run_id: str, deployment: str = defaults.DEPLOYMENT, dataset: str = "", model: str = ""
) -> dict[str, Any]:
    """Report files next to the run record, plus the run's Prefect artifacts: a table
    (accuracy by method, from ``sql/``) and the markdown report with its plots embedded."""
    from tasks.results.artifacts import report_artifacts
    from tasks.results.report import write_report

    manifest = write_report(root, run_id)
    art = report_artifacts(manifest)  # what each artifact says: tasks/results/artifacts.py
    create_table_artifact(
        table=art["table"],
        key=artifact_key("accuracy", deployment, dataset, model),
        description=art["table_description"],
    )
    create_markdown_artifact(
        markdown=art["markdown"],
        key=artifact_key("report", deployment, dataset, model),
        description=art["markdown_description"],
    )
    return {"accuracy": manifest.accuracy, "report": manifest.report}


#: The Prefect event a significant accuracy drop emits (one per regressed method); automations match on it.
REGRESSION_EVENT = "abs-eval.accuracy.regressed"


def announce_regressions(
    root: str, run_id: str, deployment: str | None = None, previous_run_id: str | None = None
) -> list[dict[str, Any]]:
    """Emit one ``abs-eval.accuracy.regressed`` Prefect event per method whose accuracy dropped
    significantly since the previous run of the same deployment, dataset and model.

    "Significantly": the ``regressions`` query (``sql/views/44_regressions.sql``): exact McNemar
    test on the images both runs classified, p < 0.05, and accuracy down. The event's resource is
    ``abs-eval.run.<run_id>`` (labelled with dataset, model, method and deployment, so an automation
    can match on them); its payload holds the numbers. Returns the payloads emitted (empty without
    a previous run or a significant drop). Called by the flow after the report is published.
    """
    import logging

    from prefect.events import emit_event
    from prefect.exceptions import MissingContextError

    from tasks.results.catalog import run_query

    try:
        log = get_run_logger()
    except MissingContextError:  # called outside a flow run (a script): the event is still emitted
        log = logging.getLogger(__name__)
    rows = run_query(root, "regressions", {"run_a": previous_run_id, "run_b": run_id, "scope": "method"}).to_pylist()
    emitted: list[dict[str, Any]] = []
    for r in rows:
        if not r["regressed"] or not r["run_a"]:
            continue
        payload = {
            "dataset": r["dataset"],
            "model": r["model"],
            "method": r["method"],
            "deployment": deployment,
            "run_a": r["run_a"],
            "run_b": r["run_b"],
            "accuracy_a": r["accuracy_a"],
            "accuracy_b": r["accuracy_b"],
            "change": r["change"],
            "p_value": r["p_value"],
            "n_broken": r["n_broken"],  # right in run_a, wrong in run_b
            "n_fixed": r["n_fixed"],  # wrong in run_a, right in run_b
            "n_paired": r["n_paired"],
        }
        resource = {
            "prefect.resource.id": f"abs-eval.run.{run_id}",
            "prefect.resource.name": f"{r['dataset']} x {r['model']} run {run_id}",
            "abs-eval.dataset": str(r["dataset"]),
            "abs-eval.model": str(r["model"]),
            "abs-eval.method": str(r["method"]),
            "abs-eval.deployment": str(deployment or ""),
        }
        emit_event(event=REGRESSION_EVENT, resource=resource, payload=payload)
        log.warning(
            "accuracy of %s dropped significantly since run %s: %.4f -> %.4f (%d right -> wrong, %d wrong -> right, "
            "McNemar p = %.3g); event %s emitted",
            r["method"],
            r["run_a"],
            r["accuracy_a"],
            r["accuracy_b"],
            r["n_broken"],
            r["n_fixed"],
            r["p_value"],
            REGRESSION_EVENT,
        )
        emitted.append(payload)
    return emitted


def _evaluate_run_name() -> str:
    """``imagenet x ViT-B-16 2026-11-28 03:00``: what a person looks for in the UI."""
    from prefect.runtime import flow_run

    p = flow_run.parameters.get("params") or {}
    p = p.model_dump() if isinstance(p, EvaluateParams) else dict(p)
    return f"{p.get('dataset', '?')} x {p.get('clip_model', '?')} {datetime.now(timezone.utc):%Y-%m-%d %H:%M}"


def _reevaluate_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    names = [d.get("dataset", "?") for d in (p.get("datasets") or [])]
    shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    # parentheses, not square brackets: Rich (``prefect flow-run ls``) reads "[shapesA]" as markup and drops it
    return f"reevaluate {p.get('deployment') or ''} ({shown}) {datetime.now(timezone.utc):%Y-%m-%d %H:%M}".replace(
        "  ", " "
    )


@flow(name="evaluate", log_prints=True, flow_run_name=_evaluate_run_name)
def evaluate(params: EvaluateParams) -> dict[str, Any]:
    """Evaluate ABS and the baselines on one dataset with one CLIP model.

    ``params.source`` is the dataset as downloaded (any fsspec URL) read with
    ``params.layout``; omit it to reuse shards already under ``params.root``.
    ``params.descriptions`` is a description file (CuPL JSON, attribute lists,
    templates); omit it to use the set already stored under ``descriptions_name``.
    Returns the run's summary (run id, config, counts, accuracy rows, report path).
    """
    if isinstance(params, dict):  # a plain dict from a script; Prefect coerces it on its own
        params = make_params(**params)
    return run_cell(params)


def run_cell(params: EvaluateParams) -> dict[str, Any]:
    """One cell: :func:`run_evaluation`, or a sweep when its ``abs_config`` lists values (``flows.sweep``:
    the settings that change the crop draws run the models, the others are scored from stored features)."""
    from flows.params import abs_axes

    if not abs_axes(params):
        return run_evaluation(params, preflight(params))
    from flows.sweep import run_sweep

    return run_sweep(params, run_evaluation, deployment_label(params.deployment))


@flow(name="reevaluate", log_prints=True, flow_run_name=_reevaluate_run_name)
def reevaluate(
    datasets: list[dict[str, Any]],
    models: list[dict[str, Any]] | None = None,
    root: str = DEFAULT_ROOT,
    deployment: str | None = None,
    defaults: dict[str, Any] | None = None,
    raise_on_failure: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every dataset x model. ``datasets``: EvaluateParams fields per dataset
    (``dataset``, ``source``, ``layout``, ``descriptions`` ...); ``models``: fields per
    model (``clip_model``, ``clip_pretrained`` ...); ``defaults`` apply to all.

    Returns one summary per cell (``status`` completed or failed, with the run id or the
    error). A failed cell fails the flow run at the end (so a scheduled run shows it),
    unless ``raise_on_failure`` is false (the CLI prints its own table instead)."""
    log = get_run_logger()
    from flows.matrix import job_cells  # the merge order of the command line and matrix files too

    cells = [
        make_params(**c) for c in job_cells(datasets, models, root=root, deployment=deployment, defaults=defaults)
    ]  # every cell's fields checked before any work
    results, failed = [], []
    for params in cells:
        name = f"{params.dataset} x {params.clip_model}/{params.clip_pretrained or 'random'}"
        try:
            results.append({"job": name, "status": "completed", **run_cell(params)})
        except Exception as exc:  # one broken cell must not cancel the week's other results
            log.error("%s failed: %s", name, exc)
            failed.append(name)
            results.append({"job": name, "status": "failed", "error": str(exc)})
    if failed and raise_on_failure:
        raise RuntimeError(f"{len(failed)} of {len(cells)} evaluations failed: {failed}")
    return results
