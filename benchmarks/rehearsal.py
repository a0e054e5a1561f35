"""ImageNet val at full size on this machine: the real `abs-eval run`, a SIGKILL at 60%, the resume, SQL at scale.

What it does, in order (every step prints its figures; ``--out`` writes them as JSON):

1. Generates ImageNet-val-like JPEGs in the ``imagenet`` layout (the 1,000 WordNet-id
   folders timm ships, ``--images`` / 1000 per class; mostly 500x375 and 375x500,
   some square-ish up to 500x500, 2% larger; about 110 KB each at quality 90, with
   photo-like content so JPEG works as hard as on photos) and a CuPL-style
   description file with M=50 sentences per class. Cached under ``--data``.
2. Runs the real ``abs-eval run`` (default shard size, the shipped tiny random-weight
   models so it fits on 2 cores, the paper's N=60, K=20, M=50) end to end in a
   subprocess with its own ``PREFECT_HOME``, sampling the peak RSS of every process
   of the run. Per stage (from Prefect's own task-run records): wall time, images/s;
   Prefect's overhead per shard (task runs, time between tasks); bytes written per
   image.
3. The inference breakdown per image by part, from ``benchmarks/bench_host.py`` (its own
   smallest models on generated ImageNet-size JPEGs at the same N, K, M).
4. Kills a second run with SIGKILL once 60% of the prediction parts are committed,
   reruns it, and prints what was recomputed, the total against the uninterrupted
   run, and whether the predictions are identical.
5. SQL at scale (``benchmarks/bench_sql.py``): every named query of ``sql/`` and
   ``abs-eval status`` on the run's rows, then on 10 million rows made by replaying the
   run's rows as 50,000-image runs (part files and markers in the real layout, run
   records of their own), from the ``results.duckdb`` catalog.

    .venv/bin/python benchmarks/rehearsal.py --images 5000 --out rehearsal-5k.json
    .venv/bin/python benchmarks/rehearsal.py --images 50000 --out rehearsal-50k.json

Targets (issue 11), printed next to the figures: peak RSS of any process < 3 GB and
the same at 5,000 and 50,000 images; sharding >= 500 images/s; DINO cache and
inference linear in the image count; the kill + resume recomputes at most one shard
per worker beyond what was lost, within 1.15x of the uninterrupted wall time, with
identical predictions; every named query and ``abs-eval status`` under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from machine import machine_info, machine_summary  # noqa: E402  (benchmarks/machine.py)

GEN_VERSION = 1
TINY = ["--clip-model", "abs-tiny-vit-b16", "--clip-pretrained", "random",
        "--dino-model", "abs-tiny-dino-vit-b16", "--dino-pretrained", "random"]


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


def _write_class(job: tuple[str, str, int, int]) -> int:
    import numpy as np

    folder, wnid, label, per_class = job
    os.makedirs(os.path.join(folder, wnid), exist_ok=True)
    total = 0
    for i in range(per_class):
        seed = label * 100_003 + i
        w, h = _size(np.random.default_rng(seed))
        path = os.path.join(folder, wnid, f"ILSVRC2012_val_{label:04d}{i:04d}.JPEG")
        if not os.path.exists(path):
            tmp = path + ".tmp"
            _photo(w, h, seed).save(tmp, "JPEG", quality=90)
            os.replace(tmp, path)
        total += os.path.getsize(path)
    return total


def generate(data: Path, n_images: int, workers: int) -> Path:
    """``data/imagenet-<n>/val`` with n_images JPEGs over the 1,000 classes (cached)."""
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
    jobs = [(str(val), w, i, per_class) for i, w in enumerate(imagenet_wnids())]
    with Pool(workers) as pool:
        sizes = pool.map(_write_class, jobs, chunksize=4)
    n = per_class * 1000
    done.write_text(json.dumps({"version": GEN_VERSION, "images": n, "bytes": sum(sizes)}))
    print(f"[data] generated {n} JPEGs ({sum(sizes) / n / 1000:.0f} KB each) in {time.perf_counter() - t0:.0f} s: {val}")
    return val


def write_descriptions(src: Path, out: Path, m: int = 50) -> Path:
    """CuPL-style JSON: M sentences per class, keyed by the layout's text class names."""
    from tasks.datasets import layout_classes

    if out.exists():
        return out
    _, names = layout_classes("imagenet", str(src))
    styles = ["a photo of a {}.", "a close-up photo of a {}.", "a {} in its natural setting.",
              "a blurry photo of a {}.", "a {} seen from the side.", "a bright photo of a {}.",
              "a {} with a plain background.", "a cropped photo of a {}.", "a {} in the wild.", "a large {}."]
    doc = {n: [f"{styles[j % len(styles)].format(n)} (view {j})" for j in range(m)] for n in names}
    out.write_text(json.dumps(doc))
    return out


# ---------------------------------------------------------------------- processes
class PeakRSS:
    """Samples the peak RSS (VmHWM) of a process and all its descendants every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every = pid, every
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo += children.get(p, [])
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self._tree():
                try:
                    with open(f"/proc/{p}/status") as f:
                        hwm = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:"))
                    with open(f"/proc/{p}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                except (OSError, StopIteration, ValueError):
                    continue
                name = " ".join(Path(x).name if "/" in x else x for x in cmd.split()[:3])[:60]
                if hwm * 1024 > self.peaks.get(p, ("", 0))[1]:
                    self.peaks[p] = (name, hwm * 1024)
            self._stop.wait(self.every)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._t.join()
        return {f"{name} (pid {p})": b for p, (name, b) in sorted(self.peaks.items())}


def run_cli(args: list[str], env: dict[str, str], log: Path, kill=None) -> dict:
    """``abs-eval ARGS`` in its own process group; ``kill()`` returning True SIGKILLs it."""
    exe = REPO / ".venv" / "bin" / "abs-eval"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd + args, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(REPO))
        rss = PeakRSS(proc.pid)
        killed = False
        while proc.poll() is None:
            if kill is not None and kill():
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                proc.wait()
                break
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    peaks = rss.stop()
    if proc.returncode not in (0, -9) and not killed:
        raise SystemExit(f"abs-eval {' '.join(args[:1])} failed ({proc.returncode}); log: {log}\n"
                         + log.read_text()[-3000:])
    return {"wall_s": wall, "returncode": proc.returncode, "killed": killed, "peak_rss": peaks}


def _env(prefect_home: Path) -> dict[str, str]:
    prefect_home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(prefect_home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONUNBUFFERED="1")
    return env


# ---------------------------------------------------------------------- figures
def task_stats(prefect_home: Path) -> dict:
    """Per stage from Prefect's task runs (start/end), and the time between consecutive tasks."""
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
    res = subprocess.run([sys.executable, "-c", code], env=_env(prefect_home), capture_output=True, text=True,
                         cwd=str(REPO), timeout=600)
    if res.returncode != 0:
        return {"error": res.stderr[-500:]}
    runs = [r for r in json.loads(res.stdout.strip().splitlines()[-1]) if r["start"] and r["end"]]
    runs.sort(key=lambda r: r["start"])
    stages: dict[str, dict] = {}
    for r in runs:
        # "dino-shard-12" (our run names) and "shard-dataset-18a" (Prefect's suffix) -> the task kind
        kind = re.sub(r"-(\d+|[0-9a-f]{3})$", "", r["name"])
        s = stages.setdefault(kind, {"tasks": 0, "busy_s": 0.0, "first_start": r["start"], "last_end": r["end"]})
        s["tasks"] += 1
        s["busy_s"] += r["end"] - r["start"]
        s["last_end"] = max(s["last_end"], r["end"])
    gaps = [max(0.0, b["start"] - a["end"]) for a, b in zip(runs, runs[1:])]
    return {"task_runs": len(runs), "stages": stages, "gap_total_s": sum(gaps),
            "gap_mean_s": sum(gaps) / len(gaps) if gaps else 0.0, "first": runs[0]["start"] if runs else None,
            "last": runs[-1]["end"] if runs else None}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def latest_run(root: Path) -> dict:
    recs = sorted((root / "runs").glob("run=*/run.json"))
    return json.loads(recs[-1].read_text()) if recs else {}


def compare_predictions(a: Path, b: Path) -> dict:
    import duckdb

    q = ("select image_id, method, label, pred, top5, score_true, margin, status, raw_boxes, feature_windows "
         "from read_parquet('{}/predictions/*/*/*/part-*.parquet', hive_partitioning=true) order by image_id, method")
    con = duckdb.connect()
    ra, rb = con.sql(q.format(a)).fetchall(), con.sql(q.format(b)).fetchall()
    return {"rows_a": len(ra), "rows_b": len(rb), "identical": ra == rb}


def breakdown(work: Path) -> dict:
    """Inference cost per image by part: ``benchmarks/bench_host.py`` (decode, geometry, taps,
    resampling, model forwards, soft matching, rows, Parquet, commit), printed as it runs.

    Its own smallest models and generated ImageNet-size JPEGs at the same N, K, M, not the
    run's data: with tiny arithmetic the host costs show (see its docstring)."""
    out = work / "breakdown.json"
    log = work / "breakdown.log"
    with open(log, "w") as f:
        res = subprocess.run([sys.executable, str(HERE / "bench_host.py"), "--images", "16", "--shard-images", "16",
                              "--big-shard", "200", "--out", str(out)], stdout=f, stderr=subprocess.STDOUT)
    text = log.read_text()
    print(text[text.find("-- predict"):] if "-- predict" in text else text[-2000:])
    if res.returncode or not out.exists():
        return {"note": f"bench_host.py failed ({res.returncode}); log: {log}"}
    return json.loads(out.read_text())


# ---------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50_000, help="images (a multiple of 1,000; 50 per class = val)")
    ap.add_argument("--data", default=str(REPO / "abs-output" / "rehearsal-data"), help="generated data (cached)")
    ap.add_argument("--work", default=str(REPO / "abs-output" / "rehearsal"), help="roots, Prefect homes, logs")
    ap.add_argument("--kill-at", type=float, default=0.6, help="fraction of prediction parts before SIGKILL")
    ap.add_argument("--sql-rows", type=int, default=10_000_000, help="prediction rows for the SQL-at-scale step")
    ap.add_argument("--skip-kill", action="store_true")
    ap.add_argument("--skip-sql", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="processes generating the JPEGs")
    ap.add_argument("--crops", type=int, default=60, help="N crops per branch (the paper's 60; fewer only to "
                                                          "try the script quickly, and the output says so)")
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()

    info = machine_info()
    print(machine_summary(info))
    figures: dict = {"machine": info, "images": args.images}
    data, work = Path(args.data), Path(args.work) / f"n{args.images}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t = time.perf_counter()
    src = generate(data, args.images, args.workers)
    figures["generate_s"] = time.perf_counter() - t
    desc = write_descriptions(src, src.parent / "cupl.json")
    n = len(list(src.glob("*/*.JPEG")))
    run_args = ["run", "--dataset", "imagenet", "--layout", "imagenet", "--source", str(src),
                "--descriptions", str(desc), *TINY, "--deployment", "rehearsal", "--n-crops", str(args.crops)]
    figures["n_crops"] = args.crops
    if args.crops != 60:
        print(f"[note] N={args.crops}, not the paper's 60: a trial of the script, not the rehearsal's figures")

    # -- uninterrupted
    root1 = work / "root-uninterrupted"
    home1 = work / "prefect-uninterrupted"
    print(f"[run] uninterrupted: {n} images -> {root1}")
    r1 = run_cli([*run_args, "--root", str(root1)], _env(home1), work / "uninterrupted.log")
    stats = task_stats(home1)
    rec1 = latest_run(root1)
    figures["uninterrupted"] = {**r1, "prefect": stats, "run": {k: rec1.get(k) for k in (
        "run_id", "n_images", "n_error", "shards_total", "shards_computed")},
        "bytes_per_image": {d: du(root1 / d) / n for d in ("shards", "cache/dino", "cache/text", "predictions")}}
    print(f"[run] done in {r1['wall_s']:.0f} s")
    for name, s in stats.get("stages", {}).items():
        images = n if name in ("shard-dataset", "dino-shard", "infer-shard") else None
        rate = f"{images / s['busy_s']:.1f} img/s" if images and s["busy_s"] else ""
        print(f"  {name:<20} {s['tasks']:>4} tasks  busy {s['busy_s']:8.1f} s  {rate}")
    print(f"  Prefect: {stats.get('task_runs')} task runs, {stats.get('gap_total_s', 0):.1f} s between tasks "
          f"({stats.get('gap_mean_s', 0) * 1000:.0f} ms mean gap)")
    for who, b in r1["peak_rss"].items():
        print(f"  peak RSS {b / 2**20:8.0f} MiB  {who}")
    print("  bytes/image: " + ", ".join(f"{k} {v / 1000:.1f} KB" for k, v in figures["uninterrupted"]["bytes_per_image"].items()))

    print("[breakdown] inference per image by part (benchmarks/bench_host.py)")
    figures["inference_breakdown"] = breakdown(work)

    # -- killed at 60% and resumed
    if not args.skip_kill:
        root2 = work / "root-killed"
        home2 = work / "prefect-killed"
        shards = -(-n // 1000)
        target = max(1, int(args.kill_at * shards))

        def committed() -> int:
            return len(list((root2 / "_commits" / "predictions").glob("*/*/*/part-*.json")))

        print(f"[kill] SIGKILL after {target} of {shards} prediction parts")
        r2 = run_cli([*run_args, "--root", str(root2)], _env(home2), work / "killed.log",
                     kill=lambda: committed() >= target)
        at_kill = committed()
        r3 = run_cli([*run_args, "--root", str(root2)], _env(home2), work / "resumed.log")
        rec3 = latest_run(root2)
        same = compare_predictions(root1, root2)
        total = r2["wall_s"] + r3["wall_s"]
        figures["kill_resume"] = {"killed_after_parts": at_kill, "parts_total": shards, "killed": r2,
                                  "resumed": r3, "recomputed": rec3.get("shards_computed"),
                                  "lost_in_flight": rec3.get("shards_computed", 0) - (shards - at_kill),
                                  "total_vs_uninterrupted": total / r1["wall_s"], "predictions": same}
        print(f"  killed after {at_kill}/{shards} parts ({r2['wall_s']:.0f} s); resume computed "
              f"{rec3.get('shards_computed')} ({r3['wall_s']:.0f} s); total {total / r1['wall_s']:.2f}x uninterrupted; "
              f"predictions identical: {same['identical']} ({same['rows_b']} rows)")

    # -- SQL at scale (benchmarks/bench_sql.py: the run's rows, then replayed to --sql-rows)
    if not args.skip_sql:
        from bench_sql import build, time_queries

        t1 = time_queries(root1, work / "results.duckdb", reps=2)
        images_per_run = max(n, 50_000)
        rows_per_run = images_per_run * 4
        runs = max(1, args.sql_rows // rows_per_run)
        shape = build(root1, work / "root-sql", images_per_run, runs, 1000)
        t2 = time_queries(work / "root-sql", work / "results-sql.duckdb", reps=2)
        figures["sql"] = {"rows_run": int(rec1.get("n_images", n)) * 4, "seconds_run": t1, **shape, "seconds_scaled": t2}
        print(f"[sql] seconds per query: this run's {figures['sql']['rows_run']:,} rows | "
              f"{shape['rows']:,} rows in {shape['runs']} runs of {images_per_run:,} images")
        for q in t1:
            print(f"  {q:<40} {t1[q]:7.3f} | {t2.get(q, float('nan')):7.3f}")
        shutil.rmtree(work / "root-sql", ignore_errors=True)

    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2, default=str))
        print(f"[out] {args.out}")


if __name__ == "__main__":
    main()
