"""NVlabs/RADIO's ``radio.input_conditioner``, for scripts written for RADIO.

``InputConditioner`` takes RADIO's arguments, ``(input_scale, norm_mean, norm_std, dtype=None)``, and
``isinstance(model.make_preprocessor_external(), InputConditioner)`` holds for a student's own conditioner, as
RADIO's examples test it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .model import InputConditioner as _StudentConditioner

__all__ = ["InputConditioner", "get_default_conditioner", "norm_t"]

norm_t = Sequence[float] | torch.Tensor

# RADIO's default conditioner: OpenAI CLIP's mean and std (timm's OPENAI_CLIP_MEAN / OPENAI_CLIP_STD)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _ConditionerType(type(_StudentConditioner)):
    # A student's conditioner (radio.model.InputConditioner) is one in RADIO's sense: (x - mean) / std.
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _StudentConditioner)


class InputConditioner(_StudentConditioner, metaclass=_ConditionerType):
    """RADIO's constructor: ``mean / input_scale`` and ``std / input_scale`` normalize [0, 1] images (B, 3, H, W)
    (``input_scale=255`` for a mean and std given in 0-255 units); ``dtype``: the output's dtype (None: the
    input's). ``backward`` undoes the normalization."""

    def __init__(
        self, input_scale: float, norm_mean: norm_t, norm_std: norm_t, dtype: torch.dtype | None = None
    ) -> None:
        mean = torch.as_tensor(norm_mean, dtype=torch.float64).flatten() / input_scale
        std = torch.as_tensor(norm_std, dtype=torch.float64).flatten() / input_scale
        super().__init__(mean.tolist(), std.tolist())
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y if self.dtype is None else y.to(self.dtype)

    def backward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (B, 3, H, W) -> [0, 1] images."""
        y = x * self.norm_std.to(x) + self.norm_mean.to(x)
        return y if self.dtype is None else y.to(self.dtype)


def get_default_conditioner() -> InputConditioner:
    """RADIO's default: CLIP's mean and std. A student's own is ``model.make_preprocessor_external()``."""
    return InputConditioner(1.0, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
