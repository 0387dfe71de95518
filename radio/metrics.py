"""Evaluation protocols shared by every student and every teacher: kNN, linear probe, PCA pictures."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "knn_top1",
    "linear_probe_top1",
    "pca_rgb",
    "masked_cosine",
    "mean_iou",
    "dense_probe_miou",
    "zero_shot_top1",
]


@torch.no_grad()
def knn_top1(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 of a cosine kNN classifier (DINO protocol: k neighbours, votes weighted by exp(sim / T)).

    ``train_x`` (N, D), ``train_y`` (N,) int, ``test_x`` (M, D), ``test_y`` (M,). Returns accuracy in [0, 1].
    """
    train_x = F.normalize(train_x.float(), dim=-1)
    test_x = F.normalize(test_x.float(), dim=-1)
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_x))
    sims, idx = (test_x @ train_x.T).topk(k, dim=-1)
    votes = torch.zeros(len(test_x), n_classes)
    votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
    return float((votes.argmax(-1) == test_y).float().mean())


def linear_probe_top1(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> float:
    """Top-1 of a logistic-regression probe on frozen, standardized features (full-batch AdamW)."""
    g = torch.Generator().manual_seed(seed)
    mean, std = train_x.float().mean(0), train_x.float().std(0) + 1e-6
    xtr, xte = (train_x.float() - mean) / std, (test_x.float() - mean) / std
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    probe = torch.nn.Linear(xtr.shape[1], n_classes)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=g)
        probe.bias.zero_()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(probe(xtr), train_y).backward()
        opt.step()
    with torch.no_grad():
        return float((probe(xte).argmax(-1) == test_y).float().mean())


def masked_cosine(
    pred_BHWC: torch.Tensor, target_BHWC: torch.Tensor, mask_BHW: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cosine similarity per image over (valid) positions: (B,)."""
    cos = F.cosine_similarity(pred_BHWC.float(), target_BHWC.float(), dim=-1)
    if mask_BHW is None:
        return cos.flatten(1).mean(1)
    m = mask_BHW.float()
    return (cos * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def pca_rgb(feats_NHWC: torch.Tensor | np.ndarray, out_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Project feature maps on their first 3 principal components (fit jointly over the N maps) as RGB.

    (N, h, w, C) -> uint8 (N, H, W, 3), nearest-upsampled to ``out_hw`` if given. Each channel is
    scaled by robust (1st/99th percentile) bounds so one outlier does not wash out the picture.
    """
    x = torch.as_tensor(feats_NHWC).float()
    N, h, w, C = x.shape
    flat = x.reshape(-1, C)
    flat = flat - flat.mean(0)
    q = min(3, C)
    _, _, V = torch.pca_lowrank(flat, q=q, center=False, niter=4)
    proj = flat @ V[:, :q]
    if q < 3:
        proj = torch.cat([proj, proj[:, :1].expand(-1, 3 - q)], 1)
    lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1).reshape(N, h, w, 3)
    if out_hw is not None:
        rgb = F.interpolate(rgb.permute(0, 3, 1, 2), size=out_hw, mode="nearest").permute(0, 2, 3, 1)
    return (rgb.numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean intersection-over-union of integer label maps (any shape, same for both), over the classes present
    in ``target`` or ``pred`` (a class absent from both has no IoU; ADE20k's protocol averages over classes too)."""
    p, t = pred.reshape(-1).long(), target.reshape(-1).long()
    conf = (
        torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
        .reshape(num_classes, num_classes)
        .double()
    )
    inter, union = conf.diag(), conf.sum(0) + conf.sum(1) - conf.diag()
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else float("nan")


def dense_probe_miou(
    train_f: torch.Tensor,
    train_m: torch.Tensor,
    test_f: torch.Tensor,
    test_m: torch.Tensor,
    num_classes: int,
    epochs: int = 200,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> float:
    """Semantic segmentation by a linear probe on frozen patch features (the dense probe of RADIO, UNIC, DINOv3).

    ``*_f``: (N, h, w, D) features; ``*_m``: (N, H, W) int class masks at pixel resolution. Features are
    standardized, one linear layer maps each patch to class logits, the logits are upsampled bilinearly to the
    mask's pixels and trained with cross-entropy (full-batch AdamW). Returns the test mIoU at pixel resolution.
    """
    g = torch.Generator().manual_seed(seed)
    D = train_f.shape[-1]
    mean, std = train_f.float().reshape(-1, D).mean(0), train_f.float().reshape(-1, D).std(0) + 1e-6
    head = torch.nn.Linear(D, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)

    def logits(f: torch.Tensor, hw) -> torch.Tensor:
        x = head((f.float() - mean) / std).permute(0, 3, 1, 2)  # (N, K, h, w)
        return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)

    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            F.cross_entropy(logits(train_f, train_m.shape[-2:]), train_m.long()).backward()
            opt.step()
    with torch.no_grad():
        pred = logits(test_f, test_m.shape[-2:]).argmax(1)
    return mean_iou(pred, test_m, num_classes)


@torch.no_grad()
def zero_shot_top1(image_emb: torch.Tensor, labels: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Top-1 of zero-shot classification: each image takes the class whose text embedding is the most
    cosine-similar to its embedding. ``image_emb`` (N, D), ``labels`` (N,), ``text_emb`` (K, D), one row per class."""
    sim = F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    return float((sim.argmax(1) == labels.long()).float().mean())
