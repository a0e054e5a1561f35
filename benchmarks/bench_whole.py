"""Whole-image resizes: banded (``resize_whole_batch``) vs dense (``resize_whole_dense``).

ImageNet-sized JPEG-decoded images (500x375 and 375x500, alternating; decoding not
timed). Measured side by side in one process, alternating the order each round,
best of ``--repeats``:

* the DINO view resize (whole image to 224x224, bilinear) and a ``limit_size``-style
  downscale (bicubic, longer side to ``--limit-side``): dense per image vs banded,
  per image and batched, ms/image, checked bit for bit (``torch.equal``);
* ``dino_attention`` with the tiny random DINO (``abs-tiny-dino-vit-b16``): the
  current banded path vs the previous one (the same function with dense per-image
  resizes, ``dense_dino_attention`` below), images/s;
* with ``--shard``: ``tasks.steps.dino_cache.dino_shard`` on one shard of those images
  (decoding, parquet write included), the same two paths, images/s.

    .venv/bin/python benchmarks/bench_whole.py --images 32 --repeats 3
    .venv/bin/python benchmarks/bench_whole.py --threads 1 --shard
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from abs_model import TINY_DINO, DINOBackbone, dino_attention  # noqa: E402
from abs_model.device import autocast_context  # noqa: E402
from abs_model.preprocess import (  # noqa: E402
    normalize,
    resize_whole,
    resize_whole_batch,
    resize_whole_dense,
    to_tensor_image,
)


def jpeg_images(n: int, seed: int = 0) -> list[bytes]:
    """JPEG bytes of smooth random photos, 500x375 and 375x500 alternating."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        h, w = ((375, 500), (500, 375))[k % 2]
        a = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
        b = io.BytesIO()
        Image.fromarray(a).resize((w, h), Image.BICUBIC).save(b, "JPEG", quality=90)
        out.append(b.getvalue())
    return out


def decode(blobs: list[bytes]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]


@torch.inference_mode()
def dense_dino_attention(
    dino, images, max_image_side: int = 1024, device="cpu", autocast_dtype=None, batch_size: int = 64
):
    """``dino_attention`` as it was before the banded resizes: dense whole-image products, one
    image at a time (``resize_whole_dense``); the reference for the before/after figures."""
    device = torch.device(device)
    xs = []
    for im in images:
        x = to_tensor_image(im).to(device)
        _, h, w = x.shape
        if 0 < max_image_side < max(h, w):
            f = max_image_side / max(h, w)
            x = resize_whole_dense(x, max(1, round(h * f)), max(1, round(w * f)), "bicubic")
        xs.append(x)
    n = dino.norm
    views = torch.stack([normalize(resize_whole_dense(x, n.size, n.size, "bilinear"), n.mean, n.std) for x in xs]).to(
        next(dino.parameters()).dtype
    )
    out = []
    with autocast_context(device, autocast_dtype):
        for s in range(0, views.shape[0], batch_size):
            out.append(dino.cls_attention(views[s : s + batch_size]).float())
    return torch.cat(out).cpu()


def side_by_side(paths: dict, repeats: int) -> tuple[dict, dict]:
    """Best seconds per path (alternating order each round) and each path's last output."""
    best, outs = dict.fromkeys(paths, float("inf")), {}
    for r in range(repeats):
        for name in list(paths) if r % 2 == 0 else list(paths)[::-1]:
            t = time.perf_counter()
            outs[name] = paths[name]()
            best[name] = min(best[name], time.perf_counter() - t)
    return best, outs


def shard_paths(blobs: list[bytes], dino, tmp: str):
    """``dino_shard`` on one shard of the images, with the current and the dense ``dino_attention``."""
    import tasks.steps.dino_cache as dc
    from tasks.steps.shard import read_dataset_info, shard_dataset
    from tasks.store import Storage

    src, root = os.path.join(tmp, "src"), os.path.join(tmp, "root")
    os.makedirs(os.path.join(src, "cls"))
    for k, b in enumerate(blobs):
        with open(os.path.join(src, "cls", f"img{k}.jpg"), "wb") as f:
            f.write(b)
    shard_dataset("folder", src, root, "bench", images_per_shard=len(blobs), workers=1, progress=False)
    info = read_dataset_info(root, "bench")
    storage = Storage(root)
    runs = iter(range(1 << 30))

    def run(fn):
        def go():
            dc.dino_attention = fn
            try:  # a fresh fingerprint each time: always computes
                return dc.dino_shard(storage, "bench", 0, f"{info.fingerprint}-{next(runs)}", dino, max_image_side=1024)
            finally:
                dc.dino_attention = dino_attention

        return go

    return {"dino_shard, banded": run(dino_attention), "dino_shard, dense (before)": run(dense_dino_attention)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--limit-side", type=int, default=298, help="longer side of the limit_size downscale")
    ap.add_argument("--shard", action="store_true", help="also time tasks.steps.dino_cache.dino_shard on one shard")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    blobs = jpeg_images(args.images)
    images = decode(blobs)
    xs = [to_tensor_image(im) for im in images]
    n = len(xs)
    print(
        f"{n} images (500x375 / 375x500 JPEG, decoded), {torch.get_num_threads()} torch thread(s), "
        f"best of {args.repeats}, alternating"
    )

    for label, size, kernel in (
        ("DINO view 224x224, bilinear", None, "bilinear"),
        (f"limit_size to {args.limit_side}, bicubic", args.limit_side, "bicubic"),
    ):

        def dims(x):
            _, h, w = x.shape
            if size is None:
                return 224, 224
            f = size / max(h, w)
            return max(1, round(h * f)), max(1, round(w * f))

        paths = {
            "dense (before)": lambda: [resize_whole_dense(x, *dims(x), kernel) for x in xs],
            "banded, per image": lambda: [resize_whole(x, *dims(x), kernel) for x in xs],
        }
        if size is None:
            paths["banded, batched"] = lambda: list(resize_whole_batch(xs, 224, 224, kernel))
        best, outs = side_by_side(paths, args.repeats)
        ref = outs["dense (before)"]
        same = all(all(torch.equal(a, b) for a, b in zip(ref, v)) for v in outs.values())
        print(f"{label}:")
        for name, s in best.items():
            print(f"  {name:<20s}{1e3 * s / n:8.2f} ms/image  ({best['dense (before)'] / s:5.2f}x)")
        print(f"  all equal to dense bit for bit: {same}")

    dino = DINOBackbone.load(TINY_DINO)
    dino_attention(dino, images[:2])
    best, outs = side_by_side(
        {
            "dino_attention, banded": lambda: dino_attention(dino, images),
            "dino_attention, dense (before)": lambda: dense_dino_attention(dino, images),
        },
        args.repeats,
    )
    if args.shard:
        with tempfile.TemporaryDirectory() as tmp:
            b2, _ = side_by_side(shard_paths(blobs, dino, tmp), args.repeats)
        best.update(b2)
    print(f"tiny DINO ({TINY_DINO}, random weights):")
    for name, s in best.items():
        print(f"  {name:<32s}{n / s:8.1f} images/s")
    a, b = outs.values()
    print(f"  attention equal: {torch.equal(a, b)}")


if __name__ == "__main__":
    main()
