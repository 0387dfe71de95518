"""Frozen teachers (CLIP, DINOv2, SAM, SigLIP, tiny presets) behind one registry.

Depends on torch, transformers and Pillow only; never on ``radio`` or ``pipelines``.
"""

from .preprocess import pil_resize
from .registry import (
    REGISTRY,
    RegistryEntry,
    Teacher,
    TeacherLoadError,
    UnknownTeacher,
    check_source,
    create_teacher,
    get_spec_template,
    list_teachers,
    source_key,
)
from .spec import TeacherOutput, TeacherSpec, fingerprint_of
from .text import TextTower, is_language_aligned, load_text_tower, text_embeddings

__all__ = [
    "REGISTRY",
    "RegistryEntry",
    "Teacher",
    "TeacherLoadError",
    "TeacherOutput",
    "TeacherSpec",
    "UnknownTeacher",
    "check_source",
    "create_teacher",
    "fingerprint_of",
    "get_spec_template",
    "is_language_aligned",
    "list_teachers",
    "load_text_tower",
    "pil_resize",
    "source_key",
    "text_embeddings",
    "TextTower",
]
