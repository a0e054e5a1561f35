"""The report's figures: ``methods.png`` (accuracy per method with its interval) and
``per_class_accuracy.png``, drawn from the rows of the named queries, nothing recomputed.

Why matplotlib's object API on an Agg canvas (:func:`_figure`), never pyplot: the report is
written from a flow's worker threads, and pyplot's global figure state is not thread-safe.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .reads import _method_key

#: Plot resolution: small PNGs (tens of KB) that still read well in a browser.
PLOT_DPI = 90
#: The smallest text in any figure, in points at PLOT_DPI: 10 pt = 12.5 px, 9.4 CSS pt when the PNG is shown at
#: its own size (the Prefect UI and markdown viewers show narrower images unscaled).
MIN_FONT_PT = 10.0
#: The widest a figure's PNG gets, in pixels (at PLOT_DPI, after ``bbox_inches="tight"``): the Prefect UI gives
#: markdown about 850 px at a 1,400 px window, and a wider image is scaled down, its text below MIN_FONT_PT.
MAX_PLOT_PX = 840


def _figure(width: float, height: float, dpi: int = PLOT_DPI):
    # The object API with an Agg canvas: no pyplot global state, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=fig.dpi)
    return buf.getvalue()


def _legend_above(ax, ncol: int = 2) -> None:
    """The legend in rows above the axes: never over a bar or a line, and no empty band beside the plot
    (a legend right of the axes widened the PNG by its longest label, e.g. a run id)."""
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("chance"))  # the data first, chance last
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        fontsize=MIN_FONT_PT,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.01),
        borderaxespad=0.0,
        frameon=False,
        ncol=ncol,
        columnspacing=1.2,
        handlelength=1.8,
    )


def _chance_label(n_classes: int) -> str:
    return f"chance 1/C = 1/{n_classes} = {100 / n_classes:.1f}%"


def plot_methods(
    accuracy: Sequence[Mapping[str, Any]],
    comparison: Sequence[Mapping[str, Any]] = (),
    run_id: str = "",
    previous_run_id: str | None = None,
    n_classes: int | None = None,
    settings_differ: bool = False,
) -> bytes:
    """``methods.png``: the PNG of :func:`methods_figure`."""
    return _png(methods_figure(accuracy, comparison, run_id, previous_run_id, n_classes, settings_differ))


def methods_figure(
    accuracy: Sequence[Mapping[str, Any]],
    comparison: Sequence[Mapping[str, Any]] = (),
    run_id: str = "",
    previous_run_id: str | None = None,
    n_classes: int | None = None,
    settings_differ: bool = False,
):
    """Bar chart: accuracy per method, its 95% Wilson interval (``ci_low``/``ci_high``) as
    error bars, the previous run's beside it (labelled "other settings" when ``settings_differ``:
    the bars then compare two configurations, not the same method twice), and a dashed line at
    chance level 1/C (C = ``n_classes``, the classes scored). The legend says "this run" and
    "previous run" (the report's caption names both ids: a run id in the legend made it wider than the plot). The legend sits above the axes, so it never
    covers a bar. Returns the matplotlib Figure."""
    methods = sorted({r["method"] for r in accuracy}, key=_method_key)
    cur = {r["method"]: r for r in accuracy}
    prev = {r["method"]: r for r in comparison if r.get("accuracy_a") is not None}
    fig = _figure(min(max(5.0, 1.2 * len(methods) + 1.5), 8.5), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(methods))
    width = 0.38 if prev else 0.6

    def arr(vals) -> np.ndarray:
        return np.array([np.nan if a is None else a for a in vals], dtype=float)

    def bars(offset: float, vals, lows, highs, label: str, color: str, err_label: str | None = None) -> None:
        v, lo, hi = arr(vals), arr(lows), arr(highs)
        ax.bar(x + offset, v, width, label=label, color=color, zorder=2)
        ax.errorbar(
            x + offset,
            v,
            yerr=np.vstack([v - lo, hi - v]),
            fmt="none",
            ecolor="black",
            elinewidth=1.0,
            capsize=4,
            zorder=3,
            label=err_label,
        )
        for xi, vi, hi_i in zip(x + offset, v, hi):
            if not np.isnan(vi):  # the value just above the interval's upper end
                top_y = vi if np.isnan(hi_i) else max(vi, hi_i)
                ax.text(xi, top_y + 0.015, f"{100 * vi:.1f}", ha="center", va="bottom", fontsize=MIN_FONT_PT, zorder=4)

    if prev:
        bars(
            -width / 2,
            [prev.get(m, {}).get("accuracy_a") for m in methods],
            [prev.get(m, {}).get("ci_low_a") for m in methods],
            [prev.get(m, {}).get("ci_high_a") for m in methods],
            f"previous run{', other settings' if settings_differ else ''}",
            "#b0b0b0",
        )
    bars(
        width / 2 if prev else 0.0,
        [cur[m]["accuracy"] for m in methods],
        [cur[m]["ci_low"] for m in methods],
        [cur[m]["ci_high"] for m in methods],
        "this run",
        "#1f77b4",
        "95% Wilson interval",
    )
    if n_classes:
        ax.axhline(
            1.0 / n_classes, color="#444444", linestyle="--", linewidth=1.2, zorder=1, label=_chance_label(n_classes)
        )
    ax.set_xticks(x)
    ax.set_xticklabels(methods)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylim(0, 1.1)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("accuracy over ok images (%)")
    _legend_above(ax)
    ax.set_yticklabels([f"{t:.0f}" for t in np.linspace(0, 100, 6)])
    ax.grid(axis="y", alpha=0.3, zorder=0)
    return fig


def plot_per_class(per_class: Sequence[Mapping[str, Any]], n_classes: int | None = None) -> bytes:
    """``per_class_accuracy.png``: the PNG of :func:`per_class_figure`."""
    return _png(per_class_figure(per_class, n_classes))


def per_class_figure(per_class: Sequence[Mapping[str, Any]], n_classes: int | None = None):
    """Per-class accuracy of each method, in % (as methods.png); classes sorted by the first
    method's accuracy. The legend sits above the axes; a dashed line marks chance 1/C when
    C is known; class names on the axis up to 32 classes. Returns the matplotlib Figure."""
    methods = sorted({r["method"] for r in per_class}, key=_method_key)
    by = {(r["method"], r["label"]): r for r in per_class}
    labels = sorted({r["label"] for r in per_class})
    names = {r["label"]: r["class_name"] for r in per_class}
    ref = methods[0] if methods else None
    order = sorted(labels, key=lambda c: ((by.get((ref, c)) or {}).get("accuracy") or 0.0, c))
    n = len(order)
    fig = _figure(min(max(6.0, 0.2 * n + 2), 8.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    for i, m in enumerate(methods):
        y = [(by.get((m, c)) or {}).get("accuracy") for c in order]
        y = 100.0 * np.array([np.nan if v is None else v for v in y], dtype=float)  # in %, as the other plots
        if n <= 30:  # few classes: grouped bars
            w = 0.8 / max(len(methods), 1)
            ax.bar(x - 0.4 + w * (i + 0.5), y, w, label=m, zorder=2)
        else:  # many classes: one line per method over the sorted classes
            ax.plot(
                x,
                y,
                marker="o" if n <= 60 else None,
                markersize=3,
                linewidth=1.2 if m == ref else 0.8,
                label=m,
                zorder=2,
            )
    if n_classes:
        ax.axhline(
            100.0 / n_classes, color="#444444", linestyle="--", linewidth=1.0, zorder=1, label=_chance_label(n_classes)
        )
    if n <= 32:  # one 10-pt name per class fits 8.5 in
        ax.set_xticks(x)
        ax.set_xticklabels([str(names.get(c, c)) for c in order], rotation=90, fontsize=MIN_FONT_PT)
        ax.set_xlabel(f"classes, sorted by {ref} accuracy")
    else:
        ax.set_xlabel(f"{n} classes, sorted by {ref} accuracy")
    ax.set_ylim(-2, 102)
    ax.set_ylabel("per-class accuracy (%)")
    _legend_above(ax, ncol=3)
    ax.grid(alpha=0.3, zorder=0)
    return fig
