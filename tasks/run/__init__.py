"""Run plumbing: what every step of one evaluation stands on, none of it a step itself.

``evalspec`` (what one evaluation is, and the hash of every setting that decides its
predictions), ``context`` (that evaluation's models, text bank and descriptions, resolved
once per worker process; with ``prepare_task``, the ``prepare-evaluation`` task the flow
resolves it with first), ``text_cache`` (the cached CLIP text embeddings the context loads),
``process_cache`` (models kept per process), ``retries`` (how Prefect retries the tasks) and
``progress`` (progress inside a shard). Why apart from ``tasks.steps``: the steps import
these, these import no step, so the folders keep one direction.

Light on purpose: importing this package imports none of its modules (``evalspec`` is
read by parameter checks that must not load torch).
"""
