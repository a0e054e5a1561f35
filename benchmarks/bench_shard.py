"""Sharding throughput: the whole ``abs-eval shard`` command and the plain function, in-process vs worker processes.

Why: sharding reads every image once, hashes it and fully decodes it (the check
that turns bad files into error rows). On threads in one process that work is
bound by the GIL; issue 16 asks for >= 500 images/s on a 2-core machine for the
whole command, with the full decode check, in worker processes. This script puts
the two paths side by side on the same ImageNet-size JPEGs:

* ``threads``: ``ABS_EVAL_SHARD_WORKERS=0``: read and check in the command's own
  process on reader threads (the path the project had before worker processes);
* ``processes``: the default: ``os.cpu_count()`` worker processes (forkserver)
  read, hash and decode, the command writes the Parquet files.

For each it runs the real ``abs-eval shard imagenet ...`` in a subprocess on a
fresh root and reports wall time, images/s, CPU seconds of every process of the
command (the worker processes included: this script makes itself the subreaper
of what the command starts, so orphaned workers are reaped and counted), the
CPU share (CPU seconds / (wall x CPUs)), and the peak RSS of every process
(sampled VmHWM). Then the same for the plain function ``shard_dataset`` (timed
inside its process, without the interpreter start). The part files of all runs
must be byte-identical; the script says so. It also times ``import tasks.steps.shard``
and says whether torch or Prefect came with it.

The machine is printed first (``benchmarks/machine.py``), and the load average
before and after: on a shared machine the wall figures move with the load, the
CPU seconds much less.

    .venv/bin/python benchmarks/bench_shard.py                    # 2,000 images, both paths
    .venv/bin/python benchmarks/bench_shard.py --images 5000 --repeat 2 --out shard.json

``--baseline DIR`` adds a third path: the command and function of another checkout
of this repository (e.g. ``git archive <commit> | tar -x -C DIR``), run with this
venv, to compare against the code as it was.

The images are generated once by ``benchmarks/rehearsal.py``'s generator (the
``imagenet`` layout, ~120 KB JPEGs, mostly 500x375) and cached under ``--data``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from machine import machine_info, machine_summary  # noqa: E402  (benchmarks/machine.py)
from procwatch import ProcessWatch  # noqa: E402  (benchmarks/procwatch.py)
from rehearsal import generate  # noqa: E402  (the ImageNet-size JPEG generator)

MODES = {"threads": "0", "processes": None, "baseline": None}  # ABS_EVAL_SHARD_WORKERS (None: the default)

_PLAIN = r"""
import json, resource, sys, time
t0 = time.perf_counter()
try:
    from tasks.steps.shard import shard_dataset
except ModuleNotFoundError:  # a --baseline checkout from before tasks/steps/ (issue 18)
    from tasks.shard import shard_dataset
t1 = time.perf_counter()
m = shard_dataset("imagenet", sys.argv[1], sys.argv[2], "bench", progress=False)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "shard_s": t2 - t1, "n_total": m.n_total, "n_ok": m.n_ok}))
"""

_IMPORT = r"""
import json, sys, time
t = time.perf_counter()
try:
    import tasks.steps.shard
except ModuleNotFoundError:  # a --baseline checkout from before tasks/steps/ (issue 18)
    import tasks.shard
print(json.dumps({"import_s": time.perf_counter() - t, "torch": "torch" in sys.modules, "prefect": "prefect" in sys.modules}))
"""


def _become_subreaper() -> bool:
    """Orphans of the commands we start (the forkserver and its workers) become our children (Linux)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap(timeout: float = 10.0) -> None:
    """Wait for every remaining child (orphaned worker processes), so their CPU time is counted."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.02)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _env(mode: str, baseline: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ABS_EVAL_SHARD_WORKERS"}
    if MODES[mode] is not None:
        env["ABS_EVAL_SHARD_WORKERS"] = MODES[mode]
    if mode == "baseline" and baseline:
        env["PYTHONPATH"] = os.pathsep.join([baseline, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1")
    return env


def _run(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> dict:
    """Run ``cmd``; wall, CPU of it and every process it started, peak RSS of each."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=f, cwd=str(cwd), text=True)
        rss = ProcessWatch(proc.pid, every=0.05)
        out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    _reap()
    peaks = rss.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}); log: {log}\n" + log.read_text()[-3000:])
    return {"wall_s": wall, "cpu_s": _children_cpu() - cpu0, "peak_rss": peaks, "stdout": out}


def _parts(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards" / "dataset=bench").glob("part-*.parquet"))}


def _abs_eval(mode: str = "processes") -> list[str]:
    exe = REPO / ".venv" / "bin" / "abs-eval"
    if mode == "baseline" or not exe.exists():  # the checkout's own flows.cli, as the console script runs it
        return [
            sys.executable,
            "-c",
            "import sys; from flows.cli import app; sys.argv[0] = 'abs-eval'; sys.exit(app())",
        ]
    return [str(exe)]


def _line(label: str, n: int, r: dict, ncpu: int) -> str:
    rate = n / r["wall_s"]
    share = r["cpu_s"] / (r["wall_s"] * ncpu)
    peak = max(r["peak_rss"].values()) if r["peak_rss"] else 0
    return (
        f"  {label:<34} {r['wall_s']:7.2f} s  {rate:6.0f} img/s  CPU {r['cpu_s']:6.2f} s "
        f"({1000 * r['cpu_s'] / n:.2f} ms/img, share {share:4.0%})  peak RSS max {peak / 2**20:5.0f} MB "
        f"over {len(r['peak_rss'])} processes"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="ImageNet-size JPEGs (rounded down to 1000s)")
    ap.add_argument("--data", default=str(REPO / "abs-output" / "rehearsal-data"), help="generated data (cached)")
    ap.add_argument("--work", default=str(REPO / "abs-output" / "bench-shard"), help="scratch roots (removed)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; the modes alternate within each round")
    ap.add_argument("--modes", default="threads,processes", help="comma-separated: threads, processes")
    ap.add_argument("--baseline", help="another checkout of the repository to time too (mode 'baseline')")
    ap.add_argument("--no-plain", action="store_true", help="time only the whole command")
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()

    info = machine_info()
    print(machine_summary(info))
    ncpu = os.cpu_count() or 1
    subreaper = _become_subreaper()
    src = generate(Path(args.data), args.images, min(ncpu, 4))
    n = len(list(src.glob("*/*.JPEG")))
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    baseline = str(Path(args.baseline).resolve()) if args.baseline else None
    if baseline and "baseline" not in modes:
        modes.insert(0, "baseline")
    load0 = os.getloadavg()
    print(
        f"{n} images under {src}; load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} on {ncpu} CPUs"
        + ("" if subreaper else " (no subreaper: worker CPU may be missing)")
    )

    imp = {}
    for mode in (["baseline"] if baseline else []) + ["processes"]:
        got = json.loads(
            _run(
                [sys.executable, "-c", _IMPORT],
                _env(mode, baseline),
                work / "import.log",
                Path(baseline) if mode == "baseline" else REPO,
            )["stdout"]
        )
        imp[mode] = got
        print(
            f"import tasks.steps.shard{' (baseline)' if mode == 'baseline' else ''}: {got['import_s']:.2f} s "
            f"(torch {'loaded' if got['torch'] else 'not loaded'}, prefect {'loaded' if got['prefect'] else 'not loaded'})"
        )

    results: dict[str, list[dict]] = {}
    reference: dict[str, bytes] | None = None
    identical = True
    for rnd in range(args.repeat):
        for mode in modes:
            for kind in ("command",) + (() if args.no_plain else ("function",)):
                root = work / f"{kind}-{mode}-{rnd}"
                if kind == "command":
                    cmd = _abs_eval(mode) + ["shard", "imagenet", str(src), "--dataset", "bench", "--root", str(root)]
                else:
                    cmd = [sys.executable, "-c", _PLAIN, str(src), str(root)]
                r = _run(
                    cmd,
                    _env(mode, baseline),
                    work / f"{kind}-{mode}-{rnd}.log",
                    Path(baseline) if mode == "baseline" else REPO,
                )
                if kind == "function":
                    r.update(json.loads(r.pop("stdout").strip().splitlines()[-1]))
                else:
                    r.pop("stdout")
                parts = _parts(root)
                if reference is None:
                    reference = parts
                identical &= parts == reference and len(parts) > 0
                shutil.rmtree(root, ignore_errors=True)
                label = f"{'abs-eval shard' if kind == 'command' else 'shard_dataset()'} [{mode}]"
                print(_line(label, n, r, ncpu), flush=True)
                if kind == "function":
                    print(
                        f"  {'':<34} inside the process: import {r['import_s']:.2f} s, shard_dataset "
                        f"{r['shard_s']:.2f} s = {n / r['shard_s']:.0f} img/s"
                    )
                for name, b in r["peak_rss"].items():
                    print(f"  {'':<36}{b / 2**20:7.0f} MB  {name}")
                results.setdefault(f"{kind}/{mode}", []).append(r)
    load1 = os.getloadavg()
    print(
        f"part files identical across every run: {identical}; load average after {load1[0]:.1f} {load1[1]:.1f} "
        f"{load1[2]:.1f}"
    )
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in results.items()}
    print("best of each (images/s, whole run):  " + ",  ".join(f"{k} {n / r['wall_s']:.0f}" for k, r in best.items()))
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": info,
                    "images": n,
                    "load_before": load0,
                    "load_after": load1,
                    "import": imp,
                    "identical": identical,
                    "runs": results,
                },
                indent=2,
                default=str,
            )
        )
    shutil.rmtree(work, ignore_errors=True)
    if not identical:
        raise SystemExit("part files differ between runs")


if __name__ == "__main__":
    main()
