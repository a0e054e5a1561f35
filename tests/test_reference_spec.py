"""ABS logits of one image, computed with plain loops straight from ABS_SPEC.md.

Nothing from ``abs_model`` is used here except to load the two tiny random models
and to call the batched classifier being checked: crops come from PIL's own
``crop`` and torchvision's standard CLIP preprocessing, feature windows from
``F.interpolate``, attention from timm's unfused path, and matching from loops.

Resizes are Pillow's, run as two single-axis ``resize`` calls, horizontal first:
exactly Pillow <= 12's ``resize`` (the authors' environment), on any Pillow --
Pillow 13 may run the vertical pass first for some shapes, a few levels apart.
"""

import copy
import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from common import make_image
from PIL import Image
from torchvision import transforms as T

from abs_model import ABSClassifier, ABSConfig, TextBank

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IN_MEAN, IN_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pil_resize_hv(img, w, h, resample):
    """Pillow <= 12's two-pass ``img.resize((w, h))`` on any Pillow: horizontal pass, then vertical."""
    if img.width != w:
        img = img.resize((w, img.height), resample)
    if img.height != h:
        img = img.resize((w, h), resample)
    return img


def resize_shorter(size, resample=Image.BICUBIC):
    """``T.Resize(size)``: shorter side to ``size``, longer ``int(size * long / short)`` (torchvision)."""

    def resize(img):
        w, h = img.size
        nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        return pil_resize_hv(img, nw, nh, resample)

    return T.Lambda(resize)


def spec_generator(seed, image_id):
    digest = hashlib.sha256(f"{seed}\x1f{image_id}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def dino_attention(dino_model, pil):
    x = T.Compose(
        [T.Lambda(lambda im: pil_resize_hv(im, 224, 224, Image.BILINEAR)), T.ToTensor(), T.Normalize(IN_MEAN, IN_STD)]
    )(pil)[None]
    attn = dino_model.blocks[-1].attn
    seen = []
    h = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    old, attn.fused_attn = attn.fused_attn, False
    try:
        dino_model.forward_features(x)
    finally:
        attn.fused_attn = old
        h.remove()
    probs = seen[0][0]  # [heads, N, N]
    return [sum(float(probs[hd, 0, 1 + j]) for hd in range(probs.shape[0])) / probs.shape[0] for j in range(196)]


def reference_logits(clip, dino, pil, image_id, classnames, descriptions, cfg, return_features=False):
    model = clip.model
    W, H = pil.size
    # 1-2. DINO attention, top-K, two independent draws of N cells.
    a = torch.tensor(dino_attention(dino.model, pil), dtype=torch.float32)
    vals, idx = torch.topk(a, cfg.top_k)
    p = torch.softmax(vals.double() / cfg.tau_sample, 0)
    g = spec_generator(cfg.seed, image_id)
    raw_cells = [int(idx[j]) for j in torch.multinomial(p, cfg.n_crops, replacement=True, generator=g)]
    feat_cells = [int(idx[j]) for j in torch.multinomial(p, cfg.n_crops, replacement=True, generator=g)]
    widths = torch.randint(math.floor(cfg.alpha * W), math.floor(cfg.beta * W) + 1, (cfg.n_crops,), generator=g)
    heights = torch.randint(math.floor(cfg.alpha * H), math.floor(cfg.beta * H) + 1, (cfg.n_crops,), generator=g)
    Gc = model.visual.grid_size[0]
    lo, hi = math.floor(cfg.alpha * Gc), math.floor(cfg.beta * Gc)
    sides = torch.randint(lo, (hi if hi > lo else lo + 1) + 1, (cfg.n_crops,), generator=g)

    pre = T.Compose([resize_shorter(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    feats = []
    # 3. raw crops, one at a time.
    for n in range(cfg.n_crops):
        r, c = raw_cells[n] // 14, raw_cells[n] % 14
        cx, cy = (c + 0.5) * W / 14, (r + 0.5) * H / 14
        w, h = int(widths[n]), int(heights[n])
        box = (max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(W, cx + w / 2), min(H, cy + h / 2))
        crop = pil.crop(tuple(round(v) for v in box))
        feats.append(F.normalize(model.encode_image(pre(crop)[None].double())[0], dim=0))
    # 4. feature crops: tokens before the last block, one window at a time.
    vis = model.visual
    x = vis._embeds(pre(pil)[None].double())
    for blk in vis.transformer.resblocks[:-1]:
        x = blk(x)
    cls_tok, grid = x[:, :1], x[0, 1:].T.reshape(1, -1, Gc, Gc)
    for n in range(cfg.n_crops):
        r, c = feat_cells[n] // 14, feat_cells[n] % 14
        rr, cc = r * Gc // 14, c * Gc // 14
        s = int(sides[n])
        r0, r1 = max(0, rr - s // 2), min(Gc, rr + s // 2 + 1)
        c0, c1 = max(0, cc - s // 2), min(Gc, cc + s // 2 + 1)
        win = F.interpolate(grid[:, :, r0:r1, c0:c1], size=(Gc, Gc), mode="bicubic", align_corners=False)
        tok = torch.cat([cls_tok, win.flatten(2).transpose(1, 2)], dim=1)
        y = vis.transformer.resblocks[-1](tok)
        y = vis.ln_post(y[:, 0]) @ vis.proj
        feats.append(F.normalize(y[0], dim=0))
    # 5. text.
    tok = clip.tokenizer([d for ds in descriptions for d in ds[: cfg.n_descriptions]])
    t_all = F.normalize(model.encode_text(tok), dim=-1)
    pairs, k = [], 0
    for ci, ds in enumerate(descriptions):
        for _ in ds[: cfg.n_descriptions]:
            pairs.append((ci, t_all[k]))
            k += 1
    # 6. soft matching, crop by crop.
    logits = [0.0] * len(classnames)
    for v in feats:
        s = [float(v @ t) / cfg.tau for _, t in pairs]
        mx = max(s)
        z = sum(math.exp(x - mx) for x in s)
        for (ci, _), x in zip(pairs, s):
            logits[ci] += math.exp(x - mx) / z * x
    out = torch.tensor(logits, dtype=torch.float64)
    return (out, torch.stack(feats)) if return_features else out


@pytest.mark.parametrize("hw", [(150, 220), (900, 300)])  # landscape; tall, crops downscaled
def test_batched_abs_equals_spec_loops(tiny_clip, tiny_dino, hw):
    """In float64, so that the comparison sees the algorithm, not float32 summation order.

    (In float32 the two paths differ by ~5e-6 per feature, which 1/tau = 33 turns
    into ~3e-4 on a logit of 180: rounding noise, not a different method.)
    """
    tiny_clip = copy.deepcopy(tiny_clip).double()
    cfg = ABSConfig(n_crops=12, top_k=8, n_descriptions=4)
    classnames = ["tench", "goldfish", "great white shark"]
    descriptions = [
        ["a fish with olive scales", "a freshwater fish held by an angler", "tench in a net", "green fish", "extra"],
        ["a small orange fish", "goldfish in a bowl"],  # fewer than M: masked
        ["a large shark with teeth", "grey shark in the ocean", "shark fin above water", "a big predator fish"],
    ]
    pil = make_image(*hw, 11)
    with torch.no_grad():
        ref = reference_logits(tiny_clip, tiny_dino, pil, "val/00042.JPEG", classnames, descriptions, cfg)
    text = TextBank.build(tiny_clip, classnames, descriptions, m=cfg.n_descriptions, templates=[])
    clf = ABSClassifier(tiny_clip, tiny_dino, text, cfg, device="cpu")
    ours = clf.predict([pil], ["val/00042.JPEG"]).logits["abs"][0].double()
    # float64 end to end (text bank included) agrees to ~1e-13 on logits of ~180; a
    # float32 copy anywhere (e.g. of the description features) shows up as ~1e-6.
    assert torch.allclose(ours, ref, atol=1e-9, rtol=0), (ours - ref).abs().max()
