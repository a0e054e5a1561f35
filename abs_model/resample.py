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

Windows (the crop views): a dense ``[n, out, full_size]`` matrix makes the products
of every crop run over the whole image, although a crop's outputs only reach the
samples under their taps. ``aa_spans`` gives those samples per band of outputs,
``aa_window_matrices`` the weights on them only, and ``pil_window_levels`` runs
Pillow's two 8-bit passes of many crops over their windows (gathered patches, two
batched GEMMs). That is exact, not an approximation: in ``pil_rounding`` mode the
operands are integers (8-bit levels, 22-bit fixed-point weights) in float64, whose
products and partial sums stay far below 2**53, so a dot product has the same value
in any summation order and without its zero terms; a window drops only products
with weight 0 and pads only with weight-0 entries. The cost then follows the crop
(and the filter support), not the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "aa_matrices",
    "aa_matrix",
    "aa_spans",
    "aa_taps",
    "aa_weights",
    "aa_window_matrices",
    "apply_separable",
    "apply_separable_batch",
    "bicubic_matrix",
    "pil_window_levels",
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


def _sum_in_order(w: Tensor) -> Tensor:
    """``w.sum(-1, keepdim=True)`` added tap after tap, first to last, as Pillow adds them
    (``ww += w``). Why not ``sum``: its vectorised order depends on the row's length, so the
    same crop's weights would change (in the last bit, and then in fixed point) with the
    number of zero taps its call pads it with; in this order trailing zeros change nothing,
    and a crop's taps are its own whatever call it is in (``preprocess._axis_taps`` keeps
    them per crop size)."""
    total = w[..., :1].clone()
    for i in range(1, int(w.shape[-1])):
        total.add_(w[..., i : i + 1])
    return total


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
    scale, support, center, xmin, xmax = _aa_bounds(length, resized, offset, out_size, kernel)
    invscale = torch.where(scale >= 1.0, 1.0 / scale, torch.ones_like(scale))
    j = xmin + torch.arange(taps, dtype=dtype, device=dev).view(1, 1, -1)  # position inside the segment
    valid = j < xmax
    w = _aa_filter((j - center).add_(0.5).mul_(invscale), kernel).masked_fill_(~valid, 0.0)
    total = _sum_in_order(w)
    w.div_(torch.where(total == 0, torch.ones_like(total), total))
    if pil_fixed:
        w = _pil_fixed(w)
    col = j.add_(start).masked_fill_(~valid, 0.0).long()
    return w, col


def _aa_bounds(
    length: Tensor, resized: Tensor, offset: Tensor, out_size: int, kernel: str, outputs: Tensor | None = None
):
    """``(scale, support, center, xmin, xmax)`` of outputs ``offset .. offset + out_size - 1``
    (float64 ``[n, 1, 1]`` arguments, ``[n, out_size, 1]`` centres and bounds), or of the
    outputs ``offset + outputs`` only: output ``i`` reads the segment samples ``[xmin,
    min(xmax, xmin + taps))``. One function for the weights (``aa_weights``) and their
    windows (``aa_spans``), so the two cannot disagree. ``xmin`` and ``xmax`` never
    decrease with ``i``: every step (a product with ``scale > 0``, sums with constants,
    truncation, clamps) is monotone in IEEE arithmetic."""
    dtype = torch.float64
    if outputs is None:
        outputs = torch.arange(out_size, dtype=dtype, device=length.device)
    i = outputs.to(dtype).view(1, -1, 1) + offset  # index in the resized signal
    scale = length / resized
    support = _SUPPORT[kernel] * torch.clamp(scale, min=1.0)
    center = scale * (i + 0.5)
    # Same integer bounds as PIL / ATen (truncation; negatives are clamped to 0 anyway).
    xmin = torch.clamp(torch.trunc(center - support + 0.5), min=0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), length)
    return scale, support, center, xmin, xmax


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

    Dense: each row spans the whole signal. ``aa_window_matrices`` holds only each
    crop's window (what the crop resampling uses).
    """
    rows_list = [int(b[0]) for b in blocks]
    full = torch.repeat_interleave(
        torch.tensor([int(b[1]) for b in blocks], dtype=torch.long), torch.tensor(rows_list, dtype=torch.long)
    )
    if sum(rows_list) != int(start.shape[0]):
        raise ValueError(f"blocks hold {sum(rows_list)} rows, got {int(start.shape[0])} crops")
    lo = torch.zeros(int(start.shape[0]), 1, dtype=torch.long)
    return aa_window_matrices(
        start, length, resized, offset, out_size, blocks, full, lo, kernel, pil_fixed, taps, device
    )


def aa_spans(
    start: Tensor,
    length: Tensor,
    resized: Tensor,
    offset: Tensor,
    out_size: int,
    full_size: Tensor | int,
    kernel: str = "bicubic",
    parts: int = 1,
) -> tuple[Tensor, Tensor]:
    """The windows of the crops' weights: ``(lo, hi)``, int64 ``[n, parts]`` on the CPU.

    Outputs ``[p * out_size / parts, (p + 1) * out_size / parts)`` of crop ``n`` (``parts``
    must divide ``out_size``) have nonzero weights only at samples ``lo[n, p] <= s <
    hi[n, p]`` of the full signal (``full_size`` samples, an int or one per crop): the
    union of their taps' ranges ``start + [xmin, xmax)``, after the clamp to ``full_size
    - 1`` that ``aa_matrix`` applies. The bounds come from the same float64 operations
    as the weights (``_aa_bounds``), so every tap ``aa_matrix`` sets lies inside; a
    window holds at most the crop's own samples plus the filter support, whatever
    the image size. Crop arguments on the CPU (no device round trip).
    """
    if out_size % parts:
        raise ValueError(f"parts ({parts}) must divide out_size ({out_size})")
    dtype = torch.float64
    start = start.to("cpu", torch.int64).view(-1, 1)
    full = torch.as_tensor(full_size, dtype=torch.int64).view(-1, 1)
    length64, resized64, offset64 = (t.to("cpu", dtype).view(-1, 1, 1) for t in (length, resized, offset))
    # the bounds grow with the output (``_aa_bounds``): a part's window runs from its first
    # output's ``xmin`` to its last output's ``xmax``
    band = out_size // parts
    ends = torch.stack([torch.arange(parts) * band, torch.arange(parts) * band + band - 1], 1).view(-1)
    *_, xmin, xmax = _aa_bounds(length64, resized64, offset64, out_size, kernel, ends)
    n = int(start.shape[0])
    first = xmin.view(n, parts, 2)[:, :, 0].long()
    last = xmax.view(n, parts, 2)[:, :, 1].long()
    lo = torch.minimum(start + first, full - 1)
    hi = torch.maximum(torch.minimum(start + last, full), lo + 1)
    return lo, hi


def aa_window_matrices(
    start: Tensor,
    length: Tensor,
    resized: Tensor,
    offset: Tensor,
    out_size: int,
    blocks: Sequence[tuple[int, int]],
    full_size: Tensor,
    lo: Tensor,
    kernel: str,
    pil_fixed: bool,
    taps: Tensor,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """``aa_matrices`` restricted to windows: per block ``(rows, width)`` a contiguous
    ``[rows, out_size, width]`` float64 matrix on ``device``.

    Row ``r`` is crop ``r``'s ``aa_matrix`` row of a signal with ``full_size[r]``
    samples (CPU int64, one per crop) shifted left by its window start: entry ``[r, i,
    p]`` is the weight of sample ``lo[r, part(i)] + p``, where ``lo`` (CPU int64 ``[n,
    parts]``, from ``aa_spans``) starts the window of output ``i``'s part (``part(i) =
    i * parts // out_size``). Samples outside the window carry no weight by
    construction of ``aa_spans`` (``width`` must cover ``hi - lo``), so the products of
    a window row with the samples ``lo .. lo + width - 1`` are those of the dense row,
    less exact zeros. The weights are the same numbers as ``aa_matrices``' (same taps,
    same normalisation order), evaluated once per distinct tap count.
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
        width = torch.tensor([int(b[1]) for b in blocks], dtype=torch.long)
        block_base = torch.tensor([sum(elems[:k]) for k in range(len(elems))], dtype=torch.long)
        blk = torch.repeat_interleave(torch.arange(len(blocks)), rows_per)
        first = torch.cumsum(rows_per, 0) - rows_per
        row_width = width[blk]
        row_base = block_base[blk] + (torch.arange(n) - first[blk]) * out_size * row_width
        lo = lo.to("cpu", torch.int64).view(n, -1)
        n_parts = int(lo.shape[1])
        part_of = torch.arange(out_size) * n_parts // out_size  # output -> part of its window
        taps = taps.to("cpu", torch.int64)
        order = torch.argsort(taps, stable=True)
        values, counts = torch.unique_consecutive(taps[order], return_counts=True)
        args = to_device(
            torch.cat(
                [
                    torch.stack(
                        [
                            start.long().cpu(),
                            length.long().cpu(),
                            resized.long().cpu(),
                            offset.long().cpu(),
                            row_base,
                            row_width,
                            full_size.to("cpu", torch.int64).view(-1),
                        ]
                    ),
                    lo.T,
                ]
            )[:, order],
            dev,
        )
        i = torch.arange(out_size, device=dev).view(1, -1, 1)
        part_of = to_device(part_of, dev)
        # On a CPU, rows in cache-sized chunks (the temporaries stay in cache; 2x faster
        # there); on a GPU, each tap count in one go (fewest kernel launches).
        step = _CPU_ROWS if dev.type == "cpu" else n
        a = 0
        for t, c in zip(values.tolist(), counts.tolist()):
            for a0 in range(a, a + c, step):
                chunk = args[:, a0 : min(a + c, a0 + step)]
                st, ln, rs, of, base, wd, fs = chunk[:7].unsqueeze(-1).unsqueeze(-1)
                lo_i = chunk[7:].T[:, part_of].unsqueeze(-1)  # [rows, out_size, 1]: window start of each output
                w, col = aa_weights(st.view(-1), ln.view(-1), rs.view(-1), of.view(-1), out_size, kernel, pil_fixed, t)
                # unused taps (weight 0, col 0) land on the row's first sample; used ones inside the window
                pos = torch.minimum(col, fs - 1).sub_(lo_i).clamp_(min=0).add_(base + i * wd)
                parts.append((pos, w))
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


def pil_window_levels(src: Tensor, starts: Tensor, kx: Tensor, ky: Tensor, rows: Tensor | None) -> Tensor:
    """Pillow's two 8-bit passes (``_pil_levels``) of ``m`` crops, each over its own window only.

    * ``src``: flat float64 8-bit levels (every image, channel-major, one after the
      other), followed by at least ``kx.shape[-1]`` more samples (any finite values);
    * ``starts`` ``[m, px, c, ly]`` (int64, on ``src``'s device): flat index in ``src``
      of the first sample of each window row, per crop, horizontal part (``px``
      divides ``ow``), channel, row of the crop's vertical window;
    * ``kx`` ``[m, ow, wx]``: the horizontal weights of ``aa_window_matrices`` with
      ``px`` parts (output ``i`` of part ``p`` weighs the ``wx`` samples from that
      part's window start), ``ky`` ``[m, oh, wy]`` the vertical ones over the ``ly``
      rows of the horizontal pass: with ``rows is None`` all of them (``wy == ly``),
      else, with ``py`` parts, the rows ``rows [m, py, wy]`` (indices ``0 .. ly - 1``)
      for the outputs of part ``p``.

    ``src`` in float32 (the CPU path, ``split_levels_dtype``): the same products in float32
    GEMMs, exact by splitting the weights (``_split_weights``), half the bytes to gather
    and ~2-6x the GEMM rate of float64 on the CPUs here; float64 ``src``: float64 GEMMs.

    Returns 8-bit levels ``[m, c, oh, ow]`` (float64, contiguous). Why equal to the dense
    ``_pil_levels``: the operands are integers (levels, 22-bit fixed-point weights)
    whose products and sums stay far below 2**53, so every dot product is exact in
    any order, and a window drops only products with weight 0 (samples outside
    ``aa_spans``' window) and adds only products with padded weight 0 (window
    samples past the crop's own, which may belong to the next row or image but are
    finite). The weights enter scaled by 2**-22 and the accumulators start at 1/2
    (exact: multiples of 2**-22 below 2**9), so each pass's rounding is
    ``floor(acc + 1/2)`` clamped to 0..255, as ``_pil_pass``. Two gathers and two
    batched GEMMs per call, whatever ``m``.
    """
    m, px, c, ly = starts.shape
    _, ow, wx = kx.shape
    oh, wy = ky.shape[1], ky.shape[2]
    dev = src.device
    unit = 1.0 / (1 << _PIL_PRECISION_BITS)
    half = torch.full((), 0.5, dtype=torch.float64, device=dev)
    # every window row is a contiguous run of ``wx`` samples: rows of an overlapping view
    win = src.as_strided((src.numel() - wx + 1, wx), (1, 1))
    patches = win.index_select(0, starts.reshape(-1)).view(m * px, c * ly, wx)
    split = None
    if src.dtype == torch.float32:
        split = _split_weights(kx), _split_weights(ky)
        if split[0] is None or split[1] is None:  # weights too large for exact float32 halves
            split, patches = None, patches.double()
    if split is not None:
        return _split_passes(patches, split[0], split[1], rows, m, px, c, ly)
    kxt = torch.mul(kx, unit).view(m * px, ow // px, wx).transpose(1, 2)
    tmp = _pil_round(torch.baddbmm(half, patches, kxt))  # [m*px, c*ly, ow/px]: rows (crop, part, channel, y)
    del patches
    py = 1 if rows is None else rows.shape[1]
    if px == 1 and rows is None:
        band = tmp.view(m * c, ly, ow)
    else:  # rows (crop, channel, vertical part, y in the band), columns (horizontal part, x): one gather
        if rows is None:
            rows = torch.arange(ly, device=dev).expand(m, 1, ly)
        crop_part = torch.arange(m, device=dev).view(m, 1, 1, 1, 1) * px + torch.arange(px, device=dev)
        idx = (crop_part * c + torch.arange(c, device=dev).view(1, c, 1, 1, 1)) * ly + rows.view(m, 1, py, wy, 1)
        band = tmp.view(-1, ow // px).index_select(0, idx.reshape(-1)).view(m * c * py, wy, ow)
    del tmp
    kyc = (
        torch.mul(ky, unit)
        .view(m, 1, py, oh // py, wy)
        .expand(m, c, py, oh // py, wy)
        .reshape(m * c * py, oh // py, wy)
    )
    out = _pil_round(torch.baddbmm(half, kyc, band))  # [m*c*py, oh/py, ow]
    return out.view(m, c, oh, ow)


def _pil_round(acc: Tensor) -> Tensor:
    """``_pil_pass`` of accumulators already scaled by 2**-22 and offset by 1/2."""
    return acc.floor_().clamp_(0.0, 255.0)


# Exact float32 passes (``pil_window_levels`` with a float32 ``src``). A 22-bit fixed-point
# weight ``w`` is split as ``w = 2**7 * h + r`` (``h = round(w / 2**7)``, ``|r| <= 2**6``); each
# pass is then two float32 GEMMs (stacked in one): ``H = sum l * h`` and ``R = sum l * r`` over
# 8-bit levels ``l``. Every product and partial sum is an integer below 2**24 in magnitude when
# ``255 * sum |h| + 2**17 < 2**24`` and ``255 * sum |r| + 2**21 < 2**24`` (checked per output on
# the weights: normalised bicubic weights have ``sum |w| <= ~1.25 * 2**22``, i.e. ``sum |h| <=
# ~41,000 + taps / 2``; ``sum |r| <= 64 * taps`` allows ~800 taps), so both GEMMs are exact in any
# summation order. The rounding ``floor((2**7 H + R + 2**21) / 2**22)`` is then computed exactly
# in float32 as ``floor((H + floor((R + 2**21) / 2**7)) / 2**15)``: ``R + 2**21`` and the
# quotients by powers of two are exact, ``H + q`` is an integer below 2**24, and adding the
# dropped fraction ``((R + 2**21) mod 2**7) / 2**7 < 1`` to an integer never crosses a multiple
# of 2**15. Bit for bit the float64 passes (``tests/test_resample.py``).
_SPLIT_BITS = 7


def split_levels_dtype(device: torch.device | str) -> torch.dtype:
    """dtype of the levels ``pil_window_levels`` works on for ``device``: float32 (split, exact)
    on a CPU with full-precision float32 matmuls, else float64 (on CUDA a float32 GEMM may
    run in TF32; float64 GEMMs are fast there)."""
    dev = torch.device(device)
    if dev.type == "cpu" and torch.get_float32_matmul_precision() == "highest":
        return torch.float32
    return torch.float64


def _split_weights(k: Tensor) -> Tensor | None:
    """``[n, out, w]`` fixed-point weights -> float32 ``[n, 2, out, w]`` (``h``, ``r``), or None
    when a pass with them would not be exact in float32 (see ``_SPLIT_BITS``)."""
    h = torch.round(k * (1.0 / (1 << _SPLIT_BITS)))
    r = k - h * (1 << _SPLIT_BITS)
    limit = float(1 << 24)
    if (
        float(h.abs().sum(-1).max()) * 255 + (1 << 17) >= limit
        or float(r.abs().sum(-1).max()) * 255 + (1 << 21) >= limit
    ):
        return None
    return torch.stack([h, r], 1).float()


def _split_round(acc: Tensor, axis: int) -> Tensor:
    """8-bit levels from the stacked (``H``, ``R``) accumulators along ``axis`` (halves), float32."""
    hh, rr = acc.chunk(2, dim=axis)
    q = rr.add_(float(1 << (_PIL_PRECISION_BITS - 1))).mul_(1.0 / (1 << _SPLIT_BITS)).floor_()
    return torch.add(hh, q).mul_(1.0 / (1 << (_PIL_PRECISION_BITS - _SPLIT_BITS))).floor_().clamp_(0.0, 255.0)


def _split_passes(
    patches: Tensor, kx: Tensor, ky: Tensor, rows: Tensor | None, m: int, px: int, c: int, ly: int
) -> Tensor:
    """``pil_window_levels`` in exact float32 (float32 ``patches``, split weights)."""
    dev = patches.device
    _, _, ow, wx = kx.shape
    oh, wy = ky.shape[2], ky.shape[3]
    bo = ow // px
    # [m*px, wx, 2*bo]: the h columns of a part's outputs, then its r columns
    kxt = kx.view(m, 2, px, bo, wx).transpose(1, 2).reshape(m * px, 2 * bo, wx).transpose(1, 2)
    tmp = _split_round(torch.bmm(patches, kxt), 2)  # [m*px, c*ly, bo]
    del patches
    py = 1 if rows is None else rows.shape[1]
    if px == 1 and rows is None:
        band = tmp.view(m * c, ly, ow)
    else:
        if rows is None:
            rows = torch.arange(ly, device=dev).expand(m, 1, ly)
        crop_part = torch.arange(m, device=dev).view(m, 1, 1, 1, 1) * px + torch.arange(px, device=dev)
        idx = (crop_part * c + torch.arange(c, device=dev).view(1, c, 1, 1, 1)) * ly + rows.view(m, 1, py, wy, 1)
        band = tmp.view(-1, bo).index_select(0, idx.reshape(-1)).view(m * c * py, wy, ow)
    del tmp
    bh = oh // py
    kyc = (
        ky.view(m, 2, py, bh, wy)
        .transpose(1, 2)
        .reshape(m, 1, py, 2 * bh, wy)
        .expand(m, c, py, 2 * bh, wy)
        .reshape(m * c * py, 2 * bh, wy)
    )
    out = _split_round(torch.bmm(kyc, band), 1)  # [m*c*py, bh, ow]
    return out.view(m, c, oh, ow).double()
