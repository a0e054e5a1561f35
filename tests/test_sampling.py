"""Crop centres, boxes and feature windows follow the spec, per image and seeded."""

import math

import torch

from abs_model import ABSConfig, image_generator
from abs_model.sampling import draw_crops, feature_windows, raw_boxes


def test_generator_depends_only_on_seed_and_image_id():
    a = torch.rand(5, generator=image_generator(0, "img_1"))
    b = torch.rand(5, generator=image_generator(0, "img_1"))
    c = torch.rand(5, generator=image_generator(0, "img_2"))
    d = torch.rand(5, generator=image_generator(1, "img_1"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)


def test_raw_box_is_centred_on_the_cell_and_clipped_not_shifted():
    # 140 x 70 image, 14 x 14 DINO grid: cells are 10 x 5 pixels.
    cells = torch.tensor([2 * 14 + 3, 13, 14 * 14 - 1])
    widths = torch.tensor([50, 50, 20])
    heights = torch.tensor([30, 8, 10])
    boxes = raw_boxes(cells, widths, heights, 140, 70, 14)
    # cell (2, 3): centre (35, 12.5): x in [10, 60], y in [-2.5 -> 0, 27.5 -> 28 (round half to even)]
    assert boxes[0].tolist() == [10, 0, 60, 28]
    # cell (0, 13): centre (135, 2.5): x [110, 160 -> 140], y [-1.5 -> 0, 6.5 -> 6]
    assert boxes[1].tolist() == [110, 0, 140, 6]
    # cell (13, 13): centre (135, 67.5): x [125, 145 -> 140], y [62.5 -> 62, 72.5 -> 70]
    assert boxes[2].tolist() == [125, 62, 140, 70]


def test_feature_window_grid_mapping_for_a_7x7_clip_grid():
    # DINO cell (13, 1) on 14x14 -> CLIP cell (floor(13*7/14), floor(1*7/14)) = (6, 0)
    cells = torch.tensor([13 * 14 + 1, 0, 7 * 14 + 7])
    sides = torch.tensor([4, 3, 5])
    win = feature_windows(cells, sides, grid=7, dino_grid=14)
    assert win[0].tolist() == [4, 7, 0, 3]  # rows [6-2, 6+2+1 -> 7), cols [0-2 -> 0, 3)
    assert win[1].tolist() == [0, 2, 0, 2]  # side 3: half 1 -> [-1 -> 0, 2)
    assert win[2].tolist() == [1, 6, 1, 6]  # (3, 3), side 5 -> [1, 6)
    # On a 14x14 CLIP grid the same DINO cell maps to itself.
    assert feature_windows(cells[:1], sides[:1], grid=14, dino_grid=14)[0].tolist() == [11, 14, 0, 4]


def test_sizes_stay_in_bounds_and_equal_bounds_widen_to_b_plus_one():
    cfg = ABSConfig(n_crops=2000, alpha=0.5, beta=0.9)
    d = draw_crops(torch.arange(20), torch.linspace(0.2, 0.01, 20), 301, 199, 14, cfg, image_generator(0, "x"))
    assert d.raw_widths.min() >= math.floor(0.5 * 301) and d.raw_widths.max() <= math.floor(0.9 * 301)
    assert d.raw_heights.min() >= math.floor(0.5 * 199) and d.raw_heights.max() <= math.floor(0.9 * 199)
    assert set(d.feature_sides.unique().tolist()) == set(range(7, 13))  # [floor(7), floor(12.6)] inclusive
    eq = draw_crops(
        torch.arange(20),
        torch.ones(20),
        100,
        100,
        7,
        ABSConfig(n_crops=500, alpha=0.5, beta=0.5),
        image_generator(0, "y"),
    )
    assert set(eq.feature_sides.unique().tolist()) == {3, 4}


def test_centres_follow_softmax_of_topk_over_tau_sample():
    values = torch.tensor([0.10, 0.08, 0.05, 0.01])
    idx = torch.tensor([40, 7, 150, 3])
    n = 40000
    cfg = ABSConfig(n_crops=n, top_k=4, tau_sample=0.03)
    d = draw_crops(idx, values, 100, 100, 14, cfg, image_generator(0, "t"))
    expected = torch.softmax(values / 0.03, 0)
    for cells in (d.raw_cells, d.feature_cells):
        freq = torch.tensor([(cells == i).float().mean().item() for i in idx])
        assert torch.allclose(freq, expected.float(), atol=0.01), (freq, expected)
    # A wrong temperature would be visible: tau 0.06 gives clearly different frequencies.
    assert (torch.softmax(values / 0.06, 0) - expected).abs().max() > 0.05
    # The two branches are independent draws.
    assert not torch.equal(d.raw_cells, d.feature_cells)
