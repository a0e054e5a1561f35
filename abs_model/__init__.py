"""ABS (Attention-Based Selection, ICML 2025) zero-shot CLIP classification.

Pure torch + open_clip + timm; usable on its own::

    from abs_model import ABSClassifier, ABSConfig
    clf = ABSClassifier.from_specs("ViT-B-16", "vit_base_patch16_224.dino", classnames, descriptions)
    out = clf.predict(images, image_ids)
    out.pred("abs"), out.logits["clip"], out.geometry[0].raw_boxes
"""

from importlib import import_module

# Light names load at once; the torch-heavy ones on first use (PEP 562), so a command
# that only needs the configs (``abs-eval status``, ``sql``) does not import torch.
from .config import DEFAULT_PROMPT, METHODS, ABSConfig, ModelSpec

_LAZY = {
    "CLIPBackbone": ".backbones",
    "DINOBackbone": ".backbones",
    "SplitError": ".backbones",
    "ABSClassifier": ".classifier",
    "CropGeometry": ".classifier",
    "Prediction": ".classifier",
    "dino_attention": ".classifier",
    "cosine_logits": ".matching",
    "soft_match": ".matching",
    "image_generator": ".sampling",
    "TextBank": ".text",
    "WeightsUnavailableError": ".errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


TINY_CLIP = "abs-tiny-vit-b16"
TINY_CLIP_B32 = "abs-tiny-vit-b32"
TINY_DINO = "abs-tiny-dino-vit-b16"
#: Smaller still, for rehearsals of whole-dataset runs on a CPU: a 64 px CLIP ViT (patch 8,
#: an 8 x 8 token grid) and a 56 px DINO ViT (patch 4, ABS's 14 x 14 grid). Random weights.
MICRO_CLIP = "abs-micro-vit"
MICRO_DINO = "abs-micro-dino"

__all__ = [
    "ABSClassifier",
    "ABSConfig",
    "CLIPBackbone",
    "CropGeometry",
    "DEFAULT_PROMPT",
    "DINOBackbone",
    "METHODS",
    "ModelSpec",
    "Prediction",
    "SplitError",
    "TextBank",
    "cosine_logits",
    "image_generator",
    "soft_match",
    "dino_attention",
    "WeightsUnavailableError",
    "TINY_CLIP",
    "TINY_CLIP_B32",
    "TINY_DINO",
    "MICRO_CLIP",
    "MICRO_DINO",
]
