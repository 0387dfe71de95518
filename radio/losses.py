"""Distillation losses, returned as a dict so every teacher's terms reach the logs without loop changes.

AM-RADIO's recipe: summary loss = cosine distance; feature loss = 0.9 x cosine distance + 0.1 x smooth-L1,
per position of the student grid, averaged over the batch. Targets are standardized per channel first
(``radio/normalize.py``), so smooth-L1 works in comparable units across teachers.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .targets import resample_targets

__all__ = ["LossConfig", "distill_loss"]


@dataclass
class LossConfig:
    weights: dict[str, float] = field(default_factory=dict)  # per teacher; absent teachers weigh 1.0
    summary_weight: float = 1.0
    feature_weight: float = 1.0
    feature_cos: float = 0.9  # share of cosine distance in the feature loss
    feature_smooth_l1: float = 0.1  # share of smooth-L1
    smooth_l1_beta: float = 1.0


def distill_loss(preds: dict, targets: dict, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Total and per-teacher losses.

    ``preds[t]``: {"summary": (B, Dt), "features": (B, h, w, Ct)} on the student grid.
    ``targets[t]``: normalized targets: {"summary": (B, Dt) if the teacher has one, "features" (B, Ht, Wt, Ct)
    at the grid they were stored at, covering exactly the view}; resampled onto the student grid only when
    the two grids differ.
    Returns ``{"loss": total, "loss/<t>/summary", "loss/<t>/features", "cos/<t>/summary", "cos/<t>/features"}``
    (scalars); ``loss`` = sum over teachers of weight_t x (summary_weight x summary + feature_weight x features);
    the ``cos/`` entries are detached mean cosine similarities for logging.
    """
    out: dict[str, torch.Tensor] = {}
    total = None
    for t, tgt in targets.items():
        if t not in preds:
            raise KeyError(f"targets for teacher {t!r} but no prediction (heads: {list(preds)})")
        w_t = cfg.weights.get(t, 1.0)
        p = preds[t]
        terms = []
        if "summary" in tgt:
            cos = F.cosine_similarity(p["summary"].float(), tgt["summary"].float(), dim=-1)  # (B,)
            out[f"loss/{t}/summary"] = (1 - cos).mean()
            out[f"cos/{t}/summary"] = cos.mean().detach()
            terms.append(cfg.summary_weight * out[f"loss/{t}/summary"])
        pred = p["features"].float()
        # from the stored grid (itself resampled from the teacher's) to the student's: linear, so the two steps
        # keep a ramp where one step puts it (radio.targets._linear_weights)
        target = resample_targets(tgt["features"], tuple(pred.shape[1:3]), kernel="linear")
        cos = F.cosine_similarity(pred, target, dim=-1)  # (B, h, w)
        l1 = F.smooth_l1_loss(pred, target, beta=cfg.smooth_l1_beta, reduction="none").mean(-1)
        out[f"loss/{t}/features"] = (cfg.feature_cos * (1 - cos) + cfg.feature_smooth_l1 * l1).mean()
        out[f"cos/{t}/features"] = cos.mean().detach()
        terms.append(cfg.feature_weight * out[f"loss/{t}/features"])
        if w_t:  # a weight-0 teacher is logged but left out of the graph (0 x NaN would still be NaN)
            term = w_t * functools.reduce(operator.add, terms)  # sum() without its int 0 start
            total = term if total is None else total + term
    if total is None:
        raise ValueError(
            f"distill_loss: no teacher with a non-zero weight among {list(targets)} (weights: {cfg.weights})"
        )
    out["loss"] = total
    return out
