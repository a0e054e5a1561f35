"""Where the gallery's pictures lie: attention maps as D x D grids, the CLIP token grid and
input size of a run's model, and a feature window (CLIP grid cells) in image pixels.

Numbers only (no drawing, no reading): the stored rows keep crops in grid cells, and only
the model knows its grid, so :func:`run_grids` takes it from the run record (what the loaded
models had) and, for a record older than that, from the model itself (:func:`clip_grid_of`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np

from tasks.defaults import DINO_GRID as DEFAULT_DINO_GRID


def attention_grid(
    indices: Sequence[int] | None, values: Sequence[float] | None, grid: int | None = None
) -> np.ndarray | None:
    """The D x D map holding the top-K cells' attention (zero elsewhere); ``None`` without cells.

    D is ``grid`` when known, else 14 (a 224-pixel /16 DINO), grown when an index says so.
    """
    if not indices:
        return None
    idx = np.asarray(indices, dtype=np.int64)
    d = grid or DEFAULT_DINO_GRID
    if int(idx.max()) >= d * d:
        d = math.isqrt(int(idx.max())) + 1
    out: np.ndarray = np.zeros(d * d, dtype=np.float64)
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


def clip_grid_of(clip_model: str | None) -> tuple[int, int, str]:
    """(G, S, source): the CLIP token grid side and input size of ``clip_model``, for a run record
    older than ``model_geometry`` (:func:`run_grids` reads that first).

    Feature windows are stored in CLIP grid cells, and the grid covers the centre
    square of the image CLIP saw (short side resized to S, centre-cropped), so both
    are needed to draw a window in image pixels. For a model open_clip knows (its own
    configs and those abs_model ships), G and S are what the model itself has
    (:func:`_model_grid`, source ``"model config"``); else parsed from the name
    (``hf-hub:.../vit-16-384``, source ``"model name"``); else assumed 14 / 224
    (source ``"assumed"``).
    """
    name = (clip_model or "").strip()
    known = _model_grid(name) if name else None
    if known is not None:
        return known[0], known[1], "model config"
    nums = [int(t) for t in re.split(r"[-/_@]", name) if t.isdigit()]
    patches = [n for n in nums if n in (8, 14, 16, 32)]
    if patches:
        sizes = [n for n in nums if n >= 64]
        size = sizes[0] if sizes else 224
        return size // patches[0], size, "model name"
    return DEFAULT_DINO_GRID, 224, "assumed"


@cache
def _model_grid(name: str) -> tuple[int, int] | None:
    """(G, S) of an open_clip model as abs_model builds it, or None for a model it cannot build here.

    Why through :meth:`abs_model.CLIPBackbone.architecture` (the model without weights, on the
    meta device: nothing downloaded or allocated): its ``grid`` and ``norm.size`` are the very
    numbers a run records (``tasks.run.context.model_geometry``), so an old record's gallery is
    drawn with the geometry a new run would have written, not with a second reading of
    open_clip's JSON. Imports torch and open_clip (the report's explanation loads them anyway).
    Only names in open_clip's registry are built: another name (``hf-hub:...``) would be fetched.
    """
    try:
        import open_clip

        from abs_model import CLIPBackbone
        from abs_model.model_configs import register_clip_configs
    except ImportError:
        return None
    register_clip_configs()
    if name not in open_clip.list_models():
        return None
    try:
        clip = CLIPBackbone.architecture(name)
    except Exception:  # noqa: BLE001 - a tower ABS cannot split (ResNet, attention pooling) never ran: no geometry
        return None
    return int(clip.grid), int(clip.norm.size)


def feature_window_pixels(
    window: Sequence[int], width: int, height: int, grid: int, size: int
) -> tuple[float, float, float, float]:
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
