"""Where ABS looks: seeded draws of crop centres and sizes, per image.

Why one generator per image, seeded by (seed, image id): a shard must give the
same crops whether it runs first, last, alone, in another batch, after a crash or
on another worker. Nothing here reads global RNG state or batch position.

Draw order for one image (fixed; changing it changes every prediction):
  1. N raw-branch cells from softmax(top-K values / tau_sample), with replacement;
  2. N feature-branch cells, an independent draw from the same distribution;
  3. N raw crop widths, uniform integers in [floor(alpha W), floor(beta W)];
  4. N raw crop heights, uniform integers in [floor(alpha H), floor(beta H)];
  5. N feature window sides, uniform integers in [floor(alpha G), floor(beta G)]
     (both bounds inclusive; when the two bounds are equal, [b, b + 1]).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import ABSConfig


def image_generator(seed: int, image_id: str | int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, image_id)``."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{image_id}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def _randint_inclusive(lo: int, hi: int, n: int, g: torch.Generator) -> Tensor:
    return torch.randint(lo, hi + 1, (n,), generator=g)


@dataclass
class CropDraws:
    """The random choices for one image (int64 tensors of length N), or ``[B, N]`` for a batch."""

    raw_cells: Tensor
    feature_cells: Tensor
    raw_widths: Tensor
    raw_heights: Tensor
    feature_sides: Tensor


def draw_crops(
    topk_indices: Tensor, topk_values: Tensor, width: int, height: int, grid: int, cfg: ABSConfig, g: torch.Generator
) -> CropDraws:
    """Draw the centres and sizes of one image's crops (see the module docstring)."""
    n = cfg.n_crops
    p = torch.softmax(topk_values.double() / cfg.tau_sample, dim=0)
    raw = topk_indices[torch.multinomial(p, n, replacement=True, generator=g)]
    feat = topk_indices[torch.multinomial(p, n, replacement=True, generator=g)]
    w_lo, w_hi = math.floor(cfg.alpha * width), math.floor(cfg.beta * width)
    h_lo, h_hi = math.floor(cfg.alpha * height), math.floor(cfg.beta * height)
    widths = _randint_inclusive(w_lo, w_hi, n, g).clamp(min=1)
    heights = _randint_inclusive(h_lo, h_hi, n, g).clamp(min=1)
    s_lo, s_hi = math.floor(cfg.alpha * grid), math.floor(cfg.beta * grid)
    if s_hi == s_lo:
        s_hi = s_lo + 1
    sides = _randint_inclusive(s_lo, s_hi, n, g).clamp(min=1)
    return CropDraws(raw.long(), feat.long(), widths, heights, sides)


def draw_crops_batch(
    topk_indices: Tensor,
    topk_values: Tensor,
    widths: Sequence[int],
    heights: Sequence[int],
    grid: int,
    cfg: ABSConfig,
    image_ids: Sequence[str | int],
) -> CropDraws:
    """``draw_crops`` for a batch: every field ``[B, N]``, row b equal to ``draw_crops`` of image b.

    Why: one image's draws must come from its own generator in the documented
    order (so they are the same in any batch), but everything around the draws
    (softmax, index lookups, clamps) runs once for the batch instead of once per
    image. Per image only the five generator calls remain.
    """
    n = cfg.n_crops
    b = topk_indices.shape[0]
    # Row-wise softmax over the last dim: each row is computed on its own, so the
    # rows equal the per-image ``softmax(values / tau_sample, dim=0)`` (tested).
    p = torch.softmax(topk_values.double() / cfg.tau_sample, dim=-1)
    s_lo, s_hi = math.floor(cfg.alpha * grid), math.floor(cfg.beta * grid)
    if s_hi == s_lo:
        s_hi = s_lo + 1
    raw_i, feat_i, wd, ht, sd = [], [], [], [], []
    for k in range(b):
        g = image_generator(cfg.seed, image_ids[k])
        pk = p[k]
        raw_i.append(torch.multinomial(pk, n, replacement=True, generator=g))
        feat_i.append(torch.multinomial(pk, n, replacement=True, generator=g))
        w, h = widths[k], heights[k]
        wd.append(_randint_inclusive(math.floor(cfg.alpha * w), math.floor(cfg.beta * w), n, g))
        ht.append(_randint_inclusive(math.floor(cfg.alpha * h), math.floor(cfg.beta * h), n, g))
        sd.append(_randint_inclusive(s_lo, s_hi, n, g))
    idx = topk_indices.long()
    if b == 0:
        empty = torch.zeros(0, n, dtype=torch.long)
        return CropDraws(empty, empty, empty, empty, empty)
    return CropDraws(
        idx.gather(1, torch.stack(raw_i)),
        idx.gather(1, torch.stack(feat_i)),
        torch.stack(wd).clamp_(min=1),
        torch.stack(ht).clamp_(min=1),
        torch.stack(sd).clamp_(min=1),
    )


def raw_boxes(
    cells: Tensor, widths: Tensor, heights: Tensor, width: int | Tensor, height: int | Tensor, dino_grid: int
) -> Tensor:
    """Pixel boxes ``[..., N, 4]`` as (x0, y0, x1, y1), centred on DINO cells, clipped to the image.

    Cell (r, c) = (idx // D, idx % D) of the D x D DINO grid; its centre is
    ((c + 0.5) W / D, (r + 0.5) H / D). The box is clipped, not shifted back inside,
    and rounded to whole pixels as PIL's ``crop`` does (at least one pixel kept).

    ``cells`` / ``widths`` / ``heights`` are ``[N]`` for one image or ``[B, N]`` for a
    batch; ``width`` / ``height`` are ints or tensors broadcasting against them
    (e.g. ``[B, 1]``). The arithmetic is float64 either way, so a batch gives the
    same boxes as its images one at a time.
    """
    W = width.double() if isinstance(width, Tensor) else float(width)
    H = height.double() if isinstance(height, Tensor) else float(height)
    r = torch.div(cells, dino_grid, rounding_mode="floor").double()
    c = (cells % dino_grid).double()
    cx = (c + 0.5) * W / dino_grid
    cy = (r + 0.5) * H / dino_grid
    hw = widths.double() / 2
    hh = heights.double() / 2
    x0 = torch.round(torch.clamp(cx - hw, min=0))
    y0 = torch.round(torch.clamp(cy - hh, min=0))
    if isinstance(W, Tensor) or isinstance(H, Tensor):
        x1 = torch.round(torch.minimum(cx + hw, torch.as_tensor(W, dtype=torch.float64)))
        y1 = torch.round(torch.minimum(cy + hh, torch.as_tensor(H, dtype=torch.float64)))
        x0 = torch.minimum(x0, torch.as_tensor(W - 1, dtype=torch.float64))
        y0 = torch.minimum(y0, torch.as_tensor(H - 1, dtype=torch.float64))
    else:
        x1 = torch.round(torch.clamp(cx + hw, max=W))
        y1 = torch.round(torch.clamp(cy + hh, max=H))
        x0 = torch.clamp(x0, max=W - 1)
        y0 = torch.clamp(y0, max=H - 1)
    x1 = torch.maximum(x1, x0 + 1)
    y1 = torch.maximum(y1, y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=-1).long()


def feature_windows(cells: Tensor, sides: Tensor, grid: int, dino_grid: int) -> Tensor:
    """Token windows ``[..., N, 4]`` as (r0, r1, c0, c1), half-open, on the CLIP grid G.

    DINO cell (r, c) maps to (floor(r G / D), floor(c G / D)); the window spans
    [r' - s//2, r' + s//2 + 1) clipped to [0, G), likewise for columns. Works on
    ``[N]`` (one image) or ``[B, N]`` (a batch) alike.
    """
    r = torch.div(cells, dino_grid, rounding_mode="floor")
    c = cells % dino_grid
    rr = torch.div(r * grid, dino_grid, rounding_mode="floor")
    cc = torch.div(c * grid, dino_grid, rounding_mode="floor")
    half = torch.div(sides, 2, rounding_mode="floor")
    r0 = torch.clamp(rr - half, min=0)
    r1 = torch.clamp(rr + half + 1, max=grid)
    c0 = torch.clamp(cc - half, min=0)
    c1 = torch.clamp(cc + half + 1, max=grid)
    return torch.stack([r0, r1, c0, c1], dim=-1).long()
