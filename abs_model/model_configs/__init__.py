"""Architecture configs shipped with the package, kept as data (JSON).

``clip/*.json`` are open_clip model configs (same schema as open_clip's own
``model_configs``) registered with open_clip under their file stem, so
``abs-tiny-vit-b16`` is created exactly like ``ViT-B-16``. ``dino/*.json`` name a
timm architecture plus keyword overrides. The tiny ones keep the real patch grids
(14x14 for /16, 7x7 for /32 at 224 px) with a few narrow layers, so tests and the
offline demo exercise the real code paths in seconds on a CPU. The micro ones
(``abs-micro-vit``: 64 px, patch 8, an 8 x 8 grid; ``abs-micro-dino``: 56 px, patch
4, ABS's 14 x 14 grid) are smaller still, for rehearsing a 50,000-image run on a
CPU: their grids are not those of any stock model, so every consumer reads grid,
patch and input size from the loaded model (``tasks.run.context.model_geometry``).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

CONFIG_DIR = Path(__file__).parent


@cache
def register_clip_configs() -> list[str]:
    """Make the shipped CLIP configs known to open_clip (idempotent); returns their names."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR / "clip")
    return sorted(p.stem for p in (CONFIG_DIR / "clip").glob("*.json"))


def dino_configs() -> dict[str, dict]:
    """Shipped DINO configs by name: ``{"timm_model": ..., "kwargs": {...}}``."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((CONFIG_DIR / "dino").glob("*.json"))}
