"""Soft matching of crop features against (class, description) text features.

ABS scores every crop against every (class, description) pair jointly:
  s[n, c, m] = v_n . t[c, m] / tau
  P[n]       = softmax of s[n] over all (c, m) pairs together
  logit[c]   = sum_n sum_m P[n, c, m] * s[n, c, m]
Classes with fewer than M descriptions are padded; the mask keeps padded pairs out
of the softmax and out of the sum (the authors' code cannot handle that case).
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_match(
    crop_features: Tensor,
    text_features: Tensor,
    text_mask: Tensor | None,
    tau: float,
    chunk: int = 8,
    check_mask: bool = True,
) -> Tensor:
    """Soft-matching logits.

    Args:
        crop_features: ``[B, n, D]`` L2-normalised crop embeddings.
        text_features: ``[C, M, D]`` L2-normalised description embeddings.
        text_mask: ``[C, M]`` bool, True where a description exists; None = all valid.
        tau: matching temperature.
        chunk: images per matmul (bounds memory at ``chunk * n * C * M`` floats).
        check_mask: reject a mask with no valid pair (reads the mask back from the
            device; a caller that checked its mask once passes False).

    Returns:
        ``[B, C]`` logits, in the dtype of ``crop_features``.
    """
    if crop_features.dim() != 3 or text_features.dim() != 3:
        raise ValueError("crop_features must be [B, n, D] and text_features [C, M, D]")
    b, n, d = crop_features.shape
    c, m, d2 = text_features.shape
    if d != d2:
        raise ValueError(f"feature sizes differ: crops {d}, text {d2}")
    flat_text = text_features.reshape(c * m, d).to(crop_features.dtype)
    valid = None
    if text_mask is not None:
        if tuple(text_mask.shape) != (c, m):
            raise ValueError(f"text_mask must be [{c}, {m}], got {tuple(text_mask.shape)}")
        valid = text_mask.reshape(1, 1, c * m).to(torch.bool).to(crop_features.device)
        if check_mask and not bool(valid.any()):
            raise ValueError("text_mask masks every description")
    invalid = None if valid is None else ~valid
    out = []
    for s0 in range(0, b, chunk):
        s = crop_features[s0 : s0 + chunk] @ flat_text.T / tau  # [b', n, C*M]
        if invalid is not None:
            s = s.masked_fill(invalid, float("-inf"))
        p = torch.softmax(s, dim=-1)
        contrib = p * s
        if invalid is not None:
            contrib = contrib.masked_fill(invalid, 0.0)
        out.append(contrib.reshape(-1, n, c, m).sum(dim=(1, 3)))
    return torch.cat(out) if out else crop_features.new_zeros(0, c)


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
