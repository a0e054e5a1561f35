"""ImageNet val at full size on this machine: the real `abs-eval run`, killed at 60% and resumed on the same root.

What it does, in order (every step prints its figures; ``--out`` writes them as JSON):

1. Generates ImageNet-val-like JPEGs in the ``imagenet`` layout (the 1,000 WordNet-id
   folders timm ships, ``--images`` / 1000 per class; mostly 500x375 and 375x500, some
   square-ish up to 500x500, 2% larger; about 120 KB each at quality 90, with photo-like
   content so JPEG works as hard as on photos) and a CuPL-style description file with
   M=50 sentences per class. Each image is generated once into ``--data``/pool and
   hard-linked into the folder of each size, so 10,000 and 50,000 share them.
2. Runs the real ``abs-eval run`` with the shipped micro random-weight models
   (``abs-micro-vit``, ``abs-micro-dino``: the real code paths at arithmetic a 2-core CPU
   gets through), the paper's N=60, K=20, M=50, 1000 classes, default shard size, and
   ``--runner dask --workers 2`` (one process per core), in its own process group with its
   own ``PREFECT_HOME``, sampling the peak RSS and the CPU time of every process.
3. SIGKILLs the run's main process once 60% of the prediction parts are committed (what the
   OOM killer does), checks that no process it started is alive 30 s later, then reruns the same command **on the same root**: it must reuse the
   shards, descriptions, text bank, DINO cache and committed parts, and compute the rest.
   Prints which done-markers the rerun wrote, by kind.
4. Per stage (from Prefect's own task runs, both runs together): wall, busy time, images/s,
   and the CPU share of the machine; peak RSS of every process; bytes per image.
5. Recomputes a sample of shards independently (the first, the one in flight at the kill,
   the last) from their images alone: fresh DINO attention, no cache, no committed part
   read; and compares with the committed rows (``pred``, ``top5`` and crop geometry
   exactly, scores within the README's tolerance).
6. Optionally (``--sql-rows``) every named query at scale (``benchmarks/bench_sql.py``) and
   (``--breakdown``) the inference cost per image by part (``benchmarks/bench_host.py``).

    .venv/bin/python benchmarks/rehearsal.py --images 10000 --out rehearsal-10k.json
    .venv/bin/python benchmarks/rehearsal.py --images 50000 --out rehearsal-50k.json

Target (issue 16): 50,000 images in at most 60 minutes of wall time on this 2-core
machine, every process under 2 GB peak RSS at 5,000 and at 50,000 images (within 5%),
sharding >= 500 images/s, the resumed predictions equal to the recomputation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from machine import machine_info, machine_summary  # noqa: E402  (benchmarks/machine.py)
from procwatch import ProcessWatch  # noqa: E402  (benchmarks/procwatch.py)

GEN_VERSION = 1
MICRO = [
    "--clip-model",
    "abs-micro-vit",
    "--clip-pretrained",
    "random",
    "--dino-model",
    "abs-micro-dino",
    "--dino-pretrained",
    "random",
]


# ---------------------------------------------------------------------- data
def _size(rng) -> tuple[int, int]:
    r = rng.random()
    if r < 0.70:
        return 500, 375
    if r < 0.90:
        return 375, 500
    if r < 0.98:
        return int(rng.integers(333, 501)), int(rng.integers(333, 501))
    w = int(rng.integers(600, 1601))
    return w, int(w * rng.choice([0.75, 1.0, 1.333]))


def _photo(w: int, h: int, seed: int):
    """Smooth colour regions + mid-frequency texture + grain: JPEG at q90 lands near 110 KB for 500x375."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    a = np.asarray(base, dtype=np.float32)
    mid = Image.fromarray(rng.integers(0, 256, (max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8))
    a += (np.asarray(mid.resize((w, h), Image.BILINEAR), dtype=np.float32) - 128) * 0.6
    a += rng.normal(0, 16, (h, w, 1)).astype(np.float32)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _write_class(job: tuple[str, str, str, int, int]) -> int:
    """Class ``label``'s first ``per_class`` images: generated once into ``pool`` (image i of a
    class is the same file at any ``--images``), hard-linked into ``folder``."""
    import numpy as np

    pool, folder, wnid, label, per_class = job
    os.makedirs(os.path.join(pool, wnid), exist_ok=True)
    os.makedirs(os.path.join(folder, wnid), exist_ok=True)
    total = 0
    for i in range(per_class):
        seed = label * 100_003 + i
        name = f"ILSVRC2012_val_{label:04d}{i:04d}.JPEG"
        src, path = os.path.join(pool, wnid, name), os.path.join(folder, wnid, name)
        if not os.path.exists(src):
            w, h = _size(np.random.default_rng(seed))
            tmp = src + ".tmp"
            _photo(w, h, seed).save(tmp, "JPEG", quality=90)
            os.replace(tmp, src)
        if not os.path.exists(path):
            try:
                os.link(src, path)
            except OSError:  # another filesystem: copy
                shutil.copyfile(src, path)
        total += os.path.getsize(path)
    return total


def generate(data: Path, n_images: int, workers: int) -> Path:
    """``data/imagenet-<n>/val`` with n_images JPEGs over the 1,000 classes (cached; the
    images live once in ``data/pool`` and are hard-linked, so 10,000 and 50,000 share them)."""
    from multiprocessing import Pool

    from tasks.datasets.imagenet import imagenet_wnids

    per_class = max(1, n_images // 1000)
    root = data / f"imagenet-{per_class * 1000}"
    val = root / "val"
    done = root / "generated.json"
    if done.exists() and json.loads(done.read_text()).get("version") == GEN_VERSION:
        print(f"[data] cached: {val}")
        return val
    t0 = time.perf_counter()
    jobs = [(str(data / "pool"), str(val), w, i, per_class) for i, w in enumerate(imagenet_wnids())]
    with Pool(workers) as pool:
        sizes = pool.map(_write_class, jobs, chunksize=4)
    n = per_class * 1000
    done.write_text(json.dumps({"version": GEN_VERSION, "images": n, "bytes": sum(sizes)}))
    print(
        f"[data] generated {n} JPEGs ({sum(sizes) / n / 1000:.0f} KB each) in {time.perf_counter() - t0:.0f} s: {val}"
    )
    return val


def write_descriptions(src: Path, out: Path, m: int = 50) -> Path:
    """CuPL-style JSON: M sentences per class, keyed by the layout's text class names."""
    from tasks.datasets import layout_classes

    if out.exists():
        return out
    _, names = layout_classes("imagenet", str(src))
    styles = [
        "a photo of a {}.",
        "a close-up photo of a {}.",
        "a {} in its natural setting.",
        "a blurry photo of a {}.",
        "a {} seen from the side.",
        "a bright photo of a {}.",
        "a {} with a plain background.",
        "a cropped photo of a {}.",
        "a {} in the wild.",
        "a large {}.",
    ]
    doc = {n: [f"{styles[j % len(styles)].format(n)} (view {j})" for j in range(m)] for n in names}
    out.write_text(json.dumps(doc))
    return out


# ---------------------------------------------------------------------- processes
def _alive(pids: list[int]) -> list[int]:
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(p)
        except OSError:
            pass
    return out


def run_cli(args: list[str], env: dict[str, str], log: Path, kill=None) -> dict:
    """``abs-eval ARGS`` in its own process group. ``kill()`` returning True SIGKILLs the run's
    main process alone (what the OOM killer or ``kill -9`` does); then every process it had
    started must be gone within 30 s (``abs-eval``'s guardian ends them): the ones still alive
    are reported and then killed, so they cannot skew what follows."""
    exe = REPO / ".venv" / "bin" / "abs-eval"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    t0, e0 = time.perf_counter(), time.time()
    left: list[int] | None = None
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd + args, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(REPO)
        )
        watch = ProcessWatch(proc.pid)
        killed = False
        while proc.poll() is None:
            if kill is not None and kill():
                watch._sample()
                started = [p for p in watch._tree() if p != proc.pid]
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                proc.wait()
                deadline = time.time() + 30
                while _alive(started) and time.time() < deadline:
                    time.sleep(0.5)
                left = _alive(started)
                for p in left:
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
                break
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    peaks = watch.stop()
    if proc.returncode not in (0, -9) and not killed:
        raise SystemExit(
            f"abs-eval {' '.join(args[:1])} failed ({proc.returncode}); log: {log}\n" + log.read_text()[-3000:]
        )
    return {
        "wall_s": wall,
        "start": e0,
        "end": e0 + wall,
        "returncode": proc.returncode,
        "killed": killed,
        "peak_rss": peaks,
        "watch": watch,
        "left_30s_after_kill": left,
    }


def _env(prefect_home: Path) -> dict[str, str]:
    prefect_home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(prefect_home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1"
    )
    return env


# ---------------------------------------------------------------------- figures
def task_runs(prefect_home: Path) -> list[dict]:
    """Every task run Prefect recorded (name, start, end, state), from its API."""
    code = r"""
import asyncio, json, sys
from flows.prefect_env import configure_prefect
configure_prefect(announce=False)
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        out, offset = [], 0
        while True:
            runs = await c.read_task_runs(limit=200, offset=offset)
            if not runs:
                break
            out += [{"name": r.name, "start": r.start_time.timestamp() if r.start_time else None,
                     "end": r.end_time.timestamp() if r.end_time else None, "state": r.state_name} for r in runs]
            offset += len(runs)
        return out
print(json.dumps(asyncio.run(main())))
"""
    res = subprocess.run(
        [sys.executable, "-c", code], env=_env(prefect_home), capture_output=True, text=True, cwd=str(REPO), timeout=900
    )
    if res.returncode != 0:
        raise SystemExit(f"reading Prefect's task runs failed: {res.stderr[-1500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


#: Prefect task name (less the shard suffix) -> the stage it is
STAGES = {
    "shard-dataset": "sharding",
    "prepare-evaluation": "text bank + models",
    "dino-shard": "DINO cache",
    "infer-shard": "inference",
}


def stage_figures(runs: list[dict], watches: list[ProcessWatch], images: dict[str, int]) -> dict[str, dict]:
    """Per stage: task count, wall (first start to last end, summed over the runs it spans),
    busy (sum of task durations), images/s over the wall, and the CPU share of the whole
    machine over that wall (the run's process tree: its API server and workers included)."""
    ncpu = os.cpu_count() or 1
    done = [r for r in runs if r["start"] and r["end"]]
    out: dict[str, dict] = {}
    for kind, label in STAGES.items():
        mine = [r for r in done if re.sub(r"-(\d+|[0-9a-f]{3})$", "", r["name"]) == kind]
        if not mine:
            continue
        wall = cpu = 0.0
        for w in watches:  # a stage may span the killed run and the rerun: per run, then summed
            lo = min(
                (r["start"] for r in mine if w.samples and w.samples[0][0] - 1 <= r["start"] <= w.samples[-1][0] + 1),
                default=None,
            )
            hi = max(
                (r["end"] for r in mine if w.samples and w.samples[0][0] - 1 <= r["end"] <= w.samples[-1][0] + 1),
                default=None,
            )
            if lo is None or hi is None or hi <= lo:
                continue
            wall += hi - lo
            cpu += w.cpu_between(lo, hi) or 0.0
        busy = sum(r["end"] - r["start"] for r in mine)
        n = images.get(kind)
        out[label] = {
            "tasks": len(mine),
            "wall_s": wall,
            "busy_s": busy,
            "images_per_s": (n / wall) if n and wall else None,
            "cpu_share": (cpu / (wall * ncpu)) if wall else None,
            "images": n,
        }
    return out


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def markers(root: Path) -> dict[str, float]:
    """Every done-marker under the root: path -> mtime (what a rerun rewrote shows as changed)."""
    base = root / "_commits"
    return (
        {str(p.relative_to(base)): p.stat().st_mtime for p in base.rglob("*") if p.is_file()} if base.exists() else {}
    )


def recomputed(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Done-markers the rerun wrote or rewrote, by kind (shard parts, the dataset manifest,
    descriptions, text cache, DINO cache, prediction parts, rollups). The dataset manifest
    (``dataset.json``: class names, counts) is rewritten by every run that shards; its parts are
    what must not be recomputed."""
    out: dict[str, int] = {}
    for k, t in after.items():
        if before.get(k) != t:
            parts = k.split("/")
            kind = "/".join(parts[:2]) if k.startswith("cache/") else parts[0]
            if parts[-1] == "dataset.json":
                kind += " (manifest)"
            elif parts[-1].startswith("part-"):
                kind += " (parts)"
            out[kind] = out.get(kind, 0) + 1
    return out


def run_records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "runs").glob("run=*/run.json"))]


# ---------------------------------------------------------------------- independent check
def verify(root: str, run_id: str, shards: list[int], batch: int = 16) -> dict:
    """Recompute ``shards`` from their images alone (fresh DINO attention, no cache, no committed
    part read) with the run's own settings, and compare with the committed prediction rows:
    ``pred``, ``top5`` and the crop geometry exactly, ``score_true`` / ``margin`` within the
    README's tolerance (1e-4 absolute + 1e-5 relative: other batch shapes round differently)."""
    import numpy as np
    import torch

    from tasks.results.runs import read_run
    from tasks.run.context import resolve
    from tasks.store import Storage
    from tasks.store.datasets import read_shard
    from tasks.store.images import decode
    from tasks.store.paths import prediction_part

    st = Storage(root)
    rec = read_run(st, run_id)
    ctx = resolve(root, rec["config_json"]["spec"])
    clf = ctx.classifier
    report: dict = {"shards": {}, "ok": True}
    for s in shards:
        t0 = time.perf_counter()
        shard = read_shard(st, rec["dataset"], s, columns=["image_id", "label", "image", "status"]).to_pylist()
        rows = st.read_parquet(prediction_part(rec["dataset"], rec["model"], rec["config"], s)).to_pylist()
        stored = {(r["image_id"], r["method"]): r for r in rows}
        ok = [r for r in shard if r["status"] == "ok"]
        mism: list[str] = []
        worst = 0.0
        for b in range(0, len(ok), batch):
            part = ok[b : b + batch]
            res = clf.predict([decode(r["image"]) for r in part], [r["image_id"] for r in part])
            labels = np.array([r["label"] for r in part])
            rows_j = np.arange(len(part))
            for m, lg in res.logits.items():
                top = torch.topk(lg.double(), min(5, lg.shape[1]), dim=1).indices.numpy()  # ties as the pipeline
                lg = lg.double().numpy()
                true = lg[rows_j, labels]
                other = np.where(np.arange(lg.shape[1])[None, :] == labels[:, None], -np.inf, lg).max(1)
                for j, r in enumerate(part):
                    want = stored.get((r["image_id"], m))
                    if want is None:
                        mism.append(f"{r['image_id']}/{m}: no committed row")
                        continue
                    if int(top[j, 0]) != want["pred"] or top[j].tolist() != list(want["top5"]):
                        mism.append(f"{r['image_id']}/{m}: pred {int(top[j, 0])} vs {want['pred']}")
                    for key, v in (("score_true", true[j]), ("margin", true[j] - other[j])):
                        d = abs(v - want[key])
                        worst = max(worst, d)
                        if d > 1e-4 + 1e-5 * abs(v):
                            mism.append(f"{r['image_id']}/{m}: {key} {v} vs {want[key]}")
                    if m == "abs":
                        g = res.geometry[j]
                        if (
                            g.raw_boxes.tolist() != want["raw_boxes"]
                            or g.feature_windows.tolist() != want["feature_windows"]
                        ):
                            mism.append(f"{r['image_id']}/abs: crop geometry differs")
        report["shards"][s] = {
            "images": len(ok),
            "mismatches": len(mism),
            "first": mism[:5],
            "max_score_diff": worst,
            "seconds": time.perf_counter() - t0,
        }
        report["ok"] &= not mism
        print(
            f"  shard {s}: {len(ok)} images recomputed in {time.perf_counter() - t0:.0f} s, "
            f"{len(mism)} mismatches, max |score diff| {worst:.2e}",
            flush=True,
        )
    return report


def breakdown(work: Path) -> dict:
    """Inference cost per image by part: ``benchmarks/bench_host.py``, printed as it runs."""
    out = work / "breakdown.json"
    log = work / "breakdown.log"
    with open(log, "w") as f:
        res = subprocess.run(
            [
                sys.executable,
                str(HERE / "bench_host.py"),
                "--images",
                "16",
                "--shard-images",
                "16",
                "--big-shard",
                "200",
                "--out",
                str(out),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    text = log.read_text()
    print(text[text.find("-- predict") :] if "-- predict" in text else text[-2000:])
    if res.returncode or not out.exists():
        return {"note": f"bench_host.py failed ({res.returncode}); log: {log}"}
    return json.loads(out.read_text())


# ---------------------------------------------------------------------- main
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "verify":  # the independent recomputation, in its own process
        root, run_id, shards, out = sys.argv[2], sys.argv[3], [int(x) for x in sys.argv[4].split(",")], sys.argv[5]
        Path(out).write_text(json.dumps(verify(root, run_id, shards), default=str))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000, help="images (a multiple of 1,000; 50 per class = val)")
    ap.add_argument("--data", default=str(REPO / "abs-output" / "rehearsal-data"), help="generated data (cached)")
    ap.add_argument("--work", default=str(REPO / "abs-output" / "rehearsal"), help="root, Prefect home, logs")
    ap.add_argument("--kill-at", type=float, default=0.6, help="fraction of prediction parts before SIGKILL")
    ap.add_argument("--skip-kill", action="store_true", help="one uninterrupted run instead of kill + rerun")
    ap.add_argument(
        "--verify-shards",
        type=int,
        default=3,
        help="shards recomputed independently after the rerun (the first, the one in flight at the "
        "kill, the last; 0: none)",
    )
    ap.add_argument(
        "--sql-rows",
        type=int,
        default=0,
        help="also time every named query on this many rows replayed from the run (bench_sql.py)",
    )
    ap.add_argument("--breakdown", action="store_true", help="also the per-image breakdown (bench_host.py)")
    ap.add_argument("--workers", type=int, default=2, help="parallel shard tasks of the run (default 2: both cores)")
    ap.add_argument("--runner", default="dask", help="task runner of the run (dask: one process per worker)")
    ap.add_argument("--gen-workers", type=int, default=2, help="processes generating the JPEGs")
    ap.add_argument(
        "--crops",
        type=int,
        default=60,
        help="N crops per branch (the paper's 60; fewer only to try the script quickly, and the output says so)",
    )
    ap.add_argument("--clip-model", default=MICRO[1], help="CLIP model (default: the shipped micro model)")
    ap.add_argument("--dino-model", default=MICRO[5], help="DINO model (default: the shipped micro model)")
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()

    info = machine_info()
    print(machine_summary(info))
    figures: dict = {
        "machine": info,
        "images": args.images,
        "n_crops": args.crops,
        "runner": args.runner,
        "workers": args.workers,
        "clip_model": args.clip_model,
        "dino_model": args.dino_model,
    }
    data, work = Path(args.data), Path(args.work) / f"n{args.images}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t = time.perf_counter()
    src = generate(data, args.images, args.gen_workers)
    figures["generate_s"] = time.perf_counter() - t
    desc = write_descriptions(src, src.parent / "cupl.json")
    n = len(list(src.glob("*/*.JPEG")))
    root, home = work / "root", work / "prefect-home"
    models = [
        "--clip-model",
        args.clip_model,
        "--clip-pretrained",
        "random",
        "--dino-model",
        args.dino_model,
        "--dino-pretrained",
        "random",
    ]
    run_args = [
        "run",
        "--dataset",
        "imagenet",
        "--layout",
        "imagenet",
        "--source",
        str(src),
        "--descriptions",
        str(desc),
        *models,
        "--deployment",
        "rehearsal",
        "--n-crops",
        str(args.crops),
        "--runner",
        args.runner,
        "--workers",
        str(args.workers),
        "--root",
        str(root),
    ]
    print(
        f"[run] {n} images, N={args.crops}, K=20, M=50, 1000 classes, {args.clip_model} + {args.dino_model} "
        f"(RANDOM weights), runner {args.runner} x {args.workers} -> {root}"
    )
    if args.crops != 60:
        print(f"[note] N={args.crops}, not the paper's 60: a trial of the script, not the rehearsal's figures")
    shards = -(-n // 1000)
    parts = root / "_commits" / "predictions"

    def committed() -> set[int]:
        return {int(re.search(r"part-(\d+)", p.name).group(1)) for p in parts.glob("*/*/*/part-*.json")}

    runs_done: list[dict] = []
    at_kill: set[int] = set()
    if args.skip_kill:
        runs_done.append(run_cli(run_args, _env(home), work / "run.log"))
    else:
        target = max(1, int(args.kill_at * shards))
        print(f"[kill] SIGKILL of the run's main process once {target} of {shards} prediction parts are committed")
        r1 = run_cli(run_args, _env(home), work / "killed.log", kill=lambda: len(committed()) >= target)
        at_kill = committed()
        runs_done.append(r1)
        print(
            f"  killed after {r1['wall_s']:.0f} s with {len(at_kill)}/{shards} parts committed; processes it had "
            f"started still alive 30 s later: {len(r1['left_30s_after_kill'] or [])}"
        )
        before = markers(root)
        r2 = run_cli(run_args, _env(home), work / "rerun.log")
        runs_done.append(r2)
        after = markers(root)
        recs = run_records(root)
        figures["rerun"] = {
            "wall_s": r2["wall_s"],
            "markers_rewritten": recomputed(before, after),
            "run_record": {
                k: recs[-1].get(k)
                for k in ("run_id", "status", "shards_total", "shards_computed", "shards_reused", "n_images", "n_error")
            },
        }
        print(
            f"  rerun on the same root: {r2['wall_s']:.0f} s; markers written: {figures['rerun']['markers_rewritten']}"
            f"; run record: {figures['rerun']['run_record']}"
        )
    total_wall = sum(r["wall_s"] for r in runs_done)
    recs = run_records(root)
    final = recs[-1] if recs else {}
    runs = task_runs(home)
    infer_images = n  # every image is inferred once overall (the part in flight at the kill is redone)
    stages = stage_figures(
        runs, [r["watch"] for r in runs_done], {"shard-dataset": n, "dino-shard": n, "infer-shard": infer_images}
    )
    peaks: dict[str, int] = {}
    for i, r in enumerate(runs_done):
        for who, b in r["peak_rss"].items():
            peaks[f"{'killed' if r['killed'] else 'run'}#{i}: {who}"] = b
    figures.update(
        {
            "stages": stages,
            "wall_total_s": total_wall,
            "peak_rss": peaks,
            "final_run": {
                k: final.get(k)
                for k in ("run_id", "status", "n_images", "n_error", "shards_total", "shards_computed", "shards_reused")
            },
            "bytes_per_image": {d: du(root / d) / n for d in ("shards", "cache/dino", "cache/text", "predictions")},
            "prefect_task_runs": len(runs),
        }
    )
    print(
        f"[stages] {n} images, whole job {total_wall:.0f} s wall ({total_wall / 60:.1f} min) over "
        f"{len(runs_done)} process runs; per stage (wall = first start to last end per run, summed):"
    )
    print(f"  {'stage':<20} {'tasks':>5} {'wall s':>8} {'busy s':>8} {'images/s':>9} {'CPU share':>9}")
    for label, f in stages.items():
        rate = f"{f['images_per_s']:.1f}" if f["images_per_s"] else "-"
        cpu = f"{100 * f['cpu_share']:.0f}%" if f["cpu_share"] is not None else "-"
        print(f"  {label:<20} {f['tasks']:>5} {f['wall_s']:>8.0f} {f['busy_s']:>8.0f} {rate:>9} {cpu:>9}")
    for who, b in peaks.items():
        print(f"  peak RSS {b / 2**20:8.0f} MiB  {who}")
    print("  bytes/image: " + ", ".join(f"{k} {v / 1000:.1f} KB" for k, v in figures["bytes_per_image"].items()))

    if args.verify_shards and final.get("status") == "completed":
        todo = [0, shards - 1]
        missing = sorted(set(range(shards)) - at_kill)
        if missing:
            todo.insert(1, missing[0])  # the lowest part not committed at the kill: in flight then
        todo = sorted(set(todo))[: max(1, args.verify_shards)]
        print(f"[verify] recomputing shards {todo} independently (fresh DINO, no cache, no committed part read)")
        out = work / "verify.json"
        res = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "verify",
                str(root),
                final["run_id"],
                ",".join(map(str, todo)),
                str(out),
            ],
            env=_env(home),
            cwd=str(REPO),
        )
        figures["verify"] = (
            json.loads(out.read_text())
            if res.returncode == 0 and out.exists()
            else {"ok": False, "note": f"verify failed ({res.returncode})"}
        )
        figures["verify"]["in_flight_at_kill"] = missing[0] if missing else None
        print(f"  resumed predictions equal the recomputation: {figures['verify']['ok']}")

    if args.breakdown:
        print("[breakdown] inference per image by part (benchmarks/bench_host.py)")
        figures["inference_breakdown"] = breakdown(work)

    if args.sql_rows:
        from bench_sql import build, time_queries

        images_per_run = max(n, 50_000)
        runs_n = max(1, args.sql_rows // (images_per_run * 4))
        shape = build(root, work / "root-sql", images_per_run, runs_n, 1000)
        t2, _ = time_queries(work / "root-sql", work / "results-sql.duckdb", reps=2)
        figures["sql"] = {**shape, "seconds": t2}
        print(f"[sql] {shape['rows']:,} rows in {shape['runs']} runs of {images_per_run:,} images, seconds per query:")
        for q, v in t2.items():
            print(f"  {q:<40} {v:7.3f}")
        shutil.rmtree(work / "root-sql", ignore_errors=True)

    for r in runs_done:
        r.pop("watch", None)
    figures["process_runs"] = runs_done
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2, default=str))
        print(f"[out] {args.out}")


if __name__ == "__main__":
    main()
