"""``abs-eval analyze``: ABS variants of a completed run, scored from the crop features it kept.

The paper's ablations and sensitivity curves (N, M, tau, raw-space / feature-space crops, soft
matching against plain averaging) from ONE evaluation: no model runs, the variants are scored from
the run's stored crop features and its cached text bank (``abs_model.variants``). Per variant:

* its partition: the hash of its prediction settings (``tasks.steps.variants.variant_settings``);
  a variant that equals a fresh run (tau, M', one crop branch) shares that run's partition;
* its run record, what every SQL view joins on: run id ``<run id>-<8 hex of its config>`` (the same
  on every rerun, so analyze finds its own), deployment ``<the run's deployment>:<what differs>``
  (e.g. ``weekly:tau=0.05``: the previous run of a deployment never becomes a variant, and the same
  variant of successive runs is one series that ``regressions`` compares), ``started_at`` one
  microsecond before the run's own (the run stays the latest of its dataset and model, which
  ``export`` and the default run pair pick), ``config_json["variant"]``: of which run, what differs,
  whether it equals a fresh run. Written ``running`` with a heartbeat, then ``completed``;
* shard by shard, ``tasks.steps.variants.variant_parts``: the shard's rows and crop features are read
  once and every variant not yet committed there is scored by one ``abs_model.variants.sweep_logits``
  call (the variants share the crop x description products and one exponential pass per tau), then
  each variant's part is committed; a committed part is reused, so a rerun computes nothing and an
  interrupted analysis resumes. The run records are started before the first shard and finished
  after the last (``failed``, those not finished, when anything raises);
* at the end, the run's report (``flows.variant_report``): ``report.md``, its plots and gallery rewritten
  where the evaluate flow wrote them, now with the sensitivity section, and, where a Prefect API is
  configured, published as one more version of the run's report artifact.

Why a plain function and not a Prefect flow: nothing here loads a model or needs a worker pool; per
shard it is two Parquet reads, the shared scoring and a commit per variant (seconds for a shard of
1,000 images on a GPU), so the ~45 s a local Prefect API takes to start would be most of the time.
It writes like ``abs-eval shard`` does: committed units and run records, resumable without Prefect.
The per-shard step is a plain function like the other steps, so a flow can map it (issue 20, item 2).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from abs_model.variants import VariantSpec, sweep
from flows.variant_report import ReportUpdate, update_report
from tasks.results.runs import COMPLETED, FAILED, RunRecord, RunTracker, effective_status, list_run_ids, read_run
from tasks.run.evalspec import short_hash
from tasks.steps.variants import (
    AnalyzedRun,
    VariantError,
    VariantPartResult,
    VariantTarget,
    find_text_bank,
    missing_features,
    variant_parts,
    variant_settings,
)
from tasks.store import Storage, as_storage, commits
from tasks.store.datasets import read_dataset_info
from tasks.store.paths import features_part, part_markers, prediction_part

__all__ = [
    "Analysis",
    "ReportUpdate",
    "VariantError",
    "VariantRun",
    "analyze",
    "parse_axes",
    "runs_with_features",
    "summary_rows",
]

#: The ``abs-eval analyze`` option of each variant field (for messages), and how its values are read.
OPTIONS: dict[str, tuple[str, type]] = {
    "n_crops": ("--n-crops", int),
    "n_descriptions": ("--m", int),
    "tau": ("--tau", float),
    "crop_kinds": ("--kinds", str),
}


@dataclass(frozen=True)
class VariantRun:
    """One variant as analysed: its run, partition and what this call computed."""

    name: str
    run_id: str
    config: str
    deployment: str
    equals_fresh_run: bool
    shards_computed: int
    shards_reused: int
    n_images: int
    seconds: float
    """Its share of each computed shard's reads and shared scoring, plus its own commits (0 when nothing was computed)."""
    setting: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Analysis:
    run: AnalyzedRun
    variants: list[VariantRun]
    report: ReportUpdate | None = None
    """The run's report after the analysis (``flows.variant_report``); ``None``: not looked at (``report=False``)."""


def parse_axes(
    n_crops: str | None = None,
    m: str | None = None,
    tau: str | None = None,
    kinds: str | None = None,
    plain_averaging: bool = False,
) -> dict[str, list[Any]]:
    """The sweep axes from the command's comma-separated options (``{VariantSpec field: values}``)."""
    axes: dict[str, list[Any]] = {}
    for name, text in (("n_crops", n_crops), ("n_descriptions", m), ("tau", tau), ("crop_kinds", kinds)):
        if not text:
            continue
        option, kind = OPTIONS[name]
        try:
            axes[name] = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise VariantError(f"{option} {text!r}: expected comma-separated {kind.__name__} values") from None
    if plain_averaging:
        axes["matching"] = ["soft", "average"]
    return axes


def _is_variant(record: Mapping[str, Any]) -> bool:
    cfg = record.get("config_json")
    return isinstance(cfg, dict) and bool(cfg.get("variant"))


def runs_with_features(root: str | Storage) -> list[str]:
    """Completed runs (not variants) whose partition kept crop features, newest first."""
    st = as_storage(root)
    out = []
    for rid in list_run_ids(st):
        try:
            rec = read_run(st, rid)
        except (KeyError, OSError, ValueError):
            continue
        if effective_status(rec) != COMPLETED or _is_variant(rec) or not rec.get("config"):
            continue
        features = posixpath.dirname(features_part(rec["dataset"], rec["model"], rec["config"], 0))
        if st.glob(part_markers(features)):
            out.append(rid)
    return out


def _load_run(st: Storage, run_id: str | None) -> AnalyzedRun:
    if run_id is None:
        found = runs_with_features(st)
        if not found:
            raise VariantError(
                f"no completed run under {st.root} kept its crop features: evaluate with "
                "--keep-features (a rerun of a completed run computes only the features)"
            )
        run_id = found[0]
    try:
        rec = read_run(st, run_id)
    except KeyError as exc:
        raise VariantError(str(exc.args[0])) from None
    status = effective_status(rec)
    if status != COMPLETED:
        raise VariantError(f"run {run_id} is {status}: analyze a completed run")
    if _is_variant(rec):
        raise VariantError(
            f"run {run_id} is itself a variant of run {rec['config_json']['variant'].get('of_run')}: analyze that run"
        )
    return AnalyzedRun.from_record(rec)


def _variant_record(
    run: AnalyzedRun, spec: VariantSpec, settings: dict[str, Any], config: str, run_id: str, reused: list[int]
) -> RunRecord:
    rec = run.record
    name = spec.name(run.spec)
    found = rec.get("config_json")
    cfg: dict[str, Any] = found if isinstance(found, dict) else {}
    spec_d = {**(cfg.get("spec") or {}), "abs": settings["abs"], "keep_features": False}
    started = datetime.fromisoformat(str(rec["started_at"])) - timedelta(microseconds=1)
    return RunRecord(
        run_id=run_id,
        dataset=run.dataset,
        model=run.model,
        config=config,
        deployment=f"{rec.get('deployment') or 'manual'}:{name}",
        started_at=started,
        shards_total=int(rec.get("shards_total") or 0),
        shards_reused=len(reused),
        reused_shards=list(reused),
        clip_model=rec.get("clip_model") or "",
        clip_pretrained=rec.get("clip_pretrained") or "",
        clip_weights_digest=rec.get("clip_weights_digest") or "",
        dino_model=rec.get("dino_model") or "",
        dino_pretrained=rec.get("dino_pretrained") or "",
        dino_weights_digest=rec.get("dino_weights_digest") or "",
        descriptions_hash=rec.get("descriptions_hash") or "",
        config_json={
            "spec": spec_d,
            "numbers": settings,
            "variant": {
                "of_run": run.run_id,
                "of_config": run.config,
                "name": name,
                "setting": spec.to_dict(),
                "equals_fresh_run": spec.equals_fresh_run(run.abs),
            },
        },
        model_geometry=dict(rec.get("model_geometry") or {}),
    )


@dataclass(frozen=True)
class _Plan:
    """One variant before the shard loop: its partition, run id, record and what is already committed."""

    spec: VariantSpec
    config: str
    run_id: str
    record: RunRecord
    done: list[int]
    """The shards whose part is committed."""
    complete: bool
    """Every part committed and its record completed: the variant is not touched."""
    n_images: int
    """The completed record's image count (0 otherwise)."""


def _plan(st: Storage, run: AnalyzedRun, spec: VariantSpec, shards: list[int]) -> _Plan:
    settings = variant_settings(run, spec)
    config = short_hash(settings)
    vid = f"{run.run_id}-{config[:8]}"
    done = [s for s in shards if commits.committed(st, prediction_part(run.dataset, run.model, config, s)) is not None]
    try:
        existing: dict[str, Any] | None = read_run(st, vid)
    except KeyError:
        existing = None
    complete = existing is not None and effective_status(existing) == COMPLETED and len(done) == len(shards)
    n_images = int(existing.get("n_images") or 0) if complete and existing is not None else 0
    return _Plan(spec, config, vid, _variant_record(run, spec, settings, config, vid, done), done, complete, n_images)


def _variant_run(
    run: AnalyzedRun, plan: _Plan, computed: int, reused: int, n_images: int, seconds: float
) -> VariantRun:
    spec = plan.spec
    return VariantRun(
        spec.name(run.spec),
        plan.run_id,
        plan.config,
        plan.record.deployment,
        spec.equals_fresh_run(run.abs),
        computed,
        reused,
        n_images,
        seconds,
        spec.to_dict(),
    )


def analyze(
    root: str | Storage,
    axes: Mapping[str, Sequence[Any]] | None = None,
    *,
    variants: Sequence[VariantSpec] = (),
    run_id: str | None = None,
    cross: bool = False,
    device: str = "cpu",
    report: bool | None = None,
    publish: bool | None = None,
    exact: bool = True,
) -> Analysis:
    """Score the variants of run ``run_id`` (default: the latest completed run that kept its features).

    ``axes``: ``{VariantSpec field: values}``, swept one field at a time, or every combination with
    ``cross`` (``abs_model.variants.sweep``); ``variants``: further settings as they are. Every setting
    and every shard's features are checked before any work (:class:`VariantError`, one line).
    Then the run's report (``flows.variant_report.update_report``): ``report`` None rewrites it with the
    sensitivity section when it is stale, True always, False never; ``publish`` None publishes the
    artifact when a Prefect API is configured, True always, False never. ``exact`` (``sweep_logits``): True keeps
    the variants a fresh run scores with the same call (another tau, raw crops only) bit for bit equal to it;
    False shares their work too (equal within rounding, about half the matching time of a tau sweep).
    """
    st = as_storage(root)
    run = _load_run(st, run_id)
    try:
        info = read_dataset_info(st, run.dataset)
    except (FileNotFoundError, RuntimeError) as exc:
        raise VariantError(str(exc)) from None
    if info.fingerprint != run.settings.get("dataset_fingerprint"):
        raise VariantError(
            f"dataset {run.dataset!r} was sharded again since run {run.run_id}: its rows and the "
            "dataset's class list may no longer match"
        )
    shards = run.shards(st)
    if not shards:
        raise VariantError(f"run {run.run_id}: no committed prediction part under config={run.config}")
    missing = missing_features(st, run, shards)
    if missing:
        raise VariantError(
            f"run {run.run_id} kept no crop features for shards {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}: evaluate it again with --keep-features (a rerun "
            "computes only the missing features)"
        )
    try:
        specs = list(dict.fromkeys([*variants, *sweep(run.spec, dict(axes or {}), cross)]))
        for spec in specs:
            spec.check_against(run.abs)
    except ValueError as exc:
        raise VariantError(f"run {run.run_id} (N={run.abs.n_crops}, M={run.abs.n_descriptions}): {exc}") from None
    if run.spec in specs:
        raise VariantError(f"{run.spec} is the run's own setting: its rows are the run's")
    if not specs:
        raise VariantError(
            "no variant asked for: give --n-crops, --m, --tau, --kinds or --plain-averaging "
            "(values other than the run's own)"
        )
    plans = [_plan(st, run, spec, shards) for spec in specs]
    out = {i: _variant_run(run, p, 0, len(shards), p.n_images, 0.0) for i, p in enumerate(plans) if p.complete}
    active = [i for i in range(len(plans)) if i not in out]
    targets = [VariantTarget(plans[i].spec, plans[i].config, plans[i].run_id) for i in active]
    results: dict[int, list[VariantPartResult]] = {i: [] for i in active}
    trackers: dict[int, RunTracker] = {}
    finished: set[int] = set()
    text = None
    try:
        for i in active:
            trackers[i] = RunTracker(st, plans[i].record).start()
        # shard outer, variants inner: each shard's rows and features are read once, its variants scored together
        for s in shards:
            if not targets:
                break
            if text is None and any(s not in plans[i].done for i in active):
                text = find_text_bank(st, run, info)
            parts = variant_parts(
                st, run, targets, text=text, classnames=list(info.classnames), shard=s, device=device, exact=exact
            )
            for i, part in zip(active, parts):
                results[i].append(part)
        for i in active:
            rs = results[i]
            computed = sum(r.computed for r in rs)
            n_images = sum(r.n_images for r in rs)
            trackers[i].finish(
                COMPLETED,
                n_images=n_images,
                n_ok=sum(r.n_ok for r in rs),
                n_error=sum(r.n_error for r in rs),
                shards_computed=computed,
                shards_reused=len(rs) - computed,
            )
            finished.add(i)
            out[i] = _variant_run(run, plans[i], computed, len(rs) - computed, n_images, sum(r.seconds for r in rs))
    except BaseException:
        for i, tracker in trackers.items():
            if i not in finished:
                tracker.finish(FAILED)
        raise
    variant_runs = [out[i] for i in range(len(plans))]
    update = None
    if report is not False:
        update = update_report(
            st,
            run.record,
            [v.name for v in variant_runs],
            computed=any(v.shards_computed for v in variant_runs),
            write=report,
            publish=publish,
        )
    return Analysis(run, variant_runs, update)


def summary_rows(root: str | Storage, analysis: Analysis) -> list[dict[str, Any]]:
    """One row per variant (the run itself first): ``abs`` accuracy with its 95% interval from the SQL
    ``accuracy`` view, and what this call computed."""
    from tasks.results.catalog import run_query

    ids = [analysis.run.run_id] + [v.run_id for v in analysis.variants]
    listed = ", ".join(f"'{i}'" for i in ids)  # run ids: timestamps, hex and dashes
    acc = {
        r["run_id"]: r
        for r in run_query(root, f"SELECT * FROM accuracy_of([{listed}]) WHERE method = 'abs'").to_pylist()
    }
    rows = []
    for rid, name, fresh, computed, reused in [(analysis.run.run_id, "run", True, 0, 0)] + [
        (v.run_id, v.name, v.equals_fresh_run, v.shards_computed, v.shards_reused) for v in analysis.variants
    ]:
        a = acc.get(rid) or {}
        rows.append(
            {
                "variant": name,
                "abs_accuracy": a.get("accuracy"),
                "ci_low": a.get("ci_low"),
                "ci_high": a.get("ci_high"),
                "n": a.get("n"),
                "fresh_equal": fresh,
                "computed": computed,
                "reused": reused,
                "run_id": rid,
            }
        )
    return rows
