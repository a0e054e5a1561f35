"""Progress inside a shard while it runs (per run: ``tasks.results.progress.run_progress``).

Why inside a shard: with the default 1,000-image shards a CPU takes hours per
shard, so a per-shard bar alone is silent for hours. :class:`ShardProgress` shows
images done, images/s and the time left, as a bar in the terminal and as a line
in the (Prefect) log every ``log_every_s`` seconds.
"""

from __future__ import annotations

import logging
import time


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

    def __init__(
        self,
        label: str,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        log_every_s: float = 30.0,
        bar: bool = True,
    ) -> None:
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
        if self.logger is not None and (
            self._last_log is None or now - self._last_log >= self.log_every_s or done >= total
        ):
            self._last_log = now
            self.logger.info(self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
