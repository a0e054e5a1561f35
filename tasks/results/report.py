"""The per-run report: markdown, plots and a gallery, written next to the run record.

Why every number comes from ``sql/`` (through :func:`tasks.results.catalog.run_query`):
a figure in a report must be one that an analyst can re-run in DuckDB and get
again. This module only formats query results, draws them, and decodes images;
it aggregates nothing itself.

Written under ``runs/run=<id>/`` (each file atomically, ``report.md`` last, so a
report that exists has its pictures)::

    report.md                 accuracy table (top-1 with its interval, top-5, mean per-class recall),
                              per-class extremes, confusions, errors, comparison with the previous
                              run of the same deployment (exact McNemar test per method and class;
                              a significant drop is flagged at the top of the report)
    methods.png               accuracy per method with 95% Wilson intervals as error bars (and the
                              previous run's), and the chance level 1/C
    per_class_accuracy.png    per-class accuracy of every method, classes sorted by the first method
    gallery/<kind>-<nn>-<image>.png
                              images ABS got right and the baseline wrong (and the reverse): the
                              image untouched in one panel; beside it the DINO attention map with
                              ABS's raw crop boxes and feature-space windows (see draw_gallery_image),
                              the crops that decided ABS's prediction bold and numbered; under each
                              image in report.md: both predictions, margins, deciding crops and
                              descriptions (see explain_image)

The Prefect artifact cannot follow ``report.md``'s relative image links, so
:attr:`ReportManifest.artifact_markdown` is the same report with the plots (and the
gallery images, while they fit under :data:`ARTIFACT_MAX_BYTES`) embedded as
``data:image/png;base64`` links; gallery images that do not fit are named by their
storage path. Plots are rendered at :data:`PLOT_DPI` so each stays well under 200 KB.

The gallery's pictures need no recompute: the crop boxes and DINO top-K attention are
stored on the ``abs`` prediction rows, the image bytes in the shard files; when the DINO
cache (``cache/dino/...``) holds the full attention map of an image that agrees
with the row's top-K cells (the map ABS used), that is drawn instead of the top-K cells.
Each gallery image also names its predicted and true classes and both methods' stored
margins; and which crops and descriptions decided ABS's prediction. Per-crop matching
scores are not stored, so those are recomputed for the gallery images only (a handful),
with the run's own models, text bank and stored DINO top-K (:func:`explain_gallery`);
when the models cannot be loaded, the report says so in one line and shows what is stored.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from tasks import defaults
from tasks.defaults import DINO_GRID as DEFAULT_DINO_GRID
from tasks.defaults import METHOD_ORDER
from tasks.results import catalog
from tasks.store import Storage, as_storage
from tasks.store.datasets import read_dataset_info
from tasks.store.paths import dataset_info, run_dir, shard_part, slug

#: Plot resolution: small PNGs (tens of KB) that still read well in a browser.
PLOT_DPI = 90
#: Gallery figure resolution (photos compress worse than line plots).
GALLERY_DPI = 90
#: Cap on the Prefect artifact markdown; gallery images beyond it are named by path, not embedded.
ARTIFACT_MAX_BYTES = 1_500_000
#: Crops of each kind drawn bold in a gallery image (see draw_gallery_image).
EMPHASISED_CROPS = 3
#: Crops named, and drawn bold and numbered, per gallery image when the run's models load: those adding
#: most to ABS's logit of its predicted class (see explain_gallery).
DECIDING_CROPS = 3
#: Descriptions of the predicted class named per gallery image (the ones adding most to that logit).
DECIDING_DESCRIPTIONS = 3
RAW_BOX_COLOR = "#1f4eff"  # raw crop boxes: solid blue
FEATURE_WINDOW_COLOR = "#111111"  # feature-space windows: dashed black


@dataclass
class ReportManifest:
    """What :func:`write_report` wrote (paths relative to the root) and the headline rows."""

    root: str
    run_id: str
    previous_run_id: str | None
    report: str
    plots: list[str]
    gallery: list[str]
    markdown: str = field(repr=False)
    accuracy: list[dict[str, Any]] = field(default_factory=list, repr=False)  # rows of the accuracy query
    comparison: list[dict[str, Any]] = field(default_factory=list, repr=False)  # rows of compare_methods
    #: Rows of the regressions query for (previous run, this run): per method (scope 'method') and per
    #: class; ``regressed`` marks a significant drop (McNemar p < 0.05 and accuracy down).
    regressions: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: image_id, kind, file, heat, note, margin_a, margin_b (stored), and deciding (explain_image's explanation:
    #: the crops and descriptions that decided ABS's prediction) or deciding_note (why it is not shown)
    gallery_items: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: The report for the Prefect UI: plots (and gallery images while under ARTIFACT_MAX_BYTES)
    #: embedded as data:image/png;base64 links, other gallery images named by storage path.
    artifact_markdown: str = field(default="", repr=False)

    @property
    def files(self) -> list[str]:
        return [*self.plots, *self.gallery, self.report]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("markdown")
        d.pop("artifact_markdown")
        return d




# ---------------------------------------------------------------------- formatting
def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _pp(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} pp"


def _p(x: float | None) -> str:
    """A p-value: 3 decimals, scientific notation below 0.001."""
    if x is None:
        return "–"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


#: The flag a significant drop gets in the report (the comparison table and the banner on top).
DROP_FLAG = "⚠ significant drop"


def _verdict(test: Mapping[str, Any] | None) -> str:
    """What the McNemar test says about a method's change (rows of the regressions query)."""
    if not test:
        return "–"
    if test["regressed"]:
        return f"**{DROP_FLAG}**"
    if test["significant"] and (test.get("change") or 0) > 0:
        return "significant gain"
    return "within chance"


def _ci(row: Mapping[str, Any], lo: str = "ci_low", hi: str = "ci_high") -> str:
    if row.get(lo) is None:
        return "–"
    return f"[{100 * row[lo]:.1f}, {100 * row[hi]:.1f}]"


def _cell(v: Any) -> str:
    return ("–" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, Any]]) -> str:
    """A markdown table; ``columns`` are (header, key or function of the row)."""
    if not rows:
        return "_none_\n"
    out = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_cell(f(r) if callable(f) else r.get(f)) for _, f in columns) + " |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- plots
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


def _chance_label(n_classes: int) -> str:
    return f"chance 1/C = 1/{n_classes} = {100 / n_classes:.1f}%"


def plot_methods(
    accuracy: Sequence[Mapping[str, Any]],
    comparison: Sequence[Mapping[str, Any]] = (),
    run_id: str = "",
    previous_run_id: str | None = None,
    n_classes: int | None = None,
) -> bytes:
    """``methods.png``: the PNG of :func:`methods_figure`."""
    return _png(methods_figure(accuracy, comparison, run_id, previous_run_id, n_classes))


def methods_figure(
    accuracy: Sequence[Mapping[str, Any]],
    comparison: Sequence[Mapping[str, Any]] = (),
    run_id: str = "",
    previous_run_id: str | None = None,
    n_classes: int | None = None,
):
    """Bar chart: accuracy per method, its 95% Wilson interval (``ci_low``/``ci_high``) as
    error bars, the previous run's beside it, and a dashed line at chance level 1/C
    (C = ``n_classes``, the classes scored). The legend sits to the right of the axes, so
    it never covers a bar. Returns the matplotlib Figure."""
    methods = sorted({r["method"] for r in accuracy}, key=_method_key)
    cur = {r["method"]: r for r in accuracy}
    prev = {r["method"]: r for r in comparison if r.get("accuracy_a") is not None}
    fig = _figure(max(4.0, 1.1 * len(methods) + 1.5), 3.4)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(methods))
    width = 0.38 if prev else 0.6

    def arr(vals) -> np.ndarray:
        return np.array([np.nan if a is None else a for a in vals], dtype=float)

    def bars(offset: float, vals, lows, highs, label: str, color: str, err_label: str | None = None) -> None:
        v, lo, hi = arr(vals), arr(lows), arr(highs)
        ax.bar(x + offset, v, width, label=label, color=color, zorder=2)
        ax.errorbar(x + offset, v, yerr=np.vstack([v - lo, hi - v]), fmt="none", ecolor="black",
                    elinewidth=1.0, capsize=4, zorder=3, label=err_label)
        for xi, vi, hi_i in zip(x + offset, v, hi):
            if not np.isnan(vi):  # the value just above the interval's upper end
                top_y = vi if np.isnan(hi_i) else max(vi, hi_i)
                ax.text(xi, top_y + 0.015, f"{100 * vi:.1f}", ha="center", va="bottom", fontsize=6.5, zorder=4)

    if prev:
        bars(-width / 2, [prev.get(m, {}).get("accuracy_a") for m in methods], [prev.get(m, {}).get("ci_low_a") for m in methods],
             [prev.get(m, {}).get("ci_high_a") for m in methods], f"previous run ({previous_run_id})", "#b0b0b0")
    bars(width / 2 if prev else 0.0, [cur[m]["accuracy"] for m in methods], [cur[m]["ci_low"] for m in methods],
         [cur[m]["ci_high"] for m in methods], f"this run ({run_id})", "#1f77b4", "95% Wilson interval")
    if n_classes:
        ax.axhline(1.0 / n_classes, color="#444444", linestyle="--", linewidth=1.2, zorder=1, label=_chance_label(n_classes))
    ax.set_xticks(x)
    ax.set_xticklabels(methods)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylim(0, 1.08)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("accuracy over ok images (%)")
    ax.set_title("Accuracy per method", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    ax.set_yticklabels([f"{t:.0f}" for t in np.linspace(0, 100, 6)])
    ax.grid(axis="y", alpha=0.3, zorder=0)
    return fig


def plot_per_class(per_class: Sequence[Mapping[str, Any]], n_classes: int | None = None) -> bytes:
    """``per_class_accuracy.png``: the PNG of :func:`per_class_figure`."""
    return _png(per_class_figure(per_class, n_classes))


def per_class_figure(per_class: Sequence[Mapping[str, Any]], n_classes: int | None = None):
    """Per-class accuracy of each method, in % (as methods.png); classes sorted by the first
    method's accuracy. The legend sits right of the axes; a dashed line marks chance 1/C when
    C is known. Returns the matplotlib Figure."""
    methods = sorted({r["method"] for r in per_class}, key=_method_key)
    by = {(r["method"], r["label"]): r for r in per_class}
    labels = sorted({r["label"] for r in per_class})
    names = {r["label"]: r["class_name"] for r in per_class}
    ref = methods[0] if methods else None
    order = sorted(labels, key=lambda c: ((by.get((ref, c)) or {}).get("accuracy") or 0.0, c))
    n = len(order)
    fig = _figure(min(max(6.0, 0.22 * n * max(1, len(methods) // 2) + 2), 16.0), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    for i, m in enumerate(methods):
        y = [(by.get((m, c)) or {}).get("accuracy") for c in order]
        y = 100.0 * np.array([np.nan if v is None else v for v in y], dtype=float)  # in %, as the other plots
        if n <= 30:  # few classes: grouped bars
            w = 0.8 / max(len(methods), 1)
            ax.bar(x - 0.4 + w * (i + 0.5), y, w, label=m, zorder=2)
        else:  # many classes: one line per method over the sorted classes
            ax.plot(x, y, marker="o" if n <= 60 else None, markersize=3, linewidth=1.2 if m == ref else 0.8, label=m, zorder=2)
    if n_classes:
        ax.axhline(100.0 / n_classes, color="#444444", linestyle="--", linewidth=1.0, zorder=1, label=_chance_label(n_classes))
    if n <= 60:
        ax.set_xticks(x)
        ax.set_xticklabels([str(names.get(c, c)) for c in order], rotation=90, fontsize=7 if n <= 30 else 6)
        ax.set_xlabel(f"classes, sorted by {ref} accuracy")
    else:
        ax.set_xlabel(f"{n} classes, sorted by {ref} accuracy")
    ax.set_ylim(-2, 102)
    ax.set_ylabel("per-class accuracy (%)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    ax.grid(alpha=0.3, zorder=0)
    return fig


# ---------------------------------------------------------------------- gallery
def attention_grid(indices: Sequence[int] | None, values: Sequence[float] | None, grid: int | None = None) -> np.ndarray | None:
    """The D x D map holding the top-K cells' attention (zero elsewhere); ``None`` without cells.

    D is ``grid`` when known, else 14 (a 224-pixel /16 DINO), grown when an index says so.
    """
    if not indices:
        return None
    idx = np.asarray(indices, dtype=np.int64)
    d = grid or DEFAULT_DINO_GRID
    if int(idx.max()) >= d * d:
        d = math.isqrt(int(idx.max())) + 1
    out = np.zeros(d * d, dtype=np.float64)
    out[idx] = np.asarray(values if values is not None else np.ones(len(idx)), dtype=np.float64)
    return out.reshape(d, d)


def full_attention(attention: Sequence[float] | None, grid: int | None) -> np.ndarray | None:
    """A cached full attention list as a D x D map (D from the row, else from its length)."""
    if not attention:
        return None
    a = np.asarray(attention, dtype=np.float64)
    d = grid or math.isqrt(len(a))
    if d * d != len(a):
        return None
    return a.reshape(d, d)


def run_grids(run: Mapping[str, Any]) -> tuple[tuple[int, int], int | None]:
    """((G, S), D) of a run: the CLIP token grid side and input size, and the DINO grid side.

    From the run record's ``model_geometry`` (what the loaded models had; written since
    the micro models, whose grids no name tells); for older records, the CLIP pair from
    :func:`clip_grid_of` and D from the attention itself.
    """
    geo = run.get("model_geometry") or {}
    if geo.get("clip_grid") and geo.get("clip_image_size"):
        return (int(geo["clip_grid"]), int(geo["clip_image_size"])), int(geo.get("dino_grid") or 0) or None
    return clip_grid_of(run.get("clip_model"))[:2], None


def _run_record(st: Storage, run_id: str) -> dict[str, Any]:
    """A run's JSON record (what the SQL ``runs`` row does not carry), or ``{}`` if it cannot be read."""
    from tasks.results.runs import read_run

    try:
        return dict(read_run(st, run_id))
    except (KeyError, OSError, ValueError):
        return {}


def _setting_differences(st: Storage, run_a: str, run_b: str) -> list[dict[str, Any]]:
    """What differs between two runs' settings (``tasks.results.runs.setting_differences``), from their JSON records."""
    from tasks.results.runs import setting_differences

    a, b = _run_record(st, run_a), _run_record(st, run_b)
    return setting_differences(a, b) if a and b else []


def _recorded_geometry(st: Storage, run_id: str) -> dict[str, int]:
    """``model_geometry`` of the run's JSON record."""
    return dict(_run_record(st, run_id).get("model_geometry") or {})


def clip_grid_of(clip_model: str | None) -> tuple[int, int, str]:
    """(G, S, source): the CLIP token grid side and input size of ``clip_model``.

    Feature windows are stored in CLIP grid cells, and the grid covers the centre
    square of the image CLIP saw (short side resized to S, centre-cropped), so both
    are needed to draw a window in image pixels. Read from the open_clip model config
    (the package's own JSON, or the ones shipped in abs_model/model_configs/clip),
    without importing open_clip or torch; else parsed from the name (``ViT-B-16``,
    ``ViT-L-14-336``); else assumed 14 / 224 (source ``"assumed"``).
    """
    name = (clip_model or "").strip()
    if name and re.fullmatch(r"[A-Za-z0-9._-]+", name):
        dirs = []
        for pkg, sub in (("open_clip", "model_configs"), ("abs_model", "model_configs/clip")):
            try:
                spec = importlib.util.find_spec(pkg)
            except (ImportError, ValueError):
                spec = None
            for loc in (spec.submodule_search_locations or []) if spec else []:
                dirs.append(Path(loc) / sub)
        for d in dirs:
            f = d / f"{name}.json"
            if f.is_file():
                try:
                    v = json.loads(f.read_text())["vision_cfg"]
                    size, patch = v["image_size"], v["patch_size"]
                    size = size[0] if isinstance(size, (list, tuple)) else int(size)
                    patch = patch[0] if isinstance(patch, (list, tuple)) else int(patch)
                    return size // patch, size, "model config"
                except (KeyError, TypeError, ValueError, OSError):
                    pass
    nums = [int(t) for t in re.split(r"[-/_@]", name) if t.isdigit()]
    patches = [n for n in nums if n in (8, 14, 16, 32)]
    if patches:
        sizes = [n for n in nums if n >= 64]
        size = sizes[0] if sizes else 224
        return size // patches[0], size, "model name"
    return DEFAULT_DINO_GRID, 224, "assumed"


def feature_window_pixels(window: Sequence[int], width: int, height: int, grid: int, size: int) -> tuple[float, float, float, float]:
    """A feature window (r0, r1, c0, c1), half-open CLIP grid cells, as (x0, y0, x1, y1) pixels
    of the ``width`` x ``height`` image.

    CLIP's global view (``abs_model.preprocess.clip_views`` with the whole-image box) resizes
    the short side to ``size`` and centre-crops ``size`` x ``size`` (offset rounded as
    ``resample.resize_crop_geometry``); its G x G token grid tiles that square. So a window
    lies inside the image's centre square, whatever DINO cell it was drawn from.
    """
    r0, r1, c0, c1 = (int(v) for v in window)
    short, long_ = min(width, height), max(width, height)
    new_long = math.floor(size * long_ / short)
    new_h, new_w = (size, new_long) if height <= width else (new_long, size)
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    cell = size / grid
    fx, fy = width / new_w, height / new_h  # original pixels per resized pixel
    return ((left + c0 * cell) * fx, (top + r0 * cell) * fy, (left + c1 * cell) * fx, (top + r1 * cell) * fy)


def _crop_ranks(centres: Sequence[tuple[float, float]], boxes: Sequence[tuple[float, float, float, float]],
                cell_xy: Sequence[tuple[float, float]], cell_values: Sequence[float]) -> list[float]:
    """For each box, the attention of the top-K cell it was (most likely) centred on.

    ABS centres every crop on one of the row's top-K DINO cells; the cell is not stored,
    so it is recovered as the top-K cell inside the box nearest the box centre (exact
    for unclipped boxes; a box clipped at the image edge can be off by a cell).
    ``cell_xy`` are the cells' centres in the boxes' coordinates. ``-inf`` when none fits.
    """
    out = []
    for (cx, cy), (x0, y0, x1, y1) in zip(centres, boxes):
        best, best_d = -math.inf, math.inf
        for (px, py), v in zip(cell_xy, cell_values):
            if x0 <= px <= x1 and y0 <= py <= y1:
                d = (px - cx) ** 2 + (py - cy) ** 2
                if d < best_d - 1e-9:
                    best, best_d = float(v), d
        out.append(best)
    return out


def emphasised(ranks: Sequence[float], k: int = EMPHASISED_CROPS) -> set[int]:
    """Indices of the ``k`` crops with the highest centre attention (ties: drawn first wins)."""
    order = sorted(range(len(ranks)), key=lambda i: (-ranks[i], i))
    return {i for i in order[:k] if ranks[i] > -math.inf}


def gallery_layout(width: int, height: int, panel: float = 3.2, max_height: float = 4.0) -> dict[str, float]:
    """Inches of the two-panel gallery figure: ``fig_w``, ``fig_h``, ``panel_w``, ``panel_h``
    (each panel shows the whole image at the same scale: the image, and the attention map
    with the crops, side by side), and ``top``/``bottom``, the room for the titles above and
    the legend and caption below."""
    aspect = height / max(width, 1)
    ph = min(panel * aspect, max_height)
    pw = ph / aspect
    gap, side, top, bottom = 0.15, 0.05, 0.75, 0.6
    return {"fig_w": 2 * pw + gap + 2 * side, "fig_h": ph + top + bottom, "panel_w": pw, "panel_h": ph,
            "gap": gap, "side": side, "top": top, "bottom": bottom}


def draw_gallery_image(
    img: Image.Image,
    row: Mapping[str, Any],
    heat: np.ndarray | None,
    heat_source: str,
    *,
    clip_grid: tuple[int, int] | None = None,
    emphasis: int = EMPHASISED_CROPS,
    deciding: Mapping[str, Any] | None = None,
) -> bytes:
    """Two panels: the image untouched (left), and (right) the DINO attention over a dimmed
    grey copy of the image with ABS's crops, titled with both predictions.

    Right panel: attention as a heat map (light yellow = low, dark red = high; cell (r, c)
    covers the same fraction of the image as in ABS's sampling; with only the row's top-K
    cells the others stay uncoloured). Raw crop boxes (``raw_boxes``, pixels of the image the
    classifier saw, scaled to the decoded size) are solid blue; feature-space windows
    (``feature_windows``, CLIP token-grid cells, mapped to pixels by
    :func:`feature_window_pixels` with ``clip_grid`` = (G, S)) are dashed black.

    Emphasis: with ``deciding`` (an explanation of :func:`explain_gallery`: its ``crops``, in
    rank order, each ``kind`` 'raw' or 'feature' and ``index``), the crops that added most to
    ABS's logit of its predicted class are drawn bold and numbered by rank. Without it
    (per-crop soft-matching scores are not stored, and the models were not loaded), what is
    drawn bold are the ``emphasis`` crops of each kind centred on the highest-attention DINO
    cells (ties: the earliest drawn): ABS draws crop centres with probability
    softmax(attention / tau_sample), so these are the crops the attention favoured most.
    All the other crops are thin and faint. The title names both methods' predictions and
    their stored margins (``margin_a`` / ``margin_b``) when the row has them.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    w, h = img.size
    lay = gallery_layout(w, h)
    fw, fh = lay["fig_w"], lay["fig_h"]
    fig = _figure(fw, fh, dpi=GALLERY_DPI)
    pos = lambda x_in: (x_in / fw, lay["bottom"] / fh, lay["panel_w"] / fw, lay["panel_h"] / fh)  # noqa: E731
    left_ax = fig.add_axes(pos(lay["side"]))
    right_ax = fig.add_axes(pos(lay["side"] + lay["panel_w"] + lay["gap"]))
    pixels = np.asarray(img)
    left_ax.imshow(pixels, extent=(0, w, h, 0), interpolation="nearest")
    left_ax.set_title("image (untouched)", fontsize=7)

    grey = np.asarray(img.convert("L"), dtype=np.float64)
    right_ax.imshow(grey, cmap="gray", vmin=-255, vmax=255 + 128, extent=(0, w, h, 0), interpolation="nearest")  # dimmed
    d = heat.shape[0] if heat is not None else DEFAULT_DINO_GRID
    if heat is not None:
        if heat_source == "cache":
            lo, hi = float(heat.min()), float(heat.max())
            norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
        else:  # top-K cells only: the others are unknown, leave them uncoloured
            hi = float(heat.max()) or 1.0
            norm = np.ma.masked_where(heat <= 0, heat / hi)
        right_ax.imshow(norm, cmap="YlOrRd", vmin=0, vmax=1, alpha=0.75, extent=(0, w, h, 0),
                        interpolation="bilinear" if heat_source == "cache" else "nearest")
    heat_text = {"cache": "DINO attention, full map (cache)", "topk": "DINO attention, top-K cells only"}.get(
        heat_source if heat is not None else "", "no DINO attention stored")
    right_ax.set_title(f"{heat_text} + ABS crops", fontsize=7)

    # Stored geometry is in the pixels the classifier saw (row width/height); scale if the decoded size differs.
    rw, rh = row.get("width") or w, row.get("height") or h
    sx, sy = w / rw, h / rh
    idx = list(row.get("dino_topk_indices") or [])
    vals = list(row.get("dino_topk_values") or [1.0] * len(idx))
    cells_px = [((i % d + 0.5) * rw / d, (i // d + 0.5) * rh / d) for i in idx]  # in row pixels

    raw = [tuple(float(v) for v in b) for b in (row.get("raw_boxes") or [])]
    raw_ranks = _crop_ranks([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in raw], raw, cells_px, vals)
    g, size = clip_grid or (DEFAULT_DINO_GRID, 224)
    wins = [tuple(int(v) for v in win) for win in (row.get("feature_windows") or [])]
    # In grid cells: ABS maps DINO cell (r, c) to CLIP cell (floor(r G / D), floor(c G / D)).
    cells_g = [((i % d) * g // d + 0.5, (i // d) * g // d + 0.5) for i in idx]
    win_g = [(c0, r0, c1, r1) for r0, r1, c0, c1 in wins]
    feat_ranks = _crop_ranks([((c0 + c1) / 2, (r0 + r1) / 2) for c0, r0, c1, r1 in win_g], win_g, cells_g, vals)
    win_px = [feature_window_pixels(win, rw, rh, g, size) for win in wins]

    def draw(boxes, bold: set[int], color: str, style: str) -> None:
        for i, (x0, y0, x1, y1) in sorted(enumerate(boxes), key=lambda t: t[0] in bold):  # bold on top
            # (width, alpha): bold, faint, or (nothing to rank them by) all alike
            lw, alpha = (2.0, 1.0) if i in bold else (0.5, 0.3) if bold else (1.2, 0.9)
            right_ax.add_patch(Rectangle((x0 * sx, y0 * sy), (x1 - x0) * sx, (y1 - y0) * sy, fill=False, edgecolor=color,
                                         linestyle=style, linewidth=lw, alpha=alpha, zorder=4 if i in bold else 3))

    ranked = [(c["kind"], int(c["index"])) for c in (deciding or {}).get("crops") or []]
    if ranked:
        bold_raw = {i for k, i in ranked if k == "raw" and i < len(raw)}
        bold_feat = {i for k, i in ranked if k == "feature" and i < len(win_px)}
    else:
        bold_raw, bold_feat = emphasised(raw_ranks, emphasis), emphasised(feat_ranks, emphasis)
    draw(raw, bold_raw, RAW_BOX_COLOR, "-")
    draw(win_px, bold_feat, FEATURE_WINDOW_COLOR, "--")
    for rank, (kind, i) in enumerate(ranked, 1):  # the deciding crops' ranks, at their top-left corners
        boxes, color = (raw, RAW_BOX_COLOR) if kind == "raw" else (win_px, FEATURE_WINDOW_COLOR)
        if i < len(boxes):
            right_ax.text(boxes[i][0] * sx + 1, boxes[i][1] * sy + 1, str(rank), color="white", fontsize=6.5,
                          fontweight="bold", ha="left", va="top", zorder=5, clip_on=True,
                          bbox={"boxstyle": "square,pad=0.15", "facecolor": color, "edgecolor": "none", "alpha": 0.9})
    for ax in (left_ax, right_ax):
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_xticks([])
        ax.set_yticks([])

    def verdict(method: str, name: Any, pred: Any, margin: Any) -> str:
        mark = "right" if pred == row["label"] else "wrong"
        m = "" if margin is None else f", margin {margin:+.2f}"
        return f"{method}: {name if name is not None else pred} ({mark}{m})"

    fig.suptitle(
        f"{row['image_id']}   true: {row['class_name']}\n"
        f"{verdict(row['method_a'], row['pred_name_a'], row['pred_a'], row.get('margin_a'))}  |  "
        f"{verdict(row['method_b'], row['pred_name_b'], row['pred_b'], row.get('margin_b'))}",
        fontsize=8, y=1 - 0.05 / fh, va="top",
    )
    handles = [
        Line2D([], [], color=RAW_BOX_COLOR, linestyle="-", linewidth=1.5, label=f"raw crop box, image pixels ({len(raw)})"),
        Line2D([], [], color=FEATURE_WINDOW_COLOR, linestyle="--", linewidth=1.5,
               label=f"feature window, CLIP {g}x{g} token grid ({len(wins)})"),
    ]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, (lay["bottom"] - 0.03) / fh), ncol=2,
               fontsize=6.5, frameon=False, handlelength=2.5, borderaxespad=0.0)
    if ranked:
        caption = (f"bold, numbered {'1' if len(ranked) == 1 else f'1-{len(ranked)}'}: the crops adding most to ABS's logit of "
                   f"{deciding.get('class_name')}\n(recomputed with the run's models); faint: all the other crops")
    elif bold_raw or bold_feat:
        caption = (f"bold: the {emphasis} crops of each kind centred on the highest-attention DINO cells\n"
                   "(per-crop matching weights are not stored); faint: all the other crops")
    else:
        caption = "no DINO top-K cells stored: all crops drawn alike"
    fig.text(0.5, 0.02 / fh, caption, ha="center", va="bottom", fontsize=6)
    return _png(fig)


def _read_images(st: Storage, dataset: str, shard: int, image_ids: set[str]) -> dict[str, bytes]:
    rel = shard_part(dataset, shard)
    if not st.exists(rel):
        return {}
    with st.fs.open(st.path(rel), "rb") as f:
        # image_id has row-group statistics: only the row groups holding these ids are read.
        t = pq.read_table(f, columns=["image_id", "image"], filters=[("image_id", "in", sorted(image_ids))])
    return {i: b for i, b in zip(t.column("image_id").to_pylist(), t.column("image").to_pylist()) if b is not None}


def _consistent(full: np.ndarray, indices: Sequence[int] | None, values: Sequence[float] | None) -> bool:
    """Whether a cached map holds the row's top-K values at the row's top-K cells.

    Why check instead of matching names: the cache folder is keyed by DINO model and
    a weights/preprocessing key that the run record does not spell out, and drawing
    another DINO's attention under ABS's boxes would mislead. The map ABS actually
    used has exactly these values at these cells.
    """
    if not indices or values is None:
        return False
    flat = full.ravel()
    idx = np.asarray(indices, dtype=np.int64)
    if int(idx.max()) >= flat.size:
        return False
    return bool(np.allclose(flat[idx], np.asarray(values, dtype=np.float64), rtol=1e-2, atol=1e-5))


def _cached_maps(con, run: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Full attention maps from the DINO cache that agree with each row's top-K cells."""
    if not rows:
        return {}
    cached = catalog.run_query(
        con,
        "SELECT image_id, model, variant, grid, attention FROM dino_attention "
        "WHERE dataset = getvariable('dataset') AND status = 'ok' AND list_contains(getvariable('image_ids'), image_id)",
        {"dataset": run["dataset"], "image_ids": [r["image_id"] for r in rows]},
    ).to_pylist()
    by_id = {r["image_id"]: r for r in rows}
    own_model = slug(run["dino_model"]) if run.get("dino_model") else None
    out: dict[str, np.ndarray] = {}
    for c in sorted(cached, key=lambda c: c["model"] != own_model):  # the run's DINO model first
        m = full_attention(c["attention"], c["grid"])
        r = by_id[c["image_id"]]
        if c["image_id"] not in out and m is not None and _consistent(m, r["dino_topk_indices"], r["dino_topk_values"]):
            out[c["image_id"]] = m
    return out


def _feature_windows(con, run_id: str, method: str, image_ids: Sequence[str]) -> dict[str, Any]:
    """The stored feature-space windows of ``method``'s rows for these images (the gallery
    query returns the raw boxes only)."""
    if not image_ids:
        return {}
    rows = catalog.run_query(
        con,
        "SELECT image_id, feature_windows FROM run_predictions WHERE run_id = getvariable('run_id') "
        "AND method = getvariable('method') AND list_contains(getvariable('image_ids'), image_id)",
        {"run_id": run_id, "method": method, "image_ids": list(image_ids)},
    ).to_pylist()
    return {r["image_id"]: r["feature_windows"] for r in rows}


# ---------------------------------------------------------------------- what decided ABS's prediction
def soft_match_terms(crop_features, text_features, text_mask, tau: float):
    """``[n, C, M]`` float64: the terms of ABS's soft matching of one image's ``n`` crops.

    Term (n, c, m) = P[n, c, m] * s[n, c, m], with s = v_n . t_cm / tau and P[n] the softmax
    of s[n] over every (class, description) pair together (``abs_model.matching.soft_match``;
    masked pairs are out of the softmax and zero here). Summed over crops and descriptions it
    is class c's ABS logit, so summed over descriptions it is what each crop adds to a class's
    logit, and summed over crops what each description adds.
    """
    import torch

    v = crop_features.detach().to("cpu", torch.float64)
    t = text_features.detach().to("cpu", torch.float64)
    n, d = v.shape
    c, m, _ = t.shape
    s = (v @ t.reshape(c * m, d).T) / tau  # [n, C*M]
    valid = None if text_mask is None else text_mask.detach().to("cpu", torch.bool).reshape(1, c * m)
    w = torch.softmax(s if valid is None else s.masked_fill(~valid, float("-inf")), dim=1).mul_(s)  # P * s
    if valid is not None:
        w.masked_fill_(~valid, 0.0)
    return w.view(n, c, m)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text if len(text) <= limit else text[: limit - 1] + '…'}"


def load_run_context(st: Storage, run: Mapping[str, Any]) -> tuple[Any | None, str | None]:
    """The run's evaluation context (its models, text bank and descriptions, as
    :func:`tasks.run.context.resolve` builds them for the flow, and reuses in the flow's process),
    or ``(None, why not)``: no evaluation spec in the run record, models that cannot be loaded
    (no weights here, no such device), or inputs that changed since the run (another config hash)."""
    rec = _run_record(st, run["run_id"])
    cfg = rec.get("config_json") or run.get("config_json") or {}
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            cfg = {}
    spec = cfg.get("spec") if isinstance(cfg, Mapping) else None
    if not spec:
        return None, "the run record holds no evaluation spec (`config_json.spec`), so the run's models are unknown"
    try:
        from tasks.run.context import resolve

        ctx = resolve(st.root, spec)
    except Exception as exc:  # noqa: BLE001 - whatever stops the models loading, the report goes on without them
        return None, f"the run's models could not be loaded ({_one_line(exc)})"
    if run.get("config") and ctx.config_hash != run["config"]:
        return None, (f"the run's inputs changed since it ran (config {ctx.config_hash} now, {run['config']} in the "
                      "run: weights, descriptions or dataset differ), so its crops cannot be rescored faithfully")
    return ctx, None


def _crop_text(kind: str, box: Sequence[int]) -> str:
    if kind == "raw":
        x0, y0, x1, y1 = (int(v) for v in box)
        return f"raw crop box x {x0}-{x1}, y {y0}-{y1} px"
    r0, r1, c0, c1 = (int(v) for v in box)
    return f"feature window rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1} of CLIP's token grid"


def explain_image(ctx, row: Mapping[str, Any], data: bytes, *, n_crops: int = DECIDING_CROPS,
                  n_descriptions: int = DECIDING_DESCRIPTIONS) -> tuple[dict[str, Any] | None, str | None]:
    """Which crops and descriptions decided ABS's prediction for one gallery row: ``(explanation, None)``,
    or ``(None, why not)``.

    Recomputes the image's crop features with the run's classifier from the stored DINO top-K
    (the crops are drawn from a generator seeded by the image id, so they are the stored ones;
    checked, as is the predicted class), then splits ABS's logit of the predicted class into
    :func:`soft_match_terms`. The explanation: ``pred``/``class_name`` (the predicted class),
    ``logit`` (its ABS logit), ``runner_up``/``runner_up_logit`` (the best other class),
    ``score_true`` (the true class's logit, as recomputed), ``crops`` (the ``n_crops`` crops
    adding most to ``logit``, in rank order: ``kind`` 'raw' or 'feature', ``index`` among the
    stored boxes or windows, ``box``, ``score`` = what the crop adds), ``descriptions``
    (the ``n_descriptions`` descriptions of the predicted class adding most to ``logit``,
    summed over all crops: ``text``, ``index``, ``score``) and ``crop_scores`` (what every
    crop adds, raw crops first, then feature windows; they sum to ``logit``).
    """
    import torch

    from tasks.store.images import decode

    clf = ctx.classifier
    cfg = clf.config
    idx = torch.tensor([list(row.get("dino_topk_indices") or [])], dtype=torch.long)
    vals = torch.tensor([list(row.get("dino_topk_values") or [])], dtype=torch.float32)
    if idx.shape[1] < cfg.top_k:
        return None, f"the row stores {idx.shape[1]} DINO top-K cells, the run's config needs {cfg.top_k}"
    try:
        img = clf.prepare_image(decode(data))
        res = clf.predict([img], [row["image_id"]], dino_topk=(idx, vals), return_features=True)
    except Exception as exc:  # noqa: BLE001 - one image that cannot be rescored does not stop the report
        return None, f"rescoring failed ({_one_line(exc)})"
    geo = res.geometry[0]
    raw, wins = geo.raw_boxes.tolist(), geo.feature_windows.tolist()
    if (row.get("raw_boxes") is not None and [list(b) for b in row["raw_boxes"]] != raw) or (
            row.get("feature_windows") is not None and [list(w) for w in row["feature_windows"]] != wins):
        return None, "the recomputed crops differ from the stored ones (not the run's models or config?)"
    n_raw = cfg.n_crops if cfg.raw_crops else 0
    m = cfg.n_descriptions
    bank = ctx.text
    terms = soft_match_terms(res.extras["crop_features"][0], bank.descriptions[:, :m], bank.mask[:, :m], cfg.tau)
    subset = list(bank.subset) if bank.subset is not None else None
    cols = res.logits["abs"][0].double()  # the classifier's own logits, in the dataset's label space
    pred = int(cols.argmax())
    if row.get("pred_a") is not None and pred != int(row["pred_a"]):
        return None, f"rescoring predicts label {pred}, the stored row {row['pred_a']} (not the run's models or config?)"
    names = list(ctx.info.classnames)
    other = cols.clone()
    other[pred] = float("-inf")
    runner = int(other.argmax()) if len(cols) > 1 else None
    tc = subset[pred] if subset is not None else pred  # the predicted class's row of the text bank
    per_crop = terms[:, tc, :].sum(dim=1)
    per_desc = terms[:, tc, :].sum(dim=0)
    crops = []
    for i in sorted(range(len(per_crop)), key=lambda j: (-float(per_crop[j]), j))[:n_crops]:
        kind, k = ("raw", i) if i < n_raw else ("feature", i - n_raw)
        box = (raw if kind == "raw" else wins)[k]
        crops.append({"rank": len(crops) + 1, "kind": kind, "index": k, "box": [int(v) for v in box],
                      "score": float(per_crop[i])})
    texts = [d for d in ctx.descriptions.texts[tc] if d and d.strip()][:m]  # the bank's rows (TextBank.build)
    valid = bank.mask[tc, :m].tolist()
    order = sorted((j for j in range(len(per_desc)) if valid[j] and j < len(texts)), key=lambda j: (-float(per_desc[j]), j))
    descriptions = [{"index": j, "text": texts[j], "score": float(per_desc[j])} for j in order[:n_descriptions]]
    label = row.get("label")
    true_score = float(cols[int(label)]) if label is not None and 0 <= int(label) < len(cols) else None
    return {
        "pred": pred, "class_name": names[pred] if pred < len(names) else str(pred), "logit": float(cols[pred]),
        "runner_up": None if runner is None else (names[runner] if runner < len(names) else str(runner)),
        "runner_up_logit": None if runner is None else float(cols[runner]), "score_true": true_score,
        "n_crops": int(terms.shape[0]), "crops": crops, "descriptions": descriptions,
        "crop_scores": [float(x) for x in per_crop],  # every crop's, raw crops first (they sum to ``logit``)
    }, None


def explain_gallery(
    st: Storage, run: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], images: Mapping[str, bytes]
) -> tuple[dict[str, dict[str, Any]], dict[str, str], str | None]:
    """:func:`explain_image` for every gallery row whose ``method_a`` is ``abs`` and whose image bytes
    were found: ``(explanations by image id, why not by image id, why none at all or None)``.
    Loads the run's models once (:func:`load_run_context`); only these few images are rescored."""
    todo = [r for r in rows if r.get("method_a") == "abs" and r["image_id"] in images]
    if not todo:
        return {}, {}, None
    ctx, why = load_run_context(st, run)
    if ctx is None:
        return {}, {}, why
    done: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    for r in todo:
        e, note = explain_image(ctx, r, images[r["image_id"]])
        if e is not None:
            done[r["image_id"]] = e
        else:
            notes[r["image_id"]] = note or "not rescored"
    return done, notes, None


def write_gallery(
    st: Storage, con, run: Mapping[str, Any], *, size: int = 4, method_a: str = "abs", method_b: str = "clip",
    explain: bool = True,
) -> tuple[list[str], list[dict[str, Any]], str | None]:
    """Draw the gallery of one run; returns (written paths, the query rows with a 'file' key, and
    why no image's deciding crops and descriptions are shown, or None).

    ``explain``: rescore the gallery images with the run's models to name the crops and
    descriptions that decided ABS's prediction (:func:`explain_gallery`); each row then has
    ``deciding`` (the explanation) or ``deciding_note`` (why not for this image).
    """
    rows = catalog.run_query(con, "gallery", {"run_id": run["run_id"], "method_a": method_a, "method_b": method_b, "top_k": size}).to_pylist()
    if not rows:
        return [], [], None
    maps = _cached_maps(con, run, rows)
    windows = ({} if "feature_windows" in rows[0]
               else _feature_windows(con, run["run_id"], method_a, [r["image_id"] for r in rows]))
    clip_grid, dino_grid = run_grids({**run, "model_geometry": _recorded_geometry(st, run["run_id"])})
    images: dict[str, bytes] = {}
    for shard in sorted({r["shard"] for r in rows}):
        images.update(_read_images(st, run["dataset"], shard, {r["image_id"] for r in rows if r["shard"] == shard}))
    if explain:
        deciding, deciding_notes, explain_note = explain_gallery(st, run, rows, images)
    else:
        deciding, deciding_notes, explain_note = {}, {}, "not asked for (`explain=False`)"
    if method_a != "abs" and explain_note is None and not deciding:
        explain_note = f"shown for `abs` rows only (method_a is `{method_a}`)"
    written, shown = [], []
    kinds = {"a_only": f"{method_a}-right-{method_b}-wrong", "b_only": f"{method_b}-right-{method_a}-wrong"}
    counters: dict[str, int] = {}
    for r in rows:
        why = deciding_notes.get(r["image_id"])
        r = {**r, "deciding": deciding.get(r["image_id"]), **({"deciding_note": why} if why else {})}
        data = images.get(r["image_id"])
        if data is None:
            shown.append({**r, "file": None, "note": "image bytes not found in the shard file"})
            continue
        try:
            img = Image.open(io.BytesIO(data))
            img = img.convert("RGB")
        except Exception as exc:  # a shard row the classifier could read should decode; say so if not
            shown.append({**r, "file": None, "note": f"cannot decode: {exc}"})
            continue
        if r["image_id"] in maps:
            heat, source = maps[r["image_id"]], "cache"
        else:
            heat, source = attention_grid(r["dino_topk_indices"], r["dino_topk_values"], dino_grid), "topk"
        n = counters[r["kind"]] = counters.get(r["kind"], 0) + 1
        rel = f"{run_dir(run['run_id'])}/gallery/{kinds[r['kind']]}-{n:02d}-{slug(r['image_id'])}.png"
        drawn = {**r, "feature_windows": r.get("feature_windows", windows.get(r["image_id"]))}
        st.write_bytes(rel, draw_gallery_image(img, drawn, heat, source, clip_grid=clip_grid, deciding=r["deciding"]))
        written.append(rel)
        shown.append({**r, "file": rel, "heat": source if heat is not None else "none"})
    return written, shown, explain_note


# ---------------------------------------------------------------------- the report
def _run_row(con, run_id: str) -> dict[str, Any]:
    rows = catalog.run_query(con, "SELECT * FROM runs WHERE run_id = getvariable('run_id')", {"run_id": run_id}).to_pylist()
    if not rows:
        raise KeyError(f"no run record for run {run_id!r} (runs/run={run_id}/run.parquet)")
    return rows[0]


def n_classes_scored(st: Storage, con, run: Mapping[str, Any]) -> tuple[int | None, str]:
    """(C, where it came from): the number of classes a prediction chooses among.

    From the dataset's committed ``dataset.json`` (``subset_indices`` when the text
    classes are a superset, else ``classnames``); a ``dataset.json`` without its
    done-marker is read as is; without one, the distinct true labels of the run's
    rows (a lower bound when some class has no image).
    """
    info: Mapping[str, Any] | None = None
    try:
        info = read_dataset_info(st, run["dataset"]).raw
    except (FileNotFoundError, RuntimeError, OSError, ValueError):
        try:
            if st.exists(dataset_info(run["dataset"])):
                info = st.read_json(dataset_info(run["dataset"]))
        except (OSError, ValueError):
            info = None
    if info:
        subset, names = info.get("subset_indices"), info.get("classnames")
        if subset:
            return len(subset), "dataset.json subset_indices"
        if names:
            return len(names), "dataset.json classnames"
    rows = catalog.run_query(
        con, "SELECT count(DISTINCT label) AS c FROM run_predictions WHERE run_id = getvariable('run_id')",
        {"run_id": run["run_id"]},
    ).to_pylist()
    c = rows[0]["c"] if rows else 0
    return (int(c), "distinct true labels of the run") if c else (None, "unknown")


def write_report(
    root: str | Storage,
    run_id: str,
    *,
    previous_run_id: str | None = None,
    gallery_size: int = defaults.GALLERY_SIZE,
    storage_options: Mapping[str, Any] | None = None,
    explain: bool = True,
) -> ReportManifest:
    """Write the markdown report, plots and gallery of ``run_id`` under ``runs/run=<id>/``.

    ``previous_run_id``: the run to compare with; by default the latest earlier
    completed run of the same deployment, dataset and model (``runs.previous_run_id``).
    ``gallery_size``: images per gallery kind (ABS right / baseline wrong, and the reverse).
    ``explain``: rescore the gallery images (only those) with the run's models to show which
    crops and descriptions decided ABS's prediction (:func:`explain_gallery`); when the models
    cannot be loaded the report says so in one line and shows what is stored.
    The returned manifest's ``markdown`` is ``report.md`` (relative image links);
    ``artifact_markdown`` embeds the images for the Prefect UI.
    """
    st = as_storage(root, storage_options)
    con = catalog.connect(st)
    try:
        return _write_report(st, con, run_id, previous_run_id, gallery_size, explain)
    finally:
        con.close()


def _write_report(st: Storage, con, run_id: str, previous_run_id: str | None, gallery_size: int,
                  explain: bool = True) -> ReportManifest:
    run = _run_row(con, run_id)
    prev_id = previous_run_id or run.get("previous_run_id")
    q = lambda name, **params: catalog.run_query(con, name, {"run_id": run_id, **params}).to_pylist()  # noqa: E731
    accuracy = sorted(q("accuracy"), key=lambda r: _method_key(r["method"]))
    per_class = q("per_class_accuracy")
    extremes = q("class_extremes", top_k=5)
    confusions = q("confusions", top_k=5)
    errors = q("error_counts")
    comparison: list[dict[str, Any]] = []
    class_changes: list[dict[str, Any]] = []
    flips: list[dict[str, Any]] = []
    regressions: list[dict[str, Any]] = []
    if prev_id:
        pair = {"run_a": prev_id, "run_b": run_id}
        comparison = sorted(catalog.run_query(con, "compare_methods", pair).to_pylist(), key=lambda r: _method_key(r["method"]))
        class_changes = catalog.run_query(con, "compare_classes", {**pair, "top_k": 5}).to_pylist()
        flips = catalog.run_query(con, "compare_flips", pair).to_pylist()
        regressions = catalog.run_query(con, "regressions", pair).to_pylist()
    n_classes, n_classes_source = n_classes_scored(st, con, run)

    base = run_dir(run_id)
    plots = [f"{base}/methods.png", f"{base}/per_class_accuracy.png"]
    pngs: dict[str, bytes] = {
        plots[0]: plot_methods(accuracy, comparison, run_id, prev_id, n_classes),
        plots[1]: plot_per_class(per_class, n_classes),
    }
    for rel in plots:
        st.write_bytes(rel, pngs[rel])
    gallery, shown, explain_note = (write_gallery(st, con, run, size=gallery_size, explain=explain)
                                    if gallery_size > 0 else ([], [], None))

    settings = _setting_differences(st, prev_id, run_id) if prev_id else []
    ctx = _Context(run, prev_id, accuracy, extremes, confusions, errors, comparison, class_changes, flips, shown, base,
                   st.root, n_classes, n_classes_source, regressions, settings, explain_note)
    md = _markdown(ctx, lambda rel, alt: f"![{alt}]({_rel(rel, base)})")
    artifact = _artifact_markdown(st, ctx, pngs, gallery, len(md.encode()))
    report = f"{base}/report.md"
    st.write_bytes(report, md.encode())
    return ReportManifest(
        root=st.root, run_id=run_id, previous_run_id=prev_id, report=report, plots=plots, gallery=gallery,
        markdown=md, accuracy=accuracy, comparison=comparison, regressions=regressions,
        gallery_items=[{k: r.get(k) for k in ("image_id", "kind", "shard", "file", "heat", "note", "margin_a", "margin_b",
                                              "deciding", "deciding_note")} for r in shown],
        artifact_markdown=artifact,
    )


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _artifact_markdown(st: Storage, ctx: _Context, pngs: Mapping[str, bytes], gallery: Sequence[str], text_bytes: int) -> str:
    """The report with its images embedded as data URIs, for the Prefect UI (which cannot
    resolve report.md's relative links). The plots always; gallery images in report order
    while the whole stays under ARTIFACT_MAX_BYTES; any other image by its storage path."""
    budget = [ARTIFACT_MAX_BYTES - text_bytes - 2048 * (len(pngs) + len(gallery))]  # link text grows a little

    def image(rel: str, alt: str) -> str:
        where = st.url(rel)
        data = pngs.get(rel)
        if data is None and rel in gallery:
            try:
                with st.fs.open(st.path(rel), "rb") as f:
                    data = f.read()
            except OSError:
                data = None
        uri = png_data_uri(data) if data is not None else None
        if uri is not None and len(uri) <= budget[0]:
            budget[0] -= len(uri)
            return f"![{alt}]({uri})\n\n_file: `{where}`_"
        return f"- {alt}: `{where}` (not embedded: the artifact stays under {ARTIFACT_MAX_BYTES // 1000} KB)"

    return _markdown(ctx, image)


def _rel(path: str, base: str) -> str:
    return path[len(base) + 1 :] if path.startswith(base + "/") else path


@dataclass
class _Context:
    """Everything the markdown is made of (query rows, the run, where it lives)."""

    run: Mapping[str, Any]
    prev_id: str | None
    accuracy: list[dict[str, Any]]
    extremes: list[dict[str, Any]]
    confusions: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    comparison: list[dict[str, Any]]
    class_changes: list[dict[str, Any]]
    flips: list[dict[str, Any]]
    shown: list[dict[str, Any]]
    base: str
    root: str
    n_classes: int | None
    n_classes_source: str
    regressions: list[dict[str, Any]] = field(default_factory=list)
    #: ``tasks.results.runs.setting_differences`` of (previous run, this run): what changed, by name
    settings: list[dict[str, Any]] = field(default_factory=list)
    #: why no gallery image shows its deciding crops and descriptions (models not loaded ...), or None
    explain_note: str | None = None

    def method_tests(self) -> dict[str, dict[str, Any]]:
        """The regressions rows of scope 'method', by method."""
        return {r["method"]: r for r in self.regressions if r["scope"] == "method"}

    def regressed(self, scope: str = "method") -> list[dict[str, Any]]:
        """Rows of ``scope`` whose accuracy dropped significantly (method order, then most significant)."""
        rows = [r for r in self.regressions if r["scope"] == scope and r["regressed"]]
        return sorted(rows, key=lambda r: (_method_key(r["method"]), r["p_value"], r["label"] if r["label"] is not None else -1))


def _both(r: Mapping[str, Any]) -> bool:
    """Both runs scored this method (a comparison row of a method one run lacks is no comparison)."""
    return r.get("accuracy_a") is not None and r.get("accuracy_b") is not None


def _absent(r: Mapping[str, Any]) -> str:
    return "absent from the previous run" if r.get("accuracy_a") is None else "absent from this run"


def _setting(v: Any) -> str:
    return "(none)" if v is None else f"`{v}`"


def _sql_cmd(query: str, ctx: _Context, **params: Any) -> str:
    """The command line that reproduces a table of the report."""
    ps = "".join(f" -p {k}={v}" for k, v in params.items())
    return f"`abs-eval sql run {query}{ps} --root {ctx.root}`"


def _markdown(ctx: _Context, image: Callable[[str, str], str]) -> str:
    """The report; ``image(path relative to the root, alt text)`` renders each picture."""
    run, prev_id, base, run_id = ctx.run, ctx.prev_id, ctx.base, ctx.run["run_id"]
    out = [f"# Evaluation report: run `{run_id}`\n"]
    facts = [
        ("deployment", run.get("deployment")), ("dataset", run.get("dataset")), ("model", run.get("model")),
        ("config", run.get("config")), ("status", run.get("status")), ("started", run.get("started_at")),
        ("ended", run.get("ended_at")), ("CLIP", f"{run.get('clip_model')} / {run.get('clip_pretrained')}"),
        ("DINO", f"{run.get('dino_model')} / {run.get('dino_pretrained')}"), ("descriptions", run.get("descriptions_hash")),
        ("classes scored (C)", f"{ctx.n_classes} ({ctx.n_classes_source})" if ctx.n_classes else "unknown"),
        ("shards computed by this run", f"{run.get('shards_computed')} of {run.get('shards_total')}"),
    ]
    out.append(md_table([{"k": k, "v": v} for k, v in facts], [("", "k"), ("", "v")]))
    dropped = ctx.regressed("method")
    if dropped:
        out.append(f"> **{DROP_FLAG} since the previous run `{prev_id}`** (exact McNemar test, p < 0.05, accuracy down):\n>")
        for r in dropped:
            out.append(f"> - **{r['method']}**: {_pct(r['accuracy_a'])} → {_pct(r['accuracy_b'])} ({_pp(r['change'])}); "
                       f"{r['n_broken']} images right → wrong, {r['n_fixed']} wrong → right, p = {_p(r['p_value'])}")
        out.append("> \n> Details: section *Comparison with the previous run*; "
                   f"{_sql_cmd('regressions', ctx, run_a=prev_id, run_b=run_id)}.\n")
    out.append("All numbers below come from the SQL in `sql/` over the run's full prediction set (rows reused from an "
               "earlier run of the same config included); each section names the command that prints its table, e.g. "
               f"{_sql_cmd('accuracy', ctx, run_id=run_id)} (`abs-eval sql list` lists the queries).\n")

    out.append("## Accuracy\n")
    out.append(f"Query: {_sql_cmd('accuracy', ctx, run_id=run_id)}. Accuracy is over the images that could be "
               "classified (ok); \"errors counted wrong\" also counts unreadable images as wrong.\n")
    out.append(md_table(ctx.accuracy, [
        ("method", "method"), ("n", "n"), ("ok", "n_ok"), ("errors", "n_error"), ("correct", "correct"),
        ("accuracy", lambda r: _pct(r["accuracy"])), ("95% CI", _ci), ("top-5", lambda r: _pct(r.get("acc5"))),
        ("mean per-class recall", lambda r: _pct(r.get("mean_per_class_recall"))),
        ("errors counted wrong", lambda r: _pct(r["accuracy_all"])),
    ]))
    out.append("_top-5: the true class among the 5 highest-scoring classes (ok images); mean per-class recall: the "
               "average over classes of each class's accuracy, so every class weighs the same (CLIP_benchmark's "
               "`acc5` and `mean_per_class_recall`; `abs-eval export` writes them in its format)._\n")
    chance = (f"; dashed grey line: chance level 1/C = 1/{ctx.n_classes} = {_pct(1 / ctx.n_classes)}"
              if ctx.n_classes else "")
    out.append("\n" + image(f"{base}/methods.png", "accuracy by method") + "\n")
    out.append(f"_Bars: accuracy per method; black whiskers: 95% Wilson interval"
               f"{'; grey: the previous run' if ctx.comparison else ''}{chance}. Methods whose intervals overlap "
               "are not clearly different on this many images._\n")

    out.append("## Per-class accuracy: extremes\n")
    out.append(f"Query: {_sql_cmd('class_extremes', ctx, run_id=run_id, top_k=5)}. Up to 5 worst and 5 best classes "
               "per method; a class at 0% is never listed as best.\n")
    for method in sorted({r["method"] for r in ctx.extremes}, key=_method_key):
        rows = [r for r in ctx.extremes if r["method"] == method]
        out.append(f"**{method}**\n")
        out.append(md_table(rows, [
            ("", "extreme"), ("#", "position"), ("class", "class_name"), ("ok images", "n_ok"),
            ("accuracy", lambda r: _pct(r["accuracy"])), ("95% CI", _ci),
        ]))
        if not any(r["extreme"] == "best" for r in rows):
            out.append("_No best list: no class of this method is above 0% accuracy._\n")
    out.append("\n" + image(f"{base}/per_class_accuracy.png", "per-class accuracy") + "\n")
    out.append(f"_Per-class accuracy of every method (query: {_sql_cmd('per_class_accuracy', ctx, run_id=run_id)}), "
               "classes sorted by the first method's accuracy._\n")

    out.append("## Most frequent confusions\n")
    shown_conf: list[dict[str, Any]] = []
    for method in sorted({r["method"] for r in ctx.confusions}, key=_method_key):
        shown_conf += [r for r in ctx.confusions if r["method"] == method][:5]  # the query orders by rank
    out.append(f"Query: {_sql_cmd('confusions', ctx, run_id=run_id, top_k=5)}. Up to 5 per method, most frequent "
               "first; equal counts share a rank.\n")
    out.append(md_table(shown_conf, [
        ("method", "method"), ("rank", "rank"), ("true class", "class_name"), ("predicted", "pred_name"),
        ("images", "n"), ("share of class", lambda r: _pct(r["share"])),
    ]))

    out.append("## Errors (images that could not be classified)\n")
    out.append(f"Query: {_sql_cmd('error_counts', ctx, run_id=run_id)}; every failing image: "
               f"{_sql_cmd('errors', ctx, run_id=run_id)}.\n")
    out.append(md_table(ctx.errors, [("status", "status"), ("images", "n_images"), ("example", "example_error")]))

    out.append("## Comparison with the previous run\n")
    if not prev_id:
        out.append(f"No earlier completed run of deployment `{run.get('deployment')}` on this dataset and model.\n")
    else:
        pair = {"run_a": prev_id, "run_b": run_id}
        tests = ctx.method_tests()
        out.append(f"Previous run: `{prev_id}` (before) vs `{run_id}` (this run). "
                   f"fixed = wrong before, right now; broken = the reverse. Query: {_sql_cmd('compare_methods', ctx, **pair)}. "
                   "McNemar p: exact two-sided McNemar test of broken vs fixed over the images both runs classified "
                   "(the chance of a split at least this uneven if the method had not changed); "
                   f"{DROP_FLAG} = p < 0.05 and accuracy down ({_sql_cmd('regressions', ctx, **pair)}).\n")
        if ctx.settings:
            out.append("**The settings differ** between the two runs, so a change may come from them rather than "
                       "from a regression of the method:\n")
            out.append(md_table(ctx.settings, [("setting", "setting"), ("before", lambda r: _setting(r["before"])),
                                               ("this run", lambda r: _setting(r["after"]))]))
            out.append("")
        else:
            out.append("Same settings in both runs (method parameters, models and weights, descriptions, dataset).\n")
        out.append(md_table(ctx.comparison, [
            ("method", "method"), ("before", lambda r: _pct(r["accuracy_a"])), ("now", lambda r: _pct(r["accuracy_b"])),
            ("delta", lambda r: _pp(r["delta"])), ("changed", "n_changed"), ("fixed", "n_fixed"), ("broken", "n_broken"),
            ("McNemar p", lambda r: _p((tests.get(r["method"]) or {}).get("p_value")) if _both(r) else "-"),
            ("verdict", lambda r: _verdict(tests.get(r["method"])) if _both(r) else _absent(r)),
        ]))
        class_drops = ctx.regressed("class")
        if class_drops:
            out.append(f"\nClasses with a significant drop (p < 0.05, accuracy down; "
                       f"{_sql_cmd('regressions', ctx, **pair, scope='class')}):\n")
            out.append(md_table(class_drops, [
                ("method", "method"), ("class", "class_name"), ("before", lambda r: _pct(r["accuracy_a"])),
                ("now", lambda r: _pct(r["accuracy_b"])), ("delta", lambda r: _pp(r["change"])), ("broken", "n_broken"),
                ("fixed", "n_fixed"), ("McNemar p", lambda r: _p(r["p_value"])),
            ]))
        out.append(f"\nLargest per-class changes (up to 5 per method; unchanged classes left out; "
                   f"{_sql_cmd('compare_classes', ctx, **pair, top_k=5)}):\n")
        out.append(md_table([r for r in ctx.class_changes if r["delta"] != 0], [
            ("method", "method"), ("class", "class_name"), ("before", lambda r: _pct(r["accuracy_a"])),
            ("now", lambda r: _pct(r["accuracy_b"])), ("delta", lambda r: _pp(r["delta"])),
        ]))
        out.append(f"\nFlipped images: {len(ctx.flips)} (image x method); first 20 "
                   f"(all: {_sql_cmd('compare_flips', ctx, **pair)}):\n")
        out.append(md_table(ctx.flips[:20], [
            ("method", "method"), ("image", "image_id"), ("true", "class_name"), ("before", "pred_name_a"),
            ("now", "pred_name_b"), ("change", "change"),
        ]))

    out.append("## Gallery\n")
    if not ctx.shown:
        out.append("No image where `abs` and `clip` disagree on rightness (or one of them is missing).\n")
    else:
        out.append(f"Images one method got right and the other wrong, most confident winner first "
                   f"({_sql_cmd('gallery', ctx, run_id=run_id)}). Left: the image, untouched. Right: DINO's attention "
                   "(light yellow = low, dark red = high; only the stored top-K cells unless the DINO cache holds the "
                   "full map) over a dimmed grey copy, with ABS's crops: **solid blue** = raw crop boxes (regions cut "
                   "from the image), **dashed black** = feature-space windows (regions of CLIP's token grid, which "
                   "covers the image's centre square).\n")
        out.append("Under each image: the true and predicted classes and each method's stored **margin** (its score "
                   "of the true class minus its best other class's score: > 0 means right; `abs` scores are "
                   "soft-matching logits, `clip` scores 100 x cosine similarity).\n")
        if any(r.get("deciding") for r in ctx.shown):
            out.append(f"**Deciding crops** (bold and numbered in the picture): the {DECIDING_CROPS} crops that add most "
                       "to ABS's logit of the class it predicted. ABS's logit of a class is a sum over its crops: each "
                       "crop's similarity to each of the class's descriptions (cosine / tau), weighted by the softmax of "
                       "that crop's similarities over every (class, description) pair. **Deciding descriptions**: the "
                       f"{DECIDING_DESCRIPTIONS} descriptions of the predicted class that add most to that logit, summed "
                       "over all crops. Per-crop scores are not stored: the gallery images (only these) were rescored "
                       "with the run's models from the stored DINO top-K cells; the crops and the prediction were "
                       "checked against the stored row.\n")
        if ctx.explain_note:
            out.append(f"_Deciding crops and descriptions not shown: {ctx.explain_note}. Shown instead: the stored "
                       f"margins and crops; bold marks the {EMPHASISED_CROPS} crops of each kind centred on the "
                       "highest-attention DINO cells (the centres ABS sampled most readily), not necessarily the crops "
                       "that decided the prediction._\n")
    for kind, title in (("a_only", "ABS right, CLIP wrong"), ("b_only", "CLIP right, ABS wrong")):
        rows = [r for r in ctx.shown if r["kind"] == kind]
        if not rows:
            continue
        out.append(f"### {title}\n")
        for r in rows:
            if r.get("file"):
                out.append(image(r["file"], r["image_id"]) + "\n")
            else:
                out.append(f"- `{r['image_id']}`: {r.get('note')}\n")
            out.append(_gallery_caption(r) + "\n")
    return "\n".join(out)


def _margin(v: Any) -> str:
    return "margin –" if v is None else f"margin {v:+.3f}"


def _gallery_caption(r: Mapping[str, Any]) -> str:
    """The text under one gallery image: classes and margins, then what decided ABS's prediction
    (or what is stored about its crops, and why no more is shown)."""

    def verdict(method: str, name: Any, pred: Any, margin: Any) -> str:
        mark = "right" if pred is not None and pred == r.get("label") else "wrong"
        return f"`{method}` predicted **{name if name is not None else pred}** ({mark}, {_margin(margin)})"

    lines = [f"**`{r['image_id']}`**: true class **{r.get('class_name')}**; "
             f"{verdict(r['method_a'], r.get('pred_name_a'), r.get('pred_a'), r.get('margin_a'))}; "
             f"{verdict(r['method_b'], r.get('pred_name_b'), r.get('pred_b'), r.get('margin_b'))}."]
    e = r.get("deciding")
    if e:
        runner = (f", runner-up **{e['runner_up']}** {e['runner_up_logit']:.3f}" if e.get("runner_up") is not None else "")
        crops = "; ".join(f"{c['rank']}. {_crop_text(c['kind'], c['box'])} ({c['score']:+.3f})" for c in e["crops"])
        descs = "; ".join(f"\"{_cell(d['text'])}\" ({d['score']:+.3f})" for d in e["descriptions"])
        lines.append(f"- Deciding crops of `abs` for **{e['class_name']}** (what each adds to its logit "
                     f"{e['logit']:.3f}{runner}; {e['n_crops']} crops in all): {crops}")
        lines.append(f"- Best-matching descriptions of **{e['class_name']}**: {descs}")
    else:
        n_raw, n_win, n_cells = (len(r.get(k) or []) for k in ("raw_boxes", "feature_windows", "dino_topk_indices"))
        stored = (f"- Stored `{r['method_a']}` crops: {n_raw} raw crop boxes, {n_win} feature windows, "
                  f"from {n_cells} DINO top-K cells")
        lines.append(stored + (f"; deciding crops not shown: {r['deciding_note']}" if r.get("deciding_note") else ""))
    return "\n".join(lines)
