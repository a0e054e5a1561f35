"""The read side: run records, the DuckDB views and queries over a root, the per-run report.

``runs`` (what ran and whether it is alive: run records and their liveness), ``catalog``
(the ``sql/`` views and queries, exports, the ``results.duckdb`` catalog and the prediction
rollups) and ``report`` (the per-run markdown, plots and gallery). Why apart from the steps:
whoever only reads a root (``abs-eval status``, ``sql``, ``export``, ``report``, an analyst's
Python) imports this without torch or Prefect, and without any step; the steps import
from here (``infer`` writes rollups through ``catalog``), never the reverse.

Light on purpose: importing this package imports none of its modules.
"""
