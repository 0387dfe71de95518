"""Tiny presets: the real transformers architectures at toy sizes, random weights from a fixed seed.

They are written with ``save_pretrained`` (weights as safetensors, plus the image-processor config) to a
local directory, then loaded back by exactly the code path real checkpoints take. Their preprocessing is
deliberately non-trivial (resize then crop, longest side then pad) so parity tests mean something.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

__all__ = ["TINY_BUILDERS", "radio_home", "materialize_tiny"]

_TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
_IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def _init(model: torch.nn.Module) -> torch.nn.Module:
    """Re-initialize every parameter from the seeded generator.

    transformers leaves some weights (e.g. SAM's neck convolutions) as uninitialized memory, which
    is neither reproducible nor usable (outputs ~1e-21). Matrices get N(0, 1/fan_in), so activations stay
    O(1); 1-D weights (norms) are ones, biases zeros.
    """
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.ndim >= 2:
                p.normal_(0.0, (1.0 / max(1, p[0].numel())) ** 0.5)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    return model


def _tiny_clip(d: str):
    import transformers as T

    cfg = T.CLIPConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8), text_config=_TEXT, projection_dim=24)
    _init(T.CLIPModel(cfg)).save_pretrained(d)
    T.CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(d)


def _tiny_dinov2(d: str):
    import transformers as T

    cfg = T.Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=28, patch_size=4, num_register_tokens=2)
    _init(T.Dinov2WithRegistersModel(cfg)).save_pretrained(d)
    T.BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, **_IMAGENET).save_pretrained(d)


def _tiny_sam(d: str):
    import transformers as T

    cfg = T.SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=8),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16),
    )
    _init(T.SamModel(cfg)).save_pretrained(d)
    T.SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16}).save_pretrained(d)


def _tiny_siglip(d: str):
    import transformers as T

    cfg = T.SiglipConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8), text_config=_TEXT)
    _init(T.SiglipModel(cfg)).save_pretrained(d)
    T.SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(d)


TINY_BUILDERS = {"tiny-clip": _tiny_clip, "tiny-dinov2": _tiny_dinov2, "tiny-sam": _tiny_sam, "tiny-siglip": _tiny_siglip}


def radio_home() -> Path:
    return Path(os.environ.get("RADIO_HOME") or Path.home() / ".cache" / "radio")


def materialize_tiny(name: str, seed: int = 0) -> str:
    """The local directory of tiny preset ``name``, written once (atomically) if missing."""
    target = radio_home() / "teachers" / f"{name}-seed{seed}"
    if (target / "model.safetensors").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                TINY_BUILDERS[name](str(tmp))
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        try:
            os.rename(tmp, target)  # atomic; a concurrent writer that lost the race cleans up below
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
