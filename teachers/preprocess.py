"""Teacher preprocessing, equal to the official (PIL-backend) image processors.

The official processors resize with Pillow, which rounds to uint8 after each of its two separable passes
with fixed-point weights; ``F.interpolate(antialias=True)`` differs from that by a few grey levels
(~0.02 after normalization), far above the 1e-5 parity we hold. A torch port of Pillow's ``Resample.c``
reproduces each pass bitwise, but Pillow 13 chooses the order of the two passes by a rule of its own
that we could not pin down, and the order changes the rounding. So the resize itself is done by Pillow
(on the CPU, where the official processor does it too); cropping, rescaling, normalization and padding
run in torch on the teacher's device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["pil_resize", "shortest_edge_size", "longest_edge_size", "center_crop", "normalize_pixels", "pad_bottom_right", "PIL_CODES"]

PIL_CODES = {2: "bilinear", 3: "bicubic"}
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def pil_resize(img_3HW: torch.Tensor, size_hw: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Resize a uint8 (3, H, W) image exactly as the official processors do (Pillow, no reducing gap).

    Returns uint8 (3, h, w) on the input's device.
    """
    if img_3HW.dtype != torch.uint8:
        raise TypeError(f"pil_resize expects uint8, got {img_3HW.dtype}")
    if interpolation not in _RESAMPLE:
        raise ValueError(f"interpolation {interpolation!r} not supported; use one of {list(_RESAMPLE)}")
    oh, ow = int(size_hw[0]), int(size_hw[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"cannot resize to {oh}x{ow}")
    if tuple(img_3HW.shape[1:]) == (oh, ow):
        return img_3HW
    arr = img_3HW.permute(1, 2, 0).cpu().numpy()
    out = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((ow, oh), _RESAMPLE[interpolation], reducing_gap=None))
    return torch.from_numpy(out.copy()).permute(2, 0, 1).to(img_3HW.device)


def shortest_edge_size(h: int, w: int, size: int) -> tuple[int, int]:
    """transformers' ``get_resize_output_image_size(default_to_square=False)``: short side -> size."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def longest_edge_size(h: int, w: int, size: int) -> tuple[int, int]:
    """SAM's ``_get_preprocess_shape``: long side -> size, rounding half up."""
    scale = size * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def center_crop(img_CHW: torch.Tensor, crop_hw: tuple[int, int]) -> torch.Tensor:
    """transformers' ``center_crop``: floor offsets; zero-pads (centered) when the image is smaller."""
    C, H, W = img_CHW.shape
    ch, cw = crop_hw
    top, left = (H - ch) // 2, (W - cw) // 2
    if top >= 0 and left >= 0:
        return img_CHW[:, top : top + ch, left : left + cw]
    nh, nw = max(ch, H), max(cw, W)
    out = img_CHW.new_zeros((C, nh, nw))
    tp, lp = math.ceil((nh - H) / 2), math.ceil((nw - W) / 2)
    out[:, tp : tp + H, lp : lp + W] = img_CHW
    top, left = top + tp, left + lp
    return out[:, max(0, top) : min(nh, top + ch), max(0, left) : min(nw, left + cw)]


def normalize_pixels(img_CHW_uint8: torch.Tensor, rescale: float, mean, std) -> torch.Tensor:
    """``(x * rescale - mean) / std`` with transformers' precision: rescale in float64, the rest float32."""
    x = (img_CHW_uint8.to(torch.float64) * rescale).to(torch.float32)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def pad_bottom_right(x_CHW: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    H, W = x_CHW.shape[1:]
    return F.pad(x_CHW, (0, size_hw[1] - W, 0, size_hw[0] - H), value=0.0)
