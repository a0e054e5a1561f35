"""The progress artifact watched during a run of a few minutes, on a real Prefect server (issue 21, item 3).

What a person would see in the Prefect UI while a long run runs, and what it costs the run:

1. starts ``prefect server start`` on a free port (its own temporary ``PREFECT_HOME``, no telemetry;
   ``scripts/ui_screenshots.py``'s :class:`Server`);
2. generates a labelled image folder (the demo's 12 classes of drawn shapes, 96-320 px JPEGs,
   ``tasks.steps.demo_data``) with M = 8 descriptions per class;
3. runs the real ``abs-eval run`` against that server (``PREFECT_API_URL``) with the shipped micro
   random-weight models (``abs-micro-vit``, ``abs-micro-dino``), the paper's N = 60, K = 20, in
   ``--images`` / ``--shard-size`` shards;
4. meanwhile asks the server's REST API every ``--interval`` seconds for the run's progress artifact
   (``POST /api/artifacts/filter``, type ``progress``) and records every distinct state (seconds
   since the run started, % done, description);
5. reads from the run's output the line ``flows.live`` logs at the end (``progress artifact of run ...:
   N updates over S shards, X s in total (P% of the T s the shards took), C s of CPU, A s in API calls
   (F s the first)``): what the artifact cost, measured inside the run, against the run's wall time
   measured here. The wall seconds are the flow thread's (mostly waiting on the API, while the shards
   compute in their own threads); the CPU seconds are what it took from them.

Prints the timeline (seconds, %, shards and images done, images/s, time left, accuracy so far) and the
cost; ``--out`` writes the same as JSON. Exits 1 unless the progress rose monotonically through at least
3 distinct values between 0 and 100% before the run ended, ended at 100%, and a time-left estimate was
shown mid-run.

    .venv/bin/python benchmarks/bench_progress.py --out progress.json     # ~4-6 minutes on 2 cores

With ``--screenshot FILE.png`` it also takes one headless Chromium screenshot of the artifact's page
once the run is past half way (Chromium takes CPU from the run while it renders: leave it out when
the cost is the figure wanted). Without Chromium that step is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "scripts"))

from machine import machine_info, machine_summary  # noqa: E402  (benchmarks/machine.py)
from ui_screenshots import WIDTH, Browser, Server, find_chromium  # noqa: E402  (scripts/ui_screenshots.py)

MICRO = ["--clip-model", "abs-micro-vit", "--clip-pretrained", "random"]
MICRO += ["--dino-model", "abs-micro-dino", "--dino-pretrained", "random"]
#: flows.live.ProgressCost.line, the run's last word about the artifact
COST_LINE = re.compile(
    r"progress artifact of run (?P<run_id>\S+): (?P<updates>\d+) updates over (?P<shards>\d+) shards, "
    r"(?P<seconds>[\d.]+) s in total \((?P<percent>[\d.]+)% of the (?P<span>[\d,]+) s the shards took\), "
    r"(?P<cpu>[\d.]+) s of CPU, (?P<api>[\d.]+) s in API calls \((?P<first>[\d.]+) s the first\)"
)


class Seen(NamedTuple):
    """One distinct state of the progress artifact, as the API returned it, parsed for the timeline (a named
    tuple, not a dataclass: tests load this script by path, outside ``sys.modules``)."""

    t: float  # seconds since `abs-eval run` started
    percent: float
    description: str
    shards: str = ""
    images: str = ""
    rate: float | None = None
    left: str = ""
    accuracy: str = ""

    @classmethod
    def parse(cls, t: float, percent: float, description: str) -> Seen:
        def find(pattern: str) -> str:
            m = re.search(pattern, description)
            return m.group(1) if m else ""

        rate = find(r"([\d.]+) images/s")
        return cls(
            t=round(t, 1),
            percent=percent,
            description=description,
            shards=find(r"(\d+/\d+) shards"),
            images=find(r"([\d,]+(?:/[\d,]+)?) images\b"),
            rate=float(rate) if rate else None,
            left=find(r"about (.+?) left"),
            accuracy=find(r"Accuracy so far \(completed shards, not final\): (.+)"),
        )


def progress_artifact(server: Server) -> dict[str, Any] | None:
    """The newest progress artifact on the server (a fresh one: it holds this run's only)."""
    rows = server.api(
        "POST", "/artifacts/filter", {"artifacts": {"type": {"any_": ["progress"]}}, "sort": "CREATED_DESC", "limit": 1}
    )
    return rows[0] if rows else None


def write_dataset(work: Path, images: int) -> tuple[Path, Path, int]:
    """The demo's 12 classes, ``ceil(images / 12)`` JPEGs each, and their descriptions (M = 8)."""
    from tasks.steps.demo_data import demo_descriptions, write_demo_dataset

    src = work / "images"
    per_class = math.ceil(images / 12)
    classes = write_demo_dataset(str(src), per_class=per_class)
    desc = work / "descriptions.json"
    desc.write_text(json.dumps(demo_descriptions(classes, m=8)))
    return src, desc, per_class * len(classes)


class Screenshot(threading.Thread):
    """One headless Chromium screenshot of the artifact's page, off the polling loop (it takes seconds)."""

    def __init__(self, url: str, path: Path, work: Path) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.work = url, path, work
        self.note = ""

    def run(self) -> None:
        try:
            binary = find_chromium(None)
        except SystemExit:
            self.note = "skipped: Chromium not found (apt-get install -y chromium)"
            return
        browser = None
        try:
            browser = Browser(binary, self.work, 900)
            browser.open(self.url, "shards")
            browser.screenshot(self.path)
            self.note = f"{self.path} ({WIDTH} px wide)"
        except Exception as exc:  # noqa: BLE001 - the screenshot is an extra: the figures stand without it
            self.note = f"failed: {type(exc).__name__}: {exc}"
        finally:
            if browser is not None:
                browser.close()


def watch_run(
    server: Server, cmd: list[str], log: Path, interval: float, shot: Path | None, work: Path
) -> tuple[int, float, list[Seen], str]:
    """Runs ``cmd`` (its own process group) and polls the progress artifact until it ends; returns the exit
    code, the wall seconds, the distinct states seen (the last one read after the run ended) and a note about
    the screenshot."""
    seen: list[Seen] = []
    shooter: Screenshot | None = None
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=server.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while True:
                running = proc.poll() is None
                try:
                    art = progress_artifact(server)
                except Exception as exc:  # noqa: BLE001 - one missed poll is a gap in the timeline, not a failure
                    print(f"  poll failed: {type(exc).__name__}: {exc}", flush=True)
                    art = None
                if art is not None:
                    state = (float(art["data"]), art.get("description") or "")
                    if not seen or (seen[-1].percent, seen[-1].description) != state:
                        seen.append(Seen.parse(time.perf_counter() - t0, *state))
                        print(f"  {seen[-1].t:7.1f} s  {seen[-1].percent:5.1f}%  {seen[-1].shards} shards", flush=True)
                    if shot is not None and shooter is None and state[0] >= 50 and running:
                        shooter = Screenshot(f"{server.url}/artifacts/artifact/{art['id']}", shot, work)
                        shooter.start()
                if not running:
                    break
                time.sleep(interval)
            wall = time.perf_counter() - t0
        except BaseException:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            raise
    if shooter is not None:
        shooter.join(120)
    note = shooter.note if shooter is not None else ("not asked for" if shot is None else "the run ended first")
    return proc.returncode, wall, seen, note


def checks(rc: int, seen: list[Seen], cost: dict[str, Any] | None) -> list[str]:
    """What must hold (the module docstring); an empty list when everything does."""
    fails = []
    if rc != 0:
        fails.append(f"abs-eval run exited {rc}")
    during = seen[:-1]  # the last state was read after the run ended
    values = [s.percent for s in seen]
    if any(b < a for a, b in zip(values, values[1:])):
        fails.append(f"progress went down: {values}")
    middle = sorted({s.percent for s in during if 0 < s.percent < 100})
    if len(middle) < 3:
        fails.append(f"{len(middle)} distinct intermediate values seen while the run ran (at least 3 wanted): {middle}")
    if not seen or seen[-1].percent != 100:
        fails.append(f"the artifact did not end at 100% ({values[-1] if values else 'never seen'})")
    if not any(s.left for s in during if s.percent < 100):
        fails.append("no time-left estimate shown mid-run")
    if cost is None:
        fails.append("the run did not log the progress artifact's cost (flows.live)")
    return fails


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3600, help="images (12 classes; rounded up to a multiple of 12)")
    ap.add_argument("--shard-size", type=int, default=300, help="images per shard (default 300: 12 shards)")
    ap.add_argument("--work", type=Path, help="dataset, root, Prefect home and logs (default: a temp folder, removed)")
    ap.add_argument("--out", type=Path, help="write the timeline, the cost and the checks as JSON")
    ap.add_argument("--n-crops", type=int, default=60, help="N crops per branch (the paper's 60)")
    ap.add_argument("--runner", default="threads", help="task runner of the run (default: threads, as abs-eval run)")
    ap.add_argument("--workers", type=int, default=1, help="parallel shard tasks (default 1, as abs-eval run)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between two reads of the artifact")
    ap.add_argument("--server-timeout", type=float, default=90.0, help="seconds to wait for the Prefect server")
    ap.add_argument("--screenshot", type=Path, help="also a Chromium screenshot of the artifact page past 50%%")
    args = ap.parse_args(argv)
    if args.images < 1 or args.shard_size < 1 or args.interval <= 0:
        ap.error("--images, --shard-size and --interval must be positive")

    info = machine_info()
    print(machine_summary(info))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="abs-bench-progress-"))
    work.mkdir(parents=True, exist_ok=True)
    src, desc, n = write_dataset(work, args.images)
    shards = math.ceil(n / args.shard_size)
    root = work / "root"
    shutil.rmtree(root, ignore_errors=True)
    exe = REPO / ".venv" / "bin" / "abs-eval"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]
    cmd += ["run", "--dataset", "shapes", "--layout", "folder", "--source", str(src), "--descriptions", str(desc)]
    cmd += [*MICRO, "--m", "8", "--n-crops", str(args.n_crops), "--images-per-shard", str(args.shard_size)]
    cmd += ["--runner", args.runner, "--workers", str(args.workers), "--deployment", "bench-progress"]
    cmd += ["--root", str(root)]
    print(f"[data] {n} images in {shards} shards of {args.shard_size}: {src}", flush=True)
    log = work / "run.log"
    server = Server(work)
    try:
        server.wait(args.server_timeout)
        print(f"[server] prefect server up at {server.url}; running {' '.join(cmd[1:3])} ... (log: {log})", flush=True)
        rc, wall, seen, shot_note = watch_run(server, cmd, log, args.interval, args.screenshot, work)
    finally:
        server.stop()
    text = log.read_text(errors="replace")
    m = COST_LINE.search(text)
    cost: dict[str, Any] | None = None
    if m:
        cost = {
            "run_id": m["run_id"],
            "updates": int(m["updates"]),
            "shards": int(m["shards"]),
            "seconds": float(m["seconds"]),
            "cpu_seconds": float(m["cpu"]),
            "api_seconds": float(m["api"]),
            "first_api_seconds": float(m["first"]),
            "percent_of_shards_span": float(m["percent"]),
            "shards_span_s": float(m["span"].replace(",", "")),
            "percent_of_run_wall": 100 * float(m["seconds"]) / wall,
        }

    print(f"\nabs-eval run: exit {rc}, {wall:.0f} s wall; the progress artifact as the API returned it:")
    print(f"{'s':>7}  {'%':>6}  {'shards':>7}  {'images':>13}  {'images/s':>8}  {'time left':>14}  accuracy so far")
    for s in seen:
        rate = f"{s.rate:.1f}" if s.rate is not None else "-"
        print(
            f"{s.t:7.1f}  {s.percent:6.1f}  {s.shards:>7}  {s.images:>13}  {rate:>8}  {s.left or '-':>14}  "
            f"{s.accuracy or '-'}"
        )
    if cost:
        print(
            f"\ncost, measured inside the run (flows.live): {cost['updates']} updates over {cost['shards']} shards, "
            f"{cost['seconds']:.2f} s in total ({cost['api_seconds']:.2f} s in API calls, "
            f"{cost['first_api_seconds']:.2f} s the first; {cost['cpu_seconds']:.2f} s of CPU) = "
            f"{cost['percent_of_shards_span']:.3f}% of the "
            f"{cost['shards_span_s']:.0f} s the shards took, {cost['percent_of_run_wall']:.3f}% of the run's "
            f"{wall:.0f} s wall"
        )
    print(f"screenshot: {shot_note}")
    fails = checks(rc, seen, cost)
    result = {
        "machine": info,
        "settings": {
            "images": n,
            "shard_size": args.shard_size,
            "shards": shards,
            "n_crops": args.n_crops,
            "runner": args.runner,
            "workers": args.workers,
            "interval_s": args.interval,
            "models": "abs-micro-vit + abs-micro-dino (random weights)",
        },
        "run": {"returncode": rc, "wall_s": wall},
        "timeline": [s._asdict() for s in seen],
        "cost": cost,
        "screenshot": shot_note,
        "failures": fails,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    for f in fails:
        print(f"FAIL {f}")
    if rc != 0:
        print(text[-3000:])
    print("OK" if not fails else f"{len(fails)} checks failed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
