"""Separable resampling as batched matrix products.

Why: ABS resizes ~60 crops per image to 224x224 and ~60 feature-token windows per
image back to the full grid. Doing that one crop at a time with PIL or
``F.interpolate`` costs a Python call per crop. Every such resize is linear and
separable, so one crop is ``R_y @ X @ R_x^T`` with small weight matrices; all crops
of an image then run as two batched matmuls, with no loop over crops.

The weights reproduce the kernels used by the reference pipelines:

* ``aa_matrix`` -- antialiased resampling as in PIL's ``Image.resize`` and
  ``F.interpolate(..., antialias=True)``: the filter support grows with the
  downscale factor (bicubic uses a = -0.5, bilinear the triangle filter).
  With ``apply_separable(..., pil_rounding=True)`` the result equals Pillow <= 12's
  8-bit ``Image.resize`` (``reducing_gap=None``) exactly: horizontal pass first,
  rounded to 8 bits, then the vertical pass. Pillow 13 chooses the pass order by
  cost and runs the vertical pass first for some shapes (e.g. downscaling tall
  images or portrait crops); there ``img.resize`` differs from these pixels by a
  few levels in roughly one value in four. The order here is fixed to
  horizontal-first, as in the method authors' environment.
* ``bicubic_matrix`` -- ``F.interpolate(mode="bicubic", align_corners=False)``
  without antialiasing (a = -0.75, indices clamped at the border); used for the
  feature-space windows, which are only ever upscaled.

Every matrix maps a segment ``[start, start + length)`` of a signal of
``full_size`` samples; columns outside the segment are zero, which is exactly a
crop followed by a resize.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "aa_matrices",
    "aa_matrix",
    "aa_taps",
    "aa_weights",
    "apply_separable",
    "apply_separable_batch",
    "bicubic_matrix",
    "resize_crop_geometry",
    "to_device",
]


def _aa_filter(x: Tensor, kernel: str) -> Tensor:
    x = x.abs()
    if kernel == "bicubic":
        a = -0.5
        # ((a + 2) x - (a + 3)) x x + 1 and (((x - 5) x + 8) x - 4) a, operation by
        # operation as written there, in place (fewer temporaries, same rounding)
        inner = torch.mul(x, a + 2).sub_(a + 3).mul_(x).mul_(x).add_(1)
        outer = torch.sub(x, 5).mul_(x).add_(8).mul_(x).sub_(4).mul_(a)
        return torch.where(x < 1, inner, outer.masked_fill_(x >= 2, 0.0))
    if kernel == "bilinear":
        return torch.clamp(1 - x, min=0)
    raise ValueError(f"unknown antialias kernel {kernel!r} (bicubic or bilinear)")


_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}


def aa_matrix(
    start: Tensor,
    length: Tensor,
    resized: Tensor,
    offset: Tensor,
    out_size: int,
    full_size: int,
    kernel: str = "bicubic",
    pil_fixed: bool = False,
) -> Tensor:
    """Antialiased resize weights, batched over crops.

    For each crop ``n``: the segment ``[start[n], start[n] + length[n])`` of a signal
    with ``full_size`` samples is resized to ``resized[n]`` samples, and outputs
    ``offset[n] .. offset[n] + out_size - 1`` of that are kept (a centre crop).
    Returns ``[n, out_size, full_size]`` float64 weights.

    Only the taps inside each output's support are evaluated (a handful per
    output), then scattered into the dense matrix. ``pil_fixed`` returns them in
    PIL's 22-bit fixed point (integers in float64), as ``apply_separable(...,
    pil_rounding=True)`` expects. All crops of one call share one tap count (the
    largest any of them needs); ``aa_matrices`` builds many such calls at once.
    """
    n = start.shape[0]
    taps = int(aa_taps(length, resized, kernel).max().item()) if n else 1
    w, col = aa_weights(start, length, resized, offset, out_size, kernel, pil_fixed, taps)
    col = col.clamp_(0, full_size - 1)
    out = torch.zeros(n, out_size, full_size, dtype=torch.float64, device=start.device)
    return out.scatter_add_(2, col, w)


def aa_taps(length: Tensor, resized: Tensor, kernel: str = "bicubic") -> Tensor:
    """Taps per crop (int64, on the inputs' device): what ``aa_matrix`` evaluates for a call
    holding that crop alone. A call evaluates the maximum over its crops."""
    scale = length.to(torch.float64) / resized.to(torch.float64)
    support = _SUPPORT[kernel] * torch.clamp(scale, min=1.0)
    return torch.ceil(2 * support).long() + 2


def aa_weights(
    start: Tensor,
    length: Tensor,
    resized: Tensor,
    offset: Tensor,
    out_size: int,
    kernel: str,
    pil_fixed: bool,
    taps: int,
) -> tuple[Tensor, Tensor]:
    """The taps of ``aa_matrix`` before they are scattered: weights ``[n, out_size, taps]``
    (float64) and their sample positions (int64; 0 where a tap is unused, with weight 0)."""
    dtype = torch.float64
    dev = start.device
    start = start.to(dtype).view(-1, 1, 1)
    length = length.to(dtype).view(-1, 1, 1)
    resized = resized.to(dtype).view(-1, 1, 1)
    offset = offset.to(dtype).view(-1, 1, 1)
    i = torch.arange(out_size, dtype=dtype, device=dev).view(1, -1, 1) + offset  # index in the resized signal
    scale = length / resized
    support = _SUPPORT[kernel] * torch.clamp(scale, min=1.0)
    invscale = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))
    center = scale * (i + 0.5)
    # Same integer bounds as PIL / ATen (truncation; negatives are clamped to 0 anyway).
    xmin = torch.clamp(torch.trunc(center - support + 0.5), min=0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), length)
    j = xmin + torch.arange(taps, dtype=dtype, device=dev).view(1, 1, -1)  # position inside the segment
    valid = j < xmax
    w = _aa_filter((j - center).add_(0.5).mul_(invscale), kernel).masked_fill_(~valid, 0.0)
    total = w.sum(dim=-1, keepdim=True)
    w.div_(torch.where(total == 0, torch.ones_like(total), total))
    if pil_fixed:
        w = _pil_fixed(w)
    col = j.add_(start).masked_fill_(~valid, 0.0).long()
    return w, col


def aa_matrices(
    start: Tensor,
    length: Tensor,
    resized: Tensor,
    offset: Tensor,
    out_size: int,
    blocks: Sequence[tuple[int, int]],
    kernel: str,
    pil_fixed: bool,
    taps: Tensor,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """Many ``aa_matrix`` calls in one: per block ``(rows, full_size)`` a contiguous
    ``[rows, out_size, full_size]`` float64 matrix on ``device``.

    The rows (crops) are given in block order; block ``k`` holds its ``rows`` crops of
    a signal with ``full_size`` samples (e.g. one image's boxes along one axis). Row
    ``r`` equals the row of the ``aa_matrix`` call its crop belonged to, bit for bit,
    when ``taps[r]`` is that call's tap count (the maximum of ``aa_taps`` over its
    crops): a row's weights depend only on its own crop and the tap count (which
    fixes the summation order of the normalisation). The weights are evaluated in
    one pass per distinct tap count (a handful per batch) and scattered into one
    buffer, with no loop over crops or images. The crop arguments and ``taps`` are
    CPU tensors, so no device round trip decides the tap counts.
    """
    dev = torch.device(device) if device is not None else start.device
    n = int(start.shape[0])
    rows_list = [int(b[0]) for b in blocks]
    if sum(rows_list) != n:
        raise ValueError(f"blocks hold {sum(rows_list)} rows, got {n} crops")
    elems = [r * out_size * int(f) for r, f in blocks]
    total = sum(elems)
    parts: list[tuple[Tensor, Tensor]] = []
    if n:
        rows_per = torch.tensor(rows_list, dtype=torch.long)
        full = torch.tensor([int(b[1]) for b in blocks], dtype=torch.long)
        block_base = torch.tensor([sum(elems[:k]) for k in range(len(elems))], dtype=torch.long)
        blk = torch.repeat_interleave(torch.arange(len(blocks)), rows_per)
        first = torch.cumsum(rows_per, 0) - rows_per
        row_full = full[blk]
        row_base = block_base[blk] + (torch.arange(n) - first[blk]) * out_size * row_full
        taps = taps.to("cpu", torch.int64)
        order = torch.argsort(taps, stable=True)
        values, counts = torch.unique_consecutive(taps[order], return_counts=True)
        args = to_device(torch.stack([start.long().cpu(), length.long().cpu(), resized.long().cpu(),
                                      offset.long().cpu(), row_base, row_full])[:, order], dev)
        i = torch.arange(out_size, device=dev).view(1, -1, 1)
        # On a CPU, rows in cache-sized chunks (the temporaries stay in cache; 2x faster
        # there); on a GPU, each tap count in one go (fewest kernel launches).
        step = _CPU_ROWS if dev.type == "cpu" else n
        a = 0
        for t, c in zip(values.tolist(), counts.tolist()):
            for a0 in range(a, a + c, step):
                st, ln, rs, of, base, fs = args[:, a0 : min(a + c, a0 + step)].unsqueeze(-1).unsqueeze(-1)
                w, col = aa_weights(st.view(-1), ln.view(-1), rs.view(-1), of.view(-1), out_size, kernel, pil_fixed, t)
                parts.append((torch.minimum(col, fs - 1).add_(base + i * fs), w))
            a += c
    flat = _dense_scatter(total, dev, parts)
    out, a = [], 0
    for (r, f), e in zip(blocks, elems):
        out.append(flat[a : a + e].view(r, out_size, f))
        a += e
    return out


_CPU_ROWS = 64


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """``t`` (on the CPU) on ``device`` without waiting for the device: on CUDA through pinned
    memory and a non-blocking copy (a plain ``.to`` of pageable memory synchronises the
    stream, i.e. waits for all queued work); elsewhere a plain ``.to``."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _dense_scatter(total: int, device: torch.device, parts: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """A zero float64 buffer of ``total`` elements with ``(flat positions, weights)`` added in."""
    out = torch.zeros(total, dtype=torch.float64, device=device)
    for pos, w in parts:
        out.scatter_add_(0, pos.flatten(), w.flatten())
    return out


def bicubic_matrix(start: Tensor, length: Tensor, out_size: int, full_size: int) -> Tensor:
    """Plain bicubic resize weights (``align_corners=False``, a = -0.75), batched.

    Segment ``[start[n], start[n] + length[n])`` of a ``full_size`` signal resized to
    ``out_size`` samples. Returns ``[n, out_size, full_size]`` float64 weights.
    """
    dtype = torch.float64
    a = -0.75
    start = start.to(dtype).view(-1, 1)
    length = length.to(dtype).view(-1, 1)
    i = torch.arange(out_size, dtype=dtype, device=start.device).view(1, -1)
    real = (length / out_size) * (i + 0.5) - 0.5
    x0 = torch.floor(real)
    t = real - x0

    def near(d: Tensor) -> Tensor:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: Tensor) -> Tensor:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    taps = [(-1, far(t + 1)), (0, near(t)), (1, near(1 - t)), (2, far(2 - t))]
    n = start.shape[0]
    out = torch.zeros(n, out_size, full_size, dtype=dtype, device=start.device)
    for k, wk in taps:  # four taps, not a loop over crops
        idx = torch.minimum(torch.clamp(x0 + k, min=0), length - 1) + start
        out.scatter_add_(2, idx.long().unsqueeze(-1), wk.unsqueeze(-1))
    return out


def resize_crop_geometry(h: Tensor, w: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sizes and offsets of "shorter side to ``size``, then centre crop ``size``".

    Follows torchvision's ``Resize(size)`` (long side ``int(size * long / short)``)
    and ``CenterCrop(size)`` (offset ``int(round((new - size) / 2))``).
    Returns ``(new_h, new_w, top, left)`` as int64 tensors.
    """
    h = h.to(torch.int64)
    w = w.to(torch.int64)
    short = torch.minimum(h, w)
    long_ = torch.maximum(h, w)
    new_long = torch.floor(size * long_.double() / short.double()).to(torch.int64)
    new_h = torch.where(h <= w, torch.full_like(h, size), new_long)
    new_w = torch.where(h <= w, new_long, torch.full_like(w, size))
    # Python's round() is banker's rounding; torch.round matches it (half to even).
    top = torch.round((new_h - size).double() / 2.0).to(torch.int64)
    left = torch.round((new_w - size).double() / 2.0).to(torch.int64)
    return new_h, new_w, top, left


def apply_separable(x: Tensor, ry: Tensor, rx: Tensor, pil_rounding: bool = False) -> Tensor:
    """Resample ``x [C, H, W]`` (or ``[n, C, H, W]``) by ``ry [n, h, H]``, ``rx [n, w, W]``.

    Returns ``[n, C, h, w]`` in the dtype of ``x``. Without ``pil_rounding`` the
    larger spatial axis is contracted first (cheaper) and nothing is rounded.

    With ``pil_rounding`` (``x`` holds 8-bit levels scaled to [0, 1], and ``ry`` /
    ``rx`` come from ``aa_matrix(..., pil_fixed=True)``) the arithmetic is Pillow's
    ``ImagingResample`` for 8-bit images: weights in 22-bit fixed point (rounded
    half away from zero), always the horizontal pass first into an 8-bit
    intermediate, then the vertical pass, each rounded and clamped to 0..255. Done
    in float64, where those integer products are exact, this equals Pillow <= 12's
    ``Image.resize`` (bicubic / bilinear, ``reducing_gap=None``) bit for bit --
    the authors' pipeline. Pillow >= 13 runs the vertical pass first when that is
    cheaper (e.g. downscaling tall images or portrait crops), so with Pillow 13
    ``img.resize`` may differ from these pixels by a few levels for such shapes;
    the horizontal-first order here does not depend on the installed Pillow.
    """
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if pil_rounding:
        return _pil_separable(x, ry, rx).to(x.dtype)
    ry = ry.to(x.dtype).unsqueeze(1)
    rx = rx.to(x.dtype).unsqueeze(1)
    if x.shape[-2] >= x.shape[-1]:
        return torch.matmul(torch.matmul(ry, x), rx.transpose(-1, -2))
    return torch.matmul(ry, torch.matmul(x, rx.transpose(-1, -2)))


def apply_separable_batch(x: Tensor, ry: Tensor, rx: Tensor) -> Tensor:
    """``apply_separable(x[b], ry[b], rx[b])`` for every ``b`` in one call (no ``pil_rounding``).

    ``x [B, C, H, W]``, ``ry [B, n, h, H]``, ``rx [B, n, w, W]`` -> ``[B, n, C, h, w]`` in
    the dtype of ``x``; the same products in the same order as ``apply_separable``,
    batched over images instead of looped.
    """
    x = x.unsqueeze(1)
    ry = ry.to(x.dtype).unsqueeze(2)
    rx = rx.to(x.dtype).unsqueeze(2)
    if x.shape[-2] >= x.shape[-1]:
        return torch.matmul(torch.matmul(ry, x), rx.transpose(-1, -2))
    return torch.matmul(ry, torch.matmul(x, rx.transpose(-1, -2)))


_PIL_PRECISION_BITS = 32 - 8 - 2


def _pil_fixed(w: Tensor) -> Tensor:
    """Round ``w * 2**22`` half away from zero: ``ceil(v - 0.5)`` below zero, ``floor(v + 0.5)``
    above, computed as ``copysign(floor(|v| + 0.5), v)`` (the same numbers; ``v - 0.5 = -(|v| + 0.5)``
    exactly, as rounding is symmetric)."""
    w = w.to(torch.float64) * (1 << _PIL_PRECISION_BITS)
    return torch.copysign(w.abs().add_(0.5).floor_(), w)


def _pil_pass(acc: Tensor) -> Tensor:
    half = float(1 << (_PIL_PRECISION_BITS - 1))
    return acc.add_(half).mul_(1.0 / (1 << _PIL_PRECISION_BITS)).floor_().clamp_(0.0, 255.0)


def _pil_separable(x: Tensor, ry: Tensor, rx: Tensor) -> Tensor:
    """``x [1, C, H, W]`` -> ``[n, C, h, w]``: one GEMM for all horizontal passes, one bmm after.

    Horizontal first, as Pillow <= 12 does for every shape (see ``apply_separable``).
    """
    if x.shape[0] != 1:
        return torch.cat([_pil_separable(x[k : k + 1], ry, rx) for k in range(x.shape[0])])
    return _pil_levels(x, ry, rx).mul_(1.0 / 255.0)


def _pil_levels(x: Tensor, ry: Tensor, rx: Tensor) -> Tensor:
    """``_pil_separable`` before the final division by 255: 8-bit levels ``[n, C, h, w]``
    (float64, a permuted view), for callers that store ``levels * (1 / 255)`` straight
    into a float32 buffer (``torch.mul(..., out=...)``: the same float64 product,
    rounded once, as ``_pil_separable(...).to(torch.float32)``)."""
    _, c, h, w = x.shape
    n, oh, ow = ry.shape[0], ry.shape[1], rx.shape[1]
    levels = torch.round(x[0].to(torch.float64) * 255.0).reshape(c * h, w)
    kx = rx.to(torch.float64).reshape(n * ow, w)
    tmp = _pil_pass(levels @ kx.T)  # [C*H, n*ow]
    tmp = tmp.view(c, h, n, ow).permute(2, 1, 0, 3).reshape(n, h, c * ow)
    out = _pil_pass(torch.bmm(ry.to(torch.float64), tmp))  # [n, oh, C*ow]
    return out.view(n, oh, c, ow).permute(0, 2, 1, 3)
