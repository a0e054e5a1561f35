"""A run's progress in the Prefect UI while it runs: one progress artifact, updated as shards commit.

Why: the report and the accuracy table are published when a run ends, so a 50,000-image run showed
nothing in the UI for an hour (ten on a CPU) but logs. ``evaluate-shards`` learns that a shard's
predictions committed when its infer task's future resolves; it hands each result to
:meth:`LiveProgress.shard_done`, which adds the part's rollup counts (one small Parquet file) to
the accuracy so far and, at most every few seconds (``RunProgress.due``), updates the artifact:
progress in % (images), and in its description shards and images done, images/s, time left and the
accuracy so far (``tasks.results.artifacts.RunProgress.description``).

Where it shows: the artifact belongs to the ``evaluate`` flow run (the parent of ``evaluate-shards``),
so it sits in the same Artifacts tab as the report and the table, under the key
``progress-<dataset>-<model>`` (one version per run). Never in the way of the run: a Prefect API that
refuses an update costs one warning, and the run goes on without progress.

What it costs: every call in (creating the artifact, each committed shard with its rollup read, each
API update, the last word) is timed (:class:`ProgressCost`), and :meth:`LiveProgress.finish` logs one
line, ``progress artifact of run <id>: 14 updates over 12 shards, 0.31 s in total (0.020% of the
1,512 s the shards took), 0.05 s of CPU, 0.25 s in API calls (0.09 s the first)``, so the claim that
progress costs nothing measurable is a figure of each run, not a guess (``benchmarks/bench_progress.py``
reads it back from a real run). The times are the flow's own thread's, where the shards' results are
collected: its wall time there (mostly waiting on the API) delays no shard, which run in their own
threads or processes; its CPU time is what it takes from them. The API server's side is not in it.
One Prefect client serves every call of the run (Prefect's own artifact helpers build one per call).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tasks.defaults import METHOD_ORDER
from tasks.results.artifacts import RunProgress, artifact_key
from tasks.store import Storage
from tasks.store.paths import rollup_of

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

__all__ = ["LiveProgress", "ProgressCost"]


def _log() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@dataclass
class ProgressCost:
    """What the progress artifact cost the run: wall and CPU seconds spent in :class:`LiveProgress` (rollup
    reads and API calls included), the artifact's updates (its creation counts as one) and the shards seen,
    over the seconds from the artifact's creation to the last word (the shards' span)."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0  # of this thread: what was taken from the shards' computation
    api_seconds: float = 0.0  # wall, in calls to the Prefect API (mostly waiting on the server)
    first_api_seconds: float = 0.0  # of which the first call: opening the client, creating the artifact
    updates: int = 0
    shards: int = 0
    span_s: float = 0.0

    @property
    def share(self) -> float:
        """The cost as a fraction of the span (0 before any span)."""
        return self.seconds / self.span_s if self.span_s > 0 else 0.0

    def line(self, run_id: str) -> str:
        """The log line of the run's end (``benchmarks/bench_progress.py`` parses it: keep its shape)."""
        return (
            f"progress artifact of run {run_id}: {self.updates} updates over {self.shards} shards, "
            f"{self.seconds:.2f} s in total ({100 * self.share:.3f}% of the {self.span_s:,.0f} s the shards took), "
            f"{self.cpu_seconds:.2f} s of CPU, {self.api_seconds:.2f} s in API calls ({self.first_api_seconds:.2f} s "
            "the first)"
        )


class LiveProgress:
    """The progress artifact of one run's shards (see the module docstring)."""

    def __init__(self, root: str, progress: RunProgress, key: str | None = None) -> None:
        self.started = time.perf_counter()
        self.cost = ProgressCost()
        self.storage = Storage(root)
        self.progress = progress
        self.key = key
        self.artifact_id: UUID | None = None
        self.broken = False
        self.published_done = False  # whether the last update published the finished state
        self._client: SyncPrefectClient | None = None

    @classmethod
    def start(
        cls, root: str, spec: Mapping[str, Any], shards: Sequence[int], run_id: str, min_interval: float = 5.0
    ) -> LiveProgress:
        """Create the artifact at 0% (the shards' image count from the dataset's ``dataset.json``)."""
        from tasks.run.evalspec import EvalSpec
        from tasks.store.datasets import read_dataset_info

        t0, c0 = time.perf_counter(), time.thread_time()
        es = EvalSpec.from_dict(dict(spec))
        images: int | None
        try:
            wanted = set(shards)
            images = sum(s.n_total for s in read_dataset_info(root, es.dataset).shards if s.index in wanted) or None
        except (FileNotFoundError, RuntimeError, OSError, ValueError):
            images = None
        live = cls(
            root,
            RunProgress(run_id, es.dataset, es.model_name, len(shards), images, min_interval),
            artifact_key("progress", es.dataset, es.model_name, ""),
        )
        live.started = t0  # the dataset read above counts as cost and as span
        live._publish()
        live._spent(t0, c0)
        return live

    def shard_done(self, result: Mapping[str, Any]) -> None:
        """One shard's predictions committed (the infer task's result): count it, publish when due."""
        t0, c0 = time.perf_counter(), time.thread_time()
        self.cost.shards += 1
        p = self.progress
        p.shard_done(result)
        try:  # its rollup, committed before the part's done-marker: a few KB
            t = self.storage.read_parquet(rollup_of(result["path"]), columns=["method", "n_ok", "n_correct"])
            p.add_counts(t.to_pylist())
        except (OSError, KeyError, ValueError):
            pass  # an older part without a rollup: progress without the accuracy so far
        if p.due():
            self._publish()
        self._spent(t0, c0)

    def finish(self) -> ProgressCost:
        """The last word: published unless the last update was already the finished state; logs the cost
        (:meth:`ProgressCost.line`) and returns it."""
        t0, c0 = time.perf_counter(), time.thread_time()
        if not (self.progress.finished and self.published_done):
            self._publish()
        self.close()
        self.cost.span_s = self._spent(t0, c0) - self.started
        _log().info(self.cost.line(self.progress.run_id))
        return self.cost

    def _spent(self, wall0: float, cpu0: float) -> float:
        """Adds the wall and CPU seconds since ``wall0`` and ``cpu0`` to the cost; returns the wall clock now."""
        now = time.perf_counter()
        self.cost.seconds += now - wall0
        self.cost.cpu_seconds += time.thread_time() - cpu0
        return now

    def _publish(self) -> None:
        if self.broken:
            return
        from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
        from prefect.runtime import flow_run

        p = self.progress
        text = p.description(METHOD_ORDER)
        t0 = time.perf_counter()
        try:
            client = self._api()
            if self.artifact_id is None:
                parent = flow_run.parent_flow_run_id or flow_run.id  # the evaluate flow run, beside the report
                request = ArtifactCreate(
                    type="progress",
                    key=self.key,
                    description=text,
                    data=p.percent,
                    flow_run_id=UUID(str(parent)) if parent else None,
                )
                self.artifact_id = client.create_artifact(artifact=request).id
            else:
                client.update_artifact(self.artifact_id, ArtifactUpdate(data=p.percent, description=text))
        except Exception as exc:  # noqa: BLE001 - progress is a courtesy: never fail the run for it
            self.broken = True
            self.close()
            _log().warning(
                "progress artifact not updated (%s: %s); the run goes on without it", type(exc).__name__, exc
            )
            return
        finally:
            took = time.perf_counter() - t0
            self.cost.api_seconds += took
            if not self.cost.updates:
                self.cost.first_api_seconds = took
        self.cost.updates += 1
        p.published()
        self.published_done = p.finished

    def _api(self) -> SyncPrefectClient:
        """One Prefect client for every call of the run: Prefect's own ``create``/``update_progress_artifact``
        build a client per call (~30 ms each here, 2-3x the request itself)."""
        if self._client is None:
            from prefect.client.orchestration import get_client

            client = get_client(sync_client=True)
            client.__enter__()
            self._client = client
        return self._client

    def close(self) -> None:
        """Closes the client (``finish`` does; a run that fails before it leaves it to the garbage collector)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a connection pool: nothing the run could do about it
                client.__exit__(None, None, None)
