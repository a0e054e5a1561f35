"""The batched classifier: order independence, cached DINO, subsets, geometry, options."""

import pytest
import torch
from common import make_image

from abs_model import ABSClassifier, ABSConfig, TextBank

CLASSES = ["cat", "dog", "bird", "fish", "car"]
DESCS = [[f"a {c} that looks like number {i}" for i in range(6 - (k % 3))] for k, c in enumerate(CLASSES)]


@pytest.fixture(scope="module")
def text(tiny_clip):
    return TextBank.build(tiny_clip, CLASSES, DESCS, m=5, templates=["a photo of a {}.", "a drawing of a {}."])


@pytest.fixture(scope="module")
def clf(tiny_clip, tiny_dino, text):
    return ABSClassifier(tiny_clip, tiny_dino, text, ABSConfig(n_crops=8, top_k=6, n_descriptions=5), device="cpu")


def test_same_image_same_result_in_any_batch_and_order(clf, images):
    ids = [f"img{i}" for i in range(len(images))]
    full = clf.predict(images, ids)
    rev = clf.predict(images[::-1], ids[::-1])
    single = [clf.predict([im], [i]) for im, i in zip(images, ids)]
    for b in range(len(images)):
        r = len(images) - 1 - b
        for m in full.logits:
            assert torch.allclose(full.logits[m][b], rev.logits[m][r], atol=1e-5)
            assert torch.allclose(full.logits[m][b], single[b].logits[m][0], atol=1e-5)
        assert torch.equal(full.geometry[b].raw_boxes, rev.geometry[r].raw_boxes)
        assert torch.equal(full.geometry[b].feature_windows, single[b].geometry[0].feature_windows)
    # A different id for the same pixels draws different crops.
    other = clf.predict(images[:1], ["another-id"])
    assert not torch.equal(other.geometry[0].raw_boxes, full.geometry[0].raw_boxes)


def test_outputs_every_method_and_geometry(clf, images):
    out = clf.predict(images, list(range(len(images))))
    assert set(out.logits) == {"abs", "clip", "clip-e", "cupl"}
    for m, v in out.logits.items():
        assert v.shape == (len(images), len(CLASSES)), m
        assert torch.isfinite(v).all()
    for im, geo in zip(images, out.geometry):
        w, h = im.size
        assert (geo.width, geo.height) == (w, h)
        b = geo.raw_boxes
        assert b.shape == (8, 4)
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 0] < b[:, 2]).all()
        assert (b[:, 1] >= 0).all() and (b[:, 3] <= h).all() and (b[:, 1] < b[:, 3]).all()
        win = geo.feature_windows
        assert (win[:, 0] >= 0).all() and (win[:, 1] <= 14).all() and (win[:, 0] < win[:, 1]).all()
        assert set(geo.raw_cells.tolist()) <= set(geo.dino_topk_indices.tolist())
        assert geo.dino_topk_values.shape == (6,) and (geo.dino_topk_values[:-1] >= geo.dino_topk_values[1:]).all()
        d = geo.to_dict()
        assert isinstance(d["raw_boxes"], list) and len(d["raw_boxes"]) == 8


def test_cached_dino_topk_gives_identical_predictions(clf, images):
    ids = ["a", "b", "c", "d"]
    idx, val = clf.dino_topk(images, k=64)  # a cache keeps more than K
    cached = clf.predict(images, ids, dino_topk=(idx, val))
    fresh = clf.predict(images, ids)
    for m in fresh.logits:
        assert torch.allclose(cached.logits[m], fresh.logits[m], atol=1e-6)
    with pytest.raises(ValueError, match="needs K=6"):
        clf.predict(images, ids, dino_topk=(idx[:, :3], val[:, :3]))


def test_class_subset_argmax_runs_over_the_subset_only(tiny_clip, tiny_dino, text, images):
    cfg = ABSConfig(n_crops=8, top_k=6, n_descriptions=5)
    full = ABSClassifier(tiny_clip, tiny_dino, text, cfg).predict(images, ["a", "b", "c", "d"])
    sub_text = TextBank(text.classnames, text.descriptions, text.mask, text.prompt, text.ensemble, subset=[4, 1, 2])
    sub = ABSClassifier(tiny_clip, tiny_dino, sub_text, cfg).predict(images, ["a", "b", "c", "d"])
    assert sub.class_indices == [4, 1, 2]
    for m in full.logits:
        # Scores are computed over all classes (softmax over every pair), then sliced.
        assert torch.allclose(sub.logits[m], full.logits[m][:, [4, 1, 2]], atol=1e-6)
        assert sub.pred(m).max() < 3


def test_b32_grid_and_branch_switches(tiny_clip_b32, tiny_dino, images):
    text = TextBank.build(tiny_clip_b32, CLASSES, DESCS, m=5, templates=[])
    for cfg in (
        ABSConfig(n_crops=5, top_k=4),
        ABSConfig(n_crops=5, top_k=4, raw_crops=False),
        ABSConfig(n_crops=5, top_k=4, feature_crops=False),
    ):
        out = ABSClassifier(tiny_clip_b32, tiny_dino, text, cfg).predict(images[:2], ["x", "y"], return_features=True)
        n_branches = int(cfg.raw_crops) + int(cfg.feature_crops)
        assert out.extras["crop_features"].shape == (2, 5 * n_branches, 64)
        assert (out.geometry[0].feature_windows[:, 1] <= 7).all()
        assert "clip-e" not in out.logits and "clip" in out.logits


def test_large_images_are_bounded_but_boxes_stay_in_original_pixels(tiny_clip, tiny_dino, text):
    big = make_image(900, 1600, 5)
    cfg = ABSConfig(n_crops=6, top_k=5, max_image_side=400)
    clf = ABSClassifier(tiny_clip, tiny_dino, text, cfg)
    out = clf.predict([big], ["big"])
    b = out.geometry[0].raw_boxes
    assert b[:, 2].max() <= 1600 and b[:, 2].max() > 400  # original pixels, not the 400 px working copy
    cached = (out.geometry[0].dino_topk_indices[None], out.geometry[0].dino_topk_values[None])
    exact = ABSClassifier(tiny_clip, tiny_dino, text, ABSConfig(n_crops=6, top_k=5, max_image_side=0))
    assert torch.equal(exact.predict([big], ["big"], dino_topk=cached).geometry[0].raw_boxes, b)


def test_text_bank_validation(tiny_clip):
    with pytest.raises(ValueError, match="no descriptions"):
        TextBank.build(tiny_clip, ["a", "b"], [["x"], ["", "  "]], templates=[])
    with pytest.raises(ValueError, match="description lists"):
        TextBank.build(tiny_clip, ["a", "b"], [["x"]], templates=[])
    bank = TextBank.build(tiny_clip, ["a", "b"], [["x", "y", "z"], ["w"]], m=2, templates=[])
    assert bank.mask.tolist() == [[True, True], [True, False]]


def test_precision_and_dimension_errors(tiny_clip, tiny_clip_b32, tiny_dino, text):
    with pytest.raises(ValueError, match="only supported on CUDA"):
        ABSClassifier(tiny_clip, tiny_dino, text, precision="bf16", device="cpu")
    bad = TextBank(text.classnames, torch.zeros(5, 5, 32), text.mask)
    with pytest.raises(ValueError, match="dimension 32"):
        ABSClassifier(tiny_clip, tiny_dino, bad)


def test_compiled_forward_matches_eager(tiny_clip, tiny_dino, text, images):
    cfg = ABSConfig(n_crops=4, top_k=4, n_descriptions=5)
    eager = ABSClassifier(tiny_clip, tiny_dino, text, cfg).predict(images[:2], ["a", "b"])
    comp = ABSClassifier(tiny_clip, tiny_dino, text, cfg, compile=True).predict(images[:2], ["a", "b"])
    for m in eager.logits:
        assert torch.allclose(eager.logits[m], comp.logits[m], atol=1e-3, rtol=1e-4), m
