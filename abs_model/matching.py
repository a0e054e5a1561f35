"""Soft matching of crop features against (class, description) text features.

ABS scores every crop against every (class, description) pair jointly:
  s[n, c, m] = v_n . t[c, m] / tau
  P[n]       = softmax of s[n] over all (c, m) pairs together
  logit[c]   = sum_n sum_m P[n, c, m] * s[n, c, m]
Classes with fewer than M descriptions are padded; the mask keeps padded pairs out
of the softmax and out of the sum (the authors' code cannot handle that case).

How (``soft_match``): the softmax is never materialised over all C*M pairs. With
``e = exp(s - shift)`` and ``Z[n] = sum_{c,m} e``, ``logit[c] = sum_n numer[n, c] / Z[n]``
where ``numer[n, c] = sum_m e * s``; both sums are accumulated over blocks of
(rows = crops, classes) small enough to stay in cache on a CPU (``matching_chunks``),
so no ``[B, crops, C*M]`` temporary exists. The shift is

* zero when ``|s|`` is bounded well inside the float range (Cauchy-Schwarz:
  ``|s| <= max|v| max|t| / tau``; unit features at tau >= ~0.023): then no max pass
  and no rescaling at all;
* otherwise each block's own row maximum, and the blocks are rescaled to the global
  maximum at the end (``exp(block_max - max)``), a two-level softmax.

Exponentials are base 2 (``exp2`` of ``s * log2(e)``: the features are pre-scaled by
``log2(e) / tau``, the logits multiplied by ``ln 2`` once at the end): the same values
within float rounding, and ``exp2`` is ~2.5x faster than ``exp`` on the CPUs here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Bytes per [rows, classes * M] temporary of ``soft_match`` (two are alive at once).
# CPU: about the L2 cache (blocks of ~1 MiB were fastest in a sweep on a 2-core EPYC,
# 0.25 MiB ~25% slower from loop overhead, 5 MiB ~30% slower); CUDA: large blocks, few
# kernel launches.
_CPU_BLOCK_BYTES = 1 << 20
_DEVICE_BLOCK_BYTES = 1 << 28
# Largest |s| in log2 units (|s| * log2(e)) for which the shift is left out: exp2 of
# +-64 and sums of up to 2**40 such terms stay normal floats in float32.
_NO_SHIFT_LOG2 = 64.0
_LOG2E = 1.0 / math.log(2.0)


def matching_chunks(device: torch.device | str, images: int, crops: int, m: int, itemsize: int = 4) -> tuple[int, int]:
    """``(images_per_block, class_chunk)`` for ``soft_match`` of ``[images, crops, D]`` features
    against ``m`` descriptions per class.

    A block is whole images' crops (so an image's numbers do not depend on the batch it
    came in: the same products in the same shapes) times ``class_chunk`` classes. One
    block's temporaries are two ``[rows, class_chunk * m]`` tensors of ``itemsize`` bytes
    (the scores and their exponentials): ~2 x 1 MiB on a CPU (one image per block, whose
    2N = 120 crops and ~40 classes stay in cache), ~2 x 256 MiB on CUDA; see ``soft_match``.
    """
    dev = torch.device(device)
    crops, m = max(crops, 1), max(m, 1)
    if dev.type == "cpu":
        budget, per = _CPU_BLOCK_BYTES, 1  # one image per block: its products never change shape
    else:
        budget = _DEVICE_BLOCK_BYTES
        per = max(1, min(images, budget // (crops * m * itemsize)))
    per = min(per, max(images, 1))
    return per, max(1, budget // (per * crops * m * itemsize))


def soft_match(
    crop_features: Tensor,
    text_features: Tensor,
    text_mask: Tensor | None,
    tau: float,
    chunk: int | None = None,
    check_mask: bool = True,
    class_chunk: int | None = None,
    classes: Tensor | None = None,
) -> Tensor:
    """Soft-matching logits.

    Args:
        crop_features: ``[B, n, D]`` crop embeddings (L2-normalised in ABS).
        text_features: ``[C, M, D]`` description embeddings (L2-normalised in ABS).
        text_mask: ``[C, M]`` bool, True where a description exists; None = all valid.
        tau: matching temperature.
        chunk: images per row block (None: ``matching_chunks`` for the device).
        check_mask: reject a mask with no valid pair (reads the mask back from the
            device; a caller that checked its mask once passes False).
        class_chunk: classes per block (None: ``matching_chunks`` for the device).
        classes: optional int64 class indices: return only these columns (the
            softmax still runs over every class).

    Returns:
        ``[B, C]`` logits (``[B, len(classes)]``), in the dtype of ``crop_features``.

    Memory: besides the inputs and the ``[B*n, C]`` per-(crop, class) sums (float32;
    float64 for float64 inputs), two ``[rows, class_chunk * M]`` block temporaries, i.e.
    ``2 * rows * class_chunk * M * 4`` bytes (``rows``: the crops of ``images_per_block``): ~2 MiB on a CPU, ~512 MiB on CUDA
    with the defaults of ``matching_chunks``, whatever B and C; and with a mask the
    block's mask slice (and, in the shifted mode, one more block temporary).
    Before this, the dense computation held about four ``[8, n, C*M]`` float32
    temporaries (~770 MB at n = 120, C*M = 50,000).
    """
    if crop_features.dim() != 3 or text_features.dim() != 3:
        raise ValueError("crop_features must be [B, n, D] and text_features [C, M, D]")
    b, n, d = crop_features.shape
    c, m, d2 = text_features.shape
    if d != d2:
        raise ValueError(f"feature sizes differ: crops {d}, text {d2}")
    out_dtype = crop_features.dtype
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    dev = crop_features.device
    invalid = None
    if text_mask is not None:
        if tuple(text_mask.shape) != (c, m):
            raise ValueError(f"text_mask must be [{c}, {m}], got {tuple(text_mask.shape)}")
        valid = text_mask.to(dev, torch.bool)
        if check_mask and not bool(valid.any()):
            raise ValueError("text_mask masks every description")
        invalid = ~valid
    n_out = c if classes is None else int(classes.numel())
    rows = b * n
    if rows == 0 or c == 0:
        return crop_features.new_zeros(b, n_out)
    per, cc = matching_chunks(dev, b, n, m, torch.finfo(dtype).bits // 8)
    row_block = max(1, int(chunk) if chunk is not None else per) * n
    if class_chunk is not None:
        cc = max(1, int(class_chunk))
    text = text_features.to(dtype)
    # scores in log2 units: s2 = v . t * log2(e) / tau
    v = (crop_features.reshape(rows, d).to(dtype) * (_LOG2E / tau)).contiguous()
    # |s2| <= max|v'| max|t| (Cauchy-Schwarz); padded descriptions count too (they are
    # multiplied before the mask drops them, so they must not overflow either)
    bound = float(v.norm(dim=1).max() * text.reshape(-1, d).norm(dim=1).max())
    shifted = not bound * (1 + 1e-3) <= _NO_SHIFT_LOG2
    numer = torch.empty(rows, c, dtype=dtype, device=dev)
    n_chunks = -(-c // cc)
    zs = torch.zeros(rows, n_chunks if shifted else 1, dtype=dtype, device=dev)
    shifts = torch.empty(rows, n_chunks if shifted else 0, dtype=dtype, device=dev)  # per chunk, when shifted
    for k, c0 in enumerate(range(0, c, cc)):
        c1 = min(c, c0 + cc)
        tk = text[c0:c1].reshape(-1, d).T
        inv = None if invalid is None else invalid[c0:c1].reshape(1, -1)
        for r0 in range(0, rows, row_block):
            r1 = min(rows, r0 + row_block)
            s = torch.mm(v[r0:r1], tk)  # [r, (c1 - c0) * m]
            if shifted:
                e = s if inv is None else s.masked_fill(inv, float("-inf"))
                mx = e.amax(dim=1, keepdim=True)
                shifts[r0:r1, k : k + 1] = mx
                e = torch.sub(e, torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)).exp2_()
                zs[r0:r1, k] = e.sum(dim=1)
            else:
                e = torch.exp2(s)
                if inv is not None:
                    e.masked_fill_(inv, 0.0)
                zs[r0:r1, 0] += e.sum(dim=1)
            # masked pairs: e = 0 times a finite score
            torch.sum(e.mul_(s).view(r1 - r0, c1 - c0, m), dim=2, out=numer[r0:r1, c0:c1])
            del s, e
    if shifted:
        top = shifts.amax(dim=1, keepdim=True)
        scale = torch.exp2(shifts - top)  # -inf (a block of masked pairs only) -> 0
        z = (zs * scale).sum(dim=1, keepdim=True)
        numer.mul_(scale.repeat_interleave(cc, dim=1)[:, :c])
    else:
        z = zs
    if classes is not None:
        numer = numer.index_select(1, classes.to(dev))
    # logit[c] = ln 2 * sum_n numer[n, c] / Z[n]; a sum over the crop axis (not a batched
    # product, whose rounding may depend on the batch size)
    w = (math.log(2.0) / z).view(b, n, 1)
    return numer.view(b, n, n_out).mul_(w).sum(dim=1).to(out_dtype)


def cosine_logits(image_features: Tensor, class_features: Tensor, scale: float = 100.0, chunk: int = 16) -> Tensor:
    """Plain zero-shot logits: ``scale * g . w_c`` for normalised features.

    Computed as a row-wise float64 product-and-sum rather than a matmul, so an
    image's logits do not depend on how many images share the call (a matmul of
    one row and of many rows round differently in the last bits).
    """
    w = class_features.to(torch.float64)
    out = []
    for s0 in range(0, image_features.shape[0], chunk):
        g = image_features[s0 : s0 + chunk].to(torch.float64)
        out.append((g[:, None, :] * w[None]).sum(-1))
    res = torch.cat(out) if out else image_features.new_zeros(0, w.shape[0], dtype=torch.float64)
    return (scale * res).to(image_features.dtype)
