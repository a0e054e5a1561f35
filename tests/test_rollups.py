"""Per-part rollups: the aggregate views read each prediction part's counts, and give exactly the
numbers of the raw rows (the source of truth), whatever mix of parts has a rollup.

The parts are written by the real inference step (``tasks.steps.infer.infer_shard``, the tiny random-weight
models) under run records written by ``tasks.results.runs.RunRecord``, so the root has what real roots have:

    dataset "mini" (folder, 3 classes, bad files -> error rows), shards of 4 images, config C:
        r-crashed   computed shards 0, 1 and died (running, lease expired: interrupted)
        r-full      completed: reused shards 0, 1 and computed the rest
        r-rerun     completed: reused everything (a rerun of an unchanged config)
        r-live      running (lease in the future): reused shard 0 only so far
    dataset "ina" (ImageNet-A layout: 3 of the 200 classes, labels index the subset), one run r-ina

Every view and named query is compared three ways: from rollups, from the rows (rollups moved
aside: a root written before rollups existed), and against the aggregate SQL over run_predictions
(the raw-row definitions the views had before rollups).
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pipeline_fixtures import SMALL_ABS, Tree, make_folder_source, make_spec, photo_bytes, prepare_dataset

from abs_model import ABSConfig
from tasks.datasets.imagenet import imagenet_wnids, official_subset_wnids
from tasks.results import catalog
from tasks.results.runs import RunRecord
from tasks.run.context import build_context
from tasks.steps.dino_cache import dino_shard
from tasks.steps.infer import infer_shard
from tasks.store import Storage, rollups
from tasks.store.paths import marker_key, partition_rollup, prediction_part, rollup_of, rollup_part
from tasks.store.tables import ROLLUP_SCHEMA

T0 = datetime(2026, 3, 1, 3, 0, tzinfo=timezone.utc)

#: The aggregate views as they were defined over the rows (before rollups): the reference.
RAW_ACCURACY = """
WITH per_class AS (
    SELECT run_id, dataset, model, config, method, label,
           count(*) AS n, count(*) FILTER (WHERE status = 'ok') AS n_ok,
           count(*) FILTER (WHERE status <> 'ok') AS n_error,
           count(*) FILTER (WHERE correct) AS n_correct,
           count(*) FILTER (WHERE status = 'ok' AND coalesce(list_contains(top5, label), false)) AS n_correct5
    FROM run_predictions GROUP BY ALL
)
SELECT run_id, dataset, model, config, method, sum(n)::BIGINT AS n, sum(n_ok)::BIGINT AS n_ok,
       sum(n_error)::BIGINT AS n_error, sum(n_correct)::BIGINT AS correct, sum(n_correct5)::BIGINT AS correct5,
       avg(n_correct / n_ok) FILTER (WHERE n_ok > 0) AS mean_per_class_recall
FROM per_class GROUP BY ALL
"""
RAW_PER_CLASS = """
SELECT run_id, dataset, model, config, method, label, any_value(class_name) AS class_name,
       count(*) AS n, count(*) FILTER (WHERE status = 'ok') AS n_ok,
       count(*) FILTER (WHERE status <> 'ok') AS n_error, count(*) FILTER (WHERE correct) AS correct
FROM run_predictions GROUP BY run_id, dataset, model, config, method, label
"""
RAW_CONFUSIONS = """
SELECT run_id, dataset, model, config, method, label, any_value(class_name) AS class_name,
       pred, any_value(pred_name) AS pred_name, count(*) AS n
FROM run_predictions WHERE status = 'ok' AND pred <> label
GROUP BY run_id, dataset, model, config, method, label, pred
"""
#: The errors view over the rows (before error rows files): the reference.
RAW_ERRORS = """
SELECT run_id, deployment, dataset, model, config, shard, image_id, method, label, class_name, status, error, computed_by
FROM run_predictions WHERE status <> 'ok'
"""
#: What the runs view counts per run, over the rows the run stands for (before shards-all files).
RAW_RUN_COUNTS = """
SELECT r.run_id, r.status,
       coalesce(c.shards_done, 0) AS shards_done,
       coalesce(c.shards_computed, 0) AS shards_computed,
       coalesce(c.shards_done, 0) - coalesce(c.shards_computed, 0) AS shards_reused,
       coalesce(c.n_images, 0) AS n_images, coalesce(c.n_ok, 0) AS n_ok, coalesce(c.n_error, 0) AS n_error
FROM run_records AS r
LEFT JOIN (
    SELECT run_id, count(DISTINCT shard) AS shards_done,
           count(DISTINCT shard) FILTER (WHERE computed_by = run_id) AS shards_computed,
           count(DISTINCT image_id) AS n_images,
           count(DISTINCT image_id) FILTER (WHERE status = 'ok') AS n_ok,
           count(DISTINCT image_id) FILTER (WHERE status <> 'ok') AS n_error
    FROM run_predictions GROUP BY run_id
) AS c USING (run_id)
"""
VIEW_ERRORS = (
    "SELECT run_id, deployment, dataset, model, config, shard, image_id, method, label, class_name, "
    "status, error, computed_by FROM errors"
)
VIEW_RUN_COUNTS = (
    "SELECT run_id, status, shards_done, shards_computed, shards_reused, n_images, n_ok, n_error FROM runs"
)
VIEW_ACCURACY = (
    "SELECT run_id, dataset, model, config, method, n, n_ok, n_error, correct, correct5, "
    "mean_per_class_recall FROM accuracy"
)
VIEW_PER_CLASS = (
    "SELECT run_id, dataset, model, config, method, label, class_name, n, n_ok, n_error, correct "
    "FROM per_class_accuracy"
)
VIEW_CONFUSIONS = "SELECT run_id, dataset, model, config, method, label, class_name, pred, pred_name, n FROM confusions"


def norm(rows) -> list:
    """Result rows in a fixed order, floats to 12 significant digits (DuckDB sums in parallel), NaN as
    ``"NaN"`` (two NaNs never compare equal; clip_benchmark's acc5 is NaN below 5 classes)."""
    if isinstance(rows, pa.Table):
        rows = [tuple(r.values()) for r in rows.to_pylist()]
    return sorted(
        (tuple(("NaN" if v != v else float(f"{v:.12g}")) if isinstance(v, float) else v for v in r) for r in rows),
        key=repr,
    )


def record(
    st: Storage,
    run_id: str,
    dataset: str,
    model: str,
    config: str,
    day: int,
    status: str,
    reused: list[int] = (),
    expires: datetime | None = None,
) -> None:
    RunRecord(
        run_id=run_id,
        dataset=dataset,
        model=model,
        config=config,
        deployment="weekly",
        started_at=T0 + timedelta(days=day),
        ended_at=None if status == "running" else T0 + timedelta(days=day, hours=1),
        status=status,
        reused_shards=list(reused),
        expires_at=expires,
        host="elsewhere",
        pid=None,
    ).write(st)


def infer_all(ctx, dino: dict, run_id: str, shards=None) -> list:
    info = ctx.info
    return [
        infer_shard(
            ctx.storage,
            ctx.classifier,
            dataset=info.dataset,
            model=ctx.spec.model_name,
            config=ctx.config_hash,
            shard=sh.index,
            dino_path=dino[sh.index].path,
            classnames=list(info.classnames),
            run_id=run_id,
            images_per_batch=4,
        )
        for sh in info.shards
        if shards is None or sh.index in shards
    ]


def dino_all(ctx) -> dict:
    return {
        sh.index: dino_shard(
            ctx.storage,
            ctx.info.dataset,
            sh.index,
            ctx.info.fingerprint,
            ctx.dino,
            max_image_side=ctx.spec.abs.max_image_side,
        )
        for sh in ctx.info.shards
    }


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    base = tmp_path_factory.mktemp("rollups")
    root = str(base / "root")
    st = Storage(root)
    # -- a folder dataset with error rows, four runs of one config
    src = str(base / "src")
    make_folder_source(src, ["cat", "dog", "owl"], per_class=4, bad=[("cat", "empty.jpg"), ("dog", "text.jpg")])
    prepare_dataset(root, "folder", src, "mini", images_per_shard=4, descriptions="mini-desc")
    ctx = build_context(root, make_spec("mini", "mini-desc", templates="none"))
    dino = dino_all(ctx)
    model, cfg = ctx.spec.model_name, ctx.config_hash
    assert ctx.info.n_shards == 4
    infer_all(ctx, dino, "r-crashed", shards={0, 1})
    record(st, "r-crashed", "mini", model, cfg, 1, "running", expires=T0)
    infer_all(ctx, dino, "r-full")
    record(st, "r-full", "mini", model, cfg, 2, "completed", reused=[0, 1])
    record(st, "r-rerun", "mini", model, cfg, 3, "completed", reused=[0, 1, 2, 3])
    record(
        st,
        "r-live",
        "mini",
        model,
        cfg,
        4,
        "running",
        reused=[0],
        expires=datetime.now(timezone.utc) + timedelta(days=1),
    )
    # -- a class subset: ImageNet-A folders, labels index the 3 classes present (of 200)
    wnids = imagenet_wnids()
    official = sorted(official_subset_wnids("imagenet_a") or (), key=wnids.index)
    picked = [official[0], official[5], official[120]]
    isrc = base / "ina-src"
    t = Tree(str(isrc))
    for n, w in enumerate(picked):
        for k in range(2):
            t.put(f"{w}/{w}_{k}.JPEG", photo_bytes(100 + 2 * n + k, 64 + 8 * k, 56 + 8 * n))
    t.put(f"{picked[1]}/broken.JPEG", b"not a jpeg either")
    prepare_dataset(root, "imagenet-a", str(isrc), "ina", images_per_shard=4, descriptions="ina-desc", n_descriptions=2)
    ictx = build_context(
        root,
        make_spec(
            "ina",
            "ina-desc",
            ABSConfig(n_crops=SMALL_ABS.n_crops, top_k=SMALL_ABS.top_k, n_descriptions=2),
            templates="none",
        ),
    )
    infer_all(ictx, dino_all(ictx), "r-ina")
    record(st, "r-ina", "ina", ictx.spec.model_name, ictx.config_hash, 5, "completed")
    return type("Real", (), {"root": root, "st": st, "ctx": ctx, "dino": dino, "model": model, "config": cfg})


def three_ways(con) -> dict[str, tuple[list, list]]:
    """Each aggregate view (and errors, and the runs view's counts) against its raw-row definition, on one connection."""
    return {
        name: (norm(con.execute(view).fetchall()), norm(con.execute(raw).fetchall()))
        for name, view, raw in (
            ("accuracy", VIEW_ACCURACY, RAW_ACCURACY),
            ("per_class_accuracy", VIEW_PER_CLASS, RAW_PER_CLASS),
            ("confusions", VIEW_CONFUSIONS, RAW_CONFUSIONS),
            ("errors", VIEW_ERRORS, RAW_ERRORS),
            ("runs", VIEW_RUN_COUNTS, RAW_RUN_COUNTS),
        )
    }


def every_result(root: str) -> dict[str, list]:
    """Every named query (with and without parameters) and aggregate view over ``root``."""
    con = catalog.connect(root)
    try:
        out = {}
        for name in catalog.list_queries():
            for params in (
                {},
                {"run_id": "r-full", "run_a": "r-full", "run_b": "r-rerun", "method": "abs"},
                {"run_id": "r-crashed", "run_a": "r-crashed", "run_b": "r-full"},
                {"run_id": "r-live", "run_a": "r-crashed", "run_b": "r-live"},
            ):
                if catalog.query_parameters(name, required_only=True) and not params:
                    continue
                out[f"{name} {sorted(params.items())}"] = norm(catalog.run_query(con, name, params))
        for view in (
            "accuracy",
            "per_class_accuracy",
            "confusions",
            "compare_methods",
            "compare_classes",
            "regressions",
            "errors",
            "runs",
        ):
            out[view] = norm(catalog.run_query(con, view))
        return out
    finally:
        con.close()


def aside(root: str, name: str = "rollups"):
    """Move the rollups out of the root (a root written before they existed); returns the undo."""
    src, dst = Path(root) / name, Path(root) / f"{name}.aside"
    os.rename(src, dst)
    return lambda: os.rename(dst, src)


# ---------------------------------------------------------------------- tests
def test_every_committed_part_has_its_rollup(real):
    st = real.st
    parts = st.glob("predictions/*/*/*/part-*.parquet")
    rollup_files = st.glob("rollups/*/*/*/part-*.parquet")
    assert len(parts) == 4 + 2 and len(rollup_files) == len(parts)
    for p in parts:
        rel = os.path.relpath(p, st.root_path)
        roll = rollup_of(rel)
        assert st.is_done(marker_key(roll)) and st.is_done(marker_key(rel))
        table = st.read_parquet(roll)
        assert table.schema.equals(ROLLUP_SCHEMA, check_metadata=False)
        rows = st.read_parquet(rel)
        assert sum(table.column("n").to_pylist()) == rows.num_rows
        assert table.num_rows < rows.num_rows  # counts, not rows
    assert rollup_part("mini", real.model, real.config, 2) == rollup_of(
        prediction_part("mini", real.model, real.config, 2)
    )
    # and each partition's summed counts, one file per partition, over all its parts
    summed = st.glob("rollups/*/*/*/all-*.parquet")
    assert len(summed) == 2
    for p in summed:
        parts = st.glob(
            os.path.dirname(os.path.relpath(p, st.root_path)).replace("rollups/", "predictions/", 1) + "/part-*.parquet"
        )
        t = pq.read_table(p)
        assert os.path.basename(p).startswith(f"all-{len(parts):05d}-")
        assert sum(t.column("n").to_pylist()) == sum(pq.ParquetFile(x).metadata.num_rows for x in parts)


def test_views_from_rollups_equal_the_raw_rows(real):
    con = catalog.connect(real.root)
    try:
        got = three_ways(con)
        runs = {r[0] for r in con.execute("SELECT DISTINCT run_id FROM accuracy").fetchall()}
        errors = con.execute("SELECT sum(n_error) FROM accuracy WHERE run_id = 'r-full'").fetchall()[0][0]
        ina = con.execute("SELECT DISTINCT label FROM per_class_accuracy WHERE run_id = 'r-ina' ORDER BY 1").fetchall()
    finally:
        con.close()
    for name, (view, raw) in got.items():
        assert view == raw and view, name
    assert runs == {"r-crashed", "r-full", "r-rerun", "r-live", "r-ina"}
    assert errors == 2 * 3  # two bad files, one row per method
    assert ina == [(0,), (1,), (2,)]  # subset positions, not the 1000-class indices


def test_every_query_is_the_same_without_rollups(real):
    """An older root (no rollups): every part is counted from its rows, the numbers do not change."""
    with_rollups = every_result(real.root)
    undo = aside(real.root)
    try:
        without = every_result(real.root)
        con = catalog.connect(real.root)
        try:
            for name, (view, raw) in three_ways(con).items():
                assert view == raw, name
        finally:
            con.close()
    finally:
        undo()
    assert with_rollups.keys() == without.keys()
    for k in with_rollups:
        assert with_rollups[k] == without[k], k
    assert any(v for k, v in with_rollups.items() if k.startswith("confusions"))


def test_mixed_root_and_build_rollups(real, tmp_path):
    root = str(tmp_path / "copy")
    shutil.copytree(real.root, root)
    st = Storage(root)
    want = every_result(root)
    # parts 1 and 3 written before rollups existed; part 2 of a crashed run: no marker, no rollup
    for shard in (1, 2, 3):
        rollups.drop_rollup(st, prediction_part("mini", real.model, real.config, shard))
    st.fs.rm(st.path(st.marker_path(marker_key(prediction_part("mini", real.model, real.config, 2)))))
    assert len(st.glob("rollups/*/*/*/part-*.parquet")) == 6 - 3
    assert len(st.glob("rollups/dataset=mini/*/*/all-*.parquet")) == 0
    assert every_result(root) == want
    assert not st.glob("rollups/dataset=mini/*/*/errors-part-0000[123].parquet")
    built = rollups.build_rollups(root)

    def both(shard: int) -> list[str]:  # a part's rollup and its error rows file
        part = prediction_part("mini", real.model, real.config, shard)
        return [rollup_of(part), rollups.errors_of_part(part)]

    assert sorted(built) == sorted(both(1) + both(3))  # not the unmarked one
    for kind in ("all", "shards-all", "errors-all"):  # part 2 is still counted from its rows
        assert len(st.glob(f"rollups/dataset=mini/*/*/{kind}-*.parquet")) == 0, kind
    assert rollups.build_rollups(root) == []
    assert every_result(root) == want
    # part 2 committed again (its marker): build_rollups completes the partition
    st.mark_done(marker_key(prediction_part("mini", real.model, real.config, 2)), {"run_id": "r-full"})
    assert sorted(rollups.build_rollups(root)) == sorted(both(2))
    for kind in ("all", "shards-all", "errors-all"):
        assert len(st.glob(f"rollups/dataset=mini/*/*/{kind}-*.parquet")) == 1, kind
    assert every_result(root) == want
    # a root written after rollups but before error rows files: build_rollups adds only those
    for shard in range(4):
        st.fs.rm(st.path(rollups.errors_of_part(prediction_part("mini", real.model, real.config, shard))))
    assert every_result(root) == want
    assert sorted(rollups.build_rollups(root)) == sorted(
        rollups.errors_of_part(prediction_part("mini", real.model, real.config, s)) for s in range(4)
    )
    assert every_result(root) == want


def test_the_views_read_the_rollups_and_ignore_one_without_its_part(real, tmp_path):
    """A completed run reads its partition's summed counts (all-*), an unfinished one its parts' rollups:
    a doctored file changes exactly the numbers that read it. A rollup whose part is gone counts for nothing."""
    root = str(tmp_path / "copy")
    shutil.copytree(real.root, root)
    st = Storage(root)
    pdir = os.path.dirname(prediction_part("mini", real.model, real.config, 0))
    summed = partition_rollup(pdir, [f"part-{s:05d}.parquet" for s in range(4)])
    assert st.exists(summed)
    q = "SELECT run_id, sum(n) AS n FROM accuracy WHERE dataset = 'mini' GROUP BY run_id ORDER BY run_id"

    def totals() -> dict:
        return {r["run_id"]: r["n"] for r in catalog.run_query(root, q).to_pylist()}

    want = totals()
    assert want == {"r-crashed": 8 * 3, "r-full": 14 * 3, "r-live": 4 * 3, "r-rerun": 14 * 3}

    def doctor(rel: str) -> int:
        t = st.read_parquet(rel)
        st.write_parquet(rel, t.set_column(t.schema.get_field_index("n"), "n", pc.multiply(t.column("n"), 2)))
        return sum(t.column("n").to_pylist())

    extra = doctor(summed)
    assert totals() == {**want, "r-full": want["r-full"] + extra, "r-rerun": want["r-rerun"] + extra}
    part0 = prediction_part("mini", real.model, real.config, 0)
    extra0 = doctor(rollup_of(part0))
    assert totals() == {
        "r-crashed": want["r-crashed"] + extra0,
        "r-live": want["r-live"] + extra0,
        "r-full": want["r-full"] + extra,
        "r-rerun": want["r-rerun"] + extra,
    }
    rollups.write_rollup(st, part0, st.read_parquet(part0))  # rewritten: the part's and the partition's counts
    assert totals() == want
    assert [os.path.relpath(p, st.root_path) for p in st.glob(f"{rollup_of(pdir)}/all-*.parquet")] == [summed]
    # the part removed (to be recomputed): its rollup alone counts for nothing, as in the raw views,
    # and the summed counts no longer match the partition's parts
    part3 = prediction_part("mini", real.model, real.config, 3)
    removed = st.read_parquet(part3).num_rows
    st.fs.rm(st.path(part3))
    con = catalog.connect(root)
    try:
        for name, (view, raw) in three_ways(con).items():
            assert view == raw, name
        assert con.execute(
            "SELECT count(*) FROM partition_rollup_files WHERE partition LIKE 'dataset=mini/%'"
        ).fetchall() == [(0,)]
    finally:
        con.close()
    assert totals()["r-full"] == want["r-full"] - removed and st.exists(rollup_of(part3))


def test_errors_and_run_counts_read_the_partition_files(real, tmp_path):
    """The errors view reads a partition's error rows file (errors-all-*), the runs view its rows per run,
    shard and method (shards-all-*), each only while it covers the parts there; else each part's file
    (errors-part-*, the part rollup), else the part's rows: a doctored file changes exactly what reads it."""
    root = str(tmp_path / "copy")
    shutil.copytree(real.root, root)
    st = Storage(root)
    pdir = os.path.dirname(prediction_part("mini", real.model, real.config, 0))
    names = [f"part-{s:05d}.parquet" for s in range(4)]
    errors_all, shards_all = (
        os.path.join(
            os.path.dirname(partition_rollup(pdir, names)),
            kind + os.path.basename(partition_rollup(pdir, names))[len("all") :],
        )
        for kind in ("errors-all", "shards-all")
    )
    assert st.exists(errors_all) and st.exists(shards_all)
    assert st.read_parquet(errors_all).num_rows == 2 * 3  # two bad files x three methods
    counts_q = (
        "SELECT run_id, status, shards_done, shards_computed, shards_reused, n_images, n_error FROM runs "
        "WHERE dataset = 'mini' ORDER BY run_id"
    )
    want_counts = [tuple(r.values()) for r in catalog.run_query(root, counts_q).to_pylist()]
    assert want_counts == [
        ("r-crashed", "interrupted", 2, 2, 0, 8, 1),
        ("r-full", "completed", 4, 2, 2, 14, 2),
        ("r-live", "running", 1, 0, 1, 4, 1),
        ("r-rerun", "completed", 4, 0, 4, 14, 2),
    ]
    errors_q = "SELECT run_id, image_id, method, error FROM errors WHERE dataset = 'mini' ORDER BY ALL"
    want_errors = catalog.run_query(root, errors_q).to_pylist()
    assert {r["run_id"] for r in want_errors} == {"r-crashed", "r-full", "r-live", "r-rerun"}

    def doctor(rel: str, column: str, fn) -> None:
        t = st.read_parquet(rel)
        st.write_parquet(rel, t.set_column(t.schema.get_field_index(column), column, fn(t.column(column))))

    doctor(errors_all, "error", lambda c: pc.binary_join_element_wise(c, "!", ""))
    assert catalog.run_query(root, errors_q).to_pylist() == [{**r, "error": r["error"] + "!"} for r in want_errors]
    doctor(shards_all, "n", lambda c: pc.multiply(c, 2))
    doctor(shards_all, "n_ok", lambda c: pc.multiply(c, 2))
    got = [tuple(r.values()) for r in catalog.run_query(root, counts_q).to_pylist()]
    assert got == [(*r[:5], 2 * r[5], 2 * r[6]) for r in want_counts]
    # the partition files removed: each part's files are read, with the same numbers as the rows
    st.fs.rm(st.path(errors_all))
    st.fs.rm(st.path(shards_all))
    assert catalog.run_query(root, errors_q).to_pylist() == want_errors
    assert [tuple(r.values()) for r in catalog.run_query(root, counts_q).to_pylist()] == want_counts
    part0 = prediction_part("mini", real.model, real.config, 0)
    doctor(rollups.errors_of_part(part0), "error", lambda c: pc.binary_join_element_wise(c, "?", ""))
    got = catalog.run_query(root, errors_q).to_pylist()
    assert got != want_errors and {r["error"][-1] for r in got if r["error"].endswith("?")} == {"?"}
    st.fs.rm(st.path(rollups.errors_of_part(part0)))  # a part without its file: read from its rows
    assert catalog.run_query(root, errors_q).to_pylist() == want_errors
    rollups.compact_partition(st, pdir)  # not all parts have an error rows file: no errors-all written
    assert not st.exists(errors_all) and st.exists(partition_rollup(pdir, names))
    assert catalog.run_query(root, errors_q).to_pylist() == want_errors
    assert [tuple(r.values()) for r in catalog.run_query(root, counts_q).to_pylist()] == want_counts
    # a part removed (to be recomputed): the partition files no longer count, the rest is counted as the rows say
    part3 = prediction_part("mini", real.model, real.config, 3)
    st.fs.rm(st.path(part3))
    con = catalog.connect(root)
    try:
        for name, (view, raw) in three_ways(con).items():
            assert view == raw, name
        assert con.execute(
            "SELECT count(*) FROM partition_shard_files WHERE partition LIKE 'dataset=mini/%'"
        ).fetchall() == [(0,)]
        full = con.execute("SELECT shards_done, shards_computed FROM runs WHERE run_id = 'r-full'").fetchall()
    finally:
        con.close()
    assert full == [(3, 1)]


def test_a_crash_between_the_part_and_its_rollup(real, tmp_path, monkeypatch):
    """A part whose rollup was not written (crash) is counted from its rows; recomputing it drops the old
    rollup first, so a crash during the rewrite never leaves a rollup that disagrees with the part."""
    root = str(tmp_path / "copy")
    shutil.copytree(real.root, root)
    st = Storage(root)
    ctx = real.ctx
    part = prediction_part("mini", real.model, real.config, 3)
    st.fs.rm(st.path(st.marker_path(marker_key(part))))  # shard 3 not committed: it will be recomputed
    # a doctored rollup stands for an attempt whose part differed
    t = st.read_parquet(rollup_of(part))
    st.write_parquet(rollup_of(part), t.set_column(t.schema.get_field_index("n"), "n", pc.add(t.column("n"), 1)))

    def crash(*a, **k):
        raise KeyboardInterrupt("killed between the part and its rollup")

    monkeypatch.setattr(rollups, "write_rollup", crash)  # as infer calls it: rollups.write_rollup
    with pytest.raises(KeyboardInterrupt):
        infer_shard(
            st,
            ctx.classifier,
            dataset="mini",
            model=real.model,
            config=real.config,
            shard=3,
            dino_path=real.dino[3].path.replace(real.root, root),
            classnames=list(ctx.info.classnames),
            run_id="r-again",
            images_per_batch=4,
        )
    assert st.exists(part) and not st.exists(rollup_of(part)) and not st.is_done(marker_key(part))
    con = catalog.connect(root)
    try:
        for name, (view, raw) in three_ways(con).items():
            assert view == raw, name
        assert con.execute("SELECT count(*) FROM run_predictions WHERE computed_by = 'r-again'").fetchall()[0][0] > 0
    finally:
        con.close()
    monkeypatch.undo()
    res = infer_shard(
        st,
        ctx.classifier,
        dataset="mini",
        model=real.model,
        config=real.config,
        shard=3,
        dino_path=real.dino[3].path.replace(real.root, root),
        classnames=list(ctx.info.classnames),
        run_id="r-again2",
        images_per_batch=4,
    )
    assert res.computed and st.exists(rollup_of(part)) and st.is_done(marker_key(rollup_of(part)))
    assert set(st.read_parquet(rollup_of(part)).column("run_id").to_pylist()) == {"r-again2"}
    con = catalog.connect(root)
    try:
        for name, (view, raw) in three_ways(con).items():
            assert view == raw, name
    finally:
        con.close()


def test_catalog_files_absolute_and_relative_read_the_rollups(real, tmp_path, monkeypatch):
    want = norm(catalog.run_query(real.root, VIEW_ACCURACY))
    out = catalog.write_catalog(real.root, tmp_path / "results.duckdb")
    with duckdb.connect(out, read_only=True) as con:
        assert norm(con.execute(VIEW_ACCURACY).fetchall()) == want
        assert con.execute("SELECT count(*) FROM prediction_rollups").fetchall()[0][0] == sum(
            pq.ParquetFile(p).metadata.num_rows for p in Storage(real.root).glob("rollups/*/*/*/part-*.parquet")
        )
    rel = catalog.write_catalog(real.root, tmp_path / "rel.duckdb", relative=True)
    monkeypatch.chdir(real.root)
    with duckdb.connect(rel, read_only=True) as con:
        assert norm(con.execute(VIEW_ACCURACY).fetchall()) == want
        for name, (view, raw) in three_ways(con).items():
            assert view == raw, name


def test_memory_root(real):
    """Through a registered fsspec filesystem (memory://): the same files, the same numbers."""
    root = f"memory://abs-rollups-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    src = Path(real.root)
    try:
        for p in src.rglob("*"):
            if p.is_file() and p.parts[len(src.parts)] in ("predictions", "rollups", "runs", "_commits"):
                with fs.open(f"{root}/{p.relative_to(src).as_posix()}", "wb") as f:
                    f.write(p.read_bytes())
        con = catalog.connect(root)
        try:
            assert norm(con.execute(VIEW_ACCURACY).fetchall()) == norm(catalog.run_query(real.root, VIEW_ACCURACY))
            for name, (view, raw) in three_ways(con).items():
                assert view == raw, name
        finally:
            con.close()
    finally:
        for p in list(fs.store):
            if "/abs-rollups-" in p:
                fs.rm(p)


def test_empty_root_has_an_empty_rollup_view(tmp_path):
    con = catalog.connect(str(tmp_path / "empty"))
    try:
        assert catalog.run_query(con, "SELECT count(*) AS n FROM prediction_rollups").to_pylist() == [{"n": 0}]
        cols = {r[0]: r[1] for r in con.execute("DESCRIBE prediction_rollups").fetchall()}
        assert cols["n_correct5"] == "BIGINT" and cols["config"] == "VARCHAR"
    finally:
        con.close()
