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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from tasks.defaults import METHOD_ORDER
from tasks.results.artifacts import RunProgress, artifact_key
from tasks.store import Storage
from tasks.store.paths import rollup_of

__all__ = ["LiveProgress"]


def _log() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


class LiveProgress:
    """The progress artifact of one run's shards (see the module docstring)."""

    def __init__(self, root: str, progress: RunProgress, key: str | None = None) -> None:
        self.storage = Storage(root)
        self.progress = progress
        self.key = key
        self.artifact_id: UUID | None = None
        self.broken = False
        self.published_done = False  # whether the last update published the finished state

    @classmethod
    def start(
        cls, root: str, spec: Mapping[str, Any], shards: Sequence[int], run_id: str, min_interval: float = 5.0
    ) -> LiveProgress:
        """Create the artifact at 0% (the shards' image count from the dataset's ``dataset.json``)."""
        from tasks.run.evalspec import EvalSpec
        from tasks.store.datasets import read_dataset_info

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
        live._publish()
        return live

    def shard_done(self, result: Mapping[str, Any]) -> None:
        """One shard's predictions committed (the infer task's result): count it, publish when due."""
        p = self.progress
        p.shard_done(result)
        try:  # its rollup, committed before the part's done-marker: a few KB
            t = self.storage.read_parquet(rollup_of(result["path"]), columns=["method", "n_ok", "n_correct"])
            p.add_counts(t.to_pylist())
        except (OSError, KeyError, ValueError):
            pass  # an older part without a rollup: progress without the accuracy so far
        if p.due():
            self._publish()

    def finish(self) -> None:
        """The last word: published unless the last update was already the finished state."""
        if not (self.progress.finished and self.published_done):
            self._publish()

    def _publish(self) -> None:
        if self.broken:
            return
        from prefect.artifacts import ProgressArtifact, update_progress_artifact
        from prefect.runtime import flow_run

        p = self.progress
        text = p.description(METHOD_ORDER)
        try:
            if self.artifact_id is None:
                parent = flow_run.parent_flow_run_id or flow_run.id  # the evaluate flow run, beside the report
                art = ProgressArtifact(
                    progress=p.percent,
                    key=self.key,
                    description=text,
                    flow_run_id=UUID(str(parent)) if parent else None,
                )
                self.artifact_id = art.create(_sync=True).id  # sync even if a loop runs (as Prefect's own helper)
            else:
                update_progress_artifact(self.artifact_id, p.percent, description=text, _sync=True)
        except Exception as exc:  # noqa: BLE001 - progress is a courtesy: never fail the run for it
            self.broken = True
            _log().warning(
                "progress artifact not updated (%s: %s); the run goes on without it", type(exc).__name__, exc
            )
            return
        p.published()
        self.published_done = p.finished
