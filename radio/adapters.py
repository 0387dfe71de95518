"""Adapter heads: per teacher, a summary head and a feature head on top of the shared student trunk.

Each head is AM-RADIO's 2-layer MLP: Linear -> LayerNorm -> GELU -> Linear. Feature heads work on the
student's own grid; cached targets already cover exactly the view (``radio/targets.py``) and are brought
to that grid only when the stored grid differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .student import StudentOutput
from .targets import resample_targets, resample_valid_mask  # noqa: F401  (re-exported)

__all__ = ["AdapterConfig", "MLPHead", "AdapterHeads", "resample_targets", "resample_valid_mask"]


@dataclass
class AdapterConfig:
    """One teacher's heads. Dims and grid come from the teacher's spec."""

    name: str  # the teacher
    feature_dim: int
    feature_grid: tuple[int, int]  # the grid the teacher's targets are stored at in the cache (H, W)
    summary_dim: int | None = None  # None: the teacher has no summary (SAM)
    hidden: int = 256


class MLPHead(nn.Module):
    """(..., in_dim) -> (..., out_dim): Linear -> LayerNorm -> GELU -> Linear."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


class AdapterHeads(nn.Module):
    """All teachers' heads. ``summary_teachers`` gives the order of the student's summary tokens."""

    def __init__(self, configs: list[AdapterConfig], student_dim: int, summary_teachers: list[str]) -> None:
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
                    raise ValueError(
                        f"teacher {c.name!r} has a summary but no summary token in the student "
                        f"(summary_teachers={summary_teachers})"
                    )
                self.summary[c.name] = MLPHead(student_dim, c.hidden, c.summary_dim)
            self.features[c.name] = MLPHead(student_dim, c.hidden, c.feature_dim)

    @property
    def teacher_names(self) -> list[str]:
        return list(self.configs)

    def forward(self, out: StudentOutput) -> dict[str, dict[str, torch.Tensor]]:
        """-> {teacher: {"summary": (B, Dt) if the teacher has one, "features": (B, h, w, Ct) on the student grid}}."""
        # contiguous: the tokens are a slice of the sequence, and a linear layer over a strided batch folds it only
        # when B == 1, a branch torch.export would specialize (a batch-1 guard in the exported graph)
        feats_BHWC = out.features_BHWC().contiguous()
        preds = {}
        for name in self.configs:
            p = {"features": self.features[name](feats_BHWC)}
            if name in self.summary:
                p["summary"] = self.summary[name](out.summary_BTD[:, self.summary_index[name]])
            preds[name] = p
        return preds
