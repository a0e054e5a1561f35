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

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .resample import aa_matrix, apply_separable, resize_crop_geometry



def to_tensor_image(img) -> Tensor:
    """PIL image / uint8 ``[H, W, 3]`` array / ``[3, H, W]`` tensor -> float32 ``[3, H, W]`` in [0, 1].

    Any PIL mode (L, P with transparency, CMYK, I;16, RGBA) is converted to RGB
    here, at model input, as the sharding step leaves images as they were encoded.
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
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
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
    if img.dtype == torch.uint8:
        return img.float().div(255.0)
    return img.float()


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
