"""ABS (Attention-Based Selection, ICML 2025) zero-shot CLIP classification.

Pure torch + open_clip + timm; usable on its own::

    from abs_model import ABSClassifier, ABSConfig
    clf = ABSClassifier.from_specs("ViT-B-16", "vit_base_patch16_224.dino", classnames, descriptions)
    out = clf.predict(images, image_ids)
    out.pred("abs"), out.logits["clip"], out.geometry[0].raw_boxes
"""

from .backbones import CLIPBackbone, DINOBackbone, SplitError
from .classifier import METHODS, ABSClassifier, CropGeometry, Prediction, dino_attention
from .config import ABSConfig, ModelSpec
from .matching import cosine_logits, soft_match
from .sampling import image_generator
from .text import DEFAULT_PROMPT, TextBank
from .weights import WeightsUnavailableError

TINY_CLIP = "abs-tiny-vit-b16"
TINY_CLIP_B32 = "abs-tiny-vit-b32"
TINY_DINO = "abs-tiny-dino-vit-b16"

__all__ = [
    "ABSClassifier", "ABSConfig", "CLIPBackbone", "CropGeometry", "DEFAULT_PROMPT", "DINOBackbone",
    "METHODS", "ModelSpec", "Prediction", "SplitError", "TextBank", "cosine_logits", "image_generator",
    "soft_match", "dino_attention", "WeightsUnavailableError", "TINY_CLIP", "TINY_CLIP_B32", "TINY_DINO",
]
