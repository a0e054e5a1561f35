"""The batched host path: a batch gives exactly what its images give one at a time.

``ABSClassifier.predict`` draws each image's crops from its own generator but
computes the geometry, the resampling weights, the views and the feature crops for
the whole batch at once, and ``infer_shard`` builds its Parquet columns from arrays.
These tests pin the invariants that batching relies on: batched pieces equal their
per-image / per-call originals bit for bit, and a batch predicts what its images
predict alone.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from common import make_image

from abs_model import ABSClassifier, ABSConfig, TextBank, resample
from abs_model.matching import soft_match
from abs_model.preprocess import clip_views, clip_views_batch, to_tensor_image
from abs_model.resample import (
    aa_matrices,
    aa_matrix,
    aa_taps,
    apply_separable,
    apply_separable_batch,
    bicubic_matrix,
)
from abs_model.sampling import (
    draw_crops,
    draw_crops_batch,
    feature_windows,
    image_generator,
    raw_boxes,
)
from tasks.store.predictions import list_array, method_scores

CLASSES = ["cat", "dog", "bird", "fish", "car", "tree"]
DESCS = [[f"a {c}, view {i}" for i in range(5 - (k % 3))] for k, c in enumerate(CLASSES)]
GEOMETRY = ("dino_topk_indices", "dino_topk_values", "raw_cells", "raw_boxes", "feature_cells", "feature_windows")


@pytest.fixture(scope="module")
def clf(tiny_clip, tiny_dino):
    text = TextBank.build(tiny_clip, CLASSES, DESCS, m=4, templates=["a photo of a {}."])
    return ABSClassifier(tiny_clip, tiny_dino, text, ABSConfig(n_crops=10, top_k=6, n_descriptions=4), device="cpu")


@pytest.fixture(scope="module")
def mixed_images():
    # landscape, portrait, tiny, square, and one over max_image_side (downscaled before cropping)
    sizes = [(90, 130), (140, 70), (23, 37), (64, 64), (300, 1100)]
    return [make_image(h, w, 40 + k) for k, (h, w) in enumerate(sizes)]


def _small(clf, **kw):
    return ABSClassifier(clf.clip, clf.dino, clf.text, ABSConfig(**{**clf.config.to_dict(), **kw}), device="cpu")


def test_batch_equals_one_at_a_time(clf, mixed_images):
    clf = _small(clf, max_image_side=512)
    ids = [f"val/{k:05d}.JPEG" for k in range(len(mixed_images))]
    # cached DINO top-K, as inference uses (a fresh DINO pass in float32 may round
    # differently in a batch; the crops are drawn from whatever top-K is given)
    topk = [clf.dino_topk([im], k=8) for im in mixed_images]
    batch = clf.predict(mixed_images, ids, dino_topk=(torch.cat([t[0] for t in topk]), torch.cat([t[1] for t in topk])))
    for b, (im, iid) in enumerate(zip(mixed_images, ids)):
        one = clf.predict([im], [iid], dino_topk=topk[b])
        ga, gb = batch.geometry[b], one.geometry[0]
        assert (ga.image_id, ga.width, ga.height) == (gb.image_id, gb.width, gb.height) == (iid, *im.size)
        for f in GEOMETRY:
            assert torch.equal(getattr(ga, f), getattr(gb, f)), f
            assert getattr(ga, f).dtype == getattr(gb, f).dtype, f
        assert ga.to_dict() == gb.to_dict()
        for m in batch.logits:
            assert torch.equal(batch.pred(m)[b], one.pred(m)[0]), m
            assert torch.allclose(batch.logits[m][b], one.logits[m][0], atol=1e-5, rtol=0), m


def test_prepared_images_give_identical_results(clf, mixed_images):
    ids = list(range(len(mixed_images)))
    direct = clf.predict(mixed_images, ids, return_features=True)
    prepared = clf.predict([clf.prepare_image(im) for im in mixed_images], ids, return_features=True)
    for m in direct.logits:
        assert torch.equal(direct.logits[m], prepared.logits[m]), m
    for k in direct.extras:
        assert torch.equal(direct.extras[k], prepared.extras[k]), k
    for ga, gb in zip(direct.geometry, prepared.geometry):
        assert ga.to_dict() == gb.to_dict()


def test_reused_view_buffer_does_not_leak_between_calls(clf, mixed_images):
    ids = ["a", "b", "c"]
    first = clf.predict(mixed_images[:3], ids)
    clf.predict(mixed_images[3:], ["d", "e"])  # different shapes through the same buffer
    again = clf.predict(mixed_images[:3], ids)
    for m in first.logits:
        assert torch.equal(first.logits[m], again.logits[m])


def test_batched_draws_are_the_per_image_draws():
    cfg = ABSConfig(n_crops=17, top_k=9, alpha=0.3, beta=0.8, seed=7)
    g = torch.Generator().manual_seed(0)
    B, D, G = 6, 14, 7
    vals, idx = torch.topk(torch.rand(B, D * D, generator=g), 12, dim=1)  # K' > K: sliced like predict does
    vals, idx = vals[:, : cfg.top_k], idx[:, : cfg.top_k]
    widths, heights = [500, 375, 23, 1, 640, 333], [375, 500, 37, 9, 480, 500]
    ids = [f"img{k}" for k in range(B)]
    dr = draw_crops_batch(idx, vals, widths, heights, G, cfg, ids)
    boxes = raw_boxes(
        dr.raw_cells,
        dr.raw_widths,
        dr.raw_heights,
        torch.tensor(widths, dtype=torch.float64)[:, None],
        torch.tensor(heights, dtype=torch.float64)[:, None],
        D,
    )
    wins = feature_windows(dr.feature_cells, dr.feature_sides, G, D)
    for b in range(B):
        one = draw_crops(idx[b], vals[b], widths[b], heights[b], G, cfg, image_generator(cfg.seed, ids[b]))
        for f in ("raw_cells", "feature_cells", "raw_widths", "raw_heights", "feature_sides"):
            assert torch.equal(getattr(dr, f)[b], getattr(one, f)), f
        assert torch.equal(
            boxes[b], raw_boxes(one.raw_cells, one.raw_widths, one.raw_heights, widths[b], heights[b], D)
        )
        assert torch.equal(wins[b], feature_windows(one.feature_cells, one.feature_sides, G, D))


def test_batched_softmax_rows_equal_per_row_softmax():
    # draw_crops_batch relies on it: a row's probabilities do not depend on the other rows
    g = torch.Generator().manual_seed(1)
    for k in (1, 5, 20, 37):
        v = (torch.rand(9, k, generator=g) * 0.05).double() / 0.03
        batch = torch.softmax(v, dim=-1)
        for b in range(v.shape[0]):
            assert torch.equal(batch[b], torch.softmax(v[b].clone(), dim=0))


def _calls(seed: int, sizes: list[tuple[int, int]]):
    """Crops like clip_views': one call per (image, kind), boxes inside the image."""
    g = torch.Generator().manual_seed(seed)
    calls = []
    for h, w in sizes:
        calls.append(torch.tensor([[0, 0, w, h]]))
        n = int(torch.randint(1, 9, (1,), generator=g))
        x0 = torch.randint(0, max(1, w // 2), (n,), generator=g)
        y0 = torch.randint(0, max(1, h // 2), (n,), generator=g)
        x1 = torch.minimum(x0 + 1 + torch.randint(0, w, (n,), generator=g), torch.tensor(w))
        y1 = torch.minimum(y0 + 1 + torch.randint(0, h, (n,), generator=g), torch.tensor(h))
        calls.append(torch.stack([x0, y0, x1, y1], 1))
    return calls


@pytest.mark.parametrize("cpu_rows", [3, 1 << 30])  # CPU chunking and the one-pass (GPU) grouping
def test_aa_matrices_rows_equal_their_aa_matrix_call(monkeypatch, cpu_rows):
    monkeypatch.setattr(resample, "_CPU_ROWS", cpu_rows)
    sizes = [(375, 500), (500, 375), (9, 1000), (37, 23)]
    calls = _calls(3, sizes)
    full = [s for s in sizes for _ in range(2)]  # each image has two calls
    for axis, kernel in ((0, "bicubic"), (1, "bilinear")):
        starts, lengths, resized, offsets, taps, blocks = [], [], [], [], [], []
        expected = []
        for k, boxes in enumerate(calls):
            h, w = full[k]
            start, length = (
                (boxes[:, 1], boxes[:, 3] - boxes[:, 1]) if axis == 0 else (boxes[:, 0], boxes[:, 2] - boxes[:, 0])
            )
            rs = (length * 224 // torch.minimum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0])).clamp(min=1)
            off = (rs - torch.minimum(rs, torch.tensor(224))) // 2
            size = h if axis == 0 else w
            expected.append(aa_matrix(start, length, rs, off, 50, size, kernel, pil_fixed=(axis == 0)))
            t = aa_taps(length, rs, kernel)
            starts.append(start), lengths.append(length), resized.append(rs), offsets.append(off)
            taps.append(torch.full_like(t, int(t.max())))
            blocks.append((len(boxes), size))
        got = aa_matrices(
            torch.cat(starts),
            torch.cat(lengths),
            torch.cat(resized),
            torch.cat(offsets),
            50,
            blocks,
            kernel,
            axis == 0,
            torch.cat(taps),
        )
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert a.is_contiguous() and a.shape == b.shape
            assert torch.equal(a, b)


def test_clip_views_batch_equals_clip_views_per_call():
    imgs = [to_tensor_image(make_image(h, w, 9 + h)) for h, w in [(60, 90), (100, 41), (7, 5)]]
    calls = _calls(5, [tuple(x.shape[1:]) for x in imgs])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    groups, first = [], 0
    # outputs in a different order from the calls, as predict writes them (globals first)
    order = [0, 2, 4, 1, 3, 5]
    for k in order:
        groups.append((k // 2, calls[k], first))
        first += len(calls[k])
    out = clip_views_batch(imgs, groups, 32, mean, std, first)
    for b, boxes, start in groups:
        ref = clip_views(imgs[b], boxes, 32, mean, std)
        assert torch.equal(out[start : start + len(boxes)], ref)


def test_working_boxes_of_downscaled_images_match_the_per_image_formula():
    from abs_model.classifier import _to_working_batch

    g = torch.Generator().manual_seed(6)
    sizes = [(500, 375), (1300, 400), (64, 1100), (30, 20)]  # (W, H) originals
    work = [
        torch.zeros(3, h, w)
        if max(w, h) <= 1024
        else torch.zeros(3, round(h * 1024 / max(w, h)), round(w * 1024 / max(w, h)))
        for w, h in sizes
    ]
    boxes = []
    for w, h in sizes:
        x0, y0 = torch.randint(0, w, (9,), generator=g), torch.randint(0, h, (9,), generator=g)
        boxes.append(
            torch.stack(
                [
                    x0,
                    y0,
                    torch.minimum(x0 + 1 + torch.randint(0, w, (9,), generator=g), torch.tensor(w)),
                    torch.minimum(y0 + 1 + torch.randint(0, h, (9,), generator=g), torch.tensor(h)),
                ],
                1,
            )
        )
    got = _to_working_batch(torch.stack(boxes), [w for w, _ in sizes], [h for _, h in sizes], work)
    for b, ((W, H), x) in enumerate(zip(sizes, work)):
        h, w = int(x.shape[1]), int(x.shape[2])
        if (h, w) == (H, W):
            assert torch.equal(got[b], boxes[b])
            continue
        sx, sy = w / W, h / H  # the one-image formula the batched one replaced
        bb = boxes[b].double()
        x0 = torch.clamp(torch.round(bb[:, 0] * sx), max=w - 1)
        y0 = torch.clamp(torch.round(bb[:, 1] * sy), max=h - 1)
        x1 = torch.maximum(torch.round(bb[:, 2] * sx), x0 + 1)
        y1 = torch.maximum(torch.round(bb[:, 3] * sy), y0 + 1)
        assert torch.equal(got[b], torch.stack([x0, y0, x1, y1], 1).long())


def test_apply_separable_batch_equals_per_image():
    g = torch.Generator().manual_seed(2)
    B, n, G = 3, 5, 7
    x = torch.randn(B, 4, G, G, generator=g)
    win = torch.stack([torch.randint(0, 3, (B * n,), generator=g), torch.randint(4, G + 1, (B * n,), generator=g)], 1)
    ry = bicubic_matrix(win[:, 0], win[:, 1] - win[:, 0], G, G).view(B, n, G, G)
    rx = bicubic_matrix(win[:, 0].flip(0), (win[:, 1] - win[:, 0]).flip(0), G, G).view(B, n, G, G)
    out = apply_separable_batch(x, ry, rx)
    for b in range(B):
        assert torch.equal(out[b], apply_separable(x[b], ry[b], rx[b]))


def test_pil_fixed_rounds_half_away_from_zero_as_before():
    w = torch.tensor([0.0, -0.0, 1e-9, -1e-9, 0.25, -0.25, 1.0, -1.0, 0.3, -0.7])
    halves = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], dtype=torch.float64) / (1 << 22)
    g = torch.Generator().manual_seed(0)
    w = torch.cat([w.double(), halves, torch.randn(10000, generator=g, dtype=torch.float64) * 0.7])
    v = w * (1 << 22)
    old = torch.where(v < 0, torch.ceil(v - 0.5), torch.floor(v + 0.5))
    new = resample._pil_fixed(w)
    assert torch.equal(new, old)  # equal as numbers (a zero may carry the other sign; it adds nothing)


def test_soft_match_without_mask_equals_all_true_mask():
    g = torch.Generator().manual_seed(4)
    crops = torch.nn.functional.normalize(torch.randn(5, 7, 16, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(6, 3, 16, generator=g), dim=-1)
    assert torch.equal(
        soft_match(crops, text, None, 0.03), soft_match(crops, text, torch.ones(6, 3, dtype=torch.bool), 0.03)
    )


def test_method_scores_for_all_methods_at_once_equal_one_by_one():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 6, 9, generator=g)
    labels = [0, 8, 3, 11, -1, 2]  # out of range labels give NaN numbers
    together = method_scores(logits, labels)
    for m in range(logits.shape[0]):
        one = method_scores(logits[m], labels)
        for k in one:
            np.testing.assert_array_equal(together[k][m], one[k])


def test_list_array_equals_arrow_from_python_lists():
    g = np.random.default_rng(0)
    valid = np.array([True, False, True, True, False])
    for typ, shape in (
        (pa.list_(pa.int32()), (3,)),
        (pa.list_(pa.float32()), (4,)),
        (pa.list_(pa.list_(pa.int32())), (2, 4)),
    ):
        values = g.integers(-5, 500, (int(valid.sum()), *shape)).astype(np.float64) / (1 if "int" in str(typ) else 7)
        arr = list_array(values, valid, typ)
        it = iter(values)
        ref = pa.array([next(it).tolist() if v else None for v in valid], typ)
        assert arr.type == typ and arr.equals(ref)
    assert list_array(np.zeros((3, 2)), np.ones(3, bool), pa.list_(pa.int32())).null_count == 0
