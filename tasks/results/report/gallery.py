"""The gallery: images one method got right and the other wrong, each drawn as two panels (the
image untouched; DINO's attention with ABS's crops), written under ``runs/run=<id>/gallery/``.

Nothing is recomputed to draw them: the crop boxes and DINO top-K cells are stored on the ``abs``
rows (the ``gallery`` query), the image bytes in the shard files, and full attention maps, when
the DINO cache holds one that agrees with the row (:func:`_consistent`), in ``cache/dino``.
The crops that decided ABS's prediction are found by rescoring these few images only (``explain``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from tasks.defaults import DINO_GRID as DEFAULT_DINO_GRID
from tasks.store import Storage
from tasks.store.paths import run_dir, slug

from .explain import explain_gallery
from .geometry import attention_grid, feature_window_pixels, full_attention, run_grids
from .plots import MIN_FONT_PT, _figure, _png
from .reads import _attention_maps, _gallery_rows, _read_images, _recorded_geometry

#: Gallery figure resolution (photos compress worse than line plots).
GALLERY_DPI = 90
#: Crops of each kind drawn bold in a gallery image (see draw_gallery_image).
EMPHASISED_CROPS = 3
RAW_BOX_COLOR = "#1f4eff"  # raw crop boxes: solid blue
FEATURE_WINDOW_COLOR = "#111111"  # feature-space windows: dashed black


def _crop_ranks(
    centres: Sequence[tuple[float, float]],
    boxes: Sequence[tuple[float, float, float, float]],
    cell_xy: Sequence[tuple[float, float]],
    cell_values: Sequence[float],
) -> list[float]:
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


def gallery_layout(width: int, height: int, panel: float = 3.6, max_height: float = 4.0) -> dict[str, float]:
    """Inches of the two-panel gallery figure: ``fig_w``, ``fig_h``, ``panel_w``, ``panel_h``
    (each panel shows the whole image at the same scale: the image, and the attention map
    with the crops, side by side), and ``top``/``bottom``, the room for the titles above and
    the legend and caption below."""
    aspect = height / max(width, 1)
    ph = min(panel * aspect, max_height)
    pw = ph / aspect
    # room for 10-pt text (MIN_FONT_PT): two title lines above the panel titles, legend and two caption lines below
    gap, side, top, bottom = 0.15, 0.05, 0.95, 0.85
    return {
        "fig_w": 2 * pw + gap + 2 * side,
        "fig_h": ph + top + bottom,
        "panel_w": pw,
        "panel_h": ph,
        "gap": gap,
        "side": side,
        "top": top,
        "bottom": bottom,
    }


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
    left_ax.set_title("image (untouched)", fontsize=MIN_FONT_PT)

    grey = np.asarray(img.convert("L"), dtype=np.float64)
    right_ax.imshow(
        grey, cmap="gray", vmin=-255, vmax=255 + 128, extent=(0, w, h, 0), interpolation="nearest"
    )  # dimmed
    d = heat.shape[0] if heat is not None else DEFAULT_DINO_GRID
    if heat is not None:
        if heat_source == "cache":
            lo, hi = float(heat.min()), float(heat.max())
            norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
        else:  # top-K cells only: the others are unknown, leave them uncoloured
            hi = float(heat.max()) or 1.0
            norm = np.ma.masked_where(heat <= 0, heat / hi)
        right_ax.imshow(
            norm,
            cmap="YlOrRd",
            vmin=0,
            vmax=1,
            alpha=0.75,
            extent=(0, w, h, 0),
            interpolation="bilinear" if heat_source == "cache" else "nearest",
        )
    heat_text = {"cache": "DINO attention (full map)", "topk": "DINO attention (top-K cells)"}.get(
        heat_source if heat is not None else "", "no DINO attention stored"
    )
    right_ax.set_title(f"{heat_text} + ABS crops", fontsize=MIN_FONT_PT)

    # Stored geometry is in the pixels the classifier saw (row width/height); scale if the decoded size differs.
    rw, rh = row.get("width") or w, row.get("height") or h
    sx, sy = w / rw, h / rh
    idx = list(row.get("dino_topk_indices") or [])
    vals = list(row.get("dino_topk_values") or [1.0] * len(idx))
    cells_px = [((i % d + 0.5) * rw / d, (i // d + 0.5) * rh / d) for i in idx]  # in row pixels

    raw = [(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in (row.get("raw_boxes") or [])]
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
            right_ax.add_patch(
                Rectangle(
                    (x0 * sx, y0 * sy),
                    (x1 - x0) * sx,
                    (y1 - y0) * sy,
                    fill=False,
                    edgecolor=color,
                    linestyle=style,
                    linewidth=lw,
                    alpha=alpha,
                    zorder=4 if i in bold else 3,
                )
            )

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
            right_ax.text(
                boxes[i][0] * sx + 1,
                boxes[i][1] * sy + 1,
                str(rank),
                color="white",
                fontsize=MIN_FONT_PT,
                fontweight="bold",
                ha="left",
                va="top",
                zorder=5,
                clip_on=True,
                bbox={"boxstyle": "square,pad=0.15", "facecolor": color, "edgecolor": "none", "alpha": 0.9},
            )
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
        fontsize=MIN_FONT_PT,
        y=1 - 0.05 / fh,
        va="top",
    )
    handles = [
        Line2D([], [], color=RAW_BOX_COLOR, linestyle="-", linewidth=1.5, label=f"raw crop box ({len(raw)})"),
        Line2D(
            [],
            [],
            color=FEATURE_WINDOW_COLOR,
            linestyle="--",
            linewidth=1.5,
            label=f"feature window, CLIP {g}x{g} grid ({len(wins)})",
        ),
    ]
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, (lay["bottom"] - 0.03) / fh),
        ncol=2,
        fontsize=MIN_FONT_PT,
        frameon=False,
        handlelength=2.0,
        columnspacing=1.0,
        borderaxespad=0.0,
    )
    if ranked:
        caption = (
            f"bold, numbered {'1' if len(ranked) == 1 else f'1-{len(ranked)}'}: the crops adding most to ABS's logit of "
            f"{(deciding or {}).get('class_name')}\n(recomputed with the run's models); faint: all the other crops"
        )
    elif bold_raw or bold_feat:
        caption = (
            f"bold: the {emphasis} crops of each kind centred on the highest-attention DINO cells\n"
            "(per-crop matching weights are not stored); faint: all the other crops"
        )
    else:
        caption = "no DINO top-K cells stored: all crops drawn alike"
    fig.text(0.5, 0.02 / fh, caption, ha="center", va="bottom", fontsize=MIN_FONT_PT)
    return _png(fig)


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
    cached = _attention_maps(con, run["dataset"], [r["image_id"] for r in rows])
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
    st: Storage,
    con,
    run: Mapping[str, Any],
    *,
    size: int = 4,
    method_a: str = "abs",
    method_b: str = "clip",
    explain: bool = True,
) -> tuple[list[str], list[dict[str, Any]], str | None]:
    """Draw the gallery of one run; returns (written paths, the query rows with a 'file' key, and
    why no image's deciding crops and descriptions are shown, or None).

    ``explain``: rescore the gallery images with the run's models to name the crops and
    descriptions that decided ABS's prediction (:func:`explain_gallery`); each row then has
    ``deciding`` (the explanation) or ``deciding_note`` (why not for this image).
    """
    rows = _gallery_rows(con, run["run_id"], method_a, method_b, size)
    if not rows:
        return [], [], None
    maps = _cached_maps(con, run, rows)
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
        heat: np.ndarray | None
        if r["image_id"] in maps:
            heat, source = maps[r["image_id"]], "cache"
        else:
            heat, source = attention_grid(r["dino_topk_indices"], r["dino_topk_values"], dino_grid), "topk"
        n = counters[r["kind"]] = counters.get(r["kind"], 0) + 1
        rel = f"{run_dir(run['run_id'])}/gallery/{kinds[r['kind']]}-{n:02d}-{slug(r['image_id'])}.png"
        st.write_bytes(rel, draw_gallery_image(img, r, heat, source, clip_grid=clip_grid, deciding=r["deciding"]))
        written.append(rel)
        shown.append({**r, "file": rel, "heat": source if heat is not None else "none"})
    return written, shown, explain_note
