"""Distillation losses, returned as a dict so every teacher's terms reach the logs without loop changes.

AM-RADIO's recipe: summary loss = cosine distance; feature loss = 0.9 x cosine distance + 0.1 x smooth-L1,
per position, averaged over the valid (unpadded) positions of the teacher's image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .adapters import resample_targets, resample_valid_mask

__all__ = ["LossConfig", "distill_loss"]


@dataclass
class LossConfig:
    weights: dict[str, float] = field(default_factory=dict)  # per teacher; absent teachers weigh 1.0
    summary_weight: float = 1.0
    feature_weight: float = 1.0
    feature_cos: float = 0.9
    feature_smooth_l1: float = 0.1
    smooth_l1_beta: float = 1.0


def distill_loss(preds: dict, targets: dict, valid_hw: dict, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Total and per-teacher losses.

    ``preds[t]``: {"summary": (B, D), "features": (B, h, w, C)} on the student grid.
    ``targets[t]``: normalized targets, features on the teacher's grid (B, Ht, Wt, C).
    ``valid_hw[t]``: (B, 2) unpadded rows/cols of each target on the teacher grid.
    Returns ``{"loss": total, "loss/<t>/summary", "loss/<t>/features", "cos/<t>/summary", "cos/<t>/features"}``;
    the ``cos/`` entries are detached diagnostics.
    """
    out: dict[str, torch.Tensor] = {}
    total = None
    for t, tgt in targets.items():
        w = cfg.weights.get(t, 1.0)
        p = preds[t]
        if "summary" in tgt:
            cos = F.cosine_similarity(p["summary"].float(), tgt["summary"].float(), dim=-1)
            out[f"loss/{t}/summary"] = (1 - cos).mean()
            out[f"cos/{t}/summary"] = cos.mean().detach()
            term = cfg.summary_weight * out[f"loss/{t}/summary"]
            total = w * term if total is None else total + w * term
        h, w_ = p["features"].shape[1:3]
        target = resample_targets(tgt["features"].float(), (h, w_))
        mask = resample_valid_mask(valid_hw[t], tuple(tgt["features"].shape[1:3]), (h, w_))
        pred = p["features"].float()
        cos = F.cosine_similarity(pred, target, dim=-1)  # (B, h, w)
        l1 = F.smooth_l1_loss(pred, target, beta=cfg.smooth_l1_beta, reduction="none").mean(-1)
        n = mask.sum().clamp_min(1.0)
        feat_loss = (cfg.feature_cos * (1 - cos) + cfg.feature_smooth_l1 * l1).mul(mask).sum() / n
        out[f"loss/{t}/features"] = feat_loss
        out[f"cos/{t}/features"] = ((cos * mask).sum() / n).detach()
        term = cfg.feature_weight * feat_loss
        total = w * term if total is None else total + w * term
    out["loss"] = total
    return out
