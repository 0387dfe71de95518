"""The student: a plain-torch ViT with summary tokens (one per summary teacher) and register tokens.

``forward_features`` returns the summary tokens and the spatial patch features; adapters (heads) are
separate modules (``radio/adapters.py``). Position embeddings are learned on a reference grid and
interpolated (bicubic) to any input whose sides are multiples of the patch size. With CPE (AM-RADIO's
"cropped position embedding", ``cpe_max_img_size``) the grid is larger than the training input and each
training sample reads a random window of it, so the model learns positions that hold at many
resolutions instead of tying content to one fixed grid.

Input convention: float images normalized with ``StudentConfig.mean/std`` (ImageNet's, the statistics
DINOv2 and SAM use; CLIP's differ by < 0.03). :func:`normalize_images` / :func:`normalize_uint8` do it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "StudentConfig",
    "StudentOutput",
    "ViTStudent",
    "SIZES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize_images",
    "normalize_uint8",
    "trunk_param_count",
    "tracing",
    "global_blocks",
]

# name -> (dim, depth, heads); tiny..large are DeiT/ViT's widths, nano is for CPU tests and the quickstart
SIZES: dict[str, tuple[int, int, int]] = {
    "nano": (96, 4, 3),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class StudentConfig:
    """A named size plus explicit overrides; ``None`` overrides take the size's value (see :meth:`resolved`)."""

    size: str = "tiny"  # a key of SIZES
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    patch_size: int = 16
    mlp_ratio: float = 4.0
    num_registers: int = 4
    summary_teachers: list[str] = field(
        default_factory=list
    )  # one summary token each, in this order (at least one token)
    img_size: int | None = (
        # reference position grid, img_size // patch_size per side; None: the training resolution (the trainer sets it;
        # a bare model takes 224)
        None
    )
    cpe_max_img_size: int | None = None  # CPE: position grid for this size, randomly windowed in training; None = off
    drop_path: float = 0.0  # stochastic depth of the last block (linear ramp from 0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # ViTDet (RADIO's vitdet_window_size): windows of this many patches per side in all but the global blocks;
    # None: every block attends globally. A loaded student can switch it (load_student(vitdet_window_size=...)).
    vitdet_window_size: int | None = None
    vitdet_num_global: int = 4  # global blocks, evenly spaced, the last one always among them (RADIO's default)

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(
                f"unknown student size {self.size!r}; choose one of {list(SIZES)} (dim/depth/heads then override it)"
            )
        if self.img_size is not None and self.img_size % self.patch_size:
            raise ValueError(f"student img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.cpe_max_img_size is not None and self.cpe_max_img_size < (self.img_size or 224):
            raise ValueError(f"cpe_max_img_size {self.cpe_max_img_size} must be >= img_size {self.img_size}")
        if len(set(self.summary_teachers)) != len(self.summary_teachers):
            raise ValueError(f"summary_teachers has duplicates: {self.summary_teachers}")
        check_window(self.vitdet_window_size, self.vitdet_num_global)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(dim, depth, heads): the explicit overrides, the size preset where they are None."""
        dim, depth, heads = SIZES[self.size]
        return (
            dim if self.dim is None else self.dim,
            depth if self.depth is None else self.depth,
            heads if self.heads is None else self.heads,
        )

    def resolved(self) -> StudentConfig:
        """The same config with dim/depth/heads filled from the size preset where they are None."""
        dim, depth, heads = self.shape
        if dim % heads:
            raise ValueError(f"student dim {dim} is not divisible by heads {heads}")
        return replace(self, dim=dim, depth=depth, heads=heads, img_size=self.img_size or 224)

    @property
    def num_summary_tokens(self) -> int:
        return max(1, len(self.summary_teachers))

    @property
    def pos_grid(self) -> int:
        """Side of the learned position grid (the CPE grid when CPE is on)."""
        return (self.cpe_max_img_size or self.img_size or 224) // self.patch_size


def check_window(window: int | None, num_global: int = 4) -> None:
    """Refuse a ViTDet setting that cannot work, naming the key."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"vitdet_window_size={window!r}: a window side in patches (an integer >= 1), or None")
    if isinstance(num_global, bool) or not isinstance(num_global, int) or num_global < 1:
        raise ValueError(f"vitdet_num_global={num_global!r}: the number of global blocks, an integer >= 1")


def global_blocks(depth: int, num_global: int) -> set[int]:
    """The blocks that attend globally in ViTDet mode, as RADIO spaces them: every ``depth // num_global``-th block
    ends a period of windowed blocks, and the last block is always global."""
    period = max(depth // num_global, 1)
    return {i for i in range(depth) if i == depth - 1 or (period > 1 and i % period == period - 1)}


def tracing() -> bool:
    """True under torch.compile, torch.export and ONNX export: shape-dependent shortcuts must not be taken
    (a graph traced at one size runs at others) and no tensor may be cached from the trace."""
    import torch.compiler as tc

    return (
        tc.is_compiling()
        or getattr(tc, "is_exporting", lambda: False)()
        or torch.jit.is_tracing()  # pyright: ignore[reportPrivateImportUsage] (public, not re-exported)
        or torch.onnx.is_in_onnx_export()
    )


def trunk_param_count(cfg: StudentConfig) -> int:
    """Closed-form parameter count of ``ViTStudent(cfg)`` (checks the build; sizes a model without building it)."""
    c = cfg.resolved()
    (D, depth, _), p = c.shape, c.patch_size
    hid = int(D * c.mlp_ratio)
    block = 2 * 2 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * hid + hid) + (hid * D + D)  # 2 LN, qkv, proj, mlp
    return (
        (3 * p * p * D + D) + c.pos_grid**2 * D + (c.num_summary_tokens + c.num_registers) * D + depth * block + 2 * D
    )


def normalize_images(
    x_B3HW: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images (B, 3, H, W) -> float32 (or the input float dtype), normalized."""
    if x_B3HW.dtype == torch.uint8:
        x_B3HW = x_B3HW.float() / 255.0
    elif not torch.is_floating_point(x_B3HW):
        raise TypeError(f"images must be uint8 [0, 255] or float [0, 1], got {x_B3HW.dtype}")
    if x_B3HW.ndim != 4 or x_B3HW.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(x_B3HW.shape)}")
    m = torch.as_tensor(mean, dtype=x_B3HW.dtype, device=x_B3HW.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x_B3HW.dtype, device=x_B3HW.device).view(1, 3, 1, 1)
    return (x_B3HW - m) / s


def normalize_uint8(
    x_uint8_B3HW: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> normalized float32 student input."""
    if x_uint8_B3HW.dtype != torch.uint8:
        raise TypeError(f"normalize_uint8 expects uint8 images, got {x_uint8_B3HW.dtype}")
    return normalize_images(x_uint8_B3HW, mean, std)


@dataclass
class StudentOutput:
    summary_BTD: torch.Tensor  # (B, T, D): one token per summary teacher, in StudentConfig.summary_teachers order
    features_BLC: torch.Tensor  # (B, h*w, D) patch tokens, row-major, registers dropped
    grid_hw: tuple[int, int]  # (h, w) patch grid

    def features_BHWC(self) -> torch.Tensor:
        B, _, C = self.features_BLC.shape
        return self.features_BLC.reshape(B, *self.grid_hw, C)

    def features_BCHW(self) -> torch.Tensor:
        return self.features_BHWC().permute(0, 3, 1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        B, N, D = x_BND.shape
        q, k, v = self.qkv(x_BND).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # flash / memory-efficient kernels where available
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block with per-sample stochastic depth."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = drop_path

    def _dp(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.drop_path
        return x * keep / (1 - self.drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._dp(self.attn(self.norm1(x)))
        return x + self._dp(self.mlp(self.norm2(x)))


class ViTStudent(nn.Module):
    """Conv patch embed -> [summary tokens | register tokens | patches + positions] -> pre-norm blocks -> LayerNorm."""

    # CPE training windows: area fraction of the grid and aspect jitter, as in AM-RADIO
    CPE_SCALE = (0.1, 1.0)
    CPE_ASPECT = (3 / 4, 4 / 3)

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        (D, depth, heads), p = cfg.shape, cfg.patch_size
        self.patch_embed = nn.Conv2d(3, D, kernel_size=p, stride=p)
        self.summary_tokens = nn.Parameter(torch.zeros(1, cfg.num_summary_tokens, D))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_registers, D))
        self.pos_grid = cfg.pos_grid
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pos_grid * self.pos_grid, D))
        dpr = [cfg.drop_path * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(D, heads, cfg.mlp_ratio, dpr[i]) for i in range(depth))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.window_size = cfg.vitdet_window_size
        self.video_frames = 1  # CPE video mode (RadioModel.cpe_video_mode): frames per clip sharing one window
        self.global_blocks = global_blocks(depth, cfg.vitdet_num_global)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.summary_tokens, std=0.02)
        nn.init.trunc_normal_(self.register_tokens, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def normalize_uint8(self, x_uint8_B3HW: torch.Tensor) -> torch.Tensor:
        """uint8 images -> this student's normalized float input."""
        return normalize_uint8(x_uint8_B3HW, self.cfg.mean, self.cfg.std)

    def _pos(self, B: int, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an (h, w) patch grid: (1 or B, h*w, D).

        Without CPE the reference grid is resized (bicubic) to (h, w). With CPE, in training every sample
        reads its own random window of the large grid (area 10-100 %, aspect of the input x 3/4..4/3);
        at eval the grid is resized to a square of side max(h, w) and the centered (h, w) window taken,
        so non-square inputs keep square position spacing, as the random windows taught.
        """
        G, D = self.pos_grid, self.pos_embed.shape[-1]
        grid = self.pos_embed.reshape(1, G, G, D).permute(0, 3, 1, 2)
        if not self.cfg.cpe_max_img_size:
            if tracing() or (h, w) != (
                G,
                G,
            ):  # resizing to the same size is exact: traced graphs always resize (tested first: no size guard)
                grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            return grid.flatten(2).transpose(1, 2)
        if not self.training:
            s = max(h, w)
            if tracing() or s != G:
                grid = F.interpolate(grid, size=(s, s), mode="bicubic", align_corners=False)
            top, left = (s - h) // 2, (s - w) // 2
            return grid[:, :, top : top + h, left : left + w].flatten(2).transpose(1, 2)
        # Window sides as fractions of the grid, (B, 2) in (x, y) order for grid_sample. Video mode
        # (``video_frames`` T > 1): the batch is B/T clips of T frames, each clip one window for all its frames.
        T = self.video_frames
        if B % T:
            raise ValueError(f"cpe_video_mode(t={T}): the batch of {B} is not a whole number of {T}-frame clips")
        pos = self._cpe_windows(grid, B // T, h, w)
        return pos.repeat_interleave(T, dim=0) if T > 1 else pos

    def _cpe_windows(self, grid: torch.Tensor, B: int, h: int, w: int) -> torch.Tensor:
        """B random windows of the CPE grid, each resampled to (h, w): (B, h*w, D)."""
        dev = grid.device
        area = torch.empty(B, device=dev).uniform_(*self.CPE_SCALE)
        aspect = (w / h) * torch.exp(
            torch.empty(B, device=dev).uniform_(math.log(self.CPE_ASPECT[0]), math.log(self.CPE_ASPECT[1]))
        )
        size_xy = torch.stack([torch.sqrt(area * aspect), torch.sqrt(area / aspect)], -1).clamp(max=1.0)
        origin_xy = torch.rand(B, 2, device=dev) * (1 - size_xy)
        # Cell centres of the (h, w) output inside each window, in grid_sample's [-1, 1] (align_corners=False:
        # the same sampling positions as F.interpolate, so a full window equals the plain resize).
        ys = (torch.arange(h, device=dev) + 0.5) / h
        xs = (torch.arange(w, device=dev) + 0.5) / w
        gx = origin_xy[:, None, None, 0] + size_xy[:, None, None, 0] * xs[None, None, :]
        gy = origin_xy[:, None, None, 1] + size_xy[:, None, None, 1] * ys[None, :, None]
        coords = torch.stack(torch.broadcast_tensors(gx, gy), -1) * 2 - 1  # (B, h, w, 2)
        pos = F.grid_sample(
            grid.expand(B, -1, -1, -1),
            coords.to(grid.dtype),
            mode="bicubic",
            padding_mode="border",
            align_corners=False,
        )
        return pos.flatten(2).transpose(1, 2)

    def no_weight_decay(self) -> set[str]:
        """Learned embeddings and tokens: decaying them toward zero only fights what they encode (timm's rule)."""
        return {"pos_embed", "summary_tokens", "register_tokens"}

    def _tokens(self, x_B3HW: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        B, _, H, W = x_B3HW.shape
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(
                f"input size {H}x{W} is not a multiple of the student's patch size {p}; resize or crop "
                f"to e.g. {max(p, H // p * p)}x{max(p, W // p * p)}"
            )
        x = self.patch_embed(x_B3HW)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self._pos(B, h, w)
        return torch.cat([self.summary_tokens.expand(B, -1, -1), self.register_tokens.expand(B, -1, -1), x], dim=1), (
            h,
            w,
        )

    def _split(self, x: torch.Tensor, hw: tuple[int, int]) -> StudentOutput:
        T, R = self.summary_tokens.shape[1], self.register_tokens.shape[1]
        return StudentOutput(x[:, :T], x[:, T + R :], hw)

    def _run(self, x: torch.Tensor, hw: tuple[int, int], last: int | None = None):
        """Run the blocks (up to ``last``), yielding ``(i, tokens)`` after each in the sequence's own order.

        ViTDet mode (``window_size``): in a windowed block the patches attend within windows of
        ``window_size**2`` patches and the summary and register tokens sit out (RADIO's ViTDet); the global
        blocks see every token. The patches are put in window order once and back at each global block."""
        ws = self.window_size
        if not ws:
            for i, blk in enumerate(self.blocks[: None if last is None else last + 1]):
                x = blk(x)
                yield i, x
            return
        h, w = hw
        if h % ws or w % ws:
            step = ws * self.patch_size
            near = (max(step, round(h / ws) * step), max(step, round(w / ws) * step))
            raise ValueError(
                f"vitdet_window_size={ws}: the patch grid {h}x{w} is not a multiple of the window; pass sides that "
                f"are multiples of {step} px (e.g. {near[0]}x{near[1]}), or load with vitdet_window_size=None"
            )
        P = x.shape[1] - h * w  # summary + register tokens
        B, D = x.shape[0], x.shape[-1]
        prefix, windows = x[:, :P], None

        def to_windows(t: torch.Tensor) -> torch.Tensor:  # (B, h*w, D) -> (B * nW, ws*ws, D)
            t = t.reshape(B, h // ws, ws, w // ws, ws, D).permute(0, 1, 3, 2, 4, 5)
            return t.reshape(-1, ws * ws, D)

        def to_grid(t: torch.Tensor) -> torch.Tensor:  # the inverse
            t = t.reshape(B, h // ws, w // ws, ws, ws, D).permute(0, 1, 3, 2, 4, 5)
            return t.reshape(B, h * w, D)

        for i, blk in enumerate(self.blocks[: None if last is None else last + 1]):
            if i in self.global_blocks:
                if windows is not None:
                    x, windows = torch.cat([prefix, to_grid(windows)], dim=1), None
                x = blk(x)
                yield i, x
            else:
                if windows is None:
                    prefix, windows = x[:, :P], to_windows(x[:, P:])
                windows = blk(windows)
                yield i, torch.cat([prefix, to_grid(windows)], dim=1)

    def forward_features(self, x_B3HW: torch.Tensor) -> StudentOutput:
        """Normalized float images (B, 3, H, W), H and W multiples of the patch -> StudentOutput."""
        x, hw = self._tokens(x_B3HW)
        [(_, x)] = deque(self._run(x, hw), maxlen=1)  # the last block's output; the others are not kept
        return self._split(self.norm(x), hw)

    forward = forward_features

    def forward_intermediates(
        self,
        x_B3HW: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
    ) -> tuple[StudentOutput | None, list[StudentOutput]]:
        """(final output, one StudentOutput per selected block), timm's convention for ``indices``: an int n
        takes the last n blocks, a sequence takes those block indices (negative from the end); None: all.
        ``norm`` applies the final LayerNorm to the intermediates; ``stop_early`` stops after the last
        selected block (the final output is then None)."""
        depth = len(self.blocks)
        if indices is None:
            take = set(range(depth))
        elif isinstance(indices, int):
            if not 0 < indices <= depth:
                raise ValueError(f"indices={indices}: take between 1 and {depth} last blocks")
            take = set(range(depth - indices, depth))
        else:
            take = {i + depth if i < 0 else i for i in indices}
            if not take or not all(0 <= i < depth for i in take):
                raise ValueError(f"indices={list(indices)}: block indices must lie in [-{depth}, {depth - 1}]")
        tokens, hw = self._tokens(x_B3HW)
        inter = []
        last = max(take)
        x = tokens
        for i, x in self._run(tokens, hw, last if stop_early else None):  # noqa: B007 (x: the last block's, after)
            if i in take:
                inter.append(self._split(self.norm(x) if norm else x, hw))
        if stop_early:
            return None, inter
        return self._split(self.norm(x), hw), inter
