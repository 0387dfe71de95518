"""NVIDIA RADIO's module name ``radio.input_conditioner``, for scripts written against RADIO.

``InputConditioner(input_scale, norm_mean, norm_std, dtype=None)`` has RADIO's signature and arithmetic:
``(x - mean / input_scale) / (std / input_scale)``, cast to ``dtype`` when given (RADIO's example loader builds
one per baseline model, e.g. ``InputConditioner(1.0, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)``).
``get_default_conditioner()`` is RADIO's (OpenAI CLIP's mean and std). A radio student's own conditioner is what
``model.make_preprocessor_external()`` returns (its mean/std: ``model.config.mean``/``std``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["InputConditioner", "get_default_conditioner"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class InputConditioner(nn.Module):
    def __init__(
        self,
        input_scale: float,
        norm_mean: Sequence[float] | torch.Tensor,
        norm_std: Sequence[float] | torch.Tensor,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.norm_mean: torch.Tensor
        self.norm_std: torch.Tensor
        self.register_buffer("norm_mean", _column(norm_mean) / input_scale)
        self.register_buffer("norm_std", _column(norm_std) / input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x - self.norm_mean) / self.norm_std
        return y if self.dtype is None else y.to(self.dtype)

    def backward(self, x: torch.Tensor) -> torch.Tensor:  # RADIO's name for the inverse (not autograd's)
        y = x * self.norm_std + self.norm_mean
        return y if self.dtype is None else y.to(self.dtype)


def get_default_conditioner() -> InputConditioner:
    return InputConditioner(1.0, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def _column(v: Sequence[float] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1, 1)
