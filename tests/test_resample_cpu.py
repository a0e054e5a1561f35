"""The compiled integer loops (``abs_model/resample_cpu.py``) give the crop views of the matrix path.

Both are Pillow's 8-bit arithmetic done exactly, so they must agree bit for bit on every
crop: down- and upscaled, at the image's edges, 1-pixel-wide boxes, several images of
different sizes in one batch, at 64 px (the micro model) and 224 px (ViT-B/16). The
matrix path (``ABS_CPU_KERNELS=0``) is itself checked against an independent Pillow
reference in ``tests/test_resample.py``; one crop set here is checked against that
reference directly too.
"""

import numpy as np
import pytest
import torch
from common import make_image
from test_resample import _levels, clip_view_reference

from abs_model import resample_cpu
from abs_model.preprocess import clip_views_batch, to_tensor_image

pytestmark = pytest.mark.skipif(not resample_cpu.available(), reason="numba not installed")

_NO_NORM = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _boxes(rng, w: int, h: int, n: int) -> torch.Tensor:
    """ABS-like boxes (0.5-0.9 of each side), plus the whole image, edge crops and slivers."""
    bw = rng.integers(max(1, w // 2), max(1, (9 * w) // 10) + 1, n)
    bh = rng.integers(max(1, h // 2), max(1, (9 * h) // 10) + 1, n)
    x0 = np.array([rng.integers(0, w - a + 1) for a in bw])
    y0 = np.array([rng.integers(0, h - a + 1) for a in bh])
    boxes = np.stack([x0, y0, x0 + bw, y0 + bh], 1).tolist()
    boxes += [[0, 0, w, h], [w - 1, 0, w, h], [0, h - 1, w, h], [0, 0, min(w, 3), min(h, 2)]]
    return torch.tensor(boxes)


def _views(xs, groups, size, kernels: bool, monkeypatch) -> torch.Tensor:
    monkeypatch.setenv("ABS_CPU_KERNELS", "1" if kernels else "0")
    return clip_views_batch(xs, groups, size, *_NO_NORM)


@pytest.mark.parametrize("size", [64, 224])
def test_integer_loops_equal_the_matrix_products(size, monkeypatch):
    rng = np.random.default_rng(size)
    shapes = [(375, 500), (500, 375), (333, 500), (40, 64), (20, 300), (1100, 900)]
    xs = [to_tensor_image(make_image(h, w, k)) for k, (h, w) in enumerate(shapes)]
    groups, row = [], 0
    for b, x in enumerate(xs):
        boxes = _boxes(rng, int(x.shape[2]), int(x.shape[1]), 12)
        # two groups per image, as the classifier makes them (global view, then the raw crops)
        groups += [(b, boxes[:1], row), (b, boxes[1:], row + 1)]
        row += len(boxes)
    got = _views(xs, groups, size, True, monkeypatch)
    want = _views(xs, groups, size, False, monkeypatch)
    assert got.shape == want.shape == (row, 3, size, size)
    assert torch.equal(got, want), int((got != want).sum())


def test_integer_loops_equal_the_pillow_reference(monkeypatch):
    img = make_image(210, 300, 7)
    arr = np.asarray(img)
    boxes = _boxes(np.random.default_rng(7), 300, 210, 6)
    views = _views([to_tensor_image(img)], [(0, boxes, 0)], 64, True, monkeypatch)
    for view, box in zip(views, boxes.tolist()):
        assert np.array_equal(_levels(view), clip_view_reference(arr, box, 64)), box


def test_integer_loops_write_only_their_rows_and_keep_float64(monkeypatch):
    """Rows no group names stay as they were; a float64 output gets the same levels / 255."""
    x = to_tensor_image(make_image(90, 120, 3))
    boxes = torch.tensor([[0, 0, 120, 90], [10, 5, 100, 80]])
    out = torch.full((4, 3, 32, 32), -7.0, dtype=torch.float64)
    monkeypatch.setenv("ABS_CPU_KERNELS", "1")
    clip_views_batch([x.double()], [(0, boxes, 1)], 32, *_NO_NORM, n_out=4, out=out)
    assert (out[0] == -7.0).all() and (out[3] == -7.0).all()
    monkeypatch.setenv("ABS_CPU_KERNELS", "0")
    want = clip_views_batch([x.double()], [(0, boxes, 0)], 32, *_NO_NORM)
    assert torch.equal(out[1:3], want)


def test_remembered_taps_equal_fresh_ones_at_other_starts(monkeypatch):
    """The taps ``_axis_taps`` remembers (at start 0) and shifts give the views of taps evaluated
    for each crop: the same box sizes at other positions and in another image, memo cold then
    warm, and after the memo is emptied for being over its bound."""
    from abs_model import preprocess

    preprocess._TAP_MEMO.clear()
    rng = np.random.default_rng(11)
    xs = [to_tensor_image(make_image(375, 500, 1)), to_tensor_image(make_image(500, 375, 2))]
    sizes = [(int(a), int(b)) for a, b in zip(rng.integers(150, 330, 8), rng.integers(150, 330, 8))]
    for trial in range(3):
        groups, row = [], 0
        for b, x in enumerate(xs):
            h, w = int(x.shape[1]), int(x.shape[2])
            boxes = []
            for bw, bh in sizes:
                x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
                boxes.append([x0, y0, x0 + bw, y0 + bh])
            groups.append((b, torch.tensor(boxes), row))
            row += len(boxes)
        got = _views(xs, groups, 48, True, monkeypatch)
        want = _views(xs, groups, 48, False, monkeypatch)
        assert torch.equal(got, want), (trial, int((got != want).sum()))
        assert preprocess._TAP_MEMO[(48, "bicubic")]
        if trial == 2:
            assert len(preprocess._TAP_MEMO[(48, "bicubic")]) <= 4 * len(sizes)  # only this trial's
        if trial == 1:  # over the bound, with new sizes: emptied before they are evaluated
            monkeypatch.setattr(preprocess, "_TAP_MEMO_BYTES", 0)
            sizes = [(s + 1, t + 2) for s, t in sizes]
