"""A student in front of SAM3's own decoder: :func:`sam3_with_student` swaps transformers' ``Sam3Model.vision_encoder``
for the student and its SAM3 adaptor head (C-RADIOv4 ships its SAM3 adaptor the same way).

What SAM3's decoder reads from its vision encoder (transformers' ``Sam3Model.forward``): ``fpn_hidden_states`` and
``fpn_position_encoding``, four levels at scales 4, 2, 1 and 0.5 of the ViT's grid (288, 144, 72 and 36 cells at
1008 px), of which the last is dropped. The scale-1 level feeds the DETR encoder (hence boxes, scores, presence) and
the box-prompt encoder; the mask decoder's pixel decoder adds the scale-2 and scale-4 levels on the way up to its
masks. The position encodings are a fixed sine function of each level's shape. Every level is derived by SAM3's
neck from one map, the ViT trunk's output: the neck keeps no state between levels, so the trunk output determines
everything the decoder reads.

So what the adaptor was trained on decides the drop-in, read from the student's teacher spec (its ``family``):

- ``sam3-trunk`` (the trunk output; C-RADIOv4's choice): the adaptor's map goes through SAM3's own neck, which
  derives all four levels and their encodings exactly as for SAM3's ViT. Nothing is approximated but the student.
- ``sam3`` (the neck's scale-1 level, what the ``sam3`` and ``tiny-sam3`` teachers cache): the adaptor's map *is*
  the scale-1 level, so the DETR side reads exactly what the student learned. The finer levels come from trunk
  features that level does not determine: the neck's scale-1 branch (a 1x1 then a 3x3 convolution, 1024 -> 256
  channels in SAM3) drops three quarters of the trunk. They are derived as SAM3's neck derives them, from the
  least-norm trunk whose scale-1 branch reproduces the student's level (solved by conjugate gradients), which keeps
  what the level says about the trunk and guesses nothing else. Even SAM3's own scale-1 level gives masks that way
  that differ from SAM3's (bench/bench_sam3_dropin.py measures that ceiling): cache ``sam3-trunk`` for a drop-in.

Resolution: the student runs on SAM3's grid (72x72 for SAM3's 1008 px at patch 14) at its own patch size, i.e.
``grid x student patch`` pixels (1152 px at patch 16, as C-RADIOv4 does; 32 px for a patch-8 student of tiny-SAM3's
4x4 grid): the grid the adaptor was trained to match cell for cell (the cache stores targets on the student's grid).
Its pixels are SAM3's own ``pixel_values`` with the teacher's mean/std undone (read from the student's teacher spec),
resized (bilinear, antialiased). Call the result as ``Sam3Model``: same arguments, same outputs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import RadioModel

__all__ = ["sam3_with_student", "StudentSam3VisionEncoder", "SAM3_TARGETS", "adaptor_teacher"]

# The teacher families whose targets can stand in for SAM3's vision encoder, and what each one is
SAM3_TARGETS = {"sam3-trunk": "trunk", "sam3": "level"}


def adaptor_teacher(student: RadioModel, adaptor: str | None) -> tuple[str, dict]:
    """The student's SAM3 adaptor (``adaptor``, or its only one; a trunk adaptor first) and its teacher's spec."""
    teachers = student.meta.get("teachers", {})
    usable = [t for t in student.teacher_names if teachers.get(t, {}).get("family") in SAM3_TARGETS]
    if adaptor is None:
        trunk = [t for t in usable if teachers[t]["family"] == "sam3-trunk"]
        if len(trunk or usable) != 1:
            raise ValueError(
                f"name the adaptor: this student has {len(usable)} SAM3 adaptors ({usable}) among its teachers "
                f"{student.teacher_names}"
            )
        adaptor = (trunk or usable)[0]
    if adaptor not in usable:
        raise ValueError(
            f"adaptor {adaptor!r} is not a SAM3 adaptor of this student: its teachers are {student.teacher_names}, "
            f"those of a SAM3 family ({sorted(SAM3_TARGETS)}) are {usable}"
        )
    return adaptor, teachers[adaptor]


class StudentSam3VisionEncoder(nn.Module):
    """A ``Sam3VisionModel`` made of a student: ``pixel_values`` (B, 3, H, W), as SAM3's processor gives them ->
    ``Sam3VisionEncoderOutput`` (``fpn_hidden_states``: four (B, C_fpn, s*h, s*w) levels at s = 4, 2, 1, 0.5 of
    SAM3's grid (h, w) = (H, W) / SAM3's patch; ``fpn_position_encoding``: their sine encodings;
    ``last_hidden_state``: (B, h*w, C_trunk), the trunk the levels come from, predicted or least-norm).

    ``neck`` is SAM3's own (shared, not copied); ``teacher`` the student's adaptor, ``spec`` its recorded spec."""

    config: Any  # SAM3's Sam3VisionConfig (what code reading model.vision_encoder.config expects)
    neck: Any  # SAM3's Sam3VisionNeck

    def __init__(self, student: RadioModel, teacher: str, spec: dict, sam3_vision: Any, cg_iters: int = 100) -> None:
        super().__init__()
        self.student, self.teacher, self.spec = student, teacher, dict(spec)
        self.config = sam3_vision.config
        self.neck = sam3_vision.neck
        self.target = SAM3_TARGETS[spec["family"]]
        self.cg_iters = cg_iters
        self.sam3_patch = int(self.config.backbone_config.patch_size)
        self.scale_factors = [float(s) for s in self.config.scale_factors]
        if 1.0 not in self.scale_factors:
            raise ValueError(f"SAM3's neck has no scale-1 level (scale_factors={self.scale_factors})")
        cfg = self.config
        want = int(cfg.backbone_config.hidden_size if self.target == "trunk" else cfg.fpn_hidden_size)
        if int(spec["feature_dim"]) != want:
            raise ValueError(
                f"adaptor {teacher!r} ({spec['family']}) gives {spec['feature_dim']} channels, this SAM3's "
                f"{'trunk' if self.target == 'trunk' else 'FPN'} has {want}: a student of another SAM3"
            )

    def _student_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """SAM3's normalized pixels -> [0, 1] at SAM3's grid times the student's patch."""
        mean = torch.tensor(self.spec["mean"], dtype=torch.float32, device=pixel_values.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec["std"], dtype=torch.float32, device=pixel_values.device).view(1, 3, 1, 1)
        x = pixel_values.float() * std + mean
        p, q = self.sam3_patch, self.student.patch_size
        size = (pixel_values.shape[-2] // p * q, pixel_values.shape[-1] // p * q)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x.clamp(0.0, 1.0)

    def _scale1_branch(self) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.neck.fpn_layers[self.scale_factors.index(1.0)]
        if len(layer.scale_layers):
            raise ValueError("SAM3's scale-1 FPN branch is expected to be proj1 (1x1) then proj2 (3x3) alone")
        return layer.proj1.weight, layer.proj2.weight

    def least_norm_trunk(self, level_BCHW: torch.Tensor) -> torch.Tensor:
        """The least-norm trunk T (B, C_trunk, h, w) with scale-1 branch(T) = ``level_BCHW``, in the least-squares
        sense: conjugate gradients on the normal equations of the branch's linear part (its biases moved over)."""
        w1, w2 = (w.float() for w in self._scale1_branch())
        layer = self.neck.fpn_layers[self.scale_factors.index(1.0)]
        B, _, h, w = level_BCHW.shape
        zero = torch.zeros(1, w1.shape[1], h, w, device=level_BCHW.device, dtype=layer.proj1.weight.dtype)
        bias = layer(zero).float()  # the branch's output on a zero trunk: its biases through the 3x3 (borders differ)

        def A(t):
            return F.conv2d(F.conv2d(t, w1), w2, padding=1)

        def At(y):
            return F.conv2d(F.conv_transpose2d(y, w2, padding=1), w1.transpose(0, 1))

        def dot(a, b):
            return (a * b).flatten(1).sum(1).view(-1, 1, 1, 1)

        # CG on (A^T A) t = A^T (level - bias) from t = 0 stays in A^T's range: the least-norm solution
        rhs = At(level_BCHW.float() - bias)
        t, r = torch.zeros_like(rhs), rhs.clone()
        d, rr = r.clone(), dot(r, r)
        tol = 1e-12 * rr.clamp(min=1e-30)
        for _ in range(self.cg_iters):
            Ad = At(A(d))
            alpha = rr / dot(d, Ad).clamp(min=1e-30)
            t, r = t + alpha * d, r - alpha * Ad
            rr_new = dot(r, r)
            if bool((rr_new <= tol).all()):
                break
            d, rr = r + (rr_new / rr.clamp(min=1e-30)) * d, rr_new
        return t

    def forward(self, pixel_values: torch.Tensor | None = None, **kwargs: Any) -> Any:
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        pred = self.student.predict(self._student_pixels(pixel_values)).adapters[self.teacher]["features"]
        dtype = self.neck.fpn_layers[0].proj1.weight.dtype
        mapped_BCHW = pred.permute(0, 3, 1, 2).to(dtype)
        if self.target == "trunk":
            trunk = mapped_BCHW
            levels, pos = self.neck(trunk)
        else:
            trunk = self.least_norm_trunk(mapped_BCHW).to(dtype)
            levels = [layer(trunk) for layer in self.neck.fpn_layers]
            levels[self.scale_factors.index(1.0)] = mapped_BCHW  # the level the student learned, as it is
            pe = self.neck.position_encoding
            levels, pos = tuple(levels), tuple(pe(x.shape, x.device, x.dtype) for x in levels)
        return Sam3VisionEncoderOutput(
            last_hidden_state=trunk.flatten(2).transpose(1, 2), fpn_hidden_states=levels, fpn_position_encoding=pos
        )


def sam3_with_student(sam3_model: nn.Module, student: RadioModel, adaptor: str | None = None) -> nn.Module:
    """``sam3_model`` (transformers' ``Sam3Model``) with its vision encoder replaced by ``student`` and its SAM3
    adaptor ``adaptor`` (a teacher name; None: the student's only SAM3 adaptor, its ``sam3-trunk`` one if it has
    both). Returns a ``Sam3Model`` (a shallow copy sharing every other weight with ``sam3_model``, which is left as
    it was): ``model(pixel_values=..., input_ids=..., input_boxes=...)``, ``get_vision_features``, the processor's
    post-processing, all as before. See the module docstring for what the student feeds SAM3's decoder."""
    name, spec = adaptor_teacher(student, adaptor)
    encoder = StudentSam3VisionEncoder(student, name, spec, sam3_model.vision_encoder)
    model = copy.copy(sam3_model)
    model._modules = dict(sam3_model._modules)  # nn.Module keeps submodules here; a shallow copy would share it
    model.vision_encoder = encoder
    return model
