"""Results that travel: ``abs-eval export`` / ``tasks.results.catalog.export_clip_benchmark`` write
CLIP_benchmark result files whose numbers equal an independent Python computation.

The root holds test_sql's fixture (runs r1, r2-crashed, r2, r3 over 5 classes) plus test_sql's
top-k run ``rk`` (9 classes, top5 often missing the label, uneven classes), the latest completed
run of the same dataset x model, so the default export is rk and its acc5 / mean per-class
recall differ from its top-1 accuracy.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid

import fsspec
import pytest
from common import invoke_cli as _invoke
from common import one_error_line as _one_error_line
from test_sql import (
    DATASET,
    build_results,
    build_topk_results,
    expected_acc5,
    expected_mean_per_class_recall,
)

from tasks.results import catalog

CLIP_BENCHMARK_KEYS = ["dataset", "model", "pretrained", "task", "metrics", "language"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "root")
    fx = build_results(path)
    _, topk_rows = build_topk_results(path)
    return path, fx, topk_rows




def _expected(rows: list[dict], method: str) -> dict:
    mine = [r for r in rows if r["method"] == method]
    ok = [r for r in mine if r["status"] == "ok"]
    return {"acc1": sum(r["pred"] == r["label"] for r in ok) / len(ok), "acc5": expected_acc5(mine),
            "mean_per_class_recall": expected_mean_per_class_recall(mine), "n": len(mine), "n_ok": len(ok)}


def _assert_result(res: dict, rows: list[dict], run_id: str) -> None:
    assert list(res)[:6] == CLIP_BENCHMARK_KEYS  # CLIP_benchmark's keys, in its order, then ours
    assert (res["dataset"], res["model"], res["pretrained"]) == (DATASET, "ViT-B-16", "openai")
    assert (res["task"], res["language"], res["run_id"]) == ("zeroshot_classification", "en", run_id)
    assert set(res["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    exp = _expected(rows, res["method"])
    for k in ("acc1", "acc5", "mean_per_class_recall"):
        assert res["metrics"][k] == pytest.approx(exp[k], abs=1e-12), (res["method"], k)
    assert (res["n"], res["n_ok"]) == (exp["n"], exp["n_ok"])
    lo, hi = res["acc1_ci95"]
    assert lo <= res["metrics"]["acc1"] <= hi
    assert res["config"]["hash"] and res["model_slug"] == "ViT-B-16_openai"


def test_default_export_is_the_latest_completed_run_in_clip_benchmark_shape(root, tmp_path):
    path, fx, topk_rows = root
    out = tmp_path / "out"
    res = _invoke("export", "--root", path, "--out", str(out))
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"{DATASET}_openai_ViT-B-16_en_zeroshot_classification_{m}.json" for m in ("abs", "clip")]
                           + ["results.csv"])
    results = {}
    for name in (n for n in files if n.endswith(".json")):
        r = json.loads((out / name).read_text())
        _assert_result(r, topk_rows, "rk")
        assert name.endswith(f"_{r['method']}.json")
        results[r["method"]] = r
    assert set(results) == {"abs", "clip"}
    for r in results.values():  # the data makes the three metrics differ: none stands in for another
        m = r["metrics"]
        assert m["acc5"] > m["acc1"] and abs(m["mean_per_class_recall"] - m["acc1"]) > 1e-3
    table = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert len(table) == 2 and list(table[0])[:8] == ["dataset", "model", "pretrained", "task", "language", "acc1",
                                                      "acc5", "mean_per_class_recall"]
    for row in table:
        r = results[row["method"]]
        assert float(row["acc5"]) == pytest.approx(r["metrics"]["acc5"], abs=1e-12)
        assert float(row["mean_per_class_recall"]) == pytest.approx(r["metrics"]["mean_per_class_recall"], abs=1e-12)
        assert row["run_id"] == "rk" and (out / row["file"]).is_file()


def test_chosen_runs_and_json_lines_on_stdout(root, tmp_path):
    path, fx, _ = root
    res = _invoke("export", "--root", path, "--run", "r1", "--run", "r2", "--out", "-")
    assert res.exit_code == 0, res.output
    lines = [json.loads(ln) for ln in res.output.splitlines()]
    assert sorted((r["run_id"], r["method"]) for r in lines) == sorted((run, m) for run in ("r1", "r2")
                                                                        for m in ("abs", "clip", "clip-e", "cupl"))
    for r in lines:
        _assert_result(r, fx.run_rows(r["run_id"]), r["run_id"])
    # two runs of one dataset x model: the run id keeps the file names apart (Python API)
    done = catalog.export_clip_benchmark(path, str(tmp_path / "two"), ["r1", "r2"])
    names = [f.rsplit("/", 1)[-1] for f in done.files]
    assert len(names) == len(set(names)) == 9 and names[-1] == "results.csv"
    assert all(re.search(r"_(r1|r2)\.json$", n) for n in names[:-1])
    # any fsspec folder works
    mem = f"memory://abs-export-{uuid.uuid4().hex}"
    try:
        done = catalog.export_clip_benchmark(path, mem, ["r3"])
        fs = fsspec.filesystem("memory")
        assert len(done.files) == 5 and all(fs.exists(f) for f in done.files)
        assert json.loads(fs.cat(done.files[0]))["run_id"] == "r3"
    finally:
        fsspec.filesystem("memory").rm(mem, recursive=True)


def test_export_errors_are_one_line(root, tmp_path):
    path, _, _ = root
    line = _one_error_line(_invoke("export", "--root", path, "--run", "nope", "--out", str(tmp_path / "a")))
    assert "unknown run id 'nope'" in line
    line = _one_error_line(_invoke("export", "--root", path, "--run", "r2-crashed", "--out", str(tmp_path / "a")))
    assert "r2-crashed (failed) is not completed" in line
    line = _one_error_line(_invoke("export", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "a")))
    assert "no runs under" in line and "empty" in line
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    line = _one_error_line(_invoke("export", "--root", path, "--out", str(blocker)))
    assert "cannot write to" in line and "not a folder" in line
    line = _one_error_line(_invoke("export", "--root", path, "--out", str(blocker / "sub")))
    assert line.startswith(f"error: cannot write to {blocker / 'sub'}")
    assert not (tmp_path / "a").exists()
