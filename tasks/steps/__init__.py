"""The pipeline's steps: each a plain function with its thin Prefect ``@task`` beside it.

``shard`` (source images -> Parquet shards), ``describe`` (the descriptions an evaluation
scores with), ``dino_cache`` (DINO attention per shard), ``infer`` (ABS and the baselines
per shard, with each part's rollup), ``variants`` (ABS variants scored from a run's kept
crop features, no model forward: ``abs-eval analyze``). Why together: these are the writers of the pipeline's
data, called by ``flows/`` (or by the CLI for ``shard``), and they stand on everything else
in ``tasks``: the store (the rollups ``infer`` writes included: ``tasks.store.rollups``), the
datasets and descriptions and the run plumbing (``tasks.run``), never the read side
(``tasks.results``). The steps that run the
evaluation's models are resolved once per process through ``tasks.run.context``.

``demo_data`` is here too: it writes the generated, labelled image set the offline demo
and the tests shard first, so it is a writer of pipeline input like the steps (it has no
Prefect task only because the demo calls it once, before the flow). It is neither run
plumbing nor part of the read side, and it imports nothing else of ``tasks``.

Light on purpose: importing this package imports none of its modules (``abs-eval shard``
and the shard worker processes must not load torch or Prefect).
"""
