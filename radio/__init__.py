"""radio: the student library. ViT trunk, adapters, losses, target statistics, the cache format, views,
checkpoints. Depends on torch, numpy, pyarrow, safetensors and Pillow only."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

# Arrow's allocator (mimalloc) gives freed memory back to the kernel 10 ms after it is freed; a stream reading a
# cache frees and allocates tens of MB per batch, so each batch landed on fresh pages that the kernel zeroes
# first: 150-600 huge pages zeroed per epoch, the local reader's CPU per view 0.56-0.85 ms from run to run
# (`perf`: clear_page_erms up to a quarter of it). Kept instead, memory is reused: 0.53-0.57 ms, for ~15 % more
# resident memory (the peak the process reached anyway). Read when pyarrow loads, so only where radio is
# imported first; a value the user set is kept.
_ARROW_FIRST = "pyarrow" in sys.modules and "MIMALLOC_PURGE_DELAY" not in os.environ
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "-1")

if TYPE_CHECKING:
    from .model import RadioModel

__version__ = "0.1.0"

__all__ = ["load_student", "resolve_student", "__version__"]

from . import hf as _hf  # noqa: E402
from .resolve import resolve_student  # noqa: E402

_hf.install()  # transformers.AutoModel.from_pretrained(student) works once transformers' Auto classes load


def load_student(
    ref: str,
    device: str = "cpu",
    adaptor_names: list[str] | str | None = None,
    revision: str | None = None,
    tracking_uri: str | None = None,
    vitdet_window_size: int | str | None = "as-trained",  # radio.model.AS_TRAINED (not imported here: torch)
) -> RadioModel:
    """A trained student with NVIDIA RADIO's API, in eval mode: ``summary, features = model(x)``.

    ``ref``: a directory, an MLflow run id or URI, or a Hugging Face hub id (see :func:`resolve_student`).
    ``adaptor_names``: teachers (or teacher families, e.g. ``clip``) whose adaptors ``model(x)`` returns.
    ``vitdet_window_size``: ViTDet mode, windowed attention (that many patches per side) in all but the global
    blocks, for fast high-resolution inference; None: global attention everywhere; default: as trained.
    """
    from .model import load_student as _load

    return _load(resolve_student(str(ref), tracking_uri, revision)[0], device, adaptor_names, vitdet_window_size)
