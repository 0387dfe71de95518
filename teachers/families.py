"""How each model family is loaded from a checkpoint directory and which outputs it gives.

A family knows its transformers class, the ``model_type`` values a checkpoint of it may carry, and
which tensors are its summary and its features. Everything else about a teacher (preprocessing sizes,
mean/std, resample filter) is read from the checkpoint's own image-processor config, so the facts travel
with the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    # How the official processor resizes: "pillow" (a PIL-backend processor: Pillow's 8-bit resize);
    # "torchvision" (a torchvision-only processor: antialiased bilinear on the uint8 image, then rescale);
    # "torchvision-float" (rescale first, then antialiased bilinear in float32: DINOv3's order).
    resize: str = "pillow"
    stride: Callable = lambda cfg: cfg.patch_size  # input pixels per feature cell
    dims: Callable = lambda cfg: (cfg.hidden_size, cfg.hidden_size)  # (summary_dim or None, feature_dim)


def _checked(cls, source, revision, dtype, **kw):
    """``cls.from_pretrained`` that refuses a checkpoint missing any of the model's weights: transformers would
    initialize them at random and carry on (e.g. a vision tower asked of a checkpoint stored under another prefix)."""
    model, info = cls.from_pretrained(
        source, revision=revision, dtype=dtype, use_safetensors=True, output_loading_info=True, **kw
    )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"{source}: {cls.__name__} found no weights for {len(missing)} parameters (e.g. {missing[0]}); "
            "this checkpoint does not hold this architecture"
        )
    return model


def _clip_load(source, revision, dtype):
    from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = (
        CLIPConfig.from_pretrained(source, revision=revision)
        if _model_type(source, revision) == "clip"
        else CLIPVisionConfig.from_pretrained(source, revision=revision)
    )
    vcfg = cfg.vision_config if hasattr(cfg, "vision_config") else cfg
    # transformers does not carry the top-level projection_dim into the vision config (ViT-L/14: 768).
    vcfg.projection_dim = getattr(cfg, "projection_dim", vcfg.projection_dim)
    return _checked(CLIPVisionModelWithProjection, source, revision, dtype, config=vcfg)


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
    return _checked(cls, source, revision, dtype)


def _dinov2_forward(model, x):
    out = model(pixel_values=x)
    # last_hidden_state is after DINOv2's final LayerNorm: CLS is the summary, patch tokens the
    # features; register tokens (with-registers variants) sit between them and are dropped.
    n_reg = getattr(model.config, "num_register_tokens", 0) or 0
    h = out.last_hidden_state
    return h[:, 0], h[:, 1 + n_reg :]


def _sam_load(source, revision, dtype):
    from transformers import SamVisionModel

    return _checked(SamVisionModel, source, revision, dtype)


def _sam_forward(model, x):
    # The image embedding after SAM's neck: (B, 256, 64, 64) at 1024 px. SAM has no summary.
    return None, model(pixel_values=x).last_hidden_state.permute(0, 2, 3, 1)


def _siglip_load(source, revision, dtype):
    from transformers import SiglipVisionModel

    return _checked(SiglipVisionModel, source, revision, dtype)


def _siglip_forward(model, x):
    out = model(pixel_values=x)
    # pooler_output is SigLIP's attention-pooling head (the image embedding); last_hidden_state is
    # after post_layernorm and has no CLS, so all tokens are patches.
    return out.pooler_output, out.last_hidden_state


def _dinov3_load(source, revision, dtype):
    from transformers import DINOv3ViTModel

    return _checked(DINOv3ViTModel, source, revision, dtype)


def _dinov3_forward(model, x):
    out = model(pixel_values=x)
    # As DINOv2: after the final norm, CLS (pooler_output) is the summary; the register tokens between CLS and
    # the patches are dropped. DINOv3's RoPE takes any input size; its processor resizes the whole view to 224^2.
    n_reg = getattr(model.config, "num_register_tokens", 0) or 0
    return out.pooler_output, out.last_hidden_state[:, 1 + n_reg :]


def _sam2_load(source, revision, dtype):
    from transformers import Sam2Model, Sam2VisionModel

    if (
        _model_type(source, revision) == "sam2"
    ):  # the published checkpoints: the whole model, vision tower under vision_encoder
        return _checked(Sam2Model, source, revision, dtype).vision_encoder
    return _checked(Sam2VisionModel, source, revision, dtype)


def _sam2_forward(model, x):
    # SAM2's FPN neck gives three levels, finest first (strides 4, 8, 16 of the Hiera trunk). The stride-16 level,
    # (B, 256, 64, 64) at 1024 px, is SAM2's image embedding: what the mask decoder and memory attention read
    # (the two finer levels only feed the decoder's upsampling skips). It is SAM's grid and width, so it is
    # the target; Sam2Model adds a learned constant ("no memory") per channel, which standardization removes.
    return None, model(pixel_values=x).fpn_hidden_states[-1].permute(0, 2, 3, 1)


def _sam3_load(source, revision, dtype):
    from transformers import Sam3Model, Sam3VisionModel

    if (
        _model_type(source, revision) == "sam3"
    ):  # the published checkpoint: detector, tracker and text encoder around it
        return _checked(Sam3Model, source, revision, dtype).vision_encoder
    return _checked(Sam3VisionModel, source, revision, dtype)


def _sam3_forward(model, x):
    # SAM3's neck turns the ViT's 72x72 grid (1008 px, patch 14) into four levels at scales 4, 2, 1, 0.5; the
    # scale-1 level (B, 256, 72, 72) is the one on the ViT's own grid, SAM3's counterpart of SAM's embedding.
    levels = model(pixel_values=x).fpn_hidden_states
    i = list(model.config.scale_factors).index(1.0)
    return None, levels[i].permute(0, 2, 3, 1)


def _sam3_trunk_forward(model, x):
    # The ViT trunk's output (B, 72, 72, 1024) at 1008 px: what SAM3's neck derives all four FPN levels from, so a
    # student that predicts it can stand in for SAM3's whole vision encoder (C-RADIOv4's SAM3 adaptor; radio/sam3.py).
    out = model.backbone(pixel_values=x).last_hidden_state
    p = model.config.backbone_config.patch_size
    return None, out.reshape(x.shape[0], x.shape[-2] // p, x.shape[-1] // p, -1)


def _sam2_stride(cfg) -> int:
    b = cfg.backbone_config
    return int(b.patch_stride[0]) * 2 ** (cfg.num_feature_levels - 1)  # stride-4 trunk start, x2 per pooled level


def _model_type(source, revision) -> str:
    from transformers import PretrainedConfig

    d, _ = PretrainedConfig.get_config_dict(source, revision=revision)
    return d.get("model_type", "")


FAMILIES: dict[str, Family] = {
    "clip": Family(
        "clip",
        ("clip", "clip_vision_model"),
        _clip_load,
        _clip_forward,
        "summary=image_embeds (projected); features=last_hidden_state[:, 1:] (last layer, before post_layernorm)",
        True,
        dims=lambda cfg: (cfg.projection_dim, cfg.hidden_size),
    ),
    "dinov2": Family(
        "dinov2",
        ("dinov2", "dinov2_with_registers"),
        _dinov2_load,
        _dinov2_forward,
        "summary=last_hidden_state[:, 0] (CLS after final norm); features=patch tokens after final norm, "
        "registers excluded",
        True,
    ),
    "sam": Family(
        "sam",
        ("sam", "sam_vision_model"),
        _sam_load,
        _sam_forward,
        "features=vision_encoder neck output (image embedding)",
        False,
        dims=lambda cfg: (None, cfg.output_channels),
    ),
    "siglip": Family(
        "siglip",
        ("siglip", "siglip_vision_model"),
        _siglip_load,
        _siglip_forward,
        "summary=pooler_output (attention pool); features=last_hidden_state (after post_layernorm)",
        True,
    ),
    "dinov3": Family(
        "dinov3",
        ("dinov3_vit",),
        _dinov3_load,
        _dinov3_forward,
        "summary=pooler_output (CLS after final norm); features=patch tokens after final norm, registers excluded",
        True,
        resize="torchvision-float",
    ),
    "sam2": Family(
        "sam2",
        ("sam2", "sam2_vision_model"),
        _sam2_load,
        _sam2_forward,
        "features=FPN neck level at stride 16 (the image embedding)",
        False,
        resize="torchvision",
        stride=_sam2_stride,
        dims=lambda cfg: (None, cfg.fpn_hidden_size),
    ),
    "sam3": Family(
        "sam3",
        ("sam3", "sam3_vision_model"),
        _sam3_load,
        _sam3_forward,
        "features=FPN neck level at scale 1 (the ViT's own grid)",
        False,
        resize="torchvision",
        stride=lambda cfg: cfg.backbone_config.patch_size,
        dims=lambda cfg: (None, cfg.fpn_hidden_size),
    ),
    "sam3-trunk": Family(
        "sam3-trunk",
        ("sam3", "sam3_vision_model"),
        _sam3_load,
        _sam3_trunk_forward,
        "features=ViT trunk output before the FPN neck (what the neck derives every level from)",
        False,
        resize="torchvision",
        stride=lambda cfg: cfg.backbone_config.patch_size,
        dims=lambda cfg: (None, cfg.backbone_config.hidden_size),
    ),
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
