"""A sweep over method parameters in one job (``flows.sweep``): model runs only where the draws change.

The plan first (no model): which points run the models, which come from which run's stored
features. Then one real ``evaluate`` flow (a temporary Prefect server, tiny random-weight models,
24 generated images in 3 shards) over ``top_k: [5, 3] x tau: [0.03, 0.05] x crop_kinds: [both, raw]``:
two inference partitions (top_k changes the draws), six points from stored features. Checked: each
point is its own partition; the points from features have the partition and the rows of fresh runs
with those settings (evaluated in another root; exact for tau and raw-only, else within the README's
score tolerance); the shards, the DINO cache and the text bank were written once, before the first
inference run ended, and never again; the command's table says how each point was computed.
"""

from __future__ import annotations

import os
from datetime import datetime

import pytest
from common import TINY_FLOW_PARAMS, demo_source
from flow_helpers import assert_same_predictions, predictions

AXES = {"top_k": [5, 3], "tau": [0.03, 0.05], "crop_kinds": ["both", "raw"]}
BASE = {"n_crops": 6, "n_descriptions": 6}
#: Points from stored features -> the abs_config of the fresh run with that setting.
FRESH = {"top_k=3,tau=0.05": {"top_k": 3, "tau": 0.05}, "top_k=5,crop_kinds=raw": {"top_k": 5, "feature_crops": False}}


def _params(root: str, abs_config: dict) -> dict:
    return dict(
        TINY_FLOW_PARAMS,
        dataset="demo",
        root=root,
        images_per_shard=8,
        deployment="sweep",
        report=False,
        abs_config={**BASE, **abs_config},
    )


# ---------------------------------------------------------------------- the plan
def test_the_plan_runs_the_models_only_where_the_draws_change():
    from abs_model import ABSConfig
    from flows.params import ParameterError
    from flows.sweep import plan_sweep

    base = ABSConfig(n_crops=60, n_descriptions=50)
    points = [{"top_k": k, "tau": t, "n_crops": n} for k in (10, 20) for t in (0.03, 0.05) for n in (30, 60, 80)]
    plan = plan_sweep(base, points)
    assert [(r.name, r.own.name if r.own else None, [p.name for p in r.variants]) for r in plan] == [
        ("top_k=10", "top_k=10", ["top_k=10,n_crops=30", "top_k=10,n_crops=30,tau=0.05", "top_k=10,tau=0.05"]),
        ("top_k=10,n_crops=80", "top_k=10,n_crops=80", ["top_k=10,n_crops=80,tau=0.05"]),
        ("base", "base", ["n_crops=30", "n_crops=30,tau=0.05", "tau=0.05"]),
        ("n_crops=80", "n_crops=80", ["n_crops=80,tau=0.05"]),
    ]
    assert all(p.spec.is_prefix(r.config) == (p.config.n_crops == 30) for r in plan for p in r.variants)
    # points that change no draw come from one run, which need not be a point itself
    plan = plan_sweep(base, [{"tau": 0.01}, {"crop_kinds": "feature", "matching": "average"}, {"n_descriptions": 10}])
    assert len(plan) == 1 and plan[0].own is None and plan[0].keeps_features
    assert [p.name for p in plan[0].variants] == [
        "tau=0.01",
        "crop_kinds=feature,matching=average",
        "n_descriptions=10",
    ]
    # a raw-only base gives feature-only points from a run with both branches
    raw = ABSConfig(feature_crops=False)
    plan = plan_sweep(raw, [{"crop_kinds": "raw"}, {"crop_kinds": "feature"}])
    assert [(r.config.raw_crops, r.config.feature_crops) for r in plan] == [(True, True)]
    assert [p.name for p in plan[0].variants] == ["base", "crop_kinds=feature"]
    with pytest.raises(ParameterError, match="above the base's M=50"):
        plan_sweep(base, [{"n_descriptions": 80}])


# ---------------------------------------------------------------------- one sweep through the flow
@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return demo_source(tmp_path_factory, per_class=2)


@pytest.fixture(scope="module")
def swept(prefect_server, source, tmp_path_factory):
    from flows.evaluate import evaluate

    images, desc = source
    root = str(tmp_path_factory.mktemp("root-sweep"))
    out = evaluate(dict(_params(root, AXES), source=images, descriptions=desc))
    return root, out


@pytest.fixture(scope="module")
def fresh(prefect_server, source, tmp_path_factory):
    from flows.evaluate import evaluate

    images, desc = source
    root = str(tmp_path_factory.mktemp("root-sweep-fresh"))
    out = {}
    for i, (name, change) in enumerate(FRESH.items()):
        first = dict(source=images, descriptions=desc) if i == 0 else {}
        out[name] = evaluate(dict(_params(root, change), **first))
    return root, out


def test_every_point_has_its_partition_and_says_how_it_was_computed(swept):
    root, out = swept
    points = {p["point"]: p for p in out["points"]}
    assert set(points) == {
        f"top_k={k}" + t + c for k in (5, 3) for t in ("", ",tau=0.05") for c in ("", ",crop_kinds=raw")
    }
    by_model = {n for n, p in points.items() if p["computed_by"] == "model"}
    assert by_model == {"top_k=5", "top_k=3"}  # top_k changes the draws: the models run
    assert len({p["config"] for p in points.values()}) == 8  # every point its own partition
    for name, p in points.items():
        if p["computed_by"] == "features":
            source = points[name.split(",")[0]]
            assert p["of_run"] == source["run_id"] and p["equals_fresh_run"] is True
    configs = {d.split("=", 1)[1] for d in os.listdir(f"{root}/predictions/dataset=demo/model=abs-tiny-vit-b16")}
    assert configs == {p["config"] for p in points.values()}
    assert [r["deployment"] for r in out["runs"]] == ["sweep:top_k=5", "sweep:top_k=3"]


def test_points_from_features_equal_fresh_runs(swept, fresh):
    root, out = swept
    fresh_root, runs = fresh
    points = {p["point"]: p for p in out["points"]}
    for name, run in runs.items():
        assert points[name]["config"] == run["config"], name  # the fresh run's partition
        got = [r for r in predictions(root) if r[2] == run["config"]]
        want = [r for r in predictions(fresh_root) if r[2] == run["config"]]
        assert len(got) == 24 * 3
        assert_same_predictions(got, want)
        assert got == want, name  # tau and raw-only: the same numbers through the same calls


def _written(root: str, *folders: str) -> dict[str, int]:
    """mtime (ns) of every file under ``folders`` of ``root`` and of their done-markers."""
    out = {}
    for top in (root, os.path.join(root, "_commits")):
        for folder in folders:
            for d, _, files in os.walk(os.path.join(top, folder)):
                for f in files:
                    out[os.path.relpath(os.path.join(d, f), root)] = os.stat(os.path.join(d, f)).st_mtime_ns
    return out


def test_shards_dino_cache_and_text_bank_are_computed_once(swept):
    from tasks.results.runs import read_run
    from tasks.store import Storage

    root, out = swept
    first = read_run(Storage(root), out["runs"][0]["run_id"])
    ended = datetime.fromisoformat(str(first["ended_at"])).timestamp() * 1e9
    written = _written(root, "shards", "cache/dino", "cache/text")
    dino = [p for p in written if p.startswith("cache/dino") and p.endswith(".parquet")]
    text = [p for p in written if p.startswith("cache/text") and p.endswith(".parquet")]
    assert len(dino) == 3 and len(text) == 1  # one DINO key (3 shards), one text bank
    late = {p: t for p, t in written.items() if t > ended}
    assert not late, f"written again after the first inference run ended: {sorted(late)}"
    assert out["runs"][1]["shards_computed"] == 3  # the second run did infer (its own draws)


def test_the_command_table_lists_each_point_with_how_it_was_computed(swept, capsys):
    from flows.cli import _print_sweep

    root, out = swept
    _print_sweep(root, out)
    text = capsys.readouterr().out
    assert "8 points, 2 ran the models, 6 scored from stored crop features" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("top_k=")]
    assert len(rows) == 8
    assert all(("features" in ln) != (ln.split()[0] in ("top_k=5", "top_k=3")) for ln in rows)
