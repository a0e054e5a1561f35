"""DINO through timm: CLS-to-patch attention of the last block, head-averaged.

Why compute it by hand: timm's blocks use fused scaled-dot-product attention,
which never materialises the attention probabilities. ABS only needs the CLS
query's row of the last block, so we run blocks[:-1] normally and compute that
one row from the last block's own qkv projection (same norms, same scale). A test
checks it against timm's unfused path.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from ..config import ModelSpec
from ..model_configs import dino_configs
from ..weights import WeightsInfo, announce_random, explain_download, seeded_init
from .clip import ImageNorm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DINOBackbone(WeightsInfo, nn.Module):
    """A timm ViT used only for its last-block CLS attention over patches."""

    def __init__(self, model: nn.Module, spec: ModelSpec):
        super().__init__()
        self.model = model.eval()
        self.spec = spec
        if not hasattr(model, "blocks") or not hasattr(model.blocks[-1], "attn"):
            raise ValueError(f"{spec.name}: not a timm VisionTransformer with attention blocks")
        attn = model.blocks[-1].attn
        if not hasattr(attn, "qkv") or attn.qkv is None:
            raise ValueError(f"{spec.name}: last block has no fused qkv projection; unsupported attention type")
        gh, gw = model.patch_embed.grid_size
        if gh != gw:
            raise ValueError(f"{spec.name}: non-square patch grid {gh}x{gw}")
        self.grid = gh
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        size = model.patch_embed.img_size[0]
        self.norm = ImageNorm(
            size=int(size),
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
        )

    @classmethod
    def load(cls, spec: ModelSpec | str, device: str | torch.device = "cpu") -> DINOBackbone:
        """Create from a timm name (``vit_base_patch16_224.dino``) or a shipped config name.

        ``pretrained``: ``"timm"`` downloads timm's weights for the tag, a file path
        loads a local checkpoint, ``None``/``"random"`` gives seeded random weights.
        """
        import timm

        if isinstance(spec, str):
            spec = ModelSpec(spec)
        timm_name, kwargs = cls.timm_args(spec)
        pretrained = None if spec.is_random else spec.pretrained
        if pretrained is None:
            with seeded_init():
                model = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
            announce_random("DINO", spec.name)
        elif pretrained == "timm":
            with explain_download("DINO", timm_name, "timm"):
                model = timm.create_model(timm_name, pretrained=True, num_classes=0, **kwargs)
        else:
            if not os.path.exists(pretrained):
                raise FileNotFoundError(f"DINO checkpoint not found: {pretrained}")
            with explain_download("DINO", timm_name, pretrained):
                model = timm.create_model(
                    timm_name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": pretrained}, **kwargs
                )
        return cls(model, spec).to(device)

    @staticmethod
    def timm_args(spec: ModelSpec) -> tuple[str, dict]:
        """The timm architecture name and ``create_model`` keyword arguments of ``spec``
        (a shipped config name resolves to its timm architecture plus overrides)."""
        shipped = dino_configs()
        kwargs = dict(spec.extra)
        if spec.name in shipped:
            return shipped[spec.name]["timm_model"], {**shipped[spec.name]["kwargs"], **kwargs}
        return spec.name, kwargs

    @classmethod
    def architecture(cls, spec: ModelSpec | str) -> DINOBackbone:
        """The backbone without weights: parameters on the ``meta`` device (no memory, nothing
        downloaded or read), so its grid, input size and the checks of ``__init__`` are known in a
        fraction of a second. For checks before a run (``flows/preflight.py``); it cannot compute."""
        import timm

        if isinstance(spec, str):
            spec = ModelSpec(spec)
        timm_name, kwargs = cls.timm_args(spec)
        with torch.device("meta"):
            model = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
        return cls(model, spec)

    def cls_attention(self, images: Tensor) -> Tensor:
        """Normalised images ``[B, 3, S, S]`` -> CLS-to-patch attention ``[B, G*G]`` (head mean)."""
        m = self.model
        x = m.patch_embed(images)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        for blk in m.blocks[:-1]:
            x = blk(x)
        last = m.blocks[-1]
        attn = last.attn
        h = last.norm1(x)
        b, n, _ = h.shape
        qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        scores = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # [B, heads, 1, N]
        probs = scores.float().softmax(dim=-1)[:, :, 0, self.num_prefix_tokens :]
        return probs.mean(dim=1)
