"""Backbones: CLIP (open_clip ViTs, split before the last block) and DINO (timm ViTs)."""

from .clip import CLIPBackbone, SplitError
from .dino import DINOBackbone

__all__ = ["CLIPBackbone", "DINOBackbone", "SplitError"]
