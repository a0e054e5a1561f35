"""Model FLOPs of one ABS image, counted with torch's FlopCounterMode, attention included.

What the counter sees: it counts FLOPs (2 per multiply-add) of the aten matmul and
convolution ops it has formulas for (mm, addmm, bmm, convolution, and the fused
scaled-dot-product-attention kernels of CUDA). Two fused paths hide matmuls from it:

* ``nn.MultiheadAttention``'s inference fast path (open_clip's blocks): switched off
  while counting, so the projections show up as addmm;
* ``F.scaled_dot_product_attention`` on CPU dispatches to a flash kernel the counter
  has no formula for (timm's blocks, and open_clip's once the fast path is off), so
  QK^T and AV were silently missing (2,254 instead of ~2,350 GFLOP per image at
  N=60). While counting, SDPA is pinned to its math backend, which decomposes into
  bmm ops the counter does count, on every device.

The attention matmuls counted that way are checked against the analytic
4 * T^2 * D per full block (QK^T and AV, T tokens, width D; the DINO pass needs only
the CLS row of its last block: 4 * T * D there, QK^T of one query row only, since
ABS reads the attention probabilities, not AV).

Still not counted (stated in every benchmark's output): elementwise work
(LayerNorm, GELU, softmax, residual adds, scaling, normalisation), preprocessing
(crop, resize, normalise), the bicubic resampling of the feature crops (two small
batched matmuls per image, done outside the model) and the soft matching against
the text bank (reported separately as ``matching``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

NOT_COUNTED = (
    "elementwise ops (LayerNorm, GELU, softmax, residual adds), preprocessing, the bicubic "
    "resampling of feature crops, the soft matching (shown separately)"
)


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """``(total FLOPs, FLOPs by aten op)`` of ``fn()``, with attention matmuls visible to the counter."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    by_op = {str(k).removeprefix("aten."): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
    return int(fc.get_total_flops()), by_op


def _attention_flops(by_op: dict[str, int]) -> int:
    """The attention part of a count: bmm plus any fused SDPA kernel the counter has a formula for."""
    return sum(v for k, v in by_op.items() if k == "bmm" or "scaled_dot_product" in k)


def abs_model_flops(
    clip,
    dino,
    n_crops: int,
    device: torch.device | str,
    raw_crops: bool = True,
    feature_crops: bool = True,
    classes: int = 0,
    descriptions: int = 0,
) -> dict[str, Any]:
    """Per-image model FLOPs of ABS: CLIP on 1 global view + N raw crops, the last block + head on
    N feature crops, one DINO pass; plus the analytic attention check and the matching FLOPs."""
    device = torch.device(device)
    wdtype = next(clip.parameters()).dtype
    S = clip.norm.size
    x = torch.randn(1, 3, S, S, device=device, dtype=wdtype)
    xd = torch.randn(1, 3, dino.norm.size, dino.norm.size, device=device, dtype=next(dino.parameters()).dtype)
    full, full_ops = count_flops(lambda: clip.encode_image(x))
    with torch.inference_mode():
        tok = clip.trunk(x)
    last, last_ops = count_flops(lambda: clip.head(tok))
    dino_f, dino_ops = count_flops(lambda: dino.cls_attention(xd))

    n_raw = n_crops if raw_crops else 0
    n_feat = n_crops if feature_crops else 0
    per_image = (1 + n_raw) * full + n_feat * last + dino_f
    attn = (1 + n_raw) * _attention_flops(full_ops) + n_feat * _attention_flops(last_ops) + _attention_flops(dino_ops)

    # analytic attention: 4 T^2 D per full block (QK^T + AV); DINO's last block: the CLS row's QK^T only
    T_c, D_c, L_c = clip.grid**2 + 1, tok.shape[-1], len(clip.visual.transformer.resblocks)
    m = dino.model
    T_d, D_d, L_d = dino.grid**2 + dino.num_prefix_tokens, m.embed_dim, len(m.blocks)
    a_full, a_last = 4 * T_c**2 * D_c * L_c, 4 * T_c**2 * D_c
    a_dino = 4 * T_d**2 * D_d * (L_d - 1) + 2 * T_d * D_d
    attn_analytic = (1 + n_raw) * a_full + n_feat * a_last + a_dino
    matching = 2 * (n_raw + n_feat) * classes * descriptions * clip.embed_dim
    return {
        "per_image": per_image,
        "clip_full": full,
        "clip_full_calls": 1 + n_raw,
        "clip_last_block": last,
        "clip_last_block_calls": n_feat,
        "dino": dino_f,
        "attention": attn,
        "attention_analytic": attn_analytic,
        "attention_counted": abs(attn - attn_analytic) <= 0.01 * max(attn_analytic, 1),
        "matching": matching,
        "by_op_clip_full": full_ops,
        "not_counted": NOT_COUNTED,
    }


def describe(f: dict[str, Any]) -> str:
    """One line per figure, for benchmark output."""
    g = 1e9
    return (
        f"model FLOPs per image: {f['per_image'] / g:.1f} G = CLIP full {f['clip_full'] / g:.2f} G x "
        f"{f['clip_full_calls']} + last block {f['clip_last_block'] / g:.2f} G x {f['clip_last_block_calls']} + "
        f"DINO {f['dino'] / g:.2f} G; of which attention matmuls (QK^T, AV) {f['attention'] / g:.1f} G "
        f"(analytic 4*T^2*D per block: {f['attention_analytic'] / g:.1f} G, "
        f"{'agrees' if f['attention_counted'] else 'DIFFERS'}); matching {f['matching'] / g:.1f} G extra\n"
        f"  not counted: {f['not_counted']}"
    )
