"""Results that travel: ``abs-eval export`` / ``tasks.results.export.export_clip_benchmark`` write
CLIP_benchmark result files whose numbers equal an independent Python computation, and whose names
join with CLIP_benchmark's own results.

The root holds test_sql's fixture (runs r1, r2-crashed, r2, r3 over 5 classes) plus test_sql's
top-k run ``rk`` (9 classes, top5 often missing the label, uneven classes), the latest completed
run of the same dataset x model, so the default export is rk and its acc5 / mean per-class
recall differ from its top-1 accuracy. ``small_root`` adds runs over sharded datasets of other
layouts (a WebDataset, ImageNet, DTD on another split) and one of 3 classes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import uuid
from datetime import datetime, timezone

import fsspec
import pyarrow as pa
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

from tasks.results.export import (
    CLIP_BENCHMARK_DATASETS,
    clip_benchmark_dataset,
    clip_benchmark_results,
    csv_row,
    export_clip_benchmark,
    parse_dataset_names,
)
from tasks.store import Storage, commits
from tasks.store.datasets import DatasetInfo
from tasks.store.markers import DatasetMarker
from tasks.store.paths import dataset_info, prediction_part, run_record_json, run_record_parquet
from tasks.store.tables import PREDICTION_SCHEMA, RUN_SCHEMA

CLIP_BENCHMARK_KEYS = ["dataset", "model", "pretrained", "task", "metrics", "language"]
METRICS = ["acc1", "acc5", "mean_per_class_recall"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "root")
    fx = build_results(path)
    _, topk_rows = build_topk_results(path)
    return path, fx, topk_rows


def _expected(rows: list[dict], method: str) -> dict:
    mine = [r for r in rows if r["method"] == method]
    ok = [r for r in mine if r["status"] == "ok"]
    correct = sum(r["pred"] == r["label"] for r in ok)
    return {
        "acc1": correct / len(ok),
        "acc5": expected_acc5(mine),
        "acc1_all": correct / len(mine),
        "mean_per_class_recall": expected_mean_per_class_recall(mine),
        "n": len(mine),
        "n_ok": len(ok),
    }


def _assert_result(res: dict, rows: list[dict], run_id: str) -> None:
    assert list(res)[:6] == CLIP_BENCHMARK_KEYS  # CLIP_benchmark's keys, in its order, then ours
    method = res["method"]
    assert (res["dataset"], res["model"], res["pretrained"]) == (DATASET, "ViT-B-16", f"openai+{method}")
    assert (res["clip_pretrained"], res["abs_eval_dataset"]) == ("openai", DATASET)
    assert (res["task"], res["language"], res["run_id"]) == ("zeroshot_classification", "en", run_id)
    assert list(res["metrics"]) == METRICS
    exp = _expected(rows, method)
    for k in METRICS:
        assert res["metrics"][k] == pytest.approx(exp[k], abs=1e-12), (method, k)
    assert (res["n"], res["n_ok"]) == (exp["n"], exp["n_ok"])
    # the denominator is said, and the other one is there: equal only without error rows
    assert res["acc1_denominator"] == "n_ok"
    assert res["acc1_all"] == pytest.approx(exp["acc1_all"], abs=1e-12)
    assert res["acc1_ci_low"] <= res["metrics"]["acc1"] <= res["acc1_ci_high"]
    assert res["config"] and res["model_slug"] == "ViT-B-16_openai"
    # every value but the metrics is flat: clip_benchmark build puts each in one CSV cell
    assert all(not isinstance(v, (dict, list)) for k, v in res.items() if k != "metrics"), res


def test_default_export_is_the_latest_completed_run_in_clip_benchmark_shape(root, tmp_path):
    path, fx, topk_rows = root
    out = tmp_path / "out"
    res = _invoke("export", "--root", path, "--out", str(out))
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        [f"{DATASET}_openai_ViT-B-16_en_zeroshot_classification_{m}.json" for m in ("abs", "clip")]
        + ["results.csv", "configs"]
    )
    results = {}
    for name in (n for n in files if n.endswith(".json")):
        r = json.loads((out / name).read_text())
        _assert_result(r, topk_rows, "rk")
        assert name.endswith(f"_{r['method']}.json")
        assert r["config_file"] == "configs/rk.json" and (out / r["config_file"]).is_file()
        results[r["method"]] = r
    assert set(results) == {"abs", "clip"}
    for r in results.values():  # the data makes the three metrics differ: none stands in for another
        m = r["metrics"]
        assert m["acc5"] > m["acc1"] and abs(m["mean_per_class_recall"] - m["acc1"]) > 1e-3
        assert r["classes_ranked"] == 5  # 9 classes: acc5 is a number
    # results.csv: what `clip_benchmark build` makes of the files (metrics, the other keys, model_fullname)
    text = (out / "results.csv").read_text()
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == 2
    header = list(table[0])
    assert header[:8] == METRICS + ["dataset", "model", "pretrained", "task", "language"]
    assert header[-1] == "model_fullname" and header == list(csv_row(results["abs"]))
    assert max(len(ln) for ln in text.splitlines()) < 1000  # no run config in a cell
    assert {row["model_fullname"] for row in table} == {"ViT-B-16 openai+abs", "ViT-B-16 openai+clip"}
    for row in table:
        r = results[row["method"]]
        assert row == {k: "" if v is None else str(v) for k, v in csv_row(r).items()}
        assert float(row["acc5"]) == pytest.approx(r["metrics"]["acc5"], abs=1e-12)
        assert float(row["mean_per_class_recall"]) == pytest.approx(r["metrics"]["mean_per_class_recall"], abs=1e-12)
        assert row["run_id"] == "rk"


def test_chosen_runs_and_json_lines_on_stdout(root, tmp_path):
    path, fx, _ = root
    res = _invoke("export", "--root", path, "--run", "r1", "--run", "r2", "--out", "-")
    assert res.exit_code == 0, res.output
    lines = [json.loads(ln) for ln in res.output.splitlines()]
    assert sorted((r["run_id"], r["method"]) for r in lines) == sorted(
        (run, m) for run in ("r1", "r2") for m in ("abs", "clip", "clip-e", "cupl")
    )
    for r in lines:
        _assert_result(r, fx.run_rows(r["run_id"]), r["run_id"])
        assert "config_file" not in r  # nothing written
    # two runs of one dataset x model: the run id keeps the file names apart (Python API)
    done = export_clip_benchmark(path, str(tmp_path / "two"), ["r1", "r2"])
    names = [f.rsplit("/", 1)[-1] for f in done.files]
    assert len(names) == len(set(names)) == 11
    assert names[8:] == ["results.csv", "r1.json", "r2.json"]  # then each run's config, in configs/
    assert all(re.search(r"_(r1|r2)\.json$", n) for n in names[:8])
    assert set(done.configs) == {"r1", "r2"}
    # any fsspec folder works
    mem = f"memory://abs-export-{uuid.uuid4().hex}"
    try:
        done = export_clip_benchmark(path, mem, ["r3"])
        fs = fsspec.filesystem("memory")
        assert len(done.files) == 6 and all(fs.exists(f) for f in done.files)
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
    line = _one_error_line(_invoke("export", "--root", path, "--dataset-name", "toy", "--out", str(tmp_path / "a")))
    assert "expected NAME=CLIP_BENCHMARK_NAME" in line
    line = _one_error_line(
        _invoke("export", "--root", path, "--dataset-name", "nosuch=x", "--out", str(tmp_path / "a"))
    )
    assert "'nosuch', which no exported run evaluated" in line and "exported: toy" in line
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    line = _one_error_line(_invoke("export", "--root", path, "--out", str(blocker)))
    assert "cannot write to" in line and "not a folder" in line
    line = _one_error_line(_invoke("export", "--root", path, "--out", str(blocker / "sub")))
    assert line.startswith(f"error: cannot write to {blocker / 'sub'}")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------- names and acc5 below 5 classes
def _small_run(
    st: Storage,
    run_id: str,
    dataset: str,
    classes: int,
    *,
    layout: str,
    split: str | None,
    source: str = "/data/src",
    day: int = 1,
    templates: dict | None = None,
) -> list[dict]:
    """A completed run over a sharded dataset of ``classes`` classes (its dataset.json committed as the
    shard step commits it), 12 images, top5 lists of min(5, classes) entries as inference writes them,
    one unreadable image; ``templates``: the clip-e template set's record in the run's prediction settings
    (without: a run recorded before template sets had one). Returns the rows."""
    fingerprint = f"fp-{dataset}"
    info = {
        "dataset": dataset,
        "layout": layout,
        "source": source,
        "split": split,
        "fingerprint": fingerprint,
        "classnames": [f"c{i}" for i in range(classes)],
        "n_shards": 1,
        "n_total": 12,
        "shards": [],
    }
    commits.commit_json(st, dataset_info(dataset), info, DatasetMarker(dataset, fingerprint, 1, 12))
    rows = []
    for i in range(12):
        label = i % classes
        for method, shift in (("abs", 0), ("clip", 1)):
            pred = label if i % 3 else (label + shift) % classes
            top = [pred] + [c for c in range(classes) if c != pred][:4]
            row = {
                "image_id": f"i{i:02d}",
                "shard": 0,
                "label": label,
                "class_name": f"c{label}",
                "method": method,
                "pred": pred,
                "pred_name": f"c{pred}",
                "top5": top,
                "score_true": 0.5,
                "margin": 0.1,
                "status": "ok",
                "error": None,
                "run_id": run_id,
            }
            if i == 7:
                row.update(pred=None, pred_name=None, top5=None, status="decode_error", error="broken")
            rows.append(row)
    model, config = "ViT-B-32_laion2b", f"cfg-{run_id}"
    st.write_parquet(prediction_part(dataset, model, config, 0), pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA))
    spec = {"dataset": dataset, "prompt": "a photo of a {}.", "templates": "openai-imagenet"}
    rec = {
        "run_id": run_id,
        "deployment": "manual",
        "dataset": dataset,
        "model": model,
        "config": config,
        "started_at": datetime(2026, 2, day, tzinfo=timezone.utc),
        "ended_at": datetime(2026, 2, day, 1, tzinfo=timezone.utc),
        "status": "completed",
        "n_images": 12,
        "n_ok": 11,
        "n_error": 1,
        "shards_total": 1,
        "shards_computed": 1,
        "clip_model": "ViT-B-32",
        "clip_pretrained": "laion2b_s34b_b79k",
        "config_json": json.dumps(
            {
                "spec": spec,
                "numbers": {
                    "abs": {"n_crops": 6},
                    "classes": "h" * 16,
                    **({"templates": templates} if templates else {}),
                },
            }
        ),
    }
    st.write_json(run_record_json(run_id), rec)
    st.write_parquet(run_record_parquet(run_id), pa.Table.from_pylist([rec], schema=RUN_SCHEMA))
    return rows


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    st = Storage(str(tmp_path_factory.mktemp("export-names") / "root"))
    _small_run(st, "w1", "peerwds", 3, layout="webdataset", split="test", day=1)
    _small_run(
        st,
        "i1",
        "in1k",
        6,
        layout="imagenet",
        split=None,
        source="/data/imagenet/val",
        day=2,
        templates={"name": "imagenet1k", "sha256": "ab" * 32, "count": 80},
    )
    _small_run(st, "d1", "dtd2", 5, layout="dtd", split="test2", day=3)
    _small_run(
        st, "v1", "inv2", 5, layout="imagenet-v2", split=None, source="/data/imagenetv2-threshold0.7-format-val", day=4
    )
    return st


def test_dataset_names_are_clip_benchmarks(small_root, tmp_path):
    """``wds/<name>`` for a WebDataset, the builtin name for a named layout on CLIP_benchmark's split, the
    name here otherwise (another split, another ImageNet-V2 variant); ``--dataset-name`` overrides."""
    got = {r["abs_eval_dataset"]: r for r in clip_benchmark_results(small_root)}
    assert {k: r["dataset"] for k, r in got.items()} == {
        "peerwds": "wds/peerwds",
        "in1k": "imagenet1k",
        "dtd2": "dtd2",
        "inv2": "inv2",
    }
    assert (got["peerwds"]["layout"], got["peerwds"]["split"]) == ("webdataset", "test")
    assert got["in1k"]["prompt"] == "a photo of a {}."
    # the clip-e template set, flat: from the run's record of it, else (older runs) the spec's name
    assert [got["in1k"][k] for k in ("templates", "templates_sha256", "templates_count")] == [
        "imagenet1k",
        "ab" * 32,
        80,
    ]
    assert [got["dtd2"][k] for k in ("templates", "templates_sha256", "templates_count")] == [
        "openai-imagenet",
        None,
        None,
    ]
    out = tmp_path / "out"
    res = _invoke(
        "export",
        "--root",
        small_root.root,
        "--out",
        str(out),
        "--dataset-name",
        "dtd2=dtd_test2",
        "--dataset-name",
        "in1k=imagenet1k-subset",
    )
    assert res.exit_code == 0, res.output
    written = {json.loads(p.read_text())["abs_eval_dataset"]: p for p in out.glob("*.json")}
    names = {k: json.loads(p.read_text())["dataset"] for k, p in written.items()}
    assert names == {"peerwds": "wds/peerwds", "in1k": "imagenet1k-subset", "dtd2": "dtd_test2", "inv2": "inv2"}
    # file names as CLIP_benchmark's --output template spells the dataset: wds/ dropped
    assert written["peerwds"].name.startswith("peerwds_laion2b_s34b_b79k_ViT-B-32_en_zeroshot_classification_")
    config = json.loads((out / "configs" / "i1.json").read_text())
    assert config["numbers"]["abs"] == {"n_crops": 6}  # the run's whole settings, beside the results


def test_acc5_is_nan_below_5_classes(small_root, tmp_path):
    """CLIP_benchmark reports acc5 as NaN for a dataset of fewer than 5 classes (its top-5 needs 5):
    the 3-class WebDataset's acc5 is NaN in the JSON, the JSON lines and results.csv; 5 classes and
    more keep theirs. acc1 and mean per-class recall are unaffected."""
    out = tmp_path / "out"
    done = export_clip_benchmark(small_root, str(out))
    by = {(r["abs_eval_dataset"], r["method"]): r for r in done.results}
    for method in ("abs", "clip"):
        small = by[("peerwds", method)]
        assert small["classes_ranked"] == 3 and math.isnan(small["metrics"]["acc5"])
        assert small["metrics"]["acc1"] == pytest.approx(7 / 11 if method == "clip" else 1.0)
        assert small["acc1_all"] == pytest.approx(small["metrics"]["acc1"] * 11 / 12)
        assert small["n_error"] == 1
        for ds in ("in1k", "dtd2"):
            assert by[(ds, method)]["classes_ranked"] == 5 and by[(ds, method)]["metrics"]["acc5"] == 1.0
    wds_file = next(out.glob("peerwds_*_abs.json"))
    assert '"acc5": NaN' in wds_file.read_text()  # as CLIP_benchmark's json.dump writes it
    rows = {
        (r["abs_eval_dataset"], r["method"]): r for r in csv.DictReader(io.StringIO((out / "results.csv").read_text()))
    }
    assert rows[("peerwds", "abs")]["acc5"] == "nan" and float(rows[("in1k", "abs")]["acc5"]) == 1.0


def test_the_name_map_names_registered_layouts_and_checks_split_and_variant():
    from tasks.datasets import list_layouts

    assert set(CLIP_BENCHMARK_DATASETS) <= set(list_layouts())

    def info(layout: str, split: str | None, source: str = "/x") -> DatasetInfo:
        return DatasetInfo.from_dict({"dataset": "d", "layout": layout, "split": split, "source": source})

    assert clip_benchmark_dataset("mine", info("imagenet", None)) == "imagenet1k"
    assert clip_benchmark_dataset("mine", info("pets", "test")) == "pets"
    assert clip_benchmark_dataset("mine", info("pets", "trainval")) == "mine"  # not CLIP_benchmark's split
    assert clip_benchmark_dataset("mine", info("dtd", "test1")) == "dtd"
    assert (
        clip_benchmark_dataset("mine", info("imagenet-v2", None, "/d/imagenetv2-matched-frequency-format-val"))
        == "imagenetv2"
    )
    assert clip_benchmark_dataset("mine", info("imagenet-v2", None, "/d/imagenetv2-top-images-format-val")) == "mine"
    assert clip_benchmark_dataset("mine", info("cub", "test")) == "mine"  # no builtin CUB in CLIP_benchmark
    assert clip_benchmark_dataset("mine", info("webdataset", "train")) == "wds/mine"
    assert clip_benchmark_dataset("mine", None) == "mine"
    assert parse_dataset_names(["a=wds/a", " b = imagenet1k "]) == {"a": "wds/a", "b": "imagenet1k"}
    for bad in (["a"], ["=x"], ["a="], ["a=x", "a=y"]):
        with pytest.raises(ValueError):
            parse_dataset_names(bad)
