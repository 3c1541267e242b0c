"""The pointing game's tie rule and reference levels, and keyword conditioning (diffvqa.metrics.pointing)."""

import torch

from diffvqa.metrics.pointing import (
    area_shares,
    best_fixed_point,
    fixed_point_hits,
    grid_ceiling,
    keyword_conditioning,
    pointing_scores,
    separated_regions,
)


def _region(size, y0, y1, x0, x1):
    r = torch.zeros(size, size)
    r[y0:y1, x0:x1] = 1
    return r


def test_a_flat_map_scores_chance_not_a_hit():
    region = _region(32, 0, 8, 0, 16)  # 1/8 of the frame
    for value in (0.0, 1.0):
        flat = torch.full((1, 1, 32, 32), value)
        score = pointing_scores(flat, region[None, None])
        assert torch.allclose(score, torch.tensor([1 / 8]))  # the old rule ("any tied pixel inside") gave 1.0
    assert torch.allclose(area_shares(region[None, None]), torch.tensor([1 / 8]))


def test_peaks_and_plateaus():
    region = _region(16, 4, 8, 4, 8)
    single_in = torch.zeros(1, 1, 16, 16)
    single_in[0, 0, 5, 5] = 1
    single_out = torch.zeros(1, 1, 16, 16)
    single_out[0, 0, 12, 12] = 1
    plateau = torch.zeros(1, 1, 16, 16)
    plateau[0, 0, 6:10, 6:8] = 0.7  # 8 tied pixels, 4 of them (rows 6-7) inside
    maps = torch.cat([single_in, single_out, plateau])
    scores = pointing_scores(maps, region.expand(3, 1, 16, 16))
    assert scores.tolist() == [1.0, 0.0, 0.5]


def test_fixed_point_prior_learns_the_most_covered_pixel():
    train = torch.stack([_region(16, 10, 14, 2, 6), _region(16, 11, 15, 3, 7), _region(16, 0, 2, 0, 2)])
    y, x = best_fixed_point(train)
    assert 11 <= y < 14 and 3 <= x < 6  # inside the two overlapping regions
    test = torch.stack([_region(16, 12, 13, 4, 5), _region(16, 0, 4, 0, 4)])
    assert fixed_point_hits(test, (12, 4)).tolist() == [1.0, 0.0]


def test_grid_ceiling_is_whether_a_cell_centre_lies_inside():
    size, cells = 128, 8  # centres at 0, 16, ..., 112
    between = _region(size, 20, 30, 20, 30)  # contains no multiple of 16
    on = _region(size, 30, 34, 60, 66)  # contains (32, 64)
    assert grid_ceiling(torch.stack([between, on]), cells).tolist() == [0.0, 1.0]
    assert grid_ceiling(between[None], 16).tolist() == [1.0]  # a finer grid: centres at 0, 8, 16, 24, ...
    assert grid_ceiling(_region(size, 17, 23, 17, 23)[None], 16).tolist() == [0.0]  # between 16 and 24


def test_keyword_conditioning_is_one_half_for_a_map_that_ignores_the_keyword():
    left, right = _region(32, 10, 20, 2, 10), _region(32, 10, 20, 22, 30)
    good_left, good_right = left * 0.9 + 0.05, right * 0.9 + 0.05
    assert keyword_conditioning([good_left, good_right], [left, right], 4) == [1.0, 1.0]
    assert keyword_conditioning([good_right, good_left], [left, right], 4) == [0.0, 0.0]
    # One map, however good a localiser of *one* of the changes, used for both keywords: exactly one half.
    same = left * 0.8 + right * 0.3
    scores = keyword_conditioning([same, same], [left, right], 4)
    assert sorted(scores) == [0.0, 1.0] and sum(scores) / len(scores) == 0.5
    flat = torch.ones(32, 32)
    assert keyword_conditioning([flat, flat], [left, right], 4) == [0.5, 0.5]


def test_only_regions_at_least_one_grid_cell_apart_are_compared():
    a, b = _region(32, 0, 10, 0, 10), _region(32, 2, 12, 2, 12)
    assert separated_regions([a, b], 1) == []  # overlapping
    far, empty = _region(32, 20, 30, 20, 30), torch.zeros(32, 32)
    assert separated_regions([a, far, empty], 8) == [(0, 1), (1, 0)]
    # the nearest pixels are rows 9 and 14: 5 pixels apart, so apart for a gap of 5, not of 6
    below = _region(32, 14, 20, 0, 10)
    assert separated_regions([a, below], 5) == [(0, 1), (1, 0)]
    assert separated_regions([a, below], 6) == []
    diagonal = _region(32, 14, 20, 14, 20)  # 5 pixels apart in rows and in columns: the max norm counts 5
    assert separated_regions([a, diagonal], 5) == [(0, 1), (1, 0)] and separated_regions([a, diagonal], 6) == []
    assert keyword_conditioning([a, below], [a, below], 6) == []  # too close: not scored at all
