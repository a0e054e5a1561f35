"""SQL at scale: every named query in ``sql/`` and ``abs-eval status`` over millions of prediction rows.

Why a separate script: the issue-11 targets for SQL (every named query and
``abs-eval status`` under 2 s over the 200,000 rows of an ImageNet-val run and over
10 million rows across many runs) do not need the hours of inference that make
those rows for real. So this script takes one real, completed run (the rows a real
``abs-eval run`` wrote, with their real columns, crop geometry lists included) and
replays it into the real storage layout:

1. ``--images-per-run`` images per run: the template run's prediction rows are
   tiled into shards of ``--shard-size`` images (the default shard size of a run),
   each shard a part file, its rollup (``tasks.store.rollups.write_rollup``, as inference
   commits it: the part's error rows and counts, and the partition's summed counts,
   error rows and rows per run, shard and method) and its done-marker, image ids made
   unique per shard;
2. ``--runs`` runs: that partition hard-linked under other config keys, each with
   a run record of its own (completed, one minute apart, one deployment), so the
   runs are a real history: ``previous_run_id`` chains them and the default
   ``run_a`` / ``run_b`` pair of the compare queries is the last two runs.

Then it writes the ``results.duckdb`` catalog, times every named query from it
(best of ``--reps``, with the parameters a user would pass: one run, a run pair,
method ``abs``; and without parameters: every run), the views ``accuracy``,
``per_class_accuracy`` and ``confusions`` on their own, and ``abs-eval status`` as a
whole command. Then the same with the rollups moved aside (every part counted from
its rows: a root written before rollups existed), side by side, and checks that
both give the same numbers. Nothing is timed while anything else is written.

    .venv/bin/python benchmarks/bench_sql.py                      # 50 runs x 200,000 rows = 10M
    .venv/bin/python benchmarks/bench_sql.py --runs 1             # one ImageNet-val run
    .venv/bin/python benchmarks/bench_sql.py --template abs-output --out sql.json

The template is the latest completed run under ``--template`` (a storage root); by
default a real ``abs-eval run`` over the 1,000 ImageNet classes (one small generated
JPEG per class and two unreadable files, tiny random-weight models; about 3-4 minutes
on 2 cores, kept under ``--work``), because what the aggregates cost grows with the
classes; ``--demo-template`` takes a fresh 12-class ``abs-eval demo`` root instead.
Each replayed part holds every class once (1,000 images of 1,000 classes): the worst
case for per-part counts (a dataset whose parts are shuffled), not ImageNet's sorted
folders (20 classes per part).

    .venv/bin/python benchmarks/bench_sql.py --work /tmp/bench-sql   # keep the template for the next time
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from machine import machine_info, machine_summary  # noqa: E402  (benchmarks/machine.py)

TARGET_S = 2.0


def _abs_eval() -> str:
    exe = Path(sys.executable).with_name("abs-eval")
    return str(exe) if exe.exists() else "abs-eval"


def _env(work: Path) -> dict[str, str]:
    return dict(
        os.environ, PREFECT_HOME=str(work / "prefect"), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false"
    )


def demo_template(work: Path) -> Path:
    """A root with one completed demo run (12 classes), made by the real CLI."""
    root = work / "template"
    subprocess.run(
        [_abs_eval(), "demo", "--root", str(root)],
        env=_env(work),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return root


def _small_photo(path: Path, seed: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = (96, 72) if seed % 3 else (72, 96)
    base = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    a = np.asarray(base, dtype=np.int16) + rng.integers(-24, 24, (h, w, 3))
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=85)


def imagenet_template(work: Path, per_class: int = 1) -> Path:
    """A root with one completed run over the 1,000 ImageNet classes, made by the real CLI.

    Why 1,000 classes: what the aggregate views cost grows with the classes (per-class
    groups, confusion pairs), so a 12-class template understates it. ``per_class`` small
    generated JPEGs per class in the ``imagenet`` layout (``val/<wnid>/*.JPEG``), CuPL-style
    descriptions (M=4), the shipped tiny random-weight models at N=6 crops: the real
    ``abs-eval run`` end to end (a few minutes on 2 cores; cached under ``--work``).
    """
    from tasks.datasets import layout_classes
    from tasks.datasets.imagenet import imagenet_wnids

    root = work / f"template-imagenet-{per_class}"
    if (root / "template.done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    src = work / f"imagenet-src-{per_class}" / "val"
    for label, wnid in enumerate(imagenet_wnids()):
        (src / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _small_photo(src / wnid / f"ILSVRC2012_val_{label:04d}{i:04d}.JPEG", label * 1009 + i)
    for label in (7, 503):  # two files that are not images: error rows, as real data has
        (src / imagenet_wnids()[label] / f"ILSVRC2012_val_{label:04d}9999.JPEG").write_bytes(b"not a JPEG\n")
    desc = src.parent / "cupl.json"
    _, names = layout_classes("imagenet", str(src))
    desc.write_text(json.dumps({n: [f"a photo of a {n}, view {j}." for j in range(4)] for n in names}))
    subprocess.run(
        [
            _abs_eval(),
            "run",
            "--root",
            str(root),
            "--dataset",
            "imagenet",
            "--layout",
            "imagenet",
            "--source",
            str(src),
            "--descriptions",
            str(desc),
            "--clip-model",
            "abs-tiny-vit-b16",
            "--clip-pretrained",
            "random",
            "--dino-model",
            "abs-tiny-dino-vit-b16",
            "--dino-pretrained",
            "random",
            "--n-crops",
            "6",
            "--top-k",
            "5",
            "--m",
            "4",
            "--deployment",
            "bench-sql-template",
        ],
        env=_env(work),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (root / "template.done").write_text("ok\n")
    return root


def template_run(root: Path) -> dict:
    """The latest completed run record under ``root``."""
    from tasks.results.runs import list_run_ids
    from tasks.store import Storage
    from tasks.store.paths import run_record_json

    st = Storage(str(root))
    for rid in list_run_ids(st):
        rec = st.read_json(run_record_json(rid))
        if rec.get("status") == "completed":
            return rec
    raise SystemExit(f"no completed run under {root}: run `abs-eval demo --root {root}` first")


def build(template: Path, dest: Path, images_per_run: int, runs: int, shard_size: int) -> dict:
    """Write ``runs`` completed runs of ``images_per_run`` images each under ``dest``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tasks.results.runs import RunRecord
    from tasks.store import Storage
    from tasks.store.paths import marker_key, prediction_part, predictions_dir, rollup_of
    from tasks.store.rollups import write_rollup

    rec = template_run(template)
    src_dir = template / predictions_dir(rec["dataset"], rec["model"], rec["config"])
    rows = pa.concat_tables([pq.read_table(p) for p in sorted(src_dir.glob("part-*.parquet"))])
    rows = rows.drop_columns([c for c in ("dataset", "model", "config") if c in rows.column_names])
    rows = rows.sort_by([("image_id", "ascending"), ("method", "ascending")])  # an image's rows together
    images = rows.column("image_id").unique()
    n_methods = max(1, rows.num_rows // max(1, len(images)))
    st = Storage(str(dest))
    first_run = f"{rec['run_id']}-x000"
    configs = [f"{rec['config'][:10]}x{k:05d}" for k in range(runs)]
    n_shards = -(-images_per_run // shard_size)
    t0 = time.perf_counter()
    for s in range(n_shards):
        n = min(shard_size, images_per_run - s * shard_size)
        # the template's images cycled to n, each copy renamed "<image_id>@<shard>.<copy>"
        reps = -(-n // len(images))
        block = pa.concat_tables([rows] * reps).slice(0, n * n_methods)
        new_ids = [
            f"{v}@{s}.{(k // n_methods) // len(images)}" for k, v in enumerate(block.column("image_id").to_pylist())
        ]
        block = block.set_column(block.column_names.index("image_id"), "image_id", pa.array(new_ids))
        block = block.set_column(
            block.column_names.index("shard"), "shard", pa.array([s] * block.num_rows, block.schema.field("shard").type)
        )
        block = block.set_column(block.column_names.index("run_id"), "run_id", pa.array([first_run] * block.num_rows))
        rel = prediction_part(rec["dataset"], rec["model"], configs[0], s)
        st.write_parquet(rel, block)
        write_rollup(st, rel, block)  # as tasks/steps/infer.py: the part, its rollup, then the part's marker
        n_err = int(pc.sum(pc.not_equal(block.column("status"), "ok")).as_py() or 0) // n_methods
        st.mark_done(marker_key(rel), {"run_id": first_run, "n_images": n, "n_error": n_err})
    write_s = time.perf_counter() - t0
    # the other runs: the same files (parts, rollups, markers), hard-linked under other config keys
    start = datetime.fromisoformat(str(rec["started_at"]))
    for k, cfg in enumerate(configs):
        if k:
            for sub in ("", "_commits/"):
                for of in (lambda d: d, rollup_of):
                    a = dest / f"{sub}{of(predictions_dir(rec['dataset'], rec['model'], configs[0]))}"
                    b = dest / f"{sub}{of(predictions_dir(rec['dataset'], rec['model'], cfg))}"
                    b.mkdir(parents=True, exist_ok=True)
                    for f in a.iterdir():
                        os.link(f, b / f.name)
        r = {f: v for f, v in rec.items() if f in RunRecord.__dataclass_fields__}
        at = start + timedelta(minutes=k)
        r.update(
            run_id=f"{rec['run_id']}-x{k:03d}",
            config=cfg,
            deployment="bench-sql",
            status="completed",
            started_at=at,
            ended_at=at + timedelta(seconds=50),
            heartbeat_at=None,
            expires_at=None,
            n_images=images_per_run,
            shards_total=n_shards,
            shards_computed=n_shards if k == 0 else 0,
            shards_reused=0 if k == 0 else n_shards,
            reused_shards=[],
        )
        RunRecord(**r).write(st)
    total = runs * images_per_run * n_methods
    part_dir = dest / predictions_dir(rec["dataset"], rec["model"], configs[0])
    roll_dir = dest / rollup_of(predictions_dir(rec["dataset"], rec["model"], configs[0]))
    groups = sum(pq.ParquetFile(p).metadata.num_rows for p in roll_dir.glob("part-*.parquet"))

    def current(kind: str) -> list[Path]:
        return sorted(roll_dir.glob(f"{kind}-*.parquet"))[-1:]

    return {
        "template_run": rec["run_id"],
        "classes": len(set(rows.column("label").to_pylist()) - {None}),
        "methods": n_methods,
        "rows_per_run": images_per_run * n_methods,
        "rows": total,
        "runs": runs,
        "parts": runs * n_shards,
        "write_s": write_s,
        "part_bytes": sum(p.stat().st_size for p in part_dir.glob("part-*.parquet")) // n_shards,
        "rollup_bytes": sum(p.stat().st_size for p in roll_dir.glob("part-*.parquet")) // n_shards,
        "rollup_rows": groups // n_shards,
        # the partition's current files (the one with the most parts; the previous one stays beside it)
        "partition_rollup_bytes": sum(p.stat().st_size for p in current("all")),
        "partition_rollup_rows": sum(pq.ParquetFile(p).metadata.num_rows for p in current("all")),
        "partition_error_rows": sum(pq.ParquetFile(p).metadata.num_rows for p in current("errors-all")),
        "partition_shard_rows": sum(pq.ParquetFile(p).metadata.num_rows for p in current("shards-all")),
    }


def time_queries(root: Path, catalog: Path, reps: int) -> tuple[dict[str, float], dict[str, list]]:
    """Seconds per named query (best of ``reps``) from the catalog, and for ``abs-eval status``;
    and each query's result rows (to check that two ways of computing them agree)."""
    import duckdb

    from tasks.results.catalog import list_queries, query_parameters, query_sql, write_catalog

    write_catalog(str(root), str(catalog))
    con = duckdb.connect(str(catalog), read_only=True)
    runs = [r[0] for r in con.sql("select run_id from runs order by started_at").fetchall()]
    params = {"run_id": runs[-1], "run_a": runs[max(0, len(runs) - 2)], "run_b": runs[-1], "method": "abs"}
    out: dict[str, float] = {}
    results: dict[str, list] = {}

    def best_of(name: str, values: dict) -> float:
        best = None
        for _ in range(reps):
            for k in params:
                con.execute(f"RESET VARIABLE {k}")
            for k, v in values.items():
                con.execute(f"SET VARIABLE {k} = ?", [v])
            t = time.perf_counter()
            rows = con.sql(query_sql(name)).fetchall()
            d = time.perf_counter() - t
            best = d if best is None else min(best, d)
        results[f"{name}{'' if values else ' (no parameters)'}"] = rows
        return best

    for name in list_queries():
        out[name] = best_of(name, params)
    # the same queries with no parameter (every run, or the default run pair), where that is allowed
    for name in list_queries():
        if not query_parameters(name, required_only=True):
            out[f"{name} (no parameters)"] = best_of(name, {})
    # the views people query directly (every run: the aggregates over all rows)
    for view in VIEWS:
        best = None
        for _ in range(reps):
            t = time.perf_counter()
            rows = con.sql(f"FROM {view}").fetchall()
            d = time.perf_counter() - t
            best = d if best is None else min(best, d)
        out[f"FROM {view}"] = best
        results[f"FROM {view}"] = rows
    con.close()
    best = None
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([_abs_eval(), "status", "--root", str(root)], capture_output=True, check=True)
        d = time.perf_counter() - t
        best = d if best is None else min(best, d)
    out["abs-eval status (whole command)"] = best
    return out, results


#: Views timed on their own (``FROM <view>``), beside the named queries.
VIEWS = ("accuracy", "per_class_accuracy", "confusions")


def _same(a: list, b: list) -> bool:
    """Equal result rows, in any order, floats to 12 significant digits (DuckDB sums in parallel)."""

    def norm(rows: list) -> list:
        return sorted((tuple(float(f"{v:.12g}") if isinstance(v, float) else v for v in r) for r in rows), key=repr)

    return norm(a) == norm(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--template",
        help="a storage root holding a completed run (default: a real run over the "
        "1,000 ImageNet classes, made once under --work)",
    )
    ap.add_argument("--demo-template", action="store_true", help="template: a fresh `abs-eval demo` root (12 classes)")
    ap.add_argument(
        "--no-raw", action="store_true", help="time with rollups only (not also counting every part from its rows)"
    )
    ap.add_argument("--images-per-run", type=int, default=50_000, help="images per run (ImageNet val: 50,000)")
    ap.add_argument("--runs", type=int, default=50, help="runs (50 x 200,000 rows = 10 million)")
    ap.add_argument("--shard-size", type=int, default=1000, help="images per part file (the run default)")
    ap.add_argument("--reps", type=int, default=2, help="timings per query; the best is kept")
    ap.add_argument("--work", help="where the replayed root goes (default: a temporary folder, removed)")
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()

    info = machine_info()
    print(machine_summary(info))
    tmp = Path(tempfile.mkdtemp(prefix="bench-sql-")) if not args.work else None
    work = Path(args.work) if args.work else tmp
    try:
        if args.template:
            template = Path(args.template)
        elif args.demo_template:
            template = demo_template(work)
        else:
            print("[sql] template: one real run over the 1,000 ImageNet classes (a few minutes the first time)")
            template = imagenet_template(work)
        dest = work / "root"
        shutil.rmtree(dest, ignore_errors=True)
        shape = build(template, dest, args.images_per_run, args.runs, args.shard_size)
        print(
            f"[sql] {shape['rows']:,} prediction rows: {shape['runs']} runs x {shape['rows_per_run']:,} rows "
            f"({shape['methods']} methods, {shape['classes']} classes), {shape['parts']} part files "
            f"(written in {shape['write_s']:.1f} s)"
        )
        print(
            f"[sql] per part: {shape['part_bytes']:,} bytes of rows, rollup {shape['rollup_bytes']:,} bytes "
            f"({shape['rollup_rows']:,} count rows); per run: summed counts {shape['partition_rollup_bytes']:,} "
            f"bytes ({shape['partition_rollup_rows']:,} rows), error rows {shape['partition_error_rows']:,}, "
            f"rows per shard and method {shape['partition_shard_rows']:,}"
        )
        seconds, results = time_queries(dest, work / "results.duckdb", args.reps)
        raw: dict[str, float] = {}
        same: dict[str, bool] = {}
        if not args.no_raw:
            # the same queries with every part counted from its rows: the rollups moved aside (what a
            # root written before rollups existed costs; and the numbers must not change)
            off = dest / "rollups.off"
            os.rename(dest / "rollups", off)
            try:
                raw, raw_results = time_queries(dest, work / "results-raw.duckdb", args.reps)
            finally:
                os.rename(off, dest / "rollups")
            same = {k: _same(results[k], raw_results[k]) for k in results}
        width = max(map(len, seconds))
        print(f"  {'query':<{width}}  {'raw rows':>9}  {'rollups':>9}")
        for name, s in seconds.items():
            r = f"{raw[name]:7.3f} s" if name in raw else ""
            check = "" if name not in same else ("  same numbers" if same[name] else "  NUMBERS DIFFER")
            print(f"  {name:<{width}}  {r:>9}  {s:7.3f} s  {'ok' if s < TARGET_S else 'OVER the 2 s target'}{check}")
        worst = max(seconds.values())
        print(
            f"[sql] slowest {worst:.3f} s; target < {TARGET_S:.0f} s each: {'met' if worst < TARGET_S else 'NOT met'}"
        )
        if same and not all(same.values()):
            print(f"[sql] results differ between rollups and rows: {', '.join(k for k, v in same.items() if not v)}")
        if args.out:
            Path(args.out).write_text(
                json.dumps(
                    {"machine": info, **shape, "seconds": seconds, "raw_seconds": raw, "same_numbers": same}, indent=2
                )
            )
            print(f"[out] {args.out}")
        if same and not all(same.values()):
            raise SystemExit(1)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
