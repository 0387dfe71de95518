"""Teacher feature maps on other grids: the one resampling the cache writer and the trainer share.

A teacher's map covers the view in its top-left ``extent`` cells (the whole map, except where SAM pads).
:func:`resample_targets` moves that region onto another grid: an exact area average when shrinking (each
output cell is the mean of the input cells its pixels cover, fractional overlaps included), bilinear with
half-pixel centres when growing. The cache job applies it once, in the teacher actor, to store targets at
the grid the student trains on (:func:`stored_grid`); the trainer applies it again only when the student's
grid differs from the stored one (a lower resolution, a size of a resolution partition), with the ``linear``
kernel: the stored map was already area-averaged once, and a second area average at a non-integer ratio
shifts a ramp by up to 0.07 of a student cell where the linear kernel keeps it within what one direct
resampling gives (the ramp test in tests/test_partitions.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["resample_targets", "resample_valid_mask", "resample_window", "stored_grid"]


def stored_grid(native_hw: tuple[int, int], target_hw: tuple[int, int] | None) -> tuple[int, int]:
    """The grid a teacher's targets are stored at: ``target_hw`` per axis, but never finer than the
    teacher's own grid (the cache never upsamples; the trainer does, if it must). None: native."""
    if target_hw is None:
        return (int(native_hw[0]), int(native_hw[1]))
    return (min(int(native_hw[0]), int(target_hw[0])), min(int(native_hw[1]), int(target_hw[1])))


def _axis_weights(src_len_B: torch.Tensor, dst: int, src_size: int) -> torch.Tensor:
    """Per-sample 1-D resampling matrices (B, dst, src_size) from the first ``src_len`` source cells (may be
    fractional: the view ends inside a cell) onto ``dst`` cells.

    Shrinking (src_len >= dst): exact area weights, each output cell the mean of the source cells it
    covers (fractional overlaps included), so SAM's 64 cells fold into 14 without aliasing. Growing:
    bilinear with half-pixel centres (F.interpolate's align_corners=False).
    """
    L = src_len_B.to(torch.float64)[:, None, None]  # (B, 1, 1)
    i = torch.arange(dst, dtype=torch.float64, device=L.device)[None, :, None]  # (1, dst, 1)
    k = torch.arange(src_size, dtype=torch.float64, device=L.device)[None, None, :]  # (1, 1, S)
    a, b = i * L / dst, (i + 1) * L / dst
    area = (torch.minimum(b, k + 1) - torch.maximum(a, k)).clamp(min=0) / (b - a)
    c = ((i + 0.5) * L / dst - 0.5).clamp(min=0)
    c = torch.minimum(c, L - 1)
    lin = (1 - (c - k).abs()).clamp(min=0)  # triangle: weights on floor(c) and floor(c) + 1
    return torch.where(L >= dst, area, lin)


def _hat_integral(t: torch.Tensor) -> torch.Tensor:
    """The integral of the unit hat ``max(0, 1 - |s|)`` from -inf to ``t``."""
    return torch.where(t < -1, 0.0, torch.where(t < 0, (t + 1) ** 2 / 2, torch.where(t < 1, 1 - (1 - t) ** 2 / 2, 1.0)))


def _linear_weights(
    dst: int, src: int, device=None, origin_B: torch.Tensor | None = None, length: float | None = None
) -> torch.Tensor:
    """(dst, src) weights: the mean of the piecewise-linear reconstruction of ``src`` cells (linear between cell
    centres, extended linearly past the outer centres) over each of ``dst`` equal cells spanning the same extent.
    With ``origin_B`` (B,) and ``length`` (in source cells): (B, dst, src) weights for the window
    ``[origin, origin + length)`` of each sample's map instead (the shift-equivariant loss's overlap).

    Exact for content that is linear across the map (a ramp), at any ratio: resampling a map that was itself
    resampled (a partition's stored grid to a smaller student grid) then keeps the alignment a direct
    resampling has, where two area averages in a row each assume constant cells and shift a ramp by up to 0.07
    of a student cell at non-integer ratios (bench/bench_partitions.py)."""
    L = float(src if length is None else length)
    o = torch.zeros(1, dtype=torch.float64, device=device) if origin_B is None else origin_B.to(device, torch.float64)
    i = torch.arange(dst, dtype=torch.float64, device=device)[None, :, None]
    k = torch.arange(-1, src + 1, dtype=torch.float64, device=device)[None, None, :]  # hats at centres k + 0.5
    a = o[:, None, None] + i * L / dst
    b = a + L / dst
    w = (_hat_integral(b - k - 0.5) - _hat_integral(a - k - 0.5)) / (b - a)  # (B, dst, src + 2)
    out = w[..., 1 : src + 1].clone()
    if src == 1:  # one cell: constant
        out = out + w[..., :1] + w[..., -1:]
    else:  # the hats past either end carry the linear extension: 2 x the outer cell - 1 x its neighbour
        out[..., 0] += 2 * w[..., 0]
        out[..., 1] -= w[..., 0]
        out[..., -1] += 2 * w[..., -1]
        out[..., -2] -= w[..., -1]
    return out[0] if origin_B is None else out


def resample_window(
    feats_BHWC: torch.Tensor, origin_B2: torch.Tensor, extent_hw: tuple[float, float], out_hw: tuple[int, int]
) -> torch.Tensor:
    """Each sample's window ``[origin, origin + extent)`` (rows, cols, in cells of the map; fractional) of a whole
    map -> ``out_hw`` cells, float32, with the ``linear`` kernel: exact for a ramp at any sub-cell offset. The
    shift-equivariant loss's targets: the teacher's map over the pixels a shifted student crop covers."""
    B, H, W, _ = feats_BHWC.shape
    x = feats_BHWC.float()
    # the checks and the choice below read a host copy (the trainer's offsets are drawn on the host): no device sync
    host = origin_B2.detach().to("cpu", torch.float64)
    eh, ew = float(extent_hw[0]), float(extent_hw[1])
    if (host < 0).any() or (host[:, 0] + eh > H + 1e-6).any() or (host[:, 1] + ew > W + 1e-6).any():
        raise ValueError(f"windows of {eh}x{ew} cells at {host.tolist()} leave the {H}x{W} map")
    if bool((host == host.round()).all()) and (eh, ew) == (float(out_hw[0]), float(out_hw[1])):
        # whole cells onto as many cells: the map's own values, sliced (no resampling, no blur)
        rows = host[:, 0].long()[:, None] + torch.arange(out_hw[0])
        cols = host[:, 1].long()[:, None] + torch.arange(out_hw[1])
        b = torch.arange(B)[:, None, None]
        return x[b.to(x.device), rows.to(x.device)[:, :, None], cols.to(x.device)[:, None, :]]
    o = host.to(x.device)
    wh = _linear_weights(out_hw[0], H, x.device, o[:, 0], eh).to(x.dtype)  # (B, h, H)
    ww = _linear_weights(out_hw[1], W, x.device, o[:, 1], ew).to(x.dtype)  # (B, w, W)
    return torch.einsum("bjl,bilc->bijc", ww, torch.einsum("bik,bklc->bilc", wh, x))


def resample_targets(
    feats_BHWC: torch.Tensor,
    out_hw: tuple[int, int],
    valid_hw_B2: torch.Tensor | None = None,
    kernel: str = "area",
) -> torch.Tensor:
    """Teacher feature maps -> the student's grid (B, h, w, C), float32.

    ``valid_hw_B2``: the view's extent (rows, cols) in cells on each map, int or float; only that top-left
    region is resampled (see the module docstring). None: the whole grid.

    ``kernel``: ``area`` (see the module docstring; what the cache stores), or ``linear``: each output cell the
    mean of the map's piecewise-linear reconstruction over it (:func:`_linear_weights`), for whole maps
    (``valid_hw_B2`` None) that were already resampled once: the trainer's step from a stored grid to the
    student's. A map already on the output grid is returned as it is by both.

    Targets are moved to the student grid rather than predictions to the teacher grid: shrinking SAM's
    64x64 map to a 14x14 student grid costs a fraction of upsampling every prediction (and the loss) to
    64x64, and the area average makes each student cell's target the mean of the teacher cells its pixels
    cover -- what one student token can be asked to represent. A teacher coarser than the student (CLIP
    at 7x7) is upsampled bilinearly, as AM-RADIO does.
    """
    B, H, W, _ = feats_BHWC.shape
    h, w = out_hw
    x = feats_BHWC.float()
    if kernel == "linear":
        if valid_hw_B2 is not None:
            raise ValueError("resample_targets(kernel='linear') resamples whole maps: valid_hw_B2 must be None")
        if (H, W) == (h, w):
            return x
        wh = _linear_weights(h, H, x.device).to(x.dtype)
        ww = _linear_weights(w, W, x.device).to(x.dtype)
        return torch.einsum("jl,bilc->bijc", ww, torch.einsum("ik,bklc->bilc", wh, x))
    if kernel != "area":
        raise ValueError(f"resample_targets: kernel must be 'area' or 'linear', got {kernel!r}")
    if valid_hw_B2 is None:
        if (H, W) == (h, w):
            return x
        valid_hw_B2 = torch.tensor([[H, W]]).expand(B, 2)
    # The decisions below read a host copy: free for extents a teacher computed on the host (its
    # preprocessing), one transfer otherwise, instead of a device sync per check in the training step.
    host = valid_hw_B2.detach().to("cpu", torch.float64)
    if host.shape != (B, 2) or (host <= 0).any() or (host[:, 0] > H).any() or (host[:, 1] > W).any():
        raise ValueError(f"valid_hw must be (B={B}, 2) with 0 < rows <= {H}, 0 < cols <= {W}; got {host.tolist()}")
    partial = bool((host[:, 0] < H).any() or (host[:, 1] < W).any())
    if (H, W) == (h, w) and not partial:
        return x
    valid = host.to(x.device)
    if partial:
        # zero weight alone would not silence padding: 0 x inf and 0 x nan are nan
        inside = (torch.arange(H, device=x.device)[None, :, None] < valid[:, 0, None, None]) & (
            torch.arange(W, device=x.device)[None, None, :] < valid[:, 1, None, None]
        )
        x = torch.where(inside[..., None], x, 0.0)
    wh = _axis_weights(valid[:, 0], h, H).to(x.dtype)  # (B, h, H)
    ww = _axis_weights(valid[:, 1], w, W).to(x.dtype)  # (B, w, W)
    x = torch.einsum("bik,bklc->bilc", wh, x)
    return torch.einsum("bjl,bilc->bijc", ww, x)


def resample_valid_mask(
    valid_hw_B2: torch.Tensor, teacher_grid: tuple[int, int], out_hw: tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """Which cells of a grid spanning the teacher's *whole* (padded) canvas lie mostly on real pixels: (B, h, w) float
    0/1.

    For the student grid of this pipeline (which spans only the valid region) use
    ``resample_targets(feats, hw, valid_hw)`` instead: every cell is then valid. This mask serves inputs
    that include the padding (e.g. a picture of the teacher's canvas). A cell counts when at least
    ``threshold`` of its area is valid.
    """
    B = valid_hw_B2.shape[0]
    H, W = teacher_grid
    rows = torch.arange(H, device=valid_hw_B2.device)[None, :, None] < valid_hw_B2[:, 0, None, None]
    cols = torch.arange(W, device=valid_hw_B2.device)[None, None, :] < valid_hw_B2[:, 1, None, None]
    m = (rows & cols).float().reshape(B, 1, H, W)
    if (H, W) != tuple(out_hw):
        m = F.interpolate(m, size=out_hw, mode="area")
    return (m[:, 0] >= threshold).float()
