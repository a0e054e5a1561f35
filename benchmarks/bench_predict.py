"""CPU time per image of ``ABSClassifier.predict`` with the shipped micro models, by part.

Why: issue 16's target is micro-model ``predict`` <= 60 CPU-ms per image at the paper's
N=60, K=20 and an ImageNet-size text side (1000 classes x M=50), on ImageNet-size
images (500x375, 375x500, 500x333), one torch thread. This runs exactly that with
``abs-micro-vit`` / ``abs-micro-dino`` (random weights; speed does not depend on the
values) and splits the CPU time per image into the crop views
(``preprocess.clip_views_batch``), soft matching (``matching.soft_match``) and the
rest (CLIP forwards, geometry, feature crops, glue). DINO top-K comes precomputed, as
``tasks/steps/infer.py`` takes it from the DINO cache.

Side by side in one process, alternating passes (best of ``--reps``): the crop views by
the compiled integer loops (``abs_model/resample_cpu.py``, numba) and by the matrix
products (``ABS_CPU_KERNELS=0``, the GPU formulation run on the CPU), with a check that
both give the same logits bit for bit.

    .venv/bin/python benchmarks/bench_predict.py
    .venv/bin/python benchmarks/bench_predict.py --images 32 --reps 3 --out /tmp/predict.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import abs_model.classifier as classifier_mod  # noqa: E402
from abs_model import (  # noqa: E402
    MICRO_CLIP,
    MICRO_DINO,
    ABSClassifier,
    ABSConfig,
    CLIPBackbone,
    DINOBackbone,
    TextBank,
    resample_cpu,  # noqa: E402
)
from abs_model.preprocess import image_tensor, to_float_image  # noqa: E402

_SIZES = ((500, 375), (375, 500), (500, 333))


def images(n: int, seed: int = 0) -> list[Image.Image]:
    """ImageNet-size RGB images with smooth structure plus noise (JPEG-like statistics do not
    change the arithmetic; sizes do)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        w, h = _SIZES[k % len(_SIZES)]
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (c + 1) + yy * (3 - c)) % 256 for c in range(3)], -1)
        noise = rng.integers(-20, 21, (h, w, 3))
        out.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return out


def text_bank(clip: CLIPBackbone, classes: int, m: int, seed: int = 0) -> TextBank:
    """A ``[classes, m, D]`` bank of random unit vectors (encoding 50,000 texts would only add
    set-up time; the matching cost depends on the shape)."""
    g = torch.Generator().manual_seed(seed)
    d = clip.embed_dim
    desc = torch.nn.functional.normalize(torch.randn(classes, m, d, generator=g), dim=-1)
    prompt = torch.nn.functional.normalize(torch.randn(classes, d, generator=g), dim=-1)
    return TextBank(
        classnames=[f"class {i}" for i in range(classes)],
        descriptions=desc,
        mask=torch.ones(classes, m, dtype=torch.bool),
        prompt=prompt,
        ensemble=prompt.clone(),
    )


class _Timer:
    """CPU time of named functions of ``classifier_mod`` (wrapped where the classifier calls them)."""

    def __init__(self, names):
        self.spent = dict.fromkeys(names, 0.0)
        for name in names:
            fn = getattr(classifier_mod, name)

            def timed(*a, _fn=fn, _name=name, **k):
                t = time.process_time()
                try:
                    return _fn(*a, **k)
                finally:
                    self.spent[_name] += time.process_time() - t

            setattr(classifier_mod, name, timed)

    def reset(self):
        for k in self.spent:
            self.spent[k] = 0.0


def one_pass(clf: ABSClassifier, imgs, batch: int, timer: _Timer, kernels: bool, attention):
    os.environ["ABS_CPU_KERNELS"] = "1" if kernels else "0"
    timer.reset()
    logits = []
    t = time.process_time()
    for k, a in enumerate(range(0, len(imgs), batch)):
        out = clf.predict(
            imgs[a : a + batch], [str(i) for i in range(a, min(a + batch, len(imgs)))], dino_topk=attention[k]
        )
        logits.append(out.logits["abs"])
    total = time.process_time() - t
    n = len(imgs)
    parts = {
        "crop views": timer.spent["clip_views_batch"] / n * 1e3,
        "soft matching": timer.spent["soft_match"] / n * 1e3,
    }
    parts["rest"] = total / n * 1e3 - sum(parts.values())
    parts["predict"] = total / n * 1e3
    return parts, torch.cat(logits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="images per predict call (infer's images_per_batch)")
    ap.add_argument("--reps", type=int, default=2, help="alternating passes per variant; the fastest is kept")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from machine import machine_info, machine_summary

    info = machine_info()
    print(machine_summary(info))
    clip, dino = CLIPBackbone.load(MICRO_CLIP), DINOBackbone.load(MICRO_DINO)
    clf = ABSClassifier(
        clip, dino, text_bank(clip, args.classes, args.m), ABSConfig(n_crops=60, top_k=20, n_descriptions=args.m), "cpu"
    )
    imgs = images(args.images)
    timer = _Timer(["clip_views_batch", "soft_match"])
    variants = (
        {"integer loops": True} if not resample_cpu.available() else {"integer loops": True, "matrix products": False}
    )
    if not resample_cpu.available():
        print("numba is not installed: only the matrix products run")
        variants = {"matrix products": False}
    # DINO top-K as the pipeline has it: from the DINO cache, computed before inference
    attention = [
        clf.dino_topk([to_float_image(image_tensor(im)) for im in imgs[a : a + args.batch]])
        for a in range(0, len(imgs), args.batch)
    ]
    one_pass(clf, imgs[: args.batch], args.batch, timer, True, attention)  # warm-up (numba load, allocations)
    best: dict[str, dict] = {}
    logits = {}
    for _ in range(args.reps):
        for name, kernels in variants.items():
            parts, lg = one_pass(clf, imgs, args.batch, timer, kernels, attention)
            logits[name] = lg
            if name not in best or parts["predict"] < best[name]["predict"]:
                best[name] = parts
    print(
        f"micro models (random weights), N=60 K=20, {args.classes} classes x M={args.m}, {args.images} images "
        f"({', '.join(f'{w}x{h}' for w, h in _SIZES)}), {args.batch} per predict call, "
        f"{torch.get_num_threads()} torch thread(s); CPU-ms per image, best of {args.reps}"
    )
    names = list(best)
    print(f"{'part':<16}" + "".join(f"{n:>18}" for n in names) + ("   ratio" if len(names) == 2 else ""))
    for part in ("crop views", "soft matching", "rest", "predict"):
        row = f"{part:<16}" + "".join(f"{best[n][part]:>18.1f}" for n in names)
        if len(names) == 2:
            row += f"   {best[names[1]][part] / max(best[names[0]][part], 1e-9):.2f}x"
        print(row)
    same = None
    if len(logits) == 2:
        a, b = logits.values()
        same = bool(torch.equal(a, b))
        print(f"abs logits identical between the two: {same}")
    print(f"target <= 60 CPU-ms per image: {'met' if best[names[0]]['predict'] <= 60 else 'not met'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": info, "args": vars(args), "cpu_ms_per_image": best, "identical": same}, f, indent=1)


if __name__ == "__main__":
    main()
