"""The batched resampling reproduces torch's / PIL's per-crop resizes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from abs_model.preprocess import clip_views, dino_view, to_tensor_image
from abs_model.resample import aa_matrix, apply_separable, bicubic_matrix, resize_crop_geometry

from conftest import make_image


@pytest.mark.parametrize("box", [(3, 5, 20, 30), (0, 0, 37, 53), (10, 2, 9, 7), (1, 1, 30, 45)])
@pytest.mark.parametrize("size", [8, 16, 40])
def test_aa_bicubic_matches_interpolate_of_crop(box, size):
    img = torch.rand(3, 37, 53, dtype=torch.float64)
    t, l, h, w = box
    ref = F.interpolate(img[None, :, t : t + h, l : l + w], size=(size, size), mode="bicubic", antialias=True)[0]
    one = torch.tensor
    ry = aa_matrix(one([t]), one([h]), one([size]), one([0]), size, 37)
    rx = aa_matrix(one([l]), one([w]), one([size]), one([0]), size, 53)
    assert torch.allclose(apply_separable(img, ry, rx)[0], ref, atol=1e-12)


@pytest.mark.parametrize("r0,s", [(0, 7), (3, 9), (7, 7), (2, 12), (0, 14), (5, 1)])
def test_plain_bicubic_matches_interpolate(r0, s):
    G = 14
    tok = torch.rand(5, G, G, dtype=torch.float64)
    ref = F.interpolate(tok[None, :, r0 : r0 + s, r0 : r0 + s], size=(G, G), mode="bicubic", align_corners=False)[0]
    m = bicubic_matrix(torch.tensor([r0]), torch.tensor([s]), G, G)
    assert torch.allclose(apply_separable(tok, m, m)[0], ref, atol=1e-12)


def test_resize_crop_geometry_follows_torchvision():
    h = torch.tensor([100, 300, 224, 225, 57])
    w = torch.tensor([300, 100, 224, 401, 57])
    nh, nw, top, left = resize_crop_geometry(h, w, 224)
    for i in range(len(h)):
        img = Image.new("RGB", (int(w[i]), int(h[i])))
        resized = T.Resize(224, interpolation=T.InterpolationMode.BICUBIC)(img)
        assert (resized.height, resized.width) == (int(nh[i]), int(nw[i]))
        exp_top = int(round((resized.height - 224) / 2.0))
        exp_left = int(round((resized.width - 224) / 2.0))
        assert (int(top[i]), int(left[i])) == (exp_top, exp_left)


def test_clip_views_match_pil_crop_and_standard_preprocess():
    """Batched views equal ``preprocess(img.crop(box))`` pixel for pixel (PIL's 8-bit arithmetic)."""
    img = make_image(150, 210, 3)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    pre = T.Compose([
        T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)
    ])
    boxes = torch.tensor([[0, 0, 210, 150], [10, 20, 120, 140], [100, 0, 210, 75], [5, 5, 40, 100]])
    views = clip_views(to_tensor_image(img), boxes, 224, mean, std)
    for i, b in enumerate(boxes.tolist()):
        ref = pre(img.crop(tuple(b)))
        diff = (views[i] - ref).abs() * torch.tensor(std).view(3, 1, 1)  # back to [0, 1] pixel units
        assert diff.max() < 1e-5, f"box {b}: max pixel difference {diff.max() * 255:.2f}/255"
    # A box shifted by a few pixels is visibly different: the comparison has teeth.
    shifted = pre(img.crop((14, 20, 124, 140)))
    assert ((views[1] - shifted).abs() * torch.tensor(std).view(3, 1, 1)).mean() > 2 / 255


def test_dino_view_is_full_image_bilinear_resize():
    x = to_tensor_image(make_image(90, 140, 1))
    v = dino_view(x, 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    ref = T.ToTensor()(make_image(90, 140, 1).resize((224, 224), Image.BILINEAR))
    assert (v - ref).abs().max() < 1e-6


@pytest.mark.parametrize("mode", ["L", "P", "PA", "CMYK", "I;16", "RGBA", "LA", "1"])
def test_any_pil_mode_becomes_rgb(mode):
    base = make_image(20, 30, 2)
    if mode == "P":
        img = base.convert("P")
        img.info["transparency"] = 0
    elif mode == "I;16":
        img = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257))
        assert img.mode.startswith("I;16")
    else:
        img = base.convert(mode)
    x = to_tensor_image(img)
    assert x.shape == (3, 20, 30) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
