"""Pipeline overhead: the same evaluation as plain steps and as the Prefect flow.

Uses the tiny random-weight models so that the model time is small and what is
measured is the pipeline itself: sharding (read + decode check + Parquet), the
DINO cache, inference I/O (Parquet reads, decoding, row building, atomic
commits) and Prefect's task orchestration. Prints seconds and images/s per stage
and the flow's overhead over the plain steps, side by side in one run, below
the machine it ran on (CPU, vector extensions, cores, torch build, GPU).

    .venv/bin/python benchmarks/bench_pipeline.py --per-class 40
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine_info, machine_summary  # noqa: E402  (benchmarks/machine.py)

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=40, help="generated images per class (12 classes)")
    ap.add_argument("--images-per-shard", type=int, default=100)
    ap.add_argument("--crops", type=int, default=6)
    args = ap.parse_args()
    print(machine_summary(machine_info()))

    from abs_model import ABSConfig, ModelSpec
    from flows.evaluate import evaluate
    from tasks.descriptions import parse_descriptions, validate_descriptions, write_descriptions
    from tasks.run.context import resolve
    from tasks.run.evalspec import EvalSpec
    from tasks.steps.demo_data import demo_descriptions, write_demo_dataset
    from tasks.steps.dino_cache import dino_shard
    from tasks.steps.infer import infer_shard
    from tasks.steps.shard import read_dataset_info, shard_dataset

    work = tempfile.mkdtemp(prefix="abs-bench-")
    src = os.path.join(work, "src")
    classes = write_demo_dataset(src, per_class=args.per_class)
    n = len(classes) * args.per_class
    desc_file = os.path.join(work, "desc.json")
    with open(desc_file, "w") as f:
        json.dump(demo_descriptions(classes), f)
    abs_cfg = {"n_crops": args.crops, "top_k": 10, "n_descriptions": 8}
    print(f"{n} generated images, {args.images_per_shard} per shard, tiny RANDOM-weight models, N={args.crops}")

    # plain steps
    root = os.path.join(work, "plain")
    t0 = time.perf_counter()
    shard_dataset("folder", src, root, "bench", args.images_per_shard, progress=False)
    t_shard = time.perf_counter() - t0
    info = read_dataset_info(root, "bench")
    raw = parse_descriptions(json.load(open(desc_file)), format="cupl", classnames=list(info.text_classnames))
    write_descriptions(validate_descriptions(raw, list(info.text_classnames), m=8), root, "bench")
    spec = EvalSpec(
        dataset="bench",
        clip=ModelSpec("abs-tiny-vit-b16"),
        dino=ModelSpec("abs-tiny-dino-vit-b16"),
        descriptions="bench",
        abs=ABSConfig(**abs_cfg),
    )
    t0 = time.perf_counter()
    ctx = resolve(root, spec)
    t_prep = time.perf_counter() - t0
    t_dino = t_infer = 0.0
    for sh in info.shards:
        t0 = time.perf_counter()
        d = dino_shard(
            ctx.storage, "bench", sh.index, info.fingerprint, ctx.dino, max_image_side=spec.abs.max_image_side
        )
        t_dino += time.perf_counter() - t0
        t0 = time.perf_counter()
        infer_shard(
            ctx.storage,
            ctx.classifier,
            dataset="bench",
            model=spec.model_name,
            config=ctx.config_hash,
            shard=sh.index,
            dino_path=d.path,
            classnames=list(info.classnames),
            run_id="bench",
            images_per_batch=ctx.images_per_batch,
        )
        t_infer += time.perf_counter() - t0
    t_plain = t_shard + t_prep + t_dino + t_infer

    # the Prefect flow (includes starting the temporary local API)
    froot = os.path.join(work, "flow")
    t0 = time.perf_counter()
    evaluate(
        dict(
            dataset="bench",
            source=src,
            layout="folder",
            root=froot,
            clip_model="abs-tiny-vit-b16",
            clip_pretrained=None,
            dino_model="abs-tiny-dino-vit-b16",
            dino_pretrained=None,
            descriptions=desc_file,
            abs_config=abs_cfg,
            images_per_shard=args.images_per_shard,
            report=False,
        )
    )
    t_flow = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate(
        dict(
            dataset="bench",
            source=src,
            layout="folder",
            root=froot,
            clip_model="abs-tiny-vit-b16",
            clip_pretrained=None,
            dino_model="abs-tiny-dino-vit-b16",
            dino_pretrained=None,
            descriptions=desc_file,
            abs_config=abs_cfg,
            images_per_shard=args.images_per_shard,
            report=False,
        )
    )
    t_rerun = time.perf_counter() - t0

    print()
    print(f"{'stage':<28}{'seconds':>9}{'images/s':>10}")
    for name, t in (
        ("shard (read, check, Parquet)", t_shard),
        ("load models + text cache", t_prep),
        ("DINO cache", t_dino),
        ("inference + commit", t_infer),
        ("plain steps, total", t_plain),
        ("Prefect flow, total", t_flow),
        ("flow rerun (all committed)", t_rerun),
    ):
        print(f"{name:<28}{t:>9.2f}{n / t:>10.1f}")
    print(
        f"flow / plain steps: {t_flow / t_plain:.2f}x (the flow also starts Prefect's temporary API and "
        "records the run)"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
