"""abs-eval agrees with LAION's CLIP_benchmark on the same WebDataset and checkpoint (issue 19).

Runs ``benchmarks/compare_clip_benchmark.py`` with the tiny random-weight ViT (a few images,
some over 1024 px): CLIP_benchmark's real CLI (``--no_amp``) and ``abs-eval run --layout webdataset``,
then the per-method agreement. Skipped unless CLIP_benchmark is installed in its own target
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
