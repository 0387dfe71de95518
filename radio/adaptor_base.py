"""NVIDIA RADIO's module name ``radio.adaptor_base``, for scripts written against RADIO: its output pair.

Both projects name their package ``radio``; a script that imports ``from radio.adaptor_base import RadioOutput``
gets this project's :class:`radio.model.RadioOutput` (``summary, features``, ``.to(...)``). RADIO's adaptor
classes (``AdaptorBase``, ``AdaptorInput``) have no counterpart here: a radio student's adaptors are its heads,
selected with ``adaptor_names``.
"""

from __future__ import annotations

from .model import RadioOutput

__all__ = ["RadioOutput"]
