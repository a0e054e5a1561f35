"""The pipeline's units of work (each with its Prefect task beside it) and what they stand on.

Import order, one way only (``tests/test_layout.py`` checks it):

1. ``tasks.store`` (storage, paths, schemas, image bytes) and ``tasks.defaults``:
   import nothing else of ``tasks`` (``defaults`` reads the method's defaults from ``abs_model``).
2. ``tasks.datasets`` (one module per layout) and ``tasks.descriptions`` (formats,
   validation, generation, storage): import only level 1 (descriptions may use the
   datasets' name helpers; datasets never import descriptions).
3. Task modules (``shard``, ``describe``, ``text_cache``, ``dino_cache``, ``infer``,
   ``context``, ``runs``, ``catalog``, ``report``, ``progress``, ``retries``,
   ``evalspec``, ``process_cache``, ``demo_data``): import levels 1-2 and each other.
4. ``flows`` (flows, parameters, task runners, the CLI): imports anything; nothing in
   ``tasks`` imports ``flows``.

Which code talks to Prefect: the ``@task`` lines in the task modules (with their
retry policy in ``retries``) and ``flows/``; nothing else.
"""
