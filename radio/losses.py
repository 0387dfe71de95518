"""Distillation losses, returned as a dict so every teacher's terms reach the logs without loop changes.

AM-RADIO's recipe: summary loss = cosine distance; feature loss = 0.9 x cosine distance + 0.1 x smooth-L1,
per position of the student grid, averaged over the batch. Targets are standardized per channel first
(``radio/normalize.py``), so smooth-L1 works in comparable units across teachers.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from .targets import resample_targets

__all__ = ["LossConfig", "distill_loss", "summary_angle", "summary_terms"]


@dataclass
class LossConfig:
    weights: dict[str, float] = field(default_factory=dict)  # per teacher; absent teachers weigh 1.0
    summary_weight: float = 1.0
    feature_weight: float = 1.0
    feature_cos: float = 0.9  # share of cosine distance in the feature loss
    feature_smooth_l1: float = 0.1  # share of smooth-L1
    smooth_l1_beta: float = 1.0
    # cosine: AM-RADIO's summary term, 1 - cos. balanced: C-RADIOv4's idea of summary terms measured as angles so
    # that no teacher's summary dominates: the angle between the student's and the teacher's summary, in units of
    # the teacher's own spread (the mean angle between two of its summaries in the batch), see summary_terms
    summary_loss: Literal["cosine", "balanced"] = "cosine"
    # Shift-equivariant loss (radio.shift): the student sees a crop of the cached view, shift_px pixels smaller
    # (a multiple of its patch), at a random offset in [0, shift_px] per sample, and is compared with each teacher's
    # map over exactly the pixels it saw, so it learns what moves with the content and not a teacher's
    # fixed-position artifacts. 0: off
    shift_px: int = 0
    # the offsets' step: None, whole patches (the targets are then the stored cells themselves, exactly); a smaller
    # step resamples the targets at sub-cell offsets, which blurs a patch teacher's map (bench/bench_shift_artifact.py)
    shift_step_px: int | None = None


def summary_angle(a_BD: torch.Tensor, b_BD: torch.Tensor) -> torch.Tensor:
    """Angles (B,) in radians between rows, as ``2 atan2(|a - b|, |a + b|)`` of the unit vectors: accurate near 0
    and pi, where ``acos`` of a cosine loses its digits and its gradient is infinite; the gradient of an angle
    has the same size whatever the angle, so a nearly matched teacher keeps pulling."""
    a, b = F.normalize(a_BD.float(), dim=-1), F.normalize(b_BD.float(), dim=-1)
    return 2 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1))


def summary_terms(pred_BD: torch.Tensor, target_BD: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """One teacher's summary term and what it is made of, for the logs.

    ``cosine``: ``1 - cos`` (AM-RADIO). ``balanced``: ``angle(student, teacher) / spread``, the spread being the
    mean angle between two different summaries of the teacher in the batch (detached; pi/2, the angle of two
    random directions, when the batch has one row). Teachers differ in how their summaries fill the sphere:
    one whose summaries sit in a narrow cone gives small cosine distances whatever the student does and is
    drowned by a teacher whose summaries spread wide; in units of its own spread each teacher's error weighs
    the same, and an angle keeps its gradient as the error shrinks where ``1 - cos`` (quadratic near 0) lets a
    nearly matched teacher fade. This is radio's reading of C-RADIOv4's balanced summary loss (summaries
    measured as angles so that no teacher dominates); the tech report's own formula could not be read here.
    Returns ``loss`` (scalar), ``cos`` and ``angle`` (mean, degrees; detached) and, when balanced, ``spread``
    (degrees; detached)."""
    cos = F.cosine_similarity(pred_BD.float(), target_BD.float(), dim=-1)
    angle = summary_angle(pred_BD, target_BD)
    out = {"cos": cos.mean().detach(), "angle": torch.rad2deg(angle.mean()).detach()}
    if kind == "cosine":
        out["loss"] = (1 - cos).mean()
        return out
    if kind != "balanced":
        raise ValueError(f"loss.summary_loss must be 'cosine' or 'balanced', got {kind!r}")
    with torch.no_grad():
        B = target_BD.shape[0]
        if B > 1:
            t = F.normalize(target_BD.float(), dim=-1)
            c = t @ t.T  # (B, B) cosines; |a - b| and |a + b| of unit vectors from them: O(B^2), not O(B^2 D)
            pair = 2 * torch.atan2((2 - 2 * c).clamp(min=0).sqrt(), (2 + 2 * c).clamp(min=0).sqrt())
            spread = ((pair.sum() - pair.diagonal().sum()) / (B * (B - 1))).clamp(min=1e-3)
        else:
            spread = torch.tensor(torch.pi / 2, device=target_BD.device)
    out["loss"] = angle.mean() / spread
    out["spread"] = torch.rad2deg(spread)
    return out


def distill_loss(preds: dict, targets: dict, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Total and per-teacher losses.

    ``preds[t]``: {"summary": (B, Dt), "features": (B, h, w, Ct)} on the student grid.
    ``targets[t]``: normalized targets: {"summary": (B, Dt) if the teacher has one, "features" (B, Ht, Wt, Ct)
    at the grid they were stored at, covering exactly the view}; resampled onto the student grid only when
    the two grids differ.
    Returns ``{"loss": total, "loss/<t>/summary", "loss/<t>/features", "cos/<t>/summary", "cos/<t>/features",
    "angle/<t>/summary"}`` (scalars; with ``summary_loss=balanced`` also ``spread/<t>/summary``); ``loss`` = sum
    over teachers of weight_t x (summary_weight x summary + feature_weight x features); the ``cos/``, ``angle/``
    (degrees) and ``spread/`` (degrees) entries are detached, for logging (see :func:`summary_terms`).
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
            st = summary_terms(p["summary"], tgt["summary"], cfg.summary_loss)
            out[f"loss/{t}/summary"] = st["loss"]
            out[f"cos/{t}/summary"] = st["cos"]
            out[f"angle/{t}/summary"] = st["angle"]
            if "spread" in st:
                out[f"spread/{t}/summary"] = st["spread"]
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
