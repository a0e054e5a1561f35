"""Large images without a downscale limit: CPU time and memory per image, against the 1024 px limit.

Why (issue 19): every view is now resized once from the original image (``ABSConfig.max_image_side``
0, the default), as open_clip, CLIP_benchmark and the ABS authors' code do, where the pipeline used
to shrink images to 1024 px first. A crop's antialiased resampling reads every source pixel the
crop covers (Pillow's arithmetic, which the views reproduce bit for bit), so the crop views of a
4000x3000 photo cost more than those of its 1024 px copy. This measures how much, with the shipped
micro models (``abs-micro-vit`` + ``abs-micro-dino``, random weights; the model cost does not
depend on the image size) at N=60, K=20 and 1000 classes x M=50, DINO top-K precomputed as
``infer`` takes it from the DINO cache, one torch thread:

* ``predict`` CPU-ms per image, split into the crop views (``clip_views_batch``), the downscale
  (``limit_size``, limited path only) and the rest, for each image size, no limit vs
  ``max_image_side=1024``, on the compiled integer loops and (``--matrix``) the matrix products
  (``ABS_CPU_KERNELS=0``);
* the crop views alone at N = 15, 30, 60 (cost per crop: flat in N means linear in the crop count);
* the DINO view + attention (``dino_attention``, the DINO cache stage) per image;
* memory, in a fresh process per size: the decoded image, the prepared one (``prepare_image``: uint8
  levels) and the peak RSS growth of preparing it, of its DINO pass and of one ``predict``
  (Linux ``VmHWM``, reset before each step).

    .venv/bin/python benchmarks/bench_large_images.py
    .venv/bin/python benchmarks/bench_large_images.py --sizes 1400x1000 4000x3000 --reps 3 --matrix --out large.json
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

from bench_predict import _Timer, text_bank  # noqa: E402

from abs_model import MICRO_CLIP, MICRO_DINO, ABSClassifier, ABSConfig, CLIPBackbone, DINOBackbone  # noqa: E402


def image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([((xx // 3) * (c + 1) + (yy // 3) * (3 - c)) % 256 for c in range(3)], -1)
    noise = rng.integers(-20, 21, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


#: CPU time of named functions as the classifier calls them (``bench_predict``'s timer).
Parts = _Timer


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_child(w: int, h: int, side: int, args) -> dict | None:
    """Memory of one image of ``w x h`` in a fresh process (so freed memory of earlier work does
    not hide it): peak RSS growth of ``prepare_image``, of the DINO pass and of ``predict``."""
    import subprocess

    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-child",
        f"{w}x{h}",
        str(side),
        str(args.classes),
        str(args.m),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if res.returncode == 0 and lines else None


def _memory_child(size: str, side: int, classes: int, m: int) -> None:
    torch.set_num_threads(1)
    w, h = (int(v) for v in size.split("x"))
    clip, dino = CLIPBackbone.load(MICRO_CLIP), DINOBackbone.load(MICRO_DINO)
    clf = clf_for(clip, dino, text_bank(clip, classes, m), 60, side)
    warm = image(64, 48, 0)
    clf.predict([warm], ["warm"])  # numba, tap memo, buffers of small size
    im = image(w, h, 1)
    out = {"decoded_mb": w * h * 3 / 2**20}

    def peak_of(fn):
        if not _reset_peak():
            return None, fn()
        base = _status_kb("VmRSS")
        r = fn()
        return (_status_kb("VmHWM") - base) / 1024, r

    out["prepare_rss_mb"], x = peak_of(lambda: clf.prepare_image(im))
    out["prepared_mb"] = x.numel() * x.element_size() / 2**20
    out["prepared_dtype"] = str(x.dtype).replace("torch.", "")
    out["dino_peak_mb"], topk = peak_of(lambda: clf.dino_topk([x]))
    out["predict_peak_mb"], _ = peak_of(lambda: clf.predict([x], ["mem"], dino_topk=topk))
    print(json.dumps(out))


def clf_for(clip, dino, text, n_crops: int, side: int) -> ABSClassifier:
    return ABSClassifier(
        clip,
        dino,
        text,
        ABSConfig(n_crops=n_crops, top_k=20, n_descriptions=text.descriptions.shape[1], max_image_side=side),
        "cpu",
    )


def predict_ms(clf, imgs, topk, parts: Parts, reps: int, kernels: bool) -> dict:
    """Best of ``reps`` passes (one image per ``predict`` call): CPU-ms per image by part."""
    os.environ["ABS_CPU_KERNELS"] = "1" if kernels else "0"
    best = None
    for _ in range(reps):
        parts.reset()
        t = time.process_time()
        for k, im in enumerate(imgs):
            clf.predict([im], [f"img{k}"], dino_topk=topk[k])
        total = (time.process_time() - t) / len(imgs) * 1e3
        views = parts.spent["clip_views_batch"] / len(imgs) * 1e3
        limit = parts.spent["limit_size"] / len(imgs) * 1e3
        got = {"predict": total, "crop views": views, "limit_size": limit, "rest": total - views - limit}
        if best is None or got["predict"] < best["predict"]:
            best = got
    os.environ["ABS_CPU_KERNELS"] = "1"
    return best


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--memory-child":
        _memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["500x375", "1400x1000", "3000x2000", "4000x3000"])
    ap.add_argument("--per-size", type=int, default=2, help="images per size")
    ap.add_argument("--reps", type=int, default=2, help="passes per variant; the fastest is kept")
    ap.add_argument("--limit", type=int, default=1024, help="the max_image_side compared with no limit")
    ap.add_argument("--matrix", action="store_true", help="also the matrix products (ABS_CPU_KERNELS=0)")
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
    text = text_bank(clip, args.classes, args.m)
    parts = Parts(["clip_views_batch", "limit_size"])
    results: dict = {}
    variants = [("no limit", 0), (f"limit {args.limit}", args.limit)]
    paths = [("integer loops", True)] + ([("matrix products", False)] if args.matrix else [])
    print(
        f"micro models (random weights), K=20, {args.classes} classes x M={args.m}, {args.per_size} image(s) per size, "
        f"one image per predict call, {torch.get_num_threads()} torch thread(s); CPU-ms per image, best of {args.reps}"
    )
    for spec in args.sizes:
        w, h = (int(v) for v in spec.split("x"))
        imgs = [image(w, h, 7 * k + w) for k in range(args.per_size)]
        row: dict = {}
        for name, side in variants:
            clf = clf_for(clip, dino, text, 60, side)
            prepared = [clf.prepare_image(im) for im in imgs]
            clf.dino_topk(prepared[:1])  # warm-up (numba load)
            t = time.process_time()
            topk = [clf.dino_topk([x]) for x in prepared]  # the DINO cache stage, one image at a time
            row[f"{name}: dino_attention"] = (time.process_time() - t) / len(imgs) * 1e3
            clf.predict(prepared[:1], ["warm"], dino_topk=topk[0])  # warm-up (numba load, tap memo)
            for pname, kernels in paths:
                row[f"{name}, {pname}"] = predict_ms(clf, prepared, topk, parts, args.reps, kernels)
            # the crop views alone at several N (per crop: flat in N = linear in the crop count)
            per_crop = {}
            for n in (15, 30, 60):
                c = clf_for(clip, dino, text, n, side)
                c.predict(prepared[:1], ["warm"], dino_topk=topk[0])
                got = predict_ms(c, prepared, topk, parts, args.reps, True)
                per_crop[n] = got["crop views"] / (n + 1)
            row[f"{name}: crop views per view (N=15/30/60)"] = per_crop
            row[f"{name}: memory"] = memory_child(w, h, side, args)
            del prepared
        results[spec] = row
        print(f"\n{spec} ({w * h / 1e6:.1f} MP)")
        for name, _ in variants:
            mem = row[f"{name}: memory"] or {}
            print(
                f"  {name:<11} dino_attention {row[f'{name}: dino_attention']:8.1f} ms | decoded "
                f"{mem.get('decoded_mb', float('nan')):.0f} MB, prepared {mem.get('prepared_mb', float('nan')):.0f} MB "
                f"({mem.get('prepared_dtype', '?')}), peak RSS growth: prepare +{mem.get('prepare_rss_mb', float('nan')):.0f}"
                f" MB, dino_topk +{mem.get('dino_peak_mb', float('nan')):.0f} MB, predict "
                f"+{mem.get('predict_peak_mb', float('nan')):.0f} MB"
            )
            for pname, _ in paths:
                r = row[f"{name}, {pname}"]
                print(
                    f"  {name:<11} {pname:<16} predict {r['predict']:8.1f} | crop views {r['crop views']:8.1f} | "
                    f"limit_size {r['limit_size']:6.1f} | rest {r['rest']:6.1f}"
                )
            pc = row[f"{name}: crop views per view (N=15/30/60)"]
            print(
                f"  {name:<11} crop views per view, N=15/30/60: " + " / ".join(f"{v:.2f}" for v in pc.values()) + " ms"
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
