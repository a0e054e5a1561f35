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


#: Scores (logits) computed with another batch shape or in another process agree to
#: this tolerance; the decisions (pred, top5) and the crop geometry agree exactly.
SCORE_ATOL = 1e-4
SCORE_RTOL = 1e-5


def assert_same_predictions(got: list[tuple], want: list[tuple]) -> None:
    """Rows of :func:`predictions`: equal except score_true / margin, which are within rounding."""
    import math

    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a[:8] == b[:8] and a[10:] == b[10:], (a[3], a[4])
        for x, y in zip(a[8:10], b[8:10]):
            assert (x is None) == (y is None), (a[3], a[4])
            if x is not None:
                assert math.isclose(x, y, rel_tol=SCORE_RTOL, abs_tol=SCORE_ATOL), (a[3], a[4], x, y)
