"""Shared fixtures: tiny random-weight models (built once per session) and test images.

Prefect: tests that run flows share one temporary Prefect server per session
(``prefect_server`` fixture); PREFECT_HOME points at a temporary folder so a test
run never touches the user's Prefect profile.
"""

from __future__ import annotations

import os
import tempfile

# Set before anything imports prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="abs-eval-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_clip():
    from abs_model import TINY_CLIP, CLIPBackbone

    return CLIPBackbone.load(TINY_CLIP)


@pytest.fixture(scope="session")
def tiny_clip_b32():
    from abs_model import TINY_CLIP_B32, CLIPBackbone

    return CLIPBackbone.load(TINY_CLIP_B32)


@pytest.fixture(scope="session")
def tiny_dino():
    from abs_model import TINY_DINO, DINOBackbone

    return DINOBackbone.load(TINY_DINO)


def make_image(h: int, w: int, seed: int) -> Image.Image:
    """A smooth-ish random RGB image (structure so crops differ)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
    noise = rng.integers(-20, 20, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


@pytest.fixture
def images():
    return [make_image(h, w, s) for s, (h, w) in enumerate([(120, 160), (200, 150), (97, 131), (64, 64)])]


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (real API, SQLite) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()


def demo_source(tmp_path_factory, per_class: int = 2):
    """A generated image folder (12 classes) and a matching CuPL-style description file."""
    import json

    from tasks.synthetic import demo_descriptions, write_demo_dataset

    base = tmp_path_factory.mktemp("demo-src")
    classes = write_demo_dataset(str(base / "images"), per_class=per_class)
    desc = base / "descriptions.json"
    desc.write_text(json.dumps(demo_descriptions(classes)))
    return str(base / "images"), str(desc)


TINY_FLOW_PARAMS = dict(
    layout="folder", clip_model="abs-tiny-vit-b16", clip_pretrained=None, dino_model="abs-tiny-dino-vit-b16",
    dino_pretrained=None, abs_config={"n_crops": 6, "top_k": 5, "n_descriptions": 4}, templates="none",
)
