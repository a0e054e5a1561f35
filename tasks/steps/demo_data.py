"""A small generated, labelled image set for the offline demo and tests.

Why generated: a fresh machine has no dataset and no internet. The images are
simple coloured shapes on noisy backgrounds in a plain class-per-folder layout,
written through fsspec so the demo exercises the same path as a real download.
"""

from __future__ import annotations

import io
import posixpath
import random

import fsspec
from PIL import Image, ImageDraw

COLORS = {"red": (200, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 200), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square", "triangle")

DEMO_CLASSES = [f"{c} {s}" for s in SHAPES for c in COLORS]


def _draw(name: str, rng: random.Random) -> Image.Image:
    color, shape = name.split(" ")
    w, h = rng.randint(96, 320), rng.randint(96, 320)
    bg = tuple(rng.randint(0, 255) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    for _ in range(12):  # background clutter
        x, y = rng.randrange(w), rng.randrange(h)
        d.line(
            [(x, y), (x + rng.randint(-40, 40), y + rng.randint(-40, 40))],
            fill=tuple(rng.randint(0, 255) for _ in range(3)),
            width=2,
        )
    side = rng.randint(min(w, h) // 3, int(min(w, h) * 0.8))
    x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
    box = [x0, y0, x0 + side, y0 + side]
    fill = COLORS[color]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(x0 + side // 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=fill)
    return img


def write_demo_dataset(url: str, per_class: int = 6, classes: list[str] | None = None, seed: int = 0) -> list[str]:
    """Write ``<url>/<class>/<nnn>.jpg`` images (a generic image-folder layout); returns the class list.

    Deterministic for a given seed; existing files are overwritten with the same bytes.
    """
    classes = list(classes or DEMO_CLASSES)
    fs, root = fsspec.core.url_to_fs(url)
    rng = random.Random(seed)
    for name in classes:
        folder = posixpath.join(root, name.replace(" ", "_"))
        fs.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            buf = io.BytesIO()
            _draw(name, rng).save(buf, format="JPEG", quality=90)
            with fs.open(posixpath.join(folder, f"{i:03d}.jpg"), "wb") as f:
                f.write(buf.getvalue())
    return classes


def demo_descriptions(classes: list[str], m: int = 8) -> dict[str, list[str]]:
    """CuPL-style sentences per class (what an LLM would write for these shapes)."""
    patterns = [
        "a {c} drawn on a cluttered background.",
        "a flat {color} shape with the outline of a {shape}.",
        "a simple {shape} filled with {color} paint.",
        "a bright {color} {shape} among thin coloured lines.",
        "a computer graphic of a {c}.",
        "a {shape} whose colour is {color}.",
        "a solid {c} in the middle of random strokes.",
        "an icon of a {c}.",
        "a geometric {shape}, coloured {color}.",
        "a {color} geometric figure shaped like a {shape}.",
    ]
    out = {}
    for c in classes:
        color, _, shape = c.partition(" ")
        out[c] = [p.format(c=c, color=color, shape=shape) for p in patterns[:m]]
    return out
