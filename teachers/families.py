"""How each model family is loaded from a checkpoint directory and which outputs it gives.

A family knows its transformers class, the ``model_type`` values a checkpoint of it may carry, and
which tensors are its summary and its features. Everything else about a teacher (preprocessing sizes,
mean/std, resample filter) is read from the checkpoint's own image-processor config, so the facts travel
with the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Family", "FAMILIES"]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json model_type values accepted
    load: Callable  # (source, revision, torch_dtype) -> nn.Module
    forward: Callable  # (model, pixel_values) -> (summary_BD | None, tokens_BLC or features_BHWC)
    output: str  # human-readable: which layer / token / norm
    has_summary: bool


def _clip_load(source, revision, dtype):
    from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPConfig.from_pretrained(source, revision=revision) if _model_type(source, revision) == "clip" else CLIPVisionConfig.from_pretrained(source, revision=revision)
    vcfg = cfg.vision_config if hasattr(cfg, "vision_config") else cfg
    # transformers does not carry the top-level projection_dim into the vision config (ViT-L/14: 768).
    vcfg.projection_dim = getattr(cfg, "projection_dim", vcfg.projection_dim)
    return CLIPVisionModelWithProjection.from_pretrained(source, revision=revision, config=vcfg, dtype=dtype, use_safetensors=True)


def _clip_forward(model, x):
    out = model(pixel_values=x, interpolate_pos_encoding=True)  # identity at the native size
    # Summary: the projected image embedding, the vector CLIP aligns with text.
    # Features: patch tokens of the last encoder layer (last_hidden_state minus CLS). HF's
    # post_layernorm is applied only to the pooled CLS on its way to the projection; CLIP's training
    # never shaped it for patch tokens, so the residual stream is taken as is (the cache's per-channel
    # standardization takes care of scale).
    return out.image_embeds, out.last_hidden_state[:, 1:]


def _dinov2_load(source, revision, dtype):
    from transformers import AutoConfig, Dinov2Model, Dinov2WithRegistersModel

    cfg = AutoConfig.from_pretrained(source, revision=revision)
    cls = Dinov2WithRegistersModel if cfg.model_type == "dinov2_with_registers" else Dinov2Model
    return cls.from_pretrained(source, revision=revision, dtype=dtype, use_safetensors=True)


def _dinov2_forward(model, x):
    out = model(pixel_values=x)
    # last_hidden_state is after DINOv2's final LayerNorm: CLS is the summary, patch tokens the
    # features; register tokens (with-registers variants) sit between them and are dropped.
    n_reg = getattr(model.config, "num_register_tokens", 0) or 0
    h = out.last_hidden_state
    return h[:, 0], h[:, 1 + n_reg :]


def _sam_load(source, revision, dtype):
    from transformers import SamVisionModel

    return SamVisionModel.from_pretrained(source, revision=revision, dtype=dtype, use_safetensors=True)


def _sam_forward(model, x):
    # The image embedding after SAM's neck: (B, 256, 64, 64) at 1024 px. SAM has no summary.
    return None, model(pixel_values=x).last_hidden_state.permute(0, 2, 3, 1)


def _siglip_load(source, revision, dtype):
    from transformers import SiglipVisionModel

    return SiglipVisionModel.from_pretrained(source, revision=revision, dtype=dtype, use_safetensors=True)


def _siglip_forward(model, x):
    out = model(pixel_values=x)
    # pooler_output is SigLIP's attention-pooling head (the image embedding); last_hidden_state is
    # after post_layernorm and has no CLS, so all tokens are patches.
    return out.pooler_output, out.last_hidden_state


def _model_type(source, revision) -> str:
    from transformers import PretrainedConfig

    d, _ = PretrainedConfig.get_config_dict(source, revision=revision)
    return d.get("model_type", "")


FAMILIES: dict[str, Family] = {
    "clip": Family("clip", ("clip", "clip_vision_model"), _clip_load, _clip_forward, "summary=image_embeds (projected); features=last_hidden_state[:, 1:] (last layer, before post_layernorm)", True),
    "dinov2": Family("dinov2", ("dinov2", "dinov2_with_registers"), _dinov2_load, _dinov2_forward, "summary=last_hidden_state[:, 0] (CLS after final norm); features=patch tokens after final norm, registers excluded", True),
    "sam": Family("sam", ("sam", "sam_vision_model"), _sam_load, _sam_forward, "features=vision_encoder neck output (image embedding)", False),
    "siglip": Family("siglip", ("siglip", "siglip_vision_model"), _siglip_load, _siglip_forward, "summary=pooler_output (attention pool); features=last_hidden_state (after post_layernorm)", True),
}


def model_type_of(source: str, revision: str | None) -> str:
    return _model_type(source, revision)


def to_grid(tokens_or_map: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(B, L, C) tokens -> (B, h, w, C); a (B, h, w, C) map passes through."""
    if tokens_or_map.ndim == 4:
        return tokens_or_map
    B, L, C = tokens_or_map.shape
    if L != grid_hw[0] * grid_hw[1]:
        raise RuntimeError(f"teacher returned {L} tokens, expected a {grid_hw[0]}x{grid_hw[1]} grid")
    return tokens_or_map.reshape(B, grid_hw[0], grid_hw[1], C)
