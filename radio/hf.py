"""transformers' Auto classes for radio students: after ``import radio``,
``transformers.AutoModel.from_pretrained(student_dir_or_hub_id)`` returns the student (a :class:`RadioModel`,
as ``radio.load_student`` does). No remote code: the classes are registered in this process, by this package.

Registering needs transformers' Auto modules, which take seconds to import; ``import radio`` must not pay that.
So the registration runs when transformers' ``modeling_auto`` is first imported (an import hook), or at once if
it already is.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import RadioModel

_TARGET = "transformers.models.auto.modeling_auto"
_done = False


def register() -> None:
    """Register the student's config and model with AutoConfig / AutoModel (idempotent)."""
    global _done
    if _done:
        return
    from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

    from .checkpoint import LEGACY_MODEL_TYPE, MODEL_TYPE

    class RadioStudentConfig(PretrainedConfig):
        """config.json as transformers reads it. RADIO's fields a user sets before ``from_pretrained(...,
        config=config)`` are honoured: ``adaptor_names``."""

        model_type = MODEL_TYPE

    class RadioStudentAutoModel(PreTrainedModel):
        """Only a loader: ``from_pretrained`` returns the :class:`radio.model.RadioModel` itself."""

        config_class = RadioStudentConfig

        @classmethod
        def from_pretrained(  # pyright: ignore[reportIncompatibleMethodOverride] (returns a RadioModel)
            cls,
            pretrained_model_name_or_path: str | os.PathLike,
            *model_args: object,
            config: object = None,
            revision: str | None = None,
            adaptor_names: list[str] | str | None = None,
            device_map: str | dict | None = None,
            **kwargs: object,
        ) -> RadioModel:
            from .model import RadioModel

            if adaptor_names is None:  # RADIO's pattern: config.adaptor_names = [...]; from_pretrained(config=config)
                adaptor_names = getattr(config, "adaptor_names", None)
            device = device_map if isinstance(device_map, str) and device_map != "auto" else "cpu"
            model = RadioModel.from_pretrained(
                str(pretrained_model_name_or_path), revision=revision, adaptor_names=adaptor_names, device=device
            )
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))  # "auto"/None: as saved (float32)
            if dtype is not None and dtype != "auto":
                import torch

                want = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
                if not isinstance(want, torch.dtype) or not want.is_floating_point:
                    raise ValueError(f"dtype={dtype!r}: a radio student runs in a floating dtype (e.g. torch.bfloat16)")
                model = model.to(want)
            return model

    class LegacyConfig(RadioStudentConfig):
        model_type = LEGACY_MODEL_TYPE

    class LegacyAutoModel(RadioStudentAutoModel):
        config_class = LegacyConfig

    for config, model in ((RadioStudentConfig, RadioStudentAutoModel), (LegacyConfig, LegacyAutoModel)):
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModel.register(config, model, exist_ok=True)
    _done = True


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)  # the real finders locate it; this hook runs once
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            try:
                register()
            except Exception as e:  # a transformers without these hooks: AutoModel just does not know radio students
                print(f"[radio] not registered with transformers' AutoModel: {type(e).__name__}: {e}", file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if transformers' Auto modules are loaded, else when they are."""
    if _TARGET in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
