"""Target statistics: exact, mergeable per-channel moments, and the standardization they define.

Teachers' outputs live on wildly different scales (SAM's embedding vs. a CLIP projection). Training
matches *standardized* targets, ``(x - mean) / (std + eps)`` per channel, so no teacher dominates the loss
by scale alone. The statistics are exact: every cache shard stores its own moments, and the manifest
merges them (Chan et al.'s parallel update), so they do not depend on sampling or on the order shards
finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .student import tracing

__all__ = ["RunningStats", "TargetStats"]


class RunningStats:
    """Per-channel count, mean and M2 (sum of squared deviations from the mean), float64; mergeable.

    ``update`` folds in a chunk with its own two-pass moments and ``merge`` combines two sets with Chan et
    al.'s formula, so the result equals numpy's mean/std of all rows to float64 rounding, whatever the
    chunking or merge order (no catastrophic cancellation, unlike sum / sum-of-squares).
    """

    def __init__(self, count: float = 0.0, mean=None, m2=None):
        self.count = float(count)
        self._mean = None if mean is None else np.asarray(mean, np.float64)
        self._m2 = None if m2 is None else np.asarray(m2, np.float64)

    def update(self, x_NC) -> "RunningStats":
        """Add N rows of C channels (numpy or torch; spatial maps: reshape(-1, C) first)."""
        if isinstance(x_NC, torch.Tensor):
            x_NC = x_NC.detach().cpu().double().numpy()
        x = np.asarray(x_NC, np.float64)
        if x.ndim != 2:
            raise ValueError(f"RunningStats.update expects (N, C), got {x.shape}")
        if len(x) == 0:
            return self
        mean = x.mean(0)
        return self.merge(RunningStats(len(x), mean, ((x - mean) ** 2).sum(0)))

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Fold ``other`` into this one (in place; returns self)."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self._mean, self._m2 = other.count, other._mean.copy(), other._m2.copy()
            return self
        if other._mean.shape != self._mean.shape:
            raise ValueError(f"cannot merge statistics of {other._mean.shape[0]} channels into {self._mean.shape[0]}")
        n = self.count + other.count
        delta = other._mean - self._mean
        self._mean = self._mean + delta * (other.count / n)
        self._m2 = self._m2 + other._m2 + delta**2 * (self.count * other.count / n)
        self.count = n
        return self

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            raise ValueError("RunningStats: no data")
        return self._mean

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0)."""
        if self._m2 is None:
            raise ValueError("RunningStats: no data")
        return np.sqrt(self._m2 / self.count)

    def to_dict(self) -> dict:
        return {"count": self.count, "mean": None if self._mean is None else self._mean.tolist(), "m2": None if self._m2 is None else self._m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "RunningStats":
        return cls(d["count"], d.get("mean"), d.get("m2"))


@dataclass
class TargetStats:
    """Per-channel mean/std of one teacher's features and summary (None when it has none)."""

    features_mean: list[float]
    features_std: list[float]
    summary_mean: list[float] | None = None
    summary_std: list[float] | None = None
    eps: float = 1e-6
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # (key, device, dtype) -> tensor

    @classmethod
    def from_dict(cls, d: dict) -> "TargetStats":
        """From a manifest's ``stats`` entry: ``{"features": {"mean", "std"}, "summary": {...}?}`` (extra keys ignored)."""
        s = d.get("summary")
        return cls(list(d["features"]["mean"]), list(d["features"]["std"]), list(s["mean"]) if s else None, list(s["std"]) if s else None)

    @classmethod
    def from_running(cls, features: RunningStats, summary: RunningStats | None = None) -> "TargetStats":
        return cls(features.mean.tolist(), features.std.tolist(), None if summary is None else summary.mean.tolist(), None if summary is None else summary.std.tolist())

    def to_dict(self) -> dict:
        d = {"features": {"mean": list(self.features_mean), "std": list(self.features_std)}}
        if self.summary_mean is not None:
            d["summary"] = {"mean": list(self.summary_mean), "std": list(self.summary_std)}
        return d

    def _t(self, key: str, like: torch.Tensor) -> torch.Tensor:
        k = (key, like.device, like.dtype)
        traced = tracing()
        if k not in self._cache or traced:  # built once per device/dtype, not every step (never cached from a trace)
            values = getattr(self, key)
            if values is None:
                raise ValueError(f"these statistics have no {key} (the teacher has no summary)")
            t = torch.as_tensor(values, dtype=torch.float64)
            t = (t + self.eps if key.endswith("std") else t).to(like.device, like.dtype)
            if traced:
                return t
            self._cache[k] = t
        return self._cache[k]

    def normalize_features(self, x_BHWC: torch.Tensor) -> torch.Tensor:
        return (x_BHWC - self._t("features_mean", x_BHWC)) / self._t("features_std", x_BHWC)

    def denormalize_features(self, x_BHWC: torch.Tensor) -> torch.Tensor:
        return x_BHWC * self._t("features_std", x_BHWC) + self._t("features_mean", x_BHWC)

    def normalize_summary(self, x_BD: torch.Tensor) -> torch.Tensor:
        return (x_BD - self._t("summary_mean", x_BD)) / self._t("summary_std", x_BD)

    def denormalize_summary(self, x_BD: torch.Tensor) -> torch.Tensor:
        return x_BD * self._t("summary_std", x_BD) + self._t("summary_mean", x_BD)

    def normalize(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"summary"?: (B, D), "features": (B, H, W, C)} in the teacher's space -> standardized (other keys pass through)."""
        r = dict(out)
        r["features"] = self.normalize_features(out["features"])
        if out.get("summary") is not None:
            r["summary"] = self.normalize_summary(out["summary"])
        return r

    def denormalize(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`normalize`: standardized head outputs -> the teacher's space."""
        r = dict(out)
        r["features"] = self.denormalize_features(out["features"])
        if out.get("summary") is not None:
            r["summary"] = self.denormalize_summary(out["summary"])
        return r
