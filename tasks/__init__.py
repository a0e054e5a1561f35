"""The pipeline below the flows, in folders that say what kind of module each is.

Import order, one way only (``tests/test_architecture.py`` checks it, folder by folder):

1. ``tasks.store`` (storage, paths, schemas, commits and markers, the prediction rollups and
   score columns, image bytes) and ``tasks.defaults``:
   import nothing else of ``tasks`` (``defaults`` reads the method's defaults from ``abs_model``).
2. ``tasks.datasets`` (one module per source layout) and ``tasks.descriptions`` (formats,
   validation, generation, storage): import only level 1 (descriptions may use the
   datasets' name helpers; datasets never import descriptions).
3. ``tasks.run``, the run plumbing every step stands on: what one evaluation is and its
   hash (``evalspec``), its context resolved once per process (``context``, with the
   ``prepare-evaluation`` task that resolves it in the flow), the text-embedding cache that
   context loads (``text_cache``), models cached per process (``process_cache``), the
   retry policy (``retries``) and in-shard progress (``progress``): imports levels 1-2.
4. ``tasks.results``, the read side: run records (``runs``), the DuckDB views and queries
   (``catalog``), terminal tables (``formatting``), exports (``export``: files and
   CLIP_benchmark's format), ``abs-eval status`` (``progress``) and the per-run report
   (``report``, a package: its queries, markdown, plots, gallery): imports levels 1-3, and
   level 3 only inside ``report.explain``, which rebuilds a run's models (``run.context``)
   to name the crops that decided a gallery image. Importing any of them loads neither
   torch nor Prefect. It writes no data file of the pipeline: the rollups the views read are
   committed by the store (``store.rollups``).
5. ``tasks.steps``, the pipeline's steps, each a plain function with its thin Prefect
   ``@task`` beside it (``shard``, ``describe``, ``dino_cache``, ``infer``; and
   ``demo_data``, the generated input of the demo): import levels 1-3, never the read
   side (``infer`` commits each prediction part's rollup with ``store.rollups.write_rollup``).
6. ``flows`` (flows, parameters, task runners, the CLI): imports anything; nothing in
   ``tasks`` imports ``flows``.

Which code talks to Prefect: the ``@task`` lines in ``tasks.steps`` and
``tasks.run.context`` (with their retry policy in ``tasks.run.retries``) and ``flows/``;
nothing else. Nothing here imports a sub-package's modules on ``import tasks``.
"""
