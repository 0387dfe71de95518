"""How targets are stored: float32, float16, or int8 with a per-row, per-channel affine scale.

int8 layout (chosen over a per-position scale; measured in BENCHMARKS.md): for each row (one view) and
channel ``c`` of a (H, W, C) feature map, ``lo_c`` and ``hi_c`` over the map's H x W positions define 256
levels, ``x ~= q * scale_c + lo_c`` with ``scale_c = (hi_c - lo_c) / 255`` and ``q`` an 8-bit code. The
codes are stored unsigned (uint8): Parquet widens 8-bit integers to INT32, and byte-stream-split then turns
the three high bytes into runs of zeros that zstd removes (a signed code would leave sign-extension bytes
behind: 1.6x the size, measured). ViT features carry a few
channels with large offsets or ranges ("massive activations"); a per-position scale lets those channels
swamp every other channel of the same position, a per-channel scale does not. The scales and offsets are
float32 (2 x 4 x C bytes per row, ~4 % of a 14x14x768 map). Summaries stay float16 under int8 (1-2 KB a row).

Every function takes and returns torch tensors or numpy arrays on any device; decoding runs where the
targets are used (on the training device).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "TARGET_DTYPES",
    "MIN_COS",
    "encode_targets",
    "decode_features",
    "decode_summary",
    "feature_columns",
    "grid_suffix",
    "bytes_per_row",
]

TARGET_DTYPES = ("float16", "float32", "int8")
# The worst per-position cosine to float32 that ``radio cache verify`` accepts for each codec (a stored
# float32 or float16 row is compared at 0.999, as before; int8's bound, measured on real-size random-weight
# teachers and the tiny presets, is >= 0.9990, so 0.995 leaves a margin for recomputation on other hardware).
MIN_COS = {"float32": 0.999, "float16": 0.999, "int8": 0.995}

_TORCH = {"float16": torch.float16, "float32": torch.float32}


def grid_suffix(grid: tuple[int, int] | None) -> str:
    """The column suffix of a feature map stored at an extra grid (``@8x8``); "" for the main grid (None)."""
    return "" if grid is None else f"@{int(grid[0])}x{int(grid[1])}"


def feature_columns(dtype: str, grid: tuple[int, int] | None = None) -> tuple[str, ...]:
    """The Parquet columns that hold a teacher's feature map in ``dtype`` (at an extra ``grid``, suffixed)."""
    names = ("features", "features_scale", "features_offset") if dtype == "int8" else ("features",)
    return tuple(n + grid_suffix(grid) for n in names)


def _check(dtype: str) -> None:
    if dtype not in TARGET_DTYPES:
        raise ValueError(f"target dtype {dtype!r} is not one of {list(TARGET_DTYPES)}")


def encode_targets(summary_BD: torch.Tensor | None, feats_BHWC: torch.Tensor, dtype: str) -> dict[str, np.ndarray]:
    """float targets (any device) -> the numpy columns stored for them: ``summary`` (if any), ``features``
    and, for int8, the uint8 codes as ``features`` plus ``features_scale`` and ``features_offset`` (B, C) float32."""
    _check(dtype)
    out = {}
    if summary_BD is not None:
        out["summary"] = summary_BD.to(_TORCH.get(dtype, torch.float16)).cpu().numpy()
    if dtype != "int8":
        out["features"] = feats_BHWC.to(_TORCH[dtype]).cpu().numpy()
        return out
    x = feats_BHWC.float()
    lo, hi = x.amin(dim=(1, 2)), x.amax(dim=(1, 2))  # (B, C)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant channel decodes to lo exactly
    q = torch.round((x - lo[:, None, None]) / scale[:, None, None]).clamp_(0, 255)
    out["features"] = q.to(torch.uint8).cpu().numpy()
    out["features_scale"], out["features_offset"] = scale.cpu().numpy(), lo.cpu().numpy()
    return out


def _t(x, device=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = np.ascontiguousarray(x)
        x = torch.from_numpy(x if x.flags.writeable else x.copy())  # Ray and Arrow hand out read-only buffers
    t = x
    return t if device is None else t.to(device, non_blocking=True)


def decode_features(cols: dict, device: str | torch.device | None = None) -> torch.Tensor:
    """Stored feature columns (numpy or torch) -> float32 (B, H, W, C) on ``device`` (default: where they are)."""
    f = _t(cols["features"], device)
    if "features_scale" not in cols:
        return f.float()
    scale, offset = _t(cols["features_scale"], device).float(), _t(cols["features_offset"], device).float()
    return f.float() * scale[:, None, None] + offset[:, None, None]


def decode_summary(cols: dict, device: str | torch.device | None = None) -> torch.Tensor | None:
    return _t(cols["summary"], device).float() if cols.get("summary") is not None else None


def bytes_per_row(grid_hw: tuple[int, int], feature_dim: int, summary_dim: int | None, dtype: str) -> int:
    """Uncompressed bytes of one stored row's targets (keys excluded)."""
    _check(dtype)
    cells = grid_hw[0] * grid_hw[1] * feature_dim
    if dtype == "int8":
        return cells + 8 * feature_dim + 2 * (summary_dim or 0)
    width = 2 if dtype == "float16" else 4
    return width * (cells + (summary_dim or 0))
