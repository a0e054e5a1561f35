"""Task runners by name: where the per-shard tasks run.

``threads`` (default): a thread pool in the flow's process, with Prefect's local
API. ``dask``: a Dask cluster -- a local one with ``workers`` processes, or an
existing scheduler given by ``address`` / ``ABS_DASK_ADDRESS``. ``ray``: a Ray
cluster (``address`` / ``ABS_RAY_ADDRESS``, or a local one). Shards are the unit
of distribution; every worker must reach the same storage root (use s3:// or
gs:// roots, or a shared filesystem, across machines).
"""

from __future__ import annotations

import os
from typing import Any

RUNNERS = ("threads", "dask", "ray")


def current_api_url() -> str | None:
    """The API URL the running flow talks to (its temporary local server's too), else None.

    Why: a local Dask worker process without ``PREFECT_API_URL`` starts a temporary Prefect
    API server of its own (about 230 MB and a core's worth of start-up each), and its task
    runs land in that server's database instead of the flow's.
    """
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        url = getattr(getattr(ctx, "client", None), "api_url", None) if ctx else None
    except Exception:  # no Prefect context: nothing to pass on
        return None
    return str(url) if url else None


def keep_glibc_malloc_defaults() -> None:
    """Start local Dask workers without Dask's ``MALLOC_TRIM_THRESHOLD_=65536``.

    Why: Dask sets it before spawning each worker so that freed memory goes back to the OS at
    once. For this pipeline that tripled the CPU time per image (micro models, ImageNet-size
    images: 85 -> 272 ms): every batch allocates and frees tens of MB of views and products,
    and with the threshold each allocation faults its pages in again (setting it also turns
    off glibc's adaptive mmap threshold). The shard tasks hand memory back once per shard
    instead (``tasks.run.process_cache.trim_heap``). Dask's thread limits (OMP and BLAS threads 1
    per worker) are kept.
    """
    import dask

    key = "distributed.nanny.pre-spawn-environ"
    env = dict(dask.config.get(key, default={}) or {})
    if "MALLOC_TRIM_THRESHOLD_" in env:
        env.pop("MALLOC_TRIM_THRESHOLD_")
        dask.config.set({key: env})


#: Set this to ``True`` to keep Dask's statistical profiler in the local workers (``keep_worker_profiler_off``).
PROFILER_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def keep_worker_profiler_off() -> None:
    """Start local Dask workers without Dask's statistical profiler, unless ``PROFILER_ENV`` says otherwise.

    Why: every 10 ms the profiler walks the stack of the thread running a task and folds it into a
    tree, and once a second it files that tree away, keeping the last 1,000 of them
    (``distributed.admin.low-level-log-length``), plus one per task name. A worker's memory thus
    grows for its first ~17 minutes and then stays: measured in one worker running this
    pipeline's shards, 1.7 MB a task (170 MB over 100 shard tasks), and a cheap task in a loop kept
    87 MB in ``distributed/profile.py`` after 100 tasks (tracemalloc). A 5,000-image run ends
    before the plateau and a 50,000-image one does not, which put their workers' peaks 7-9% apart.
    Nothing in this pipeline reads the profiles (the Dask dashboard is off). The nanny hands the
    flow process's Dask config to each worker, so setting it here reaches them.
    """
    import dask

    if PROFILER_ENV in os.environ:  # the user's word (read by Dask at import) stands
        return
    dask.config.set({"distributed.worker.profile.enabled": False})


def build_task_runner(runner: str = "threads", workers: int = 1, address: str | None = None):
    """The Prefect task runner named ``runner`` (``RUNNERS``; the default is ``tasks.defaults.RUNNER``)."""
    if runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max(1, workers))
    if runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise RuntimeError("runner 'dask' needs the dask extra: pip install 'abs-eval[dask]'") from exc
        address = address or os.environ.get("ABS_DASK_ADDRESS")
        if address:
            return DaskTaskRunner(address=address)
        cluster: dict[str, Any] = {
            "n_workers": max(1, workers),
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
        api = current_api_url()
        if api:  # the workers report to the flow's API instead of each starting a temporary one
            cluster["env"] = {"PREFECT_API_URL": api}
        keep_glibc_malloc_defaults()
        keep_worker_profiler_off()
        return DaskTaskRunner(cluster_kwargs=cluster)
    if runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise RuntimeError("runner 'ray' needs the ray extra: pip install 'abs-eval[ray]'") from exc
        address = address or os.environ.get("ABS_RAY_ADDRESS")
        return RayTaskRunner(address=address) if address else RayTaskRunner()
    raise ValueError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
