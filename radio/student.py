"""The student: a plain-torch ViT with summary tokens (one per summary teacher) and register tokens.

``forward_features`` returns the summary tokens and the spatial patch features; adapters (heads) are
separate modules (``radio/adapters.py``). Position embeddings are learned on a reference grid and
interpolated to any input whose sides are multiples of the patch size; optionally (AM-RADIO's "CPE"),
training takes a random crop of a larger position grid so the model does not tie content to absolute
position at one resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["StudentConfig", "StudentOutput", "ViTStudent", "SIZES"]

# name -> (dim, depth, heads)
SIZES: dict[str, tuple[int, int, int]] = {
    "nano": (96, 4, 3),  # for CPU tests and the quickstart
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class StudentConfig:
    """A named size plus explicit overrides (None: take the size's value)."""

    size: str = "tiny"
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    patch_size: int = 16
    mlp_ratio: float = 4.0
    num_registers: int = 4
    summary_teachers: list[str] = field(default_factory=list)  # one summary token each (at least one token)
    img_size: int = 224  # reference grid of the position embedding is img_size // patch_size
    cpe_max_img_size: int | None = None  # CPE: position grid for this size, randomly cropped in training
    drop_path: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"unknown student size {self.size!r}; choose one of {list(SIZES)} (or set dim/depth/heads)")

    def resolved(self) -> "StudentConfig":
        dim, depth, heads = SIZES[self.size]
        return replace(self, dim=self.dim or dim, depth=self.depth or depth, heads=self.heads or heads)

    @property
    def num_summary_tokens(self) -> int:
        return max(1, len(self.summary_teachers))


@dataclass
class StudentOutput:
    summary_BTD: torch.Tensor  # (B, T, D): one token per summary teacher
    features_BLC: torch.Tensor  # (B, h*w, D) patch tokens, registers dropped
    grid_hw: tuple[int, int]

    def features_BHWC(self) -> torch.Tensor:
        B, _, C = self.features_BLC.shape
        return self.features_BLC.reshape(B, *self.grid_hw, C)

    def features_BCHW(self) -> torch.Tensor:
        return self.features_BHWC().permute(0, 3, 1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"student dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
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
    def __init__(self, cfg: StudentConfig):
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        D, p = cfg.dim, cfg.patch_size
        self.patch_embed = nn.Conv2d(3, D, kernel_size=p, stride=p)
        self.summary_tokens = nn.Parameter(torch.zeros(1, cfg.num_summary_tokens, D))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_registers, D))
        self.pos_grid = (cfg.cpe_max_img_size or cfg.img_size) // p
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pos_grid * self.pos_grid, D))
        dpr = [cfg.drop_path * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(D, cfg.heads, cfg.mlp_ratio, dpr[i]) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.summary_tokens, std=0.02)
        nn.init.trunc_normal_(self.register_tokens, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _pos(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an (h, w) patch grid: (1, h*w, D)."""
        G, D = self.pos_grid, self.pos_embed.shape[-1]
        grid = self.pos_embed.reshape(1, G, G, D).permute(0, 3, 1, 2)
        if self.cfg.cpe_max_img_size and self.training:
            # CPE: a random window of the large grid (scale and aspect jitter), resized to (h, w).
            scale = torch.empty(()).uniform_(0.5, 1.0).item()
            aspect = math.exp(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3)).item())
            wh = max(1, min(G, round(G * math.sqrt(scale * aspect))))
            hh = max(1, min(G, round(G * math.sqrt(scale / aspect))))
            top = int(torch.randint(0, G - hh + 1, ()).item())
            left = int(torch.randint(0, G - wh + 1, ()).item())
            grid = grid[:, :, top : top + hh, left : left + wh]
        if grid.shape[-2:] != (h, w):
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, D)

    def forward_features(self, x_B3HW: torch.Tensor) -> StudentOutput:
        """Normalized float images (B, 3, H, W), H and W multiples of the patch -> StudentOutput."""
        B, _, H, W = x_B3HW.shape
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not a multiple of the student's patch size {p}; resize or crop to e.g. {H // p * p or p}x{W // p * p or p}")
        x = self.patch_embed(x_B3HW)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + self._pos(h, w)
        T, R = self.summary_tokens.shape[1], self.register_tokens.shape[1]
        x = torch.cat([self.summary_tokens.expand(B, -1, -1), self.register_tokens.expand(B, -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return StudentOutput(x[:, :T], x[:, T + R :], (h, w))

    forward = forward_features
