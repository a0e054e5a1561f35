"""Host-side time per image of ABS inference: what is *not* model or resampling arithmetic.

Why: at the goal (ImageNet val, ViT-B/16, N=60 on one GPU at ~170 images/s) each
image gets 61 CLIP forwards and 60 feature crops; the model FLOPs fit, so the
Python around them (loops per image and per crop, geometry, tensor building, row
building, Parquet writing, commits) must not become the limit. This benchmark
runs the real code with the smallest possible random-weight models (CLIP and DINO
ViTs of width 32 with one or two blocks, but the real 224 px input and 16 px
patches, so the 14 x 14 grid and the 224 px crops stay realistic) on ImageNet-size
JPEGs (500x375, 375x500, 500x333) at the paper's N=60, K=20, M=50 with a
1000-class x 50-description text bank, and splits the wall time per image into

* arithmetic -- ``model`` (CLIP trunk / head forwards), ``resample`` (the crop
  resampling matmuls with Pillow's 8-bit rounding passes, over each crop's window:
  gathers, two batched GEMMs per call), ``dense`` (zero-filling the resampling
  operands -- the window weights; the dense reference's whole-image matrices --
  scattering the taps in, freeing them), ``pixels`` (writing the views into the
  model-input buffer and normalising them) and ``matching`` (soft matching over
  50k text pairs per crop, cosine logits);
* host overhead -- everything else in ``predict``: image -> tensor, crop sampling
  and geometry, the resampling weights (taps) and windows, view assembly, the rest
  (feature-crop tensors, outputs, glue);
* ``infer_shard`` outside ``predict``: waiting for the decode threads (reported,
  not counted as host time: decoding runs in parallel threads), shard and DINO
  cache reads, row building, Parquet writing, commit markers. Once on a small shard
  with the real ``predict``, once on a full-size (1000-image) shard with a stubbed
  ``predict`` (real crop geometry, random logits), so per-shard costs are
  amortised as in a run.

Categories are measured by wrapping the functions at the names the code calls
them by (exclusive time: a nested wrapped call counts to its own category); the
remainder of ``predict`` is "rest". Also counted, in a separate untimed pass: the
tensor operations per image outside the model forwards (each one a kernel launch
on a GPU) and ``.item()`` device-to-host synchronisations. On a CPU every such op
also does its arithmetic, so the host figures here are an upper bound of what the
same code costs the host when a GPU does the arithmetic.

Before/after: run it on the old code and the new with the same arguments::

    .venv/bin/python benchmarks/bench_host.py --out /tmp/host_before.json      # (old code)
    .venv/bin/python benchmarks/bench_host.py --out /tmp/host_after.json --compare /tmp/host_before.json
    .venv/bin/python benchmarks/bench_host.py --device cuda --batch 64 --images 256 --shard-images 256

``--dense-baseline`` instead compares, in this one process (alternating passes, best
of ``--reps`` each), ``predict`` with the windowed crop resampling against the same
``predict`` with the dense reference (``preprocess.clip_views_batch_dense``: each
crop's weights and products over the whole image) as the "before" column::

    .venv/bin/python benchmarks/bench_host.py --dense-baseline --big-shard 0
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MICRO_CLIP = "bench-micro-vit-b16"
MICRO_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
MICRO_DINO_EXTRA = {"embed_dim": 32, "depth": 1, "num_heads": 2}
SIZES = [(500, 375), (375, 500), (500, 333)]

# (category, function names) wrapped wherever the pipeline modules call them.
CATEGORIES = {
    "resample": (
        "apply_separable",
        "apply_separable_batch",
        "_pil_separable",
        "_pil_levels",
        "_resample_views",
        "pil_window_levels",
        "_level_source",
        "_window_starts",
        "_window_rows",
        "_dense_views",
    ),
    # per-crop pixel passes after the resampling matmuls: storing the views into the
    # model-input buffer and normalising them (O(crops x 224^2) elementwise work)
    "pixels": ("_store_views", "_store_rows", "_normalize_views"),
    # zero-filling the resampling operands and scattering the taps into them: the window
    # weights (O(crops x 224 x window)); the dense reference's O(crops x 224 x image side)
    # matrices (the old aa_matrix did it inside)
    "dense": ("_dense_scatter", "_release"),
    "matrices": (
        "aa_matrix",
        "bicubic_matrix",
        "aa_weights",
        "aa_matrices",
        "aa_taps",
        "resize_crop_geometry",
        "aa_spans",
        "aa_window_matrices",
        "_window_calls",
    ),
    "input": ("to_tensor_image", "image_tensor", "to_float_image", "limit_size"),
    "views": ("clip_views", "clip_views_batch", "clip_views_batch_dense", "normalize"),
    "geometry": (
        "image_generator",
        "draw_crops",
        "raw_boxes",
        "feature_windows",
        "draw_crops_batch",
        "_to_working_batch",
    ),
    "matching": ("soft_match", "cosine_logits"),
}
MODULES = ("abs_model.classifier", "abs_model.preprocess", "abs_model.sampling", "abs_model.resample")
ARITHMETIC = ("model", "resample", "pixels", "dense", "matching")
HOST = ("input", "geometry", "matrices", "views", "other")
INFER_CATEGORIES = {
    "read": ("read_shard", "_read_attention"),
    # waiting for the decode threads (and, where the code has it, for the image
    # preparation threads that follow them): the outer generator only
    "decode_wait": ("iter_decoded",),
}


# ---------------------------------------------------------------------- timing
class Timer:
    """Exclusive wall time per category: a wrapped call's time minus that of the wrapped calls
    inside it (each nested call counts to its own category, nothing twice)."""

    def __init__(self, device: torch.device):
        self.t: dict[str, float] = defaultdict(float)
        self.n: dict[str, int] = defaultdict(int)
        self.stack: list[float] = []  # time spent in wrapped children of each open call
        self.cuda = device.type == "cuda"
        self.model_depth = 0  # > 0 inside a model forward (the op counter skips those ops)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def wrap(self, cat: str, fn):
        model = cat == "model"

        def wrapped(*a, **k):
            self.sync()
            self.stack.append(0.0)
            self.model_depth += model
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.model_depth -= model
                self.sync()
                dt = time.perf_counter() - t0
                children = self.stack.pop()
                self.t[cat] += dt - children
                self.n[cat] += 1
                if self.stack:
                    self.stack[-1] += dt

        wrapped.__wrapped__ = fn
        return wrapped

    def wrap_iter(self, cat: str, fn):
        """A generator function whose ``next()`` waits count to ``cat``."""

        def wrapped(*a, **k):
            it = fn(*a, **k)
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    dt = time.perf_counter() - t0
                    self.t[cat] += dt
                    if self.stack:
                        self.stack[-1] += dt
                yield item

        return wrapped


class OpCounter(TorchDispatchMode):
    """Tensor operations dispatched outside the model forwards: each non-view op is one
    kernel launch on a GPU (allocations and views are not counted); ``.item()`` and
    friends (``_local_scalar_dense``) are device-to-host synchronisations there."""

    NO_KERNEL: ClassVar[frozenset] = frozenset(
        {"empty", "empty_strided", "lift_fresh", "detach", "alias", "_local_scalar_dense", "item"}
    )

    def __init__(self, timer: Timer):
        super().__init__()
        self.timer = timer
        self.ops: Counter = Counter()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.timer.model_depth == 0:
            name = func.overloadpacket.__name__
            if name in ("_local_scalar_dense", "item"):
                self.syncs += 1
            elif not func.is_view and name not in self.NO_KERNEL:
                self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def patched(timer: Timer, clf, extra: list[tuple[object, str, str]] = (), inner: bool = True):
    """Wrap the category functions in the pipeline modules and the model calls of ``clf``
    (``inner``), and the ``extra`` ``(object, attribute, category)``."""
    import importlib

    undo = []

    def put(obj, name, value):
        undo.append((obj, name, obj.__dict__.get(name, _MISSING)))
        setattr(obj, name, value)

    found = set()
    for modname in MODULES if inner else ():
        mod = importlib.import_module(modname)
        for cat, names in CATEGORIES.items():
            for name in names:
                fn = getattr(mod, name, None)
                if callable(fn):
                    put(mod, name, timer.wrap(cat, fn))
                    found.add(name)
    lost = sorted({n for names in CATEGORIES.values() for n in names} - found) if inner else []
    if lost:  # a renamed function would silently drop out of its category's time
        raise RuntimeError(f"bench_host: no function {', '.join(lost)} in {', '.join(MODULES)}: update CATEGORIES")
    if inner:
        if hasattr(clf, "_geometry"):
            put(clf, "_geometry", timer.wrap("geometry", clf._geometry))
        put(clf, "_trunk", timer.wrap("model", clf._trunk))
        put(clf, "_head", timer.wrap("model", clf._head))
        put(clf.dino, "cls_attention", timer.wrap("model", clf.dino.cls_attention))
    for obj, name, cat in extra:
        fn = getattr(obj, name)
        put(obj, name, timer.wrap_iter(cat, fn) if cat == "decode_wait" else timer.wrap(cat, fn))
    try:
        yield timer
    finally:
        for obj, name, old in reversed(undo):
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


_MISSING = object()


# ---------------------------------------------------------------------- models, text, images
def build_classifier(device: str, batch_size: int | None, classes: int, m: int):
    import open_clip

    from abs_model import (
        ABSClassifier,
        ABSConfig,
        CLIPBackbone,
        DINOBackbone,
        ModelSpec,
        TextBank,
    )
    from abs_model.weights import seeded_init

    cfg_dir = tempfile.mkdtemp(prefix="bench-host-cfg-")
    with open(os.path.join(cfg_dir, MICRO_CLIP + ".json"), "w") as f:
        json.dump(MICRO_CLIP_CFG, f)
    open_clip.add_model_config(cfg_dir)
    with contextlib.redirect_stderr(io.StringIO()), seeded_init():
        clip = CLIPBackbone.load(ModelSpec(MICRO_CLIP))
        dino = DINOBackbone.load(ModelSpec("vit_base_patch16_224.dino", extra=MICRO_DINO_EXTRA))
    g = torch.Generator().manual_seed(1)
    d = clip.embed_dim
    desc = F.normalize(torch.randn(classes, m, d, generator=g), dim=-1)
    proto = F.normalize(torch.randn(classes, d, generator=g), dim=-1)
    text = TextBank(
        [f"class {i}" for i in range(classes)],
        desc,
        torch.ones(classes, m, dtype=torch.bool),
        proto,
        F.normalize(proto + 0.1, dim=-1),
    )
    cfg = ABSConfig(n_crops=60, top_k=20, n_descriptions=m)
    return ABSClassifier(clip, dino, text, cfg, device=device, batch_size=batch_size)


def jpeg_bytes(i: int) -> bytes:
    w, h = SIZES[i % len(SIZES)]
    rng = np.random.default_rng(i)
    base = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(base).resize((w, h), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# ---------------------------------------------------------------------- predict
def prepare(clf, images: list) -> tuple[list, float]:
    """The images as ``infer_shard`` hands them to ``predict`` (``ABSClassifier.prepare_image``,
    which it runs in threads next to decoding) and the ms per image that took here."""
    if not hasattr(clf, "prepare_image"):
        return images, 0.0
    t0 = time.perf_counter()
    out = [clf.prepare_image(im) for im in images]
    return out, 1e3 * (time.perf_counter() - t0) / max(1, len(images))


def bench_predict(clf, images, ids, batch: int, reps: int, modes: dict | None = None) -> dict:
    """Best of ``reps`` passes over ``images`` in batches; ms per image per category.

    ``modes``: name -> context manager factory under which ``predict`` runs (e.g. the
    dense reference views); the modes' passes alternate, one result per mode."""
    from abs_model import preprocess, resample

    modes = modes or {"": contextlib.nullcontext}
    dev = clf.device
    topks = [clf.dino_topk(images[s : s + batch]) for s in range(0, len(images), batch)]
    images, prep_ms = prepare(clf, images)
    for ctx in modes.values():
        with ctx():
            clf.predict(images[:batch], ids[:batch], dino_topk=topks[0])  # warm-up
    best: dict = {}
    for rep in range(reps):
        for name in list(modes) if rep % 2 == 0 else list(modes)[::-1]:
            timer = Timer(dev)
            with modes[name](), patched(timer, clf):
                timer.sync()
                t0 = time.perf_counter()
                for k, s in enumerate(range(0, len(images), batch)):
                    clf.predict(images[s : s + batch], ids[s : s + batch], dino_topk=topks[k])
                timer.sync()
                total = time.perf_counter() - t0
            # the host part alone (no wrappers' cost and no arithmetic) is the thing compared,
            # so keep the pass with the smallest remainder
            res = _split(total, timer, len(images))
            if name not in best or res["host"] < best[name]["host"]:
                best[name] = res
    for name, ctx in modes.items():
        best[name]["prepare_in_threads"] = prep_ms
        # one more pass, untimed, counting the tensor ops outside the model forwards (with the
        # resampling weights and windows grouped as on a GPU: one pass per tap count, large
        # resampling calls, not CPU-cache-sized chunks)
        timer = Timer(dev)
        with (
            ctx(),
            patched(timer, clf),
            OpCounter(timer) as counter,
            _attr(resample, "_CPU_ROWS", 1 << 40),
            _attr(preprocess, "_CPU_CALL_SAMPLES", getattr(preprocess, "_DEVICE_CALL_SAMPLES", 0)),
        ):
            for k, s in enumerate(range(0, len(images), batch)):
                clf.predict(images[s : s + batch], ids[s : s + batch], dino_topk=topks[k])
        best[name]["ops"] = sum(counter.ops.values()) / len(images)
        best[name]["syncs"] = counter.syncs / len(images)
        best[name]["top_ops"] = {k: v / len(images) for k, v in counter.ops.most_common(12)}
    return best if len(modes) > 1 else best[next(iter(modes))]


def dense_views():
    """``predict`` with the dense reference views (the crop resampling before windows)."""
    from abs_model import classifier, preprocess

    return _attr(classifier, "clip_views_batch", preprocess.clip_views_batch_dense)


def _split(total: float, timer: Timer, n: int) -> dict:
    ms = {k: 1e3 * v / n for k, v in timer.t.items()}
    out = {"total": 1e3 * total / n}
    for k in ARITHMETIC + HOST[:-1]:
        out[k] = ms.get(k, 0.0)
    out["other"] = out["total"] - sum(out[k] for k in ARITHMETIC + HOST[:-1])
    out["host"] = sum(out[k] for k in HOST)
    return out


# ---------------------------------------------------------------------- infer_shard
def write_shard(root: str, dataset: str, blobs: list[bytes], clf, real_dino: bool) -> tuple[object, str]:
    """A committed shard of ``blobs`` and its DINO cache part (the micro DINO's real attention,
    or random attention where only the pipeline around the model is measured)."""
    import hashlib

    import pyarrow as pa

    from tasks.steps.dino_cache import dino_shard
    from tasks.store import Storage
    from tasks.store.paths import marker_key, shard_part
    from tasks.store.tables import DINO_SCHEMA, SHARD_SCHEMA

    st = Storage(root)
    rows = []
    for i, b in enumerate(blobs):
        w, h = SIZES[i % len(SIZES)]
        rows.append(
            {
                "image_id": f"img{i:06d}",
                "label": i % 1000,
                "class_name": f"class {i % 1000}",
                "image": b,
                "sha256": hashlib.sha256(b).hexdigest(),
                "width": w,
                "height": h,
                "source": f"x/img{i}.jpg",
                "status": "ok",
                "error": None,
                "format": "JPEG",
                "mode": "RGB",
                "n_bytes": len(b),
            }
        )
    st.write_parquet(shard_part(dataset, 0), pa.Table.from_pylist(rows, schema=SHARD_SCHEMA))
    st.mark_done(marker_key(shard_part(dataset, 0)), {"n_images": len(rows)})
    if real_dino:
        r = dino_shard(st, dataset, 0, "bench", clf.dino, max_image_side=clf.config.max_image_side, device=clf.device)
        return st, r.path
    g = np.random.default_rng(0)
    cells = clf.dino.grid**2
    att = g.random((len(rows), cells), dtype=np.float32)
    table = pa.table(
        {
            "image_id": [r["image_id"] for r in rows],
            "shard": [0] * len(rows),
            "grid": [clf.dino.grid] * len(rows),
            "attention": list(att / att.sum(1, keepdims=True)),
            "status": ["ok"] * len(rows),
            "error": [None] * len(rows),
        },
        schema=DINO_SCHEMA,
    )
    st.write_parquet("dino-random.parquet", table)
    return st, "dino-random.parquet"


def stub_predict(clf):
    """``predict`` with the real crop geometry but random logits / features: for measuring
    what ``infer_shard`` does around the model on a full-size shard in seconds."""
    from abs_model import Prediction
    from abs_model.preprocess import to_tensor_image

    C, K = len(clf.text.classnames), clf.config.top_k
    methods = clf.methods
    n_feat = clf.config.n_crops * (int(clf.config.raw_crops) + int(clf.config.feature_crops))

    def predict(images, image_ids, dino_topk=None, return_features=False):
        xs = [im if isinstance(im, torch.Tensor) else to_tensor_image(im) for im in images]
        widths, heights = [int(x.shape[2]) for x in xs], [int(x.shape[1]) for x in xs]
        idx, val = dino_topk[0][:, :K], dino_topk[1][:, :K]
        if hasattr(clf, "_geometry"):
            geoms, _ = clf._geometry(image_ids, widths, heights, idx, val)
        else:  # the code before the batched geometry
            from abs_model import CropGeometry
            from abs_model.sampling import (
                draw_crops,
                feature_windows,
                image_generator,
                raw_boxes,
            )

            D, G = clf.dino.grid, clf.clip.grid
            geoms = []
            for b in range(len(xs)):
                dr = draw_crops(
                    idx[b], val[b], widths[b], heights[b], G, clf.config, image_generator(clf.config.seed, image_ids[b])
                )
                geoms.append(
                    CropGeometry(
                        image_ids[b],
                        widths[b],
                        heights[b],
                        D,
                        G,
                        idx[b],
                        val[b],
                        dr.raw_cells,
                        raw_boxes(dr.raw_cells, dr.raw_widths, dr.raw_heights, widths[b], heights[b], D),
                        dr.feature_cells,
                        feature_windows(dr.feature_cells, dr.feature_sides, G, D),
                    )
                )
        g = torch.Generator().manual_seed(len(image_ids))
        B = len(xs)
        logits = {m: torch.randn(B, C, generator=g) for m in methods}
        extras = {}
        if return_features:
            d = clf.clip.embed_dim
            extras = {
                "crop_features": torch.randn(B, n_feat, d, generator=g),
                "global_features": torch.randn(B, d, generator=g),
            }
        return Prediction(list(image_ids), logits, geoms, clf.text.subset, extras)

    return predict


def bench_infer(clf, blobs: list[bytes], batch: int, reps: int, keep_features: bool, stub: bool = False) -> dict:
    from tasks.steps import infer
    from tasks.store.paths import features_part, marker_key, prediction_part

    root = tempfile.mkdtemp(prefix="bench-host-")
    st, dino_path = write_shard(root, "bench", blobs, clf, real_dino=not stub)
    classnames = list(clf.text.classnames)
    n = len(blobs)
    best = None
    for rep in range(reps + 1):  # the first pass warms up
        for rel in (prediction_part("bench", "m", "c", 0), features_part("bench", "m", "c", 0)):
            for p in (rel, st.marker_path(marker_key(rel))):
                if st.exists(p):
                    st.fs.rm(st.path(p))
        timer = Timer(clf.device)
        missing = [n for names in INFER_CATEGORIES.values() for n in names if not hasattr(infer, n)]
        if missing:  # a renamed function would silently drop out of its category's time
            raise RuntimeError(
                f"bench_host: no function {', '.join(missing)} in {infer.__name__}: update INFER_CATEGORIES"
            )
        extra = [(infer, name, cat) for cat, names in INFER_CATEGORIES.items() for name in names]
        extra += [(st, "write_parquet", "write"), (st, "mark_done", "commit")]
        with contextlib.ExitStack() as stack:
            if stub:
                stack.enter_context(_attr(clf, "predict", stub_predict(clf)))
            extra.append((clf, "predict", "predict"))
            stack.enter_context(patched(timer, clf, extra, inner=False))
            timer.sync()
            t0 = time.perf_counter()
            res = infer.infer_shard(
                st,
                clf,
                dataset="bench",
                model="m",
                config="c",
                shard=0,
                dino_path=dino_path,
                classnames=classnames,
                run_id="bench",
                images_per_batch=batch,
                keep_features=keep_features,
            )
            timer.sync()
            total = time.perf_counter() - t0
        assert res.n_ok == n, res
        ms = {k: 1e3 * v / n for k, v in timer.t.items()}
        out = {"total": 1e3 * total / n, "predict": ms.get("predict", 0.0)}
        out["outside_predict"] = out["total"] - out["predict"]
        for k in ("read", "decode_wait", "write", "commit"):
            out[k] = ms.get(k, 0.0)
        out["rows_and_glue"] = out["outside_predict"] - sum(out[k] for k in ("read", "decode_wait", "write", "commit"))
        out["host_outside_predict"] = out["outside_predict"] - out["decode_wait"]
        if rep and (best is None or out["host_outside_predict"] < best["host_outside_predict"]):
            best = out
    return best


@contextlib.contextmanager
def _attr(obj, name, value):
    old = obj.__dict__.get(name, _MISSING)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if old is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, old)


# ---------------------------------------------------------------------- report
PREDICT_ROWS = [
    ("total", "total"),
    ("model", "  model forwards (CLIP trunk/head)"),
    ("resample", "  resampling matmuls (+ 8-bit rounding)"),
    ("dense", "  resampling operands (zero, scatter, free)"),
    ("pixels", "  crop pixels: store + normalise"),
    ("matching", "  soft matching + cosine logits"),
    ("host", "  host overhead"),
    ("input", "    image -> tensor on the device"),
    ("geometry", "    crop sampling + geometry"),
    ("matrices", "    resampling weights (taps) + windows"),
    ("views", "    view assembly (clip_views glue)"),
    ("other", "    rest (feature crops, outputs, glue)"),
]
INFER_ROWS = [
    ("total", "total"),
    ("predict", "  in predict"),
    ("outside_predict", "  outside predict"),
    ("decode_wait", "    waiting for decode threads"),
    ("read", "    shard + DINO cache read"),
    ("rows_and_glue", "    rows, top-K input, glue"),
    ("write", "    Parquet write"),
    ("commit", "    commit marker"),
    ("host_outside_predict", "  host outside predict (no decode)"),
]


def report(res: dict, before: dict | None, labels: tuple[str, str] = ("before", "after")) -> str:
    def num(d, key):
        return d.get(key, float("nan")) if d else float("nan")

    lines = []
    hdr = f"{'ms per image':52s}" + (f"{labels[0]:>10s}{labels[1]:>10s}" if before else f"{'':>10s}")
    sections = [
        ("predict", PREDICT_ROWS, "predict"),
        ("infer", INFER_ROWS, f"infer_shard, {res['args']['shard_images']} images, real predict"),
        ("infer_big", INFER_ROWS, f"infer_shard, {res['args']['big_shard']} images, predict stubbed"),
    ]
    for section, rows, title in sections:
        if section not in res:
            continue
        lines.append(f"-- {title}")
        lines.append(hdr)
        for key, label in rows:
            v = res[section][key]
            b = f"{num((before or {}).get(section), key):10.2f}" if before else ""
            lines.append(f"{label:52s}{b}{v:10.2f}")
        lines.append("")
    p, pb = res["predict"], (before or {}).get("predict")
    extra = [
        ("prepare_in_threads", "image -> tensor (infer_shard: in threads)", ".2f"),
        ("ops", "tensor ops/image outside the model (~GPU launches)", ".1f"),
        ("syncs", "device->host syncs (.item()) per image", ".1f"),
    ]
    for key, label, fmt in extra:
        b = f"{num(pb, key):10{fmt}}" if before else ""
        lines.append(f"{label:52s}{b}{p.get(key, float('nan')):10{fmt}}")
    s, b = res["summary"], (before or {}).get("summary")
    lines.append("")
    lines.append(
        f"{'HOST OVERHEAD per image (one process):':52s}"
        + (f"{num(b, 'host_per_image'):10.2f}" if before else "")
        + f"{s['host_per_image']:10.2f}"
    )
    lines.append(
        f"  = predict host overhead + infer_shard host time outside predict (decode waits excluded; {s['infer_basis']})"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=16, help="images for the predict measurement")
    ap.add_argument("--shard-images", type=int, default=16, help="images in the shard run with the real predict")
    ap.add_argument(
        "--big-shard", type=int, default=1000, help="images in a full-size shard run with a stubbed predict (0: skip)"
    )
    ap.add_argument("--batch", type=int, default=8, help="images per predict call (infer's images_per_batch)")
    ap.add_argument("--model-batch", type=int, default=None, help="rows per forward (classifier batch_size)")
    ap.add_argument("--reps", type=int, default=2, help="passes; the one with the least host time is kept")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--m", type=int, default=50)
    ap.add_argument("--keep-features", action="store_true", help="infer_shard also writes the crop features")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the host path is one thread; 0: torch's default)",
    )
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--compare", help="JSON of an earlier run to print side by side")
    ap.add_argument(
        "--dense-baseline",
        action="store_true",
        help="also time predict with the dense reference crop resampling, alternating with the "
        "windowed one in this process, and print it as the 'before' column",
    )
    args = ap.parse_args()
    if args.dense_baseline and args.compare:
        ap.error("--dense-baseline prints its own before column; drop --compare")
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        from machine import machine_info, machine_summary

        info = machine_info()
        print(machine_summary(info))
    except ImportError:
        import platform

        info = {"cpu": platform.processor(), "torch": torch.__version__}
        print(f"CPU {info['cpu']}, torch {info['torch']}")

    clf = build_classifier(args.device, args.model_batch, args.classes, args.m)
    cfg = clf.config
    print(
        f"micro CLIP width {MICRO_CLIP_CFG['vision_cfg']['width']} x {MICRO_CLIP_CFG['vision_cfg']['layers']} blocks "
        f"(grid {clf.clip.grid}), micro DINO width {MICRO_DINO_EXTRA['embed_dim']} x {MICRO_DINO_EXTRA['depth']} "
        f"(grid {clf.dino.grid}); N={cfg.n_crops} K={cfg.top_k} M={cfg.n_descriptions}, {args.classes} classes; "
        f"{args.images} images for predict, {args.batch} per batch; device {clf.device}, "
        f"{torch.get_num_threads()} torch thread(s)"
    )
    n_blobs = max(args.images, args.shard_images, args.big_shard)
    blobs = [jpeg_bytes(i) for i in range(min(n_blobs, 64))]
    blobs = [blobs[i % len(blobs)] for i in range(n_blobs)]  # the shard repeats 64 distinct JPEGs
    images = [decode(b) for b in blobs[: args.images]]
    ids = [f"img{i:06d}" for i in range(args.images)]

    res = {"args": vars(args), "machine": info}
    if args.dense_baseline:
        both = bench_predict(
            clf, images, ids, args.batch, args.reps, {"dense": dense_views, "windowed": contextlib.nullcontext}
        )
        res["predict"], res["predict_dense"] = both["windowed"], both["dense"]
    else:
        res["predict"] = bench_predict(clf, images, ids, args.batch, args.reps)
    res["infer"] = bench_infer(clf, blobs[: args.shard_images], args.batch, args.reps, args.keep_features)
    if args.big_shard:
        res["infer_big"] = bench_infer(
            clf, blobs[: args.big_shard], args.batch, args.reps, args.keep_features, stub=True
        )
    basis = "infer_big" if args.big_shard else "infer"
    res["summary"] = {
        "host_per_image": res["predict"]["host"] + res[basis]["host_outside_predict"],
        "infer_basis": f"infer_shard figures from the {res['args']['big_shard' if args.big_shard else 'shard_images']}-image shard",
    }
    before, labels = None, ("before", "after")
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
    if args.dense_baseline:  # the same run's infer figures: only predict differs
        before = {"args": res["args"], "predict": res["predict_dense"]}
        before["summary"] = {"host_per_image": res["predict_dense"]["host"] + res[basis]["host_outside_predict"]}
        labels = ("dense", "windowed")
    print(report(res, before, labels))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
