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


@pytest.mark.parametrize("kernel", ["bicubic", "bilinear"])
def test_compiled_taps_equal_the_tensor_expression(kernel):
    """``resample_cpu.axis_taps`` gives ``taps_of(aa_weights(...))`` exactly: down- and upscaling,
    offsets (centre crops of the long side), 1-sample segments, padded tap counts."""
    from abs_model.resample import aa_taps, aa_weights

    rng = np.random.default_rng(5)
    n, size = 400, 48
    length = torch.tensor(np.concatenate([rng.integers(1, 1200, n - 4), [1, 2, 48, 47]]))
    resized = torch.tensor(np.concatenate([rng.integers(size, 4 * size, n - 4), [48, 48, 48, 96]]))
    offset = (resized - size) // 2
    start = torch.tensor(rng.integers(0, 900, n))
    taps = int(aa_taps(length, resized, kernel).max()) + 3
    got = resample_cpu.axis_taps(start, length, resized, offset, size, taps, kernel)
    want = resample_cpu.taps_of(*aa_weights(start, length, resized, offset, size, kernel, True, taps))
    for g, w, name in zip(got, want, ("first", "count", "weights")):
        assert g.shape == w.shape and np.array_equal(g, w), (name, int((g != w).sum()))
