"""Model inputs from decoded images: CLIP views of crops, the DINO view.

Why not torchvision transforms: they run per crop. Here the crops of a batch are
produced by a few pairs of batched matmuls (see ``resample``), each crop's over its
own window of the image only (so the cost follows the crop, not the image), with
the same arithmetic as the standard pipelines:

* CLIP view of a box: crop, shorter side to S (antialiased bicubic), centre crop S,
  CLIP mean/std -- open_clip's default ``preprocess`` applied to ``img.crop(box)``.
* DINO view: the whole image resized to S x S (antialiased bilinear, no crop),
  ImageNet mean/std -- as the authors' DINO image processor does.

Whole-image resizes (``limit_size``, the DINO view) use the same windows: a whole
image is a crop whose box is the image (``resize_whole_batch``).

Pixels are float in [0, 1], or uint8 levels (``model_image``: the same views bit
for bit, a quarter of the memory); like PIL on 8-bit images, each resampling pass is
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
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import resample_cpu
from .resample import (
    _pil_levels,
    aa_matrices,
    aa_matrix,
    aa_spans,
    aa_taps,
    aa_window_matrices,
    apply_separable,
    pil_window_levels,
    resize_crop_geometry,
    split_levels_dtype,
    to_device,
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
        arr = np.asarray(img, dtype=np.uint8)  # [H, W, 3], read-only
        # one writable copy, already [3, H, W] and contiguous (``prepare_image`` copies no more)
        return torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C"))
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


def model_image(img) -> Tensor:
    """An image as the resampling takes it: ``image_tensor``, 8-bit images left as uint8 (their
    levels, a quarter of float32's memory: 36 MB for a 4000x3000 photo, not 144 MB), any other
    dtype as float32 (``to_float_image``). The views of a uint8 image equal those of its
    ``to_float_image`` bit for bit (``_level_source``, ``resample_cpu.transposed_levels``)."""
    x = image_tensor(img)
    return x if x.dtype == torch.uint8 else to_float_image(x)


def _view_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the views made from ``x``: float32 for 8-bit levels, else ``x``'s."""
    return torch.float32 if x.dtype == torch.uint8 else x.dtype


def _float_levels(x: Tensor) -> Tensor:
    """``x`` as the dense references take it (a uint8 image as ``to_float_image``; floats as they are)."""
    return to_float_image(x) if x.dtype == torch.uint8 else x


def limit_size(x: Tensor, max_side: int) -> Tensor:
    """Downscale ``[3, H, W]`` (antialiased bicubic) so its longer side is ``<= max_side``; ``max_side``
    0 (or ``None``): no limit, ``x`` itself. A downscaled uint8 image comes back as float32."""
    _, h, w = x.shape
    if not max_side or max_side <= 0 or max(h, w) <= max_side:
        return x
    f = max_side / max(h, w)
    return resize_whole(x, max(1, round(h * f)), max(1, round(w * f)), "bicubic")


def resize_whole(x: Tensor, nh: int, nw: int, kernel: str) -> Tensor:
    """The whole ``[3, H, W]`` image resized to ``[3, nh, nw]`` as Pillow <= 12's ``resize`` does.

    Horizontal pass first (Pillow 13's ``resize`` may run the vertical pass first
    and differ by a few levels; see the module docstring). Banded: see
    :func:`resize_whole_batch`; equals :func:`resize_whole_dense` bit for bit.
    """
    return resize_whole_batch([x], nh, nw, kernel)[0]


def resize_whole_dense(x: Tensor, nh: int, nw: int, kernel: str) -> Tensor:
    """``resize_whole`` with dense operands, the previous implementation: ``[nh, H]`` and
    ``[nw, W]`` weights and two products over the whole image per output. Kept as the
    reference the banded path is tested and measured against (``benchmarks/bench_whole.py``)."""
    x = _float_levels(x)
    _, h, w = x.shape
    zero = torch.zeros(1, dtype=torch.long, device=x.device)
    ry = aa_matrix(zero, zero + h, zero + nh, zero, nh, h, kernel, pil_fixed=True)
    rx = aa_matrix(zero, zero + w, zero + nw, zero, nw, w, kernel, pil_fixed=True)
    return apply_separable(x, ry, rx, pil_rounding=True)[0]


# Outputs per band of a whole-image resize (``resize_whole_batch``): each band reads about
# ``band * scale + filter support`` samples per axis instead of the whole side.
_WHOLE_BAND = 16


def resize_whole_batch(xs: Sequence[Tensor], nh: int, nw: int, kernel: str, out: Tensor | None = None) -> Tensor:
    """``resize_whole(xs[b], nh, nw, kernel)`` of every image, stacked: ``[B, 3, nh, nw]`` in the
    images' dtype (``out``: optional buffer of that shape to write into).

    A whole image is a crop whose box is the image: the same windowed machinery as the
    CLIP views (``aa_spans``, ``aa_window_matrices``, ``pil_window_levels``), with bands of
    ``_WHOLE_BAND`` outputs per axis (the output sides padded up to whole bands; padded
    outputs have no taps, weight 0, and are dropped), so each output band multiplies
    only the samples its taps reach. Images of any sizes share calls (windows padded
    with weight-0 samples, calls of similar sizes as ``_window_calls`` groups them). Each
    image keeps its own tap count (that of its dense ``aa_matrix`` call), so the weights
    are the dense ones; the products are exact integers in float64, so the result
    equals :func:`resize_whole_dense` bit for bit.
    """
    b = len(xs)
    if b == 0:
        raise ValueError("resize_whole_batch needs at least one image")
    dev, dtype = xs[0].device, _view_dtype(xs[0])
    if out is None:
        out = torch.empty(b, 3, nh, nw, dtype=dtype, device=dev)
    c = int(xs[0].shape[0])
    hw = torch.tensor([[int(x.shape[1]), int(x.shape[2])] for x in xs], dtype=torch.long)
    hh, ww = hw.unbind(1)
    zero = torch.zeros(b, dtype=torch.long)
    if nh == nw and _use_cpu_kernels(out):  # each image with its own tap count, as below
        rh, rw = torch.full_like(hh, nh), torch.full_like(ww, nw)
        idx = torch.arange(b)
        _cpu_resample(
            xs,
            list(range(b)),
            idx,
            idx,
            (zero, ww, rw, zero, aa_taps(ww, rw, kernel)),
            (zero, hh, rh, zero, aa_taps(hh, rh, kernel)),
            nh,
            kernel,
            out,
        )
        return out
    bands = []
    for n in (nh, nw):  # (band, parts, padded side)
        band = min(n, _WHOLE_BAND)
        parts = -(-n // band)
        bands.append((parts, parts * band))
    (py, oh), (px, ow) = bands
    rh, rw = torch.full_like(hh, nh), torch.full_like(ww, nw)
    ylo, yhi = aa_spans(zero, hh, rh, zero, oh, hh, kernel, py)
    xlo, xhi = aa_spans(zero, ww, rw, zero, ow, ww, kernel, px)
    r0 = ylo.amin(1)
    ly = yhi.amax(1) - r0
    wx, wy = (xhi - xlo).amax(1), (yhi - ylo).amax(1)
    calls, pad = _window_calls(ly, wx, wy, px * c, dev)
    perm = torch.cat(calls)
    sizes = [len(q) for q in calls]
    kx = aa_window_matrices(
        zero[perm],
        ww[perm],
        rw[perm],
        zero[perm],
        ow,
        [(n, p[1]) for n, p in zip(sizes, pad)],
        ww[perm],
        xlo[perm],
        kernel,
        True,
        aa_taps(ww, rw, kernel)[perm],
        dev,
    )
    ky = aa_window_matrices(
        zero[perm],
        hh[perm],
        rh[perm],
        zero[perm],
        oh,
        [(n, p[2]) for n, p in zip(sizes, pad)],
        hh[perm],
        ylo[perm],
        kernel,
        True,
        aa_taps(hh, rh, kernel)[perm],
        dev,
    )
    # per image: the ``geo`` rows of ``_window_starts`` / ``_window_rows``, with the flat index of
    # (channel 0, row r0) in its call's levels; each call converts only its own images to levels
    # (a few MB on a CPU: they stay in cache, no batch-sized float64 copy)
    geo = torch.cat(
        [torch.stack([r0 * ww, hh - 1 - r0, ww, hh * ww, torch.arange(b)], 1), xlo, ylo - r0.view(-1, 1)], 1
    )
    for q, (cly, cwx, cwy) in zip(calls, pad):
        src, base = _level_source(xs, q.tolist(), cwx)
        g = geo[q]
        g[:, 0] += base[q]
        g = to_device(g, dev)
        starts = _window_starts(g, px, cly, c)
        rows = _window_rows(g[:, 5 + px :], cly, cwy)
        levels = pil_window_levels(src, starts, kx.pop(0), ky.pop(0), rows)
        del starts, rows, src
        _store_views(out, levels[:, :, :nh, :nw], g[:, 4])
        del levels
    return out


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
    and the crops are resampled by a pair of batched matrix products per call of
    ``resample.pil_window_levels`` (a handful per batch: crops of similar window
    sizes together, any image). Each crop's products cover only its window --
    the rows and columns its taps reach, in ``_PARTS`` bands of outputs per
    axis -- so the arithmetic grows with the crop (and the filter support),
    not with the image: exact, as the dense products outside the window are
    integer zeros (see ``pil_window_levels``). The views are written straight
    into the output, normalised once at the end. Nothing here waits on the
    device. ``out`` (optional): a buffer of that shape and the images' dtype to
    write into.
    """
    crops = _batch_crops(xs, groups, size, n_out, out)
    out = crops.out
    if crops.n == 0:
        return out
    dev = out.device
    if _use_cpu_kernels(out):
        _cpu_views(xs, crops, size)
        m, s = _norm_constants(mean, std, out.dtype, dev)
        return _normalize_views(out, m, s)
    x0, y0, bh, bw, new_h, new_w, top, left = crops.geometry
    c = int(xs[crops.used[0]].shape[0])
    hh, ww = crops.hw.unbind(1)
    # windows: per crop and band of outputs, the samples its taps reach (``aa_spans``)
    px, py = (max(d for d in range(1, min(k, max(1, size // _MIN_BAND)) + 1) if size % d == 0) for k in _PARTS)
    ylo, yhi = aa_spans(y0, bh, new_h, top, size, hh, "bicubic", py)
    xlo, xhi = aa_spans(x0, bw, new_w, left, size, ww, "bicubic", px)
    r0 = ylo.amin(1)  # first row of the horizontal pass
    ly = yhi.amax(1) - r0  # its rows
    wx, wy = (xhi - xlo).amax(1), (yhi - ylo).amax(1)  # the widest band per axis
    calls, pad = _window_calls(ly, wx, wy, px * c, dev)  # crops per call; (ly, wx, wy) padded per call
    perm = torch.cat(calls)
    kx = aa_window_matrices(
        x0[perm],
        bw[perm],
        new_w[perm],
        left[perm],
        size,
        [(len(q), p[1]) for q, p in zip(calls, pad)],
        ww[perm],
        xlo[perm],
        "bicubic",
        True,
        crops.tx[perm],
        dev,
    )
    ky = aa_window_matrices(
        y0[perm],
        bh[perm],
        new_h[perm],
        top[perm],
        size,
        [(len(q), p[2]) for q, p in zip(calls, pad)],
        hh[perm],
        ylo[perm],
        "bicubic",
        True,
        crops.ty[perm],
        dev,
    )
    src, base = _level_source(xs, crops.used, max(p[1] for p in pad))
    held = [src]  # released with the weights
    del src
    # per crop, in call order: flat index of (channel 0, row r0, column 0), last image row - r0,
    # image width, image plane, output row, band starts (columns; rows relative to r0)
    geo = to_device(
        torch.cat(
            [
                torch.stack([base[crops.img] + r0 * ww, hh - 1 - r0, ww, hh * ww, crops.dest], 1),
                xlo,
                ylo - r0.view(-1, 1),
            ],
            1,
        )[perm],
        dev,
    )
    for g, call_pad in zip(geo.split([len(q) for q in calls]), pad):
        _resample_views(out, held[0], g, kx.pop(0), ky.pop(0), px, c, call_pad)
    _release(kx, ky, held)
    m, s = _norm_constants(mean, std, out.dtype, dev)
    return _normalize_views(out, m, s)


def _use_cpu_kernels(out: Tensor) -> bool:
    """The compiled integer loops (``resample_cpu``) for views on a CPU, when numba is there
    and not switched off (``ABS_CPU_KERNELS=0``: the matrix products, e.g. to compare)."""
    import os

    return (
        out.device.type == "cpu"
        and out.dtype in (torch.float32, torch.float64)
        and out.is_contiguous()
        and os.environ.get("ABS_CPU_KERNELS", "1") != "0"
        and resample_cpu.available()
    )


#: One axis of the boxes ``_cpu_resample`` resamples: ``(start, length, resized, offset, taps)``, each per box.
_Axis = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _axis_taps(
    start: Tensor, length: Tensor, resized: Tensor, offset: Tensor, size: int, taps: Tensor, kernel: str = "bicubic"
):
    """Per crop, the fixed-point taps of one axis as ``resample_cpu`` takes them: by its compiled
    loop (``resample_cpu.axis_taps``), the numbers of ``resample.aa_weights`` (a crop's taps do
    not depend on the zero taps its call pads it with: ``resample._sum_in_order``). Evaluating
    them with tensor operations was 17% of the CPU time per image with the micro models."""
    return resample_cpu.axis_taps(start, length, resized, offset, size, int(taps.max()), kernel)


def _cpu_views(xs: Sequence[Tensor], crops: _Crops, size: int) -> None:
    """The views ``/ 255`` of ``crops`` into ``crops.out`` by the compiled integer loops:
    the same 8-bit levels as the matrix products (both are Pillow's arithmetic, exactly)."""
    x0, y0, bh, bw, new_h, new_w, top, left = crops.geometry
    _cpu_resample(
        xs,
        crops.used,
        crops.img,
        crops.dest,
        (x0, bw, new_w, left, crops.tx),
        (y0, bh, new_h, top, crops.ty),
        size,
        "bicubic",
        crops.out,
    )


def _cpu_resample(
    xs: Sequence[Tensor],
    used: Sequence[int],
    img: Tensor,
    dest: Tensor,
    x_axis: _Axis,
    y_axis: _Axis,
    size: int,
    kernel: str,
    out: Tensor,
) -> None:
    """``size x size`` resamplings of boxes of ``xs`` by ``resample_cpu`` into rows ``dest`` of
    ``out``; per axis ``(start, length, resized, offset, taps)`` per box (CPU int64)."""
    hx = _axis_taps(*x_axis[:4], size, x_axis[4], kernel)
    vy = _axis_taps(*y_axis[:4], size, y_axis[4], kernel)
    src, base, hh, ww = resample_cpu.transposed_levels(xs, used)
    resample_cpu.crop_levels(src, base, hh, ww, img, hx, vy, out, dest)


class _Crops(NamedTuple):
    out: Tensor
    n: int
    order: list[int]  # groups, each image's together
    sizes: list[int]  # crops per group (in ``order``)
    used: list[int]  # images with crops
    geometry: tuple[Tensor, ...]  # x0, y0, bh, bw, new_h, new_w, top, left per crop
    ty: Tensor  # tap counts per crop (its group's, i.e. its ``clip_views`` call's), vertical
    tx: Tensor  # and horizontal
    img: Tensor  # image of each crop
    hw: Tensor  # [n, 2] that image's height and width
    dest: Tensor  # output row of each crop


def _batch_crops(
    xs: Sequence[Tensor], groups: Sequence[tuple[int, Tensor, int]], size: int, n_out: int | None, out: Tensor | None
) -> _Crops:
    """The crops of ``clip_views_batch`` (CPU int64 tensors, groups of one image together) and
    the output buffer: what the windowed path and the dense reference share."""
    dev = xs[0].device
    dtype = _view_dtype(xs[0])
    order = sorted(range(len(groups)), key=lambda k: groups[k][0])  # each image's rows together
    boxes = torch.cat([groups[k][1].to("cpu", torch.int64).reshape(-1, 4) for k in order])
    sizes = [len(groups[k][1]) for k in order]
    gid = torch.repeat_interleave(torch.arange(len(order)), torch.tensor(sizes, dtype=torch.long))
    if n_out is None:
        n_out = max((g[2] + len(g[1]) for g in groups), default=0)
    if out is None:
        out = torch.empty(n_out, 3, size, size, dtype=dtype, device=dev)
    elif tuple(out.shape) != (n_out, 3, size, size) or out.dtype != dtype or out.device != dev:
        raise ValueError(
            f"out must be [{n_out}, 3, {size}, {size}] {dtype} on {dev}, got {tuple(out.shape)} {out.dtype}"
        )
    x0, y0, x1, y1 = boxes.unbind(1)
    bh, bw = y1 - y0, x1 - x0
    new_h, new_w, top, left = resize_crop_geometry(bh, bw, size)

    def call_taps(length: Tensor, resized: Tensor) -> Tensor:  # per row: its group's (one call's) tap count
        t = aa_taps(length, resized, "bicubic")
        per = torch.zeros(len(order), dtype=torch.long).scatter_reduce_(0, gid, t, "amax", include_self=False)
        return per[gid]

    used = sorted({g[0] for g in groups if len(g[1])})
    img = torch.tensor([groups[k][0] for k in order], dtype=torch.long)[gid]
    hw = torch.tensor(
        [[int(xs[b].shape[1]), int(xs[b].shape[2])] if b in used else [1, 1] for b in range(len(xs))], dtype=torch.long
    )[img]
    dest = torch.cat([groups[k][2] + torch.arange(sizes[q]) for q, k in enumerate(order)])
    return _Crops(
        out,
        int(boxes.shape[0]),
        order,
        sizes,
        used,
        (x0, y0, bh, bw, new_h, new_w, top, left),
        call_taps(bh, new_h),
        call_taps(bw, new_w),
        img,
        hw,
        dest,
    )


def clip_views_batch_dense(
    xs: Sequence[Tensor],
    groups: Sequence[tuple[int, Tensor, int]],
    size: int,
    mean,
    std,
    n_out: int | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """``clip_views_batch`` with dense operands, the previous implementation: the same views
    bit for bit, kept as the reference the windowed path is tested and measured against
    (``benchmarks/bench_host.py --dense-views``).

    Each crop's weights span the whole image (``aa_matrices``, zero outside its taps),
    and each image's crops take two products over all its rows and columns
    (``resample._pil_levels``): ~6x the arithmetic of the windowed path on ImageNet
    crops, growing with the image rather than the crop.
    """
    crops = _batch_crops(xs, groups, size, n_out, out)
    out = crops.out
    if crops.n == 0:
        return out
    x0, y0, bh, bw, new_h, new_w, top, left = crops.geometry
    # one block of rows per image (its groups are adjacent in ``order``)
    img_rows: list[tuple[int, int]] = []  # (image, crops)
    for k, n in zip(crops.order, crops.sizes):
        b = groups[k][0]
        if img_rows and img_rows[-1][0] == b:
            img_rows[-1] = (b, img_rows[-1][1] + n)
        else:
            img_rows.append((b, n))
    ry = aa_matrices(
        y0, bh, new_h, top, size, [(n, int(xs[b].shape[1])) for b, n in img_rows], "bicubic", True, crops.ty, out.device
    )
    rx = aa_matrices(
        x0,
        bw,
        new_w,
        left,
        size,
        [(n, int(xs[b].shape[2])) for b, n in img_rows],
        "bicubic",
        True,
        crops.tx,
        out.device,
    )
    q = 0
    for j, (b, n) in enumerate(img_rows):
        ranges: list[tuple[int, int]] = []
        while sum(r for _, r in ranges) < n:
            ranges.append((groups[crops.order[q]][2], crops.sizes[q]))
            q += 1
        _dense_views(out, xs[b], ry[j], rx[j], ranges)
    _release(ry, rx)
    m, s = _norm_constants(mean, std, out.dtype, out.device)
    return _normalize_views(out, m, s)


def _dense_views(out: Tensor, x: Tensor, ry: Tensor, rx: Tensor, dest: Sequence[tuple[int, int]]) -> None:
    """All views of one image with dense operands (``clip_views_batch_dense``), stored group by
    group (``dest``: first output row, crops) as ``levels / 255`` (one rounding to ``out``'s dtype)."""
    levels = _pil_levels(_float_levels(x).unsqueeze(0), ry, rx)
    _store_rows(out, levels, dest)
    del levels


def _store_rows(out: Tensor, levels: Tensor, dest: Sequence[tuple[int, int]]) -> None:
    r = 0
    for first, n in dest:
        torch.mul(levels[r : r + n], 1.0 / 255.0, out=out[first : first + n])
        r += n


# Bands of outputs per axis of a crop, (horizontal, vertical) (``resample.aa_spans`` parts; the
# largest divisor of the view size up to these): each output multiplies ~(crop / parts +
# filter support) samples instead of the whole crop's. ImageNet crops at 224, N=60: 0.29
# GMAC per image with 16 bands, 3.7 with one window per crop, 11 dense; on a 2-core CPU 8 to
# 28 bands per axis are within ~5% (the gathers and 8-bit rounding passes dominate by
# then), 4 is ~25% and 1 ~2.4x slower.
_PARTS = (16, 16)
# Outputs per band at least (fewer parts for small views): a band of b outputs multiplies
# ~(b + 3) * scale samples per output against the ~4 * scale its taps need, but GEMMs with a
# handful of output columns run at a fraction of the rate (64 px views, 500x375 images:
# 4 bands per axis ~1.3x faster than 16 in float32).
_MIN_BAND = 14
# Window samples per ``pil_window_levels`` call: ~8 MB of float64 patches on a CPU (about five
# ImageNet crops with 16 bands; calls of 4x that were ~15% slower there, 8x ~50%: the
# temporaries leave the cache); on a GPU, large calls (few kernel launches).
_CPU_CALL_SAMPLES = 1 << 20
_DEVICE_CALL_SAMPLES = 1 << 26


def _window_calls(ly: Tensor, wx: Tensor, wy: Tensor, bands: int, device: torch.device):
    """Crops (index tensors) per ``pil_window_levels`` call and each call's padded ``(ly, wx, wy)``.

    Sorted by window size, so a call pads its crops to sizes close to their own; a call
    holds at most ``_*_CALL_SAMPLES`` patch samples (at least one crop). A Python loop
    over calls, not over crops; everything here is on the CPU (no device sync)."""
    budget = _CPU_CALL_SAMPLES if device.type == "cpu" else _DEVICE_CALL_SAMPLES
    samples = ly * wx * bands
    order = torch.argsort(samples, descending=True, stable=True)
    largest = samples[order].tolist()  # the first crop of a call sets its size, about
    bounds, a, n = [], 0, len(largest)
    while a < n:
        m = max(1, min(n - a, budget // max(1, largest[a])))
        bounds.append((a, a + m))
        a += m
    call = torch.repeat_interleave(torch.arange(len(bounds)), torch.tensor([e - b for b, e in bounds]))
    pad = torch.zeros(len(bounds), 3, dtype=torch.long).scatter_reduce_(
        0, call.view(-1, 1).expand(-1, 3), torch.stack([ly, wx, wy], 1)[order], "amax", include_self=False
    )
    return [order[b:e] for b, e in bounds], [tuple(p) for p in pad.tolist()]


def _level_source(xs: Sequence[Tensor], used: Sequence[int], tail: int) -> tuple[Tensor, Tensor]:
    """The images' 8-bit levels (``resample.split_levels_dtype``: float32 on a CPU, float64 on
    CUDA), flattened one after the other, plus ``tail`` zeros; and where each image starts
    (CPU int64, indexed by image)."""
    base = torch.zeros(max(used) + 1, dtype=torch.long)
    sizes = [xs[b].numel() for b in used]
    dev = xs[used[0]].device
    dtype = split_levels_dtype(dev)
    src = torch.empty(sum(sizes) + tail, dtype=dtype, device=dev)
    a = 0
    for b, n in zip(used, sizes):
        # round(x.to(float64) * 255): the same operations (float64 even for float32 levels, which
        # hold these integers exactly), no concatenation
        dst = src[a : a + n].view(xs[b].shape)
        if xs[b].dtype == torch.uint8:  # the levels themselves (float32 holds them exactly)
            dst.copy_(xs[b])
        elif dtype == torch.float64:
            dst.copy_(xs[b]).mul_(255.0).round_()
        else:
            dst.copy_(xs[b].to(torch.float64, copy=True).mul_(255.0).round_())
        base[b] = a
        a += n
    src[a:].zero_()
    return src, base


def _window_starts(g: Tensor, px: int, ly: int, c: int) -> Tensor:
    """``[m, px, c, ly]`` flat indices of the window rows of the call's crops (``g``: their
    ``geo`` rows); rows past a crop's own repeat the image's last row (zero weights)."""
    m = g.shape[0]
    y = torch.minimum(torch.arange(ly, device=g.device).view(1, ly), g[:, 1:2])  # [m, ly]
    chan = torch.arange(c, device=g.device).view(1, 1, c, 1) * g[:, 3].view(m, 1, 1, 1)
    return g[:, 0].view(m, 1, 1, 1) + g[:, 5 : 5 + px].view(m, px, 1, 1) + (y * g[:, 2:3]).view(m, 1, 1, ly) + chan


def _window_rows(rel: Tensor, ly: int, wy: int) -> Tensor:
    """``[m, py, wy]`` rows of the horizontal pass each vertical band reads (``rel``: band
    starts relative to the crop's first row ``r0``); rows past the call's ``ly`` repeat its
    last (zero weights)."""
    return torch.clamp(rel.unsqueeze(-1) + torch.arange(wy, device=rel.device), max=ly - 1)


def _resample_views(
    out: Tensor, src: Tensor, g: Tensor, kx: Tensor, ky: Tensor, px: int, c: int, pad: tuple[int, int, int]
) -> None:
    """The views of one call's crops (``g``: their ``geo`` rows; ``pad``: the call's ``(ly, wx,
    wy)``): the window indices, the two windowed resampling products, then the stores into
    ``out`` (the temporaries are released here, with the arithmetic they belong to)."""
    ly, _, wy = pad
    starts = _window_starts(g, px, ly, c)
    rows = _window_rows(g[:, 5 + px :], ly, wy)
    levels = pil_window_levels(src, starts, kx, ky, rows)
    del starts, rows
    _store_views(out, levels, g[:, 4])
    del levels


def _release(*buffers: list) -> None:
    """Drop the resampling operands now (weights: one buffer each; the levels), not at some later line."""
    for b in buffers:
        b.clear()


def _store_views(out: Tensor, levels: Tensor, dest: Tensor) -> None:
    """``levels / 255`` into the output rows ``dest`` (one rounding to ``out``'s dtype, as
    ``_pil_separable(...).to(dtype)``: the float64 product, then the cast)."""
    views = torch.empty(levels.shape, dtype=out.dtype, device=out.device)
    out.index_copy_(0, dest, torch.mul(levels, 1.0 / 255.0, out=views))


def _normalize_views(out: Tensor, m: Tensor, s: Tensor) -> Tensor:
    """``(x - mean) / std`` in place (the same operations as :func:`normalize`)."""
    return out.sub_(m).div_(s)


def clip_views(x: Tensor, boxes: Tensor, size: int, mean, std) -> Tensor:
    """CLIP inputs ``[N, 3, size, size]`` for boxes ``[N, 4]`` (x0, y0, x1, y1) of ``x [3, H, W]``.

    Each view equals open_clip's ``preprocess(img.crop(box))`` under Pillow <= 12
    (horizontal-first resize); see the module docstring for Pillow 13.
    """
    x = _float_levels(x)
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


def dino_views(xs: Sequence[Tensor], size: int, mean, std) -> Tensor:
    """``dino_view`` of every image, stacked ``[B, 3, size, size]``, in one banded call
    (``resize_whole_batch``); the same values bit for bit."""
    out = resize_whole_batch(xs, size, size, "bilinear")
    m, s = _norm_constants(mean, std, out.dtype, out.device)
    return _normalize_views(out, m, s)
