"""Shift-equivariant distillation from a cache (C-RADIOv4's shift-equivariant loss, radio's take).

A teacher's map carries what moves with the image and what does not: DINOv2/v3 and SigLIP put artifacts at the
same tokens of every image. A student that sees the image where the teacher saw it learns both, the artifact
through its position embedding. Here the student sees a crop of the cached view, shifted by a random number of
pixels that is not tied to the teacher's cells, and is compared with the teacher's map over exactly the pixels
that crop covers (``radio.targets.resample_window``, the linear kernel: a sub-cell shift is resampled exactly for
smooth content). Content stays where the student's pixels put it; a fixed-position artifact lands somewhere
else on the student's grid at every step and cannot be fit, so the student learns it only as a faint blur.

What the cache must hold: nothing new. The teacher's view is what was cached (view pixels and targets over the
same extent), and the student's view is shifted *within* it: the crop is ``S - margin`` pixels of the ``S``-pixel
view, at an offset drawn per sample from ``[0, margin]`` on each axis, in whole patches by default: the stored
targets are on the student's patch grid, so a whole-patch shift makes the crop's targets the stored cells
themselves, exactly, while the artifact still moves by whole cells on the student's grid. Sub-patch steps
(``loss.shift_step_px``) resample the targets between cells, which a patch-based teacher is not equivariant to:
on the stand-in of bench/bench_shift_artifact.py it costs fidelity (0.889 against 0.992 cosine) for no less
artifact. The cost is the margin's pixels, which the
student does not see in that step (a 64-px view with an 8-px margin: 77 % of the view per step). The
alternative, storing the student's view with a margin around the teacher's (so the student sees as much as the
teacher, shifted), costs ``((S + margin) / S)^2`` the view bytes: 1.27x at 64 + 8 px, 1.07x for 224 + 8 px
views (target bytes unchanged), and a cache built for it.

The summary is a whole-view quantity: the crop covers most of the view, and the summary target is kept.
"""

from __future__ import annotations

import numpy as np
import torch

from .targets import resample_window

__all__ = ["shift_batch", "draw_offsets"]


def draw_offsets(n: int, margin: int, seed: list[int], step: int = 1) -> torch.Tensor:
    """(n, 2) int64 pixel offsets (rows, cols), uniform over the multiples of ``step`` in ``[0, margin]``, a pure
    function of ``seed`` (so a resumed run draws the same)."""
    k = np.random.default_rng(seed).integers(0, margin // step + 1, size=(n, 2))
    return torch.from_numpy(k * step).long()


def shift_batch(
    images_B3HW: torch.Tensor, targets: dict, margin: int, patch: int, offsets_B2: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """The student's crops of the views and every teacher's targets over exactly those crops.

    ``images_B3HW``: the views (S x S, any dtype); ``targets[t]``: {"features": (B, h, w, C) covering the whole
    view, "summary"?}; ``offsets_B2``: each crop's top-left corner in pixels, in ``[0, margin]``. Returns crops of
    ``S - margin`` pixels and targets on the crop's patch grid ``(S - margin) // patch`` (summaries unchanged).
    """
    B, _, H, W = images_B3HW.shape
    c_h, c_w = H - margin, W - margin
    if margin < 0 or c_h < patch or c_w < patch or c_h % patch or c_w % patch:
        raise ValueError(
            f"a shift margin of {margin} px leaves {c_h}x{c_w} px of the {H}x{W} views: it must leave a whole patch "
            f"grid (multiples of {patch})"
        )
    off = offsets_B2.to("cpu", torch.long)
    if off.shape != (B, 2) or (off < 0).any() or (off > margin).any():
        raise ValueError(f"offsets must be (B={B}, 2) in [0, {margin}], got {off.tolist()}")
    rows = off[:, 0, None] + torch.arange(c_h)  # (B, c_h)
    cols = off[:, 1, None] + torch.arange(c_w)
    dev = images_B3HW.device
    idx_r = rows.to(dev)[:, None, :, None].expand(B, images_B3HW.shape[1], c_h, W)
    crops = torch.gather(images_B3HW, 2, idx_r)
    idx_c = cols.to(dev)[:, None, None, :].expand(B, images_B3HW.shape[1], c_h, c_w)
    crops = torch.gather(crops, 3, idx_c)
    out_hw = (c_h // patch, c_w // patch)
    shifted = {}
    for t, tgt in targets.items():
        feats = tgt["features"]
        gh, gw = feats.shape[1] / H, feats.shape[2] / W  # map cells per pixel
        origin = off.to(torch.float64) * torch.tensor([gh, gw], dtype=torch.float64)
        shifted[t] = {**tgt, "features": resample_window(feats, origin, (c_h * gh, c_w * gw), out_hw)}
    return crops, shifted
