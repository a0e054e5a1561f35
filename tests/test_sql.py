"""The SQL views and queries (sql/, tasks/results/catalog.py) against prediction rows built by hand.

Every expected number here is computed in Python from the rows the test wrote,
independently of the SQL: accuracy, Wilson intervals, per-class accuracy,
confusions, error rows, and which images flipped between two runs.

The fixture root (``build_results``) has one dataset x model, 3 shards of 8
images, methods abs/clip/clip-e/cupl, two images that failed (error rows with
pred NULL), and these runs (deployment ``weekly`` unless said):

    r1          config c1, completed, computed every shard
    r2-crashed  config c2, failed after committing shard 0
    r2          config c2, completed: reused shard 0, computed shards 1-2; some
                predictions differ from r1 (the flips)
    r3          config c1, deployment ``manual``: reused everything of r1

c1's parts have their rollups (tasks.store.rollups.write_rollup, as inference writes them), c2's
do not (parts written before rollups existed): the aggregate views read both kinds.
"""

from __future__ import annotations

import io
import math
import random
import shutil
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.results import catalog
from tasks.results.export import export
from tasks.results.formatting import format_table
from tasks.store import Storage, rollups
from tasks.store.paths import (
    dino_part,
    prediction_part,
    run_record_json,
    run_record_parquet,
    shard_part,
)
from tasks.store.tables import DINO_SCHEMA, PREDICTION_SCHEMA, RUN_SCHEMA, SHARD_SCHEMA

DATASET = "toy"
MODEL = "ViT-B-16_openai"
CLASSES = ["cat", "dog", "bird", "fish", "frog"]
METHODS = ["abs", "clip", "clip-e", "cupl"]
N_SHARDS = 3
PER_SHARD = 8
ERROR_IMAGES = {
    "img_005": ("truncated", "image file is truncated"),
    "img_017": ("not_image", "cannot identify image file"),
}
DINO_MODEL, DINO_DIGEST, DINO_GRID = "dino_vitb16", "d1g3st", 14
Z = 1.959963984540054


def image_ids(shard: int) -> list[str]:
    return [f"img_{shard * PER_SHARD + i:03d}" for i in range(PER_SHARD)]


def label_of(image_id: str) -> int:
    return int(image_id[4:]) % len(CLASSES)


def image_size(image_id: str) -> tuple[int, int]:
    i = int(image_id[4:])
    return 64 + 8 * (i % 3), 48 + 8 * (i % 2)


@dataclass
class Fixture:
    """What was written: the storage root and every prediction row, per config."""

    root: str
    storage: Storage
    rows: dict[str, list[dict]] = field(default_factory=dict)  # config -> rows
    runs: dict[str, dict] = field(default_factory=dict)  # run_id -> run record

    def run_rows(self, run_id: str) -> list[dict]:
        """The rows a run stands for: its whole partition when completed, else what it computed."""
        rows = self.rows[self.runs[run_id]["config"]]
        if self.runs[run_id]["status"] == "completed":
            return rows
        return [r for r in rows if r["run_id"] == run_id]


def _pred(rng: random.Random, label: int, p_right: float) -> int:
    if rng.random() < p_right:
        return label
    return rng.choice([c for c in range(len(CLASSES)) if c != label])


def attention_map(image_id: str) -> list[float]:
    """The image's DINO attention (D*D floats); the abs row's top-K cells are its 10 largest."""
    rng = random.Random(f"att/{image_id}")
    return [float(pa.scalar(rng.random(), pa.float32()).as_py()) for _ in range(DINO_GRID * DINO_GRID)]


def _abs_geometry(rng: random.Random, image_id: str) -> dict:
    w, h = image_size(image_id)
    att = attention_map(image_id)
    idx = sorted(range(len(att)), key=lambda i: -att[i])[:10]
    vals = [att[i] for i in idx]
    boxes = []
    for _ in range(3):
        x0, y0 = rng.randrange(0, w // 2), rng.randrange(0, h // 2)
        boxes.append([x0, y0, x0 + rng.randrange(8, w // 2), y0 + rng.randrange(8, h // 2)])
    return {
        "width": w,
        "height": h,
        "dino_topk_indices": idx,
        "dino_topk_values": vals,
        "raw_boxes": boxes,
        "feature_windows": [[0, 4, 0, 4]] * 3,
    }


def make_rows(config: str, shard: int, computed_by: str, flip_seed: int | None = None) -> list[dict]:
    """Prediction rows of one shard. The base predictions depend only on the image and
    method (seed 0); ``flip_seed`` changes some of them (the "other run")."""
    rows = []
    p_right = {"abs": 0.8, "clip": 0.55, "clip-e": 0.6, "cupl": 0.65}
    for image_id in image_ids(shard):
        label = label_of(image_id)
        for method in METHODS:
            rng = random.Random(f"{image_id}/{method}")
            pred = _pred(rng, label, p_right[method])
            if flip_seed is not None:
                frng = random.Random(f"{flip_seed}/{image_id}/{method}")
                if frng.random() < 0.3:
                    pred = _pred(frng, label, 0.5)
            row = {
                "image_id": image_id,
                "shard": shard,
                "label": label,
                "class_name": CLASSES[label],
                "method": method,
                "pred": pred,
                "pred_name": CLASSES[pred],
                "top5": [pred] + [c for c in range(len(CLASSES)) if c != pred][:4],
                "score_true": 1.0,
                "margin": rng.uniform(0.01, 1.0) if pred == label else -rng.uniform(0.01, 1.0),
                "status": "ok",
                "error": None,
                "run_id": computed_by,
            }
            if method == "abs":
                row.update(_abs_geometry(random.Random(f"geo/{image_id}"), image_id))
            if image_id in ERROR_IMAGES:
                status, error = ERROR_IMAGES[image_id]
                row.update(
                    pred=None, pred_name=None, top5=None, score_true=None, margin=None, status=status, error=error
                )
                for k in ("width", "height", "dino_topk_indices", "dino_topk_values", "raw_boxes", "feature_windows"):
                    row[k] = None
            rows.append(row)
    return rows


def write_part(st: Storage, config: str, shard: int, rows: list[dict]) -> str:
    return st.write_parquet(
        prediction_part(DATASET, MODEL, config, shard), pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)
    )


def write_run(
    st: Storage,
    run_id: str,
    config: str,
    deployment: str,
    day: int,
    status: str = "completed",
    computed: int = N_SHARDS,
) -> dict:
    rec = {
        "run_id": run_id,
        "deployment": deployment,
        "dataset": DATASET,
        "model": MODEL,
        "config": config,
        "started_at": datetime(2026, 1, day, 3, 0, tzinfo=timezone.utc),
        "ended_at": datetime(2026, 1, day, 4, 0, tzinfo=timezone.utc),
        "status": status,
        "n_images": N_SHARDS * PER_SHARD,
        "n_ok": N_SHARDS * PER_SHARD - len(ERROR_IMAGES),
        "n_error": len(ERROR_IMAGES),
        "shards_total": N_SHARDS,
        "shards_computed": computed,
        "clip_model": "ViT-B-16",
        "clip_pretrained": "openai",
        "clip_weights_digest": "c11p",
        "dino_model": DINO_MODEL,
        "dino_pretrained": "dino_vitb16",
        "dino_weights_digest": DINO_DIGEST,
        "descriptions_hash": "desc",
        "config_json": "{}",
        "versions_json": "{}",
    }
    st.write_json(run_record_json(run_id), rec)
    st.write_parquet(run_record_parquet(run_id), pa.Table.from_pylist([rec], schema=RUN_SCHEMA))
    return rec


def jpeg_bytes(image_id: str) -> bytes:
    w, h = image_size(image_id)
    img = Image.new("RGB", (w, h), (40 * label_of(image_id), 120, 200))
    for x in range(0, w, 8):
        for y in range(h):
            img.putpixel((x, y), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def write_shards(st: Storage) -> None:
    """Shard files (real JPEG bytes) and dataset.json, as tasks.steps.shard writes them."""
    for shard in range(N_SHARDS):
        rows = []
        for image_id in image_ids(shard):
            w, h = image_size(image_id)
            bad = image_id in ERROR_IMAGES
            data = b"\xff\xd8\xff broken" if bad else jpeg_bytes(image_id)
            rows.append(
                {
                    "image_id": image_id,
                    "label": label_of(image_id),
                    "class_name": CLASSES[label_of(image_id)],
                    "image": data,
                    "sha256": None,
                    "width": None if bad else w,
                    "height": None if bad else h,
                    "source": f"{image_id}.jpg",
                    "status": ERROR_IMAGES[image_id][0] if bad else "ok",
                    "error": ERROR_IMAGES[image_id][1] if bad else None,
                    "format": None if bad else "JPEG",
                    "mode": None if bad else "RGB",
                    "n_bytes": len(data),
                }
            )
        st.write_parquet(shard_part(DATASET, shard), pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
    st.write_json(f"shards/dataset={DATASET}/dataset.json", {"dataset": DATASET, "classnames": CLASSES})


def write_dino_cache(st: Storage, shard: int = 0, variant: str = DINO_DIGEST, other_weights: bool = False) -> None:
    """Full attention maps for one shard (the report prefers them over the top-K on the rows).

    ``other_weights``: maps of another DINO (values that disagree with the rows' top-K)."""
    rows = []
    for image_id in image_ids(shard):
        att = attention_map(image_id)
        if other_weights:
            att = att[::-1]
        rows.append(
            {"image_id": image_id, "shard": shard, "grid": DINO_GRID, "attention": att, "status": "ok", "error": None}
        )
    st.write_parquet(dino_part(DINO_MODEL, variant, DATASET, shard), pa.Table.from_pylist(rows, schema=DINO_SCHEMA))


def build_results(root: str, *, shards: bool = False, dino: bool = False) -> Fixture:
    """Write the fixture described in the module docstring under ``root``."""
    st = Storage(root)
    fx = Fixture(root=root, storage=st)
    fx.rows["c1"] = []
    for shard in range(N_SHARDS):
        rows = make_rows("c1", shard, "r1")
        write_part(st, "c1", shard, rows)
        # c1's parts have rollups (as the pipeline writes them), c2's not (an older root): the
        # aggregate views count the first from their rollups and the others from their rows
        rollups.write_rollup(
            st, prediction_part(DATASET, MODEL, "c1", shard), pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)
        )
        fx.rows["c1"] += rows
    fx.rows["c2"] = []
    for shard in range(N_SHARDS):
        rows = make_rows("c2", shard, "r2-crashed" if shard == 0 else "r2", flip_seed=7)
        write_part(st, "c2", shard, rows)
        fx.rows["c2"] += rows
    fx.runs["r1"] = write_run(st, "r1", "c1", "weekly", 1)
    fx.runs["r2-crashed"] = write_run(st, "r2-crashed", "c2", "weekly", 7, status="failed", computed=1)
    fx.runs["r2"] = write_run(st, "r2", "c2", "weekly", 8, computed=2)
    fx.runs["r3"] = write_run(st, "r3", "c1", "manual", 9, computed=0)
    if shards:
        write_shards(st)
    if dino:
        write_dino_cache(st, variant="0ther", other_weights=True)  # another DINO's cache: must not be drawn
        write_dino_cache(st)
    return fx


# ---------------------------------------------------------------------- independent expectations
def wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    center = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return center - half, center + half


def expected_accuracy(rows: list[dict], key=lambda r: r["method"]) -> dict:
    out = {}
    groups = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    for k, rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        correct = sum(r["pred"] == r["label"] for r in ok)
        out[k] = {
            "n": len(rs),
            "n_ok": len(ok),
            "n_error": len(rs) - len(ok),
            "correct": correct,
            "accuracy": correct / len(ok),
        }
    return out


def expected_acc5(rows: list[dict]) -> float | None:
    """Top-5 accuracy over ok rows: the label is in the row's top5 list (a missing list is a miss)."""
    ok = [r for r in rows if r["status"] == "ok"]
    return sum(r["label"] in (r["top5"] or []) for r in ok) / len(ok) if ok else None


def expected_mean_per_class_recall(rows: list[dict]) -> float | None:
    """Mean over the classes with ok rows of each class's top-1 recall over its ok rows."""
    by_class = defaultdict(list)
    for r in rows:
        if r["status"] == "ok":
            by_class[r["label"]].append(r["pred"] == r["label"])
    return sum(sum(v) / len(v) for v in by_class.values()) / len(by_class) if by_class else None


def rows_of(table: pa.Table) -> list[dict]:
    return table.to_pylist()


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Fixture:
    # with a DINO cache, so that every named query has rows to answer (attention_maps reads the cache)
    return build_results(str(tmp_path_factory.mktemp("results")), dino=True)


@pytest.fixture(scope="module")
def con(fx):
    c = catalog.connect(fx.root)
    yield c
    c.close()


# ---------------------------------------------------------------------- tests
def test_accuracy_equals_independent_computation(fx, con):
    got = {(r["run_id"], r["method"]): r for r in rows_of(catalog.run_query(con, "accuracy"))}
    assert set(got) == {(run, m) for run in fx.runs for m in METHODS}
    for run_id in fx.runs:
        rows = fx.run_rows(run_id)
        complete = fx.runs[run_id]["status"] == "completed"
        assert len({r["shard"] for r in rows}) == (N_SHARDS if complete else 1)
        for method, exp in expected_accuracy(rows).items():
            row = got[(run_id, method)]
            assert (row["n"], row["n_ok"], row["n_error"], row["correct"]) == (
                exp["n"],
                exp["n_ok"],
                exp["n_error"],
                exp["correct"],
            )
            assert row["n_error"] == (len(ERROR_IMAGES) if complete else exp["n_error"])
            assert row["accuracy"] == pytest.approx(exp["accuracy"], abs=1e-12)
            assert row["accuracy_all"] == pytest.approx(exp["correct"] / exp["n"], abs=1e-12)
            lo, hi = wilson(exp["correct"], exp["n_ok"])
            assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
            assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
            assert (row["dataset"], row["model"], row["config"]) == (DATASET, MODEL, fx.runs[run_id]["config"])
            method_rows = [r for r in rows if r["method"] == method]
            assert row["acc5"] == pytest.approx(expected_acc5(method_rows), abs=1e-12)
            assert row["mean_per_class_recall"] == pytest.approx(expected_mean_per_class_recall(method_rows), abs=1e-12)
    # the two configs really differ, so the comparison below is not vacuous
    assert (
        got[("r1", "abs")]["correct"] != got[("r2", "abs")]["correct"]
        or got[("r1", "clip")]["correct"] != got[("r2", "clip")]["correct"]
    )


TOPK_CLASSES = [f"c{i}" for i in range(9)]


def build_topk_results(root: str) -> tuple[Storage, list[dict]]:
    """One completed run over 9 classes with uneven class sizes, where top5 often misses the
    label (so acc5 < 1), some ok rows have no top5 list (NULL-safe), error rows carry neither,
    and class sizes differ (so mean per-class recall differs from accuracy)."""
    st = Storage(root)
    rows = []
    sizes = [1, 2, 3, 4, 6, 8, 10, 12, 14]  # images per class
    rng = random.Random(11)
    n = 0
    for label, size in enumerate(sizes):
        for _ in range(size):
            image_id = f"img_{n:03d}"
            n += 1
            for method, p_right in (("abs", 0.7 - 0.05 * label), ("clip", 0.3 + 0.05 * label)):
                pred = (
                    label if rng.random() < p_right else rng.choice([c for c in range(len(TOPK_CLASSES)) if c != label])
                )
                others = [c for c in range(len(TOPK_CLASSES)) if c != pred]
                rng.shuffle(others)
                top5 = [pred] + others[:4]
                row = {
                    "image_id": image_id,
                    "shard": 0,
                    "label": label,
                    "class_name": TOPK_CLASSES[label],
                    "method": method,
                    "pred": pred,
                    "pred_name": TOPK_CLASSES[pred],
                    "top5": top5,
                    "score_true": 0.5,
                    "margin": 0.1,
                    "status": "ok",
                    "error": None,
                    "run_id": "rk",
                }
                if n % 13 == 0:  # an ok row without its top5 list: counts as a top-5 miss, not as NULL
                    row["top5"] = None
                if n % 17 == 0:  # an unreadable image: in n and n_error, in neither accuracy
                    row.update(
                        pred=None, pred_name=None, top5=None, status="truncated", error="image file is truncated"
                    )
                rows.append(row)
    st.write_parquet(prediction_part(DATASET, MODEL, "ck", 0), pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA))
    rec = write_run(st, "rk", "ck", "weekly", 12)
    assert rec["status"] == "completed"
    return st, rows


def test_top5_accuracy_and_mean_per_class_recall(tmp_path):
    """acc5 and mean_per_class_recall (CLIP_benchmark's metrics) against Python, on data where
    neither can coincide with top-1 accuracy by construction."""
    st, rows = build_topk_results(str(tmp_path / "topk"))
    got = {r["method"]: r for r in catalog.run_query(st.root, "accuracy", {"run_id": "rk"}).to_pylist()}
    assert set(got) == {"abs", "clip"}
    for method, row in got.items():
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if r["status"] == "ok"]
        assert any(r["top5"] is None for r in ok) and any(r["status"] != "ok" for r in mine)
        acc5, mpcr = expected_acc5(mine), expected_mean_per_class_recall(mine)
        assert 0 < acc5 < 1 and row["acc5"] == pytest.approx(acc5, abs=1e-12)
        assert row["correct5"] == sum(r["label"] in (r["top5"] or []) for r in ok)
        assert row["mean_per_class_recall"] == pytest.approx(mpcr, abs=1e-12)
        assert abs(mpcr - row["accuracy"]) > 1e-3 and row["acc5"] > row["accuracy"]
        # top-1 accuracy keeps its meaning
        assert row["accuracy"] == pytest.approx(sum(r["pred"] == r["label"] for r in ok) / len(ok), abs=1e-12)
    # the named query keeps its first seven columns and adds the two metrics after them
    cols = catalog.run_query(st.root, "accuracy").column_names
    assert cols[:9] == [
        "method",
        "accuracy",
        "ci_low",
        "ci_high",
        "n",
        "n_error",
        "run_id",
        "acc5",
        "mean_per_class_recall",
    ]


def test_run_predictions_include_rows_reused_from_a_crashed_run(con):
    t = catalog.run_query(
        con,
        "SELECT computed_by, shard, count(*) AS n FROM run_predictions WHERE run_id = 'r2' GROUP BY ALL ORDER BY shard",
    )
    assert rows_of(t) == [
        {"computed_by": "r2-crashed", "shard": 0, "n": PER_SHARD * len(METHODS)},
        {"computed_by": "r2", "shard": 1, "n": PER_SHARD * len(METHODS)},
        {"computed_by": "r2", "shard": 2, "n": PER_SHARD * len(METHODS)},
    ]
    # r3 reran config c1 with nothing to compute: all its rows were computed by r1
    t = catalog.run_query(con, "SELECT DISTINCT computed_by FROM run_predictions WHERE run_id = 'r3'")
    assert t.column("computed_by").to_pylist() == ["r1"]


def test_an_unfinished_run_stands_only_for_what_it_had(con):
    """r2-crashed failed after committing shard 0: r2 later completed the same partition,
    but r2-crashed's numbers stay over its own shard, not over r2's work."""
    t = catalog.run_query(con, "SELECT DISTINCT shard FROM run_predictions WHERE run_id = 'r2-crashed' ORDER BY 1")
    assert t.column("shard").to_pylist() == [0]
    t = catalog.run_query(con, "SELECT DISTINCT run_status, n FROM accuracy WHERE run_id = 'r2-crashed'")
    assert rows_of(t) == [{"run_status": "failed", "n": PER_SHARD}]


def test_a_running_record_past_its_lease_reads_interrupted(tmp_path):
    from datetime import timedelta

    from tasks.results.runs import RunRecord, effective_status

    st = Storage(str(tmp_path))
    now = datetime.now(timezone.utc)
    alive = RunRecord("alive", DATASET, MODEL, "c1", host="elsewhere", expires_at=now + timedelta(minutes=5))
    dead = RunRecord("dead", DATASET, MODEL, "c1", host="elsewhere", expires_at=now - timedelta(seconds=1))
    for rec in (alive, dead):
        rec.write(st)
    t = catalog.run_query(str(tmp_path), "SELECT run_id, status FROM runs ORDER BY run_id")
    assert rows_of(t) == [{"run_id": "alive", "status": "running"}, {"run_id": "dead", "status": "interrupted"}]
    assert effective_status(st.read_json("runs/run=alive/run.json")) == "running"
    assert effective_status(st.read_json("runs/run=dead/run.json")) == "interrupted"


def test_per_class_accuracy_and_extremes(fx, con):
    got = {
        (r["method"], r["label"]): r for r in rows_of(catalog.run_query(con, "per_class_accuracy", {"run_id": "r2"}))
    }
    exp = expected_accuracy(fx.run_rows("r2"), key=lambda r: (r["method"], r["label"]))
    assert set(got) == set(exp)
    for k, e in exp.items():
        assert (got[k]["n"], got[k]["n_ok"], got[k]["correct"]) == (e["n"], e["n_ok"], e["correct"])
        assert got[k]["accuracy"] == pytest.approx(e["accuracy"])
        assert got[k]["class_name"] == CLASSES[k[1]]
    ext = rows_of(catalog.run_query(con, "class_extremes", {"run_id": "r2", "method": "abs", "top_k": 2}))
    worst = [r for r in ext if r["extreme"] == "worst"]
    best = [r for r in ext if r["extreme"] == "best"]
    accs = sorted(e["accuracy"] for (m, _), e in exp.items() if m == "abs")
    assert [r["accuracy"] for r in worst] == pytest.approx(accs[:2])
    assert [r["accuracy"] for r in best] == pytest.approx(accs[::-1][:2])


def test_confusions(fx, con):
    got = rows_of(catalog.run_query(con, "SELECT * FROM confusions WHERE run_id = 'r1' AND method = 'clip'"))
    ok = [r for r in fx.run_rows("r1") if r["method"] == "clip" and r["status"] == "ok"]
    exp = Counter((r["label"], r["pred"]) for r in ok if r["pred"] != r["label"])
    assert {(r["label"], r["pred"]): r["n"] for r in got} == dict(exp)
    per_class = Counter(r["label"] for r in ok)
    for r in got:
        assert r["share"] == pytest.approx(exp[(r["label"], r["pred"])] / per_class[r["label"]])
        assert (r["class_name"], r["pred_name"]) == (CLASSES[r["label"]], CLASSES[r["pred"]])
    top = rows_of(catalog.run_query(con, "confusions", {"run_id": "r1", "method": "clip", "top_k": 1}))
    assert top and all(r["rank"] == 1 and r["n"] == max(exp.values()) for r in top)


def test_error_rows(fx, con):
    got = rows_of(catalog.run_query(con, "errors", {"run_id": "r2"}))
    exp = {
        (r["image_id"], r["method"], r["status"], r["error"], r["shard"])
        for r in fx.run_rows("r2")
        if r["status"] != "ok"
    }
    assert {(r["image_id"], r["method"], r["status"], r["error"], r["shard"]) for r in got} == exp
    assert {r["run_id"] for r in got} == {"r2"}
    counts = rows_of(catalog.run_query(con, "error_counts", {"run_id": "r2"}))
    assert {r["status"]: r["n_images"] for r in counts} == {"truncated": 1, "not_image": 1}


def test_previous_run_and_default_pair(con):
    prev = {r["run_id"]: r["previous_run_id"] for r in catalog.run_query(con, "runs").to_pylist()}
    # the failed run is skipped, the manual deployment has its own history
    assert prev == {"r1": None, "r2-crashed": "r1", "r2": "r1", "r3": None}
    pair = lambda params=None: catalog.run_query(con, "run_pair", params).to_pylist()[0]  # noqa: E731
    assert pair() == {"run_a": "r1", "run_b": "r2"}
    assert pair({"run_b": "r2"}) == {"run_a": "r1", "run_b": "r2"}
    assert pair({"run_a": "r1"}) == {"run_a": "r1", "run_b": "r2"}
    assert pair({"run_a": "r3", "run_b": "r1"}) == {"run_a": "r3", "run_b": "r1"}
    # variables are reset after each call on a shared connection
    assert con.execute("SELECT getvariable('run_a')").fetchall() == [(None,)]


def test_comparison_finds_exactly_the_flipped_images(fx, con):
    a = {(r["image_id"], r["method"]): r for r in fx.run_rows("r1")}
    b = {(r["image_id"], r["method"]): r for r in fx.run_rows("r2")}
    changed = {k for k in a if a[k]["pred"] != b[k]["pred"] or a[k]["status"] != b[k]["status"]}
    assert 5 < len(changed) < len(a) // 2  # the fixture has flips, and not everything flipped

    flips = rows_of(catalog.run_query(con, "compare_flips", {"run_a": "r1", "run_b": "r2"}))
    assert {(r["image_id"], r["method"]) for r in flips} == changed
    assert len(flips) == len(changed)
    for r in flips:
        ra, rb = a[(r["image_id"], r["method"])], b[(r["image_id"], r["method"])]
        assert (r["pred_a"], r["pred_b"], r["label"]) == (ra["pred"], rb["pred"], ra["label"])
        ca, cb = ra["pred"] == ra["label"], rb["pred"] == rb["label"]
        assert (r["correct_a"], r["correct_b"]) == (ca, cb)
        assert r["change"] == ("fixed" if cb and not ca else "broken" if ca and not cb else "changed")
    # the default pair is (r1, r2) too
    assert {(r["image_id"], r["method"]) for r in rows_of(catalog.run_query(con, "compare_flips"))} == changed
    # identical prediction sets (r3 reuses r1's rows) have no flips
    assert catalog.run_query(con, "compare_flips", {"run_a": "r1", "run_b": "r3"}).num_rows == 0

    methods = {
        r["method"]: r for r in rows_of(catalog.run_query(con, "compare_methods", {"run_a": "r1", "run_b": "r2"}))
    }
    acc_a, acc_b = expected_accuracy(fx.run_rows("r1")), expected_accuracy(fx.run_rows("r2"))
    for m in METHODS:
        assert methods[m]["delta"] == pytest.approx(acc_b[m]["accuracy"] - acc_a[m]["accuracy"])
        fixed = sum(1 for k in changed if k[1] == m and b[k]["pred"] == b[k]["label"] and a[k]["pred"] != a[k]["label"])
        broken = sum(
            1 for k in changed if k[1] == m and a[k]["pred"] == a[k]["label"] and b[k]["pred"] != b[k]["label"]
        )
        assert (methods[m]["n_fixed"], methods[m]["n_broken"]) == (fixed, broken)
        assert methods[m]["n_changed"] == sum(1 for k in changed if k[1] == m)
        # net change in correct images equals fixed - broken (same images in both runs)
        assert acc_b[m]["correct"] - acc_a[m]["correct"] == fixed - broken

    classes = rows_of(catalog.run_query(con, "compare_classes", {"run_a": "r1", "run_b": "r2", "method": "abs"}))
    pa_, pb_ = (expected_accuracy(fx.run_rows(r), key=lambda r: (r["method"], r["label"])) for r in ("r1", "r2"))
    assert len(classes) == len(CLASSES)
    for r in classes:
        k = ("abs", r["label"])
        assert r["delta"] == pytest.approx(pb_[k]["accuracy"] - pa_[k]["accuracy"])


def test_every_named_query_runs_and_references_views_only(fx, con):
    queries = catalog.list_queries()
    assert {
        "accuracy",
        "per_class_accuracy",
        "confusions",
        "errors",
        "compare_methods",
        "compare_classes",
        "compare_flips",
        "regressions",
        "clip_benchmark",
    } <= set(queries)
    for name, doc in queries.items():
        text = catalog.query_sql(name)
        assert "${root}" not in text and "read_parquet" not in text and doc, name
        params = {"run_id": "r2"} if name == "gallery" else None
        rows = catalog.run_query(con, name, params).num_rows
        # variant_accuracy needs ABS variants (abs-eval analyze), which this fixture has not: tests/test_artifacts.py
        assert rows > 0 or name == "variant_accuracy", name
    for path in catalog.view_files():
        assert path.read_text().lstrip().startswith("--"), f"{path} needs a header comment"


def test_the_report_queries_answer_what_they_replace(fx, con):
    """run_details, labels_seen and attention_maps (the reads of tasks/results/report) against the views
    they read and the rows as written."""
    for run_id in fx.runs:
        got = catalog.run_query(con, "run_details", {"run_id": run_id}).to_pylist()
        want = catalog.run_query(con, "SELECT * FROM runs WHERE run_id = getvariable('run_id')", {"run_id": run_id})
        assert len(got) == 1 and got == want.to_pylist(), run_id
    assert catalog.run_query(con, "run_details").num_rows == len(fx.runs)

    seen = {r["run_id"]: r["n_labels"] for r in catalog.run_query(con, "labels_seen").to_pylist()}
    assert set(seen) == set(fx.runs)
    for run_id, run in fx.runs.items():
        if run["status"] == "completed":
            assert seen[run_id] == len({r["label"] for r in fx.run_rows(run_id) if r["label"] is not None}), run_id
    assert catalog.run_query(con, "labels_seen", {"run_id": "r1"}).column("n_labels").to_pylist() == [seen["r1"]]

    maps = catalog.run_query(con, "attention_maps").to_pylist()  # both cached DINO variants of shard 0
    assert sorted((r["image_id"], r["variant"]) for r in maps) == sorted(
        (i, v) for i in image_ids(0) for v in (DINO_DIGEST, "0ther")
    )
    for r in maps:
        att = attention_map(r["image_id"])
        assert r["grid"] == DINO_GRID and r["attention"] == pytest.approx(
            att if r["variant"] == DINO_DIGEST else att[::-1]
        )
    two = image_ids(0)[:2]
    picked = catalog.run_query(con, "attention_maps", {"dataset": DATASET, "image_ids": two}).to_pylist()
    assert sorted(r["image_id"] for r in picked) == sorted(two * 2)
    assert catalog.run_query(con, "attention_maps", {"dataset": "no-such-dataset"}).num_rows == 0


def _half_written_writer(st: Storage, config: str, shard: int, rows: list[dict]):
    """Start an inference writer the way Storage does it -- bytes go to _tmp/ -- and stop halfway.

    Returns (open file handle, full bytes, tmp path) so the test can finish the commit.
    """
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA), buf)
    data = buf.getvalue()
    tmp = st.path("_tmp", f"{uuid.uuid4().hex}.parquet")
    st.fs.makedirs(st.path("_tmp"), exist_ok=True)
    f = st.fs.open(tmp, "wb")
    f.write(data[: len(data) // 2])
    f.flush()
    return f, data, tmp


def _check_half_written_invisible(root: str) -> None:
    st = Storage(root)
    rows0 = make_rows("c9", 0, "r9")
    write_part(st, "c9", 0, rows0)
    write_run(st, "r9", "c9", "half", 20)
    new_rows = make_rows("c9", 1, "r9")
    f, data, tmp = _half_written_writer(st, "c9", 1, new_rows)
    # a stray partial file inside the partition folder (a writer not using Storage) is not globbed either
    stray = st.path(prediction_part(DATASET, MODEL, "c9", 2) + ".inprogress")
    with st.fs.open(stray, "wb") as g:
        g.write(data[:100])
    try:
        acc = {r["method"]: r for r in catalog.run_query(root, "accuracy", {"run_id": "r9"}).to_pylist()}
        assert {m: r["n"] for m, r in acc.items()} == {m: PER_SHARD for m in METHODS}
        assert catalog.run_query(root, "SELECT DISTINCT shard FROM predictions WHERE config = 'c9'").to_pylist() == [
            {"shard": 0}
        ]
        # finish the write and commit it the way Storage does: whole file, move, then marker
        f.write(data[len(data) // 2 :])
        f.close()
        st.fs.mv(tmp, st.path(prediction_part(DATASET, MODEL, "c9", 1)))
        acc = {r["method"]: r["n"] for r in catalog.run_query(root, "accuracy", {"run_id": "r9"}).to_pylist()}
        assert acc == {m: 2 * PER_SHARD for m in METHODS}
        exp = expected_accuracy(rows0 + new_rows)
        got = {r["method"]: r["correct"] for r in catalog.run_query(root, "accuracy", {"run_id": "r9"}).to_pylist()}
        assert got == {m: e["correct"] for m, e in exp.items()}
    finally:
        if not f.closed:
            f.close()


def test_half_written_shard_is_invisible_local(tmp_path):
    _check_half_written_invisible(str(tmp_path / "root"))


def test_reads_during_concurrent_commits_see_whole_shards(tmp_path):
    """A writer thread commits shards (slow chunked writes to _tmp/, then move, then marker)
    while the reader queries in a loop: every read sees a whole number of shards, never an error."""
    import threading
    import time

    st = Storage(str(tmp_path / "root"))
    write_run(st, "rw", "cw", "live", 21)
    write_part(st, "cw", 0, make_rows("cw", 0, "rw"))
    n_shards = 4
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for shard in range(1, n_shards):
                buf = io.BytesIO()
                pq.write_table(pa.Table.from_pylist(make_rows("cw", shard, "rw"), schema=PREDICTION_SCHEMA), buf)
                data = buf.getvalue()
                tmp = st.path("_tmp", f"{uuid.uuid4().hex}.parquet")
                st.fs.makedirs(st.path("_tmp"), exist_ok=True)
                with st.fs.open(tmp, "wb") as f:
                    for i in range(0, len(data), 512):
                        f.write(data[i : i + 512])
                        f.flush()
                        time.sleep(0.002)
                final = prediction_part(DATASET, MODEL, "cw", shard)
                st.fs.makedirs(st.path(final.rsplit("/", 1)[0]), exist_ok=True)
                st.fs.mv(tmp, st.path(final))
                st.mark_done(final[: -len(".parquet")], {"shard": shard})
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    con = catalog.connect(st.root)
    seen = set()
    t = threading.Thread(target=writer)
    t.start()
    try:
        while not done.is_set() or not seen:
            n = (
                catalog.run_query(
                    con, "SELECT count(*) AS n FROM run_predictions WHERE run_id = 'rw' AND method = 'abs'"
                )
                .column("n")[0]
                .as_py()
            )
            assert n % PER_SHARD == 0 and 1 <= n // PER_SHARD <= n_shards
            seen.add(n // PER_SHARD)
    finally:
        t.join()
        con.close()
    assert not errors, errors
    assert catalog.run_query(st.root, "accuracy", {"run_id": "rw"}).column("n").to_pylist() == [
        n_shards * PER_SHARD
    ] * len(METHODS)
    assert len(seen) >= 2  # the reader really overlapped the writer


def test_memory_root_registers_fsspec(tmp_path):
    root = f"memory://abs-sql-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        fx = build_results(root)
        got = {(r["run_id"], r["method"]): r for r in catalog.run_query(root, "accuracy").to_pylist()}
        for run_id in fx.runs:
            for method, exp in expected_accuracy(fx.run_rows(run_id)).items():
                assert got[(run_id, method)]["correct"] == exp["correct"]
                assert got[(run_id, method)]["n_error"] == exp["n_error"]
        flips = catalog.run_query(root, "compare_flips", {"run_a": "r1", "run_b": "r2"}).num_rows
        assert flips > 0
        _check_half_written_invisible(f"memory://abs-sql-half-{uuid.uuid4().hex}")
        with pytest.raises(ValueError, match="memory"):
            catalog.write_catalog(root, tmp_path / "x.duckdb")
    finally:
        for p in list(fs.store):
            if "/abs-sql-" in p:
                fs.rm(p)


def test_empty_root_has_empty_typed_views(tmp_path):
    con = catalog.connect(str(tmp_path / "empty"))
    try:
        assert catalog.run_query(con, "accuracy").num_rows == 0
        assert catalog.run_query(con, "run_pair").to_pylist() == [{"run_a": None, "run_b": None}]
        assert catalog.run_query(con, "compare_flips").num_rows == 0
        cols = {r[0]: r[1] for r in con.execute("DESCRIBE predictions").fetchall()}
        assert cols["raw_boxes"] == "INTEGER[][]" and cols["config"] == "VARCHAR"
    finally:
        con.close()
    # predictions present but no run record yet (first run still going): views still exist
    st = Storage(str(tmp_path / "norun"))
    write_part(st, "c1", 0, make_rows("c1", 0, "r1"))
    assert catalog.run_query(st.root, "accuracy").num_rows == 0
    assert catalog.run_query(st.root, "SELECT count(*) AS n FROM predictions").to_pylist() == [
        {"n": PER_SHARD * len(METHODS)}
    ]


def test_config_hash_stays_a_string(tmp_path):
    st = Storage(str(tmp_path / "r"))
    write_part(st, "0123", 0, make_rows("0123", 0, "rx"))
    write_run(st, "rx", "0123", "d", 2)
    assert catalog.run_query(st.root, "SELECT DISTINCT config FROM run_predictions").to_pylist() == [{"config": "0123"}]


def test_parts_written_before_a_column_was_added_are_read_by_name(tmp_path):
    """Schema growth: a part written by an older version lacks a column. The views read
    predictions by position (fast) until that happens; then the query is answered by
    reading by name, the old rows get NULL, and a catalog written now reads by name too."""
    st = Storage(str(tmp_path / "r"))
    old_rows = make_rows("c1", 1, "r1")
    old_schema = PREDICTION_SCHEMA.remove(PREDICTION_SCHEMA.get_field_index("margin"))
    # the old file sorts after the new one, so DuckDB meets the mismatch mid-scan
    st.write_parquet(prediction_part(DATASET, MODEL, "c1", 1), pa.Table.from_pylist(old_rows, schema=old_schema))
    write_part(st, "c1", 0, make_rows("c1", 0, "r1"))
    write_run(st, "r1", "c1", "weekly", 1)
    con = catalog.connect(st.root)
    try:
        view_sql = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'predictions'").fetchall()[0][0]
        assert "union_by_name" not in view_sql  # fast path first
        got = catalog.run_query(
            con,
            "SELECT shard, count(*) AS n, count(margin) AS with_margin FROM predictions GROUP BY shard ORDER BY shard",
        ).to_pylist()
        view_sql = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'predictions'").fetchall()[0][0]
        assert "union_by_name" in view_sql
    finally:
        con.close()
    n_ok = sum(r["margin"] is not None for r in make_rows("c1", 0, "r1"))
    assert got == [
        {"shard": 0, "n": PER_SHARD * len(METHODS), "with_margin": n_ok},
        {"shard": 1, "n": PER_SHARD * len(METHODS), "with_margin": 0},
    ]
    assert catalog.mixed_schema_globs(duckdb.connect(), st) == {"predictions/*/*/*/part-*.parquet"}
    out = catalog.write_catalog(st.root, tmp_path / "results.duckdb")
    with duckdb.connect(out, read_only=True) as cat:
        assert cat.execute("SELECT count(*) FROM run_predictions WHERE margin IS NULL AND shard = 1").fetchall()[0][
            0
        ] == PER_SHARD * len(METHODS)
    # one schema again (the old part rewritten): back to reading by position
    write_part(st, "c1", 1, old_rows)
    assert catalog.mixed_schema_globs(duckdb.connect(), st) == set()


def _rounded(row: tuple) -> tuple:
    return tuple(round(v, 12) if isinstance(v, float) else v for v in row)


def test_run_predictions_of_reads_only_the_listed_runs(fx, con):
    """The table macros under the views: the listed runs' rows, exactly what the views hold for them."""
    for ids in (["r1"], ["r2", "r2-crashed"], []):
        got = con.execute(
            "SELECT run_id, count(*) FROM run_predictions_of(?) GROUP BY run_id ORDER BY run_id", [ids]
        ).fetchall()
        assert got == [(r, len(fx.run_rows(r))) for r in sorted(ids)]
        acc = con.execute("SELECT * FROM accuracy_of(?) ORDER BY run_id, method", [ids]).fetchall()
        view = con.execute(
            "SELECT * FROM accuracy WHERE list_contains(?, run_id) ORDER BY run_id, method", [ids]
        ).fetchall()
        # averages may differ in the last bit: DuckDB sums in parallel, in no fixed order
        assert [_rounded(r) for r in acc] == [_rounded(r) for r in view]
    assert (
        con.execute("SELECT count(*) FROM run_predictions_of(NULL)").fetchall()
        == con.execute("SELECT count(*) FROM run_predictions").fetchall()
    )


def test_catalog_file_opens_without_paths(fx, tmp_path):
    out = catalog.write_catalog(fx.root, tmp_path / "results.duckdb")
    con = duckdb.connect(out, read_only=True)
    try:
        n = con.execute("SELECT count(*) FROM accuracy").fetchall()[0][0]
        assert n == len(fx.runs) * len(METHODS)
        con.execute("SET VARIABLE run_a = 'r1'")
        con.execute("SET VARIABLE run_b = 'r2'")
        assert con.execute("SELECT count(*) FROM compare_flips").fetchall()[0][0] > 0
        # the queries of sql/queries run unchanged against the catalog
        assert con.sql(catalog.query_sql("compare_methods")).fetchall()
    finally:
        con.close()
    # rewriting replaces the file atomically (no stray temporaries)
    catalog.write_catalog(fx.root, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.duckdb"]


def _duckdb_cli() -> str | None:
    cand = Path(sys.executable).parent / "duckdb"
    return str(cand) if cand.exists() else shutil.which("duckdb")


@pytest.mark.skipif(_duckdb_cli() is None, reason="duckdb CLI (pip install duckdb-cli) not installed")
def test_duckdb_cli_opens_catalog_and_runs_every_query(fx, tmp_path):
    cli = _duckdb_cli()
    out = catalog.write_catalog(fx.root, tmp_path / "results.duckdb")
    res = subprocess.run([cli, "-csv", out, "-c", "from accuracy"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 + len(fx.runs) * len(METHODS) and "r2-crashed" in res.stdout
    script = "SET VARIABLE run_id = 'r2';\n" + "".join(
        f".read {catalog.QUERIES_DIR / f'{q}.sql'}\n" for q in catalog.list_queries()
    )
    res = subprocess.run([cli, "-csv", out], input=script, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Error" not in res.stdout + res.stderr, res.stdout + res.stderr
    # a catalog with relative paths works from a shell started in the root
    rel = catalog.write_catalog(fx.root, tmp_path / "rel.duckdb", relative=True)
    res = subprocess.run(
        [cli, "-csv", rel, "-c", "select count(*) as n from predictions"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=fx.root,
    )
    assert res.returncode == 0 and res.stdout.split() == ["n", str(sum(len(r) for r in fx.rows.values()))], (
        res.stdout + res.stderr
    )


def test_export_formats(fx, con, tmp_path):
    t = catalog.run_query(con, "accuracy")
    for fmt in ("csv", "parquet", "json", "jsonl"):
        path = export(t, str(tmp_path / f"acc.{fmt}"))
        back = duckdb.connect().execute(f"SELECT count(*) FROM '{path}'").fetchall()[0][0]
        assert back == t.num_rows, fmt
    assert "accuracy" in format_table(t, max_rows=3) and "first 3 shown" in format_table(t, max_rows=3)
    with pytest.raises(ValueError):
        export(t, str(tmp_path / "acc.xlsx"))
    with pytest.raises(KeyError):
        catalog.run_query(con, "no_such_query")
