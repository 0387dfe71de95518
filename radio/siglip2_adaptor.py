"""NVIDIA RADIO's module name ``radio.siglip2_adaptor``, for scripts written against RADIO (its example loader
imports ``SigLIP2WrappedTokenizer`` at the top).

``SigLIP2WrappedTokenizer(processor)(texts)`` tokenizes as RADIO's does for SigLIP2: each text lower-cased and
stripped of punctuation, padded and truncated to 64 tokens. A radio student's SigLIP adaptor tokenizes with its
teacher's own processor: ``model.adaptors["siglip2-g"].tokenizer``.
"""

from __future__ import annotations

import string
from collections.abc import Callable

__all__ = ["SigLIP2WrappedTokenizer", "canonicalize_text"]


class SigLIP2WrappedTokenizer:
    def __init__(self, proc: Callable[..., dict]) -> None:
        self._proc = proc

    def __call__(self, text: list[str]):
        text = [canonicalize_text(t) for t in text]
        return self._proc(text=text, return_tensors="pt", max_length=64, padding="max_length", truncation=True)


def canonicalize_text(text: str, *, keep_punctuation_exact_string: str | None = None) -> str:
    """Lower-case, punctuation removed, whitespace collapsed (big_vision's prompt canonicalization)."""
    drop = str.maketrans("", "", string.punctuation)
    if keep_punctuation_exact_string:
        text = keep_punctuation_exact_string.join(
            part.translate(drop) for part in text.split(keep_punctuation_exact_string)
        )
    else:
        text = text.translate(drop)
    return " ".join(text.lower().split())
