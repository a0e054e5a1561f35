"""What a person reads in the Prefect UI: the accuracy table artifact and the live progress of a run.

Why a module of its own, free of Prefect: the flow (``flows/evaluate.py``, ``flows/live.py``) only
hands these rows and texts to Prefect's ``create_*_artifact`` calls; what they say, in which units
and how wide they are, is decided here and tested without a server.

The accuracy table (:func:`accuracy_table_rows`, :func:`accuracy_table_description`): the rows of
the ``accuracy`` query carry 19 columns, seven of them the same in every row (run, dataset,
model, config ...). Shown as they are, the table was 2,050 px wide in the ~850 px the UI gives
it at a 1,400 px window. So each row holds what differs between methods, in the report's units
(accuracy in %, its interval in %, n, errors, top-5, mean per-class recall, the change since the
previous run), and the facts shared by every row go into the artifact's description, run id
first (the UI's artifact cards show the description's start, and the run id is what tells two
versions of a key apart).

Progress (:class:`RunProgress`): shards and images done, images/s and the time left, updated as
shards commit; accuracy so far of the completed shards, from each part's rollup (a few KB).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "ACCURACY_TABLE_COLUMNS",
    "RunProgress",
    "accuracy_table_description",
    "accuracy_table_rows",
    "artifact_key",
    "comparison_text",
    "report_artifacts",
    "settings_text",
]

#: The accuracy table's columns, in order (the keys of :func:`accuracy_table_rows`' dicts are the headers).
ACCURACY_TABLE_COLUMNS = (
    "method",
    "accuracy",
    "95% CI",
    "n",
    "errors",
    "top-5",
    "mean class recall",
    "vs previous run",
)


def artifact_key(kind: str, deployment: str, dataset: str, model: str) -> str:
    """A stable artifact key per (deployment, dataset, model), so Prefect keeps each one's version history.

    Prefect keys allow lowercase letters, digits and dashes only.
    """
    text = f"{kind}-{deployment}-{dataset}-{model}".lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _interval(lo: float | None, hi: float | None) -> str:
    return "–" if lo is None or hi is None else f"{100 * lo:.1f}–{100 * hi:.1f}%"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    text = str(v)
    return text if len(text) <= 24 else text[:12] + "…" + text[-6:]


def settings_text(settings: Sequence[Mapping[str, Any]], limit: int = 4) -> str:
    """``abs.n_crops 2 → 60, abs.tau 0.03 → 0.05``: the settings that differ (``setting_differences`` rows),
    at most ``limit`` named, the rest counted; empty when none differ."""
    parts = [f"{r['setting']} {_value(r['before'])} → {_value(r['after'])}" for r in settings[:limit]]
    if len(settings) > limit:
        parts.append(f"{len(settings) - limit} more")
    return ", ".join(parts)


def comparison_text(row: Mapping[str, Any] | None, test: Mapping[str, Any] | None, settings_differ: bool) -> str:
    """One method's change since the previous run, short enough for a table cell (the UI does not wrap
    them: a longer one was cut at 1,400 px): ``+1.4 pp (4 fixed, 2 broken)``, ``+1.4 pp, settings differ``,
    ``⚠ -6.0 pp drop`` (McNemar p < 0.05, accuracy down), ``+6.0 pp gain``.

    ``row``: the method's ``compare_methods`` row (None: no previous run); ``test``: its ``regressions``
    row (scope 'method'); ``settings_differ``: whether the two runs' settings differ, said in every row so
    that a change from N=2 to N=60 never reads as the method's own."""
    if row is None:
        return "no previous run"
    if row.get("accuracy_a") is None:
        return "new in this run"
    if row.get("accuracy_b") is None:
        return "absent from this run"
    delta = row.get("delta")
    text = "–" if delta is None else f"{100 * delta:+.1f} pp"
    if test and test.get("regressed"):
        text = f"⚠ {text} drop"
    elif test and test.get("significant") and (test.get("change") or 0) > 0:
        text += " gain"
    elif not settings_differ:  # the flips, where there is room
        text += f" ({row.get('n_fixed') or 0} fixed, {row.get('n_broken') or 0} broken)"
    if settings_differ:
        text += ", settings differ"
    return text


def accuracy_table_rows(
    accuracy: Sequence[Mapping[str, Any]],
    comparison: Sequence[Mapping[str, Any]] = (),
    regressions: Sequence[Mapping[str, Any]] = (),
    settings: Sequence[Mapping[str, Any]] = (),
    previous_run_id: str | None = None,
) -> list[dict[str, Any]]:
    """The table artifact's rows, one per method (in the order given: the report's): the columns of
    :data:`ACCURACY_TABLE_COLUMNS`, numbers as the report writes them (%, one decimal).

    ``accuracy``: rows of the ``accuracy`` query for one run; ``comparison``: ``compare_methods`` rows
    against ``previous_run_id``; ``regressions``: its ``regressions`` rows; ``settings``: what differs
    between the two runs' settings (``tasks.results.runs.setting_differences``)."""
    compared = {r["method"]: r for r in comparison}
    tests = {r["method"]: r for r in regressions if r.get("scope") == "method"}
    rows = []
    for r in accuracy:
        m = r["method"]
        rows.append(
            dict(
                zip(
                    ACCURACY_TABLE_COLUMNS,
                    (
                        m,
                        _pct(r.get("accuracy")),
                        _interval(r.get("ci_low"), r.get("ci_high")),
                        r.get("n"),
                        r.get("n_error"),
                        _pct(r.get("acc5")),
                        _pct(r.get("mean_per_class_recall")),  # "mean class recall"
                        comparison_text(
                            compared.get(m, {"accuracy_a": None}) if previous_run_id else None,
                            tests.get(m),
                            bool(settings),
                        ),
                    ),
                )
            )
        )
    return rows


def accuracy_table_description(
    run: Mapping[str, Any], previous_run_id: str | None = None, settings: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The table artifact's description: what every row shares, run id first (the cards cut the rest).

    ``run``: the run's row of the ``runs`` view (``run_details``); ``settings``: what differs from the
    previous run (named here, so the table's "settings differ" has its answer one line up)."""
    started = run.get("started_at")
    if isinstance(started, datetime):
        started = started.strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run `{run.get('run_id')}`: accuracy by method, {run.get('dataset')} x {run.get('model')}",
        "",
        f"config `{run.get('config')}` · deployment `{run.get('deployment')}` · {run.get('status')} · "
        f"started {started} · {run.get('n_images')} images, {run.get('n_error')} unreadable",
        "",
        "Accuracy, top-5 and mean class recall (mean per-class recall) are over the images that could be "
        "classified; 95% CI: Wilson interval; vs previous run: the change in accuracy, ⚠ drop / gain: McNemar "
        "p < 0.05 (the report has the flips and the test).",
    ]
    if previous_run_id:
        lines += [
            "",
            f"vs previous run `{previous_run_id}`: "
            + (f"**settings differ**: {settings_text(settings)}" if settings else "same settings"),
        ]
    return "\n".join(lines)


def report_artifacts(manifest: Any) -> dict[str, Any]:
    """What ``flows.evaluate.publish_report`` hands to Prefect for one written report
    (``tasks.results.report.ReportManifest``): ``table`` and ``table_description`` (the accuracy table),
    ``markdown`` and ``markdown_description`` (the report, images embedded)."""
    run = manifest.run or {"run_id": manifest.run_id}
    prev = manifest.previous_run_id
    return {
        "table": accuracy_table_rows(
            manifest.accuracy, manifest.comparison, manifest.regressions, manifest.settings, prev
        ),
        "table_description": accuracy_table_description(run, prev, manifest.settings),
        "markdown": manifest.artifact_markdown,
        "markdown_description": f"Run `{manifest.run_id}`: evaluation report, {run.get('dataset')} x {run.get('model')}"
        + (f", compared with run `{prev}`" if prev else ""),
    }


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass
class RunProgress:
    """How far a run's shards are, for the Prefect progress artifact: shards and images done, the
    rate of the images this run computed (reused shards take no time and do not count in it), and
    the time left at that rate; the accuracy so far of completed shards per method.

    Fed one committed shard at a time (:meth:`shard_done`) with the infer step's result and, when
    read, the counts of its rollup (:meth:`add_counts`); :meth:`due` says when to publish again
    (at most every ``min_interval`` seconds, and always for the last shard), so the UI sees progress
    while the run pays nothing measurable for it.
    """

    run_id: str
    dataset: str
    model: str
    shards_total: int
    images_total: int | None = None
    min_interval: float = 5.0
    clock: Any = time.monotonic
    shards_done: int = 0
    shards_reused: int = 0
    images_done: int = 0
    images_computed: int = 0
    errors: int = 0
    #: method -> [correct, ok] over the completed shards
    counts: dict[str, list[int]] = field(default_factory=dict)
    started: float = 0.0
    last_published: float | None = None
    #: when the first shard this run computed committed, and the images computed by then: the rate is
    #: measured from there once a second one is in (see :meth:`rate`)
    first_computed_at: float | None = None
    images_at_first: int = 0

    def __post_init__(self) -> None:
        self.started = self.clock()

    def shard_done(self, result: Mapping[str, Any]) -> None:
        """One shard committed: ``result`` as the infer step returns it (``n_images``, ``n_error``, ``computed``)."""
        self.shards_done += 1
        n = int(result.get("n_images") or 0)
        self.images_done += n
        self.errors += int(result.get("n_error") or 0)
        if result.get("computed"):
            self.images_computed += n
            if self.first_computed_at is None:
                self.first_computed_at, self.images_at_first = self.clock(), self.images_computed
        else:
            self.shards_reused += 1

    def add_counts(self, rollup_rows: Sequence[Mapping[str, Any]]) -> None:
        """Add a committed part's rollup rows (``method``, ``n_ok``, ``n_correct``) to the accuracy so far."""
        for r in rollup_rows:
            c = self.counts.setdefault(str(r["method"]), [0, 0])
            c[0] += int(r.get("n_correct") or 0)
            c[1] += int(r.get("n_ok") or 0)

    @property
    def finished(self) -> bool:
        return self.shards_done >= self.shards_total

    @property
    def percent(self) -> float:
        """Progress in % (Prefect's progress artifact): by images when the total is known, else by shards."""
        if self.shards_total <= 0 or self.finished:
            return 100.0
        if self.images_total:
            return min(100.0, 100.0 * self.images_done / self.images_total)
        return 100.0 * self.shards_done / self.shards_total

    def rate(self) -> float | None:
        """Images per second this run computes (reused shards excluded), None before the first one.

        From the first computed shard's commit on, once a second one is in: the time before it holds
        the models' loading and every worker's first shard, and counted from the run's start it made
        the first estimates of the time left 1.8x too long in a 12-shard run (bench_progress.py).
        """
        now = self.clock()
        first = self.first_computed_at
        if first is not None and self.images_computed > self.images_at_first and now > first:
            return (self.images_computed - self.images_at_first) / (now - first)
        elapsed = now - self.started
        return self.images_computed / elapsed if self.images_computed and elapsed > 0 else None

    def seconds_left(self) -> float | None:
        rate = self.rate()
        if self.finished:
            return 0.0
        if rate is None:
            return None
        if self.images_total:
            left: float = max(0, self.images_total - self.images_done)
        else:  # images of a shard as seen so far
            left = (self.shards_total - self.shards_done) * self.images_done / max(self.shards_done, 1)
        return left / rate

    def due(self) -> bool:
        """Whether to publish now: the first and the last shard always, otherwise at most every ``min_interval`` s."""
        if self.finished or self.last_published is None:
            return True
        return self.clock() - self.last_published >= self.min_interval

    def published(self) -> None:
        self.last_published = self.clock()

    def description(self, methods: Sequence[str] = ()) -> str:
        """Markdown for the progress artifact's description: run id first, then shards, images, rate, time left
        and the accuracy so far (``methods`` first, in that order)."""
        total = f"/{self.images_total:,}" if self.images_total else ""
        head = f"Run `{self.run_id}` ({self.dataset} x {self.model}): "
        if self.finished:
            head += f"done, {self.shards_done}/{self.shards_total} shards"
        else:
            head += f"{self.shards_done}/{self.shards_total} shards"
        lines = [
            head
            + f", {self.images_done:,}{total} images"
            + (f" ({self.shards_reused} shards reused from earlier runs)" if self.shards_reused else "")
        ]
        rate, left = self.rate(), self.seconds_left()
        if rate is not None:
            speed = [f"{rate:.1f} images/s"]
        elif self.finished:
            speed = ["no image computed: every shard was committed by an earlier run"]
        else:
            speed = ["images/s: after the first computed shard"]
        if not self.finished:
            speed.append(
                f"about {_duration(left)} left" if left is not None else "time left: after the first computed shard"
            )
        speed.append(f"elapsed {_duration(self.clock() - self.started)}")
        lines.append(", ".join(speed) + (f"; {self.errors} unreadable images" if self.errors else ""))
        order = [m for m in methods if m in self.counts] + sorted(m for m in self.counts if m not in methods)
        so_far = [f"{m} {_pct(c[0] / c[1])}" for m in order for c in [self.counts[m]] if c[1]]
        if so_far:
            lines.append("Accuracy so far (completed shards, not final): " + ", ".join(so_far))
        return "\n\n".join(lines)
