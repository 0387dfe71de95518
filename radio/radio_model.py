"""NVIDIA RADIO's module name ``radio.radio_model``, for scripts written against RADIO.

``RADIOModel`` is this project's :class:`radio.model.RadioModel` (RADIO's public surface: ``model(x)``,
``adaptor_names``, ``make_preprocessor_external``, ``forward_intermediates``, ``cpe_video_mode``, ...);
``Resolution`` is the same named pair. Models come from ``radio.load_student`` or the hub entry
``radio_model`` (``hubconf.py``), not from RADIO's ``create_model_from_args``.
"""

from __future__ import annotations

from .model import RadioModel, RadioOutput, Resolution

RADIOModel = RadioModel

__all__ = ["RADIOModel", "RadioModel", "RadioOutput", "Resolution", "create_model_from_args"]


def create_model_from_args(args: object) -> RadioModel:
    """RADIO builds a timm model from a training checkpoint's ``args``; radio students are loaded, not built."""
    raise NotImplementedError(
        "create_model_from_args builds RADIO's timm models from their training args; a radio student is loaded "
        "with radio.load_student(PATH_OR_RUN_OR_HUB_ID) or torch.hub.load(REPO, 'radio_model', version=...)"
    )
