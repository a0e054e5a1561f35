"""Per-run progress for ``abs-eval status``: the ``runs`` view for the newest runs, and nothing more.

Why a module of its own: ``status`` is the one reader that must answer at once on a root with
many runs, so it creates just the views it reads (:data:`RUNS_VIEWS`) on its connection, and
writes a dead process's run down (``tasks.results.runs.reap_dead_runs``) only when a row needs it.
"""

from __future__ import annotations

import socket
from typing import Any

from tasks.results.catalog import connect, run_query
from tasks.store import Storage, as_storage

__all__ = ["PROGRESS_COLUMNS", "RUNS_VIEWS", "run_progress"]

#: What :func:`run_progress` reads: the ``runs_of`` macro (``sql/views/21_runs.sql``) and the views and macros
#: it reads (``run_records_of`` and ``part_files_of``, shared with ``errors_of``); only these are created (binding
#: every view costs more than the query, ~2 s over 50 ImageNet runs).
RUNS_VIEWS = ("run_records", "run_records_of", "part_files_of", "runs_of")
#: Columns of :func:`run_progress`, from the ``runs`` view.
PROGRESS_COLUMNS = (
    "run_id",
    "status",
    "dataset",
    "model",
    "config",
    "deployment",
    "shards_total",
    "shards_done",
    "shards_computed",
    "shards_reused",
    "n_images",
    "n_ok",
    "n_error",
    "started_at",
    "ended_at",
    "flow_run_id",
)


def run_progress(root: str | Storage, run_id: str | None = None, latest: int = 10) -> list[dict[str, Any]]:
    """Per run, newest first: status, shards done / computed / reused, images and errors (``abs-eval status``).

    Why from SQL: this is the ``runs`` view (``sql/views/21_runs.sql``) for the ``latest`` newest runs,
    so ``status`` says what every query, the export and the report say, at every moment: the same
    status (a dead process on this host is written down first, :func:`tasks.results.runs.reap_dead_runs`) and the same
    shards and images, counted from the committed parts the run stands for (its own plus those
    committed before it started; a completed run: its whole partition). ``KeyError`` for an
    unknown ``run_id``.
    """
    from tasks.results import runs as runs_mod

    st = as_storage(root)
    con = connect(st, only=RUNS_VIEWS, reap=False)  # reaped below, only when a row needs it
    cols = ", ".join(PROGRESS_COLUMNS + ("host",))

    def query() -> list[dict[str, Any]]:
        # a list of run ids, not a subquery: DuckDB then reads only those runs' files (twice as fast)
        return (
            run_query(
                con, f"SELECT {cols} FROM runs_of(getvariable('ids')) ORDER BY run_id DESC", {"ids": ids}
            ).to_pylist()
            if ids
            else []
        )

    try:
        ids = [run_id] if run_id is not None else runs_mod.list_run_ids(st)[: max(0, int(latest))]  # ids sort by start
        rows = query()
        here = [r["run_id"] for r in rows if r["status"] in runs_mod.LIVE and r["host"] == socket.gethostname()]
        if here and runs_mod.reap_dead_runs(st, here):  # a live-looking run on this host whose process is gone
            rows = query()
        if run_id is not None and not rows:
            known = [
                r["run_id"]
                for r in run_query(con, "SELECT run_id FROM run_records ORDER BY run_id DESC LIMIT 3").to_pylist()
            ]
            hint = f"; latest: {', '.join(known)}" if known else "; it holds no runs"
            raise KeyError(f"no run {run_id!r} under {st.root}{hint}")
    finally:
        con.close()
    for r in rows:
        del r["host"]
    return rows
