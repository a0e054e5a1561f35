"""One-shot GPU check of ABS against the goal: ImageNet val (50,000 images), ViT-B/16, N=60,
in under 5 minutes on one H200, i.e. >= 170 images/s end to end, each image 61 CLIP
forwards and 60 feature crops.

Run it through ``benchmarks/gpu_check.sh`` (installs the venv on a bare machine, sets
Prefect's offline environment). Nothing is downloaded: random-weight models (speed does
not depend on the weight values) and generated ImageNet-sized JPEGs. What it measures,
in this order, so that a slow pipeline still leaves the model figures behind:

1. machine: CPU, vector extensions, cores, torch build, GPU (``benchmarks/machine.py``);
2. model FLOPs per image, attention matmuls included (``benchmarks/flops.py``);
3. a plain matmul in the model's dtype (bf16 8192^3 on CUDA, timed with CUDA events);
4. model only: ``ABSClassifier.predict`` on preloaded, decoded batches (DINO included,
   as in one ``predict`` without cached attention): images/s, achieved TFLOP/s, peak GPU
   memory, time outside the model calls (CUDA events) and GPU idle time (torch.profiler
   kernel timeline: wall time minus the union of kernel/memcpy intervals);
5. bf16 vs fp32 on 64 images: the same ``ABSClassifier`` at precision fp32 and bf16;
   prediction agreement per method and the largest logit difference (on CPU, where
   the classifier refuses bf16, CPU autocast to bf16 stands in and the JSON says so);
6. end to end: the real ``abs-eval run`` as a subprocess (shard, descriptions, text cache,
   DINO cache, inference, report; Prefect's temporary API included), timed as a whole
   and for the run record's DINO cache + inference stage, with nvidia-smi sampled
   for GPU utilisation and memory; a projection to 50,000 images.

Writes ``<out>/gpu_check.json`` (every figure, the machine, the settings),
``<out>/summary.txt`` (what it prints) and ``<out>/abs-eval-run.log``.

    bash benchmarks/gpu_check.sh --out /tmp/gpu-check                 # the H200 defaults
    bash benchmarks/gpu_check.sh --device cpu --tiny --images 16      # a dry run on a CPU (~1 min)
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

# Prefect reads its settings once, at import (flows.prefect_env explains): set them first.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="abs-gpu-check-prefect-")

from machine import machine_info, machine_summary  # noqa: E402  (benchmarks/machine.py)

GOAL_IMAGES = 50_000  # ImageNet val
GOAL_SECONDS = 300  # 5 minutes
TARGET_IPS = 170.0  # images/s end to end
TARGET_MATMUL_SHARE = 0.45  # achieved model TFLOP/s / measured bf16 matmul TFLOP/s
SIZES = [(500, 375), (375, 500), (500, 333), (500, 500), (333, 500), (640, 480)]  # ImageNet-like


# ----------------------------------------------------------------------------- data
def _jpeg(job: tuple[str, int, int, int]) -> None:
    """One ImageNet-sized JPEG: smooth colour noise plus a few shapes (decodes like a photo)."""
    import numpy as np
    from PIL import Image, ImageDraw

    path, seed, w, h = job
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    d = ImageDraw.Draw(img)
    r = random.Random(seed)
    for _ in range(6):
        x0, y0 = r.randrange(w), r.randrange(h)
        s = r.randint(min(w, h) // 8, min(w, h) // 2)
        fill = tuple(r.randint(0, 255) for _ in range(3))
        (d.ellipse if r.random() < 0.5 else d.rectangle)([x0, y0, x0 + s, y0 + s], fill=fill)
    img.save(path, format="JPEG", quality=90)


def write_dataset(src: Path, n_images: int, n_classes: int, workers: int) -> list[str]:
    """``src/<class>/<nnnn>.jpg``, classes as even as possible; returns the class names (folder order)."""
    n_classes = max(1, min(n_classes, n_images))
    folders = [f"object_{c:04d}" for c in range(n_classes)]
    jobs = []
    for i in range(n_images):
        folder = src / folders[i % n_classes]
        folder.mkdir(parents=True, exist_ok=True)
        w, h = SIZES[i % len(SIZES)]
        jobs.append((str(folder / f"{i:05d}.jpg"), i, w, h))
    if workers > 1 and n_images >= 64:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_jpeg, jobs, chunksize=16))
    else:
        for j in jobs:
            _jpeg(j)
    return [f.replace("_", " ") for f in folders]


def write_descriptions(path: Path, classes: list[str], m: int = 50) -> None:
    """CuPL JSON ``{classname: [m sentences]}``."""
    adj = ["small", "large", "bright", "dark", "round", "angular", "striped", "spotted", "shiny", "matte"]
    ctx = ["on a table", "in a field", "at night", "in the snow", "under water"]
    out = {c: [f"a photo of a {a} {c} {x}." for a in adj for x in ctx][:m] for c in classes}
    path.write_text(json.dumps(out, indent=0))


# ----------------------------------------------------------------------------- helpers
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device, dtype, n: int, reps: int, rounds: int = 1) -> float:
    """Plain ``n x n @ n x n`` rate in ``dtype``, best of ``rounds`` (CUDA events on a GPU, wall clock on a CPU)."""
    return max(_matmul_once(device, dtype, n, reps) for _ in range(rounds))


def _matmul_once(device, dtype, n: int, reps: int) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            a @ b
        end.record()
        end.synchronize()
        secs = start.elapsed_time(end) / 1e3
    else:
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        secs = time.perf_counter() - t
    del a, b
    return 2 * n**3 * reps / secs / 1e12


class CallTimer:
    """Wraps a model call; sums its device time (CUDA events) or its wall time (CPU)."""

    def __init__(self, fn, device):
        import torch

        self.fn, self.cuda, self.pairs, self.cpu_s, self.calls = fn, device.type == "cuda", [], 0.0, 0
        self._torch = torch

    def __call__(self, *a, **k):
        self.calls += 1
        if self.cuda:
            s, e = (self._torch.cuda.Event(enable_timing=True) for _ in range(2))
            s.record()
            out = self.fn(*a, **k)
            e.record()
            self.pairs.append((s, e))
            return out
        t = time.perf_counter()
        out = self.fn(*a, **k)
        self.cpu_s += time.perf_counter() - t
        return out

    def seconds(self) -> float:
        if self.cuda:
            self._torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.pairs) / 1e3
        return self.cpu_s


def gpu_busy_seconds(trace_path: str) -> tuple[float, int]:
    """Union of kernel / memcpy / memset intervals in a chrome trace: (seconds busy, kernels)."""
    with open(trace_path) as f:
        events = json.load(f).get("traceEvents", [])
    iv = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
        for e in events
        if e.get("ph") == "X" and str(e.get("cat", "")).lower() in ("kernel", "gpu_memcpy", "gpu_memset")
    )
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in iv:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    return busy / 1e6, sum(1 for e in events if str(e.get("cat", "")).lower() == "kernel")


class SmiSampler:
    """nvidia-smi utilisation and memory every 250 ms while the end-to-end run works."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []
        exe = shutil.which("nvidia-smi")
        self.proc = None
        if exe:
            try:
                query = [
                    exe,
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-i",
                    "0",
                    "-lms",
                    "250",
                ]
                self.proc = subprocess.Popen(query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self.proc = None
        if self.proc:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                u, m = (float(x) for x in line.strip().split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), u, m))

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def window(self, t0: float | None, t1: float | None) -> dict:
        s = [x for x in self.samples if (t0 is None or x[0] >= t0) and (t1 is None or x[0] <= t1)]
        if not s:
            return {"samples": 0, "util_mean_pct": None, "mem_used_peak_mib": None}
        return {
            "samples": len(s),
            "util_mean_pct": round(sum(x[1] for x in s) / len(s), 1),
            "mem_used_peak_mib": max(x[2] for x in s),
        }


def _iso_ts(v) -> float | None:
    if not v:
        return None
    try:
        return datetime.fromisoformat(str(v)).timestamp()
    except ValueError:
        return None


# ----------------------------------------------------------------------------- stages
def model_stage(args, device, classes: list[str], files: list[str], res: dict, save) -> None:
    """FLOPs, matmul, model-only throughput, idle time, peak memory, bf16 vs fp32."""
    import torch
    import torch.nn.functional as F
    from flops import abs_model_flops, describe

    from abs_model import ABSClassifier, ABSConfig, CLIPBackbone, DINOBackbone, ModelSpec, TextBank
    from tasks.store.images import decode

    t = time.perf_counter()
    clip = CLIPBackbone.load(ModelSpec(args.clip), device)
    dino = DINOBackbone.load(ModelSpec(args.dino), device)
    res["timings"]["load_models_s"] = round(time.perf_counter() - t, 2)
    cfg = ABSConfig(n_crops=args.n_crops, top_k=args.top_k, n_descriptions=args.m)

    # text side: random unit features of the real shape (C classes x M descriptions); the text
    # encoder's own cost is part of the end-to-end run, not of predict.
    g = torch.Generator().manual_seed(1)
    C, d = len(classes), clip.embed_dim
    desc = F.normalize(torch.randn(C, args.m, d, generator=g), dim=-1)
    proto = F.normalize(torch.randn(C, d, generator=g), dim=-1)
    text = TextBank(list(classes), desc, torch.ones(C, args.m, dtype=torch.bool), proto, proto.clone())

    t = time.perf_counter()
    fl = abs_model_flops(clip, dino, cfg.n_crops, device, classes=C, descriptions=args.m)
    res["timings"]["count_flops_s"] = round(time.perf_counter() - t, 2)
    res["flops"] = {k: v for k, v in fl.items() if k != "by_op_clip_full"}
    res["flops"]["per_image_gflop"] = round(fl["per_image"] / 1e9, 2)
    print(describe(fl), flush=True)

    mm_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mm_n = args.matmul_size or (8192 if device.type == "cuda" else 1024)
    mm_reps = 50 if device.type == "cuda" else 3
    t = time.perf_counter()
    mm = matmul_tflops(device, mm_dtype, mm_n, mm_reps, rounds=3 if device.type == "cuda" else 1)
    res["timings"]["matmul_s"] = round(time.perf_counter() - t, 2)
    res["matmul"] = {
        "dtype": str(mm_dtype).removeprefix("torch."),
        "n": mm_n,
        "reps": mm_reps,
        "tflops": mm,
        "how": "best of 3 x 50 back-to-back matmuls, CUDA events"
        if device.type == "cuda"
        else "fp32 (the model's CPU dtype), wall clock",
    }
    print(f"plain {res['matmul']['dtype']} matmul {mm_n}^3: {mm:.2f} TFLOP/s", flush=True)
    save()

    # ---- model only: predict on preloaded, decoded batches
    n_model = min(len(files), args.model_images or (512 if device.type == "cuda" else 64))
    t = time.perf_counter()
    images = [decode(Path(f).read_bytes()) for f in files[:n_model]]
    ids = [f"gpucheck/{Path(f).name}" for f in files[:n_model]]
    res["timings"]["decode_model_images_s"] = round(time.perf_counter() - t, 2)
    bs = args.images_per_batch
    clf = ABSClassifier(clip, dino, text, cfg, device, args.precision)
    batches = [(images[s : s + bs], ids[s : s + bs]) for s in range(0, n_model, bs)]
    clf.predict(*batches[0])  # warm-up: kernels, allocator, cuBLAS handles
    _sync(device)
    timers = {
        "clip_trunk": CallTimer(clf._trunk, device),
        "clip_head": CallTimer(clf._head, device),
        "dino": CallTimer(clf.dino.cls_attention, device),
    }
    clf._trunk, clf._head = timers["clip_trunk"], timers["clip_head"]
    clf.dino.cls_attention = timers["dino"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for b in batches:
        clf.predict(*b)
    _sync(device)
    wall = time.perf_counter() - t
    model_s = sum(tm.seconds() for tm in timers.values())
    clf._trunk, clf._head = timers["clip_trunk"].fn, timers["clip_head"].fn
    del clf.dino.cls_attention
    ips = n_model / wall
    tflops = fl["per_image"] * ips / 1e12
    mo = {
        "images": n_model,
        "images_per_batch": bs,
        "classifier_batch_rows": clf.batch_size,
        "precision": str(clf.autocast_dtype or "fp32").removeprefix("torch."),
        "wall_s": wall,
        "images_per_s": ips,
        "model_tflops": tflops,
        "share_of_matmul": tflops / mm,
        "model_calls_s": model_s,
        "model_calls_by_kind_s": {k: tm.seconds() for k, tm in timers.items()},
        "outside_model_calls_s": max(0.0, wall - model_s),
        "outside_model_calls_frac": max(0.0, wall - model_s) / wall,
        "peak_mem_bytes": None,
        "peak_mem_gib": None,
        "gpu_busy_s": None,
        "gpu_idle_s": None,
        "gpu_idle_frac": None,
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        mo["peak_mem_bytes"], mo["peak_mem_gib"] = peak, peak / 2**30
    res["model_only"] = mo
    res["achieved"] = {
        "model_tflops": tflops,
        "matmul_tflops": mm,
        "share_of_matmul": tflops / mm,
        "target_share": TARGET_MATMUL_SHARE,
        "meets_target": tflops / mm >= TARGET_MATMUL_SHARE,
    }
    print(
        f"model only: {n_model} images in {wall:.2f} s = {ips:.2f} images/s, {tflops:.3f} TFLOP/s "
        f"({100 * tflops / mm:.1f}% of matmul)",
        flush=True,
    )
    save()

    # ---- GPU idle: profiler kernel timeline over a few batches
    if device.type == "cuda" and not args.no_profile:
        from torch.profiler import ProfilerActivity, profile

        few = batches[: max(1, min(3, len(batches)))]
        try:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                _sync(device)
                t = time.perf_counter()
                for b in few:
                    clf.predict(*b)
                _sync(device)
                pwall = time.perf_counter() - t
            trace = os.path.join(tempfile.mkdtemp(prefix="abs-gpu-check-trace-"), "trace.json")
            prof.export_chrome_trace(trace)
            busy, kernels = gpu_busy_seconds(trace)
            shutil.rmtree(os.path.dirname(trace), ignore_errors=True)
            if kernels == 0:  # e.g. CUPTI missing: an empty timeline would read as 100% idle
                raise RuntimeError("the profiler recorded no CUDA kernels (CUPTI unavailable?)")
            mo.update(
                profiled_images=sum(len(b[0]) for b in few),
                profiled_wall_s=pwall,
                gpu_busy_s=busy,
                gpu_idle_s=max(0.0, pwall - busy),
                gpu_idle_frac=max(0.0, pwall - busy) / pwall,
                kernels=kernels,
            )
        except Exception as exc:  # the profiler is a bonus; the CUDA-event figure stands without it
            mo["profiler_error"] = f"{type(exc).__name__}: {exc}"
        save()

    # ---- bf16 vs fp32 on the same images
    t_cmp = time.perf_counter()
    n_cmp = min(args.compare_images, n_model)
    imgs, cids = images[:n_cmp], ids[:n_cmp]
    ref = ABSClassifier(clip, dino, text, cfg, device, "fp32")
    out32 = [ref.predict(imgs[s : s + bs], cids[s : s + bs]) for s in range(0, n_cmp, bs)]
    if device.type == "cuda":
        low = ABSClassifier(clip, dino, text, cfg, device, "bf16")
        out16 = [low.predict(imgs[s : s + bs], cids[s : s + bs]) for s in range(0, n_cmp, bs)]
        how = "ABSClassifier(precision='bf16') vs precision='fp32'"
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out16 = [ref.predict(imgs[s : s + bs], cids[s : s + bs]) for s in range(0, n_cmp, bs)]
        how = "CPU: fp32 classifier under torch.autocast('cpu', bfloat16) (the classifier allows bf16 on CUDA only)"
    agree, diff, spread = {}, {}, {}
    for m in out32[0].logits:
        a = torch.cat([o.logits[m] for o in out32]).double()
        b = torch.cat([o.logits[m] for o in out16]).double()
        agree[m] = float((a.argmax(1) == b.argmax(1)).double().mean())
        diff[m] = float((a - b).abs().max())
        spread[m] = float(a.std(dim=1).mean())
    res["precision"] = {
        "images": n_cmp,
        "how": how,
        "agreement": agree["abs"],
        "max_logit_diff": diff["abs"],
        "agreement_by_method": agree,
        "max_logit_diff_by_method": diff,
        "logit_std_across_classes_by_method": spread,
        "note": "random weights give near-flat logits, so small bf16 errors flip more argmaxes "
        "than with trained weights",
    }
    res["timings"]["compare_precision_s"] = round(time.perf_counter() - t_cmp, 2)
    print(
        f"bf16 vs fp32 on {n_cmp} images: ABS agreement {agree['abs']:.3f}, max |logit diff| {diff['abs']:.3g} "
        f"(logit std across classes {spread['abs']:.3g})",
        flush=True,
    )
    save()


def e2e_stage(
    args, device, src: Path, desc: Path, root: Path, n_images: int, deadline: float, res: dict, out_dir: Path, save
) -> int:
    """The real ``abs-eval run``, timed; returns its exit code."""
    exe = Path(sys.executable).parent / "abs-eval"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    cmd += [
        "run",
        "--dataset",
        "gpucheck",
        "--source",
        str(src),
        "--root",
        str(root),
        "--descriptions",
        str(desc),
        "--clip-model",
        args.clip,
        "--clip-pretrained",
        "random",
        "--dino-model",
        args.dino,
        "--dino-pretrained",
        "random",
        "--n-crops",
        str(args.n_crops),
        "--top-k",
        str(args.top_k),
        "--m",
        str(args.m),
        "--device",
        device.type,
        "--precision",
        args.precision,
        "--images-per-shard",
        str(args.images_per_shard),
        "--images-per-batch",
        str(args.images_per_batch),
    ]
    timeout = max(60.0, deadline - time.time())
    log_path = out_dir / "abs-eval-run.log"
    print(
        f"end to end: {' '.join(cmd[: cmd.index('run') + 1])} ... ({n_images} images; log {log_path}; "
        f"timeout {timeout:.0f} s)",
        flush=True,
    )
    # The repository first on the path: the command runs this working tree even when the venv's
    # editable install predates a package (the copy on a lent machine, a stale .venv).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    smi = SmiSampler() if device.type == "cuda" else None
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, timed_out = 124, True
    wall = time.time() - t0
    if smi:
        smi.stop()

    runs = sorted(glob.glob(str(root / "runs" / "run=*" / "run.json")))
    rec = json.loads(Path(runs[-1]).read_text()) if runs else {}
    s0, s1 = _iso_ts(rec.get("started_at")), _iso_ts(rec.get("ended_at"))
    stage = (s1 - s0) if (s0 and s1) else None
    done = 0
    for mk in glob.glob(str(root / "_commits" / "**" / "predictions" / "**" / "part-*.json"), recursive=True):
        try:
            done += int(json.loads(Path(mk).read_text()).get("n_ok", 0))
        except (ValueError, OSError):
            pass
    e2e = {
        "command": " ".join(cmd),
        "rc": rc,
        "timed_out": timed_out,
        "images": n_images,
        "images_done": done,
        "wall_s": wall,
        "images_per_s": done / wall if wall else None,
        "stage_s": stage,
        "stage": "DINO cache + inference + commits (run record started_at..ended_at)",
        "stage_images_per_s": (done / stage) if stage else None,
        "fixed_s": (wall - stage) if stage else None,
        "run_status": rec.get("status"),
        "target_images_per_s": TARGET_IPS,
    }
    e2e["meets_target"] = bool(e2e["images_per_s"] and e2e["images_per_s"] >= TARGET_IPS)
    if stage and done:
        proj = e2e["fixed_s"] + GOAL_IMAGES / e2e["stage_images_per_s"]
        e2e.update(
            projected_goal_s=proj,
            projected_goal_images_per_s=GOAL_IMAGES / proj,
            projected_meets_goal=proj <= GOAL_SECONDS,
        )
    if smi:
        e2e["nvidia_smi_whole_run"] = smi.window(None, None)
        e2e["nvidia_smi_stage"] = smi.window(s0, s1)
    res["end_to_end"] = e2e
    res["timings"]["end_to_end_s"] = round(wall, 2)
    save()
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        print(
            "abs-eval run "
            + ("TIMED OUT" if timed_out else f"FAILED (exit {rc})")
            + "; last lines of its log:\n  "
            + "\n  ".join(tail),
            flush=True,
        )
    return rc


# ----------------------------------------------------------------------------- summary
def _f(x, fmt="{:.1f}", none="n/a"):
    return none if x is None else fmt.format(x)


def summary(res: dict) -> str:
    s, e, mo, fl = res["settings"], res.get("end_to_end") or {}, res.get("model_only") or {}, res.get("flops") or {}
    mm, ac, pr = res.get("matmul") or {}, res.get("achieved") or {}, res.get("precision") or {}
    ok = lambda b: "" if b is None else ("  ok" if b else "  MISSED")  # noqa: E731
    lines = [
        ("CPU DRY RUN: the targets below are for one H200 at the defaults\n" if s["device"] == "cpu" else "")
        + f"ABS GPU check: {s['clip']} + {s['dino']} (RANDOM weights), N={s['n_crops']} K={s['top_k']} M={s['m']}, "
        f"{s['images']} generated images, {s['classes']} classes, device {s['device']}, precision {s['precision']}",
        machine_summary(res["machine"]),
        f"{'figure':<44}{'value':>28}   target",
    ]
    row = lambda name, val, tgt="": lines.append(f"{name:<44}{val:>28}   {tgt}")  # noqa: E731
    if e:
        row(
            "end to end: abs-eval run, whole command",
            f"{_f(e.get('images_per_s'), '{:.2f}')} images/s",
            f">= {TARGET_IPS:.0f}{ok(e.get('meets_target'))}",
        )
        row(
            "  wall (Prefect start, shard, text, report)",
            f"{_f(e.get('wall_s'))} s",
            f"{e.get('images_done')}/{e.get('images')} images"
            + (", TIMED OUT" if e.get("timed_out") else "")
            + ("" if e.get("rc") in (0, None) else f", exit {e.get('rc')}"),
        )
        st = e.get("stage_images_per_s")
        row(
            "  DINO cache + inference stage",
            f"{_f(st, '{:.2f}')} images/s",
            f">= {TARGET_IPS:.0f}{ok(None if not st else st >= TARGET_IPS)}",
        )
        if e.get("projected_goal_s") is not None:
            row(
                f"  projected {GOAL_IMAGES:,} images (fixed + stage)",
                f"{e['projected_goal_s']:.0f} s",
                f"<= {GOAL_SECONDS}{ok(e['projected_meets_goal'])}",
            )
        sm = e.get("nvidia_smi_stage") or {}
        if sm.get("samples"):
            row(
                "  nvidia-smi during the stage",
                f"{sm['util_mean_pct']:.0f}% util, {sm['mem_used_peak_mib']:.0f} MiB",
                "mean utilisation, peak memory used",
            )
    if mo:
        row(
            f"model only: ABSClassifier.predict x{mo['images']}",
            f"{mo['images_per_s']:.2f} images/s",
            f"({mo['images_per_batch']} images/predict, {mo['precision']})",
        )
    if fl:
        row(
            "model FLOPs per image",
            f"{fl['per_image'] / 1e9:.1f} GFLOP",
            f"attention {fl['attention'] / 1e9:.1f} G incl. "
            f"({'= analytic' if fl['attention_counted'] else 'analytic DIFFERS'})",
        )
    if mm:
        row(f"plain {mm['dtype']} matmul {mm['n']}^3", f"{mm['tflops']:.2f} TFLOP/s", "")
    if ac:
        row(
            "achieved, model only",
            f"{ac['model_tflops']:.3f} TFLOP/s = {100 * ac['share_of_matmul']:.1f}%",
            f">= {100 * TARGET_MATMUL_SHARE:.0f}% of matmul{ok(ac['meets_target'])}",
        )
        if e.get("stage_images_per_s") and fl:
            t = fl["per_image"] * e["stage_images_per_s"] / 1e12
            row("achieved, end-to-end stage", f"{t:.3f} TFLOP/s = {100 * t / mm['tflops']:.1f}%", "of matmul")
    if mo:
        row(
            "peak GPU memory (predict)",
            _f(mo.get("peak_mem_gib"), "{:.2f} GiB", "n/a (no GPU)"),
            "torch.cuda.max_memory_allocated",
        )
        row(
            "time outside model calls (" + ("CUDA events)" if s["device"] == "cuda" else "wall clock)"),
            f"{mo['outside_model_calls_s']:.2f} s of {mo['wall_s']:.2f} s",
            f"{100 * mo['outside_model_calls_frac']:.0f}% (host work: crops, preprocessing, matching)",
        )
        if mo.get("gpu_idle_s") is not None:
            row(
                "GPU idle waiting for host (profiler)",
                f"{mo['gpu_idle_s']:.2f} s of {mo['profiled_wall_s']:.2f} s",
                f"{100 * mo['gpu_idle_frac']:.0f}% (wall - union of kernel time, {mo['profiled_images']} images)",
            )
        elif mo.get("profiler_error"):
            row("GPU idle (profiler)", "failed", mo["profiler_error"][:60])
    if pr:
        row(
            f"bf16 vs fp32, {pr['images']} images",
            f"agree {pr['agreement']:.3f}, max|dlogit| {pr['max_logit_diff']:.3g}",
            "(ABS; " + ", ".join(f"{k} {v:.2f}" for k, v in pr["agreement_by_method"].items() if k != "abs") + ")",
        )
    if fl:
        lines.append(f"FLOPs not counted: {fl['not_counted']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--images", type=int, default=None, help="generated images (default 2000; --tiny 16)")
    ap.add_argument("--tiny", action="store_true", help="the shipped tiny random models and a small N (a dry run)")
    ap.add_argument(
        "--out",
        default=None,
        help="folder for gpu_check.json, summary.txt and the run log (default: a new temporary folder)",
    )
    ap.add_argument("--classes", type=int, default=None, help="classes (default 1000 like ImageNet; --tiny 4)")
    ap.add_argument("--n-crops", type=int, default=None, help="N (default 60; --tiny 6)")
    ap.add_argument("--top-k", type=int, default=None, help="K (default 20; --tiny 10)")
    ap.add_argument("--m", type=int, default=None, help="M descriptions per class used (default 50; --tiny 8)")
    ap.add_argument("--precision", default="auto", help="auto (bf16 on cuda, fp32 on cpu), fp32, bf16, fp16")
    ap.add_argument("--images-per-batch", type=int, default=None, help="images per predict (pipeline default)")
    ap.add_argument("--images-per-shard", type=int, default=None, help="default: images / 4, at least 8")
    ap.add_argument(
        "--model-images",
        type=int,
        default=None,
        help="images for the model-only figure (default 512 on cuda, 64 on cpu)",
    )
    ap.add_argument(
        "--compare-images",
        type=int,
        default=None,
        help="images for bf16 vs fp32 (default 64 on cuda, 8 on cpu, where bf16 runs emulated and slowly)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch here and in the abs-eval run "
        "(default: torch's own; 1 for --tiny on cpu, which is faster on a shared small machine)",
    )
    ap.add_argument("--matmul-size", type=int, default=None, help="default 8192 on cuda, 1024 on cpu")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=450,
        help="seconds for the whole check; the end-to-end "
        "run is stopped when they run out (what it finished is still reported)",
    )
    ap.add_argument("--no-profile", action="store_true", help="skip the torch.profiler idle-time pass")
    ap.add_argument("--skip-e2e", action="store_true", help="model figures only, no abs-eval run")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and the run's storage root")
    a = ap.parse_args(argv)
    tiny = a.tiny
    a.images = a.images or (16 if tiny else 2000)
    a.classes = a.classes or (4 if tiny else 1000)
    a.n_crops = a.n_crops or (6 if tiny else 60)
    a.top_k = a.top_k or (10 if tiny else 20)
    a.m = a.m or (8 if tiny else 50)
    a.clip = "abs-tiny-vit-b16" if tiny else "ViT-B-16"
    a.dino = "abs-tiny-dino-vit-b16" if tiny else "vit_base_patch16_224.dino"
    a.images_per_shard = a.images_per_shard or max(8, math.ceil(a.images / 4))
    a.compare_images = a.compare_images or (64 if a.device == "cuda" else 8)
    if a.threads is None and tiny and a.device == "cpu":
        a.threads = 1
    return a


def chunk_sizes(device, images: int, crops: int, m: int) -> dict:
    """The block sizes the host-side work picks for ``device`` (so the first GPU run shows them):
    soft matching (images per block, classes per block, bytes of one block temporary),
    crops per resampling call (window samples budget), bands per crop axis at 224 px, and
    the dtype of the resampling levels (float32 split on CPUs, float64 on CUDA)."""
    import torch

    from abs_model import preprocess, resample
    from abs_model.matching import matching_chunks

    per, cc = matching_chunks(device, images, crops, m)
    dev = torch.device(device)
    parts = [
        max(d for d in range(1, min(k, max(1, 224 // preprocess._MIN_BAND)) + 1) if 224 % d == 0)
        for k in preprocess._PARTS
    ]
    return {
        "matching_images_per_block": per,
        "matching_classes_per_block": cc,
        "matching_block_bytes": per * crops * cc * m * 4,
        "resample_call_samples": preprocess._CPU_CALL_SAMPLES if dev.type == "cpu" else preprocess._DEVICE_CALL_SAMPLES,
        "resample_bands_224": parts,
        "resample_levels_dtype": str(resample.split_levels_dtype(dev)).removeprefix("torch."),
    }


def main(argv=None) -> int:
    t_start = time.time()
    args = parse_args(argv)
    if args.threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # for torch here and in the abs-eval subprocess
            os.environ[k] = str(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from abs_model.device import resolve_device, resolve_precision
    from tasks import defaults

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: --device cuda but torch sees no CUDA device (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); for a dry run: --device cpu --tiny",
            file=sys.stderr,
        )
        return 2
    device = resolve_device(args.device)
    prec = resolve_precision(device, None if args.precision == "auto" else args.precision)
    args.images_per_batch = args.images_per_batch or (
        defaults.IMAGES_PER_BATCH_CUDA if device.type == "cuda" else defaults.IMAGES_PER_BATCH_CPU
    )
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="abs-gpu-check-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="abs-gpu-check-work-"))
    # Data first, before anything touches CUDA: the JPEG writers are forked processes.
    t = time.perf_counter()
    src = work / "src"
    classes = write_dataset(src, args.images, args.classes, workers=min(16, os.cpu_count() or 1))
    desc = work / "descriptions.json"
    write_descriptions(desc, classes, 50)
    files = sorted(glob.glob(str(src / "*" / "*.jpg")), key=lambda p: Path(p).name)
    t_data = round(time.perf_counter() - t, 2)
    info = machine_info()
    print(machine_summary(info), flush=True)
    res: dict = {
        "machine": info,
        "settings": {
            "device": device.type,
            "precision": str(prec or "fp32").removeprefix("torch."),
            "tiny": args.tiny,
            "images": args.images,
            "classes": min(args.classes, args.images),
            "descriptions_per_class_in_file": 50,
            "clip": args.clip,
            "clip_pretrained": "random",
            "dino": args.dino,
            "dino_pretrained": "random",
            "n_crops": args.n_crops,
            "top_k": args.top_k,
            "m": args.m,
            "images_per_batch": args.images_per_batch,
            "images_per_shard": args.images_per_shard,
            "budget_s": args.budget_s,
            "torch_threads": torch.get_num_threads(),
            "compare_images": args.compare_images,
        },
        "targets": {
            "end_to_end_images_per_s": TARGET_IPS,
            "share_of_bf16_matmul": TARGET_MATMUL_SHARE,
            "goal": f"{GOAL_IMAGES} images in {GOAL_SECONDS} s",
        },
        "timings": {},
        "status": "running",
    }
    res["chunks"] = chunk_sizes(device, args.images_per_batch, 2 * args.n_crops, args.m)
    print("chunk sizes: " + ", ".join(f"{k} {v}" for k, v in res["chunks"].items()), flush=True)
    json_path = out_dir / "gpu_check.json"

    def save() -> None:
        res["timings"]["total_s"] = round(time.time() - t_start, 2)
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=1, default=str))
        os.replace(tmp, json_path)

    rc = 0
    try:
        res["timings"]["generate_data_s"] = t_data
        print(
            f"generated {len(files)} JPEGs ({len(classes)} classes) and a CuPL file with 50 descriptions per "
            f"class in {res['timings']['generate_data_s']:.1f} s",
            flush=True,
        )
        save()

        model_stage(args, device, classes, files, res, save)
        gc.collect()  # the in-process models go before the abs-eval run loads its own
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.skip_e2e:
            rc = e2e_stage(
                args, device, src, desc, work / "root", len(files), t_start + args.budget_s, res, out_dir, save
            )
        res["status"] = "completed" if rc == 0 else f"abs-eval run exit {rc}"
    except Exception as exc:
        import traceback

        traceback.print_exc()
        res["status"] = f"failed: {type(exc).__name__}: {exc}"
        rc = 1
    finally:
        if args.keep:
            res["work_dir"] = str(work)
        save()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = summary(res)
    (out_dir / "summary.txt").write_text(text + "\n")
    print("\n" + text)
    print(f"\nresults: {json_path}  (total {res['timings']['total_s']:.0f} s, status {res['status']})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
