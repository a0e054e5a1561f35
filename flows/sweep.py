"""A sweep over method parameters in one job: which points run the models, which are scored from features.

A cell whose ``abs_config`` lists values (``top_k: [10, 20, 40]``, ``tau: [0.01, 0.03, 0.05]``, and the
sweep-only axes ``crop_kinds`` and ``matching``: ``flows.params.abs_axes``) is a sweep: every combination
of the values is a point. Each point is a configuration like any other, with its own ``config=`` partition
and run record, but the job computes as little as it can:

* the dataset is sharded once and the descriptions imported once (the first inference run does it; the
  others reuse the committed shards and stored set);
* the DINO cache is computed once: its key is the DINO weights and preprocessing, not the method, so
  every inference run with the same ``max_image_side`` reads the same parts;
* the text bank is encoded once: its key is the CLIP weights, descriptions, M, prompt and templates;
* points whose settings change the crop draws (``top_k``, ``alpha`` / ``beta``, ``tau_sample``, ``seed``,
  ``max_image_side``, an ``n_crops`` above the base's) run the models, each as its own partition
  (its *source run*, :class:`SourceRun`), keeping its crop features when other points need them;
* the other points (``tau``, ``n_descriptions`` M' <= M, ``crop_kinds`` raw / feature, ``matching:
  average``, ``n_crops`` N' < N) are scored from the stored crop features of the source run whose draws
  they share, by the variants step (``flows.analyze``, ``abs_model.variants``): no model forward.

Which source run a point comes from (:func:`plan_sweep`): the point with ``tau`` and M at the base's,
N and the crop branches at least the base's. So a point equal to a fresh run (tau, M', one branch)
gets exactly the fresh run's partition and rows (within the README's score tolerance); an N' < N
point is the first N' crops of each branch, a statistically equivalent sample (its partition says
``crops_prefix_of``); plain averaging is what no run does (``matching: average`` in its settings).
M' above the base's M is refused (the stored description set keeps the base's first M per class):
set the base ``n_descriptions`` to the largest value.

Labels: each source run is ``<deployment>:<what differs from the base>`` (the base itself: the
deployment), each point from features ``<its source run's label>:<what differs from it>`` (the
variants step's rule), so ``regressions`` compares each point with the same point of the previous job.
The log and the command's table say for every point whether the models ran or it came from features.
A source run's report is published before its points from features exist, so scoring them rewrites that
report with the sensitivity section and publishes it again (``flows.variant_report``; not with ``report``
off).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from abs_model import ABSConfig
from abs_model.variants import CROP_KINDS, VariantSpec
from flows.params import EvaluateParams, ParameterError, abs_axes, point_config, preflight, sweep_points
from tasks.run.evalspec import EvalSpec

__all__ = [
    "COMPUTED_BY_FEATURES",
    "COMPUTED_BY_MODEL",
    "SourceRun",
    "SweepPoint",
    "plan_sweep",
    "run_sweep",
    "sweep_rows",
]

#: How a point was computed, as the summary, the log and the command's table say it.
COMPUTED_BY_MODEL = "model"
COMPUTED_BY_FEATURES = "features"
#: The ``ABSConfig`` fields a point may change and still be scored from another run's stored crop features.
FROM_FEATURES = ("tau", "n_descriptions", "n_crops", "raw_crops", "feature_crops")


@dataclass(frozen=True)
class SweepPoint:
    """One combination of the axes' values."""

    setting: dict[str, Any]
    """The point as the axes write it, e.g. ``{"top_k": 10, "tau": 0.05}``."""
    config: ABSConfig
    matching: str
    name: str
    """What differs from the cell's base, e.g. ``top_k=10,tau=0.05`` (``base``: nothing)."""

    @property
    def spec(self) -> VariantSpec:
        kinds = next(k for k, v in CROP_KINDS.items() if v == (self.config.raw_crops, self.config.feature_crops))
        return VariantSpec(self.config.n_crops, kinds, self.config.n_descriptions, self.config.tau, self.matching)


@dataclass
class SourceRun:
    """One configuration the models run (a partition of its own) and the points it gives."""

    config: ABSConfig
    name: str
    """What differs from the cell's base (``base``: nothing), the suffix of its deployment label."""
    own: SweepPoint | None = None
    """The point this run is itself; ``None``: run only for the features other points are scored from."""
    variants: list[SweepPoint] = field(default_factory=list)
    """Points scored from this run's stored crop features."""

    @property
    def keeps_features(self) -> bool:
        return bool(self.variants)


def _name(config: ABSConfig, matching: str, base: ABSConfig) -> str:
    diff = [
        f"{f.name}={_short(getattr(config, f.name))}"
        for f in fields(ABSConfig)
        if f.name not in ("raw_crops", "feature_crops") and getattr(config, f.name) != getattr(base, f.name)
    ]
    branches = (config.raw_crops, config.feature_crops)
    if branches != (base.raw_crops, base.feature_crops):
        diff.append("crop_kinds=" + next(k for k, v in CROP_KINDS.items() if v == branches))
    if matching != "soft":
        diff.append(f"matching={matching}")
    return ",".join(diff) or "base"


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def plan_sweep(base: ABSConfig, points: list[dict[str, Any]]) -> list[SourceRun]:
    """The source runs of a sweep over ``points`` (``flows.params.sweep_points``) around ``base``, in the
    order their first point appears; each point is a source run's own point or one of its variants.

    A point's source: the point with ``tau`` and M at the base's, N the larger of the point's and the
    base's, and every crop branch the base or the point uses. :class:`ParameterError` for an M' above
    the base's M (module docstring)."""
    grouped: dict[ABSConfig, list[SweepPoint]] = {}  # by the draws: the source with the base's branches
    for setting in points:
        config, matching = point_config(base, setting)
        if config.n_descriptions > base.n_descriptions:
            raise ParameterError(
                f"abs_config sweep: n_descriptions={config.n_descriptions} is above the base's "
                f"M={base.n_descriptions} (the stored description set keeps the first M per class): "
                "set abs_config.n_descriptions to the largest value; smaller ones are scored from "
                "the stored crop features"
            )
        draws = replace(
            config,
            tau=base.tau,
            n_descriptions=base.n_descriptions,
            n_crops=max(config.n_crops, base.n_crops),
            raw_crops=base.raw_crops,
            feature_crops=base.feature_crops,
        )
        grouped.setdefault(draws, []).append(SweepPoint(dict(setting), config, matching, _name(config, matching, base)))
    runs = []
    for draws, members in grouped.items():
        # the crop branches any point of the group scores (a branch changes no draw, only the model passes)
        source = replace(
            draws,
            raw_crops=any(p.config.raw_crops for p in members) or base.raw_crops,
            feature_crops=any(p.config.feature_crops for p in members) or base.feature_crops,
        )
        run = SourceRun(source, _name(source, "soft", base))
        for point in members:
            if point.spec == VariantSpec.of(source):
                run.own = point
            elif point not in run.variants:
                run.variants.append(point)
        runs.append(run)
    return runs


def _log():
    import logging

    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def run_sweep(
    params: EvaluateParams, evaluate_one: Callable[[EvaluateParams, EvalSpec], dict[str, Any]], deployment: str
) -> dict[str, Any]:
    """Evaluate every point of the cell ``params`` (its ``abs_config`` has axes): the source runs through
    ``evaluate_one`` (``flows.evaluate.run_evaluation``), then the other points from their stored features
    (``flows.analyze.analyze``). ``deployment``: the cell's label. Returns the cell's summary: the first
    source run's fields, ``runs`` (every source run's summary) and ``points`` (one entry per point: its
    name, ``computed_by`` model or features, run id, config, whether it equals a fresh run)."""
    from flows.analyze import VariantError, analyze

    log = _log()
    spec = preflight(params)  # the base: dataset, descriptions; every point was checked by static_problems
    plan = plan_sweep(spec.abs, sweep_points(params))
    n_points = sum(int(r.own is not None) + len(r.variants) for r in plan)
    n_features = sum(len(r.variants) for r in plan)
    log.info(
        "sweep over %s: %d points; the models run %d configuration(s) (%s), %d point(s) are scored from "
        "their stored crop features (no model forward); shards, DINO cache and text bank are computed once",
        ", ".join(f"{k}={v}" for k, v in abs_axes(params).items()),
        n_points,
        len(plan),
        "; ".join(r.name for r in plan),
        n_features,
    )
    runs: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    for i, source in enumerate(plan):
        label = deployment if source.name == "base" else f"{deployment}:{source.name}"
        keep = params.keep_features or source.keeps_features
        run_params = params.model_copy(
            update={
                "abs_config": source.config.to_dict(),
                "keep_features": keep,
                "deployment": label,
                # the first run shards and imports; the others reuse what it committed
                "source": params.source if i == 0 else None,
                "descriptions": params.descriptions if i == 0 else None,
            }
        )
        t0 = time.perf_counter()
        out = evaluate_one(run_params, replace(spec, abs=source.config, keep_features=keep))
        seconds = time.perf_counter() - t0
        runs.append(out)
        what = source.own.name if source.own is not None else f"{source.name} (run for its features only)"
        log.info("point %s: the models ran (run %s, config %s, %.1f s)", what, out["run_id"], out["config"], seconds)
        if source.own is not None:
            points.append(_point(source.own, COMPUTED_BY_MODEL, out["run_id"], out["config"], None, True, seconds))
        if not source.variants:
            continue
        try:
            # the source run's report was written before its variants existed: rewritten (and published
            # again) with the sensitivity section, unless the cell writes no report
            done = analyze(
                params.root,
                variants=[p.spec for p in source.variants],
                run_id=out["run_id"],
                device=params.device,
                report=None if params.report else False,
            )
        except VariantError as exc:
            raise ParameterError(f"sweep points from run {out['run_id']}: {exc}") from None
        for point, v in zip(source.variants, done.variants):
            how = (
                "equals a fresh run"
                if v.equals_fresh_run
                else "the first crops of each branch: a statistically equivalent sample"
                if point.spec.is_prefix(source.config)
                else "plain description averaging"
            )
            log.info(
                "point %s: from the stored crop features of run %s, no model forward (run %s, config %s, %.2f s; %s)",
                point.name,
                out["run_id"],
                v.run_id,
                v.config,
                v.seconds,
                how,
            )
            points.append(
                _point(point, COMPUTED_BY_FEATURES, v.run_id, v.config, out["run_id"], v.equals_fresh_run, v.seconds)
            )
    first = runs[0]
    return {
        **first,
        "deployment": deployment,
        "sweep": True,
        "runs": runs,
        "points": points,
        "regressions": [g for r in runs for g in r.get("regressions") or []],
    }


def _point(
    point: SweepPoint, computed_by: str, run_id: str, config: str, of_run: str | None, fresh: bool, seconds: float
) -> dict[str, Any]:
    return {
        "point": point.name,
        "setting": point.setting,
        "computed_by": computed_by,
        "run_id": run_id,
        "config": config,
        "of_run": of_run,
        "equals_fresh_run": fresh,
        "seconds": round(seconds, 3),
    }


def sweep_rows(root: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per point of a sweep's summary: how it was computed and its ``abs`` accuracy with the 95%
    interval (the SQL ``accuracy`` view), for the command's table."""
    from tasks.results.catalog import run_query

    ids = [p["run_id"] for p in summary["points"]]
    listed = ", ".join(f"'{i}'" for i in ids)  # run ids: timestamps, hex and dashes
    acc = (
        {
            r["run_id"]: r
            for r in run_query(root, f"SELECT * FROM accuracy_of([{listed}]) WHERE method = 'abs'").to_pylist()
        }
        if ids
        else {}
    )
    rows = []
    for p in summary["points"]:
        a = acc.get(p["run_id"]) or {}
        rows.append(
            {
                "point": p["point"],
                "computed_by": p["computed_by"],
                "abs_accuracy": a.get("accuracy"),
                "ci_low": a.get("ci_low"),
                "ci_high": a.get("ci_high"),
                "n": a.get("n"),
                "fresh_equal": p["equals_fresh_run"],
                "seconds": p["seconds"],
                "run_id": p["run_id"],
            }
        )
    return rows
