"""abs-eval agrees with LAION's CLIP_benchmark on the same WebDataset and checkpoint (issue 19).

Runs ``benchmarks/compare_clip_benchmark.py`` with the tiny random-weight ViT (a few images,
some over 1024 px): CLIP_benchmark's real CLI (``--no_amp``) and ``abs-eval run --layout webdataset``,
then the per-method agreement; then ``clip_benchmark build`` over abs-eval's export beside
CLIP_benchmark's own result files: one row per method, named so that they join. Skipped unless CLIP_benchmark is installed in its own target
folder (``CLIP_BENCHMARK_DIR``, default ``abs-output/clip-benchmark/site``; README, "Checking
against CLIP_benchmark"): it is not a dependency of this project.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("CLIP_BENCHMARK_DIR", REPO / "abs-output" / "clip-benchmark" / "site"))

pytestmark = pytest.mark.skipif(not (SITE / "clip_benchmark" / "cli.py").is_file(),
                                reason=f"CLIP_benchmark not installed in {SITE} (see README, 'Checking against "
                                       "CLIP_benchmark')")


def test_clip_benchmark_and_abs_eval_agree_per_method(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compare_clip_benchmark.py"), "--clip-benchmark-dir", str(SITE),
         "--work", str(tmp_path / "work"), "--model", "abs-tiny-vit-b16", "--images", "10", "--classes", "5",
         "--tars", "2", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert out.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(out.read_text())["report"]
    assert set(report) == {"clip", "clip-e", "cupl"}
    for method, r in report.items():
        assert not r["missing"], method
        assert r["argmax_equal"] == r["top5_equal"] == r["images"] == 10, (method, r)
        assert all(d <= 1e-9 for d in r["metric_diff"].values()), (method, r)
        assert r["max_logit_diff"] <= 1e-4, (method, r)
        assert r["max_logit_diff_over_1024"] is not None  # the set has images over 1024 px
    assert res.returncode == 0, res.stdout[-3000:]
    _results_join_after_clip_benchmark_build(tmp_path, env, report)


def _results_join_after_clip_benchmark_build(tmp_path: Path, env: dict, report: dict) -> None:
    """``clip_benchmark build`` over abs-eval's export and CLIP_benchmark's own result files (issue 19,
    "results that join"): one row per method, each its own ``model_fullname``; the dataset is named as
    CLIP_benchmark names it (``wds/abscheck``), so the rows join with CLIP_benchmark's on dataset, model
    and weights, and the joined numbers agree; results.csv holds what build makes of the export."""
    import csv

    from tasks.results.export import export_clip_benchmark

    work = tmp_path / "work"
    out = tmp_path / "export"
    export_clip_benchmark(str(work / "abs-root"), str(out))
    cb_files = [work / f"cb-{m}.json" for m in ("clip", "clip-e", "cupl")]
    built = tmp_path / "benchmark.csv"
    cb_env = {**env, "PYTHONPATH": str(SITE.resolve()), "PYTHONNOUSERSITE": "1"}
    res = subprocess.run([sys.executable, "-m", "clip_benchmark.cli", "build", str(out), *map(str, cb_files),
                          "--output", str(built)], cwd=tmp_path, env=cb_env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = list(csv.DictReader(built.open()))
    ours = [r for r in rows if r.get("method")]
    theirs = [r for r in rows if not r.get("method")]
    assert len(theirs) == 3 and len({r["model_fullname"] for r in theirs}) == 1  # CLIP_benchmark's: one name
    assert sorted(r["method"] for r in ours) == ["abs", "clip", "clip-e", "cupl"]
    assert len({r["model_fullname"] for r in ours}) == 4  # one row per method, none mixed with another
    assert {r["dataset"] for r in rows} == {"wds/abscheck"}  # the same name on both sides: they join
    ckpt = json.loads(cb_files[0].read_text())["pretrained"]
    for r in ours:
        assert (r["model"], r["clip_pretrained"]) == (theirs[0]["model"], ckpt)
        assert r["model_fullname"] == f"{r['model']} {ckpt}+{r['method']}"
    for method in ("clip", "clip-e", "cupl"):  # joined on dataset, model, weights and method: the same numbers
        mine = next(r for r in ours if r["method"] == method)
        ref = json.loads((work / f"cb-{method}.json").read_text())["metrics"]
        for key in ("acc1", "acc5", "mean_per_class_recall"):
            assert abs(float(mine[key]) - ref[key]) <= 1e-9, (method, key, report[method])
    # results.csv is build's output for the export: the same columns (build orders them as a set) and cells
    table = list(csv.DictReader((out / "results.csv").open()))
    assert len(table) == 4
    by_build = {r["method"]: r for r in ours}
    assert set(table[0]) == set(rows[0])  # build finds no other column in the export
    for r in table:
        assert by_build[r["method"]] == r, r["method"]
