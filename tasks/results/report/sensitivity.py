"""The report's sensitivity section: ABS accuracy against N', M' and tau, and the ablation bars (crop branches,
soft matching against plain averaging), from the ``variant_accuracy`` query (``abs-eval analyze``'s variants).

Why its own module: the section is one figure and one table over one query, drawn only when the run (or a run
of its partition: the same predictions) has variants; the paper's defaults (N=60, M=50, tau=0.03,
``tasks.defaults.ABS``) are marked on every curve, so a sweep around another setting still shows where the
published number sits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tasks import defaults

from .plots import MIN_FONT_PT, _figure, _png

#: The curves: the variant field, its axis label and the paper's value (``tasks.defaults.ABS``).
CURVES: tuple[tuple[str, str, float], ...] = (
    ("n_crops", "N': crops per branch (first N' of the run's)", defaults.ABS.n_crops),
    ("n_descriptions", "M': descriptions per class", defaults.ABS.n_descriptions),
    ("tau", "tau: soft-matching temperature", defaults.ABS.tau),
)
#: Labels of the crop branches in the ablation bars.
KIND_LABELS = {"both": "both", "raw": "raw", "feature": "feature"}
#: Colours: variants, the run's own setting, the paper's default.
VARIANT_COLOR, RUN_COLOR, PAPER_COLOR = "#1f77b4", "#d62728", "#555555"


def abs_rows(rows: Sequence[Mapping[str, Any]], method: str = "abs") -> list[Mapping[str, Any]]:
    return [r for r in rows if r["method"] == method and r.get("accuracy") is not None]


def _run_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["is_run"]), None)


def curve_points(rows: Sequence[Mapping[str, Any]], field: str) -> list[Mapping[str, Any]]:
    """The points of one curve: the variants that change only ``field``, and the run itself, by value."""
    pts = [r for r in rows if r["varied"] == field or r["is_run"]]
    return sorted(pts, key=lambda r: r[field])


def ablation_bars(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The bars: the run and every variant with the run's N, M and tau (crop branches and matching, alone or
    crossed), the paper's setting (both branches, soft matching) first."""
    run = _run_row(rows)
    if run is None:
        return []
    same = [r for r in rows if all(r[k] == run[k] for k in ("n_crops", "n_descriptions", "tau"))]
    order = list(KIND_LABELS)
    return sorted(
        same,
        key=lambda r: (
            r["matching"] != "soft",
            order.index(r["crop_kinds"]) if r["crop_kinds"] in order else len(order),
        ),
    )


def bar_label(r: Mapping[str, Any]) -> str:
    kinds = KIND_LABELS.get(r["crop_kinds"], r["crop_kinds"])
    return f"{kinds}\n{'soft' if r['matching'] == 'soft' else 'average'}"


def panels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which panels the figure has: the curves with at least one variant, then ``ablation`` with at least two bars."""
    out = [f for f, _, _ in CURVES if any(r["varied"] == f for r in rows)]
    if len(ablation_bars(rows)) > 1:
        out.append("ablation")
    return out


def sensitivity_figure(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None = None):
    """One panel per curve (accuracy in % against the setting, 95% Wilson interval as whiskers, the run's own
    setting as a red diamond, the paper's value as a dashed vertical line) and the ablation bars (the paper's
    setting hatched). ``rows``: ``variant_accuracy`` rows of one method (``abs``); ``baseline``: the run's row of
    another method (``clip``) drawn as a dotted line for reference. Returns the matplotlib Figure."""
    names = panels(rows)
    if not names:
        raise ValueError("no variant to draw: the rows hold only the run")
    cols = 2 if len(names) > 1 else 1
    nrows = math.ceil(len(names) / cols)
    fig = _figure(4.2 * cols, 3.3 * nrows)
    labels = {f: (label, paper) for f, label, paper in CURVES}
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, cols, i + 1)
        if name == "ablation":
            bars = ablation_bars(rows)
            x = np.arange(len(bars))
            y = np.array([100 * r["accuracy"] for r in bars])
            lo = np.array([100 * (r["ci_low"] if r["ci_low"] is not None else r["accuracy"]) for r in bars])
            hi = np.array([100 * (r["ci_high"] if r["ci_high"] is not None else r["accuracy"]) for r in bars])
            paper = [r["crop_kinds"] == "both" and r["matching"] == "soft" for r in bars]
            ax.bar(
                x,
                y,
                0.6,
                color=[RUN_COLOR if r["is_run"] else VARIANT_COLOR for r in bars],
                hatch=None,
                edgecolor=["black" if p else "none" for p in paper],
                linewidth=1.2,
                zorder=2,
            )
            ax.errorbar(x, y, yerr=np.vstack([y - lo, hi - y]), fmt="none", ecolor="black", capsize=4, zorder=3)
            ax.set_xticks(x)
            ax.set_xticklabels(
                [bar_label(r) + ("\n(paper)" if p else "") for r, p in zip(bars, paper)], fontsize=MIN_FONT_PT
            )
            ax.set_title("crop branches (raw, feature, both) x matching", fontsize=MIN_FONT_PT)
        else:
            pts = curve_points(rows, name)
            label, paper_value = labels[name]
            x = np.array([float(r[name]) for r in pts])
            y = np.array([100 * r["accuracy"] for r in pts])
            lo = np.array([100 * (r["ci_low"] if r["ci_low"] is not None else r["accuracy"]) for r in pts])
            hi = np.array([100 * (r["ci_high"] if r["ci_high"] is not None else r["accuracy"]) for r in pts])
            ax.errorbar(x, y, yerr=np.vstack([y - lo, hi - y]), color=VARIANT_COLOR, marker="o", capsize=4, zorder=2)
            own = [j for j, r in enumerate(pts) if r["is_run"]]
            ax.plot(
                x[own], y[own], linestyle="none", marker="D", markersize=8, color=RUN_COLOR, zorder=3, label="this run"
            )
            ax.axvline(
                paper_value, color=PAPER_COLOR, linestyle="--", linewidth=1.2, zorder=1, label=f"paper: {paper_value:g}"
            )
            if name == "tau" and max(x.max(), paper_value) / max(min(x.min(), paper_value), 1e-12) > 5:
                ax.set_xscale("log")
            ax.set_xlabel(label, fontsize=MIN_FONT_PT)
        if baseline is not None and baseline.get("accuracy") is not None:
            ax.axhline(
                100 * baseline["accuracy"],
                color="#2ca02c",
                linestyle=":",
                linewidth=1.4,
                zorder=1,
                label=f"{baseline.get('method', 'clip')}, this run",
            )
        if name != "ablation":
            ax.legend(fontsize=MIN_FONT_PT, frameon=False, loc="upper left")
        ax.set_ylabel("abs accuracy (%)", fontsize=MIN_FONT_PT)
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3, zorder=0)
    fig.tight_layout()
    return fig


def plot_sensitivity(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None = None) -> bytes:
    """``sensitivity.png``: the PNG of :func:`sensitivity_figure`."""
    return _png(sensitivity_figure(rows, baseline))
