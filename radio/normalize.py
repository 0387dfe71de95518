"""Target statistics: exact, mergeable per-channel moments, and the standardization they define.

Teachers' outputs live on wildly different scales (SAM's embedding vs. a CLIP projection). Training
matches *standardized* targets, ``(x - mean) / (std + eps)`` per channel, so no teacher dominates the loss
by scale alone. The statistics are exact: every cache shard stores its own moments, and the manifest
merges them (Chan et al.'s parallel update), so they do not depend on sampling or on the order shards
finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from .student import tracing

__all__ = ["RunningStats", "RunningMoments", "TargetStats", "PhiS", "hadamard", "STANDARDIZE"]

STANDARDIZE = ("channel", "phis")


class RunningStats:
    """Per-channel count, mean and M2 (sum of squared deviations from the mean), float64; mergeable.

    ``update`` folds in a chunk with its own two-pass moments and ``merge`` combines two sets with Chan et
    al.'s formula, so the result equals numpy's mean/std of all rows to float64 rounding, whatever the
    chunking or merge order (no catastrophic cancellation, unlike sum / sum-of-squares).
    """

    def __init__(self, count: float = 0.0, mean: ArrayLike | None = None, m2: ArrayLike | None = None) -> None:
        self.count = float(count)
        self._mean = None if mean is None else np.asarray(mean, np.float64)
        self._m2 = None if m2 is None else np.asarray(m2, np.float64)

    def update(self, x_NC: np.ndarray | torch.Tensor) -> RunningStats:
        """Add N rows of C channels (numpy or torch; spatial maps: reshape(-1, C) first)."""
        if isinstance(x_NC, torch.Tensor):
            x_NC = x_NC.detach().cpu().double().numpy()
        x = np.asarray(x_NC, np.float64)
        if x.ndim != 2:
            raise ValueError(f"RunningStats.update expects (N, C), got {x.shape}")
        if len(x) == 0:
            return self
        return self.merge(self._chunk(x))

    @classmethod
    def _chunk(cls, x: np.ndarray) -> RunningStats:
        """One chunk's own two-pass moments (subclasses add what they keep)."""
        mean = x.mean(0)
        return RunningStats(len(x), mean, ((x - mean) ** 2).sum(0))

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold ``other`` into this one (in place; returns self)."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self._mean, self._m2 = other.count, other.mean.copy(), other.m2.copy()
            return self
        if other.mean.shape != self.mean.shape:
            raise ValueError(f"cannot merge statistics of {other.mean.shape[0]} channels into {self.mean.shape[0]}")
        n = self.count + other.count
        delta = other.mean - self.mean
        self._mean = self.mean + delta * (other.count / n)
        self._m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        self.count = n
        return self

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            raise ValueError("RunningStats: no data")
        return self._mean

    @property
    def m2(self) -> np.ndarray:
        """Sum of squared deviations from the mean, per channel (C,) float64."""
        if self._m2 is None:
            raise ValueError("RunningStats: no data")
        return self._m2

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0)."""
        return np.sqrt(self.m2 / self.count)

    def to_dict(self) -> dict:
        return {
            "count": self.count,
            "mean": None if self._mean is None else self._mean.tolist(),
            "m2": None if self._m2 is None else self._m2.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunningStats:
        return cls(d["count"], d.get("mean"), d.get("m2"))


def _b64(a: np.ndarray) -> str:
    import base64

    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _unb64(text: str, dtype, shape) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(shape).copy()


class RunningMoments(RunningStats):
    """:class:`RunningStats` plus the full (C, C) matrix of centered second moments, mergeable the same way
    (Chan et al.: ``M2 = M2_a + M2_b + outer(d, d) * n_a * n_b / n``): what PHI-S needs, per cache shard.

    The product of each chunk's centered rows runs in float32 (a (N, C) x (N, C) matmul is the write task's
    largest cost), every merge in float64; stored as the float32 upper triangle in base64 (ViT-B, C = 768:
    1.2 MB per shard)."""

    def __init__(
        self,
        count: float = 0.0,
        mean: ArrayLike | None = None,
        m2: ArrayLike | None = None,
        cov_m2: ArrayLike | None = None,
    ) -> None:
        super().__init__(count, mean, m2)
        self._cov = None if cov_m2 is None else np.asarray(cov_m2, np.float64)

    @classmethod
    def _chunk(cls, x: np.ndarray) -> RunningMoments:
        mean = x.mean(0)
        c = (x - mean).astype(np.float32)
        cov = (c.T @ c).astype(np.float64)
        return RunningMoments(len(x), mean, np.diag(cov).copy(), cov)

    def merge(self, other: RunningStats) -> RunningMoments:
        if other.count == 0:
            return self
        if not isinstance(other, RunningMoments) or other._cov is None:
            raise ValueError("cannot merge per-channel statistics into second moments (a shard written without them?)")
        if self.count == 0:
            super().merge(other)
            self._cov = other._cov.copy()
            return self
        n_a, n_b = self.count, other.count
        delta = other.mean - self.mean
        self._cov = self.cov_m2 + other._cov + np.outer(delta, delta) * (n_a * n_b / (n_a + n_b))
        super().merge(other)
        return self

    @property
    def cov_m2(self) -> np.ndarray:
        """Sum of outer products of deviations from the mean, (C, C) float64."""
        if self._cov is None:
            raise ValueError("RunningMoments: no data")
        return self._cov

    @property
    def cov(self) -> np.ndarray:
        """Population covariance (ddof=0), (C, C) float64."""
        return self.cov_m2 / self.count

    def to_dict(self) -> dict:
        d = super().to_dict()
        if self._cov is not None:
            iu = np.triu_indices(len(self._cov))
            d["cov_m2_triu_f32"] = _b64(self._cov[iu].astype(np.float32))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunningMoments:
        cov = None
        if d.get("cov_m2_triu_f32") is not None:
            C = len(d["mean"])
            iu = np.triu_indices(C)
            cov = np.zeros((C, C))
            cov[iu] = _unb64(d["cov_m2_triu_f32"], np.float32, (len(iu[0]),))
            cov = cov + np.triu(cov, 1).T
        elif d.get("mean") is not None:
            raise ValueError(
                "these statistics hold no second moments (the cache predates them): PHI-S needs a cache "
                "written with them"
            )
        return cls(d["count"], d.get("mean"), d.get("m2"), cov)


def _paley(q: int) -> np.ndarray:
    """Paley construction I: a Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    residues = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in residues else -1 for i in range(1, q)])
    Q = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    H = np.ones((q + 1, q + 1), dtype=np.int64)
    H[1:, 0] = -1
    H[1:, 1:] = Q + np.eye(q, dtype=np.int64)
    return H


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def _hadamard_int(n: int) -> np.ndarray | None:
    if n == 1:
        return np.ones((1, 1), dtype=np.int64)
    if n == 2:
        return np.array([[1, 1], [1, -1]], dtype=np.int64)
    if n % 4:
        return None
    if _is_prime(n - 1) and (n - 1) % 4 == 3:
        return _paley(n - 1)
    for a in range(2, n // 2 + 1):  # a Kronecker product of two constructible orders (Sylvester is a = 2)
        if n % a == 0:
            A = _hadamard_int(a)
            if A is not None:
                B = _hadamard_int(n // a)
                if B is not None:
                    return np.kron(A, B)
    return None


def hadamard(n: int) -> np.ndarray:
    """An orthonormal Hadamard matrix of order ``n`` (entries +-1/sqrt(n)), float64: Sylvester, Paley I, and
    Kronecker products of them. That covers every width in the registry (384 = 12 x 32, 768, 1152 = 12 x 24 x 4,
    1280 = 20 x 64, powers of two); a width none of them builds raises ValueError."""
    H = _hadamard_int(int(n))
    if H is None:
        raise ValueError(
            f"no Hadamard matrix of order {n} from the Sylvester and Paley constructions; "
            "use standardize=channel for this teacher"
        )
    return H.astype(np.float64) / np.sqrt(n)


@dataclass
class PhiS:
    """PHI-S (arXiv:2410.01680): ``y = H U^T (x - mean) / scale``. ``U`` holds the covariance's eigenvectors, so
    ``U^T`` decorrelates; the Hadamard rotation ``H`` then spreads the variance evenly over every dimension,
    each getting the mean eigenvalue, and one scalar ``scale = sqrt(trace(cov) / C)`` makes it 1. It is
    an orthogonal map times a scalar, so it keeps the teacher's geometry (angles, relative distances), unlike
    per-channel standardization. ``rotation`` is ``H U^T`` (C, C); the inverse is ``x = scale * y R + mean``
    (``R`` orthogonal), what the exported student's adapters apply."""

    mean: np.ndarray
    rotation: np.ndarray
    scale: float

    @classmethod
    def fit(cls, mean: ArrayLike, cov: ArrayLike) -> PhiS:
        cov = np.asarray(cov, np.float64)
        C = len(cov)
        eigval, U = np.linalg.eigh((cov + cov.T) / 2)
        scale = float(np.sqrt(max(eigval.clip(min=0).sum() / C, 1e-12)))
        return cls(np.asarray(mean, np.float64), hadamard(C) @ U.T, scale)

    def to_dict(self) -> dict:
        C = len(self.mean)
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale,
            "rotation_f64": _b64(self.rotation.astype(np.float64)),
            "dim": C,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PhiS:
        C = int(d["dim"])
        return cls(np.asarray(d["mean"], np.float64), _unb64(d["rotation_f64"], np.float64, (C, C)), float(d["scale"]))


@dataclass
class TargetStats:
    """Per-channel mean/std of one teacher's features and summary (None when it has none)."""

    features_mean: list[float]
    features_std: list[float]
    summary_mean: list[float] | None = None
    summary_std: list[float] | None = None
    eps: float = 1e-6
    # standardize=phis: the PHI-S maps (features, summary) replace the per-channel ones
    phis_features: PhiS | None = None
    phis_summary: PhiS | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # (key, device, dtype) -> tensor

    @classmethod
    def from_dict(cls, d: dict) -> TargetStats:
        """From a manifest's ``stats`` entry: ``{"features": {"mean", "std"}, "summary": {...}?}`` (extra keys
        ignored)."""
        s = d.get("summary")
        phis = d.get("phis") or {}
        return cls(
            list(d["features"]["mean"]),
            list(d["features"]["std"]),
            list(s["mean"]) if s else None,
            list(s["std"]) if s else None,
            phis_features=PhiS.from_dict(phis["features"]) if phis.get("features") else None,
            phis_summary=PhiS.from_dict(phis["summary"]) if phis.get("summary") else None,
        )

    @classmethod
    def from_running(cls, features: RunningStats, summary: RunningStats | None = None) -> TargetStats:
        return cls(
            features.mean.tolist(),
            features.std.tolist(),
            None if summary is None else summary.mean.tolist(),
            None if summary is None else summary.std.tolist(),
        )

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"features": {"mean": list(self.features_mean), "std": list(self.features_std)}}
        if self.summary_mean is not None and self.summary_std is not None:
            d["summary"] = {"mean": list(self.summary_mean), "std": list(self.summary_std)}
        if self.phis_features is not None:
            d["phis"] = {
                "features": self.phis_features.to_dict(),
                **({"summary": self.phis_summary.to_dict()} if self.phis_summary is not None else {}),
            }
        return d

    @property
    def standardize(self) -> str:
        return "phis" if self.phis_features is not None else "channel"

    @classmethod
    def phis_from_moments(cls, features: RunningMoments, summary: RunningMoments | None = None) -> TargetStats:
        """Per-channel moments kept for reference; the PHI-S maps do the standardization."""
        st = cls.from_running(features, summary)
        st.phis_features = PhiS.fit(features.mean, features.cov)
        st.phis_summary = PhiS.fit(summary.mean, summary.cov) if summary is not None else None
        return st

    def _t(self, key: str, like: torch.Tensor) -> torch.Tensor:
        k = (key, like.device, like.dtype)
        traced = tracing()
        if k not in self._cache or traced:  # built once per device/dtype, not every step (never cached from a trace)
            if key.startswith("phis_"):  # phis_features.mean / .rotation / .scale
                which, part = key[len("phis_") :].split(".")
                p = getattr(self, f"phis_{which}")
                t = torch.as_tensor(np.asarray(getattr(p, part), np.float64)).to(like.device, like.dtype)
                if not traced:
                    self._cache[k] = t
                return t
            values = getattr(self, key)
            if values is None:
                raise ValueError(f"these statistics have no {key} (the teacher has no summary)")
            t = torch.as_tensor(values, dtype=torch.float64)
            t = (t + self.eps if key.endswith("std") else t).to(like.device, like.dtype)
            if traced:
                return t
            self._cache[k] = t
        return self._cache[k]

    def _phis(self, which: str, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        mean, rot, scale = (self._t(f"phis_{which}.{p}", x) for p in ("mean", "rotation", "scale"))
        if inverse:
            return (x * scale) @ rot + mean  # rot is orthogonal: its inverse is its transpose
        return ((x - mean) @ rot.T) / scale

    def normalize_features(self, x_BHWC: torch.Tensor) -> torch.Tensor:
        if self.phis_features is not None:
            return self._phis("features", x_BHWC, False)
        return (x_BHWC - self._t("features_mean", x_BHWC)) / self._t("features_std", x_BHWC)

    def denormalize_features(self, x_BHWC: torch.Tensor) -> torch.Tensor:
        if self.phis_features is not None:
            return self._phis("features", x_BHWC, True)
        return x_BHWC * self._t("features_std", x_BHWC) + self._t("features_mean", x_BHWC)

    def normalize_summary(self, x_BD: torch.Tensor) -> torch.Tensor:
        if self.phis_summary is not None:
            return self._phis("summary", x_BD, False)
        return (x_BD - self._t("summary_mean", x_BD)) / self._t("summary_std", x_BD)

    def denormalize_summary(self, x_BD: torch.Tensor) -> torch.Tensor:
        if self.phis_summary is not None:
            return self._phis("summary", x_BD, True)
        return x_BD * self._t("summary_std", x_BD) + self._t("summary_mean", x_BD)

    def normalize(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"summary"?: (B, D), "features": (B, H, W, C)} in the teacher's space -> standardized (other keys pass
        through)."""
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
