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
    """The random choices for one image (all int64 tensors of length N)."""

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


def raw_boxes(cells: Tensor, widths: Tensor, heights: Tensor, width: int, height: int, dino_grid: int) -> Tensor:
    """Pixel boxes ``[N, 4]`` as (x0, y0, x1, y1), centred on DINO cells, clipped to the image.

    Cell (r, c) = (idx // D, idx % D) of the D x D DINO grid; its centre is
    ((c + 0.5) W / D, (r + 0.5) H / D). The box is clipped, not shifted back inside,
    and rounded to whole pixels as PIL's ``crop`` does (at least one pixel kept).
    """
    r = torch.div(cells, dino_grid, rounding_mode="floor").double()
    c = (cells % dino_grid).double()
    cx = (c + 0.5) * width / dino_grid
    cy = (r + 0.5) * height / dino_grid
    x0 = torch.round(torch.clamp(cx - widths.double() / 2, min=0))
    x1 = torch.round(torch.clamp(cx + widths.double() / 2, max=width))
    y0 = torch.round(torch.clamp(cy - heights.double() / 2, min=0))
    y1 = torch.round(torch.clamp(cy + heights.double() / 2, max=height))
    x0 = torch.clamp(x0, max=width - 1)
    y0 = torch.clamp(y0, max=height - 1)
    x1 = torch.maximum(x1, x0 + 1)
    y1 = torch.maximum(y1, y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1).long()


def feature_windows(cells: Tensor, sides: Tensor, grid: int, dino_grid: int) -> Tensor:
    """Token windows ``[N, 4]`` as (r0, r1, c0, c1), half-open, on the CLIP grid G.

    DINO cell (r, c) maps to (floor(r G / D), floor(c G / D)); the window spans
    [r' - s//2, r' + s//2 + 1) clipped to [0, G), likewise for columns.
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
    return torch.stack([r0, r1, c0, c1], dim=1).long()
