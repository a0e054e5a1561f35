"""Pillow's 8-bit crop resampling as compiled integer loops: the crop views on a CPU.

Why: on a CPU the crop views were the largest part of ``ABSClassifier.predict``
(61 Pillow-exact resizes per image). The matrix-product formulation in
``preprocess.clip_views_batch`` suits a GPU, but on a CPU its products must cover
bands of outputs (each band reads ``(outputs + 3) x scale`` samples where the taps
need ``4 x scale``) and, to stay exact in float32, every pass runs twice (split
weights). Here each output reads exactly its taps, in 32-bit integers, as Pillow's
own C loops do -- but vectorised over rows (the image is transposed once, so a
column of the horizontal pass is contiguous) and compiled by numba: about 4-5x less
CPU time than the matrix products for ImageNet-size images at 64-224 px views.

The arithmetic is Pillow <= 12's (``ImagingResample``, horizontal pass first): 22-bit
fixed-point weights (``resample.aa_weights(..., pil_fixed=True)``, the same numbers
the matrix path uses), an accumulator starting at 2**21, ``acc >> 22`` clamped to
0..255 after each pass. Products and sums stay below 2**31 (``sum |w| <= ~1.25 *
2**22`` times 255), so int32 never overflows and the result equals the matrix path
bit for bit (``tests/test_resample_cpu.py``).

numba is a dependency, but optional at run time: ``available()`` says whether the kernels
can be used; ``preprocess.clip_views_batch`` falls back to the matrix products without it
(and on ``ABS_CPU_KERNELS=0``). GPUs keep the matrix products (the kernels run on the CPU).
"""

from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np
import torch
from torch import Tensor

__all__ = ["available", "crop_levels"]

_BITS = 22


def available() -> bool:
    """True when the compiled kernels can run here (numba installed). numba itself is imported
    on first use only: processes that never make crop views on a CPU do not pay for it."""
    global _available
    if _available is None:
        _available = importlib.util.find_spec("numba") is not None
    return _available


_available: bool | None = None


def _kernel(src, base, height, width, img, hx_first, hx_cnt, hx_w, vy_first, vy_cnt, vy_w, out, dest):
    """All crops: ``out[dest[n], c, o, i]`` = the 8-bit level of view ``n`` / 255.

    ``src``: every image's levels, uint8, transposed to ``[C, W, H]`` and flattened one
    image after the other (image ``b`` starts at ``base[b]``). Per crop ``n`` and output
    column ``i``: first source column ``hx_first[n, i]`` (absolute), ``hx_cnt[n, i]``
    taps with weights ``hx_w[n, i, :]``; per output row ``o`` the same for rows.
    """
    half = np.int32(1 << (_BITS - 1))
    n_crops, size = hx_first.shape
    c_n = out.shape[1]
    inv = 1.0 / 255.0
    max_rows = 0
    for n in range(n_crops):
        r = vy_first[n, size - 1] + vy_cnt[n, size - 1] - vy_first[n, 0]
        if r > max_rows:
            max_rows = r
    tmp = np.empty((max_rows, size), dtype=np.uint8)  # one channel's horizontal pass (8-bit levels)
    acc = np.empty(max_rows, dtype=np.int32)
    row = np.empty(size, dtype=np.int32)
    for n in range(n_crops):
        b = img[n]
        h = height[b]
        w_img = width[b]
        r0 = vy_first[n, 0]
        nr = vy_first[n, size - 1] + vy_cnt[n, size - 1] - r0
        d = dest[n]
        for c in range(c_n):
            plane = base[b] + c * w_img * h + r0
            # horizontal pass: output column i over rows r0 .. r0 + nr (contiguous in src);
            # slices, not offsets, let the compiler vectorise the row loops (~10x)
            for i in range(size):
                a = acc[:nr]
                a[:] = half
                first = hx_first[n, i]
                for t in range(hx_cnt[n, i]):
                    wt = hx_w[n, i, t]
                    col = plane + (first + t) * h
                    s = src[col : col + nr]
                    for k in range(nr):
                        a[k] += wt * s[k]
                for k in range(nr):
                    v = a[k] >> _BITS
                    tmp[k, i] = 0 if v < 0 else (255 if v > 255 else v)
            # vertical pass: output row o reads rows vy_first .. + vy_cnt of the horizontal pass
            for o in range(size):
                row[:] = half
                first = vy_first[n, o] - r0
                for t in range(vy_cnt[n, o]):
                    wt = vy_w[n, o, t]
                    s = tmp[first + t]
                    for i in range(size):
                        row[i] += wt * s[i]
                dst = out[d, c, o]
                for i in range(size):
                    v = row[i] >> _BITS
                    v = 0 if v < 0 else (255 if v > 255 else v)
                    dst[i] = v * inv


def _taps_kernel(start, length, resized, offset, bicubic, first, count, weights):
    """Per crop ``n`` and output ``i``, the 22-bit fixed-point taps of one axis: what
    ``taps_of(*resample.aa_weights(start, length, resized, offset, size, kernel, True, taps))``
    gives, computed operation by operation in the same IEEE double arithmetic and order
    (``resample._aa_bounds``, ``_aa_filter``, ``_sum_in_order``, ``_pil_fixed``), with no
    temporaries. ``weights`` arrives zeroed, ``[n, size, taps]`` with ``taps`` at least
    every crop's ``resample.aa_taps``."""
    n_crops, size = first.shape
    taps = weights.shape[2]
    fixed = np.float64(1 << _BITS)
    w = np.empty(taps, dtype=np.float64)
    for n in range(n_crops):
        ln = np.float64(length[n])
        scale = ln / np.float64(resized[n])
        support = (2.0 if bicubic else 1.0) * (scale if scale > 1.0 else 1.0)
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        off = np.float64(offset[n])
        for i in range(size):
            center = scale * ((np.float64(i) + off) + 0.5)
            xmin = np.trunc((center - support) + 0.5)
            if xmin < 0.0:
                xmin = 0.0
            xmax = np.trunc((center + support) + 0.5)
            if xmax > ln:
                xmax = ln
            total = 0.0
            k = 0
            for t in range(taps):
                j = xmin + np.float64(t)
                v = 0.0
                if j < xmax:
                    x = abs(((j - center) + 0.5) * invscale)
                    if bicubic:
                        if x < 1.0:
                            v = (((x * 1.5) - 2.5) * x) * x + 1.0
                        elif x < 2.0:
                            v = ((((x - 5.0) * x) + 8.0) * x - 4.0) * -0.5
                    else:
                        v = 1.0 - x
                        if v < 0.0:
                            v = 0.0
                    k += 1
                w[t] = v
                total = v if t == 0 else total + v
            if total == 0.0:
                total = 1.0
            for t in range(k):
                f = (w[t] / total) * fixed
                r = np.floor(abs(f) + 0.5)
                weights[n, i, t] = np.int32(-r if f < 0.0 else r)
            if k == 0:  # no tap: position 0 and one zero weight (``taps_of`` of an empty row)
                first[n, i] = 0
                count[n, i] = 1
            else:
                first[n, i] = np.int32(xmin) + start[n]
                count[n, i] = k


_compiled: dict = {}
_compile_lock = threading.Lock()
_KERNELS = {
    "crops": "_kernel",
    "levels": "_levels_kernel",
    "taps": "_taps_kernel",
    "transpose": "_transpose_kernel",
}  # resolved at first use


def _get_kernel(name: str = "crops"):
    """A compiled kernel, built once per process (threads share it). Cached on disk by numba
    next to this file or in its user-wide cache (~1 s to compile otherwise); where no cache
    location is writable, compiled in memory."""
    with _compile_lock:
        if name not in _compiled:
            import numba

            use_cache = os.environ.get("ABS_NUMBA_NOCACHE") is None
            try:
                _compiled[name] = numba.njit(cache=use_cache, nogil=True, boundscheck=False)(globals()[_KERNELS[name]])
            except RuntimeError:  # "cannot cache function ...: no locator available"
                _compiled[name] = numba.njit(cache=False, nogil=True, boundscheck=False)(globals()[_KERNELS[name]])
        return _compiled[name]


def taps_of(w: Tensor, col: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``resample.aa_weights`` output (weights ``[n, out, taps]`` float64 in fixed point, sample
    positions) as ``(first, count, weights int32)``: a tap is used when its position is the first
    one's plus its index (unused taps carry position 0 and weight 0, and the used ones are
    contiguous from the first)."""
    first = col[:, :, 0]
    used = col == first.unsqueeze(-1) + torch.arange(col.shape[-1])
    count = used.sum(-1)
    return (first.to(torch.int32).numpy(), count.to(torch.int32).numpy(), w.to(torch.int32).contiguous().numpy())


def _levels_kernel(x, dst):
    """``dst[c, w, h] = round(x[c, h, w] * 255)`` (float64 product, half to even, as torch's
    ``round``), for 8-bit levels stored as floats."""
    c_n, h, w = x.shape
    for c in range(c_n):
        for i in range(h):
            row = x[c, i]
            for j in range(w):
                dst[c, j, i] = np.uint8(np.rint(np.float64(row[j]) * 255.0))


def _transpose_kernel(x, dst):
    """``dst[c, w, h] = x[c, h, w]`` for uint8 levels, in 64 x 64 tiles (a tile of each side stays
    in cache: about 2.5x less CPU than NumPy's strided copy for a 4000x3000 photo)."""
    c_n, h, w = x.shape
    for c in range(c_n):
        for i0 in range(0, h, 64):
            i1 = min(h, i0 + 64)
            for j0 in range(0, w, 64):
                j1 = min(w, j0 + 64)
                for j in range(j0, j1):
                    for i in range(i0, i1):
                        dst[c, j, i] = x[c, i, j]


def transposed_levels(xs, used) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The images' 8-bit levels ``round(x * 255)`` (a uint8 image: its values) as uint8 ``[C, W, H]``
    planes, flattened one image after the other; and per image (indexed as ``xs``) its start, height and width."""
    base: np.ndarray = np.zeros(len(xs), dtype=np.int64)
    hh: np.ndarray = np.ones(len(xs), dtype=np.int64)
    ww: np.ndarray = np.ones(len(xs), dtype=np.int64)
    total = sum(xs[b].numel() for b in used)
    src = np.empty(total, dtype=np.uint8)
    a = 0
    for b in used:
        x = xs[b]
        c, h, w = x.shape
        dst = src[a : a + x.numel()].reshape(c, w, h)
        if x.dtype == torch.uint8:  # already the levels (``preprocess.model_image``)
            _get_kernel("transpose")(x.contiguous().numpy(), dst)
        else:
            _get_kernel("levels")(x.contiguous().numpy(), dst)
        base[b], hh[b], ww[b] = a, h, w
        a += x.numel()
    return src, base, hh, ww


def axis_taps(
    start: Tensor, length: Tensor, resized: Tensor, offset: Tensor, size: int, taps: int, kernel: str = "bicubic"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(first, count, weights)`` of one axis per crop (CPU int64 geometry), as ``taps_of``
    returns them for ``resample.aa_weights`` with ``pil_fixed``: by the compiled loop, ~100x
    less CPU time than the tensor expression for 64-output crops."""
    if kernel not in ("bicubic", "bilinear"):
        raise ValueError(f"unknown antialias kernel {kernel!r} (bicubic or bilinear)")
    n = int(start.shape[0])
    first: np.ndarray = np.empty((n, size), dtype=np.int32)
    count: np.ndarray = np.empty((n, size), dtype=np.int32)
    weights: np.ndarray = np.zeros((n, size, max(1, int(taps))), dtype=np.int32)
    as_np = [np.ascontiguousarray(a.numpy(), dtype=np.int64) for a in (start, length, resized, offset)]
    _get_kernel("taps")(*as_np, kernel == "bicubic", first, count, weights)
    return first, count, weights


def crop_levels(src, base, hh, ww, img, hx, vy, out: Tensor, dest: Tensor) -> None:
    """Run the kernel: views ``/ 255`` written into ``out`` (CPU float tensor ``[n_out, C, S, S]``,
    contiguous) at rows ``dest``. ``hx``/``vy``: ``taps_of`` of each axis."""
    kernel = _get_kernel()
    kernel(
        src,
        base,
        hh,
        ww,
        img.numpy().astype(np.int64),
        hx[0],
        hx[1],
        hx[2],
        vy[0],
        vy[1],
        vy[2],
        out.numpy(),
        dest.numpy().astype(np.int64),
    )
