"""Images per second of ABS: the batched path vs a per-image path, side by side.

Both paths run the same images through the same random-weight ViT-B/16 CLIP and
DINO ViT-B/16 (no weights are downloaded; speed does not depend on the values), at
the paper's N=60 crops per branch and an ImageNet-sized text side (1000 classes x
M=50 descriptions). The per-image path follows the authors' data path: one image
at a time, PIL crops and torchvision preprocessing in a loop over crops, the raw
crops of one image encoded as one batch, each feature crop through the last block
on its own. Also printed: achieved GFLOP/s of the batched path's model forwards
against a plain fp32 matmul measured in the same run, and the machine (CPU model,
vector extensions, cores, torch build, GPU).

Before the models, the CLIP views alone (no model): each image's global view and
its N raw crops through the per-image path's PIL loop, through the batched
windowed resampling (``clip_views_batch``) and through its dense reference
(``clip_views_batch_dense``, the resampling before windows), alternating, best of
``--repeats``; ``--preprocess-only`` stops there (no models are built).

FLOPs are counted by ``benchmarks/flops.py``: torch's FlopCounterMode with the
attention matmuls (QK^T, AV) made visible to it and checked against the analytic
4 * T^2 * D per block; what it still leaves out is printed with the figures.

    .venv/bin/python benchmarks/bench_abs.py            # CPU, 3 images, best of 2 runs per path
    .venv/bin/python benchmarks/bench_abs.py --preprocess-only --images 4 --repeats 3
    .venv/bin/python benchmarks/bench_abs.py --device cuda --images 256 --batch-size 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import PIL
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from abs_model import (
    ABSClassifier,
    ABSConfig,
    CLIPBackbone,
    DINOBackbone,
    ModelSpec,
    TextBank,
)
from abs_model.sampling import draw_crops, image_generator, raw_boxes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_whole import side_by_side  # noqa: E402  (benchmarks/bench_whole.py)
from flops import abs_model_flops, describe  # noqa: E402  (benchmarks/flops.py)
from machine import machine_info, machine_summary  # noqa: E402  (benchmarks/machine.py)


def make_images(n: int, seed: int = 0) -> list[Image.Image]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(500, 375), (375, 500), (500, 333), (640, 480)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        small = (torch.rand(3, h // 16, w // 16, generator=g) * 255).byte()
        out.append(T.ToPILImage()(small).resize((w, h), Image.BICUBIC))
    return out


def random_text(clip: CLIPBackbone, classes: int, m: int) -> TextBank:
    g = torch.Generator().manual_seed(1)
    d = clip.embed_dim
    desc = F.normalize(torch.randn(classes, m, d, generator=g), dim=-1)
    proto = F.normalize(torch.randn(classes, d, generator=g), dim=-1)
    return TextBank(
        [f"class {i}" for i in range(classes)], desc, torch.ones(classes, m, dtype=torch.bool), proto, proto.clone()
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device, dtype, n=4096, reps=5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


@torch.inference_mode()
def per_image_path(clf: ABSClassifier, images, ids):
    """One image at a time, PIL crops in a loop (the authors' data path)."""
    cfg, clip, dino = clf.config, clf.clip, clf.dino
    pre = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(clip.norm.mean, clip.norm.std),
        ]
    )
    pre_dino = T.Compose(
        [
            T.Resize((224, 224), interpolation=T.InterpolationMode.BILINEAR),
            T.ToTensor(),
            T.Normalize(dino.norm.mean, dino.norm.std),
        ]
    )
    desc, mask = clf._text_dev["desc"], clf._text_dev["mask"]
    G, D = clip.grid, dino.grid
    preds = []
    for pil, iid in zip(images, ids):
        W, H = pil.size
        att = dino.cls_attention(pre_dino(pil)[None].to(clf.device))[0].cpu()
        vals, idx = torch.topk(att, cfg.top_k)
        dr = draw_crops(idx, vals, W, H, G, cfg, image_generator(cfg.seed, iid))
        crops = []
        for n in range(cfg.n_crops):
            r, c = int(dr.raw_cells[n]) // D, int(dr.raw_cells[n]) % D
            cx, cy = (c + 0.5) * W / D, (r + 0.5) * H / D
            w, h = int(dr.raw_widths[n]), int(dr.raw_heights[n])
            box = (max(0, cx - w / 2), max(0, cy - h / 2), min(W, cx + w / 2), min(H, cy + h / 2))
            crops.append(pre(pil.crop(tuple(round(v) for v in box))))
        g_in = pre(pil)[None].to(clf.device)
        raw = F.normalize(clip.encode_image(torch.stack(crops).to(clf.device)), dim=-1)
        tok = clip.trunk(g_in)
        grid = tok[:, 1:].transpose(1, 2).reshape(1, -1, G, G)
        feats = []
        for n in range(cfg.n_crops):
            r, c = int(dr.feature_cells[n]) // D, int(dr.feature_cells[n]) % D
            rr, cc, s = r * G // D, c * G // D, int(dr.feature_sides[n])
            win = grid[
                :, :, max(0, rr - s // 2) : min(G, rr + s // 2 + 1), max(0, cc - s // 2) : min(G, cc + s // 2 + 1)
            ]
            win = F.interpolate(win, size=(G, G), mode="bicubic", align_corners=False)
            feats.append(F.normalize(clip.head(torch.cat([tok[:, :1], win.flatten(2).transpose(1, 2)], 1)), dim=-1))
        v = torch.cat([raw, torch.cat(feats)])[None]
        s = v @ desc.reshape(-1, desc.shape[-1]).T / cfg.tau
        s = s.masked_fill(~mask.reshape(1, 1, -1), float("-inf"))
        preds.append(int((torch.softmax(s, -1) * s).reshape(1, v.shape[1], *mask.shape).sum((1, 3)).argmax()))
    return preds


CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def preprocess_paths(
    images,
    ids,
    cfg: ABSConfig,
    repeats: int,
    mean=CLIP_MEAN,
    std=CLIP_STD,
    size: int = 224,
    grid: int = 14,
    dino_grid: int = 14,
) -> dict:
    """Seconds per image of the CLIP views alone (each image's global view and N raw crops, no
    model): the per-image path's PIL loop (``pil.crop`` and torchvision's Resize / CenterCrop /
    ToTensor / Normalize per crop, one thread), the batched windowed views and the dense
    reference, alternating, best of ``repeats`` each. The same boxes for all three, from
    random DINO top-K values (``draw_crops``, ``raw_boxes``)."""
    from abs_model.preprocess import (
        clip_views_batch,
        clip_views_batch_dense,
        image_tensor,
        to_float_image,
    )

    g = torch.Generator().manual_seed(0)
    boxes = []
    for pil, iid in zip(images, ids):
        W, H = pil.size
        vals, idx = torch.topk(torch.rand(dino_grid**2, generator=g), cfg.top_k)
        dr = draw_crops(idx, vals, W, H, grid, cfg, image_generator(cfg.seed, iid))
        boxes.append(raw_boxes(dr.raw_cells, dr.raw_widths, dr.raw_heights, W, H, dino_grid))
    pre = T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )

    def pil_loop():
        return torch.cat(
            [torch.stack([pre(pil)] + [pre(pil.crop(tuple(b))) for b in bx.tolist()]) for pil, bx in zip(images, boxes)]
        )

    B, n = len(images), cfg.n_crops

    def batched(fn):
        buf = torch.empty(B * (1 + n), 3, size, size)  # reused, as ``predict`` reuses its view buffer

        def run():
            xs = [to_float_image(image_tensor(pil)) for pil in images]
            groups = [(b, torch.tensor([[0, 0, pil.size[0], pil.size[1]]]), b) for b, pil in enumerate(images)]
            groups += [(b, boxes[b], B + b * n) for b in range(B)]
            return fn(xs, groups, size, mean, std, B * (1 + n), out=buf)

        return run

    paths = {
        "PIL loop (per-image path)": pil_loop,
        "batched, windowed": batched(clip_views_batch),
        "batched, dense (before)": batched(clip_views_batch_dense),
    }
    best, outs = side_by_side(paths, repeats)
    pil_name, win_name, dense_name = paths
    for name in (win_name, dense_name):  # rows per image (global view, then its crops), as the PIL loop has them
        v = outs[name]
        outs[name] = torch.cat([torch.cat([v[b : b + 1], v[B + b * n : B + (b + 1) * n]]) for b in range(B)])
    levels = [
        (outs[k] * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)) * 255
        for k in (pil_name, win_name)
    ]
    return {
        "s_per_image": {k: v / len(images) for k, v in best.items()},
        "windowed_equals_dense": torch.equal(outs[win_name], outs[dense_name]),
        "pil_vs_windowed_max_levels": float((levels[0] - levels[1]).abs().max()),
        "pil_vs_windowed_share_differing": float(((levels[0] - levels[1]).abs() > 0.5).float().mean()),
    }


def print_preprocess(res: dict, n_images: int, n_crops: int) -> None:
    print(
        f"CLIP views only (global + {n_crops} crops per image, {n_images} images, {torch.get_num_threads()} torch "
        f"thread(s); PIL: one thread):"
    )
    ref = res["s_per_image"]["PIL loop (per-image path)"]
    for name, v in res["s_per_image"].items():
        print(f"  {name:<28s}{v:8.3f} s/image  ({v / ref:.2f}x the PIL loop)")
    print(
        f"  windowed == dense bit for bit: {res['windowed_equals_dense']}; PIL loop vs windowed: max "
        f"{res['pil_vs_windowed_max_levels']:.1f} levels, {100 * res['pil_vs_windowed_share_differing']:.1f}% of "
        f"values differ (Pillow {PIL.__version__}; >= 13 resizes some shapes vertically first)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed runs per path (best kept)")
    ap.add_argument("--per-image", type=int, default=None, help="images for the per-image path (default: same)")
    ap.add_argument("--crops", type=int, default=60)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--descriptions", type=int, default=50)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="CLIP rows per forward in the batched path (default: 16 on CPU, 512 on CUDA)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="fp32 | bf16 | fp16 | auto (bf16 on cuda)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the CLIP trunk and head (batched path)")
    ap.add_argument("--clip", default="ViT-B-16")
    ap.add_argument("--dino", default="vit_base_patch16_224.dino")
    ap.add_argument(
        "--preprocess-only",
        action="store_true",
        help="only the CLIP views: PIL loop vs batched windowed vs dense (no models)",
    )
    args = ap.parse_args()

    from abs_model.device import resolve_device, resolve_precision

    device = resolve_device(args.device)
    prec = resolve_precision(device, None if args.precision == "auto" else args.precision)
    print(machine_summary(machine_info()))
    if args.preprocess_only:
        images = make_images(args.images)
        cfg = ABSConfig(n_crops=args.crops, n_descriptions=args.descriptions)
        res = preprocess_paths(images, [f"bench/{i}" for i in range(len(images))], cfg, args.repeats)
        print_preprocess(res, len(images), cfg.n_crops)
        return
    print(
        f"device={device} autocast={prec} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"compile={args.compile}"
    )
    print("weights: RANDOM (speed does not depend on weight values; nothing is downloaded)")
    clip = CLIPBackbone.load(ModelSpec(args.clip), device)
    dino = DINOBackbone.load(ModelSpec(args.dino), device)
    cfg = ABSConfig(n_crops=args.crops, n_descriptions=args.descriptions)
    clf = ABSClassifier(
        clip,
        dino,
        random_text(clip, args.classes, args.descriptions),
        cfg,
        device,
        args.precision,
        batch_size=args.batch_size,
        compile=args.compile,
    )
    images = make_images(args.images)
    ids = [f"bench/{i}" for i in range(len(images))]
    n_per = args.per_image if args.per_image is not None else len(images)
    print_preprocess(
        preprocess_paths(
            images, ids, cfg, args.repeats, clip.norm.mean, clip.norm.std, clip.norm.size, clip.grid, dino.grid
        ),
        len(images),
        cfg.n_crops,
    )

    # FLOPs of every model forward the batched path runs, counted on single passes
    # (attention matmuls included, see benchmarks/flops.py).
    n = cfg.n_crops
    fl = abs_model_flops(clip, dino, n, device, classes=args.classes, descriptions=args.descriptions)
    per_image_model, per_image_match = fl["per_image"], fl["matching"]
    print(describe(fl))

    dt = torch.float32 if prec is None else prec
    mm = matmul_gflops(device, dt)
    print(f"plain {dt} matmul 4096^3: {mm:.1f} GFLOP/s")

    # Warm-up on one image, then alternate the two paths `repeats` times and keep each
    # one's best time: on a shared, noisy machine the best of several is the fairest.
    clf.predict(images[:1], ids[:1])
    sync(device)
    t_batched = t_ref = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = clf.predict(images, ids)
        sync(device)
        t_batched = min(t_batched, time.perf_counter() - t)
        t = time.perf_counter()
        preds_ref = per_image_path(clf, images[:n_per], ids[:n_per])
        sync(device)
        t_ref = min(t_ref, time.perf_counter() - t)
    ips_b = len(images) / t_batched
    gf_model = per_image_model * len(images) / t_batched / 1e9
    gf_all = (per_image_model + per_image_match) * len(images) / t_batched / 1e9
    ips_r = n_per / t_ref
    agree = sum(int(a == b) for a, b in zip(preds_ref, out.pred("abs")[:n_per].tolist()))
    mm = max(mm, matmul_gflops(device, dt))  # measured again after the runs, best of both

    print()
    print(f"plain {dt} matmul (best of two measurements): {mm:.1f} GFLOP/s; best of {args.repeats} runs per path")
    print(f"{'path':<12}{'images':>8}{'seconds':>10}{'images/s':>11}{'s/image':>9}")
    print(f"{'batched':<12}{len(images):>8}{t_batched:>10.2f}{ips_b:>11.3f}{1 / ips_b:>9.2f}")
    print(f"{'per-image':<12}{n_per:>8}{t_ref:>10.2f}{ips_r:>11.3f}{1 / ips_r:>9.2f}")
    print(f"speed-up batched / per-image: {ips_b / ips_r:.2f}x   (same ABS argmax on {agree}/{n_per} images)")
    print(
        f"batched path: {gf_model:.1f} GFLOP/s on model forwards = {100 * gf_model / mm:.0f}% of matmul "
        f"({gf_all:.1f} GFLOP/s = {100 * gf_all / mm:.0f}% counting the matching too)"
    )
    if device.type == "cuda":
        peak = 989.0 if prec is not None else 67.0
        print(
            f"share of an H100/H200 dense {('bf16' if prec is not None else 'fp32')} peak (~{peak:.0f} TFLOP/s): "
            f"{100 * gf_model / 1e3 / peak:.1f}%; ImageNet val (50,000 images) would take "
            f"{50000 / ips_b / 60:.1f} min"
        )
    else:
        print(f"ImageNet val (50,000 images) at this rate: {50000 / ips_b / 3600:.1f} h on this machine")


if __name__ == "__main__":
    main()
