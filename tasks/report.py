"""The per-run report: markdown, plots and a gallery, written next to the run record.

Why every number comes from ``sql/`` (through :func:`tasks.catalog.run_query`):
a figure in a report must be one that an analyst can re-run in DuckDB and get
again. This module only formats query results, draws them, and decodes images;
it aggregates nothing itself.

Written under ``runs/run=<id>/`` (each file atomically, ``report.md`` last, so a
report that exists has its pictures)::

    report.md                 accuracy table, per-class extremes, confusions, errors,
                              comparison with the previous run of the same deployment
    methods.png               accuracy per method with 95% Wilson intervals (and the previous run's)
    per_class_accuracy.png    per-class accuracy of every method, classes sorted by the first method
    gallery/<kind>-<nn>-<image>.png
                              images ABS got right and the baseline wrong (and the reverse): the
                              image, the DINO attention as a heat map, ABS's crop boxes

The gallery needs no recompute: the crop boxes and DINO top-K attention are stored
on the ``abs`` prediction rows, the image bytes in the shard files; when the DINO
cache (``cache/dino/...``) holds the full attention map of an image that agrees
with the row's top-K cells (the map ABS used), that is drawn instead of the top-K cells.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from tasks import catalog
from tasks.schema import run_record_json, slug
from tasks.shard import shard_rel_path
from tasks.storage import Storage

#: Methods in this order in tables and plots; others follow alphabetically.
METHOD_ORDER = ("abs", "clip", "clip-e", "cupl")
#: The DINO grid side assumed for top-K cells when no cached map says otherwise (224 / 16).
DEFAULT_DINO_GRID = 14


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
    gallery_items: list[dict[str, Any]] = field(default_factory=list, repr=False)  # image_id, kind, file, heat, note

    @property
    def files(self) -> list[str]:
        return [*self.plots, *self.gallery, self.report]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("markdown")
        return d


def run_dir(run_id: str) -> str:
    """``runs/run=<id>``: the run record's folder, where the report goes."""
    return run_record_json(run_id).rsplit("/", 1)[0]


# ---------------------------------------------------------------------- formatting
def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _pp(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} pp"


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
def _figure(width: float, height: float):
    # The object API with an Agg canvas: no pyplot global state, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def plot_methods(accuracy: Sequence[Mapping[str, Any]], comparison: Sequence[Mapping[str, Any]] = (), run_id: str = "", previous_run_id: str | None = None) -> bytes:
    """Bar chart: accuracy per method with its 95% interval; the previous run's beside it."""
    methods = sorted({r["method"] for r in accuracy}, key=_method_key)
    cur = {r["method"]: r for r in accuracy}
    prev = {r["method"]: r for r in comparison if r.get("accuracy_a") is not None}
    fig = _figure(max(4.0, 1.2 * len(methods) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(methods))
    width = 0.38 if prev else 0.6

    def bars(offset: float, vals, lows, highs, label: str, color: str) -> None:
        v = np.array([np.nan if a is None else a for a in vals], dtype=float)
        lo = np.array([np.nan if a is None else a for a in lows], dtype=float)
        hi = np.array([np.nan if a is None else a for a in highs], dtype=float)
        ax.bar(x + offset, v, width, label=label, color=color, yerr=np.vstack([v - lo, hi - v]), capsize=3)
        for xi, vi in zip(x + offset, v):
            if not np.isnan(vi) and vi > 0.08:
                ax.text(xi, vi / 2, f"{100 * vi:.1f}", ha="center", va="center", fontsize=7, color="white", rotation=90)

    if prev:
        bars(-width / 2, [prev.get(m, {}).get("accuracy_a") for m in methods], [prev.get(m, {}).get("ci_low_a") for m in methods],
             [prev.get(m, {}).get("ci_high_a") for m in methods], f"previous ({previous_run_id})", "#b0b0b0")
    bars(width / 2 if prev else 0.0, [cur[m]["accuracy"] for m in methods], [cur[m]["ci_low"] for m in methods],
         [cur[m]["ci_high"] for m in methods], f"this run ({run_id})", "#1f77b4")
    ax.set_xticks(x)
    ax.set_xticklabels(methods)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (ok rows), 95% Wilson CI")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_per_class(per_class: Sequence[Mapping[str, Any]]) -> bytes:
    """Per-class accuracy of each method; classes sorted by the first method's accuracy."""
    methods = sorted({r["method"] for r in per_class}, key=_method_key)
    by = {(r["method"], r["label"]): r for r in per_class}
    labels = sorted({r["label"] for r in per_class})
    names = {r["label"]: r["class_name"] for r in per_class}
    ref = methods[0] if methods else None
    order = sorted(labels, key=lambda c: ((by.get((ref, c)) or {}).get("accuracy") or 0.0, c))
    n = len(order)
    fig = _figure(min(max(6.0, 0.22 * n * max(1, len(methods) // 2) + 2), 16.0), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    for i, m in enumerate(methods):
        y = [(by.get((m, c)) or {}).get("accuracy") for c in order]
        y = np.array([np.nan if v is None else v for v in y], dtype=float)
        if n <= 30:  # few classes: grouped bars
            w = 0.8 / max(len(methods), 1)
            ax.bar(x - 0.4 + w * (i + 0.5), y, w, label=m)
        else:  # many classes: one line per method over the sorted classes
            ax.plot(x, y, marker="o" if n <= 60 else None, markersize=3, linewidth=1.2 if m == ref else 0.8, label=m)
    if n <= 60:
        ax.set_xticks(x)
        ax.set_xticklabels([str(names.get(c, c)) for c in order], rotation=90, fontsize=7 if n <= 30 else 6)
        ax.set_xlabel(f"classes, sorted by {ref} accuracy")
    else:
        ax.set_xlabel(f"{n} classes, sorted by {ref} accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("per-class accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


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


def draw_gallery_image(img: Image.Image, row: Mapping[str, Any], heat: np.ndarray | None, heat_source: str) -> bytes:
    """The image with the attention heat map over it (cell (r, c) covers the same fraction of
    the image as in ABS's sampling) and ABS's raw crop boxes, titled with both predictions."""
    from matplotlib.patches import Rectangle

    w, h = img.size
    fig = _figure(4.2, 4.2 * h / max(w, 1) + 0.9)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.asarray(img), extent=(0, w, h, 0))
    if heat is not None:
        if heat_source == "cache":
            lo, hi = float(heat.min()), float(heat.max())
            norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
        else:  # top-K cells only: the others are unknown, leave them transparent
            hi = float(heat.max()) or 1.0
            norm = np.ma.masked_where(heat <= 0, heat / hi)
        ax.imshow(norm, cmap="jet", alpha=0.45, extent=(0, w, h, 0),
                  interpolation="bilinear" if heat_source == "cache" else "nearest")
    # Boxes are in the pixels the classifier saw (row width/height); scale if the decoded size differs.
    sx = w / row["width"] if row.get("width") else 1.0
    sy = h / row["height"] if row.get("height") else 1.0
    for box in row.get("raw_boxes") or []:
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0 * sx, y0 * sy), (x1 - x0) * sx, (y1 - y0) * sy, fill=False, edgecolor="white", linewidth=1.2))
        ax.add_patch(Rectangle((x0 * sx, y0 * sy), (x1 - x0) * sx, (y1 - y0) * sy, fill=False, edgecolor="black", linewidth=0.5, linestyle="--"))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()

    def verdict(method: str, name: Any, pred: Any) -> str:
        mark = "right" if pred == row["label"] else "wrong"
        return f"{method}: {name if name is not None else pred} ({mark})"

    ax.set_title(
        f"{row['image_id']}  true: {row['class_name']}\n"
        f"{verdict(row['method_a'], row['pred_name_a'], row['pred_a'])} | {verdict(row['method_b'], row['pred_name_b'], row['pred_b'])}\n"
        f"heat: DINO attention ({'full map, cache' if heat_source == 'cache' else 'top-K cells' if heat is not None else 'none'}), boxes: ABS crops",
        fontsize=7,
    )
    return _png(fig)


def _read_images(st: Storage, dataset: str, shard: int, image_ids: set[str]) -> dict[str, bytes]:
    rel = shard_rel_path(dataset, shard)
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


def write_gallery(
    st: Storage, con, run: Mapping[str, Any], *, size: int = 4, method_a: str = "abs", method_b: str = "clip"
) -> tuple[list[str], list[dict[str, Any]]]:
    """Draw the gallery of one run; returns (written paths, the query rows with a 'file' key)."""
    rows = catalog.run_query(con, "gallery", {"run_id": run["run_id"], "method_a": method_a, "method_b": method_b, "top_k": size}).to_pylist()
    if not rows:
        return [], []
    maps = _cached_maps(con, run, rows)
    images: dict[str, bytes] = {}
    for shard in sorted({r["shard"] for r in rows}):
        images.update(_read_images(st, run["dataset"], shard, {r["image_id"] for r in rows if r["shard"] == shard}))
    written, shown = [], []
    kinds = {"a_only": f"{method_a}-right-{method_b}-wrong", "b_only": f"{method_b}-right-{method_a}-wrong"}
    counters: dict[str, int] = {}
    for r in rows:
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
            heat, source = attention_grid(r["dino_topk_indices"], r["dino_topk_values"]), "topk"
        n = counters[r["kind"]] = counters.get(r["kind"], 0) + 1
        rel = f"{run_dir(run['run_id'])}/gallery/{kinds[r['kind']]}-{n:02d}-{slug(r['image_id'])}.png"
        st.write_bytes(rel, draw_gallery_image(img, r, heat, source))
        written.append(rel)
        shown.append({**r, "file": rel, "heat": source if heat is not None else "none"})
    return written, shown


# ---------------------------------------------------------------------- the report
def _run_row(con, run_id: str) -> dict[str, Any]:
    rows = catalog.run_query(con, "SELECT * FROM runs WHERE run_id = getvariable('run_id')", {"run_id": run_id}).to_pylist()
    if not rows:
        raise KeyError(f"no run record for run {run_id!r} (runs/run={run_id}/run.parquet)")
    return rows[0]


def write_report(
    root: str | Storage,
    run_id: str,
    *,
    previous_run_id: str | None = None,
    gallery_size: int = 4,
    storage_options: Mapping[str, Any] | None = None,
) -> ReportManifest:
    """Write the markdown report, plots and gallery of ``run_id`` under ``runs/run=<id>/``.

    ``previous_run_id``: the run to compare with; by default the latest earlier
    completed run of the same deployment, dataset and model (``runs.previous_run_id``).
    ``gallery_size``: images per gallery kind (ABS right / baseline wrong, and the reverse).
    """
    st = root if isinstance(root, Storage) else Storage(root, dict(storage_options or {}))
    con = catalog.connect(st)
    try:
        return _write_report(st, con, run_id, previous_run_id, gallery_size)
    finally:
        con.close()


def _write_report(st: Storage, con, run_id: str, previous_run_id: str | None, gallery_size: int) -> ReportManifest:
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
    if prev_id:
        pair = {"run_a": prev_id, "run_b": run_id}
        comparison = sorted(catalog.run_query(con, "compare_methods", pair).to_pylist(), key=lambda r: _method_key(r["method"]))
        class_changes = catalog.run_query(con, "compare_classes", {**pair, "top_k": 5}).to_pylist()
        flips = catalog.run_query(con, "compare_flips", pair).to_pylist()

    base = run_dir(run_id)
    plots = [f"{base}/methods.png", f"{base}/per_class_accuracy.png"]
    st.write_bytes(plots[0], plot_methods(accuracy, comparison, run_id, prev_id))
    st.write_bytes(plots[1], plot_per_class(per_class))
    gallery, shown = write_gallery(st, con, run, size=gallery_size) if gallery_size > 0 else ([], [])

    md = _markdown(run, prev_id, accuracy, extremes, confusions, errors, comparison, class_changes, flips, shown, base)
    report = f"{base}/report.md"
    st.write_bytes(report, md.encode())
    return ReportManifest(
        root=st.root, run_id=run_id, previous_run_id=prev_id, report=report, plots=plots, gallery=gallery,
        markdown=md, accuracy=accuracy, comparison=comparison,
        gallery_items=[{k: r.get(k) for k in ("image_id", "kind", "shard", "file", "heat", "note")} for r in shown],
    )


def _rel(path: str, base: str) -> str:
    return path[len(base) + 1 :] if path.startswith(base + "/") else path


def _markdown(run, prev_id, accuracy, extremes, confusions, errors, comparison, class_changes, flips, shown, base) -> str:
    out = [f"# Evaluation report: run `{run['run_id']}`\n"]
    facts = [
        ("deployment", run.get("deployment")), ("dataset", run.get("dataset")), ("model", run.get("model")),
        ("config", run.get("config")), ("status", run.get("status")), ("started", run.get("started_at")),
        ("ended", run.get("ended_at")), ("CLIP", f"{run.get('clip_model')} / {run.get('clip_pretrained')}"),
        ("DINO", f"{run.get('dino_model')} / {run.get('dino_pretrained')}"), ("descriptions", run.get("descriptions_hash")),
        ("shards computed by this run", f"{run.get('shards_computed')} of {run.get('shards_total')}"),
    ]
    out.append(md_table([{"k": k, "v": v} for k, v in facts], [("", "k"), ("", "v")]))
    out.append("All numbers below come from the SQL in `sql/` (`abs-eval sql <query>`), over the run's full prediction set "
               "(rows reused from an earlier run of the same config included).\n")

    out.append("## Accuracy\n")
    out.append(md_table(accuracy, [
        ("method", "method"), ("n", "n"), ("ok", "n_ok"), ("errors", "n_error"), ("correct", "correct"),
        ("accuracy", lambda r: _pct(r["accuracy"])), ("95% CI", _ci), ("errors counted wrong", lambda r: _pct(r["accuracy_all"])),
    ]))
    out.append("\n![accuracy by method](methods.png)\n")

    out.append("## Per-class accuracy: extremes\n")
    for method in sorted({r["method"] for r in extremes}, key=_method_key):
        rows = [r for r in extremes if r["method"] == method]
        out.append(f"**{method}**\n")
        out.append(md_table(rows, [
            ("", "extreme"), ("#", "position"), ("class", "class_name"), ("ok images", "n_ok"),
            ("accuracy", lambda r: _pct(r["accuracy"])), ("95% CI", _ci),
        ]))
    out.append("\n![per-class accuracy](per_class_accuracy.png)\n")

    out.append("## Most frequent confusions\n")
    shown_conf: list[dict[str, Any]] = []
    for method in sorted({r["method"] for r in confusions}, key=_method_key):
        shown_conf += [r for r in confusions if r["method"] == method][:5]  # the query orders by rank
    out.append("(up to 5 per method, most frequent first; equal counts share a rank)\n")
    out.append(md_table(shown_conf, [
        ("method", "method"), ("rank", "rank"), ("true class", "class_name"), ("predicted", "pred_name"),
        ("images", "n"), ("share of class", lambda r: _pct(r["share"])),
    ]))

    out.append("## Errors (images that could not be classified)\n")
    out.append(md_table(errors, [("status", "status"), ("images", "n_images"), ("example", "example_error")]))

    out.append("## Comparison with the previous run\n")
    if not prev_id:
        out.append(f"No earlier completed run of deployment `{run.get('deployment')}` on this dataset and model.\n")
    else:
        out.append(f"Previous run: `{prev_id}` (before) vs `{run['run_id']}` (this run). "
                   "fixed = wrong before, right now; broken = the reverse.\n")
        out.append(md_table(comparison, [
            ("method", "method"), ("before", lambda r: _pct(r["accuracy_a"])), ("now", lambda r: _pct(r["accuracy_b"])),
            ("delta", lambda r: _pp(r["delta"])), ("changed", "n_changed"), ("fixed", "n_fixed"), ("broken", "n_broken"),
        ]))
        out.append("\nLargest per-class changes (up to 5 per method; unchanged classes left out):\n")
        out.append(md_table([r for r in class_changes if r["delta"] != 0], [
            ("method", "method"), ("class", "class_name"), ("before", lambda r: _pct(r["accuracy_a"])),
            ("now", lambda r: _pct(r["accuracy_b"])), ("delta", lambda r: _pp(r["delta"])),
        ]))
        out.append(f"\nFlipped images: {len(flips)} (image x method); first 20:\n")
        out.append(md_table(flips[:20], [
            ("method", "method"), ("image", "image_id"), ("true", "class_name"), ("before", "pred_name_a"),
            ("now", "pred_name_b"), ("change", "change"),
        ]))

    out.append("## Gallery\n")
    if not shown:
        out.append("No image where `abs` and `clip` disagree on rightness (or one of them is missing).\n")
    for kind, title in (("a_only", "ABS right, CLIP wrong"), ("b_only", "CLIP right, ABS wrong")):
        rows = [r for r in shown if r["kind"] == kind]
        if not rows:
            continue
        out.append(f"### {title}\n")
        for r in rows:
            if r.get("file"):
                out.append(f"![{r['image_id']}]({_rel(r['file'], base)})\n")
            else:
                out.append(f"- `{r['image_id']}`: {r.get('note')}\n")
    return "\n".join(out)
