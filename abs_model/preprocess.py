"""Model inputs from decoded images: CLIP views of crops, the DINO view.

Why not torchvision transforms: they run per crop. Here all crops of one image
are produced by two batched matmuls (see ``resample``) with the same arithmetic as
the standard pipelines:

* CLIP view of a box: crop, shorter side to S (antialiased bicubic), centre crop S,
  CLIP mean/std -- open_clip's default ``preprocess`` applied to ``img.crop(box)``.
* DINO view: the whole image resized to S x S (antialiased bilinear, no crop),
  ImageNet mean/std -- as the authors' DINO image processor does.

Pixels are float in [0, 1]; like PIL on 8-bit images, each resampling pass is
clamped and rounded to 8 bits, horizontal pass first. The resized pixels equal
Pillow <= 12's ``Image.resize`` (``reducing_gap=None``) bit for bit -- the
authors' environment -- for every image and crop shape (tested against an
independent reimplementation of Pillow's fixed-point resampling). Pillow 13
picks the pass order by cost and resizes vertically first for some shapes (tall
images, portrait crops being downscaled); with Pillow 13, ``img.resize`` then
differs from these views by a few levels (1-4 on natural images) in about one
value in four. The order here stays horizontal-first whatever Pillow is installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .resample import (
    _pil_levels,
    aa_matrices,
    aa_matrix,
    aa_taps,
    apply_separable,
    resize_crop_geometry,
)


def image_tensor(img) -> Tensor:
    """PIL image / ``[H, W, 3]`` array / ``[3, H, W]`` tensor -> ``[3, H, W]`` tensor, values as stored.

    8-bit images stay uint8 (a quarter of the bytes to move to a device; the float
    conversion can happen there); other arrays and tensors keep their dtype. Any
    PIL mode (L, P with transparency, CMYK, I;16, RGBA) is converted to RGB here,
    at model input, as the sharding step leaves images as they were encoded.
    ``to_tensor_image`` = this, then :func:`to_float_image`.
    """
    if isinstance(img, Image.Image):
        if img.mode == "I;16" or img.mode.startswith("I"):
            arr = np.asarray(img, dtype=np.float64)
            hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
            img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
        elif img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)
    if isinstance(img, np.ndarray):
        img = torch.from_numpy(np.ascontiguousarray(img))
        if img.dim() == 3 and img.shape[-1] in (1, 3):
            img = img.permute(2, 0, 1)
    if not isinstance(img, Tensor):
        raise TypeError(f"expected a PIL image, numpy array or tensor, got {type(img).__name__}")
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [3, H, W], got shape {tuple(img.shape)}")
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img


def to_float_image(x: Tensor) -> Tensor:
    """``image_tensor`` output -> float32 in [0, 1] (uint8 / 255; other dtypes as float)."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def to_tensor_image(img) -> Tensor:
    """PIL image / uint8 ``[H, W, 3]`` array / ``[3, H, W]`` tensor -> float32 ``[3, H, W]`` in [0, 1].

    Any PIL mode (L, P with transparency, CMYK, I;16, RGBA) is converted to RGB here,
    at model input, as the sharding step leaves images as they were encoded.
    """
    return to_float_image(image_tensor(img))


def limit_size(x: Tensor, max_side: int) -> Tensor:
    """Downscale ``[3, H, W]`` (antialiased bicubic) so its longer side is ``<= max_side``."""
    _, h, w = x.shape
    if max_side <= 0 or max(h, w) <= max_side:
        return x
    f = max_side / max(h, w)
    return resize_whole(x, max(1, round(h * f)), max(1, round(w * f)), "bicubic")


def resize_whole(x: Tensor, nh: int, nw: int, kernel: str) -> Tensor:
    """The whole ``[3, H, W]`` image resized to ``[3, nh, nw]`` as Pillow <= 12's ``resize`` does.

    Horizontal pass first (Pillow 13's ``resize`` may run the vertical pass first
    and differ by a few levels; see the module docstring).
    """
    _, h, w = x.shape
    zero = torch.zeros(1, dtype=torch.long, device=x.device)
    ry = aa_matrix(zero, zero + h, zero + nh, zero, nh, h, kernel, pil_fixed=True)
    rx = aa_matrix(zero, zero + w, zero + nw, zero, nw, w, kernel, pil_fixed=True)
    return apply_separable(x, ry, rx, pil_rounding=True)[0]


def normalize(x: Tensor, mean, std) -> Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def _norm_constants(mean, std, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    key = (tuple(float(v) for v in mean), tuple(float(v) for v in std), dtype, str(device))
    hit = _NORM_CACHE.get(key)
    if hit is None:
        hit = _NORM_CACHE[key] = (
            torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1),
            torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1),
        )
    return hit


_NORM_CACHE: dict = {}


def clip_views_batch(
    xs: Sequence[Tensor],
    groups: Sequence[tuple[int, Tensor, int]],
    size: int,
    mean,
    std,
    n_out: int | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """CLIP views of many boxes of many images at once: ``[n_out, 3, size, size]``.

    ``groups``: ``(image index into xs, boxes [n, 4] (x0, y0, x1, y1) on the CPU,
    first output row)``. A group's views equal ``clip_views(xs[image], boxes, ...)``
    bit for bit and land in rows ``[first, first + n)``. Why groups: one
    ``clip_views`` call shares one tap count between its boxes (see
    ``resample.aa_matrices``), so a group stands for one such call.

    Why: the crop geometry and the resampling weights of every box of the batch
    are computed together (one pass per distinct tap count, no loop over boxes),
    and each image's boxes are resampled by one pair of matrix products; the
    views are written straight into the output, normalised once at the end.
    Nothing here waits on the device. ``out`` (optional): a buffer of that shape
    and the images' dtype to write into.
    """
    dev = xs[0].device
    dtype = xs[0].dtype
    order = sorted(range(len(groups)), key=lambda k: groups[k][0])  # each image's rows together
    boxes = torch.cat([groups[k][1].to("cpu", torch.int64).reshape(-1, 4) for k in order])
    sizes = [len(groups[k][1]) for k in order]
    gid = torch.repeat_interleave(torch.arange(len(order)), torch.tensor(sizes, dtype=torch.long))
    if n_out is None:
        n_out = max((g[2] + len(g[1]) for g in groups), default=0)
    if out is None:
        out = torch.empty(n_out, 3, size, size, dtype=dtype, device=dev)
    elif tuple(out.shape) != (n_out, 3, size, size) or out.dtype != dtype or out.device != dev:
        raise ValueError(f"out must be [{n_out}, 3, {size}, {size}] {dtype} on {dev}, got {tuple(out.shape)} {out.dtype}")
    if boxes.shape[0] == 0:
        return out
    x0, y0, x1, y1 = boxes.unbind(1)
    bh, bw = y1 - y0, x1 - x0
    new_h, new_w, top, left = resize_crop_geometry(bh, bw, size)

    def call_taps(length: Tensor, resized: Tensor) -> Tensor:  # per row: its group's (one call's) tap count
        t = aa_taps(length, resized, "bicubic")
        per = torch.zeros(len(order), dtype=torch.long).scatter_reduce_(0, gid, t, "amax", include_self=False)
        return per[gid]

    # one block of rows per image (its groups are adjacent in ``order``)
    img_rows: list[tuple[int, int, int]] = []  # (image, first group in order, end group)
    k = 0
    while k < len(order):
        e = k
        while e < len(order) and groups[order[e]][0] == groups[order[k]][0]:
            e += 1
        img_rows.append((groups[order[k]][0], k, e))
        k = e
    counts = [sum(sizes[k:e]) for _, k, e in img_rows]
    ry = aa_matrices(y0, bh, new_h, top, size, [(c, int(xs[b].shape[1])) for c, (b, _, _) in zip(counts, img_rows)],
                     "bicubic", True, call_taps(bh, new_h), dev)
    rx = aa_matrices(x0, bw, new_w, left, size, [(c, int(xs[b].shape[2])) for c, (b, _, _) in zip(counts, img_rows)],
                     "bicubic", True, call_taps(bw, new_w), dev)
    for j, (b, k, e) in enumerate(img_rows):
        _resample_views(out, xs[b], ry[j], rx[j], [(groups[order[q]][2], sizes[q]) for q in range(k, e)])
    _release(ry, rx)
    m, s = _norm_constants(mean, std, dtype, dev)
    return _normalize_views(out, m, s)


def _resample_views(out: Tensor, x: Tensor, ry: Tensor, rx: Tensor, dest: Sequence[tuple[int, int]]) -> None:
    """All views of one image: the two resampling products, then the stores into ``out``
    (the large temporaries are released here, with the arithmetic they belong to)."""
    levels = _pil_levels(x.unsqueeze(0), ry, rx)
    _store_views(out, levels, dest)
    del levels


def _release(*buffers: list) -> None:
    """Drop the dense resampling operands now (one large buffer each), not at some later line."""
    for b in buffers:
        b.clear()


def _store_views(out: Tensor, levels: Tensor, dest: Sequence[tuple[int, int]]) -> None:
    """``levels / 255`` of consecutive groups into their output rows (one rounding to ``out``'s dtype,
    as ``_pil_separable(...).to(dtype)``)."""
    r = 0
    for first, n in dest:
        torch.mul(levels[r : r + n], 1.0 / 255.0, out=out[first : first + n])
        r += n


def _normalize_views(out: Tensor, m: Tensor, s: Tensor) -> Tensor:
    """``(x - mean) / std`` in place (the same operations as :func:`normalize`)."""
    return out.sub_(m).div_(s)


def clip_views(x: Tensor, boxes: Tensor, size: int, mean, std) -> Tensor:
    """CLIP inputs ``[N, 3, size, size]`` for boxes ``[N, 4]`` (x0, y0, x1, y1) of ``x [3, H, W]``.

    Each view equals open_clip's ``preprocess(img.crop(box))`` under Pillow <= 12
    (horizontal-first resize); see the module docstring for Pillow 13.
    """
    _, h, w = x.shape
    boxes = boxes.to(x.device)
    x0, y0, x1, y1 = boxes.unbind(1)
    bh, bw = y1 - y0, x1 - x0
    new_h, new_w, top, left = resize_crop_geometry(bh, bw, size)
    ry = aa_matrix(y0, bh, new_h, top, size, h, "bicubic", pil_fixed=True)
    rx = aa_matrix(x0, bw, new_w, left, size, w, "bicubic", pil_fixed=True)
    return normalize(apply_separable(x, ry, rx, pil_rounding=True), mean, std)


def full_box(x: Tensor) -> Tensor:
    """The box covering the whole image, ``[1, 4]``."""
    _, h, w = x.shape
    return torch.tensor([[0, 0, w, h]], dtype=torch.long, device=x.device)


def dino_view(x: Tensor, size: int, mean, std) -> Tensor:
    """DINO input ``[3, size, size]``: the whole image resized without cropping (bilinear,
    horizontal pass first as in Pillow <= 12)."""
    return normalize(resize_whole(x, size, size, "bilinear"), mean, std)
