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

__all__ = [
    "TINY_BUILDERS",
    "REAL_ARCHITECTURES",
    "radio_home",
    "materialize_tiny",
    "save_random_teacher",
    "save_tiny_sam3_whole",
]

_TEXT = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=16,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)
_IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def _processor(name: str):
    """transformers' PIL image processor class ``name``: ``<name>Pil`` in transformers 5, ``<name>`` before."""
    import transformers as T

    return getattr(T, f"{name}Pil", None) or getattr(T, name)


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

    cfg = T.CLIPConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=_TEXT,
        projection_dim=24,
    )
    _init(T.CLIPModel(cfg)).save_pretrained(d)
    _processor("CLIPImageProcessor")(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(
        d
    )
    _tiny_tokenizer(d, _TEXT["max_position_embeddings"])


# The tiny text towers' words: prompt templates and the built-in sample classes (pipelines.samples.CLASSES; this
# package does not import radio). Any other word is [UNK]: zero-shot through a tiny teacher is a plumbing test.
_WORDS = (
    "a photo of the an image texture picture pattern . , landscape stripes checkerboard rings bubbles "
    "waves polygons fur bricks leaves"
).split()


def _tiny_tokenizer(d: str, max_length: int):
    """A word-level tokenizer for a tiny text tower (ids < its vocab_size; bos 0, eos = pad 1, as _TEXT says),
    saved like a published one so the real loading code (AutoTokenizer) reads it."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "<|startoftext|>": 0,
        "<|endoftext|>": 1,
        "[UNK]": 2,
        **{w: i + 3 for i, w in enumerate(dict.fromkeys(_WORDS))},
    }
    if len(vocab) > _TEXT["vocab_size"]:
        raise ValueError(
            f"tiny tokenizer: {len(vocab)} words exceed the tiny text tower's vocab_size {_TEXT['vocab_size']}"
        )
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="[UNK]",
        model_max_length=max_length,
    ).save_pretrained(d)


def _tiny_dinov2(d: str):
    import transformers as T

    cfg = T.Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=28,
        patch_size=4,
        num_register_tokens=2,
    )
    _init(T.Dinov2WithRegistersModel(cfg)).save_pretrained(d)
    _processor("BitImageProcessor")(
        size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, **_IMAGENET
    ).save_pretrained(d)


def _tiny_sam(d: str):
    import transformers as T

    cfg = T.SamConfig(
        vision_config=dict(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            window_size=4,
            global_attn_indexes=[1],
            mlp_dim=64,
            num_pos_feats=8,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16
        ),
    )
    _init(T.SamModel(cfg)).save_pretrained(d)
    _processor("SamImageProcessor")(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    ).save_pretrained(d)


def _tiny_siglip(d: str):
    import transformers as T

    cfg = T.SiglipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=_TEXT,
    )
    _init(T.SiglipModel(cfg)).save_pretrained(d)
    _processor("SiglipImageProcessor")(size={"height": 32, "width": 32}).save_pretrained(d)


def _tiny_siglip2(d: str):
    """SigLIP2's fixed-resolution checkpoints are SigLIP's architecture (model_type siglip) with their own
    processor config (bilinear resize, mean = std = 0.5); NaFlex variants are another model and not supported."""
    import transformers as T

    cfg = T.SiglipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=_TEXT,
    )
    _init(T.SiglipModel(cfg)).save_pretrained(d)
    _processor("SiglipImageProcessor")(size={"height": 32, "width": 32}, resample=2).save_pretrained(d)


def _write_processor(d: str, cls: str, **facts):
    """A torchvision-only processor's config (DINOv3, SAM2, SAM3), written as data: its class cannot be built
    without torchvision, and these keys are all the registry reads."""
    import json

    with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
        json.dump(
            {
                "image_processor_type": cls,
                "do_resize": True,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                **facts,
            },
            f,
            indent=2,
        )


def _tiny_dinov3(d: str):
    import transformers as T

    cfg = T.DINOv3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=4,
        num_register_tokens=2,
    )
    _init(T.DINOv3ViTModel(cfg)).save_pretrained(d)
    _write_processor(d, "DINOv3ViTImageProcessor", size={"height": 28, "width": 28}, resample=2, **_IMAGENET)


def _sam2_vision(T, hidden, blocks, heads, windows, global_blocks, background, image=1024, fpn=256):
    dims = [hidden * 2**i for i in range(4)]
    b = T.Sam2HieraDetConfig(
        hidden_size=hidden,
        num_attention_heads=heads[0],
        image_size=[image, image],
        patch_kernel_size=[7, 7],
        patch_stride=[4, 4],
        patch_padding=[3, 3],
        query_stride=[2, 2],
        window_positional_embedding_background_size=background,
        num_query_pool_stages=3,
        blocks_per_stage=blocks,
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=heads,
        window_size_per_stage=windows,
        global_attention_blocks=global_blocks,
    )
    g = image // 4
    return T.Sam2VisionConfig(
        backbone_config=b,
        backbone_channel_list=dims[::-1],
        backbone_feature_sizes=[[g, g], [g // 2, g // 2], [g // 4, g // 4]],
        fpn_hidden_size=fpn,
        fpn_top_down_levels=[2, 3],
        num_feature_levels=3,
    )


def _tiny_sam2(d: str):
    """The whole SAM2 model, as published checkpoints are (the registry loads its vision encoder out of it)."""
    import transformers as T

    vision = _sam2_vision(T, 16, [1, 1, 2, 1], [1, 1, 2, 2], [4, 4, 4, 2], [3], [4, 4], image=64, fpn=16)
    cfg = T.Sam2Config(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16
        ),
    )
    _init(T.Sam2Model(cfg)).save_pretrained(d)
    _write_processor(d, "Sam2ImageProcessor", size={"height": 64, "width": 64}, resample=2, **_IMAGENET)


def _sam3_vision(T, hidden, inter, layers, heads, image, window, global_attn, pretrain, fpn=256):
    v = T.Sam3ViTConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image,
        patch_size=14,
        window_size=window,
        global_attn_indexes=global_attn,
        pretrain_image_size=pretrain,
    )
    g = image // 14
    return T.Sam3VisionConfig(
        backbone_config=v, fpn_hidden_size=fpn, backbone_feature_sizes=[[4 * g, 4 * g], [2 * g, 2 * g], [g, g]]
    )


def _sam3_processor(d: str, size: int):
    _write_processor(
        d,
        "Sam3ImageProcessor",
        size={"height": size, "width": size},
        resample=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def _tiny_sam3(d: str):
    """SAM3's vision encoder alone (model_type sam3_vision_model). The published checkpoint is the whole SAM3:
    :func:`save_tiny_sam3_whole` writes that layout."""
    import transformers as T

    _init(T.Sam3VisionModel(_sam3_vision(T, 32, 64, 2, 2, 56, 2, [1], 28, fpn=16))).save_pretrained(d)
    _sam3_processor(d, 56)


def save_tiny_sam3_whole(d: str, seed: int = 0) -> str:
    """The whole SAM3 (model_type sam3: vision encoder, CLIP text encoder, geometry encoder, DETR encoder and decoder,
    mask decoder) at toy sizes, laid out as the published ``facebook/sam3`` checkpoint is: the registry's sam3 family
    loads ``Sam3Model`` and keeps its ``vision_encoder``. The vision tower has tiny-sam3's architecture but not its
    weights (the seeded init walks every parameter of the whole model): the teacher of exactly this vision encoder is
    ``create_teacher("tiny-sam3", source=d)`` (or ``tiny-sam3-trunk``). Returns ``d``."""
    import transformers as T

    small = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32)
    cfg = T.Sam3Config(
        vision_config=_sam3_vision(T, 32, 64, 2, 2, 56, 2, [1], 28, fpn=16),
        text_config=dict(model_type="clip_text_model", projection_dim=16, **_TEXT),
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=4, **small),
        mask_decoder_config=dict(hidden_size=16, num_attention_heads=2),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _init(T.Sam3Model(cfg)).save_pretrained(d)
    _sam3_processor(d, 56)
    return d


TINY_BUILDERS = {
    "tiny-clip": _tiny_clip,
    "tiny-dinov2": _tiny_dinov2,
    "tiny-sam": _tiny_sam,
    "tiny-siglip": _tiny_siglip,
    "tiny-siglip2": _tiny_siglip2,
    "tiny-dinov3": _tiny_dinov3,
    "tiny-sam2": _tiny_sam2,
    "tiny-sam3": _tiny_sam3,
}


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


# ---------------------------------------------------------------------------------------------
# Real-size architectures with random weights, for tests and benchmarks at real shapes (no download).
# Each registry entry's model config and image-processor config as published on the hub.

_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _clip_arch(hidden, layers, heads, inter, size, patch, proj):
    def build(T, shrink, depth=None):
        h, n, a, i = (32, 1, 2, 64) if shrink else (hidden, depth or layers, heads, inter)
        cfg = T.CLIPVisionConfig(
            hidden_size=h,
            intermediate_size=i,
            num_hidden_layers=n,
            num_attention_heads=a,
            image_size=size,
            patch_size=patch,
            projection_dim=proj,
        )
        proc = _processor("CLIPImageProcessor")(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=_CLIP_MEAN,
            image_std=_CLIP_STD,
        )
        return T.CLIPVisionModelWithProjection(cfg), proc

    return build


def _dinov2_arch(hidden, layers, heads, registers, swiglu=False):
    def build(T, shrink, depth=None):
        h, n, a = (32, 1, 2) if shrink else (hidden, depth or layers, heads)
        kw = dict(
            hidden_size=h,
            num_hidden_layers=n,
            num_attention_heads=a,
            mlp_ratio=4,
            image_size=518,
            patch_size=14,
            use_swiglu_ffn=swiglu,
        )
        cfg = T.Dinov2WithRegistersConfig(num_register_tokens=4, **kw) if registers else T.Dinov2Config(**kw)
        model = T.Dinov2WithRegistersModel(cfg) if registers else T.Dinov2Model(cfg)
        return model, _processor("BitImageProcessor")(
            size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, **_IMAGENET
        )

    return build


def _sam_arch(hidden, layers, heads, global_attn):
    def build(T, shrink, depth=None):
        h, n, a, g = (32, 1, 2, [0]) if shrink else (hidden, depth or layers, heads, global_attn)
        g = _globals(g, n)
        cfg = T.SamVisionConfig(
            hidden_size=h,
            num_hidden_layers=n,
            num_attention_heads=a,
            mlp_dim=4 * h,
            global_attn_indexes=g,
            output_channels=16 if shrink else 256,
            image_size=1024,
            patch_size=16,
            window_size=14,
        )
        proc = _processor("SamImageProcessor")(
            size={"longest_edge": 1024}, pad_size={"height": 1024, "width": 1024}, **_IMAGENET
        )
        return T.SamVisionModel(cfg), proc

    return build


def _siglip_arch(hidden, layers, heads, inter, size, patch):
    def build(T, shrink, depth=None):
        h, n, a, i = (32, 1, 2, 64) if shrink else (hidden, depth or layers, heads, inter)
        cfg = T.SiglipVisionConfig(
            hidden_size=h,
            intermediate_size=i,
            num_hidden_layers=n,
            num_attention_heads=a,
            image_size=size,
            patch_size=patch,
        )
        return T.SiglipVisionModel(cfg), _processor("SiglipImageProcessor")(size={"height": size, "width": size})

    return build


def _siglip2_arch(hidden, layers, heads, inter, size, patch):
    def build(T, shrink, depth=None):
        h, n, a, i = (32, 1, 2, 64) if shrink else (hidden, depth or layers, heads, inter)
        cfg = T.SiglipVisionConfig(
            hidden_size=h,
            intermediate_size=i,
            num_hidden_layers=n,
            num_attention_heads=a,
            image_size=size,
            patch_size=patch,
        )
        return T.SiglipVisionModel(cfg), _processor("SiglipImageProcessor")(
            size={"height": size, "width": size}, resample=2
        )

    return build


def _globals(indexes: list[int], depth: int) -> list[int]:
    """Global-attention blocks of a model cut to ``depth`` blocks: those that remain, else the last one."""
    return [i for i in indexes if i < depth] or [depth - 1]


class _JsonProcessor:
    """Stands in for a torchvision-only processor class when writing its config."""

    def __init__(self, cls, **facts):
        self.cls, self.facts = cls, facts

    def save_pretrained(self, d):
        _write_processor(d, self.cls, **self.facts)


def _dinov3_arch(hidden, layers, heads, inter, gated=False, qv_bias=True):
    """DINOv3's ViTs as transformers ports them. ViT-H+ and ViT-7B have a SwiGLU FFN (``use_gated_mlp``; its width is
    DINOv3's ``int(ffn_ratio * dim * 2 / 3)`` rounded up to the alignment: 5120 and 8192); ViT-7B has no query or value
    bias (``qkv_bias=False`` in dinov3/hub/backbones.py; the key bias is masked to zero in every size)."""

    def build(T, shrink, depth=None):
        h, n, a, i = (32, 1, 2, 64) if shrink else (hidden, depth or layers, heads, inter)
        cfg = T.DINOv3ViTConfig(
            hidden_size=h,
            intermediate_size=i,
            num_hidden_layers=n,
            num_attention_heads=a,
            image_size=224,
            patch_size=16,
            num_register_tokens=4,
            use_gated_mlp=gated,
            query_bias=qv_bias,
            value_bias=qv_bias,
            layerscale_value=1.0,
        )
        return T.DINOv3ViTModel(cfg), _JsonProcessor(
            "DINOv3ViTImageProcessor", size={"height": 224, "width": 224}, resample=2, **_IMAGENET
        )

    return build


def _sam2_arch(hidden, blocks, heads, windows, global_blocks, background):
    def build(T, shrink, depth=None):  # Hiera's stages keep their depth
        if shrink:
            vision = _sam2_vision(T, 16, [1, 1, 2, 1], [1, 1, 2, 2], [8, 4, 14, 7], [3], background, fpn=16)
        else:
            vision = _sam2_vision(T, hidden, blocks, heads, windows, global_blocks, background)
        return T.Sam2VisionModel(vision), _JsonProcessor(
            "Sam2ImageProcessor", size={"height": 1024, "width": 1024}, resample=2, **_IMAGENET
        )

    return build


def _sam3_arch():
    def build(T, shrink, depth=None):
        vision = (
            _sam3_vision(T, 32, 64, 1, 2, 1008, 24, [0], 336, fpn=16)
            if shrink
            else _sam3_vision(T, 1024, 4736, depth or 32, 16, 1008, 24, _globals([7, 15, 23, 31], depth or 32), 336)
        )
        return T.Sam3VisionModel(vision), _JsonProcessor(
            "Sam3ImageProcessor",
            size={"height": 1008, "width": 1008},
            resample=2,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )

    return build


REAL_ARCHITECTURES = {
    "clip-vit-b16": _clip_arch(768, 12, 12, 3072, 224, 16, 512),
    "clip-vit-l14": _clip_arch(1024, 24, 16, 4096, 224, 14, 768),
    "clip-vit-l14-336": _clip_arch(1024, 24, 16, 4096, 336, 14, 768),
    **{
        f"dinov2-vit{k}14{r}": _dinov2_arch(*dims, registers=bool(r), swiglu=k == "g")
        for k, dims in {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}.items()
        for r in ("", "-reg")
    },
    "sam-vit-b": _sam_arch(768, 12, 12, [2, 5, 8, 11]),
    "sam-vit-l": _sam_arch(1024, 24, 16, [5, 11, 17, 23]),
    "sam-vit-h": _sam_arch(1280, 32, 16, [7, 15, 23, 31]),
    "siglip-b16-224": _siglip_arch(768, 12, 12, 3072, 224, 16),
    "siglip2-b16-224": _siglip2_arch(768, 12, 12, 3072, 224, 16),
    "siglip2-so400m-p14-384": _siglip2_arch(1152, 27, 16, 4304, 384, 14),
    # giant-opt: the g/16 vision tower (width 1536, depth 40, 16 heads, MLP 4x), SigLIP's architecture as the others
    "siglip2-g-opt-p16-384": _siglip2_arch(1536, 40, 16, 6144, 384, 16),
    "dinov3-vits16": _dinov3_arch(384, 12, 6, 1536),
    "dinov3-vitb16": _dinov3_arch(768, 12, 12, 3072),
    "dinov3-vitl16": _dinov3_arch(1024, 24, 16, 4096),
    "dinov3-vith16plus": _dinov3_arch(1280, 32, 20, 5120, gated=True),
    "dinov3-vit7b16": _dinov3_arch(4096, 40, 32, 8192, gated=True, qv_bias=False),
    "sam2.1-hiera-b+": _sam2_arch(112, [2, 3, 16, 3], [2, 4, 8, 16], [8, 4, 14, 7], [12, 16, 20], [14, 14]),
    "sam2.1-hiera-l": _sam2_arch(144, [2, 6, 36, 4], [2, 4, 8, 16], [8, 4, 16, 8], [23, 33, 43], [7, 7]),
    "sam3": _sam3_arch(),
    "sam3-trunk": _sam3_arch(),  # the same checkpoint; only the output taken differs
}


def save_random_teacher(
    name: str,
    path: str,
    *,
    shrink: bool = False,
    seed: int = 0,
    depth: int | None = None,
    dtype: str = "fp32",
    max_shard_size: str | None = None,
) -> str:
    """Write registry teacher ``name``'s architecture with random weights and its real processor config.

    ``shrink``: one narrow layer instead of the real depth and width, keeping the real input size, patch
    size and preprocessing (for fast tests of everything but the dims). ``depth``: the real width and heads with
    this many blocks (a 7B teacher's layer shapes at a size this machine holds). ``dtype``: the dtype the weights are
    stored in (fp32, bf16, fp16); ``max_shard_size``: shard the safetensors as ``save_pretrained`` does (e.g.
    ``"200MB"``). Returns ``path``, a directory loadable with ``create_teacher(name, source=path)``.
    """
    import transformers as T

    if name not in REAL_ARCHITECTURES:
        raise KeyError(f"no real architecture recorded for {name!r}; known: {sorted(REAL_ARCHITECTURES)}")
    from transformers.utils import logging as hf_logging

    store = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, proc = REAL_ARCHITECTURES[name](T, shrink, depth)
            kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
            _init(model).to(store).save_pretrained(path, **kw)
        proc.save_pretrained(path)
    finally:
        hf_logging.enable_progress_bar()
    return path
