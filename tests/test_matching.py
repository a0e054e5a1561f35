"""Soft matching: joint softmax over (class, description) pairs, temperature, mask."""

import pytest
import torch
import torch.nn.functional as F

from abs_model import soft_match


def loop_soft_match(v, t, valid, tau):
    """Straight from the spec, one crop and one pair at a time."""
    B, n, _ = v.shape
    C, M, _ = t.shape
    out = torch.zeros(B, C, dtype=torch.float64)
    for b in range(B):
        for i in range(n):
            pairs = [(c, m) for c in range(C) for m in range(M) if valid[c][m]]
            s = {p: float(v[b, i].double() @ t[p[0], p[1]].double()) / tau for p in pairs}
            mx = max(s.values())
            z = sum(torch.exp(torch.tensor(x - mx, dtype=torch.float64)) for x in s.values())
            for (c, _m), x in s.items():
                out[b, c] += float(torch.exp(torch.tensor(x - mx, dtype=torch.float64)) / z) * x
    return out


@pytest.fixture
def feats():
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(2, 5, 16, generator=g), dim=-1)
    t = F.normalize(torch.randn(4, 3, 16, generator=g), dim=-1)
    return v, t


def test_matches_spec_loops(feats):
    v, t = feats
    ref = loop_soft_match(v, t, [[True] * 3] * 4, 0.03)
    assert torch.allclose(soft_match(v, t, None, 0.03).double(), ref, atol=1e-4, rtol=1e-5)


def test_softmax_runs_over_all_pairs_jointly_not_per_class(feats):
    v, t = feats
    s = torch.einsum("bnd,cmd->bncm", v, t) / 0.03
    per_class = (torch.softmax(s, dim=3) * s).sum(dim=(1, 3))
    per_desc = (torch.softmax(s, dim=2) * s).sum(dim=(1, 3))
    ours = soft_match(v, t, None, 0.03)
    assert not torch.allclose(ours, per_class, atol=1e-2)
    assert not torch.allclose(ours, per_desc, atol=1e-2)


def test_temperature_is_used(feats):
    v, t = feats
    a = soft_match(v, t, None, 0.03)
    b = soft_match(v, t, None, 0.05)
    assert not torch.allclose(a, b, atol=1e-2)
    assert torch.allclose(b.double(), loop_soft_match(v, t, [[True] * 3] * 4, 0.05), atol=1e-4, rtol=1e-5)


def test_padded_descriptions_are_masked(feats):
    v, t = feats
    valid = [[True, True, True], [True, False, False], [True, True, False], [True, True, True]]
    mask = torch.tensor(valid)
    garbage = t.clone()
    garbage[~mask] = F.normalize(torch.ones(16), dim=0)  # padding that would score if unmasked
    ours = soft_match(v, garbage, mask, 0.03)
    assert torch.allclose(ours.double(), loop_soft_match(v, t, valid, 0.03), atol=1e-4, rtol=1e-5)
    unmasked = soft_match(v, garbage, None, 0.03)
    assert not torch.allclose(ours, unmasked, atol=1e-2)


def test_result_does_not_depend_on_chunking(feats):
    v, t = feats
    assert torch.allclose(soft_match(v, t, None, 0.03, chunk=1), soft_match(v, t, None, 0.03, chunk=8))


def test_shape_errors_are_clear(feats):
    v, t = feats
    with pytest.raises(ValueError, match="text_mask must be"):
        soft_match(v, t, torch.ones(3, 3, dtype=torch.bool), 0.03)
    with pytest.raises(ValueError, match="feature sizes differ"):
        soft_match(v, t[..., :8], None, 0.03)
