"""The text bank keeps the encoder's precision: float64 models give float64 features."""

import copy

import torch
import torch.nn.functional as F

from abs_model import TextBank

CLASSES = ["tench", "goldfish", "shark"]
DESCS = [
    ["a fish with olive scales", "tench in a net", "green fish"],
    ["a small orange fish"],  # fewer than M: padded and masked
    ["a large shark with teeth", "grey shark in the ocean"],
]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def _direct(model, tokenizer, texts):
    """Plain open_clip ``encode_text`` + L2 norm, no ``abs_model`` code in between."""
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer(texts)), dim=-1)


def test_float64_model_gives_float64_text_bank(tiny_clip):
    clip64 = copy.deepcopy(tiny_clip).double()
    bank = TextBank.build(clip64, CLASSES, DESCS, m=3, templates=TEMPLATES, batch_size=2)
    for name in ("descriptions", "prompt", "ensemble", "cupl"):
        assert getattr(bank, name).dtype == torch.float64, name

    ref = _direct(clip64.model, clip64.tokenizer, [d for ds in DESCS for d in ds])
    assert ref.dtype == torch.float64
    k = 0
    for ci, ds in enumerate(DESCS):
        got = bank.descriptions[ci, : len(ds)]
        assert torch.allclose(got, ref[k : k + len(ds)], atol=1e-12, rtol=0), (got - ref[k : k + len(ds)]).abs().max()
        assert bank.mask[ci].tolist() == [True] * len(ds) + [False] * (3 - len(ds))
        assert not bank.descriptions[ci, len(ds) :].any()
        k += len(ds)

    prompt = _direct(clip64.model, clip64.tokenizer, [f"a photo of a {c}." for c in CLASSES])
    assert torch.allclose(bank.prompt, prompt, atol=1e-12, rtol=0)
    ens = _direct(clip64.model, clip64.tokenizer, [t.format(c) for c in CLASSES for t in TEMPLATES])
    ens = F.normalize(ens.view(len(CLASSES), len(TEMPLATES), -1).mean(1), dim=-1)
    assert torch.allclose(bank.ensemble, ens, atol=1e-12, rtol=0)

    # Teeth: a float32 copy of the same features is ~1e-7 off, far outside 1e-12.
    assert (bank.descriptions.float().double() - bank.descriptions).abs().max() > 1e-10


def test_float32_model_keeps_float32_text_bank(tiny_clip):
    bank = TextBank.build(tiny_clip, CLASSES, DESCS, m=3, templates=TEMPLATES)
    for name in ("descriptions", "prompt", "ensemble", "cupl"):
        assert getattr(bank, name).dtype == torch.float32, name
    assert bank.mask.dtype == torch.bool
