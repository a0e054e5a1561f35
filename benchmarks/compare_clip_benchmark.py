"""abs-eval against LAION's CLIP_benchmark on the same WebDataset sets and checkpoint, method by method.

What it does (issue 19, "a comparison users can rerun"):

1. writes small WebDataset sets in CLIP_benchmark's shape (``<work>/wds/<name>/test/0.tar ...``,
   ``test/nshards.txt``, ``classnames.txt``), each with its OWN ``zeroshot_classification_templates.txt``
   (a set of its own, not the ImageNet one, so that ``clip-e`` is checked with the dataset's templates):
   by default ``abscheck-c8`` (8 classes, 32 images) and ``abscheck-c3`` (3 classes, 12 images: acc5 is
   NaN below 5 classes), images of many sizes from 61 px to 3000 px (several over 1024 px), JPEG and
   PNG; ``--sets CLASSES:IMAGES[:TARS] ...`` makes others, ``--wds DIR`` checks a WebDataset folder of
   yours (the folder holding ``test/``) instead. Plus CuPL-style descriptions per set;
2. writes one random-weight open_clip checkpoint (``torch.save`` of ``create_model(...).state_dict()``,
   seeded; both tools load it by path, through open_clip's own loader), unless ``--checkpoint`` gives one;
3. runs CLIP_benchmark's real CLI (``clip_benchmark eval --no_amp``, fp32: its default ``amp`` is
   bf16 autocast on a CPU) per set and baseline, all in one process: ``clip-e`` with the dataset's own
   templates (for a folder without them the ImageNet set, abs-eval's choice, given as a custom template
   file: CLIP_benchmark 1.6.2 stops with "Templates not specified" otherwise), ``clip`` and ``cupl`` with ``--custom_template_file`` (``a photo of a {c}.``; the
   descriptions per class). The per-image logits are those CLIP_benchmark's ``run_classification``
   returns inside that CLI run: the driver wraps the function to save its return value (CLIP_benchmark
   has no option to dump them) and changes nothing else;
4. runs one ``abs-eval run --layout webdataset`` over the same folders and checkpoint (fp32, CPU), then
   ``abs-eval export`` (CLIP_benchmark-shaped results) and the per-image rows (``pred``, ``top5``,
   ``score_true``, ``margin``) through ``abs-eval sql run``;
5. prints per set and method both tools' acc1 / acc5 / mean per-class recall, how many images have the
   same argmax and the same ordered top-5, the largest |logit difference| over the logits abs-eval
   stores per image (the true class's, ``score_true``, and the best other class's, ``score_true -
   margin``), over all images and over those with a side > 1024 px, and the template set abs-eval's
   export records for ``clip-e`` (it must be the dataset's own file: name, count and sha256);
6. runs ``clip_benchmark build`` over abs-eval's export and CLIP_benchmark's own result files and
   prints what it made of them: one row per abs-eval method and set, each its own ``model_fullname``,
   the dataset named as CLIP_benchmark names it (``wds/<name>``), so the two join.

Exit code 1 when a check fails (metrics differ by more than 1e-9, an argmax or top-5 differs, a logit
differs by more than ``--tolerance``, clip-e's recorded template set is not the dataset's, ``build``
gives other than one row per method).

CLIP_benchmark is not a dependency of this project. Install it, once, into a folder of its own
(``--no-deps``: it reuses this environment's torch, open_clip, Pillow; the few packages it needs
beyond those go into the same folder, with NumPy < 2.4 because its ``accuracy()`` calls
``float()`` on a 1-element array, which NumPy 2.4 refuses)::

    .venv/bin/pip install --no-deps --target abs-output/clip-benchmark/site clip-benchmark==1.6.2 \\
        webdataset braceexpand scikit-learn scipy joblib threadpoolctl narwhals pycocoevalcap "numpy<2.4"
    .venv/bin/python benchmarks/compare_clip_benchmark.py            # ViT-B-16, the two default sets
    .venv/bin/python benchmarks/compare_clip_benchmark.py --model ViT-L-14 --checkpoint /ckpt/vit-l-14.pt \\
        --wds /data/wds/mydata                                     # your model on your WebDataset

CLIP_benchmark runs in a subprocess of this environment's Python with that folder first on
``PYTHONPATH`` (its NumPy shadows this environment's in that process only); abs-eval runs as the
``abs-eval`` of this environment. ``--model``: any open_clip name (the shipped ``abs-*`` configs are
registered in the CLIP_benchmark process too).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SITE = REPO / "abs-output" / "clip-benchmark" / "site"
DEFAULT_WORK = REPO / "abs-output" / "clip-benchmark" / "work"
INSTALL = (
    ".venv/bin/pip install --no-deps --target {site} clip-benchmark==1.6.2 webdataset braceexpand "
    'scikit-learn scipy joblib threadpoolctl narwhals pycocoevalcap "numpy<2.4"'
)
CLASSNAMES = [
    "apple",
    "bicycle",
    "castle",
    "dolphin",
    "elephant",
    "forest",
    "guitar",
    "harbor",
    "island",
    "jellyfish",
    "kettle",
    "lighthouse",
]
# (width, height): tiny, ImageNet-size, and over 1024 px on either side
SIZES = [
    (97, 61),
    (500, 375),
    (1400, 1000),
    (375, 500),
    (1000, 1400),
    (61, 97),
    (1600, 1200),
    (640, 480),
    (2100, 700),
    (224, 224),
    (1200, 1600),
    (3000, 2000),
    (800, 600),
    (1025, 769),
    (333, 500),
    (1500, 1100),
]
#: The generated sets' own templates (``{c}``: CLIP_benchmark fills them with ``str.format(c=...)``), one
#: list per set in turn; none is a set abs-eval ships, so a ``clip-e`` that ignored the dataset's file
#: (and fell back to the ImageNet set) would disagree. One template names the class twice.
OWN_TEMPLATES = (
    (
        "a synthetic picture of a {c}.",
        "a {c} made of coloured noise.",
        "a blurry rendering of the {c}.",
        "itap of my {c}.",
        "a {c}, or rather a picture of a {c}.",
        "the {c} as a low-resolution texture.",
        "{c}.",
    ),
    ("a noisy photo of a {c}.", "a {c} seen through frosted glass.", "a mosaic of the {c}."),
)
DEFAULT_SETS = ("8:32:3", "3:12:2")
METHODS = ("clip", "clip-e", "cupl")
ALL_METHODS = ("abs", "clip", "clip-e", "cupl")
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


@dataclass
class CheckSet:
    """One WebDataset checked: its folder (``<...>/<name>``, holding ``test/``), what it holds, in tar order."""

    name: str
    root: Path
    classnames: list[str]
    samples: list[dict]  # {"id": "<tar>/<key>", "label", "width", "height"}, in tar order
    templates: list[str] | None  # the dataset's own zeroshot_classification_templates.txt, None without one
    descriptions: dict[str, list[str]] = field(default_factory=dict)

    @property
    def cb_name(self) -> str:
        return f"wds/{self.name}"


def _classnames(n: int) -> list[str]:
    return CLASSNAMES[:n] if n <= len(CLASSNAMES) else [f"object {k}" for k in range(n)]


def _descriptions(classnames: list[str]) -> dict[str, list[str]]:
    """CuPL-style descriptions: 3 to 5 per class (abs-eval's M is set to the largest count, so
    its ``cupl`` averages every one, as CLIP_benchmark does)."""
    looks = [
        "round and colourful",
        "seen from far away",
        "in bright daylight",
        "with a plain background",
        "photographed up close",
    ]
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


def parse_set(spec: str) -> tuple[int, int, int]:
    """``CLASSES:IMAGES[:TARS]`` (``--sets``) as ``(classes, images, tars)``."""
    parts = spec.split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or min(nums) < 1 or (len(nums) == 3 and nums[2] > nums[1]) or nums[0] < 2:
        raise SystemExit(
            f"--sets {spec!r}: expected CLASSES:IMAGES[:TARS] with CLASSES >= 2 and TARS <= IMAGES, e.g. 8:32:3"
        )
    return nums[0], nums[1], nums[2] if len(nums) == 3 else 1


def write_wds(
    root: Path, n_images: int, n_classes: int, n_tars: int, seed: int, templates: tuple[str, ...]
) -> CheckSet:
    """A WebDataset folder as CLIP_benchmark reads it (``wds/<name>``), with its own templates."""
    classnames = _classnames(n_classes)
    if root.exists():
        shutil.rmtree(root)
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / TEMPLATES_FILE).write_text("\n".join(templates) + "\n")
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
    return CheckSet(root.name, root, classnames, samples, list(templates), _descriptions(classnames))


def read_wds(root: Path) -> CheckSet:
    """A WebDataset folder of the user's (holding ``test/`` with ``0.tar`` .. and ``nshards.txt``), read with
    abs-eval's own layout: the samples in tar order with their image sizes (one read of every image)."""
    from PIL import Image

    from tasks.datasets import load_source

    if not (root / "test" / "nshards.txt").is_file():
        raise SystemExit(
            f"--wds {root}: expected CLIP_benchmark's WebDataset shape, {root}/test/nshards.txt and test/0.tar .."
        )
    src = load_source("webdataset", str(root))
    samples = []
    for e in src.entries:
        with Image.open(io.BytesIO(src.read_entry_bytes(e))) as im:
            w, h = im.size
        samples.append({"id": e.image_id, "label": e.label, "width": w, "height": h})
    templates = getattr(src, "templates", None)
    return CheckSet(root.name, root, list(src.classnames), samples, templates, _descriptions(list(src.classnames)))


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


def _imagenet_templates() -> tuple[str, ...]:
    """The 80 OpenAI ImageNet templates in the ``{c}`` form (abs-eval's set for a dataset without its own)."""
    from tasks.datasets.template_sets import FALLBACK, builtin_template_set

    return builtin_template_set(FALLBACK).templates


def _cb_env(site: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(site).resolve()), "PYTHONNOUSERSITE": "1"}


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


def run_clip_benchmark(args, sets: list[CheckSet], ckpt: str, work: Path) -> dict[tuple[str, str], dict]:
    """CLIP_benchmark's metrics, logits and targets per (set, method)."""
    runs = []
    for s in sets:
        for method in METHODS:
            extra: list[str] = []
            prompts: list[str] | dict[str, list[str]] | None = None
            if method == "clip":
                prompts = ["a photo of a {c}."]
            elif method == "cupl":
                prompts = s.descriptions
            elif s.templates is None:
                # clip-e on a folder without its own templates: CLIP_benchmark 1.6.2 stops ("Templates not
                # specified for wds/<name>"), abs-eval uses the ImageNet set; hand CLIP_benchmark that set
                prompts = list(_imagenet_templates())
            # else clip-e: the dataset's own zeroshot_classification_templates.txt, read by CLIP_benchmark itself
            if prompts is not None:
                tf = work / f"templates-{s.name}-{method}.json"
                tf.write_text(json.dumps({s.name: prompts}))
                extra = ["--custom_template_file", str(tf)]
            result, dump = work / f"cb-{s.name}-{method}.json", work / f"cb-{s.name}-{method}-logits.pt"
            runs.append(
                {
                    "set": s.name,
                    "method": method,
                    "result": str(result),
                    "dump": str(dump),
                    "argv": [
                        "eval",
                        "--dataset",
                        s.cb_name,
                        "--dataset_root",
                        str(s.root),
                        "--task",
                        "zeroshot_classification",
                        "--model",
                        args.model,
                        "--pretrained",
                        ckpt,
                        "--no_amp",
                        "--num_workers",
                        "0",
                        "--batch_size",
                        "16",
                        "--output",
                        str(result),
                        *extra,
                    ],
                }
            )
    spec = work / "clip-benchmark-runs.json"
    text = json.dumps(
        {"runs": runs, "samples": {s.name: s.samples for s in sets}, "templates": {s.name: s.templates for s in sets}},
        indent=1,
    )
    done = all(Path(r["result"]).exists() and Path(r["dump"]).exists() for r in runs)
    if args.reuse_clip_benchmark and done and spec.exists() and spec.read_text() == text:
        print("CLIP_benchmark: reusing the outputs of the same runs on the same samples (--reuse-clip-benchmark)")
    else:
        for r in runs:
            for f in (r["result"], r["dump"]):
                Path(f).unlink(missing_ok=True)
        spec.unlink(missing_ok=True)
        (work / "clip-benchmark-argv.json").write_text(json.dumps(runs, indent=1))
        _run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--clip-benchmark-driver",
                str(work / "clip-benchmark-argv.json"),
            ],
            env=_cb_env(args.clip_benchmark_dir),
            log=work / "clip-benchmark.log",
        )
        spec.write_text(text)
    import torch

    out = {}
    for run in runs:
        got = torch.load(run["dump"])
        out[(run["set"], run["method"])] = {
            "result_file": run["result"],
            "metrics": json.loads(Path(run["result"]).read_text())["metrics"],
            "logits": got["logits"].double(),
            "target": got["target"],
        }
    return out


def run_abs_eval(args, sets: list[CheckSet], ckpt: str, work: Path) -> tuple[dict, dict, Path]:
    """One ``abs-eval run`` over every set; ``(export results by (set, method), rows by (set, method), export
    folder)``."""
    exe = str(Path(sys.executable).with_name("abs-eval"))
    root, export_dir = work / "abs-root", work / "abs-export"
    for d in (root, export_dir):
        if d.exists():
            shutil.rmtree(d)
    m = max(len(v) for s in sets for v in s.descriptions.values())
    data: list[str] = []
    for s in sets:
        desc = work / f"descriptions-{s.name}.json"
        desc.write_text(json.dumps(s.descriptions))
        data += ["--dataset", s.name, "--source", str(s.root), "--descriptions", str(desc)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run(
        [
            exe,
            "run",
            *data,
            "--layout",
            "webdataset",
            "--root",
            str(root),
            "--clip-model",
            args.model,
            "--clip-pretrained",
            ckpt,
            "--dino-model",
            args.dino_model,
            "--dino-pretrained",
            "random",
            "--n-crops",
            "1",
            "--top-k",
            "1",
            "--m",
            str(m),
            "--device",
            "cpu",
            "--precision",
            "fp32",
            *args.abs_eval_args,
        ],
        env=env,
        log=work / "abs-eval-run.log",
    )
    _run([exe, "export", "--root", str(root), "--out", str(export_dir)], env=env)
    results = {}
    for f in sorted(export_dir.glob("*.json")):
        r = json.loads(f.read_text())
        results[(r["abs_eval_dataset"], r["method"])] = {**r, "file": str(f)}
    rows_file = work / "abs-eval-rows.jsonl"
    _run(
        [
            exe,
            "sql",
            "run",
            "select dataset, image_id, method, label, pred, top5, score_true, margin, status from predictions",
            "--root",
            str(root),
            "--out",
            str(rows_file),
        ],
        env=env,
    )
    rows: dict[tuple[str, str], dict] = {}
    for line in rows_file.read_text().splitlines():
        r = json.loads(line)
        rows.setdefault((r["dataset"], r["method"]), {})[r["image_id"]] = r
    return results, rows, export_dir


def expected_template_set(s: CheckSet) -> dict:
    """The clip-e template set abs-eval must record for ``s``: the dataset's own file, else the ImageNet set
    (CLIP_benchmark's fallback, and abs-eval's for a WebDataset without templates)."""
    from tasks.datasets.template_sets import FALLBACK, TemplateSet, builtin_template_set, parse_templates

    if s.templates is None:
        ts = builtin_template_set(FALLBACK)
    else:
        ts = TemplateSet(f"dataset:{TEMPLATES_FILE}", parse_templates(s.templates, TEMPLATES_FILE, skip_blank=True))
    return {"templates": ts.name, "templates_count": ts.count, "templates_sha256": ts.sha256}


def compare(s: CheckSet, cb: dict, abs_results: dict, abs_rows: dict, tol: float) -> dict:
    import torch

    samples = s.samples
    n_classes = len(s.classnames)
    big = [max(x["width"], x["height"]) > 1024 for x in samples]
    report: dict = {}
    for method in METHODS:
        c = cb[(s.name, method)]
        logits, target = c["logits"], c["target"]
        assert logits.shape[0] == len(samples), (logits.shape, len(samples))
        assert target.tolist() == [x["label"] for x in samples], "CLIP_benchmark read the samples in another order"
        rows = abs_rows.get((s.name, method), {})
        k = min(5, n_classes)
        top = logits.topk(k, dim=1).indices
        same_arg = same_top5 = 0
        diff = torch.full((len(samples),), float("nan"), dtype=torch.float64)
        missing = []
        for i, x in enumerate(samples):
            r = rows.get(x["id"])
            if r is None or r["status"] != "ok":
                missing.append(x["id"])
                continue
            same_arg += int(r["pred"] == int(logits[i].argmax()))
            same_top5 += int(list(r["top5"])[:k] == top[i].tolist())
            true = logits[i, x["label"]]
            other = torch.cat([logits[i, : x["label"]], logits[i, x["label"] + 1 :]]).max()
            diff[i] = max(abs(r["score_true"] - float(true)), abs((r["score_true"] - r["margin"]) - float(other)))
        exported = abs_results.get((s.name, method), {})
        am = exported.get("metrics", {})
        mdiff = {}
        for key in ("acc1", "acc5", "mean_per_class_recall"):
            a, b = c["metrics"].get(key), am.get(key)
            if a is None or b is None or math.isnan(a) != math.isnan(b):
                mdiff[key] = float("inf")  # missing, or NaN on one side only (acc5 below 5 classes)
            else:
                mdiff[key] = 0.0 if math.isnan(a) else abs(a - b)
        mask_big = torch.tensor(big)
        rep = {
            "clip_benchmark": c["metrics"],
            "abs_eval": am,
            "metric_diff": mdiff,
            "argmax_equal": same_arg,
            "top5_equal": same_top5,
            "images": len(samples),
            "missing": missing,
            "max_logit_diff": float(torch.nan_to_num(diff, nan=float("inf")).max()),
            "max_logit_diff_over_1024": float(torch.nan_to_num(diff[mask_big], nan=float("inf")).max())
            if mask_big.any()
            else None,
            "max_logit_diff_up_to_1024": float(torch.nan_to_num(diff[~mask_big], nan=float("inf")).max())
            if (~mask_big).any()
            else None,
            "acc1_denominator": exported.get("acc1_denominator"),
            "n_error": exported.get("n_error"),
        }
        rep["ok"] = (
            all(v <= 1e-9 for v in mdiff.values())
            and same_arg == same_top5 == len(samples)
            and rep["max_logit_diff"] <= tol
        )
        if method == "clip-e":
            want = expected_template_set(s)
            got = {key: exported.get(key) for key in want}
            rep["templates"] = {"recorded": got, "expected": want, "ok": got == want}
            rep["ok"] = rep["ok"] and got == want
        report[method] = rep
    return report


def check_build(args, sets: list[CheckSet], cb: dict, export_dir: Path, work: Path) -> dict:
    """``clip_benchmark build`` over abs-eval's export folder and CLIP_benchmark's own result files: what it
    made of them, per set (rows per abs-eval method, distinct ``model_fullname``s, whether the names join)."""
    built = work / "benchmark.csv"
    built.unlink(missing_ok=True)
    cb_files = [cb[(s.name, m)]["result_file"] for s in sets for m in METHODS]
    _run(
        [sys.executable, "-m", "clip_benchmark.cli", "build", str(export_dir), *cb_files, "--output", str(built)],
        env=_cb_env(args.clip_benchmark_dir),
    )
    rows = list(csv.DictReader(built.open()))
    report: dict = {"file": str(built), "rows": len(rows), "sets": {}}
    for s in sets:
        ours = [r for r in rows if r.get("method") and r["dataset"] == s.cb_name]
        theirs = [r for r in rows if not r.get("method") and r["dataset"] == s.cb_name]
        per_method = {m: sum(r["method"] == m for r in ours) for m in ALL_METHODS}
        fullnames = sorted({r["model_fullname"] for r in ours})
        ref = json.loads(Path(cb[(s.name, "clip")]["result_file"]).read_text())
        joins = all((r["model"], r["clip_pretrained"]) == (ref["model"], ref["pretrained"]) for r in ours)
        ok = (
            all(v == 1 for v in per_method.values())
            and len(fullnames) == len(ALL_METHODS)
            and len(theirs) == len(METHODS)
            and joins
        )
        report["sets"][s.name] = {
            "dataset": s.cb_name,
            "rows_per_method": per_method,
            "model_fullnames": fullnames,
            "clip_benchmark_rows": len(theirs),
            "joins": joins,
            "ok": ok,
        }
    report["ok"] = all(v["ok"] for v in report["sets"].values())
    return report


def print_report(sets: list[CheckSet], report: dict, build: dict, tol: float) -> None:
    for s in sets:
        n_big = sum(max(x["width"], x["height"]) > 1024 for x in s.samples)
        own = (
            f"its own {TEMPLATES_FILE} ({len(s.templates)} templates)"
            if s.templates is not None
            else f"no {TEMPLATES_FILE} (both tools: the ImageNet set)"
        )
        print(
            f"\n{s.cb_name}: {len(s.samples)} images ({n_big} with a side > 1024 px; "
            f"{min(min(x['width'], x['height']) for x in s.samples)}-"
            f"{max(max(x['width'], x['height']) for x in s.samples)} px), {len(s.classnames)} classes, {own}; "
            "CLIP_benchmark (--no_amp) vs abs-eval (fp32), same checkpoint and tars\n"
        )
        head = f"{'method':<8}{'metric':<24}{'CLIP_benchmark':>16}{'abs-eval':>16}{'|diff|':>11}"
        print(head)
        print("-" * len(head))
        for method, r in report[s.name].items():
            for key in ("acc1", "acc5", "mean_per_class_recall"):
                a, b = r["clip_benchmark"].get(key), r["abs_eval"].get(key)
                print(f"{method:<8}{key:<24}{_num(a):>16}{_num(b):>16}{r['metric_diff'][key]:>11.1e}")
            print(f"{'':<8}{'argmax equal':<24}{r['argmax_equal']:>16} / {r['images']}")
            print(f"{'':<8}{'top-5 equal (ordered)':<24}{r['top5_equal']:>16} / {r['images']}")
            print(
                f"{'':<8}{'max |logit diff|':<24}{r['max_logit_diff']:>16.2e}   (<= 1024 px: "
                f"{_num(r['max_logit_diff_up_to_1024'], 'e')}, > 1024 px: "
                f"{_num(r['max_logit_diff_over_1024'], 'e')})"
            )
            if "templates" in r:
                t = r["templates"]["recorded"]
                print(
                    f"{'':<8}{'templates (export)':<24}{str(t['templates']):>16}, {t['templates_count']} "
                    f"({'as expected' if r['templates']['ok'] else 'NOT the expected set'})"
                )
            if r["missing"]:
                print(f"{'':<8}rows missing or not ok in abs-eval: {r['missing'][:5]}")
            print(f"{'':<8}{'agreement':<24}{'yes' if r['ok'] else 'NO':>16}")
    print(
        f"\nlogits compared: the true class's and the best other class's (what abs-eval stores per image); "
        f"tolerance {tol:g}; metrics to 1e-9; abs-eval's acc1 is over decoded images (acc1_denominator n_ok; "
        "no image here is unreadable, so n = n_ok)."
    )
    print(
        f"\nclip_benchmark build over abs-eval's export + CLIP_benchmark's results: {build['rows']} rows "
        f"({build['file']})"
    )
    for b in build["sets"].values():
        print(
            f"  {b['dataset']}: rows per abs-eval method {b['rows_per_method']}, {len(b['model_fullnames'])} "
            f"model_fullnames ({', '.join(b['model_fullnames'])}), {b['clip_benchmark_rows']} CLIP_benchmark "
            f"rows, same dataset/model/weights: {'yes' if b['joins'] else 'NO'}"
        )


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
    ap.add_argument(
        "--clip-benchmark-dir",
        default=os.environ.get("CLIP_BENCHMARK_DIR", str(DEFAULT_SITE)),
        help="the --target folder CLIP_benchmark was installed into (env CLIP_BENCHMARK_DIR)",
    )
    ap.add_argument("--work", default=str(DEFAULT_WORK), help="where the sets, checkpoint and outputs go")
    ap.add_argument("--model", default="ViT-B-16", help="open_clip model name (both tools)")
    ap.add_argument("--checkpoint", help="weights file both tools load (default: a generated random-weight one)")
    ap.add_argument(
        "--dino-model", default="abs-micro-dino", help="abs-eval's DINO (random; the baselines do not use it)"
    )
    ap.add_argument(
        "--sets",
        nargs="+",
        metavar="CLASSES:IMAGES[:TARS]",
        default=None,
        help=f"generated sets, each with its own templates (default: {' '.join(DEFAULT_SETS)}; "
        "none with --wds unless given)",
    )
    ap.add_argument(
        "--wds",
        nargs="+",
        default=[],
        metavar="DIR",
        help="WebDataset folders of yours to check (each holding test/ with nshards.txt, and "
        "classnames.txt); the folder name is the dataset name (wds/<name>)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest |logit difference| accepted")
    ap.add_argument(
        "--reuse-clip-benchmark",
        action="store_true",
        help="keep CLIP_benchmark's outputs of an earlier call with the same runs and samples (to check "
        "several abs-eval settings against one reference run)",
    )
    ap.add_argument(
        "--abs-eval-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="further `abs-eval run` options (last on the line)",
    )
    ap.add_argument("--json", help="write the report as JSON here too")
    args = ap.parse_args()
    site = Path(args.clip_benchmark_dir)
    if not (site / "clip_benchmark" / "cli.py").is_file():
        sys.stderr.write(
            f"CLIP_benchmark is not installed in {site}; install it there first (not a dependency "
            f"of this project):\n  {INSTALL.format(site=site)}\n"
        )
        raise SystemExit(2)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    specs = [parse_set(x) for x in (args.sets if args.sets is not None else ([] if args.wds else DEFAULT_SETS))]
    sets = [
        write_wds(work / "wds" / f"abscheck-c{c}", n, c, tars, args.seed + k, OWN_TEMPLATES[k % len(OWN_TEMPLATES)])
        for k, (c, n, tars) in enumerate(specs)
    ]
    sets += [read_wds(Path(d).resolve()) for d in args.wds]
    names = [s.name for s in sets]
    if not sets or len(set(names)) != len(names):
        raise SystemExit(
            f"give sets with distinct names (got {names}); two --sets with the same class count are one name"
        )
    ckpt = args.checkpoint
    if not ckpt:
        path = work / f"{args.model}-random-seed{args.seed}.pt"
        if not path.exists():
            write_checkpoint(path, args.model, args.seed)
        ckpt = str(path)
    cb = run_clip_benchmark(args, sets, ckpt, work)
    abs_results, abs_rows, export_dir = run_abs_eval(args, sets, ckpt, work)
    report = {s.name: compare(s, cb, abs_results, abs_rows, args.tolerance) for s in sets}
    build = check_build(args, sets, cb, export_dir, work)
    print_report(sets, report, build, args.tolerance)
    print(f"({time.time() - t0:.0f} s in all; outputs and logs under {work})")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "sets": [
                        {
                            "name": s.name,
                            "dataset": s.cb_name,
                            "classes": len(s.classnames),
                            "images": len(s.samples),
                            "templates": s.templates,
                            "sizes": sorted({(x["width"], x["height"]) for x in s.samples}),
                        }
                        for s in sets
                    ],
                    "report": report,
                    "build": build,
                },
                indent=1,
                default=str,
            )
        )
    ok = all(r["ok"] for rep in report.values() for r in rep.values()) and build["ok"]
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
