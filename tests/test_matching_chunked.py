"""Soft matching in blocks (``soft_match``) against a dense float64 reference."""

import pytest
import torch
import torch.nn.functional as F

from abs_model import soft_match
from abs_model.matching import matching_chunks


def dense_reference(v, t, mask, tau):
    """The spec in float64 over all (class, description) pairs at once."""
    s = torch.einsum("bnd,cmd->bncm", v.double(), t.double()) / tau
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    b, n, c, m = s.shape
    p = torch.softmax(s.reshape(b, n, c * m), dim=-1).reshape(b, n, c, m)
    contrib = p * s
    if mask is not None:
        contrib = contrib.masked_fill(~mask, 0.0)
    return contrib.sum(dim=(1, 3))


def feats(b=3, n=7, c=53, m=11, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(b, n, d, generator=g), dim=-1)
    t = F.normalize(torch.randn(c, m, d, generator=g), dim=-1)
    return v, t, g


def close(a, ref):
    return torch.allclose(a.double(), ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("class_chunk", [None, 1, 7, 53, 100])  # C = 53 (prime): 7 leaves a short last block
@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_blocks_match_dense_reference(class_chunk, chunk):
    v, t, _ = feats()
    assert close(soft_match(v, t, None, 0.03, chunk=chunk, class_chunk=class_chunk), dense_reference(v, t, None, 0.03))


@pytest.mark.parametrize("tau", [0.03, 0.01])  # 0.01 takes the shifted (two-level) path
@pytest.mark.parametrize("class_chunk", [None, 4, 5])
def test_masks_and_a_class_left_with_one_description(tau, class_chunk):
    v, t, g = feats()
    mask = torch.rand(t.shape[:2], generator=g) < 0.5
    mask[:, 0] = True
    mask[5] = False
    mask[5, 7] = True  # class 5: every description masked but one
    mask[8:12] = False  # a whole class block masked (shifted path: a block of -inf rows)
    mask[8:12, 3] = True
    garbage = t.clone()
    garbage[~mask] = F.normalize(torch.ones(t.shape[-1]), dim=0) * 3  # large padding: must not count
    ref = dense_reference(v, t, mask, tau)
    ours = soft_match(v, garbage, mask, tau, class_chunk=class_chunk)
    assert close(ours, ref)
    assert not close(soft_match(v, garbage, None, tau, class_chunk=class_chunk), ref)


def test_class_subset_is_a_column_selection_of_the_joint_softmax():
    v, t, g = feats()
    mask = torch.rand(t.shape[:2], generator=g) < 0.7
    mask[:, 0] = True
    subset = torch.tensor([40, 2, 17, 52, 3])
    ref = dense_reference(v, t, mask, 0.03)[:, subset]
    assert close(soft_match(v, t, mask, 0.03, class_chunk=6, classes=subset), ref)
    # not the softmax over the subset's pairs only
    assert not close(soft_match(v, t[subset], mask[subset], 0.03), ref)


def test_argmax_equals_dense_on_clear_margins():
    """Random features with a planted class per image: same argmax as the dense path."""
    v, t, g = feats(b=8, n=12, c=300, m=20, d=32, seed=1)
    target = torch.randint(0, 300, (8,), generator=g)
    v = F.normalize(v + 0.8 * t[target].mean(1, keepdim=True), dim=-1)
    ref = dense_reference(v, t, None, 0.03)
    ours = soft_match(v, t, None, 0.03, class_chunk=37)
    top2 = ref.topk(2, dim=1).values
    assert bool(((top2[:, 0] - top2[:, 1]) > 1e-2).all())
    assert torch.equal(ours.argmax(1), ref.argmax(1))
    assert close(ours, ref)


def test_float64_inputs_stay_float64():
    v, t, _ = feats()
    out = soft_match(v.double(), t.double(), None, 0.03, class_chunk=9)
    assert out.dtype == torch.float64
    assert torch.allclose(out, dense_reference(v, t, None, 0.03), atol=1e-9, rtol=1e-10)


def test_chunk_sizes_per_device():
    per, cc = matching_chunks("cpu", 16, 120, 50)
    assert per == 1 and 2 * 120 * cc * 50 * 4 <= 2 * (1 << 20)
    per_gpu, cc_gpu = matching_chunks("cuda", 64, 120, 50)
    assert per_gpu == 64 and cc_gpu * 50 * 64 * 120 * 4 <= 1 << 28 and cc_gpu > cc
    assert matching_chunks("cpu", 5, 1, 1000) == (1, 262)  # one image per block


def test_an_image_does_not_depend_on_its_batch():
    v, t, _ = feats(b=5, n=40, c=60, m=9)
    batch = soft_match(v, t, None, 0.03)
    for i in range(5):
        assert torch.equal(soft_match(v[i : i + 1], t, None, 0.03)[0], batch[i])
