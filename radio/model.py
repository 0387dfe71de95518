"""The student as trained (:class:`DistillModel`) and as users load it (:class:`RadioModel`).

:class:`RadioModel` follows NVIDIA RADIO's public surface, so code written for ``torch.hub.load(
"NVlabs/RADIO", "radio_model", ...)`` runs on a student of this project:

- ``summary, features = model(x)``: ``x`` float in [0, 1] (or uint8), (B, 3, H, W) with H and W multiples
  of ``model.min_resolution_step``; ``summary`` (B, T*D) (every summary token, flattened), ``features``
  (B, N, D), or (B, D, h, w) with ``feature_fmt="NCHW"``.
- ``adaptor_names=[...]`` (at load time, or the attribute): ``model(x)`` then returns a dict,
  ``{"backbone": RadioOutput, name: RadioOutput}``, each adaptor in its teacher's own space (the
  training standardization undone). A name is a teacher (``tiny-clip``) or its family (``clip``) when
  only one teacher has that family.
- ``get_nearest_supported_resolution(h, w)``, ``min_resolution_step``, ``preferred_resolution``,
  ``make_preprocessor_external()``, ``forward_intermediates(...)``, ``embed_dim``, ``patch_size``.

The project's own code calls :meth:`RadioModel.predict`, which returns everything at once
(:class:`StudentPrediction`: first summary token, features (B, h, w, D), all summary tokens, and every
adapter in teacher space).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from .adapters import AdapterConfig, AdapterHeads
from .checkpoint import read_student
from .normalize import TargetStats
from .student import StudentConfig, StudentOutput, ViTStudent, check_window, normalize_images, tracing

__all__ = [
    "DistillModel",
    "RadioModel",
    "RadioOutput",
    "Resolution",
    "StudentPrediction",
    "InputConditioner",
    "ExportableStudent",
]


class DistillModel(nn.Module):
    """Trunk + heads, as trained. ``forward(images)`` -> {teacher: {"summary", "features"}} in standardized space.

    ``images``: uint8 [0, 255] or float [0, 1] (B, 3, H, W), H and W multiples of the patch; normalized
    here with the student's mean/std, so the trainer and the exported model share one preprocessing.
    """

    def __init__(self, student: StudentConfig, adapters: list[AdapterConfig]) -> None:
        super().__init__()
        self.trunk = ViTStudent(student)
        self.student_cfg, self.adapter_cfgs = self.trunk.cfg, list(adapters)
        self.heads = AdapterHeads(self.adapter_cfgs, self.trunk.cfg.shape[0], self.trunk.cfg.summary_teachers)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay (besides every 1-D parameter: norms and biases)."""
        return {f"trunk.{n}" for n in self.trunk.no_weight_decay()}

    def forward_all(self, images: torch.Tensor) -> tuple[StudentOutput, dict]:
        out = self.trunk(normalize_images(images, self.student_cfg.mean, self.student_cfg.std))
        return out, self.heads(out)

    def forward(self, images: torch.Tensor) -> dict:
        return self.forward_all(images)[1]


class Resolution(NamedTuple):
    height: int
    width: int


class RadioOutput(NamedTuple):
    """RADIO's output pair: unpack it as ``summary, features = model(x)``."""

    summary: torch.Tensor | None  # (B, C); None for a teacher without a summary (SAM)
    features: torch.Tensor  # (B, N, C) or (B, C, h, w)

    def __getitem__(self, key):  # pyright: ignore[reportIncompatibleMethodOverride] (a str says what to do)
        if isinstance(key, str):
            raise KeyError(
                f"model(x) returned RadioOutput(summary, features), not a dict: no adaptor is selected, so there is "
                f"no {key!r}. Select adaptors at load (adaptor_names=[{key!r}], or config.adaptor_names with "
                f"transformers) or set model.adaptor_names = [{key!r}]; model(x) then returns "
                "{'backbone': ..., name: ...}"
            )
        return tuple.__getitem__(self, key)

    def to(self, *args, **kwargs) -> RadioOutput:
        """Both tensors moved or cast (RADIO's ``RadioOutput.to``); a missing summary stays None."""
        return RadioOutput(
            None if self.summary is None else self.summary.to(*args, **kwargs), self.features.to(*args, **kwargs)
        )


@dataclass
class StudentPrediction:
    """Everything at once, for the project's own evaluation (``RadioModel.predict``)."""

    summary: torch.Tensor  # (B, D): the first summary token
    features: torch.Tensor  # (B, h, w, D) trunk features, channels last
    summary_tokens: torch.Tensor  # (B, T, D), in StudentConfig.summary_teachers order
    adapters: dict  # teacher -> {"summary": (B, Dt)?, "features": (B, h, w, Ct)} in the teacher's own space

    def features_BCHW(self) -> torch.Tensor:
        return self.features.permute(0, 3, 1, 2)


class InputConditioner(nn.Module):
    """float [0, 1] (B, 3, H, W) -> normalized with the student's mean/std (what ``make_preprocessor_external`` hands
    out)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def norm_mean(self) -> torch.Tensor:
        """RADIO's name: the mean as a (3, 1, 1) tensor."""
        return torch.tensor(self.mean).view(3, 1, 1)

    @property
    def norm_std(self) -> torch.Tensor:
        return torch.tensor(self.std).view(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_images(x, self.mean, self.std)  # the trainer's own normalization


FEATURE_FMTS = ("NLC", "NCHW")
AS_TRAINED = "as-trained"  # load_student's vitdet_window_size default: the student's own setting
NORM_ALPHA_SCHEMES = ("post-alpha", "pre-alpha", "none")
# RADIO's adaptor names -> the teacher family they denote (C-RADIOv3: clip, siglip2-g, dino_v2, sam; v4: siglip2-g,
# dino_v3, sam3), so a script written for RADIO selects the same kind of adaptor
RADIO_ADAPTOR_NAMES = {"dino_v2": "dinov2", "dino_v3": "dinov3", "siglip2-g": "siglip", "siglip": "siglip"}


def _fmt(features_BLC: torch.Tensor, hw: tuple[int, int], fmt: str) -> torch.Tensor:
    if fmt == "NLC":
        return features_BLC
    if fmt == "NCHW":
        B, _, C = features_BLC.shape
        return features_BLC.reshape(B, hw[0], hw[1], C).permute(0, 3, 1, 2)
    raise ValueError(f"feature_fmt={fmt!r}: choose one of {list(FEATURE_FMTS)}")


class RadioModel(nn.Module):
    """A loaded student with RADIO's API (see the module docstring)."""

    # Bicubic resizing overshoots [0, 1] (RADIO takes such images as they come); a range this far out is not
    # an overshoot but another scale, e.g. 0-255 floats or an already normalized image.
    INPUT_RANGE = (-0.5, 1.5)

    def __init__(
        self,
        model: DistillModel,
        stats: dict[str, TargetStats],
        meta: dict,
        adaptor_names: list[str] | str | None = None,
    ) -> None:
        super().__init__()
        self.model, self.stats, self.meta = model, stats, meta
        self.input_conditioner: nn.Module = InputConditioner(model.student_cfg.mean, model.student_cfg.std)
        self._external = False
        self.adaptor_names = adaptor_names

    # ---- what the student is -----------------------------------------------------------------
    @property
    def teacher_names(self) -> list[str]:
        return [c.name for c in self.model.adapter_cfgs]

    @property
    def fingerprints(self) -> dict[str, str]:
        return dict(self.meta.get("fingerprints", {}))

    @property
    def config(self) -> StudentConfig:
        return self.model.student_cfg

    @property
    def patch_size(self) -> int:
        return self.model.student_cfg.patch_size

    @property
    def min_resolution_step(self) -> int:
        """As RADIO's: the patch, times the ViTDet window when windowed attention is on."""
        return self.patch_size * (self.window_size or 1)

    @property
    def embed_dim(self) -> int:
        return self.model.student_cfg.shape[0]

    @property
    def num_summary_tokens(self) -> int:
        return self.model.student_cfg.num_summary_tokens

    @property
    def summary_dim(self) -> int:
        return self.embed_dim * self.num_summary_tokens

    @property
    def preferred_resolution(self) -> Resolution:
        """The resolution the student was distilled at."""
        r = int(self.meta.get("resolution") or self.config.img_size or 224)
        return Resolution(r, r)

    @property
    def max_resolution(self) -> int | None:
        """The CPE position grid's resolution (None without CPE: any multiple of the patch works)."""
        return self.config.cpe_max_img_size

    # RADIO's names for what it has (aliases), and for what it does not (nothing to fuse)
    @property
    def num_cls_tokens(self) -> int:
        return self.num_summary_tokens

    @property
    def summary_idxs(self) -> torch.Tensor:
        """Indices (into ``teacher_names``) of the teachers with a summary token, in token order."""
        names = self.teacher_names
        return torch.tensor([names.index(t) for t in self.config.summary_teachers if t in names], dtype=torch.int64)

    @property
    def window_size(self) -> int | None:
        """ViTDet's window side in patches (``vitdet_window_size``), None when every block attends globally."""
        return self.model.trunk.window_size

    @window_size.setter
    def window_size(self, window: int | None) -> None:
        check_window(window)
        self.model.trunk.window_size = window

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.trunk.blocks

    @contextlib.contextmanager
    def cpe_video_mode(self, t: int) -> Iterator[None]:
        """RADIO's context manager for video: the batch is (B*T, 3, H, W), B clips of ``t`` frames in a row, and
        every frame of a clip gets the same position window. A radio student draws random CPE windows only in
        training (in eval every image gets the same centred grid, so frames agree already); there, each clip draws
        one window for all its frames."""
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"cpe_video_mode(t={t!r}): t is the number of frames per clip, an integer >= 1")
        trunk = self.model.trunk
        before, trunk.video_frames = trunk.video_frames, t
        try:
            yield
        finally:
            trunk.video_frames = before

    def switch_to_deploy(self) -> RadioModel:
        """RADIO fuses re-parameterized layers here; a radio student has none: a no-op, for drop-in code."""
        return self

    # what transformers' pipelines ask of a model
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def can_generate(self) -> bool:
        return False

    def get_nearest_supported_resolution(self, height: int, width: int) -> Resolution:
        step = self.min_resolution_step
        return Resolution(max(step, int(round(height / step)) * step), max(step, int(round(width / step)) * step))

    # ---- adaptors ----------------------------------------------------------------------------
    @property
    def adaptor_names(self) -> list[str]:
        return list(self._adaptors)

    @adaptor_names.setter
    def adaptor_names(self, names: list[str] | str | None) -> None:
        names = [names] if isinstance(names, str) else list(names or [])
        families = {}
        for t, spec in self.meta.get("teachers", {}).items():
            families.setdefault(spec.get("family"), []).append(t)
        resolved = {}
        for n in names:
            if n in self.teacher_names:
                resolved[n] = n
            elif (
                len(families.get(f := RADIO_ADAPTOR_NAMES.get(n, n), [])) == 1 and families[f][0] in self.teacher_names
            ):
                resolved[n] = families[f][0]
            else:
                fam = sorted(f for f, ts in families.items() if f and len(ts) == 1)
                raise ValueError(
                    f"adaptor {n!r} is not one of this student's teachers {self.teacher_names}"
                    + (f" or their families {fam}" if fam else "")
                    + (
                        f" (RADIO's name {n!r} denotes the {RADIO_ADAPTOR_NAMES[n]} family)"
                        if n in RADIO_ADAPTOR_NAMES
                        else ""
                    )
                )
        self._adaptors = resolved

    @property
    def adaptors(self) -> dict[str, Adaptor]:
        """RADIO's ``model.adaptors[name]``: one per selected adaptor name, with ``tokenizer`` and
        ``encode_text`` for a language-aligned teacher (CLIP, SigLIP)."""
        cache = self.__dict__.setdefault("_adaptor_objs", {})
        for n, t in self._adaptors.items():
            if n not in cache or cache[n].teacher != t:
                cache[n] = Adaptor(self, n, t)
        return {n: cache[n] for n in self._adaptors}

    # ---- inputs ------------------------------------------------------------------------------
    def make_preprocessor_external(self) -> nn.Module:
        """Hand out the input normalization (float [0, 1] -> mean/std); ``model(x)`` then expects normalized input."""
        conditioner = self.input_conditioner
        self.input_conditioner = nn.Identity()
        self._external = True
        return conditioner

    @staticmethod
    def _check_finite(x: torch.Tensor) -> tuple[float | None, float | None]:
        """Refuse NaN or Inf pixels (they would reach every output); returns the value range (None when tracing)."""
        if tracing():
            return None, None
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(
                f"images hold {bad} NaN or Inf value(s) of {x.numel()}: fix the input (e.g. "
                "a failed decode or a division by zero); the model refuses non-finite pixels"
            )
        return lo, hi

    def _condition(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"images must be a torch.Tensor (B, 3, H, W), got {type(x).__name__}: convert with torch.from_numpy "
                "or an image processor (AutoImageProcessor.from_pretrained(student_dir))"
            )
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(x.shape)}")
        step = self.min_resolution_step
        if x.shape[-2] % step or x.shape[-1] % step:
            near = self.get_nearest_supported_resolution(*x.shape[-2:])
            raise ValueError(
                f"the input resolution must be a multiple of min_resolution_step={step}; "
                f"got {tuple(x.shape[-2:])}, nearest supported: {tuple(near)} "
                "(model.get_nearest_supported_resolution)"
            )
        if self._external:
            if not torch.is_floating_point(x):
                raise TypeError(
                    f"make_preprocessor_external() was called: the model expects normalized float input, got {x.dtype}"
                )
            self._check_finite(x)
            return self._as_model_dtype(x)
        if x.dtype != torch.uint8:
            if not torch.is_floating_point(x):
                raise TypeError(f"images must be float in [0, 1] or uint8, got {x.dtype}")
            lo, hi = self._check_finite(x)
            if lo is not None and hi is not None and (lo < self.INPUT_RANGE[0] or hi > self.INPUT_RANGE[1]):
                hint = (
                    "divide by 255"
                    if lo >= self.INPUT_RANGE[0] and hi > 2
                    else "the model normalizes itself: pass [0, 1] images, or call make_preprocessor_external() "
                    "and normalize yourself"
                )
                raise ValueError(
                    f"float images must lie in [0, 1] (resampling overshoot up to {self.INPUT_RANGE} "
                    f"is accepted), got values in [{lo:.3g}, {hi:.3g}]: {hint}"
                )
        return self._as_model_dtype(self.input_conditioner(x))

    def _as_model_dtype(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in the weights' dtype (numpy's default float64 becomes float32)."""
        return x.to(self.dtype) if torch.is_floating_point(x) and x.dtype != self.dtype else x

    # ---- forward -----------------------------------------------------------------------------
    def teacher_space(self, teacher: str, pred: dict) -> dict:
        """A head's standardized output -> the teacher's own space (the training standardization undone)."""
        st = self.stats.get(teacher)
        return st.denormalize(pred) if st is not None else pred

    def _adapter(self, teacher: str, pred: dict, hw: tuple[int, int], fmt: str) -> RadioOutput:
        p = self.teacher_space(teacher, pred)
        B, h, w, C = p["features"].shape
        return RadioOutput(p.get("summary"), _fmt(p["features"].reshape(B, h * w, C), hw, fmt))

    def _final(self, out: StudentOutput, fmt: str):
        ret = RadioOutput(out.summary_BTD.flatten(1), _fmt(out.features_BLC, out.grid_hw, fmt))
        if not self._adaptors:
            return ret
        preds = self.model.heads(out)
        return {"backbone": ret, **{n: self._adapter(t, preds[t], out.grid_hw, fmt) for n, t in self._adaptors.items()}}

    def forward(
        self, x: torch.Tensor | None = None, feature_fmt: str = "NLC", *, pixel_values: torch.Tensor | None = None
    ) -> RadioOutput | dict[str, RadioOutput]:
        """RADIO's forward: ``RadioOutput(summary, features)``, or a dict with ``backbone`` and each selected
        adaptor. ``pixel_values=``: the same images by transformers' name (what its image processors and pipelines
        pass)."""
        if (x is None) == (pixel_values is None):
            raise TypeError("model(x) takes one image batch: pass it as x or as pixel_values=, not both or neither")
        x = pixel_values if x is None else x
        assert x is not None
        if feature_fmt not in FEATURE_FMTS:
            raise ValueError(f"feature_fmt={feature_fmt!r}: choose one of {list(FEATURE_FMTS)}")
        return self._final(self.model.trunk(self._condition(x)), feature_fmt)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> StudentPrediction:
        """Trunk and every adapter (teacher space) at once, features channels last: the project's evaluation.
        Inference: no autograd graph (``.numpy()`` works on every output); call the model itself to train through
        it."""
        out = self.model.trunk(self._condition(x))
        preds = self.model.heads(out)
        adapters = {t: self.teacher_space(t, p) for t, p in preds.items()}
        return StudentPrediction(out.summary_BTD[:, 0], out.features_BHWC(), out.summary_BTD, adapters)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        aggregation: str = "sparse",
        norm_alpha_scheme: str = "post-alpha",
    ) -> list | tuple[RadioOutput | dict, list]:
        """RADIO's (and timm's) intermediates: a list with one entry per selected block, the patch features
        in ``output_fmt`` (or ``RadioOutput(summary, features)`` with ``return_prefix_tokens``), after the
        final output unless ``intermediates_only``: ``(final, intermediates)``. ``aggregation``: ``sparse``,
        each selected block's output; ``dense``, as RADIO, the mean over the blocks since the previous selected
        one (the first entry averages every block up to it). ``norm_alpha_scheme`` (``post-alpha``, ``pre-alpha``,
        ``none``): where RADIO applies its learned intermediate-feature normalizer's scale; a radio student has no
        such normalizer, so the three give the same (unnormalized) features, as RADIO's do without one."""
        if norm_alpha_scheme not in NORM_ALPHA_SCHEMES:
            raise ValueError(f"norm_alpha_scheme={norm_alpha_scheme!r}: choose one of {list(NORM_ALPHA_SCHEMES)}")
        if output_fmt not in FEATURE_FMTS:
            raise ValueError(f"output_fmt={output_fmt!r}: choose one of {list(FEATURE_FMTS)}")
        if aggregation not in ("sparse", "dense"):
            raise ValueError(f"aggregation={aggregation!r}: choose 'sparse' or 'dense'")
        trunk = self.model.trunk
        if aggregation == "dense":
            depth = len(trunk.blocks)
            want = sorted(
                {
                    i + depth if i < 0 else i
                    for i in (
                        range(depth - indices, depth)
                        if isinstance(indices, int)
                        else (indices if indices is not None else range(depth))
                    )
                }
            )
            final, every = trunk.forward_intermediates(
                self._condition(x), None, norm=norm, stop_early=stop_early and intermediates_only
            )
            inter, start = [], 0
            for i in want:
                if not 0 <= i < depth:
                    raise ValueError(f"indices={indices}: block indices must lie in [-{depth}, {depth - 1}]")
                group = every[start : i + 1]
                inter.append(
                    type(group[0])(
                        torch.stack([o.summary_BTD for o in group]).mean(0),
                        torch.stack([o.features_BLC for o in group]).mean(0),
                        group[0].grid_hw,
                    )
                )
                start = i + 1
        else:
            final, inter = trunk.forward_intermediates(
                self._condition(x), indices, norm=norm, stop_early=stop_early and intermediates_only
            )
        items = [
            RadioOutput(o.summary_BTD.flatten(1), _fmt(o.features_BLC, o.grid_hw, output_fmt))
            if return_prefix_tokens
            else _fmt(o.features_BLC, o.grid_hw, output_fmt)
            for o in inter
        ]
        if intermediates_only:
            return items
        assert final is not None  # the trunk stops early only when asked for intermediates alone
        return self._final(final, output_fmt), items

    # ---- hub ---------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, model_card: bool = True) -> Path:
        """Write a loadable student directory (safetensors + config.json, and a README model card)."""
        from .hub import save_pretrained

        return save_pretrained(self, save_directory, card=model_card)

    @classmethod
    def from_pretrained(
        cls,
        ref: str,
        revision: str | None = None,
        adaptor_names: list[str] | str | None = None,
        device: str = "cpu",
        vitdet_window_size: int | str | None = AS_TRAINED,
    ) -> RadioModel:
        """A student from a directory, a Hugging Face hub id (``org/name``), an MLflow run id or model URI."""
        from .resolve import resolve_student

        return load_student(resolve_student(str(ref), revision=revision)[0], device, adaptor_names, vitdet_window_size)

    def push_to_hub(
        self, repo_id: str, private: bool = True, token: str | None = None, commit_message: str = "Upload radio student"
    ) -> str:
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message)


class Adaptor:
    """One adaptor of a loaded student, as RADIO names it. Its outputs come from ``model(x)[name]``; a
    language-aligned teacher's text side is loaded on first use from the source the student recorded for it
    (the ``source`` of its teacher in the student's meta), so zero-shot works as in RADIO::

        adaptor = model.adaptors["clip"]
        tokens = adaptor.tokenizer(["a photo of a cat"])
        text = adaptor.encode_text(tokens, normalize=True)   # (1, D), the space of model(x)["clip"].summary
    """

    def __init__(self, model: RadioModel, name: str, teacher: str) -> None:
        self.model, self.name, self.teacher = model, name, teacher
        self._tower = None

    def _text(self):
        if self._tower is None:
            from teachers import load_text_tower  # a sibling library: only when text is asked for

            spec = self.model.meta.get("teachers", {}).get(self.teacher, {})
            src = spec.get("source")
            try:
                self._tower = load_text_tower(
                    self.teacher, source=src if src and Path(str(src)).exists() else None, revision=spec.get("revision")
                )
            except Exception as e:
                raise ValueError(
                    f"adaptor {self.name!r} (teacher {self.teacher}): no text encoder can "
                    f"be loaded ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
                    "Text needs the teacher's full checkpoint (text tower and tokenizer) "
                    "at the source the student recorded, or in the hub cache"
                ) from None
        return self._tower

    @property
    def tokenizer(self) -> Callable[..., dict]:
        """``tokenizer(texts)`` -> a token batch for :meth:`encode_text` (padded and truncated as the teacher's)."""
        return self._text().tokenizer

    def encode_text(self, tokens: torch.Tensor | dict, normalize: bool = False) -> torch.Tensor:
        """Text features (N, D) in the space of this adaptor's summary; ``normalize``: unit length."""
        z = self._text().encode(tokens)
        return torch.nn.functional.normalize(z, dim=-1) if normalize else z


class ExportableStudent(nn.Module):
    """A graph-friendly view of a student for torch.export, MLflow (pt2) and ONNX: float [0, 1] images
    (B, 3, H, W) -> a flat dict of tensors: ``summary`` (B, T*D), ``features`` (B, N, D), and for every
    teacher ``<teacher>.features`` (B, N, Ct) and ``<teacher>.summary`` (B, Dt) in teacher space.

    ``checks``: refuse non-finite pixels and values outside ``RadioModel.INPUT_RANGE`` in the graph (a uint8 or
    0-255 image would otherwise run at the wrong scale); ONNX puts its own checks in front instead."""

    def __init__(self, model: RadioModel, checks: bool = True) -> None:
        super().__init__()
        self.radio = model
        self.conditioner = InputConditioner(model.config.mean, model.config.std)  # its own: the model's may be external
        self.checks = checks

    def output_names(self) -> list[str]:
        names = ["summary", "features"]
        for c in self.radio.model.adapter_cfgs:
            names.append(f"{c.name}.features")
            if c.summary_dim:
                names.append(f"{c.name}.summary")
        return names

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # Whole patches only, in every runtime: traced, the check below is a guard (torch.export) or a Reshape
        # to (B, 3, H/p, p, W/p, p) that fails on a partial patch (ONNX), where the student raises.
        B, C, H, W = x.shape
        p = self.radio.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p).reshape(B, C, H, W)
        if self.checks:
            self._check_pixels(x)
        return self.forward_normalized(self.conditioner(x))

    def _check_pixels(self, x: torch.Tensor) -> None:
        """The student's pixel checks as graph ops (``_assert_async``): a graph is traced for one dtype (float32
        in [0, 1]), so without them a uint8 or 0-255 image would run, silently, at the wrong scale."""
        lo_ok, hi_ok = self.radio.INPUT_RANGE
        torch._assert_async(  # pyright: ignore[reportPrivateImportUsage] (the op torch.export keeps)
            torch.isfinite(x).all(),
            "images hold NaN or Inf values: fix the input (e.g. a failed decode); the model refuses non-finite pixels",
        )
        lo, hi = torch.aminmax(x)
        torch._assert_async(  # pyright: ignore[reportPrivateImportUsage] (the op torch.export keeps)
            (lo >= lo_ok) & (hi <= hi_ok),
            f"this graph takes float32 images in [0, 1] (resampling overshoot up to ({lo_ok}, {hi_ok}) is accepted): "
            "divide 0-255 images, uint8 included, by 255 (MLflow's pyfunc flavor takes uint8 as it is)",
        )

    def forward_normalized(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The same outputs from an already normalized batch (the student's mean/std applied)."""
        out = self.radio.model.trunk(x)
        preds = self.radio.model.heads(out)
        result = {"summary": out.summary_BTD.flatten(1), "features": out.features_BLC}
        for t in self.radio.teacher_names:
            p = self.radio.teacher_space(t, preds[t])
            B, h, w, C = p["features"].shape
            result[f"{t}.features"] = p["features"].reshape(B, h * w, C)
            if "summary" in p:
                result[f"{t}.summary"] = p["summary"]
        return result


def load_student(
    path: str | Path,
    device: str | torch.device = "cpu",
    adaptor_names: list[str] | str | None = None,
    vitdet_window_size: int | str | None = AS_TRAINED,
) -> RadioModel:
    """The student in directory ``path`` (model.safetensors + config.json), in eval mode. No pickle.

    ``vitdet_window_size``: ViTDet mode (windows of that many patches per side in all but the global blocks),
    None for global attention everywhere, or as the student was trained (the default).
    ``radio.load_student`` takes any name of a student (run id, MLflow URI, hub id) and calls this."""
    f = read_student(path)
    model = DistillModel(f.student, f.adapters)
    missing, unexpected = model.state_dict().keys() - f.state.keys(), f.state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise ValueError(
            f"{f.path / 'model.safetensors'} does not match {f.path / 'config.json'}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(f.state)
    stats = {t: TargetStats.from_dict(v) for t, v in f.meta.get("stats", {}).items()}
    loaded = RadioModel(model, stats, f.meta, adaptor_names).to(device).eval()
    if vitdet_window_size != AS_TRAINED:
        loaded.window_size = vitdet_window_size  # pyright: ignore[reportAttributeAccessIssue] (checked there)
    return loaded
