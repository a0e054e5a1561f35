"""abs-eval against LAION's CLIP_benchmark on the same WebDataset and checkpoint, method by method.

What it does (issue 19, "a comparison users can rerun"):

1. writes a small WebDataset in CLIP_benchmark's shape (``<work>/wds/<name>/test/0.tar ...``,
   ``test/nshards.txt``, ``classnames.txt``, ``zeroshot_classification_templates.txt`` holding the
   80 OpenAI ImageNet templates with ``{c}``), images of many sizes from 61 px to 3000 px
   (several over 1024 px), JPEG and PNG, plus a CuPL-style description file;
2. writes one random-weight open_clip checkpoint (``torch.save`` of ``create_model(...).state_dict()``,
   seeded; both tools load it by path, through open_clip's own loader);
3. runs CLIP_benchmark's real CLI (``clip_benchmark eval --no_amp``, fp32: its default ``amp`` is
   bf16 autocast on a CPU) once per baseline, the three in one process: ``clip-e`` with the dataset's own templates,
   ``clip`` and ``cupl`` with ``--custom_template_file`` (``a photo of a {c}.``; the descriptions
   per class). The per-image logits are those CLIP_benchmark's ``run_classification`` returns
   inside that CLI run: the driver wraps the function to save its return value (CLIP_benchmark
   has no option to dump them) and changes nothing else;
4. runs ``abs-eval run --layout webdataset`` on the same folder and checkpoint (fp32, CPU), then reads its
   ``export`` (CLIP_benchmark-shaped metrics) and its per-image rows (``pred``, ``top5``,
   ``score_true``, ``margin``) through ``abs-eval sql run``;
5. prints per method both tools' acc1 / acc5 / mean per-class recall, how many images have the
   same argmax and the same ordered top-5, and the largest |logit difference| over the logits
   abs-eval stores per image (the true class's, ``score_true``, and the best other class's,
   ``score_true - margin``), over all images and over those with a side > 1024 px. Exit code 1
   when a check fails (metrics differ by more than 1e-9, an argmax or top-5 differs, a logit
   differs by more than ``--tolerance``).

CLIP_benchmark is not a dependency of this project. Install it, once, into a folder of its own
(``--no-deps``: it reuses this environment's torch, open_clip, Pillow; the few packages it needs
beyond those go into the same folder, with NumPy < 2.4 because its ``accuracy()`` calls
``float()`` on a 1-element array, which NumPy 2.4 refuses)::

    .venv/bin/pip install --no-deps --target abs-output/clip-benchmark/site clip-benchmark==1.6.2 \\
        webdataset braceexpand scikit-learn scipy joblib threadpoolctl narwhals pycocoevalcap "numpy<2.4"
    .venv/bin/python benchmarks/compare_clip_benchmark.py            # ViT-B-16, 32 images, 8 classes
    .venv/bin/python benchmarks/compare_clip_benchmark.py --classes 3 --images 12   # acc5 below 5 classes

CLIP_benchmark runs in a subprocess of this environment's Python with that folder first on
``PYTHONPATH`` (its NumPy shadows this environment's in that process only); abs-eval runs as the ``abs-eval`` of this
environment. For another model or your own data, pass ``--model`` (any open_clip name; the
shipped ``abs-*`` configs are registered in the CLIP_benchmark process too) and ``--checkpoint``
(a weights file both tools load; default: a generated random-weight one). About 4-6 minutes with
ViT-B-16 on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SITE = REPO / "abs-output" / "clip-benchmark" / "site"
DEFAULT_WORK = REPO / "abs-output" / "clip-benchmark" / "work"
INSTALL = ('.venv/bin/pip install --no-deps --target {site} clip-benchmark==1.6.2 webdataset braceexpand '
           'scikit-learn scipy joblib threadpoolctl narwhals pycocoevalcap "numpy<2.4"')
CLASSNAMES = ["apple", "bicycle", "castle", "dolphin", "elephant", "forest", "guitar", "harbor", "island",
              "jellyfish", "kettle", "lighthouse"]
# (width, height): tiny, ImageNet-size, and over 1024 px on either side
SIZES = [(97, 61), (500, 375), (1400, 1000), (375, 500), (1000, 1400), (61, 97), (1600, 1200), (640, 480),
         (2100, 700), (224, 224), (1200, 1600), (3000, 2000), (800, 600), (1025, 769), (333, 500), (1500, 1100)]
METHODS = ("clip", "clip-e", "cupl")
DATASET = "abscheck"


def _classnames(n: int) -> list[str]:
    return CLASSNAMES[:n] if n <= len(CLASSNAMES) else [f"object {k}" for k in range(n)]


def _descriptions(classnames: list[str]) -> dict[str, list[str]]:
    """CuPL-style descriptions: 3 to 5 per class (abs-eval's M is set to the largest count, so
    its ``cupl`` averages every one, as CLIP_benchmark does)."""
    looks = ["round and colourful", "seen from far away", "in bright daylight", "with a plain background",
             "photographed up close"]
    return {c: [f"a photo of a {c}, {w}." for w in looks[: 3 + k % 3]] for k, c in enumerate(classnames)}


def _image(w: int, h: int, seed: int):
    """Smooth random structure plus noise (crops and views differ; JPEG keeps it small)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
    noise = rng.integers(-16, 17, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def write_wds(root: Path, n_images: int, n_classes: int, n_tars: int, seed: int) -> list[dict]:
    """The WebDataset folder CLIP_benchmark reads (``wds/<name>``); returns the samples in tar order."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    classnames = _classnames(n_classes)
    if root.exists():
        shutil.rmtree(root)
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    # the dataset's own templates: the 80 OpenAI ImageNet ones, in CLIP_benchmark's {c} form
    (root / "zeroshot_classification_templates.txt").write_text(
        "\n".join(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES) + "\n")
    per_tar = -(-n_images // n_tars)
    samples = []
    for t in range(n_tars):
        with tarfile.open(root / "test" / f"{t}.tar", "w") as tar:
            for i in range(t * per_tar, min(n_images, (t + 1) * per_tar)):
                w, h = SIZES[i % len(SIZES)]
                label = i % n_classes
                key = f"s{i:04d}"
                ext = "png" if i % 7 == 3 else "jpg"
                buf = io.BytesIO()
                _image(w, h, seed * 100003 + i).save(buf, format="PNG" if ext == "png" else "JPEG", quality=90)
                for name, data in ((f"{key}.{ext}", buf.getvalue()), (f"{key}.cls", str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mtime = 0
                    tar.addfile(info, io.BytesIO(data))
                samples.append({"id": f"{t}.tar/{key}", "label": label, "width": w, "height": h})
    (root / "test" / "nshards.txt").write_text(f"{n_tars}\n")
    return samples


def write_checkpoint(path: Path, model: str, seed: int) -> None:
    """A random-weight open_clip model, seeded, saved as a plain state dict (what ``--pretrained PATH``
    of CLIP_benchmark and ``--clip-pretrained PATH`` of abs-eval both hand to open_clip's loader)."""
    import open_clip
    import torch

    from abs_model.model_configs import register_clip_configs

    register_clip_configs()
    torch.manual_seed(seed)
    m = open_clip.create_model(model, pretrained=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(m.state_dict(), tmp)
    tmp.rename(path)


# ------------------------------------------------------------------ inside the CLIP_benchmark process
def clip_benchmark_driver(spec: str) -> None:
    """For each ``{"argv": [...], "dump": path}`` of the JSON file ``spec``: ``clip_benchmark <argv>``
    (its real ``cli.main``, one process for all: its imports take a while), saving what its
    ``run_classification`` returns (the per-image logits and targets) to ``dump``; nothing else
    is changed."""
    import open_clip
    import torch

    configs = REPO / "abs_model" / "model_configs" / "clip"
    if configs.is_dir():  # the shipped abs-* configs, for --model abs-tiny-vit-b16 and the like
        open_clip.add_model_config(str(configs))
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification as zc

    original = zc.run_classification
    dump = [""]

    def run_classification(*a, **k):
        logits, target = original(*a, **k)
        torch.save({"logits": logits, "target": target}, dump[0])
        return logits, target

    zc.run_classification = run_classification
    for run in json.loads(Path(spec).read_text()):
        dump[0] = run["dump"]
        sys.argv = ["clip_benchmark", *run["argv"]]
        cli.main()


# ------------------------------------------------------------------ the comparison
def _run(cmd: list[str], env: dict | None = None, log: Path | None = None) -> str:
    t = time.time()
    print(f"$ {' '.join(cmd)}", flush=True)
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if log is not None:
        log.write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-6000:])
        raise SystemExit(f"command failed (exit {res.returncode}): {' '.join(cmd)}")
    print(f"  ({time.time() - t:.0f} s)", flush=True)
    return res.stdout


def run_clip_benchmark(args, wds_root: Path, ckpt: str, work: Path, descriptions: dict,
                       samples: list[dict]) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(Path(args.clip_benchmark_dir).resolve()), "PYTHONNOUSERSITE": "1"}
    runs = []
    for method in METHODS:
        extra: list[str] = []
        if method == "clip":
            tf = work / "templates-clip.json"
            tf.write_text(json.dumps({DATASET: ["a photo of a {c}."]}))
            extra = ["--custom_template_file", str(tf)]
        elif method == "cupl":
            tf = work / "templates-cupl.json"
            tf.write_text(json.dumps({DATASET: descriptions}))
            extra = ["--custom_template_file", str(tf)]
        # clip-e: the dataset's own zeroshot_classification_templates.txt
        result, dump = work / f"cb-{method}.json", work / f"cb-{method}-logits.pt"
        runs.append({"method": method, "result": str(result), "dump": str(dump), "argv": [
            "eval", "--dataset", f"wds/{DATASET}", "--dataset_root", str(wds_root), "--task",
            "zeroshot_classification", "--model", args.model, "--pretrained", ckpt, "--no_amp",
            "--num_workers", "0", "--batch_size", "16", "--output", str(result), *extra]})
    spec = work / "clip-benchmark-runs.json"
    text = json.dumps({"runs": runs, "samples": samples}, indent=1)
    done = all(Path(r["result"]).exists() and Path(r["dump"]).exists() for r in runs)
    if args.reuse_clip_benchmark and done and spec.exists() and spec.read_text() == text:
        print("CLIP_benchmark: reusing the outputs of the same runs on the same samples (--reuse-clip-benchmark)")
    else:
        for r in runs:
            for f in (r["result"], r["dump"]):
                Path(f).unlink(missing_ok=True)
        spec.unlink(missing_ok=True)
        (work / "clip-benchmark-argv.json").write_text(json.dumps(runs, indent=1))
        _run([sys.executable, str(Path(__file__).resolve()), "--clip-benchmark-driver",
              str(work / "clip-benchmark-argv.json")], env=env, log=work / "clip-benchmark.log")
        spec.write_text(text)
    import torch

    out = {}
    for run in runs:
        got = torch.load(run["dump"])
        out[run["method"]] = {"metrics": json.loads(Path(run["result"]).read_text())["metrics"],
                              "logits": got["logits"].double(), "target": got["target"]}
    return out


def run_abs_eval(args, wds_root: Path, ckpt: str, work: Path, descriptions: dict) -> tuple[dict, dict]:
    exe = str(Path(sys.executable).with_name("abs-eval"))
    root = work / "abs-root"
    if root.exists():
        shutil.rmtree(root)
    desc = work / "descriptions.json"
    desc.write_text(json.dumps(descriptions))
    m = max(len(v) for v in descriptions.values())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([exe, "run", "--dataset", DATASET, "--layout", "webdataset", "--source", str(wds_root / "test"),
          "--root", str(root), "--descriptions", str(desc), "--clip-model", args.model, "--clip-pretrained", ckpt,
          "--dino-model", args.dino_model, "--dino-pretrained", "random", "--n-crops", "1", "--top-k", "1",
          "--m", str(m), "--device", "cpu", "--precision", "fp32", *args.abs_eval_args],
         env=env, log=work / "abs-eval-run.log")
    export = _run([exe, "export", "--root", str(root), "--out", "-"], env=env)
    metrics = {}
    for line in export.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            metrics[r["method"]] = r["metrics"]
    rows_file = work / "abs-eval-rows.jsonl"
    _run([exe, "sql", "run", "select image_id, method, label, pred, top5, score_true, margin, status "
          "from predictions", "--root", str(root), "--out", str(rows_file)], env=env)
    rows: dict[str, dict] = {}
    for line in rows_file.read_text().splitlines():
        r = json.loads(line)
        rows.setdefault(r["method"], {})[r["image_id"]] = r
    return metrics, rows


def compare(cb: dict, abs_metrics: dict, abs_rows: dict, samples: list[dict], n_classes: int, tol: float) -> dict:
    import torch

    big = [max(s["width"], s["height"]) > 1024 for s in samples]
    report: dict = {}
    for method in METHODS:
        c = cb[method]
        logits, target = c["logits"], c["target"]
        assert logits.shape[0] == len(samples), (logits.shape, len(samples))
        assert target.tolist() == [s["label"] for s in samples], "CLIP_benchmark read the samples in another order"
        rows = abs_rows.get(method, {})
        k = min(5, n_classes)
        top = logits.topk(k, dim=1).indices
        same_arg = same_top5 = 0
        diff = torch.full((len(samples),), float("nan"), dtype=torch.float64)
        missing = []
        for i, s in enumerate(samples):
            r = rows.get(s["id"])
            if r is None or r["status"] != "ok":
                missing.append(s["id"])
                continue
            same_arg += int(r["pred"] == int(logits[i].argmax()))
            same_top5 += int(list(r["top5"])[:k] == top[i].tolist())
            true = logits[i, s["label"]]
            other = torch.cat([logits[i, : s["label"]], logits[i, s["label"] + 1 :]]).max()
            diff[i] = max(abs(r["score_true"] - float(true)), abs((r["score_true"] - r["margin"]) - float(other)))
        am = abs_metrics.get(method, {})
        mdiff = {}
        for key in ("acc1", "acc5", "mean_per_class_recall"):
            a, b = c["metrics"].get(key), am.get(key)
            if a is None or b is None or math.isnan(a) != math.isnan(b):
                mdiff[key] = float("inf")  # missing, or NaN on one side only (acc5 below 5 classes)
            else:
                mdiff[key] = 0.0 if math.isnan(a) else abs(a - b)
        mask_big = torch.tensor(big)
        rep = {
            "clip_benchmark": c["metrics"], "abs_eval": am, "metric_diff": mdiff,
            "argmax_equal": same_arg, "top5_equal": same_top5, "images": len(samples), "missing": missing,
            "max_logit_diff": float(torch.nan_to_num(diff, nan=float("inf")).max()),
            "max_logit_diff_over_1024": float(torch.nan_to_num(diff[mask_big], nan=float("inf")).max())
            if mask_big.any() else None,
            "max_logit_diff_up_to_1024": float(torch.nan_to_num(diff[~mask_big], nan=float("inf")).max())
            if (~mask_big).any() else None,
        }
        rep["ok"] = (all(v <= 1e-9 for v in mdiff.values()) and same_arg == same_top5 == len(samples)
                     and rep["max_logit_diff"] <= tol)
        report[method] = rep
    return report


def print_report(report: dict, samples: list[dict], n_classes: int, tol: float) -> None:
    n_big = sum(max(s["width"], s["height"]) > 1024 for s in samples)
    print(f"\n{len(samples)} images ({n_big} with a side > 1024 px), {n_classes} classes; "
          "CLIP_benchmark (--no_amp) vs abs-eval (fp32), same checkpoint and tars\n")
    head = f"{'method':<8}{'metric':<24}{'CLIP_benchmark':>16}{'abs-eval':>16}{'|diff|':>11}"
    print(head)
    print("-" * len(head))
    for method, r in report.items():
        for key in ("acc1", "acc5", "mean_per_class_recall"):
            a, b = r["clip_benchmark"].get(key), r["abs_eval"].get(key)
            print(f"{method:<8}{key:<24}{_num(a):>16}{_num(b):>16}{r['metric_diff'][key]:>11.1e}")
        print(f"{'':<8}{'argmax equal':<24}{r['argmax_equal']:>16} / {r['images']}")
        print(f"{'':<8}{'top-5 equal (ordered)':<24}{r['top5_equal']:>16} / {r['images']}")
        print(f"{'':<8}{'max |logit diff|':<24}{r['max_logit_diff']:>16.2e}   (<= 1024 px: "
              f"{_num(r['max_logit_diff_up_to_1024'], 'e')}, > 1024 px: {_num(r['max_logit_diff_over_1024'], 'e')})")
        if r["missing"]:
            print(f"{'':<8}rows missing or not ok in abs-eval: {r['missing'][:5]}")
        print(f"{'':<8}{'agreement':<24}{'yes' if r['ok'] else 'NO':>16}")
    print(f"\nlogits compared: the true class's and the best other class's (what abs-eval stores per image); "
          f"tolerance {tol:g}; metrics to 1e-9.")


def _num(v, style: str = "f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.2e}" if style == "e" else f"{v:.6f}"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--clip-benchmark-driver":
        clip_benchmark_driver(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip-benchmark-dir", default=os.environ.get("CLIP_BENCHMARK_DIR", str(DEFAULT_SITE)),
                    help="the --target folder CLIP_benchmark was installed into (env CLIP_BENCHMARK_DIR)")
    ap.add_argument("--work", default=str(DEFAULT_WORK), help="where the dataset, checkpoint and outputs go")
    ap.add_argument("--model", default="ViT-B-16", help="open_clip model name (both tools)")
    ap.add_argument("--checkpoint", help="weights file both tools load (default: a generated random-weight one)")
    ap.add_argument("--dino-model", default="abs-micro-dino", help="abs-eval's DINO (random; the baselines "
                    "do not use it)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--tars", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest |logit difference| accepted")
    ap.add_argument("--reuse-clip-benchmark", action="store_true",
                    help="keep CLIP_benchmark's outputs of an earlier call with the same runs and samples (to check "
                         "several abs-eval settings against one reference run)")
    ap.add_argument("--abs-eval-args", nargs=argparse.REMAINDER, default=[],
                    help="further `abs-eval run` options (last on the line)")
    ap.add_argument("--json", help="write the report as JSON here too")
    args = ap.parse_args()
    site = Path(args.clip_benchmark_dir)
    if not (site / "clip_benchmark" / "cli.py").is_file():
        sys.stderr.write(f"CLIP_benchmark is not installed in {site}; install it there first (not a dependency "
                         f"of this project):\n  {INSTALL.format(site=site)}\n")
        raise SystemExit(2)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    descriptions = _descriptions(_classnames(args.classes))
    wds_root = work / "wds" / DATASET
    samples = write_wds(wds_root, args.images, args.classes, args.tars, args.seed)
    ckpt = args.checkpoint
    if not ckpt:
        path = work / f"{args.model}-random-seed{args.seed}.pt"
        if not path.exists():
            write_checkpoint(path, args.model, args.seed)
        ckpt = str(path)
    cb = run_clip_benchmark(args, wds_root, ckpt, work, descriptions, samples)
    abs_metrics, abs_rows = run_abs_eval(args, wds_root, ckpt, work, descriptions)
    report = compare(cb, abs_metrics, abs_rows, samples, args.classes, args.tolerance)
    print_report(report, samples, args.classes, args.tolerance)
    print(f"({time.time() - t0:.0f} s in all; outputs and logs under {work})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "report": report}, indent=1, default=str))
    raise SystemExit(0 if all(r["ok"] for r in report.values()) else 1)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
