"""Recorded views: the augmentations that the cache and the trainer replay identically.

A view is one random-resized crop (plus an optional horizontal flip) of one source image. It is a pure
function of ``(policy.seed, image_id, view_index)`` and the source size, so the caching job (teacher
inputs) and the trainer (student input) cut exactly the same pixels, on any machine, in any order, after
any resume. Cached targets of a view the student never saw would be worse than no cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

__all__ = ["ViewPolicy", "View", "sample_view", "sample_views", "crop_view", "render_view", "derive_resolution"]


@dataclass
class ViewPolicy:
    """How the K views of every image are drawn (torchvision ``RandomResizedCrop`` semantics).

    ``scale`` bounds the crop's area as a fraction of the image; ``ratio`` bounds its aspect (w/h),
    sampled log-uniformly. ``first_view_full`` makes view 0 the plain, unflipped full image, which gives
    evaluation and kNN a canonical view of every image.

    The default ratio is (1, 1): square views, because the student's input is square. Every teacher takes
    the whole view, never a crop of it (``teachers``: CLIP and DINOv2 resize it to their crop size instead of
    center-cropping, SAM resizes its long side and pads outside it, SigLIP resizes it to its fixed size), so
    every target cell lines up with the student's pixels whatever the ratio. A non-square view is squashed to
    the student's square input (and to SigLIP's), while CLIP and DINOv2 keep its aspect (up to 4:1) and SAM
    pads it; the cache stores every teacher's targets over exactly the view, on the student's grid. With
    ratio (1, 1), view 0 is the image's largest centered square rather than the whole image.
    """

    num_views: int = 2
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (1.0, 1.0)
    flip_prob: float = 0.5
    seed: int = 0
    first_view_full: bool = True

    def __post_init__(self):
        if self.num_views < 1:
            raise ValueError(f"views.num_views must be >= 1, got {self.num_views}")
        lo, hi = self.scale
        if not (0.0 < lo <= hi <= 1.0):
            raise ValueError(f"views.scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not (0.0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"views.ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not (0.0 <= self.flip_prob <= 1.0):
            raise ValueError(f"views.flip_prob must be in [0, 1], got {self.flip_prob}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scale"], d["ratio"] = list(self.scale), list(self.ratio)
        return d


@dataclass(frozen=True)
class View:
    """One recorded view. ``box`` is (left, top, right, bottom) in source pixels, right/bottom exclusive."""

    image_id: str
    view_index: int
    box: tuple[int, int, int, int]
    flip: bool
    seed: int

    @property
    def size_wh(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]


def _view_rng(seed: int, image_id: str, view_index: int) -> np.random.Generator:
    # sha256 rather than hash(): Python's str hash is salted per process.
    digest = hashlib.sha256(f"radio-view:{seed}:{image_id}:{view_index}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def sample_view(policy: ViewPolicy, image_id: str, view_index: int, width: int, height: int) -> View:
    """Draw view ``view_index`` of image ``image_id`` (source size ``width`` x ``height``)."""
    if width < 1 or height < 1:
        raise ValueError(f"image {image_id!r} has no pixels ({width}x{height})")
    if policy.first_view_full and view_index == 0:
        if tuple(policy.ratio) == (1.0, 1.0):
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            return View(image_id, 0, (left, top, left + side, top + side), False, policy.seed)
        return View(image_id, 0, (0, 0, width, height), False, policy.seed)
    rng = _view_rng(policy.seed, image_id, view_index)
    area = width * height
    log_ratio = (math.log(policy.ratio[0]), math.log(policy.ratio[1]))
    box = None
    for _ in range(10):  # the torchvision algorithm: 10 tries, then a center crop
        target_area = area * rng.uniform(policy.scale[0], policy.scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:
        in_ratio = width / height
        if in_ratio < policy.ratio[0]:
            w, h = width, max(1, int(round(width / policy.ratio[0])))
        elif in_ratio > policy.ratio[1]:
            h, w = height, max(1, int(round(height * policy.ratio[1])))
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        box = (left, top, left + w, top + h)
    flip = bool(rng.uniform() < policy.flip_prob)
    return View(image_id, view_index, box, flip, policy.seed)


def sample_views(policy: ViewPolicy, image_id: str, width: int, height: int) -> list[View]:
    """All ``policy.num_views`` views of one image, in view_index order."""
    return [sample_view(policy, image_id, k, width, height) for k in range(policy.num_views)]


def crop_view(image_HW3: np.ndarray, view: View) -> np.ndarray:
    """The view's pixels at source resolution: crop then flip. uint8 (h, w, 3) -> uint8 (bh, bw, 3).

    This is what every teacher receives; each then maps the whole of it to its input with its official
    resize filter and normalization (never a center crop).
    """
    left, top, right, bottom = view.box
    H, W = image_HW3.shape[:2]
    if not (0 <= left < right <= W and 0 <= top < bottom <= H):
        raise ValueError(f"view box {view.box} of {view.image_id!r} lies outside the {W}x{H} image")
    out = image_HW3[top:bottom, left:right]
    if view.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def render_view(image_HW3: np.ndarray, view: View, size_hw: tuple[int, int]) -> np.ndarray:
    """The student's input for a view: the same crop and flip, resized to ``size_hw`` with PIL bicubic.

    uint8 (H, W, 3) -> uint8 (size_h, size_w, 3). Resizing from the crop (not from a teacher's
    already resized input) keeps the student's pixels independent of which teachers are cached.
    """
    crop = crop_view(image_HW3, view)
    h, w = size_hw
    if crop.shape[0] == h and crop.shape[1] == w:
        return crop
    return np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BICUBIC, reducing_gap=None))


def derive_resolution(images_B3HW: torch.Tensor, size: int) -> torch.Tensor:
    """Stored student views -> the same views at a lower square resolution ``size``: uint8 (B, 3, H, W) ->
    uint8 (B, 3, size, size), antialiased bicubic (torch's, PIL's filter family), rounded.

    A multi-resolution cache stores each view once, at its highest resolution; the loader derives the lower
    ones with this, so every resolution of a view shows the same pixels. Identity when ``size`` is the stored one.
    """
    import torch
    import torch.nn.functional as F

    H, W = images_B3HW.shape[-2:]
    if (H, W) == (size, size):
        return images_B3HW
    if size > min(H, W):
        raise ValueError(
            f"cannot derive {size}px views from {H}x{W} stored views: a cache stores views at the highest "
            "resolution a run trains at"
        )
    x = F.interpolate(images_B3HW.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)
