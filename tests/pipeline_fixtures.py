"""Helpers for the pipeline-step tests (text cache, DINO cache, inference per shard).

Plain functions, no pytest fixtures: ``test_caches.py`` and ``test_infer.py``
build their miniature datasets once per module from these. Everything runs on
the tiny random-weight models with a small ``ABSConfig`` so a whole module takes
seconds on two CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from dataset_fixtures import Tree
from PIL import Image

from abs_model import TINY_CLIP, TINY_DINO, ABSConfig, ModelSpec
from tasks.defaults import METHOD_ORDER
from tasks.descriptions import validate_descriptions, write_descriptions
from tasks.run.evalspec import EvalSpec
from tasks.steps.dino_cache import read_dino_shard
from tasks.steps.shard import DatasetInfo, read_dataset_info, read_shard, shard_dataset
from tasks.store import Storage
from tasks.store.images import decode

#: Small enough for seconds per module, large enough that every code path runs.
SMALL_ABS = ABSConfig(n_crops=6, top_k=5, n_descriptions=4)
METHODS = METHOD_ORDER


# ---------------------------------------------------------------------- images and datasets
def photo_bytes(seed: int, width: int, height: int) -> bytes:
    """A JPEG with smooth structure (so DINO attention and crops differ between images)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


BAD_FILES = {
    # name -> (bytes, status the shard step gives it)
    "empty.jpg": (b"", "empty"),
    "text.jpg": (b"hello, this is not a JPEG at all\n", "not_image"),
}


def make_folder_source(
    root: str, classes: list[str], per_class: int | dict[str, int], bad: list[tuple[str, str]] = (), seed: int = 0
) -> dict[str, str]:
    """``root/<class>/img<k>.jpg`` photos (sizes vary), plus bad files ``[(class, name in BAD_FILES)]``.

    Returns ``{image_id: expected shard status}``.
    """
    t = Tree(root)
    expect: dict[str, str] = {}
    n = seed
    for ci, c in enumerate(classes):
        for k in range(per_class if isinstance(per_class, int) else per_class.get(c, 0)):
            n += 1
            rel = t.put(f"{c}/img{k}.jpg", photo_bytes(n, 56 + 12 * k + 4 * ci, 72 - 6 * k + 3 * ci))
            expect[rel] = "ok"
    for c, name in bad:
        data, status = BAD_FILES[name]
        expect[t.put(f"{c}/{name}", data)] = status
    return expect


def simple_descriptions(classnames: list[str], n: int = 5, tag: str = "") -> dict[str, list[str]]:
    return {c: [f"a photo of {c}{tag}, view {i}." for i in range(n)] for c in classnames}


def prepare_dataset(
    root: str,
    layout: str,
    source: str,
    dataset: str,
    *,
    images_per_shard: int,
    descriptions: str | None = None,
    n_descriptions: int = 5,
    m: int = 8,
) -> DatasetInfo:
    """Shard ``source`` into ``root`` and store simple descriptions for its text classes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # miniature sizes / partial subsets warn by design
        shard_dataset(layout, source, root, dataset, images_per_shard=images_per_shard, workers=1, progress=False)
    info = read_dataset_info(root, dataset)
    if descriptions is not None:
        ds = validate_descriptions(
            simple_descriptions(list(info.text_classnames), n_descriptions), list(info.text_classnames), m=m
        )
        write_descriptions(ds, root, descriptions)
    return info


def make_spec(dataset: str, descriptions: str, abs_config: ABSConfig = SMALL_ABS, **kw) -> EvalSpec:
    return EvalSpec(
        dataset=dataset,
        clip=ModelSpec(TINY_CLIP),
        dino=ModelSpec(TINY_DINO),
        descriptions=descriptions,
        abs=abs_config,
        device="cpu",
        **kw,
    )


# ---------------------------------------------------------------------- reading back
@dataclass
class ShardImages:
    """One shard as the model steps see it: every row, and the ok rows decoded."""

    ids: list[str]
    labels: list[int]
    class_names: list[str]
    status: list[str]
    error: list[str | None]
    width: list[int | None]
    height: list[int | None]
    ok: list[int]  # row positions with status ok
    images: dict[int, Image.Image]  # row position -> decoded image (ok rows)


def shard_images(storage: Storage, dataset: str, shard: int) -> ShardImages:
    t = read_shard(storage, dataset, shard).to_pydict()
    ok = [i for i, s in enumerate(t["status"]) if s == "ok"]
    return ShardImages(
        t["image_id"],
        t["label"],
        t["class_name"],
        t["status"],
        t["error"],
        t["width"],
        t["height"],
        ok,
        {i: decode(t["image"][i]) for i in ok},
    )


def cached_topk(storage: Storage, dino_path: str, ids: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` cells of the cached attention of ``ids`` (what inference feeds the classifier)."""
    cache = read_dino_shard(storage, dino_path)
    att = torch.tensor([cache[i][0] for i in ids], dtype=torch.float32)
    vals, idx = torch.topk(att, k, dim=1)
    return idx, vals


# ---------------------------------------------------------------------- counting forward passes
def clip_image_modules(clip) -> list[torch.nn.Module]:
    """Modules every CLIP image pass runs (``CLIPBackbone.trunk``/``head`` call them, not ``visual.forward``)."""
    v = clip.model.visual
    return [v.conv1, v.transformer.resblocks[-1]]


@contextlib.contextmanager
def count_forward(*modules: torch.nn.Module) -> Iterator[list[int]]:
    """Count forward calls of ``modules`` (real forward hooks): ``with count_forward(m) as n: ...; n[0]``."""
    n = [0]

    def hook(*_):
        n[0] += 1

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield n
    finally:
        for h in handles:
            h.remove()
