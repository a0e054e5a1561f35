"""A 10-point sweep from stored crop features against one fresh run's inference, side by side.

Issue 20 item 4: the sensitivity curves and ablations of ABS (N', M', tau, one crop branch, plain
averaging) scored from the crop features a run kept (``flows.analyze``, the code ``abs-eval analyze`` and
the sweeps run) cost how much of a fresh evaluation? In ONE process, on a generated dataset (the demo's
12 classes of drawn shapes, 96-320 px JPEGs) with random-weight tiny or micro models, through the
pipeline's own steps without Prefect (its start-up is not what is compared):

1. shard, import descriptions, DINO cache (timed, reported, not compared);
2. the base run: inference with ``keep_features`` (timed: the cost of keeping features included);
3. one fresh run with another tau (0.02, not a point of the sweep) and no features (timed: "one fresh run's inference");
4. the 10-point sweep from step 2's features: N' in {10, 20, 40} (at N = 60), M' in {M/4, M/2}, tau in {0.01, 0.05},
   raw only, feature only, plain averaging; every point committed as prediction parts, rollups and a
   run record, exactly as ``abs-eval analyze`` writes them (timed: the whole sweep);
5. the crop features' bytes per image on disk (float32 as stored) and as float16 (the same table
   written with half-precision values), and what float16 changes: each variant's logits from the
   features rounded to float16 against float32, max |difference| of the scores and margins and the
   number of decisions (top-1) that flip.

Prints the figures and the ratio sweep / fresh inference (target: under 10%). The machine may be
shared: the ratio is the figure to compare, both sides measured in the same process, same minutes.
``--profile`` then scores one more point under cProfile and prints where its time goes.

``--dataset imagenet``: the paper's scale of the text side instead of the 12 shapes: ImageNet-val-like
JPEGs (500x375 and the like) in the ``imagenet`` layout, 1,000 classes, M = 50 sentences per class, generated
by ``benchmarks/rehearsal.py``'s generator (cached under ``--data``, shared with the rehearsal).

    .venv/bin/python benchmarks/bench_variants.py                     # tiny models, 240 images, N=60
    .venv/bin/python benchmarks/bench_variants.py --models micro --per-class 40 --json out.json
    .venv/bin/python benchmarks/bench_variants.py --models micro --dataset imagenet --images 1000 \
        --images-per-shard 1000 --json out.json                    # N=60, K=20, M=50, 1000 classes
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(1, HERE)

from abs_model import ABSConfig, ModelSpec  # noqa: E402
from abs_model.variants import VariantSpec, sweep_logits, variant_logits  # noqa: E402
from tasks import defaults  # noqa: E402

DATASETS = ("shapes", "imagenet")
MODELS = {
    "tiny": (defaults.TINY_CLIP_MODEL, defaults.TINY_DINO_MODEL),
    "micro": (defaults.MICRO_CLIP_MODEL, defaults.MICRO_DINO_MODEL),
}


def sweep_points(base: ABSConfig) -> list[VariantSpec]:
    """The 10 points: N' (3: N/6, N/3, 2N/3; 10, 20, 40 at the paper's 60), M' (2), tau (2), one branch (2),
    plain averaging (1)."""
    own = VariantSpec.of(base)
    m = base.n_descriptions
    n = base.n_crops
    return (
        [own.with_changes(n_crops=k) for k in dict.fromkeys(max(1, x) for x in (n // 6, n // 3, 2 * n // 3))]
        + [own.with_changes(n_descriptions=k) for k in (max(1, m // 4), max(1, m // 2))]
        + [own.with_changes(tau=t) for t in (0.01, 0.05)]
        + [own.with_changes(crop_kinds=k) for k in ("raw", "feature")]
        + [own.with_changes(matching="average")]
    )


def _inference(storage, ctx, run_id: str, keep_features: bool, dino_parts: dict[int, str]) -> tuple[float, int]:
    from tasks.steps.infer import infer_shard

    t0 = time.perf_counter()
    n = 0
    for shard, dino_path in dino_parts.items():
        r = infer_shard(
            storage,
            ctx.classifier,
            dataset=ctx.spec.dataset,
            model=ctx.spec.model_name,
            config=ctx.config_hash,
            shard=shard,
            dino_path=dino_path,
            classnames=list(ctx.info.classnames),
            run_id=run_id,
            images_per_batch=ctx.images_per_batch,
            keep_features=keep_features,
        )
        n += r.n_ok
    return time.perf_counter() - t0, n


def _record(storage, ctx, run_id: str, n_images: int, shards: list[int]) -> None:
    """The run record ``abs-eval analyze`` reads (what ``flows.evaluate.run_evaluation`` writes)."""
    from tasks.results.runs import COMPLETED, RunRecord, RunTracker

    spec = ctx.spec
    rec = RunRecord(
        run_id=run_id,
        dataset=spec.dataset,
        model=spec.model_name,
        config=ctx.config_hash,
        deployment="bench",
        shards_total=len(shards),
        clip_model=spec.clip.name,
        clip_pretrained="random",
        clip_weights_digest=ctx.clip.weights_digest,
        dino_model=spec.dino.name,
        dino_pretrained="random",
        dino_weights_digest=ctx.dino.weights_digest,
        descriptions_hash=ctx.descriptions.content_hash,
        config_json={"spec": spec.to_dict(), "numbers": ctx.prediction_settings},
    )
    RunTracker(storage, rec).start().finish(COMPLETED, n_images=n_images, n_ok=n_images, shards_computed=len(shards))


def _feature_bytes(storage, rels: list[str], n_images: int) -> dict[str, float]:
    """Bytes per image of the stored features parts (float32), and of the same tables in float16."""
    fp32 = sum(os.path.getsize(storage.path(r)) for r in rels)
    fp16 = 0
    with tempfile.TemporaryDirectory() as d:
        for i, rel in enumerate(rels):
            t = storage.read_parquet(rel)
            half = pa.list_(pa.list_(pa.float16()))
            crops = pa.array(
                [[np.asarray(c, np.float16) for c in row] for row in t.column("crop_features").to_pylist()], type=half
            )
            glob = pa.array(
                [np.asarray(g, np.float16) for g in t.column("global_feature").to_pylist()], type=pa.list_(pa.float16())
            )
            path = os.path.join(d, f"{i}.parquet")
            pq.write_table(
                pa.table({"image_id": t.column("image_id"), "crop_features": crops, "global_feature": glob}), path
            )
            fp16 += os.path.getsize(path)
    return {"fp32_bytes_per_image": fp32 / n_images, "fp16_bytes_per_image": fp16 / n_images}


def _fp16_effect(storage, run, text, specs: list[VariantSpec], rels: list[str]) -> dict[str, Any]:
    """Each variant's logits from float16-rounded features against float32: max |score difference|
    (absolute and relative to the logits' scale), max |margin difference| and top-1 flips."""
    from tasks.steps.variants import read_features

    worst, scale, flips, margin_diff, n = 0.0, 0.0, 0, 0.0, 0
    for rel in rels:
        _, crops, glob = read_features(storage, rel)
        c32, g32 = torch.from_numpy(crops), torch.from_numpy(glob)
        c16, g16 = c32.half().float(), g32.half().float()
        for a, b in zip(sweep_logits(c32, run.abs, text, specs, g32), sweep_logits(c16, run.abs, text, specs, g16)):
            for m in a:
                x, y = a[m].double(), b[m].double()
                worst = max(worst, float((x - y).abs().max()))
                scale = max(scale, float(x.abs().max()))
                top2x, top2y = x.topk(2).values, y.topk(2).values
                margin_diff = max(
                    margin_diff, float(((top2x[:, 0] - top2x[:, 1]) - (top2y[:, 0] - top2y[:, 1])).abs().max())
                )
                flips += int((x.argmax(1) != y.argmax(1)).sum())
                n += x.shape[0]
    return {
        "max_abs_score_diff": worst,
        "max_abs_logit": scale,
        "max_rel_score_diff": worst / scale if scale else 0.0,
        "max_abs_margin_diff": margin_diff,
        "top1_flips": flips,
        "decisions_compared": n,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--dataset", choices=DATASETS, default="shapes", help="The generated set (module docstring).")
    ap.add_argument("--per-class", type=int, default=20, help="shapes: generated images per class (12 classes).")
    ap.add_argument("--images", type=int, default=1000, help="imagenet: images (1,000 classes, at least 1 each).")
    ap.add_argument("--data", default=None, help="imagenet: where the generated images are cached.")
    ap.add_argument("--images-per-shard", type=int, default=60)
    ap.add_argument("--n-crops", type=int, default=60, help="N of the base run (the paper's 60).")
    ap.add_argument("--top-k", type=int, default=ABSConfig.top_k, help="K of the base run (the paper's 20).")
    ap.add_argument(
        "--m", type=int, default=None, help="M of the base run (default: shapes 8, all they have; imagenet 50)."
    )
    ap.add_argument("--profile", action="store_true", help="Profile one more point and print where its time goes.")
    ap.add_argument(
        "--paper-scale",
        type=int,
        default=0,
        metavar="IMAGES",
        help="Also time, per image, the paper's models' CLIP pass (ViT-B-16, random weights) against the 10 points "
        "scored from features of its size (D=512, 1000 classes x M=50), on IMAGES images (see _paper_scale).",
    )
    ap.add_argument(
        "--shared",
        action="store_true",
        help="Sweep with every point sharing the work (analyze(exact=False)): the tau and raw-only points then equal "
        "a fresh run within rounding, not bit for bit.",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--root", default=None, help="Storage root (default: a temporary folder, removed after).")
    ap.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    args = ap.parse_args(argv)
    if args.m is None:
        args.m = 50 if args.dataset == "imagenet" else 8
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as tmp:
        return run(args, args.root or tmp)


def run(args: argparse.Namespace, root: str) -> dict[str, Any]:
    from flows.analyze import analyze
    from tasks.results.runs import new_run_id
    from tasks.run.context import build_context
    from tasks.run.evalspec import EvalSpec
    from tasks.steps.demo_data import demo_descriptions, write_demo_dataset
    from tasks.steps.describe import store_descriptions
    from tasks.steps.dino_cache import dino_shard
    from tasks.steps.shard import shard_dataset
    from tasks.steps.variants import AnalyzedRun, find_text_bank
    from tasks.store import Storage
    from tasks.store.paths import features_part

    torch.manual_seed(0)
    st = Storage(root)
    clip_name, dino_name = MODELS[args.models]
    desc = os.path.join(root, "descriptions.json")
    if args.dataset == "imagenet":
        from pathlib import Path

        import rehearsal  # benchmarks/rehearsal.py: the ImageNet-val-like generator

        data = Path(args.data or os.path.join(os.path.dirname(HERE), "abs-output", "rehearsal-data"))
        src = str(rehearsal.generate(data, args.images, max(1, os.cpu_count() or 1)))
        rehearsal.write_descriptions(Path(src), Path(desc), m=args.m)
        with open(desc) as f:
            classes = list(json.load(f))
        layout = "imagenet"
    else:
        src = os.path.join(root, "source")
        classes = write_demo_dataset(src, per_class=args.per_class)
        with open(desc, "w") as f:
            json.dump(demo_descriptions(classes), f)
        layout = "folder"
    t0 = time.perf_counter()
    shard_dataset(layout, src, root, "bench", args.images_per_shard, progress=False)
    store_descriptions(root, "bench", "bench", desc, m=args.m)
    t_shard = time.perf_counter() - t0
    _say(f"sharded and descriptions imported: {t_shard:.1f} s")

    base = ABSConfig(n_crops=args.n_crops, top_k=args.top_k, n_descriptions=args.m)
    spec = EvalSpec(
        dataset="bench",
        clip=ModelSpec(clip_name, None),
        dino=ModelSpec(dino_name, None),
        descriptions="bench",
        abs=base,
        templates="none",
        device=args.device,
        keep_features=True,
    )
    ctx = build_context(st, spec)
    t0 = time.perf_counter()
    dino_parts = {
        s.index: dino_shard(
            st, "bench", s.index, ctx.info.fingerprint, ctx.dino, max_image_side=0, device=ctx.classifier.device
        ).path
        for s in ctx.info.shards
    }
    t_dino = time.perf_counter() - t0
    _say(f"DINO cache: {t_dino:.1f} s")

    base_id = new_run_id()
    t_base, n_images = _inference(st, ctx, base_id, True, dino_parts)
    _record(st, ctx, base_id, n_images, list(dino_parts))
    _say(f"base run inference with features: {t_base:.1f} s")
    # tau 0.02: a setting the sweep does not score (a fresh run with one of its points would share that point's
    # partition, and the sweep would reuse it)
    fresh_ctx = build_context(st, replace(spec, abs=replace(base, tau=0.02), keep_features=False))
    t_fresh, _ = _inference(st, fresh_ctx, new_run_id(), False, dino_parts)
    _say(f"fresh run inference: {t_fresh:.1f} s")

    specs = sweep_points(base)
    t0 = time.perf_counter()
    done = analyze(root, variants=specs, run_id=base_id, device=args.device, report=False, exact=not args.shared)
    t_sweep = time.perf_counter() - t0
    _say(f"10-point sweep from features: {t_sweep:.1f} s")
    assert len(done.variants) == 10 and all(v.shards_computed == len(dino_parts) for v in done.variants)

    rels = [features_part("bench", ctx.spec.model_name, ctx.config_hash, s) for s in dino_parts]
    analyzed = AnalyzedRun.from_record(st.read_json(f"runs/run={base_id}/run.json"))
    text = find_text_bank(st, analyzed, ctx.info)
    out = {
        "models": f"{clip_name} + {dino_name}",
        "images": n_images,
        "shards": len(dino_parts),
        "dataset": args.dataset,
        "n_crops": args.n_crops,
        "top_k": args.top_k,
        "m": args.m,
        "classes": len(classes),
        "feature_dim": int(ctx.clip.embed_dim),
        "torch_threads": torch.get_num_threads(),
        "device": str(ctx.classifier.device),
        "seconds": {
            "shard_and_descriptions": t_shard,
            "dino_cache": t_dino,
            "base_run_inference_keep_features": t_base,
            "fresh_run_inference": t_fresh,
            "sweep_10_points_from_features": t_sweep,
        },
        "sweep_points": {v.name: round(v.seconds, 3) for v in done.variants},
        "sweep_exact": not args.shared,
        "ratio_sweep_to_fresh_inference": t_sweep / t_fresh,
        "ratio_sweep_to_fresh_dino_plus_inference": t_sweep / (t_fresh + t_dino),
        "features": _feature_bytes(st, rels, n_images),
        "fp16": _fp16_effect(st, analyzed, text, specs, rels),
        "matching_ms_per_image": _matching(st, analyzed, text, specs, rels[0]),
    }
    if args.paper_scale:
        out["paper_scale"] = _paper_scale(args.paper_scale, defaults.ABS.n_crops, args.device)
    if args.profile:
        point = VariantSpec.of(base).with_changes(tau=0.07)
        out["profile"] = {"point": point.name(VariantSpec.of(base))}
        out["profile"].update(_profile_point(root, base_id, point, args.device))
    _print(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def _matching(storage, run, text, specs: list[VariantSpec], rel: str, n: int = 200, reps: int = 2) -> dict[str, float]:
    """The matching alone, ms per image, on the first ``n`` images of a shard's stored features (alternating,
    ``reps`` times): one ``soft_match`` at the run's setting (what a fresh run's matching costs), the 10 points
    one by one (``variant_logits``: before they shared their work), ``sweep_logits`` as ``analyze`` runs it
    (``exact``: the points a fresh run scores with the same call keep it) and with every point shared."""
    from abs_model.matching import soft_match
    from tasks.steps.variants import read_features

    _, crops, glob = read_features(storage, rel)
    c, g = torch.from_numpy(crops[:n]), torch.from_numpy(glob[:n])
    mask = None if bool(text.mask.all()) else text.mask
    sides = {
        "one_soft_match": lambda: soft_match(c, text.descriptions, mask, run.abs.tau, check_mask=False),
        "points_one_by_one": lambda: [variant_logits(c, run.abs, text, spec, g) for spec in specs],
        "sweep_exact": lambda: sweep_logits(c, run.abs, text, specs, g),
        "sweep_shared": lambda: sweep_logits(c, run.abs, text, specs, g, exact=False),
    }
    out = dict.fromkeys(sides, 0.0)
    for _ in range(reps):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            out[name] += (time.perf_counter() - t0) * 1e3 / (reps * len(c))
    return out


def _paper_scale(n_images: int, n_crops: int, device: str, classes: int = 1000, m: int = 50) -> dict[str, Any]:
    """Per image, side by side (alternating): the CLIP passes of a fresh run with the paper's CLIP architecture (ViT-B-16,
    random weights: the same arithmetic) against the 10 points scored from crop features of its size.

    Why: with the micro models the model side of a run costs about as little as its soft matching, and a
    point from features IS one soft matching; at the paper's scale the models dominate. Counted for the run:
    only ``encode_image`` of the N raw crops and the global view (N + 1 full forwards, on random pixels); not
    the N feature-space crops' head passes, DINO, decoding and crop views, so the run's time is an underestimate
    and the ratio an overestimate. For the points: one ``sweep_logits`` call for the 10 points (every method;
    what ``abs-eval analyze`` runs per shard; and with every point shared, ``exact=False``) on random unit features ``[images, 2N, 512]`` against a random unit
    text bank (``classes`` x ``m``), and, for reference, each point alone (``variant_logits``: ``points_s_per_image``,
    the cost before the points shared their work); not the Parquet reads and commits (the ``seconds`` above
    include them)."""
    from abs_model import CLIPBackbone, TextBank
    from abs_model.device import resolve_device

    dev = resolve_device(device)
    clip = CLIPBackbone.load(ModelSpec(defaults.CLIP_MODEL, None), dev)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(n_crops + 1, 3, clip.norm.size, clip.norm.size, generator=g).to(dev)
    d = int(clip.embed_dim)

    def unit(*shape: int) -> torch.Tensor:
        x = torch.randn(*shape, generator=g)
        return (x / x.norm(dim=-1, keepdim=True)).to(dev)

    text = TextBank(
        classnames=[f"class {i}" for i in range(classes)],
        descriptions=unit(classes, m, d),
        mask=torch.ones(classes, m, dtype=torch.bool, device=dev),
        prompt=unit(classes, d),
        ensemble=unit(classes, d),
    )
    base = ABSConfig(n_crops=n_crops, n_descriptions=m)
    feats, glob = unit(n_images, 2 * n_crops, d), unit(n_images, d)
    points = sweep_points(base)
    names = [spec.name(VariantSpec.of(base)) for spec in points]
    per_point = dict.fromkeys(names, 0.0)
    t_model = t_sweep = t_shared = 0.0
    with torch.inference_mode():
        clip.encode_image(pixels[:2])  # warm-up
        variant_logits(feats[:1], base, text, points[0], glob[:1])
        sweep_logits(feats[:1], base, text, points, glob[:1])
        for i in range(n_images):  # alternating, image by image: every side sees the same load
            t0 = time.perf_counter()
            clip.encode_image(pixels)
            t_model += (time.perf_counter() - t0) / n_images
            t0 = time.perf_counter()
            sweep_logits(feats[i : i + 1], base, text, points, glob[i : i + 1])
            t_sweep += (time.perf_counter() - t0) / n_images
            t0 = time.perf_counter()
            sweep_logits(feats[i : i + 1], base, text, points, glob[i : i + 1], exact=False)
            t_shared += (time.perf_counter() - t0) / n_images
            for name, spec in zip(names, points):
                t0 = time.perf_counter()
                variant_logits(feats[i : i + 1], base, text, spec, glob[i : i + 1])
                per_point[name] += (time.perf_counter() - t0) / n_images
    t_points = sum(per_point.values())
    return {
        "images": n_images,
        "clip": defaults.CLIP_MODEL,
        "feature_dim": d,
        "text_bank": f"{classes} x {m}",
        "run_clip_forwards_s_per_image": t_model,
        "sweep_10_points_s_per_image": t_sweep,
        "points_s_per_image": {k: round(v, 4) for k, v in per_point.items()},
        "points_one_by_one_s_per_image": t_points,
        "sweep_10_points_shared_s_per_image": t_shared,
        "ratio_sweep_shared_to_run_clip_forwards": t_shared / t_model,
        "ratio_sweep_to_run_clip_forwards": t_sweep / t_model,
        "ratio_points_one_by_one_to_run_clip_forwards": t_points / t_model,
    }


def _profile_point(root: str, run_id: str, spec: VariantSpec, device: str, top: int = 18) -> dict[str, Any]:
    """One more point (``spec``, not in the sweep) under cProfile: its seconds and the functions that take the most
    cumulative time (``file:line(function)`` -> seconds), to see where a point's fixed cost goes."""
    from flows.analyze import analyze

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    analyze(root, variants=[spec], run_id=run_id, device=device, report=False)
    prof.disable()
    seconds = time.perf_counter() - t0
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)  # type: ignore[attr-defined]
    cumulative = {f"{os.path.basename(f)}:{line}({fn})": round(v[3], 3) for (f, line, fn), v in rows[:top]}
    return {"seconds": seconds, "cumulative": cumulative}


def _say(text: str) -> None:
    print(f"[bench_variants] {text}", flush=True)


def _print(out: dict[str, Any]) -> None:
    s = out["seconds"]
    print(
        f"{out['models']}: {out['images']} images in {out['shards']} shards, N={out['n_crops']}, K={out['top_k']}, "
        f"M={out['m']}, "
        f"{out['classes']} classes, D={out['feature_dim']}, {out['device']}, {out['torch_threads']} torch threads"
    )
    print(f"  shard + descriptions           {s['shard_and_descriptions']:8.2f} s")
    print(f"  DINO cache                     {s['dino_cache']:8.2f} s")
    print(f"  base run inference, features   {s['base_run_inference_keep_features']:8.2f} s")
    print(f"  one fresh run's inference      {s['fresh_run_inference']:8.2f} s")
    print(
        f"  10-point sweep from features   {s['sweep_10_points_from_features']:8.2f} s  "
        f"({'tau and raw-only points bit for bit' if out['sweep_exact'] else 'every point shared'}; "
        f"{', '.join(f'{k} {v:.2f}' for k, v in out['sweep_points'].items())})"
    )
    print(
        f"  ratio sweep / fresh inference: {100 * out['ratio_sweep_to_fresh_inference']:.1f}% "
        f"(/ fresh DINO + inference: {100 * out['ratio_sweep_to_fresh_dino_plus_inference']:.1f}%; target < 10%)"
    )
    f, h = out["features"], out["fp16"]
    print(
        f"  crop features on disk per image: {f['fp32_bytes_per_image'] / 1024:.1f} KB float32 (as stored), "
        f"{f['fp16_bytes_per_image'] / 1024:.1f} KB float16"
    )
    print(
        f"  float16 features vs float32, 10 variants x every method: max |score diff| {h['max_abs_score_diff']:.3g} "
        f"(logits up to {h['max_abs_logit']:.3g}, {h['max_rel_score_diff']:.2g} relative), max |margin diff| "
        f"{h['max_abs_margin_diff']:.3g}, top-1 flips {h['top1_flips']} of {h['decisions_compared']}"
    )
    k = out["matching_ms_per_image"]
    print(
        f"  matching alone, ms per image: one soft_match {k['one_soft_match']:.2f}, the 10 points one by one "
        f"{k['points_one_by_one']:.2f}, swept {k['sweep_exact']:.2f} (as analyze: tau and raw-only points keep "
        f"their own call, bit for bit), every point shared {k['sweep_shared']:.2f}"
    )
    if "paper_scale" in out:
        p = out["paper_scale"]
        print(
            f"  paper scale ({p['clip']} random weights, D={p['feature_dim']}, text bank {p['text_bank']}, "
            f"{p['images']} images), per image: the run's N+1 CLIP forwards {p['run_clip_forwards_s_per_image']:.2f} s, "
            f"the 10 points from features {p['sweep_10_points_s_per_image']:.3f} s: "
            f"{100 * p['ratio_sweep_to_run_clip_forwards']:.1f}% (scored one by one: "
            f"{p['points_one_by_one_s_per_image']:.3f} s, {100 * p['ratio_points_one_by_one_to_run_clip_forwards']:.1f}%; "
            f"every point shared: {p['sweep_10_points_shared_s_per_image']:.3f} s, "
            f"{100 * p['ratio_sweep_shared_to_run_clip_forwards']:.1f}%)"
        )
    if "profile" in out:
        p = out["profile"]
        print(f"  profile of one more point, {p['point']} ({p['seconds']:.2f} s), cumulative seconds:")
        for name, sec in p["cumulative"].items():
            print(f"    {sec:8.3f}  {name}")


if __name__ == "__main__":
    main()
