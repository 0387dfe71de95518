"""Adapter heads: per teacher, a summary head and a feature head on top of the shared student trunk.

Each head is AM-RADIO's 2-layer MLP: Linear -> LayerNorm -> GELU -> Linear. Feature heads work on the
student's own grid; teacher targets are brought to that grid (see :func:`resample_targets`).

Where a teacher's targets lie relative to the student's input: the student sees the whole view, resized
to its square input. A teacher whose processor pads (SAM: longest side to 1024, then pad bottom/right)
sees the same whole view in the top-left ``valid_hw`` cells of its grid, the rest being padding. So the
student's grid corresponds to that *valid region*, not to the full teacher grid: targets are cropped to
it per sample and then resampled, and the padding never reaches the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .student import StudentOutput

__all__ = ["AdapterConfig", "MLPHead", "AdapterHeads", "resample_targets", "resample_valid_mask"]


@dataclass
class AdapterConfig:
    """One teacher's heads. Dims and grid come from the teacher's spec."""

    name: str  # the teacher
    feature_dim: int
    feature_grid: tuple[int, int]  # the teacher's stored target grid (H, W)
    summary_dim: int | None = None  # None: the teacher has no summary (SAM)
    hidden: int = 256


class MLPHead(nn.Module):
    """(..., in_dim) -> (..., out_dim): Linear -> LayerNorm -> GELU -> Linear."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


class AdapterHeads(nn.Module):
    """All teachers' heads. ``summary_teachers`` gives the order of the student's summary tokens."""

    def __init__(self, configs: list[AdapterConfig], student_dim: int, summary_teachers: list[str]):
        super().__init__()
        self.configs = {c.name: c for c in configs}
        if len(self.configs) != len(configs):
            raise ValueError(f"duplicate teacher names in adapters: {[c.name for c in configs]}")
        self.summary_index = {t: i for i, t in enumerate(summary_teachers)}
        self.summary = nn.ModuleDict()
        self.features = nn.ModuleDict()
        for c in configs:
            if c.summary_dim:
                if c.name not in self.summary_index:
                    raise ValueError(f"teacher {c.name!r} has a summary but no summary token in the student (summary_teachers={summary_teachers})")
                self.summary[c.name] = MLPHead(student_dim, c.hidden, c.summary_dim)
            self.features[c.name] = MLPHead(student_dim, c.hidden, c.feature_dim)

    @property
    def teacher_names(self) -> list[str]:
        return list(self.configs)

    def forward(self, out: StudentOutput) -> dict[str, dict[str, torch.Tensor]]:
        """-> {teacher: {"summary": (B, Dt) if the teacher has one, "features": (B, h, w, Ct) on the student grid}}."""
        feats_BHWC = out.features_BHWC()
        preds = {}
        for name in self.configs:
            p = {"features": self.features[name](feats_BHWC)}
            if name in self.summary:
                p["summary"] = self.summary[name](out.summary_BTD[:, self.summary_index[name]])
            preds[name] = p
        return preds


def _axis_weights(src_len_B: torch.Tensor, dst: int, src_size: int) -> torch.Tensor:
    """Per-sample 1-D resampling matrices (B, dst, src_size) from the first ``src_len`` source cells onto ``dst`` cells.

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


def resample_targets(feats_BHWC: torch.Tensor, out_hw: tuple[int, int], valid_hw_B2: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher feature maps -> the student's grid (B, h, w, C), float32.

    ``valid_hw_B2``: the unpadded (rows, cols) of each target; only that top-left region is resampled
    (see the module docstring). None: the whole grid.

    Targets are moved to the student grid rather than predictions to the teacher grid: shrinking SAM's
    64x64 map to a 14x14 student grid costs a fraction of upsampling every prediction (and the loss) to
    64x64, and the area average makes each student cell's target the mean of the teacher cells its pixels
    cover -- what one student token can be asked to represent. A teacher coarser than the student (CLIP
    at 7x7) is upsampled bilinearly, as AM-RADIO does.
    """
    B, H, W, _ = feats_BHWC.shape
    h, w = out_hw
    x = feats_BHWC.float()
    if valid_hw_B2 is None:
        if (H, W) == (h, w):
            return x
        valid_hw_B2 = torch.tensor([[H, W]], device=x.device).expand(B, 2)
    valid = valid_hw_B2.to(x.device)
    if valid.shape != (B, 2) or (valid < 1).any() or (valid[:, 0] > H).any() or (valid[:, 1] > W).any():
        raise ValueError(f"valid_hw must be (B={B}, 2) with 1 <= rows <= {H}, 1 <= cols <= {W}; got {valid.tolist()}")
    if (valid[:, 0] < H).any() or (valid[:, 1] < W).any():
        # zero weight alone would not silence padding: 0 x inf and 0 x nan are nan
        inside = (torch.arange(H, device=x.device)[None, :, None] < valid[:, 0, None, None]) & (torch.arange(W, device=x.device)[None, None, :] < valid[:, 1, None, None])
        x = torch.where(inside[..., None], x, 0.0)
    wh = _axis_weights(valid[:, 0], h, H).to(x.dtype)  # (B, h, H)
    ww = _axis_weights(valid[:, 1], w, W).to(x.dtype)  # (B, w, W)
    x = torch.einsum("bik,bklc->bilc", wh, x)
    return torch.einsum("bjl,bilc->bijc", ww, x)


def resample_valid_mask(valid_hw_B2: torch.Tensor, teacher_grid: tuple[int, int], out_hw: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """Which cells of a grid spanning the teacher's *whole* (padded) canvas lie mostly on real pixels: (B, h, w) float 0/1.

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
