"""Target statistics: exact, mergeable per-channel moments, and the standardization they define.

Teachers' outputs live on wildly different scales (SAM's embedding vs. a CLIP projection). Training
matches *standardized* targets, ``(x - mean) / std`` per channel, so no teacher dominates the loss by
scale alone. The statistics are exact: every cache shard stores its own moments, and the manifest merges
them (Chan et al.'s parallel update), so they do not depend on sampling or on the order shards finished.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["RunningStats", "TargetStats"]


class RunningStats:
    """Per-channel count, mean and M2 (sum of squared deviations) in float64; mergeable."""

    def __init__(self, count: float = 0.0, mean: np.ndarray | None = None, m2: np.ndarray | None = None):
        self.count = float(count)
        self._mean = None if mean is None else np.asarray(mean, np.float64)
        self._m2 = None if m2 is None else np.asarray(m2, np.float64)

    def update(self, x_NC: np.ndarray):
        """Add N rows of C channels."""
        x = np.asarray(x_NC, np.float64)
        if x.ndim != 2:
            raise ValueError(f"RunningStats.update expects (N, C), got {x.shape}")
        if len(x) == 0:
            return
        self.merge(RunningStats(len(x), x.mean(0), ((x - x.mean(0)) ** 2).sum(0)))

    def merge(self, other: "RunningStats") -> "RunningStats":
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self._mean, self._m2 = other.count, other._mean.copy(), other._m2.copy()
            return self
        n = self.count + other.count
        delta = other._mean - self._mean
        self._mean = self._mean + delta * (other.count / n)
        self._m2 = self._m2 + other._m2 + delta**2 * (self.count * other.count / n)
        self.count = n
        return self

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            raise ValueError("no data")
        return self._mean

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation."""
        if self._m2 is None:
            raise ValueError("no data")
        return np.sqrt(self._m2 / self.count)

    def to_dict(self) -> dict:
        return {"count": self.count, "mean": None if self._mean is None else self._mean.tolist(), "m2": None if self._m2 is None else self._m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "RunningStats":
        return cls(d["count"], d.get("mean"), d.get("m2"))


@dataclass
class TargetStats:
    """Per-channel mean/std of one teacher's summary (None when it has none) and features."""

    features_mean: list[float]
    features_std: list[float]
    summary_mean: list[float] | None = None
    summary_std: list[float] | None = None
    eps: float = 1e-6

    @classmethod
    def from_dict(cls, d: dict) -> "TargetStats":
        """From a manifest's ``stats`` entry: ``{"features": {"mean", "std"}, "summary": {...}?}``."""
        s = d.get("summary")
        return cls(d["features"]["mean"], d["features"]["std"], s["mean"] if s else None, s["std"] if s else None)

    def to_dict(self) -> dict:
        d = {"features": {"mean": list(self.features_mean), "std": list(self.features_std)}}
        if self.summary_mean is not None:
            d["summary"] = {"mean": list(self.summary_mean), "std": list(self.summary_std)}
        return d

    def _t(self, values, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, dtype=like.dtype, device=like.device)

    def normalize_features(self, x_BHWC: torch.Tensor) -> torch.Tensor:
        return (x_BHWC - self._t(self.features_mean, x_BHWC)) / (self._t(self.features_std, x_BHWC) + self.eps)

    def denormalize_features(self, x_BHWC: torch.Tensor) -> torch.Tensor:
        return x_BHWC * (self._t(self.features_std, x_BHWC) + self.eps) + self._t(self.features_mean, x_BHWC)

    def normalize_summary(self, x_BD: torch.Tensor) -> torch.Tensor:
        return (x_BD - self._t(self.summary_mean, x_BD)) / (self._t(self.summary_std, x_BD) + self.eps)

    def denormalize_summary(self, x_BD: torch.Tensor) -> torch.Tensor:
        return x_BD * (self._t(self.summary_std, x_BD) + self.eps) + self._t(self.summary_mean, x_BD)
