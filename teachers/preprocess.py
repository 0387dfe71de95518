"""Teacher preprocessing, equal to the official (PIL-backend) image processors, run in torch.

The official processors resize with Pillow, which rounds to uint8 after each of its two separable passes
with fixed-point weights; ``F.interpolate(antialias=True)`` differs from that by a few grey levels
(~0.02 after normalization), far above the 1e-5 parity we hold. :func:`pil_resize` is a port of
Pillow's ``libImaging/Resample.c`` (8-bit path) that reproduces it bitwise, on any device, so the
whole preprocessing (resize, rescale, normalize, pad) runs on the teacher's device.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import PIL
import PIL.Image
import torch
import torch.nn.functional as F

__all__ = [
    "pil_resize",
    "pillow_resize",
    "torchvision_resize",
    "host_resize",
    "resizes_on_host",
    "input_size",
    "longest_edge_size",
    "normalize_pixels",
    "pad_bottom_right",
    "PIL_CODES",
    "MAX_ASPECT",
]

MAX_ASPECT = 4.0  # fit_aspect teachers: longest input side / shortest

PIL_CODES = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values the registry's processors use

# Resample.c: "8 bits for result. Filter can have negative areas ... two extra bits for overflow".
_PRECISION_BITS = 32 - 8 - 2


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """Pillow's bicubic kernel (a = -0.5), support 2, in float64 with the same operation order as C."""
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def _bilinear(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    return torch.where(x < 1.0, 1.0 - x, torch.zeros_like(x))


_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


@functools.lru_cache(maxsize=128)
def _pass_taps(n_in: int, n_out: int, interpolation: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed-point weights of one Pillow pass, tap-major: (index, weight), both (ksize, n_out).

    Port of ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: per output pixel, a window of ``xmax``
    taps starting at input ``xmin`` around its centre; filter weights normalized to sum 1 (summed left
    to right as C does, so the sum is bitwise the same), then rounded half away from zero to integers
    with 22 fractional bits. Taps past a window's end get weight 0 (and a clamped, harmless index).
    Returns (int64 indices, int32 weights) on ``device``.
    Tap-major rather than a dense (n_out, n_in) matrix: 10000 -> 8000 would take 640 MB dense.
    """
    fn, support = _FILTERS[interpolation]
    scale = float(n_in) / n_out  # C: (double)(in1 - in0) / outSize; in1 - in0 is exact in float32 here
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    # C casts with (int), truncating toward zero; clamping to 0 afterwards makes that equal to floor.
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)
    xmax = torch.trunc(center + support + 0.5).clamp(max=n_in) - xmin  # number of taps
    j = torch.arange(ksize, dtype=torch.float64)[:, None]
    valid = j < xmax[None, :]
    w = fn((j + xmin[None, :] - center[None, :] + 0.5) * (1.0 / filterscale))
    w = torch.where(valid, w, torch.zeros_like(w))
    ww = torch.zeros(n_out, dtype=torch.float64)
    for tap in range(ksize):  # sequential, like C: a pairwise sum could differ in the last bit
        ww = ww + w[tap]
    w = torch.where(ww != 0.0, w / torch.where(ww == 0.0, 1.0, ww), w)
    one = float(1 << _PRECISION_BITS)
    k = torch.where(w < 0, torch.trunc(-0.5 + w * one), torch.trunc(0.5 + w * one))
    idx = (j + xmin[None, :]).clamp(max=n_in - 1).long()
    # Drop trailing taps that no output uses (ksize is a bound, windows are often shorter).
    used = int(xmax.max().item())
    return idx[:used].to(device), k[:used].to(torch.int32).to(device)


def _apply_pass(x_NM: torch.Tensor, taps: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One 8-bit pass along dim 0: int32 pixels (n_in, M) in [0, 255] -> int32 (n_out, M) in [0, 255].

    The same int32 arithmetic as C, in the same tap order: ``acc = 1 << 21; acc += pixel * k`` per
    tap, then ``clip8(acc >> 22)``. So the result is bitwise Pillow's on any device (no float
    rounding anywhere). Gathering whole rows (dim 0) keeps memory access contiguous.
    """
    idx, k = taps
    acc = torch.full((idx.shape[1], x_NM.shape[1]), 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=x_NM.device)
    for tap in range(k.shape[0]):
        acc.add_(x_NM.index_select(0, idx[tap]).mul_(k[tap, :, None]))
    return acc.bitwise_right_shift_(_PRECISION_BITS).clamp_(0, 255)


def _pil_version() -> tuple[int, ...]:
    return tuple(int(re.match(r"\d*", p).group() or 0) for p in PIL.__version__.split(".")[:2])


def _vertical_first(h: int, w: int, oh: int, ow: int) -> bool:
    """Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice as many
    pixels as the width; Pillow 12 and older always go horizontal first. The passes round to uint8 in
    between, so the order changes results. The condition was derived empirically (we did not have
    Pillow 13's C source) and matches Pillow 13.0 bitwise on thousands of random size pairs;
    ``tests/test_teachers.py`` pins it, so a Pillow that changes the rule fails the suite instead of
    silently breaking parity.
    """
    return _pil_version() >= (13, 0) and oh < h and (h - oh) > 2 * (w - ow)


def pil_resize(img_3HW: torch.Tensor, size_hw: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Resize a uint8 (C, H, W) image bitwise as ``PIL.Image.resize`` (no box, no reducing gap) does.

    ``size_hw``: output (h, w), each >= 1. ``interpolation``: "bicubic" or "bilinear".
    Returns uint8 (C, h, w) on the input's device; an unchanged size returns the input as is.
    """
    if img_3HW.dtype != torch.uint8 or img_3HW.ndim != 3:
        raise TypeError(f"pil_resize expects a uint8 (C, H, W) tensor, got {img_3HW.dtype} {tuple(img_3HW.shape)}")
    if interpolation not in _FILTERS:
        raise ValueError(f"interpolation {interpolation!r} not supported; use one of {sorted(_FILTERS)}")
    oh, ow = int(size_hw[0]), int(size_hw[1])
    C, h, w = img_3HW.shape
    if oh < 1 or ow < 1 or h < 1 or w < 1:
        raise ValueError(f"cannot resize {h}x{w} to {oh}x{ow}")
    if (h, w) == (oh, ow):
        return img_3HW
    dev = str(img_3HW.device)
    # Work as (H, W, C) int32: the vertical pass gathers rows of it, the horizontal pass rows of its
    # (W, H, C) transpose.
    x = img_3HW.permute(1, 2, 0).to(torch.int32)
    # A pass whose size does not change is skipped (Resample.c need_horizontal / need_vertical).
    passes = [p for p, needed in (("h", w != ow), ("v", h != oh)) if needed]
    if _vertical_first(h, w, oh, ow):
        passes.reverse()
    for p in passes:
        if p == "v":
            x = _apply_pass(x.reshape(h, -1), _pass_taps(h, oh, interpolation, dev)).view(oh, x.shape[1], C)
        else:
            xt = x.transpose(0, 1).contiguous()
            x = (
                _apply_pass(xt.view(w, -1), _pass_taps(w, ow, interpolation, dev))
                .view(ow, x.shape[0], C)
                .transpose(0, 1)
            )
    return x.permute(2, 0, 1).to(torch.uint8).contiguous()


def longest_edge_size(h: int, w: int, size: int) -> tuple[int, int]:
    """SAM's ``_get_preprocess_shape``: long side -> size, rounding half up."""
    scale = size * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def normalize_pixels(img_CHW_uint8: torch.Tensor, rescale: float, mean, std) -> torch.Tensor:
    """``(x * rescale - mean) / std`` with transformers' precision: rescale in float64, the rest float32."""
    x = (img_CHW_uint8.to(torch.float64) * rescale).to(torch.float32)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def pad_bottom_right(x_CHW: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    H, W = x_CHW.shape[1:]
    return F.pad(x_CHW, (0, size_hw[1] - W, 0, size_hw[0] - H), value=0.0)


def input_size(spec, h: int, w: int) -> tuple[int, int]:
    """(h, w) a whole view of size ``h x w`` is resized to for teacher ``spec`` (before SAM's padding); see
    :class:`~teachers.spec.TeacherSpec` for the three rules. A plain function of the spec, so the CPU
    prepare tasks of the cache job compute the same sizes as the teacher. An image already at its input
    size maps to itself (``input_size(s, *input_size(s, h, w)) == input_size(s, h, w)``)."""
    if spec.resize == "longest_edge_pad":
        # An extreme aspect ratio can round a side to 0 (SAM: 10000x50 -> 1024x0); the official
        # processor raises there, we keep one pixel so a cache job never dies on one odd image.
        return tuple(max(1, v) for v in longest_edge_size(h, w, spec.resize_size))
    if spec.resize == "exact":
        return tuple(spec.input_size)
    # fit_aspect: the whole view at the teacher's resolution, never cropped. A square view becomes
    # exactly input_size; otherwise the short side keeps the input side and the long side the
    # nearest multiple of the patch (position embeddings are interpolated).
    side, p = spec.resize_size, spec.patch_size
    if h == w:
        return tuple(spec.input_size)
    cells = max(1, round(side * max(h, w) / min(h, w) / p))
    if cells * p > MAX_ASPECT * side:
        raise ValueError(
            f"teacher {spec.name} keeps the view's aspect and takes at most {MAX_ASPECT:g}:1; "
            f"a {h}x{w} view would need a {side}x{cells * p} input. Narrow views.ratio "
            "(e.g. views.ratio=[0.75,1.333]) or use square views."
        )
    return (side, cells * p) if w > h else (cells * p, side)


_PIL_FILTERS = {"bicubic": PIL.Image.Resampling.BICUBIC, "bilinear": PIL.Image.Resampling.BILINEAR}


def pillow_resize(img_HW3: np.ndarray, size_hw: tuple[int, int], interpolation: str = "bicubic") -> np.ndarray:
    """Resize a uint8 (H, W, 3) array with Pillow itself, as the official processors' PIL backend does
    (``Image.resize`` without a reducing gap): bitwise what they compute, by construction. The cache job
    runs this in its CPU prepare tasks, so the teachers' devices only normalize. An unchanged size
    returns the input as is."""
    h, w = int(size_hw[0]), int(size_hw[1])
    if img_HW3.shape[:2] == (h, w):
        return img_HW3
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"interpolation {interpolation!r} not supported; use one of {sorted(_PIL_FILTERS)}")
    return np.asarray(
        PIL.Image.fromarray(np.ascontiguousarray(img_HW3)).resize((w, h), resample=_PIL_FILTERS[interpolation])
    )


# Teachers whose official processor exists only with a torchvision backend (DINOv3, SAM2, SAM3) resize with
# torchvision's antialiased bilinear instead of Pillow. Without torchvision installed, these reproduce it.
TORCHVISION_FILTERS = ("torchvision-bilinear", "torchvision-bilinear-float")


def _torchvision_native_uint8(device: torch.device) -> bool:
    """torchvision's ``_do_native_uint8_resize_on_cpu`` for bilinear: the uint8 kernel runs on a CPU whose
    capability string names AVX2; otherwise (AVX512 machines included, and every GPU) the image goes through
    float32 and is rounded back, which can differ from the uint8 kernel by one grey level."""
    return device.type == "cpu" and "AVX2" in torch.backends.cpu.get_cpu_capability()


def torchvision_resize(x_N3HW: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """``torchvision.transforms.v2.functional.resize(x, size, BILINEAR, antialias=True)`` without torchvision:
    uint8 in, uint8 out (the uint8 kernel or float32 + round, as torchvision picks); float in, float out.
    Bitwise torchvision's on the same machine and device, by the same torch call."""
    size = (int(size_hw[0]), int(size_hw[1]))
    if tuple(x_N3HW.shape[-2:]) == size:
        return x_N3HW
    if x_N3HW.dtype != torch.uint8 or _torchvision_native_uint8(x_N3HW.device):
        return F.interpolate(x_N3HW, size=size, mode="bilinear", antialias=True, align_corners=False)
    y = F.interpolate(x_N3HW.to(torch.float32), size=size, mode="bilinear", antialias=True, align_corners=False)
    return y.round_().to(torch.uint8)


def resizes_on_host(spec) -> bool:
    """Whether a view can be resized for ``spec`` before it reaches the teacher (a uint8 image at its input
    size): Pillow's filters and torchvision's uint8 bilinear can; DINOv3's order (rescale, then resize in
    float) cannot without shipping float pixels, so that teacher resizes on its own device."""
    return spec.interpolation in _PIL_FILTERS or spec.interpolation == "torchvision-bilinear"


def host_resize(spec, crop_HW3: np.ndarray) -> np.ndarray:
    """A crop (uint8 H, W, 3) at teacher ``spec``'s input size, resized the way its official processor does,
    on the CPU (the cache job's prepare tasks)."""
    size = input_size(spec, *crop_HW3.shape[:2])
    if spec.interpolation in _PIL_FILTERS:
        return pillow_resize(crop_HW3, size, spec.interpolation)
    if spec.interpolation == "torchvision-bilinear":
        x = torch.from_numpy(np.ascontiguousarray(crop_HW3)).permute(2, 0, 1)[None]
        return torchvision_resize(x, size)[0].permute(1, 2, 0).contiguous().numpy()
    raise ValueError(f"teacher {spec.name} ({spec.interpolation}) resizes on its own device, not on the host")
