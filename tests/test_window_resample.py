"""Windowed crop resampling: each crop's products over its own window equal the dense ones.

``clip_views_batch`` resamples every crop over the samples its taps reach
(``resample.aa_spans``, in bands of outputs) instead of the whole image. The
arithmetic is on integers in float64, so dropping exact zeros changes nothing --
if and only if the windows hold every tap. These tests pin that: the windows
against an independent reimplementation of Pillow's tap ranges (neither one sample
too few nor too many), the window weights against the dense ones, the views
against the dense per-call path for crops of every kind, and a shrunk window
against the reference (it must break). The same for whole-image resizes
(``resize_whole`` / ``resize_whole_batch``: ``limit_size`` and the DINO view) against
the dense ``resize_whole_dense``.
"""

from __future__ import annotations

import pytest
import torch
from common import make_image
from test_resample import _pil_coeffs

from abs_model import dino_attention, preprocess, resample
from abs_model.preprocess import (
    clip_views,
    clip_views_batch,
    clip_views_batch_dense,
    dino_view,
    dino_views,
    limit_size,
    normalize,
    resize_whole,
    resize_whole_batch,
    resize_whole_dense,
    to_tensor_image,
)
from abs_model.resample import (
    _pil_levels,
    aa_matrices,
    aa_spans,
    aa_taps,
    aa_window_matrices,
    pil_window_levels,
    resize_crop_geometry,
)

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(autouse=True)
def _matrix_path(monkeypatch):
    """These tests are about the matrix products' windows (the GPU formulation); on a CPU the
    views otherwise run as compiled loops (``resample_cpu``, compared in test_resample_cpu.py)."""
    monkeypatch.setenv("ABS_CPU_KERNELS", "0")


def _boxes(h: int, w: int, seed: int, n: int = 6) -> torch.Tensor:
    """Crops of every kind for an ``h x w`` image: the whole image, the four borders, tiny
    ones (1 x 1, 1 x k, k x 1), thin ones, ones smaller than the view (upscaled) and random ones."""
    g = torch.Generator().manual_seed(seed)
    fixed = [
        (0, 0, w, h),
        (0, 0, max(1, w // 3), h),
        (w - max(1, w // 4), 0, w, h),
        (0, h - max(1, h // 5), w, h),
        (w - 1, h - 1, w, h),
        (0, 0, 1, 1),
        (w // 2, 0, w // 2 + 1, h),
        (0, h // 2, w, h // 2 + 1),
        (w // 3, h // 3, min(w, w // 3 + 7), min(h, h // 3 + 4)),
        (1, 2, w - 1, min(h, 5)),
    ]
    x0 = torch.randint(0, w, (n,), generator=g)
    y0 = torch.randint(0, h, (n,), generator=g)
    x1 = torch.minimum(x0 + 1 + torch.randint(0, w, (n,), generator=g), torch.tensor(w))
    y1 = torch.minimum(y0 + 1 + torch.randint(0, h, (n,), generator=g), torch.tensor(h))
    boxes = torch.cat([torch.tensor(fixed, dtype=torch.long), torch.stack([x0, y0, x1, y1], 1)])
    x0, y0 = boxes[:, 0].clamp(0, w - 1), boxes[:, 1].clamp(0, h - 1)  # as raw_boxes: inside, >= 1 pixel
    x1 = torch.maximum(boxes[:, 2].clamp(max=w), x0 + 1)
    y1 = torch.maximum(boxes[:, 3].clamp(max=h), y0 + 1)
    return torch.stack([x0, y0, x1, y1], 1)


def _groups(xs, seed: int):
    """One group per image of all its crops, plus one of its whole box (as ``predict``),
    written to rows in a shuffled order."""
    groups, first = [], 0
    for b, x in enumerate(xs):
        h, w = int(x.shape[1]), int(x.shape[2])
        for boxes in (torch.tensor([[0, 0, w, h]]), _boxes(h, w, seed + b)):
            groups.append((b, boxes, first))
            first += len(boxes)
    perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    return [groups[k] for k in perm], first


def _reference(xs, groups, size, n_out):
    out = torch.full((n_out, 3, size, size), float("nan"))
    for b, boxes, first in groups:
        out[first : first + len(boxes)] = clip_views(xs[b], boxes, size, MEAN, STD)
    return out


IMAGES = {
    "landscape+portrait": [(60, 90), (100, 41)],
    "imagenet-like": [(150, 200), (200, 150), (133, 200)],
    "tiny and thin": [(7, 5), (1, 9), (12, 1), (3, 3)],
}


@pytest.mark.parametrize("size", [224, 32, 30])  # 30: bands of 15 (the largest divisor up to 16)
@pytest.mark.parametrize("images", list(IMAGES))
def test_windowed_views_equal_dense_per_call_views(images, size):
    xs = [to_tensor_image(make_image(h, w, 3 + h * w)) for h, w in IMAGES[images]]
    groups, n = _groups(xs, len(images) + size)
    ref = _reference(xs, groups, size, n)
    got = clip_views_batch(xs, groups, size, MEAN, STD, n)
    assert torch.equal(got, ref)
    assert torch.equal(clip_views_batch_dense(xs, groups, size, MEAN, STD, n), ref)  # the benchmarks' "before"


@pytest.mark.parametrize(
    "parts,call_samples,cpu_rows",
    [
        ((1, 1), 1, 3),  # one window per crop, one crop per call
        ((4, 4), 1 << 40, 1 << 30),  # one call for everything (the GPU grouping)
        ((16, 2), 1 << 16, 64),
        ((1, 28), 1 << 20, 64),
        ((7, 5), 1 << 18, 5),  # 7 divides 224, 5 does not (4 bands)
    ],
)
def test_windowed_views_do_not_depend_on_bands_or_calls(monkeypatch, parts, call_samples, cpu_rows):
    monkeypatch.setattr(preprocess, "_PARTS", parts)
    monkeypatch.setattr(preprocess, "_CPU_CALL_SAMPLES", call_samples)
    monkeypatch.setattr(resample, "_CPU_ROWS", cpu_rows)
    xs = [to_tensor_image(make_image(h, w, h)) for h, w in [(90, 130), (140, 70), (23, 37)]]
    groups, n = _groups(xs, sum(parts))
    assert torch.equal(clip_views_batch(xs, groups, 224, MEAN, STD, n), _reference(xs, groups, 224, n))


def _crop_axis(boxes: torch.Tensor, axis: int, size: int):
    """(start, length, resized, offset) of the boxes along ``axis`` (0: y, 1: x) for views of ``size``."""
    x0, y0, x1, y1 = boxes.unbind(1)
    nh, nw, top, left = resize_crop_geometry(y1 - y0, x1 - x0, size)
    return (y0, y1 - y0, nh, top) if axis == 0 else (x0, x1 - x0, nw, left)


@pytest.mark.parametrize("parts", [1, 2, 8, 14])
@pytest.mark.parametrize("hw", [(150, 200), (37, 23), (1, 9), (1000, 700)])
def test_spans_are_exactly_pillows_tap_ranges(hw, parts):
    """Each band's window is the union of Pillow's ``precompute_coeffs`` ranges of its outputs
    (an independent reimplementation): a window one sample shorter would drop a tap, one
    longer would multiply a sample no tap reaches."""
    size = 56
    h, w = hw
    boxes = _boxes(h, w, 11, n=12)
    for axis, full in ((0, h), (1, w)):
        start, length, resized, offset = _crop_axis(boxes, axis, size)
        lo, hi = aa_spans(start, length, resized, offset, size, full, "bicubic", parts)
        assert lo.shape == hi.shape == (len(boxes), parts) and lo.dtype == hi.dtype == torch.int64
        for n in range(len(boxes)):
            coeffs = _pil_coeffs(int(length[n]), int(resized[n]), "bicubic")
            band = size // parts
            for p in range(parts):
                taps = coeffs[int(offset[n]) + p * band : int(offset[n]) + (p + 1) * band]
                first = min(xmin for xmin, _ in taps)
                last = max(xmin + len(k) for xmin, k in taps)
                assert (int(lo[n, p]), int(hi[n, p])) == (int(start[n]) + first, int(start[n]) + last), (n, p)


@pytest.mark.parametrize("parts", [1, 4, 8])
def test_window_matrices_are_the_dense_rows_shifted(parts):
    """Scattered back to the whole signal, each window row is the dense ``aa_matrices`` row,
    bit for bit; nothing of the dense row lies outside the window."""
    size, h, w = 64, 70, 110
    boxes = _boxes(h, w, 5, n=20)
    for axis, full in ((0, h), (1, w)):
        start, length, resized, offset = _crop_axis(boxes, axis, size)
        taps = aa_taps(length, resized).max().expand(len(boxes))
        dense = aa_matrices(start, length, resized, offset, size, [(len(boxes), full)], "bicubic", True, taps)[0]
        lo, hi = aa_spans(start, length, resized, offset, size, full, "bicubic", parts)
        width = int((hi - lo).max())
        win = aa_window_matrices(
            start,
            length,
            resized,
            offset,
            size,
            [(5, width), (len(boxes) - 5, width + 3)],
            torch.full((len(boxes),), full),
            lo,
            "bicubic",
            True,
            taps,
        )
        rows = torch.cat([m[:, :, :width] for m in win])
        assert all(torch.equal(m[:, :, width:], torch.zeros_like(m[:, :, width:])) for m in win)
        lo_i = lo[:, torch.arange(size) * parts // size]  # [n, size]: window start of each output
        back = torch.zeros_like(dense).scatter_add_(
            2,
            (lo_i.unsqueeze(-1) + torch.arange(width)).clamp(max=full - 1),
            torch.where(lo_i.unsqueeze(-1) + torch.arange(width) < full, rows, 0.0),
        )
        assert torch.equal(back, dense)


@pytest.mark.parametrize("parts", [1, 4])
def test_pil_window_levels_equal_dense_pil_levels(parts):
    """The windowed passes of one image's crops against ``_pil_levels`` (one window per crop:
    also without ``rows``, every row of the horizontal pass)."""
    size = 48
    x = to_tensor_image(make_image(80, 120, 2))
    c, h, w = x.shape
    boxes = _boxes(h, w, 9, n=10)
    ys, xs_ = _crop_axis(boxes, 0, size), _crop_axis(boxes, 1, size)
    ty = aa_taps(ys[1], ys[2]).max().expand(len(boxes))
    tx = aa_taps(xs_[1], xs_[2]).max().expand(len(boxes))
    n = len(boxes)
    ry = aa_matrices(*ys, size, [(n, h)], "bicubic", True, ty)[0]
    rx = aa_matrices(*xs_, size, [(n, w)], "bicubic", True, tx)[0]
    dense = _pil_levels(x.unsqueeze(0), ry, rx)

    ylo, yhi = aa_spans(*ys, size, h, "bicubic", parts)
    xlo, xhi = aa_spans(*xs_, size, w, "bicubic", parts)
    r0 = ylo.amin(1)
    ly, wx, wy = int((yhi.amax(1) - r0).max()), int((xhi - xlo).max()), int((yhi - ylo).max())
    kx = aa_window_matrices(*xs_, size, [(n, wx)], torch.full((n,), w), xlo, "bicubic", True, tx)[0]
    ky = aa_window_matrices(*ys, size, [(n, wy)], torch.full((n,), h), ylo, "bicubic", True, ty)[0]
    src = torch.cat([torch.round(x.double() * 255).reshape(-1), torch.full((wx,), 7.0)])
    y = torch.minimum(r0.view(n, 1) + torch.arange(ly), torch.tensor(h - 1))  # [n, ly]
    starts = torch.arange(c).view(1, 1, c, 1) * h * w + (y * w).view(n, 1, 1, ly) + xlo.view(n, parts, 1, 1)
    rows = torch.clamp((ylo - r0.view(n, 1)).unsqueeze(-1) + torch.arange(wy), max=ly - 1)
    assert torch.equal(pil_window_levels(src, starts, kx, ky, rows), dense)
    if parts == 1:
        assert wy == ly and torch.equal(pil_window_levels(src, starts, kx, ky, None), dense)


_AA_SPANS = preprocess.aa_spans  # the real one, whatever a test patches in


def _patch_spans(monkeypatch, how: str) -> None:
    """Make ``preprocess.aa_spans`` return other windows: ``widen`` (3 samples more before, 5
    after: nothing may change), ``lo`` / ``hi`` (one sample fewer at that end of every band)."""

    def patched(*args, **kw):
        lo, hi = _AA_SPANS(*args, **kw)
        if how == "widen":
            return (lo - 3).clamp(min=0), hi + 5
        return (torch.minimum(lo + 1, hi - 1), hi) if how == "lo" else (lo, torch.maximum(hi - 1, lo + 1))

    monkeypatch.setattr(preprocess, "aa_spans", patched)


@pytest.mark.parametrize("shrink", ["lo", "hi"])
def test_a_window_one_sample_short_breaks_the_views(monkeypatch, shrink):
    """Teeth: the equality above depends on the windows. One sample fewer at either end
    (one crop per call, so no padding hides it) and the views differ from the dense ones;
    extra samples at both ends change nothing."""
    xs = [to_tensor_image(make_image(h, w, 1)) for h, w in [(90, 130), (140, 70)]]
    groups, n = _groups(xs, 4)
    ref = _reference(xs, groups, 224, n)
    monkeypatch.setattr(preprocess, "_CPU_CALL_SAMPLES", 1)
    _patch_spans(monkeypatch, "widen")
    assert torch.equal(clip_views_batch(xs, groups, 224, MEAN, STD, n), ref)
    _patch_spans(monkeypatch, shrink)
    got = clip_views_batch(xs, groups, 224, MEAN, STD, n)
    assert (got != ref).flatten(1).any(1).float().mean() > 0.5  # most views change


# --- whole-image resizes (``limit_size``, the DINO view): banded, equal to the dense reference ---

WHOLE_SHAPES = [(375, 500), (500, 375), (224, 224), (1, 1), (1, 37), (37, 1), (2, 300), (300, 2), (97, 131)]
WHOLE_OUTS = [(224, 224), (298, 224), (17, 33), (1, 1), (1, 9), (9, 1), (600, 450)]


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic"])
@pytest.mark.parametrize("hw", WHOLE_SHAPES)
def test_banded_whole_resize_equals_dense(hw, kernel):
    """Down- and upscales, equal sizes, 1xN / Nx1 images and outputs, portrait and landscape;
    output sides that are not a whole number of bands (padded, then dropped)."""
    x = to_tensor_image(make_image(*hw, hw[0] * 7 + hw[1]))
    for nh, nw in WHOLE_OUTS + [hw]:
        got = resize_whole(x, nh, nw, kernel)
        assert got.shape == (3, nh, nw) and got.dtype == x.dtype
        assert torch.equal(got, resize_whole_dense(x, nh, nw, kernel)), (hw, nh, nw, kernel)


@pytest.mark.parametrize("band,call_samples", [(16, 1 << 20), (1, 1), (3, 1 << 40), (7, 1 << 16), (1000, 1 << 20)])
def test_whole_resize_batch_does_not_depend_on_bands_or_calls(monkeypatch, band, call_samples):
    """Images of different sizes in one call (windows padded with weight-0 samples) or one per
    call, bands of any width: each image equals its own dense resize."""
    monkeypatch.setattr(preprocess, "_WHOLE_BAND", band)
    monkeypatch.setattr(preprocess, "_CPU_CALL_SAMPLES", call_samples)
    xs = [to_tensor_image(make_image(h, w, h + w)) for h, w in [(120, 160), (160, 120), (23, 301), (1, 50), (64, 64)]]
    for kernel in ("bilinear", "bicubic"):
        got = resize_whole_batch(xs, 45, 37, kernel)
        assert got.shape == (len(xs), 3, 45, 37)
        for x, g in zip(xs, got):
            assert torch.equal(g, resize_whole_dense(x, 45, 37, kernel))


def test_dino_views_and_limit_size_equal_the_dense_path():
    xs = [to_tensor_image(make_image(h, w, h)) for h, w in [(375, 500), (500, 375), (50, 20)]]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = torch.stack([normalize(resize_whole_dense(x, 224, 224, "bilinear"), mean, std) for x in xs])
    assert torch.equal(dino_views(xs, 224, mean, std), ref)
    assert torch.equal(torch.stack([dino_view(x, 224, mean, std) for x in xs]), ref)
    assert torch.equal(limit_size(xs[0], 298), resize_whole_dense(xs[0], 224, 298, "bicubic"))


def test_dino_attention_equals_the_dense_resize_path(tiny_dino):
    ims = [make_image(h, w, h) for h, w in [(120, 90), (70, 150), (40, 40)]]
    n = tiny_dino.norm
    xs = [limit_size(to_tensor_image(im), 100) for im in ims]
    views = torch.stack([normalize(resize_whole_dense(x, n.size, n.size, "bilinear"), n.mean, n.std) for x in xs])
    with torch.inference_mode():
        ref = tiny_dino.cls_attention(views).float()
    assert torch.equal(dino_attention(tiny_dino, ims, 100), ref)


@pytest.mark.parametrize("shrink", ["lo", "hi"])
@pytest.mark.parametrize("kernel", ["bilinear", "bicubic"])
def test_a_whole_image_window_one_sample_short_breaks_the_resize(monkeypatch, shrink, kernel):
    """Teeth: one sample fewer at either end of every band's window (one image per call, so no
    padding hides it) changes the resize; extra samples at both ends change nothing."""
    x = to_tensor_image(make_image(375, 500, 5))
    ref = resize_whole_dense(x, 224, 224, kernel)
    monkeypatch.setattr(preprocess, "_CPU_CALL_SAMPLES", 1)
    _patch_spans(monkeypatch, "widen")
    assert torch.equal(resize_whole(x, 224, 224, kernel), ref)
    _patch_spans(monkeypatch, shrink)
    assert not torch.equal(resize_whole(x, 224, 224, kernel), ref)
