"""Text embeddings of a language-aligned teacher (CLIP, SigLIP): what zero-shot classification compares a
student's adaptor output with.

The text tower is loaded from the same checkpoint as the teacher's vision tower (the registry's source, or a
local directory), with its own tokenizer, through the real ``from_pretrained`` path; embeddings are the
model's ``get_text_features`` (CLIP: projected, the space of its ``image_embeds``, the teacher's summary;
SigLIP: the pooled text output, the space of its ``pooler_output``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .registry import TeacherLoadError, _quiet_transformers, check_source, get_spec_template
from .tiny import _TEXT, _tiny_tokenizer, materialize_tiny

__all__ = ["LANGUAGE_FAMILIES", "TextTower", "is_language_aligned", "load_text_tower", "text_embeddings"]

# family -> (full model class in transformers, tokenizer padding its text tower expects)
LANGUAGE_FAMILIES = {"clip": ("CLIPModel", "longest"), "siglip": ("SiglipModel", "max_length")}


def is_language_aligned(name: str) -> bool:
    """Whether registry teacher ``name`` has a text tower its summary is aligned with."""
    return get_spec_template(name).family in LANGUAGE_FAMILIES


class TextTower:
    """A language-aligned teacher's text side: ``tokenizer(texts)`` -> a batch for ``encode(batch)`` -> float32
    (N, D) text features in the space of the teacher's summary (not normalized)."""

    def __init__(self, model, tokenizer, family: str, padding: str):
        self.model, self._tokenizer, self.family, self.padding = model, tokenizer, family, padding

    def tokenizer(self, texts: list[str] | str):
        return self._tokenizer(
            [texts] if isinstance(texts, str) else list(texts),
            padding=self.padding,
            truncation=True,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, batch) -> torch.Tensor:
        ids = batch["input_ids"] if not isinstance(batch, torch.Tensor) else batch
        extra = (
            {"attention_mask": batch["attention_mask"]}
            if not isinstance(batch, torch.Tensor) and "attention_mask" in batch and self.family == "clip"
            else {}
        )
        dev = next(self.model.parameters()).device
        feats = self.model.get_text_features(input_ids=ids.to(dev), **{k: v.to(dev) for k, v in extra.items()})
        return (feats if isinstance(feats, torch.Tensor) else feats.pooler_output).float()


def load_text_tower(
    name: str, *, source: str | None = None, revision: str | None = None, device: str | torch.device = "cpu"
) -> TextTower:
    """The text tower and tokenizer of teacher ``name`` from its checkpoint (the registry's source, or ``source``)."""
    import transformers as T

    entry = get_spec_template(name)
    if entry.family not in LANGUAGE_FAMILIES:
        raise TeacherLoadError(
            f"teacher {name} ({entry.family}) has no text tower: zero-shot needs a CLIP or SigLIP teacher"
        )
    cls, padding = LANGUAGE_FAMILIES[entry.family]
    revision = revision if revision is not None else entry.revision
    src = check_source(name, source, revision)
    if entry.source.startswith("tiny:"):
        tiny = materialize_tiny(entry.source[len("tiny:") :])
        if src.startswith("tiny:") or Path(src).resolve() == Path(tiny).resolve():
            src = tiny
            if not (Path(src) / "tokenizer.json").is_file():  # a preset written before tiny text towers had tokenizers
                _tiny_tokenizer(src, _TEXT["max_position_embeddings"])
    local = Path(src)
    if local.is_dir() and not any(
        (local / f).is_file()
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "tokenizer.model")
    ):
        raise TeacherLoadError(
            f"teacher {name}: {src} holds no tokenizer; zero-shot needs the checkpoint's tokenizer "
            "files beside its weights"
        )
    try:
        with _quiet_transformers():
            model = getattr(T, cls).from_pretrained(src, revision=revision, dtype=torch.float32).to(device).eval()
            tokenizer = T.AutoTokenizer.from_pretrained(src, revision=revision)
    except (OSError, ValueError, TypeError) as e:
        raise TeacherLoadError(
            f"teacher {name}: cannot load its text tower and tokenizer from {src!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0]}); "
            "zero-shot needs the whole checkpoint (a vision-only one has no text tower)"
        ) from None
    return TextTower(model, tokenizer, entry.family, padding)


@torch.no_grad()
def text_embeddings(
    name: str,
    prompts: list[str],
    *,
    source: str | None = None,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """float32 (len(prompts), D) text features of teacher ``name`` (not normalized)."""
    tower = load_text_tower(name, source=source, revision=revision, device=device)
    return torch.cat(
        [tower.encode(tower.tokenizer(prompts[i : i + batch_size])).cpu() for i in range(0, len(prompts), batch_size)]
    )
