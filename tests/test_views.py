"""Recorded views: deterministic, valid, and identical between the cache and the trainer."""

import numpy as np
import pytest

from radio.views import ViewPolicy, crop_view, render_view, sample_view, sample_views


def test_views_are_deterministic_and_depend_on_key():
    p = ViewPolicy(num_views=4, seed=3)
    a = sample_views(p, "img-1", 200, 120)
    assert a == sample_views(p, "img-1", 200, 120)
    assert a != sample_views(p, "img-2", 200, 120)
    assert a != sample_views(ViewPolicy(num_views=4, seed=4), "img-1", 200, 120)
    assert a[0].box == (40, 0, 160, 120) and not a[0].flip  # view 0: the largest centered square
    assert all(v.size_wh[0] == v.size_wh[1] for v in a)  # square views by default
    wide = ViewPolicy(num_views=4, ratio=(0.75, 4 / 3))
    assert sample_view(wide, "img-1", 0, 200, 120).box == (0, 0, 200, 120)  # non-square: the full image
    assert sample_view(p, "img-1", 2, 200, 120) == a[2]  # any view alone, in any order


@pytest.mark.parametrize("w,h", [(1, 1), (10000, 50), (50, 10000), (7, 3), (224, 224)])
def test_boxes_lie_inside_the_image(w, h):
    p = ViewPolicy(num_views=16, first_view_full=False)
    for v in sample_views(p, "x", w, h):
        left, t, r, b = v.box
        assert 0 <= left < r <= w and 0 <= t < b <= h


def test_area_and_flip_statistics():
    p = ViewPolicy(num_views=400, scale=(0.3, 0.6), first_view_full=False, flip_prob=0.5)
    views = sample_views(p, "stats", 300, 300)
    areas = np.array([v.size_wh[0] * v.size_wh[1] / 90000 for v in views])
    assert 0.27 <= areas.min() and areas.max() <= 0.63
    assert 0.35 < np.mean([v.flip for v in views]) < 0.65


def test_crop_and_render():
    img = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    p = ViewPolicy(num_views=8, first_view_full=False, flip_prob=1.0)
    v = sample_view(p, "a", 3, 30, 20)
    crop = crop_view(img, v)
    left, t, r, b = v.box
    np.testing.assert_array_equal(crop, img[t:b, left:r][:, ::-1])
    out = render_view(img, v, (16, 16))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_bad_policy_is_refused():
    with pytest.raises(ValueError, match="scale"):
        ViewPolicy(scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="num_views"):
        ViewPolicy(num_views=0)
