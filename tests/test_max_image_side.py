"""No downscale limit by default: every view is resized once from the original image (issue 19).

The global view of an image of any size is open_clip's own ``preprocess(img)`` bit for bit
(what CLIP_benchmark feeds the model), so the ``clip`` / ``clip-e`` / ``cupl`` baselines see
exactly CLIP's input; ``max_image_side`` stays available as an option (config, CLI).
"""

from __future__ import annotations

import pytest
import torch
from common import invoke_cli, make_image

from abs_model import ABSClassifier, ABSConfig, TextBank
from abs_model.preprocess import (
    clip_views_batch,
    dino_views,
    full_box,
    image_tensor,
    limit_size,
    model_image,
    to_tensor_image,
)

CLASSES = ["cat", "dog", "bird"]
DESCS = [[f"a {c}, view {i}" for i in range(4)] for c in CLASSES]
# (height, width): landscape, portrait and a wide panorama, all over the old 1024 px limit
BIG = [(1100, 1500), (1500, 1100), (700, 2100)]


@pytest.fixture(scope="module")
def big_images():
    return [make_image(h, w, 90 + k) for k, (h, w) in enumerate(BIG)]


@pytest.fixture(scope="module")
def open_clip_preprocess(tiny_clip):
    """The evaluation transform open_clip builds for the tiny model (as CLIP_benchmark gets it)."""
    import open_clip

    from abs_model.model_configs import register_clip_configs

    register_clip_configs()
    _, _, preprocess = open_clip.create_model_and_transforms(tiny_clip.spec.name, pretrained=None)
    return preprocess


def test_default_is_no_limit_and_the_option_is_validated():
    assert ABSConfig().max_image_side == 0
    assert ABSConfig(max_image_side=None).max_image_side == 0  # None reads as "no limit", stored as 0
    assert ABSConfig(max_image_side=None).digest() == ABSConfig().digest()
    assert ABSConfig(max_image_side=1024).digest() != ABSConfig().digest()  # other predictions, other partition
    for bad in (-1, 1.5, True, "1024"):
        with pytest.raises(ValueError, match="max_image_side"):
            ABSConfig(max_image_side=bad)


def test_dino_cache_key_names_the_setting(tiny_dino):
    from tasks.steps.dino_cache import dino_key

    # attention computed under the old 1024 px default is never read for the new default
    assert dino_key(tiny_dino, 0) != dino_key(tiny_dino, 1024)
    assert dino_key(tiny_dino, ABSConfig().max_image_side) == dino_key(tiny_dino, 0)


def test_global_view_of_a_large_image_is_open_clips_preprocess_bit_for_bit(tiny_clip, big_images, open_clip_preprocess):
    n = tiny_clip.norm
    for img in big_images:
        want = open_clip_preprocess(img)
        for x in (image_tensor(img), to_tensor_image(img)):  # uint8 levels and float images alike
            got = clip_views_batch([x], [(0, full_box(x).cpu(), 0)], n.size, n.mean, n.std)[0]
            assert torch.equal(got, want), (img.size, x.dtype)


def test_predict_baselines_see_open_clips_input_unless_limited(tiny_clip, tiny_dino, big_images, open_clip_preprocess):
    """``predict``'s global features equal ``encode_image(preprocess(img))`` within float32
    rounding (the same input bits; only the batch shape of the forward differs); with the old
    1024 px limit they do not."""
    text = TextBank.build(tiny_clip, CLASSES, DESCS, m=4, templates=["a photo of a {}."])
    cfg = ABSConfig(n_crops=4, top_k=4, n_descriptions=4)
    ids = [f"big{k}" for k in range(len(big_images))]
    with torch.inference_mode():
        ref = torch.cat([tiny_clip.model.encode_image(open_clip_preprocess(im)[None]) for im in big_images])
    ref = torch.nn.functional.normalize(ref.float(), dim=-1)
    exact = ABSClassifier(tiny_clip, tiny_dino, text, cfg, device="cpu").predict(big_images, ids, return_features=True)
    err = (exact.extras["global_features"] - ref).abs().max().item()
    assert err <= 1e-5, err
    limited = ABSClassifier(
        tiny_clip, tiny_dino, text, ABSConfig(**{**cfg.to_dict(), "max_image_side": 1024}), device="cpu"
    ).predict(big_images, ids, return_features=True)
    assert (limited.extras["global_features"] - ref).abs().max().item() > 100 * max(err, 1e-7)
    # the crop geometry is in original pixels either way; without the limit the crops come from the original
    for g, (h, w) in zip(exact.geometry, BIG):
        assert (g.width, g.height) == (w, h)
        assert int(g.raw_boxes[:, 2].max()) <= w and int(g.raw_boxes[:, 3].max()) <= h


@pytest.mark.parametrize("kernels", ["1", "0"])
def test_uint8_levels_give_the_float_images_views(monkeypatch, big_images, kernels):
    """Images are held as uint8 levels (a quarter of float32's memory); every view (crops, DINO,
    the limited copy) is the same bit for bit as from the float image, on both CPU paths."""
    monkeypatch.setenv("ABS_CPU_KERNELS", kernels)
    u8 = [model_image(im) for im in big_images]
    fl = [to_tensor_image(im) for im in big_images]
    assert all(x.dtype == torch.uint8 for x in u8)
    boxes = torch.tensor([[0, 0, 700, 500], [311, 97, 1099, 699], [5, 3, 9, 600]])
    groups = [(b, boxes, 3 * b) for b in range(len(u8))]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    assert torch.equal(clip_views_batch(u8, groups, 64, mean, std), clip_views_batch(fl, groups, 64, mean, std))
    assert torch.equal(dino_views(u8, 56, mean, std), dino_views(fl, 56, mean, std))
    assert torch.equal(limit_size(u8[0], 300), limit_size(fl[0], 300))
    assert limit_size(u8[0], 0) is u8[0] and limit_size(u8[0], 5000) is u8[0]


def test_prepared_large_image_is_held_as_uint8(tiny_clip, tiny_dino, big_images):
    text = TextBank.build(tiny_clip, CLASSES, DESCS, m=4, templates=[])
    clf = ABSClassifier(tiny_clip, tiny_dino, text, ABSConfig(n_crops=4, top_k=4, n_descriptions=4), device="cpu")
    x = clf.prepare_image(big_images[0])
    assert x.dtype == torch.uint8 and x.is_contiguous() and tuple(x.shape) == (3, 1100, 1500)
    a = clf.predict([x], ["p"], return_features=True)
    b = clf.predict([big_images[0]], ["p"], return_features=True)
    for m in a.logits:
        assert torch.equal(a.logits[m], b.logits[m]), m


def test_cli_option_reaches_the_abs_config(monkeypatch, tmp_path):
    import flows.params as fp

    seen: list[dict] = []

    def capture(**values):
        seen.append(values)
        raise fp.ParameterError("stop here")

    monkeypatch.setattr(fp, "make_params", capture)
    for args, want in (
        (["--max-image-side", "1024"], {"max_image_side": 1024}),
        ([], {}),
        (["--max-image-side", "0"], {"max_image_side": 0}),
    ):
        seen.clear()
        res = invoke_cli("run", "--dataset", "x", "--root", str(tmp_path), *args)
        assert "stop here" in res.output, res.output
        assert seen[0]["abs_config"] == want
    res = invoke_cli("run", "--dataset", "x", "--root", str(tmp_path), "--max-image-side", "-5")
    assert res.exit_code == 2
