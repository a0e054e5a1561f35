"""Helpers shared by test modules (plain functions and constants; fixtures are in conftest.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def make_image(h: int, w: int, seed: int) -> Image.Image:
    """A smooth-ish random RGB image (structure so crops differ)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
    noise = rng.integers(-20, 20, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


def demo_source(tmp_path_factory, per_class: int = 2):
    """A generated image folder (12 classes) and a matching CuPL-style description file."""
    import json

    from tasks.steps.demo_data import demo_descriptions, write_demo_dataset

    base = tmp_path_factory.mktemp("demo-src")
    classes = write_demo_dataset(str(base / "images"), per_class=per_class)
    desc = base / "descriptions.json"
    desc.write_text(json.dumps(demo_descriptions(classes)))
    return str(base / "images"), str(desc)


TINY_FLOW_PARAMS = dict(
    layout="folder",
    clip_model="abs-tiny-vit-b16",
    clip_pretrained=None,
    dino_model="abs-tiny-dino-vit-b16",
    dino_pretrained=None,
    abs_config={"n_crops": 6, "top_k": 5, "n_descriptions": 4},
    templates="none",
)


def invoke_cli(*args: str):
    """``abs-eval ARGS`` in process (typer's CliRunner); returns its result."""
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, list(args))


def one_error_line(res) -> str:
    """A command-line mistake: exit code 2, one ``error:`` line, no traceback; returns the line."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.output
    return errors[0]
