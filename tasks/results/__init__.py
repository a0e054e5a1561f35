"""The read side: run records, the DuckDB views and queries over a root, exports, the per-run report.

``runs`` (what ran and whether it is alive: run records and their liveness), ``catalog`` (the
``sql/`` views and queries and the ``results.duckdb`` catalog), ``export`` (answers as files, and
runs in CLIP_benchmark's result format), ``formatting`` (tables for a terminal), ``progress``
(``abs-eval status``), ``report`` (the per-run markdown, plots and gallery) and ``artifacts`` (what the
Prefect UI shows: the accuracy table, the live progress). Why apart from
the steps: whoever only reads a root (``abs-eval status``, ``sql``, ``export``, ``report``, an
analyst's Python) imports this without torch or Prefect, and without any step; and the steps
never import from here (the rollups the views read are committed by ``tasks.store.rollups``).

Light on purpose: importing this package imports none of its modules.
"""
