"""How far work has got: inside a shard while it runs, and per run from the storage root.

Why inside a shard: with the default 1,000-image shards a CPU takes hours per
shard, so a per-shard bar alone is silent for hours. :class:`ShardProgress` shows
images done, images/s and the time left, as a bar in the terminal and as a line
in the (Prefect) log every ``log_every_s`` seconds.

Why per run from markers: a run in progress has committed some prediction parts;
the done-markers under its (dataset, model, config) partition carry the run that
computed each part and its error count, so :func:`run_progress` can say what a run
computed itself and what it reused from earlier runs, without SQL.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from typing import Any

from tasks.runs import effective_status
from tasks.schema import predictions_dir
from tasks.storage import COMMITS_DIR, Storage


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ShardProgress:
    """``progress(done, total)`` callback for one shard: a tqdm bar plus periodic log lines.

    ``logger``: where the lines go (the Prefect task's run logger inside a task, so
    they show in the UI); ``None`` logs nothing. The first batch is always logged,
    so a user sees the rate after one batch instead of after ``log_every_s``.
    """

    def __init__(self, label: str, logger: logging.Logger | logging.LoggerAdapter | None = None,
                 log_every_s: float = 30.0, bar: bool = True) -> None:
        self.label, self.logger, self.log_every_s = label, logger, log_every_s
        self.t0 = time.monotonic()
        self._last_log: float | None = None
        self._bar = None
        self._want_bar = bar
        self.done = self.total = 0

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = _duration(left) if left == left else "?"
        speed = f"{rate:.2f} img/s" if rate >= 0.1 else (f"{1 / rate:.1f} s/img" if rate > 0 else "? img/s")
        return f"{self.label}: {self.done}/{self.total} images, {speed}, {_duration(elapsed)} elapsed, ETA {eta}"

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self._want_bar and self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self.label, unit="img", dynamic_ncols=True, leave=False)
        if self._bar is not None:
            self._bar.total = total
            self._bar.update(done - self._bar.n)
        now = time.monotonic()
        if self.logger is not None and (self._last_log is None or now - self._last_log >= self.log_every_s
                                        or done >= total):
            self._last_log = now
            self.logger.info(self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def run_progress(root: str | Storage, run_id: str | None = None, latest: int = 10) -> list[dict[str, Any]]:
    """Per run: effective status (interrupted when its process died), shards done / computed / reused.

    ``computed`` counts the prediction parts whose marker names this run; ``reused``
    the parts of the same partition committed by other runs (a resumed run reuses
    what a crashed one committed). ``KeyError`` for an unknown ``run_id``.
    """
    st = root if isinstance(root, Storage) else Storage(root)
    paths = st.glob("runs/run=*/run.json")
    ids = sorted((re.search(r"run=([^/]+)/run\.json$", p).group(1) for p in paths), reverse=True)
    if run_id is not None:
        if run_id not in ids:
            known = f"; latest: {', '.join(ids[:3])}" if ids else "; it holds no runs"
            raise KeyError(f"no run {run_id!r} under {st.root}{known}")
        ids = [run_id]
    out = []
    for rid in ids[:latest]:
        rec = st.read_json(f"runs/run={rid}/run.json")
        status = effective_status(rec)
        reused = set(rec.get("reused_shards") or [])
        mdir = posixpath.join(COMMITS_DIR, predictions_dir(rec["dataset"], rec["model"], rec["config"]))
        n_images = n_error = computed = done = 0
        for m in st.glob(posixpath.join(mdir, "part-*.json")):
            shard = int(re.search(r"part-(\d+)\.json$", m).group(1))
            d = st.read_json(posixpath.relpath(m, st.root_path))
            mine = d.get("run_id") == rid
            # a completed run stands for its whole partition; an unfinished one only for
            # what it computed plus what was committed before it started
            if status != "completed" and not mine and shard not in reused:
                continue
            done += 1
            computed += mine
            n_images += d.get("n_images", 0)
            n_error += d.get("n_error", 0)
        out.append({"run_id": rid, "status": status, "dataset": rec["dataset"], "model": rec["model"],
                    "config": rec["config"], "deployment": rec.get("deployment"),
                    "shards_total": rec.get("shards_total", 0), "shards_done": done,
                    "shards_computed": computed, "shards_reused": done - computed,
                    "n_images": n_images, "n_error": n_error, "started_at": rec.get("started_at"),
                    "ended_at": rec.get("ended_at"), "flow_run_id": rec.get("flow_run_id")})
    return out
