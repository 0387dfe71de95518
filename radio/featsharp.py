"""Training-free FeatSharp-style upsampling: a fixed-size teacher's map sharpened with the same teacher run on tiles.

C-RADIOv4 runs SigLIP2-g at 384 px only (a 24x24 grid), and its high partition wants the map at 32..72 cells.
Growing it bilinearly (:func:`radio.targets.resample_targets`) keeps the whole view's context but no detail finer
than its cells. FeatSharp (Ranzinger et al., ICML 2025) also runs the teacher on k x k tiles of the view at k times
its size, each tile at the teacher's native size: the tiles see that detail, but each lacks the rest of the view
and carries the teacher's whole position pattern, so the stitched map is wrong at the scale of a tile (the
"mode switching" at tile seams). FeatSharp fuses the two with an upsampler it trains per teacher; radio cannot
train or validate one without the teacher's weights. :func:`fuse_tiles` is the training-free part: the whole
view's map for the low band (grown bilinearly) plus the tiles' detail above the low grid (the tiles minus their
own area average on the low grid). ``bench/bench_featsharp.py`` measures it against bilinear growth and tiles
alone (BENCHMARKS.md, "FeatSharp (issue 30, item 7)").

Cost: k^2 + 1 teacher passes per view instead of 1, and targets stored at the tiles' grid (k^2 times the bytes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .targets import resample_targets

__all__ = ["split_tiles", "stitch_tiles", "fuse_tiles", "tiled_targets"]


def split_tiles(images_BCHW: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, H, W) -> (B k k, C, H/k, W/k): k x k tiles per image, row-major, without overlap."""
    B, C, H, W = images_BCHW.shape
    if k < 1 or H % k or W % k:
        raise ValueError(f"a {H}x{W} image does not split into {k}x{k} equal tiles")
    x = images_BCHW.reshape(B, C, k, H // k, k, W // k).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B * k * k, C, H // k, W // k)


def stitch_tiles(feats_NhwC: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`split_tiles` for feature maps: (B k k, h, w, C) -> (B, k h, k w, C)."""
    N, h, w, C = feats_NhwC.shape
    if k < 1 or N % (k * k):
        raise ValueError(f"{N} tile maps are not whole sets of {k}x{k} tiles")
    x = feats_NhwC.reshape(N // (k * k), k, k, h, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(N // (k * k), k * h, k * w, C)


def fuse_tiles(low_BhwC: torch.Tensor, tiles_BHWC: torch.Tensor) -> torch.Tensor:
    """The whole view's map ``low_BhwC`` (its grid h x w) and the stitched tile maps ``tiles_BHWC`` (H x W, finer)
    -> (B, H, W, C) float32: ``tiles + grow(low - shrink(tiles))``, i.e. the tiles' band above the low grid plus the
    low map grown bilinearly (shrink: exact area average; grow: bilinear, half-pixel centres; both
    :func:`~radio.targets.resample_targets`). Tiles that agree with the low map on its grid come back unchanged;
    tiles with no detail give the bilinear map."""
    B, h, w, C = low_BhwC.shape
    Bt, H, W, Ct = tiles_BHWC.shape
    if (Bt, Ct) != (B, C) or H < h or W < w:
        raise ValueError(f"low map {tuple(low_BhwC.shape)} and tile map {tuple(tiles_BHWC.shape)} do not fuse")
    tiles = tiles_BHWC.float()
    return tiles + resample_targets(low_BhwC.float() - resample_targets(tiles, (h, w)), (H, W))


def tiled_targets(
    forward: Callable[[torch.Tensor], torch.Tensor], view_BCHW: torch.Tensor, low_BhwC: torch.Tensor, k: int
) -> torch.Tensor:
    """A teacher's map on a k-times finer grid: ``forward`` (teacher pixels (N, C, s, s) at its native size s ->
    (N, g, g, D)) run on the k x k tiles of ``view_BCHW`` (the view's teacher pixels at k s), stitched and fused with
    ``low_BhwC``, the teacher's map of the whole view at s. -> (B, k g, k g, D) float32."""
    return fuse_tiles(low_BhwC, stitch_tiles(forward(split_tiles(view_BCHW, k)), k))
