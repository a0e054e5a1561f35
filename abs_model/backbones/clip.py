"""CLIP through open_clip, with the visual tower split before its last block.

Why the split: ABS's feature-space crops take the token grid *before* the last
transformer block, resize a window of patch tokens back to the full grid, put the
image's own CLS token in front, and run only the last block and the head. Running
the trunk once per image and the last block once per crop is what makes the
feature branch cheap. ``head(trunk(x))`` equals ``encode_image(x)`` exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import ModelSpec
from ..device import autocast_context
from ..model_configs import register_clip_configs
from ..weights import WeightsInfo, announce_random, explain_download, seeded_init


class SplitError(ValueError):
    """The model's visual tower cannot be split into trunk + last block + head."""


@dataclass(frozen=True)
class ImageNorm:
    """Input resolution and normalisation of a vision model."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class CLIPBackbone(WeightsInfo, nn.Module):
    """An open_clip CLIP model exposing ``trunk`` / ``head`` / ``encode_text``."""

    def __init__(self, model: nn.Module, tokenizer, spec: ModelSpec):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        visual = model.visual
        self._check_splittable(visual, spec.name)
        self.visual = visual
        gh, gw = visual.grid_size
        if gh != gw:
            raise SplitError(f"{spec.name}: non-square patch grid {gh}x{gw} is not supported")
        self.grid = gh
        ih, iw = visual.image_size
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.norm = ImageNorm(
            size=int(ih),
            mean=tuple(cfg.get("mean", OPENAI_DATASET_MEAN)),
            std=tuple(cfg.get("std", OPENAI_DATASET_STD)),
        )
        self.embed_dim = int(visual.output_dim)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, spec: ModelSpec | str, device: str | torch.device = "cpu") -> CLIPBackbone:
        """Create from an open_clip name plus pretrained tag / local checkpoint / random.

        ``ModelSpec("ViT-B-16", "openai")`` downloads through open_clip's usual cache;
        ``ModelSpec("ViT-B-16", "/ckpt/model.pt")`` loads a local checkpoint;
        ``ModelSpec("abs-tiny-vit-b16")`` builds the shipped tiny config with random
        weights (seeded, so every process builds the same model).
        """
        import open_clip

        if isinstance(spec, str):
            spec = ModelSpec(spec)
        register_clip_configs()
        if spec.name not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model {spec.name!r}; known ViTs include ViT-B-32, ViT-B-16, ViT-L-14 "
                f"and the shipped tiny configs {register_clip_configs()}"
            )
        pretrained = None if spec.is_random else spec.pretrained
        if pretrained is not None and os.path.sep in pretrained and not os.path.exists(pretrained):
            raise FileNotFoundError(f"CLIP checkpoint not found: {pretrained}")
        with seeded_init(), explain_download("CLIP", spec.name, str(pretrained)):
            model = open_clip.create_model(spec.name, pretrained=pretrained, device="cpu", **spec.extra)
        if pretrained is None:
            announce_random("CLIP", spec.name)
        tokenizer = open_clip.get_tokenizer(spec.name)
        return cls(model, tokenizer, spec).to(device)

    @classmethod
    def architecture(cls, spec: ModelSpec | str) -> CLIPBackbone:
        """The backbone without weights: parameters on the ``meta`` device (no memory, nothing
        downloaded or read), so the split checks of ``__init__`` (a plain ViT with CLS pooling and
        a square grid) run in a fraction of a second, before a run (``flows/preflight.py``). It has
        no tokenizer and cannot compute."""
        import logging

        import open_clip

        if isinstance(spec, str):
            spec = ModelSpec(spec)
        register_clip_configs()
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # open_clip's "No pretrained weights loaded" is the point here
        try:
            with torch.device("meta"):
                model = open_clip.create_model(spec.name, pretrained=None, device="meta", **spec.extra)
        finally:
            logging.disable(previous)
        return cls(model, None, spec)

    @staticmethod
    def _check_splittable(visual: nn.Module, name: str) -> None:
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer):
            raise SplitError(
                f"{name}: visual tower is {type(visual).__name__}; ABS feature-space crops need an "
                "open_clip VisionTransformer (ResNet and timm-tower CLIP models cannot be split)"
            )
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise SplitError(
                f"{name}: visual tower pools with {getattr(visual, 'pool_type', '?')!r}"
                f"{' + attentional pooler' if getattr(visual, 'attn_pool', None) is not None else ''}; "
                "ABS needs CLS-token pooling (pool_type='tok', no attn_pool)"
            )

    @property
    def feature_dtype(self) -> torch.dtype:
        """float64 when the weights are float64 (exactness checks), else float32."""
        return torch.float64 if self.visual.proj.dtype == torch.float64 else torch.float32

    # ------------------------------------------------------------------ vision
    def _blocks(self, x: Tensor, blocks) -> Tensor:
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for blk in blocks:
            x = blk(x)
        if not batch_first:
            x = x.transpose(0, 1)
        return x

    def trunk(self, images: Tensor) -> Tensor:
        """Normalised images ``[B, 3, S, S]`` -> tokens ``[B, 1 + G*G, width]`` before the last block."""
        x = self.visual._embeds(images)
        return self._blocks(x, self.visual.transformer.resblocks[:-1])

    def head(self, tokens: Tensor) -> Tensor:
        """Tokens before the last block -> image embeddings ``[B, D]`` (not normalised)."""
        x = self._blocks(tokens, self.visual.transformer.resblocks[-1:])
        pooled, _ = self.visual._pool(x)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled

    def encode_image(self, images: Tensor) -> Tensor:
        """The split path end to end (equals open_clip's ``encode_image``)."""
        return self.head(self.trunk(images))

    # ------------------------------------------------------------------ text
    @torch.inference_mode()
    def encode_text(
        self,
        texts: list[str],
        batch_size: int = 256,
        progress: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> Tensor:
        """L2-normalised text embeddings ``[len(texts), D]`` (float32, on CPU)."""
        from tqdm.auto import tqdm

        device = next(self.model.parameters()).device
        # One output buffer, filled batch by batch: per-batch results kept in a list sit
        # between the freed activations of later batches and keep glibc from reusing or
        # returning that memory (a 131k-text bank grew the process by ~0.7 GB that way).
        out = torch.empty(len(texts), self.embed_dim, dtype=self.feature_dtype)
        starts = range(0, len(texts), batch_size)
        for s in tqdm(starts, desc="text", unit="batch", disable=not progress):
            tokens = self.tokenizer(texts[s : s + batch_size]).to(device)
            with autocast_context(device, autocast_dtype):
                f = self.model.encode_text(tokens)
            out[s : s + len(tokens)] = nn.functional.normalize(f.to(self.feature_dtype), dim=-1).cpu()
            del tokens, f
        return out
