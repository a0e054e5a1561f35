"""How Prefect retries the pipeline's tasks: storage and device hiccups yes, job mistakes no.

Every ``@task`` in ``tasks/`` sits beside the plain function it runs and takes
its retry settings from here. Tasks take small JSON-able arguments and return
small dicts, never tensors, so they run in a thread, a Dask worker or a Ray
worker alike. Prefect's result caching is off everywhere (``NO_CACHE``):
idempotence comes from the done-markers in the storage root, which survive
process crashes and are shared by every worker. Tasks that run models carry the
tag :data:`GPU_TAG` (give it a concurrency limit on a GPU pool:
``prefect concurrency-limit create gpu 1``).
"""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

from abs_model.errors import WeightsUnavailableError  # no torch: abs_model.weights re-exports it
from tasks.datasets import LayoutError
from tasks.descriptions import DescriptionError
from tasks.run.evalspec import EvaluationError

GPU_TAG = "gpu"

#: Errors that would fail again on retry: the job is wrong, not the weather.
PERMANENT = (
    EvaluationError,
    WeightsUnavailableError,
    DescriptionError,
    LayoutError,
    FileNotFoundError,
    ValueError,
    TypeError,
    KeyError,
)


def _transient(task, task_run, state) -> bool:
    """Retry storage and device hiccups, not problems with the job itself (they would fail again)."""
    try:
        state.result(raise_on_failure=True)
    except PERMANENT:
        return False
    except Exception:
        return True
    return True


#: ``@task(**TASK_OPTIONS)``: no result caching, two retries of transient failures.
TASK_OPTIONS = dict(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient)
