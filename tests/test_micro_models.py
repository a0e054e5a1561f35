"""The shipped micro models (rehearsals): real architectures, their own grids, read from the model.

Their grids (CLIP 8 x 8 at 64 px, DINO 14 x 14 at 56 px) match no stock model's name,
so these tests check that the classifier, the run record and the report take grid,
patch and input size from the loaded models rather than from a name.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from abs_model import MICRO_CLIP, MICRO_DINO, ABSClassifier, ABSConfig, CLIPBackbone, DINOBackbone, TextBank
from tasks.results import report
from tasks.run.context import model_geometry


def _models():
    return CLIPBackbone.load(MICRO_CLIP), DINOBackbone.load(MICRO_DINO)


def test_micro_models_have_their_own_grids_and_say_they_are_random(capsys):
    clip, dino = _models()
    err = capsys.readouterr().err
    assert "abs-micro-vit' has RANDOM weights" in err and "abs-micro-dino' has RANDOM weights" in err
    assert model_geometry(clip, dino) == {
        "clip_grid": 8,
        "clip_image_size": 64,
        "clip_patch": 8,
        "dino_grid": 14,
        "dino_image_size": 56,
        "dino_patch": 4,
    }
    assert clip.embed_dim == 32
    # same seeded random weights in every process (workers of one run must agree)
    again = CLIPBackbone.load(MICRO_CLIP)
    assert all(torch.equal(a, b) for a, b in zip(clip.state_dict().values(), again.state_dict().values()))


def test_micro_classifier_predicts_with_its_grid():
    clip, dino = _models()
    names = ["cat", "dog", "bird"]
    text = TextBank.build(clip, names, [[f"a {n}, view {i}." for i in range(4)] for n in names], m=4)
    clf = ABSClassifier(clip, dino, text, ABSConfig(n_crops=6, top_k=5, n_descriptions=4), "cpu")
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((120, 90), (64, 160))]
    out = clf.predict(imgs, ["a", "b"])
    assert set(out.logits) >= {"abs", "cupl"} and out.logits["abs"].shape == (2, 3)
    assert torch.isfinite(out.logits["abs"]).all()
    for g in out.geometry:
        assert (g.clip_grid, g.dino_grid) == (8, 14)
        w = g.feature_windows
        assert int(w.min()) >= 0 and int(w[:, 1].max()) <= 8 and int(w[:, 3].max()) <= 8
        assert int(g.dino_topk_indices.max()) < 14 * 14


def test_report_reads_grids_from_the_run_record_not_the_name():
    micro = {
        "clip_grid": 8,
        "clip_image_size": 64,
        "clip_patch": 8,
        "dino_grid": 14,
        "dino_image_size": 56,
        "dino_patch": 4,
    }
    assert report.run_grids({"clip_model": MICRO_CLIP, "model_geometry": micro}) == ((8, 64), 14)
    # a record from before geometry was recorded: the model's config file, then its name
    assert report.run_grids({"clip_model": "abs-micro-vit", "model_geometry": {}}) == ((8, 64), None)
    assert report.run_grids({"clip_model": "ViT-L-14-336"}) == ((24, 336), None)
    # a window of the 8 x 8 grid covers the centre square the 64 px view saw
    x0, y0, x1, y1 = report.feature_window_pixels((0, 4, 0, 8), 200, 100, 8, 64)
    assert (x0, x1) == (50.0, 150.0) and (y0, y1) == (0.0, 50.0)
