"""radio.featsharp: tiles split and stitch back in place, and the two-band fusion keeps what each input gets right."""

import pytest
import torch
import torch.nn.functional as F

from radio.featsharp import fuse_tiles, split_tiles, stitch_tiles, tiled_targets
from radio.targets import resample_targets


def _pool(x_NCHW: torch.Tensor) -> torch.Tensor:
    """A content-aligned teacher: the mean pixel of each 4x4 cell, (N, H/4, W/4, C)."""
    return F.avg_pool2d(x_NCHW, 4).permute(0, 2, 3, 1)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_split_then_stitch_is_the_identity(k):
    x = torch.randn(2, 5, 6 * k, 4 * k)
    tiles = split_tiles(x, k)
    assert tiles.shape == (2 * k * k, 5, 6, 4)
    if k > 1:  # row-major: tile k is the first of the second row
        assert torch.equal(tiles[k], x[0, :, 6:12, :4])
    assert torch.equal(stitch_tiles(tiles.permute(0, 2, 3, 1), k), x.permute(0, 2, 3, 1))


def test_tiled_targets_of_a_content_aligned_teacher_are_its_high_resolution_map():
    """Mean pooling is exact on tiles, and its map of the view at 1/k the size is the area average of the fine
    map: the fusion then returns the teacher's map at the high resolution, which bilinear growth does not."""
    torch.manual_seed(0)
    k, view = 3, torch.rand(2, 3, 96, 96)
    truth = _pool(view)  # (2, 24, 24, 3)
    low = _pool(F.avg_pool2d(view, k))  # the whole view at 32 px: (2, 8, 8, 3)
    out = tiled_targets(_pool, view, low, k)
    assert out.shape == truth.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, truth, rtol=0, atol=1e-5)
    assert (resample_targets(low, (24, 24)) - truth).abs().max() > 0.05


def test_fusion_takes_the_low_band_from_the_whole_view():
    torch.manual_seed(0)
    low = torch.randn(2, 6, 6, 4)
    # tiles without detail: the bilinear map
    torch.testing.assert_close(fuse_tiles(low, torch.zeros(2, 12, 12, 4)), resample_targets(low, (12, 12)))
    # a constant offset per tile (a tile's whole position pattern, at the tiles' scale) is removed; detail stays
    detail = torch.randn(2, 12, 12, 4)
    detail = detail - resample_targets(resample_targets(detail, (6, 6)), (12, 12))
    offset = torch.randn(2, 2, 2, 4).repeat_interleave(6, 1).repeat_interleave(6, 2)
    clean = fuse_tiles(low, detail)
    biased = fuse_tiles(low, detail + offset)
    assert (biased - clean).pow(2).mean() < 0.2 * offset.pow(2).mean()


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="3x3 equal tiles"):
        split_tiles(torch.zeros(1, 3, 10, 9), 3)
    with pytest.raises(ValueError, match="2x2 tiles"):
        stitch_tiles(torch.zeros(6, 4, 4, 8), 2)
    with pytest.raises(ValueError, match="do not fuse"):
        fuse_tiles(torch.zeros(1, 8, 8, 4), torch.zeros(1, 6, 6, 4))
