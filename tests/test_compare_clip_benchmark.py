"""abs-eval agrees with LAION's CLIP_benchmark on the same WebDataset sets and checkpoint (issue 19).

Runs ``benchmarks/compare_clip_benchmark.py`` with the tiny random-weight ViT on two small sets, each with
its own (non-ImageNet) ``zeroshot_classification_templates.txt``, images up to 3000 px (some over 1024 px),
one with more and one with fewer than 5 classes: CLIP_benchmark's real CLI (``--no_amp``) and one
``abs-eval run --layout webdataset``, then the per-method agreement and ``clip_benchmark build`` over
abs-eval's export beside CLIP_benchmark's own result files (one row per method, named so that they join).
Skipped unless CLIP_benchmark is installed in its own target folder (``CLIP_BENCHMARK_DIR``, default
``abs-output/clip-benchmark/site``; README, "Checking against CLIP_benchmark"): it is not a dependency
of this project.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("CLIP_BENCHMARK_DIR", REPO / "abs-output" / "clip-benchmark" / "site"))

pytestmark = pytest.mark.skipif(
    not (SITE / "clip_benchmark" / "cli.py").is_file(),
    reason=f"CLIP_benchmark not installed in {SITE} (see README, 'Checking against CLIP_benchmark')",
)


def test_clip_benchmark_and_abs_eval_agree_per_method(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "compare_clip_benchmark.py"),
            "--clip-benchmark-dir",
            str(SITE),
            "--work",
            str(tmp_path / "work"),
            "--model",
            "abs-tiny-vit-b16",
            "--sets",
            "6:10:2",
            "3:7",
            "--json",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.exists(), res.stdout[-3000:] + res.stderr[-3000:]
    got = json.loads(out.read_text())
    sets = {s["name"]: s for s in got["sets"]}
    assert {n: s["classes"] for n, s in sets.items()} == {"abscheck-c6": 6, "abscheck-c3": 3}
    report = got["report"]
    for name, s in sets.items():
        assert max(max(wh) for wh in s["sizes"]) > 1024 and min(min(wh) for wh in s["sizes"]) < 100
        assert set(report[name]) == {"clip", "clip-e", "cupl"}
        for method, r in report[name].items():
            assert not r["missing"], (name, method)
            assert r["argmax_equal"] == r["top5_equal"] == r["images"] == s["images"], (name, method, r)
            assert all(d <= 1e-9 for d in r["metric_diff"].values()), (name, method, r)
            assert r["max_logit_diff"] <= 1e-4, (name, method, r)
            assert r["max_logit_diff_over_1024"] is not None  # the set has images over 1024 px
            assert math.isnan(r["abs_eval"]["acc5"]) == (s["classes"] < 5)  # NaN below 5 classes, as theirs
            assert r["acc1_denominator"] == "n_ok" and r["n_error"] == 0
        # clip-e used (and the export records) the dataset's own templates, which are no shipped set
        recorded = report[name]["clip-e"]["templates"]["recorded"]
        assert recorded["templates"] == "dataset:zeroshot_classification_templates.txt"
        assert recorded["templates_count"] == len(s["templates"]) and report[name]["clip-e"]["templates"]["ok"]
    assert sets["abscheck-c6"]["templates"] != sets["abscheck-c3"]["templates"]
    assert res.returncode == 0, res.stdout[-3000:]
    _results_join_after_clip_benchmark_build(tmp_path, got["build"])


def _results_join_after_clip_benchmark_build(tmp_path: Path, build: dict) -> None:
    """``clip_benchmark build`` over abs-eval's export and CLIP_benchmark's own result files (issue 19,
    "results that join"): per set one row per method, each its own ``model_fullname``; the dataset is named
    as CLIP_benchmark names it (``wds/<name>``), so the rows join with CLIP_benchmark's on dataset, model
    and weights; results.csv holds what build makes of the export."""
    assert build["ok"], build
    rows = list(csv.DictReader(Path(build["file"]).open()))
    ours = [r for r in rows if r.get("method")]
    theirs = [r for r in rows if not r.get("method")]
    assert len(theirs) == 6 and len({r["model_fullname"] for r in theirs}) == 1  # CLIP_benchmark's: one name
    for name in ("abscheck-c6", "abscheck-c3"):
        mine = [r for r in ours if r["dataset"] == f"wds/{name}"]
        assert sorted(r["method"] for r in mine) == ["abs", "clip", "clip-e", "cupl"]
        assert len({r["model_fullname"] for r in mine}) == 4  # one row per method, none mixed with another
        ckpt = theirs[0]["pretrained"]
        for r in mine:
            assert (r["model"], r["clip_pretrained"]) == (theirs[0]["model"], ckpt)
            assert r["model_fullname"] == f"{r['model']} {ckpt}+{r['method']}"
        assert {r["dataset"] for r in theirs} == {"wds/abscheck-c6", "wds/abscheck-c3"}  # the same names: they join
    # results.csv is build's output for the export: the same columns (build orders them as a set) and cells
    table = list(csv.DictReader((tmp_path / "work" / "abs-export" / "results.csv").open()))
    assert len(table) == 8
    by_build = {(r["dataset"], r["method"]): r for r in ours}
    assert set(table[0]) == set(ours[0])  # build finds no other column in the export
    for r in table:
        assert by_build[(r["dataset"], r["method"])] == r, r["method"]
