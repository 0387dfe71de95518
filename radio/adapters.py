"""Adapter heads: per teacher, a summary head and a feature head on top of the shared student trunk.

Each head is AM-RADIO's 2-layer MLP: Linear -> LayerNorm -> GELU -> Linear. Feature heads work on the
student's own grid; teacher targets are brought to that grid (see :func:`resample_targets`).
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
    name: str  # the teacher
    feature_dim: int
    feature_grid: tuple[int, int]  # the teacher's stored grid (H, W)
    summary_dim: int | None = None  # None: the teacher has no summary (SAM)
    hidden: int = 256


class MLPHead(nn.Module):
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
        self.summary_index = {t: i for i, t in enumerate(summary_teachers)}
        self.summary = nn.ModuleDict()
        self.features = nn.ModuleDict()
        for c in configs:
            if c.summary_dim:
                if c.name not in self.summary_index:
                    raise ValueError(f"teacher {c.name!r} has a summary but no summary token in the student (summary_teachers={summary_teachers})")
                self.summary[c.name] = MLPHead(student_dim, c.hidden, c.summary_dim)
            self.features[c.name] = MLPHead(student_dim, c.hidden, c.feature_dim)

    def forward(self, out: StudentOutput) -> dict[str, dict[str, torch.Tensor]]:
        """-> {teacher: {"summary": (B, Dt) if the teacher has one, "features": (B, h, w, Ct)}}."""
        feats = out.features_BHWC()
        preds = {}
        for name in self.configs:
            p = {"features": self.features[name](feats)}
            if name in self.summary:
                p["summary"] = self.summary[name](out.summary_BTD[:, self.summary_index[name]])
            preds[name] = p
        return preds


def resample_targets(feats_BHWC: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Teacher feature maps -> the student's grid: area average when shrinking, bilinear when growing.

    Targets are moved to the student grid rather than predictions to the teacher grid: shrinking SAM's
    64x64 map to a 14x14 student grid costs a fraction of upsampling every prediction (and the loss) to
    64x64, and area averaging makes each student cell the mean of the teacher cells it covers.
    """
    if tuple(feats_BHWC.shape[1:3]) == tuple(out_hw):
        return feats_BHWC
    x = feats_BHWC.permute(0, 3, 1, 2).float()
    if out_hw[0] <= x.shape[-2] and out_hw[1] <= x.shape[-1]:
        x = F.adaptive_avg_pool2d(x, out_hw)
    else:
        x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).to(feats_BHWC.dtype)


def resample_valid_mask(valid_hw_B2: torch.Tensor, teacher_grid: tuple[int, int], out_hw: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """Which student-grid cells lie (mostly) on real pixels: (B, h, w) float 0/1.

    ``valid_hw_B2`` is the unpadded (rows, cols) of each target on its teacher grid (SAM pads bottom and
    right). A student cell counts when at least ``threshold`` of the area it covers is valid.
    """
    B = valid_hw_B2.shape[0]
    H, W = teacher_grid
    rows = torch.arange(H, device=valid_hw_B2.device)[None, :, None] < valid_hw_B2[:, 0, None, None]
    cols = torch.arange(W, device=valid_hw_B2.device)[None, None, :] < valid_hw_B2[:, 1, None, None]
    m = (rows & cols).float().reshape(B, 1, H, W)
    if (H, W) != tuple(out_hw):
        m = F.interpolate(m, size=out_hw, mode="area")
    return (m[:, 0] >= threshold).float()
