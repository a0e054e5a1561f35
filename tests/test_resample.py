"""The batched resampling reproduces torch's / PIL's per-crop resizes.

PIL: the crops follow Pillow <= 12's 8-bit resize, which always runs the horizontal
pass first. Pillow 13 picks the pass order by cost (vertical first for e.g. tall
images being downscaled), so comparisons with the installed Pillow's two-axis
``resize`` are only made where they are valid (Pillow < 13). The exactness checks
instead use ``pil12_resize`` below: an independent numpy reimplementation of
Pillow's ``ImagingResample`` fixed-point arithmetic in the horizontal-first order,
itself checked against the installed Pillow on single-axis resizes (one pass, so
the order question does not arise) and against chained single-axis Pillow calls.
"""

import numpy as np
import PIL
import pytest
import torch
import torch.nn.functional as F
from common import make_image
from PIL import Image
from torchvision import transforms as T

from abs_model.preprocess import clip_views, dino_view, limit_size, resize_whole, to_tensor_image
from abs_model.resample import aa_matrix, apply_separable, bicubic_matrix, resize_crop_geometry

PILLOW_MAJOR = int(PIL.__version__.split(".")[0])
pillow_two_pass_is_horizontal_first = pytest.mark.skipif(
    PILLOW_MAJOR >= 13, reason="Pillow >= 13 may resize vertically first; checked against pil12_resize instead"
)

# ---------------------------------------------------------------- independent reference
# Pillow's libImaging/Resample.c for 8-bit images (Pillow <= 12 pass order), in numpy.
_PRECISION_BITS = 32 - 8 - 2


def _pil_filter(x: float, kernel: str) -> float:
    x = abs(x)
    if kernel == "bicubic":  # a = -0.5
        a = -0.5
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        if x < 2.0:
            return (((x - 5) * x + 8) * x - 4) * a
        return 0.0
    return 1.0 - x if x < 1.0 else 0.0  # bilinear (triangle)


def _pil_coeffs(in_size: int, out_size: int, kernel: str) -> list[tuple[int, np.ndarray]]:
    """``precompute_coeffs`` + ``normalize_coeffs_8bpc``: (first tap, fixed-point taps) per output."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = {"bicubic": 2.0, "bilinear": 1.0}[kernel] * filterscale  # 2 * scale when downscaling
    out = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        ws = [_pil_filter((x + xmin - center + 0.5) / filterscale, kernel) for x in range(xmax - xmin)]
        ww = 0.0
        for w in ws:  # sequential sum, as in C
            ww += w
        if ww != 0.0:
            ws = [w / ww for w in ws]
        one = 1 << _PRECISION_BITS
        fixed = [int(-0.5 + w * one) if w < 0 else int(0.5 + w * one) for w in ws]
        out.append((xmin, np.array(fixed, dtype=np.int64)))
    return out


def _pil_pass(a: np.ndarray, out_size: int, kernel: str, axis: int) -> np.ndarray:
    """One 8-bit pass along ``axis`` (0 vertical, 1 horizontal) of uint8 ``a [H, W, C]``."""
    a = np.moveaxis(a, axis, 0)
    res = np.empty((out_size,) + a.shape[1:], dtype=np.uint8)
    for i, (xmin, k) in enumerate(_pil_coeffs(a.shape[0], out_size, kernel)):
        acc = (1 << (_PRECISION_BITS - 1)) + np.tensordot(k, a[xmin : xmin + len(k)].astype(np.int64), axes=(0, 0))
        res[i] = np.clip(acc >> _PRECISION_BITS, 0, 255)  # clip8
    return np.moveaxis(res, 0, axis)


def pil12_resize(a: np.ndarray, w: int, h: int, kernel: str = "bicubic", order: str = "hv") -> np.ndarray:
    """``Image.fromarray(a).resize((w, h))`` as Pillow <= 12 computes it: horizontal pass
    into an 8-bit intermediate, then vertical. ``order="vh"``: the other order (Pillow 13, some shapes)."""
    for axis in order:
        if axis == "h" and a.shape[1] != w:
            a = _pil_pass(a, w, kernel, 1)
        if axis == "v" and a.shape[0] != h:
            a = _pil_pass(a, h, kernel, 0)
    return a


def pil_resize_hv(img: Image.Image, w: int, h: int, resample) -> Image.Image:
    """Pillow <= 12's two-pass resize on any Pillow: two single-axis calls, horizontal first."""
    if img.width != w:
        img = img.resize((w, img.height), resample)
    if img.height != h:
        img = img.resize((w, h), resample)
    return img


def clip_view_reference(arr: np.ndarray, box, size: int) -> np.ndarray:
    """``img.crop(box)``, shorter side to ``size`` (torchvision's sizes), centre crop -> uint8 ``[size, size, 3]``."""
    x0, y0, x1, y1 = box
    crop = arr[y0:y1, x0:x1]
    h, w = crop.shape[:2]
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    r = pil12_resize(crop, nw, nh, "bicubic")
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return r[top : top + size, left : left + size]


def _levels(x: torch.Tensor) -> np.ndarray:
    """``[3, h, w]`` in [0, 1] holding 8-bit levels / 255 -> uint8 ``[h, w, 3]`` (checks they are levels)."""
    v = x.double() * 255.0
    assert (v - v.round()).abs().max() < 1e-3
    return v.round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("kernel", ["bicubic", "bilinear"])
@pytest.mark.parametrize(
    "hw,out",
    [
        ((150, 210), (224, 313)),
        ((210, 150), (313, 224)),
        ((300, 40), (224, 224)),
        ((95, 35), (60, 60)),
        ((500, 120), (233, 56)),
        ((37, 53), (16, 16)),
        ((120, 500), (224, 933)),
        ((64, 64), (64, 30)),
    ],
)
def test_reference_equals_installed_pillow_where_pass_order_cannot_matter(hw, out, kernel):
    """The reference's coefficients and rounding are Pillow's: checked on single-axis resizes
    (one pass, valid on every Pillow) and against two chained single-axis calls."""
    rng = np.random.default_rng(sum(hw) + sum(out))
    a = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[kernel]
    (h, w), (oh, ow) = hw, out
    assert np.array_equal(np.asarray(img.resize((ow, h), resample)), pil12_resize(a, ow, h, kernel))
    assert np.array_equal(np.asarray(img.resize((w, oh), resample)), pil12_resize(a, w, oh, kernel))
    assert np.array_equal(np.asarray(pil_resize_hv(img, ow, oh, resample)), pil12_resize(a, ow, oh, kernel))


@pillow_two_pass_is_horizontal_first
@pytest.mark.parametrize("hw,out", [((300, 40), (224, 224)), ((400, 260), (354, 224)), ((150, 210), (224, 313))])
def test_reference_equals_installed_pillow_two_pass_resize(hw, out):
    a = np.random.default_rng(sum(hw)).integers(0, 256, (*hw, 3), dtype=np.uint8)
    got = np.asarray(Image.fromarray(a).resize((out[1], out[0]), Image.BICUBIC))
    assert np.array_equal(got, pil12_resize(a, out[1], out[0]))


@pytest.mark.parametrize("hw", [(150, 210), (210, 150), (320, 90), (90, 320), (400, 260), (260, 400)])
def test_clip_views_equal_horizontal_first_reference(hw):
    """Every crop equals Pillow <= 12's pixels exactly: landscape and portrait images,
    landscape and portrait boxes, crops up- and downscaled to 224."""
    h, w = hw
    img = make_image(h, w, h + w)
    arr = np.asarray(img)
    boxes = [
        (0, 0, w, h),  # the whole image
        (w // 10, h // 8, w - w // 7, h // 8 + max(8, h // 3)),  # landscape box
        (w // 5, 0, w // 5 + max(8, w // 4), h),  # portrait box, full height
        (3, 5, 3 + max(8, w // 3), 5 + max(16, (4 * h) // 5)),  # portrait box
        (w // 2, h // 2, w, h),  # corner
    ]
    views = clip_views(to_tensor_image(img), torch.tensor(boxes), 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    for view, box in zip(views, boxes):
        ref = clip_view_reference(arr, box, 224)
        got = _levels(view)
        assert np.array_equal(got, ref), (box, int((got != ref).sum()))


def test_the_reference_tells_the_two_pass_orders_apart():
    """Teeth: for a downscaled portrait crop the vertical-first order gives other pixels
    (a quarter or so differ), and the project's view follows the horizontal-first one."""
    img = make_image(400, 260, 7)
    arr = np.asarray(img)
    box = (10, 10, 250, 390)  # 240 x 380 portrait crop, downscaled to 224 x 354
    crop = arr[box[1] : box[3], box[0] : box[2]]
    hv, vh = pil12_resize(crop, 224, 354, order="hv"), pil12_resize(crop, 224, 354, order="vh")
    assert (hv != vh).mean() > 0.05
    view = clip_views(to_tensor_image(img), torch.tensor([box]), 224, (0.0,) * 3, (1.0,) * 3)[0]
    top = int(round((354 - 224) / 2.0))
    assert np.array_equal(_levels(view), hv[top : top + 224])
    assert not np.array_equal(_levels(view), vh[top : top + 224])


@pytest.mark.parametrize("hw", [(90, 140), (300, 200), (333, 120), (120, 333)])
def test_dino_view_equals_horizontal_first_bilinear_reference(hw):
    img = make_image(*hw, 3)
    v = dino_view(to_tensor_image(img), 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert np.array_equal(_levels(v), pil12_resize(np.asarray(img), 224, 224, "bilinear"))


@pytest.mark.parametrize("hw,max_side", [((600, 180), 256), ((180, 600), 256), ((500, 410), 300)])
def test_limit_size_equals_horizontal_first_bicubic_reference(hw, max_side):
    img = make_image(*hw, 5)
    x = limit_size(to_tensor_image(img), max_side)
    h, w = hw
    f = max_side / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    assert x.shape == (3, nh, nw)
    assert np.array_equal(_levels(x), pil12_resize(np.asarray(img), nw, nh, "bicubic"))
    assert torch.equal(resize_whole(to_tensor_image(img), nh, nw, "bicubic"), x)


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


def _hv_resize_shorter(size: int):
    """``T.Resize(size)`` (torchvision's output size) with a horizontal-first Pillow resize."""

    def resize(img):
        w, h = img.size
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        return pil_resize_hv(img, nw, nh, Image.BICUBIC)

    return T.Lambda(resize)


@pytest.mark.parametrize(
    "resize",
    [
        pytest.param("torchvision", marks=pillow_two_pass_is_horizontal_first),  # the authors' exact pipeline
        "horizontal-first",  # the same pipeline, valid on every Pillow
    ],
)
def test_clip_views_match_pil_crop_and_standard_preprocess(resize):
    """Batched views equal ``preprocess(img.crop(box))`` pixel for pixel (PIL's 8-bit arithmetic)."""
    img = make_image(150, 210, 3)
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    tv_resize = T.Resize(224, interpolation=T.InterpolationMode.BICUBIC)
    pre = T.Compose(
        [
            tv_resize if resize == "torchvision" else _hv_resize_shorter(224),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    boxes = torch.tensor([[0, 0, 210, 150], [10, 20, 120, 140], [100, 0, 210, 75], [5, 5, 40, 100]])
    views = clip_views(to_tensor_image(img), boxes, 224, mean, std)
    for i, b in enumerate(boxes.tolist()):
        ref = pre(img.crop(tuple(b)))
        diff = (views[i] - ref).abs() * torch.tensor(std).view(3, 1, 1)  # back to [0, 1] pixel units
        assert diff.max() < 1e-5, f"box {b}: max pixel difference {diff.max() * 255:.2f}/255"
    # A box shifted by a few pixels is visibly different: the comparison has teeth.
    shifted = pre(img.crop((14, 20, 124, 140)))
    assert ((views[1] - shifted).abs() * torch.tensor(std).view(3, 1, 1)).mean() > 2 / 255


@pillow_two_pass_is_horizontal_first
@pytest.mark.parametrize("hw", [(90, 140), (300, 200)])
def test_dino_view_is_full_image_bilinear_resize(hw):
    x = to_tensor_image(make_image(*hw, 1))
    v = dino_view(x, 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    ref = T.ToTensor()(make_image(*hw, 1).resize((224, 224), Image.BILINEAR))
    assert (v - ref).abs().max() < 1e-6


@pytest.mark.parametrize("mode", ["L", "P", "PA", "CMYK", "I;16", "RGBA", "LA", "1"])
def test_any_pil_mode_becomes_rgb(mode):
    base = make_image(20, 30, 2)
    if mode == "P":
        img = base.convert("P")
        img.info["transparency"] = 0
    elif mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        assert img.mode.startswith("I;16")
    else:
        img = base.convert(mode)
    x = to_tensor_image(img)
    assert x.shape == (3, 20, 30) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
