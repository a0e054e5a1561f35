"""Helpers for the flow tests: read a root's predictions in a comparable form."""

from __future__ import annotations

import duckdb


def predictions(root: str) -> list[tuple]:
    """Every prediction row (without run_id), sorted: equal lists mean identical predictions."""
    con = duckdb.connect()
    rows = con.sql(
        f"""select dataset, model, config, image_id, method, label, pred, top5, score_true, margin, status,
                   raw_boxes, feature_windows
            from read_parquet('{root}/predictions/*/*/*/part-*.parquet', hive_partitioning=true)
            order by image_id, method"""
    ).fetchall()
    return rows


def computed_by(root: str) -> dict[str, set[int]]:
    con = duckdb.connect()
    out: dict[str, set[int]] = {}
    for run_id, shard in con.sql(
        f"select distinct run_id, shard from read_parquet('{root}/predictions/*/*/*/part-*.parquet')"
    ).fetchall():
        out.setdefault(run_id, set()).add(shard)
    return out
