"""Student checkpoints: safetensors weights + a JSON config, loaded with no pickle.

A student directory holds ``model.safetensors`` (trunk + heads) and ``config.json``::

    {"format": "radio-student/1", "student": StudentConfig, "adapters": [AdapterConfig, ...],
     "meta": {"teachers": {name: spec dict}, "fingerprints": {...}, "stats": {name: TargetStats dict}, ...}}

``load_student(path)`` returns a :class:`RadioModel` whose output mirrors NVIDIA RADIO's public API:
``summary`` and ``features`` from the trunk, plus ``adapters[teacher]`` in that teacher's own space
(the training-time standardization is undone), so an adapter output can stand in for the teacher.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .adapters import AdapterConfig, AdapterHeads
from .normalize import TargetStats
from .student import StudentConfig, StudentOutput, ViTStudent, normalize_images

__all__ = ["DistillModel", "RadioModel", "RadioOutput", "save_student", "load_student", "CheckpointError", "FORMAT"]

WEIGHTS, CONFIG = "model.safetensors", "config.json"
FORMAT = "radio-student/1"


class CheckpointError(FileNotFoundError):
    pass


class DistillModel(nn.Module):
    """Trunk + heads, as trained. ``forward(images)`` -> {teacher: {"summary", "features"}} in standardized space.

    ``images``: uint8 [0, 255] or float [0, 1] (B, 3, H, W), H and W multiples of the patch; normalized
    here with the student's mean/std, so the trainer and the exported model share one preprocessing.
    """

    def __init__(self, student: StudentConfig, adapters: list[AdapterConfig]):
        super().__init__()
        self.trunk = ViTStudent(student)
        self.student_cfg, self.adapter_cfgs = self.trunk.cfg, list(adapters)
        self.heads = AdapterHeads(self.adapter_cfgs, self.trunk.cfg.dim, self.trunk.cfg.summary_teachers)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay (besides every 1-D parameter: norms and biases)."""
        return {f"trunk.{n}" for n in self.trunk.no_weight_decay()}

    def forward_all(self, images: torch.Tensor) -> tuple[StudentOutput, dict]:
        out = self.trunk(normalize_images(images, self.student_cfg.mean, self.student_cfg.std))
        return out, self.heads(out)

    def forward(self, images: torch.Tensor) -> dict:
        return self.forward_all(images)[1]


@dataclass
class RadioOutput:
    summary: torch.Tensor  # (B, D): the first summary token (all of them: summary_tokens)
    features: torch.Tensor  # (B, h, w, D) trunk features, channels last; features_BCHW() for NCHW
    summary_tokens: torch.Tensor  # (B, T, D), in StudentConfig.summary_teachers order
    adapters: dict  # teacher -> {"summary": (B, Dt)?, "features": (B, h, w, Ct)} in the teacher's own space

    def features_BCHW(self) -> torch.Tensor:
        return self.features.permute(0, 3, 1, 2)


class RadioModel(nn.Module):
    """A loaded student. ``model(images)`` with uint8 or [0, 1] float (B, 3, H, W), H, W multiples of the patch."""

    def __init__(self, model: DistillModel, stats: dict[str, TargetStats], meta: dict):
        super().__init__()
        self.model, self.stats, self.meta = model, stats, meta

    @property
    def teacher_names(self) -> list[str]:
        return [c.name for c in self.model.adapter_cfgs]

    @property
    def fingerprints(self) -> dict[str, str]:
        return dict(self.meta.get("fingerprints", {}))

    @property
    def patch_size(self) -> int:
        return self.model.student_cfg.patch_size

    @property
    def config(self) -> StudentConfig:
        return self.model.student_cfg

    def forward(self, images: torch.Tensor) -> RadioOutput:
        out, preds = self.model.forward_all(images)
        adapters = {t: (self.stats[t].denormalize(p) if t in self.stats else p) for t, p in preds.items()}
        return RadioOutput(out.summary_BTD[:, 0], out.features_BHWC(), out.summary_BTD, adapters)


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary sibling and rename, so a crash never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_student(path: str | Path, model: DistillModel, meta: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into directory ``path``; returns it.

    ``meta``: plain JSON data to keep with the weights: ``teachers`` (spec dicts), ``fingerprints``,
    ``stats`` (teacher -> ``TargetStats.to_dict()``, undone by the loaded model), provenance.
    """
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    cfg = {"format": FORMAT, "student": asdict(model.student_cfg), "adapters": [asdict(c) for c in model.adapter_cfgs], "meta": meta or {}}
    text = json.dumps(cfg, indent=1)  # before any write: a non-JSON meta fails without touching the directory
    _atomic_write(d / WEIGHTS, lambda p: save_file(state, str(p), metadata={"format": FORMAT}))
    _atomic_write(d / CONFIG, lambda p: p.write_text(text))
    return d


def load_student(path: str | Path, device: str | torch.device = "cpu") -> RadioModel:
    """Load an exported student (a directory with model.safetensors + config.json), in eval mode. No pickle."""
    d = Path(path)
    for f in (WEIGHTS, CONFIG):
        if not (d / f).is_file():
            raise CheckpointError(f"{d} is not a student checkpoint: {d / f} is missing (export one with `radio train`)")
    cfg = json.loads((d / CONFIG).read_text())
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{d / CONFIG}: format {cfg.get('format')!r}, this version reads {FORMAT!r}")
    s = cfg["student"]
    student = StudentConfig(**{**s, "mean": tuple(s["mean"]), "std": tuple(s["std"])})
    adapters = [AdapterConfig(**{**a, "feature_grid": tuple(a["feature_grid"])}) for a in cfg["adapters"]]
    model = DistillModel(student, adapters)
    state = load_file(str(d / WEIGHTS))
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise ValueError(f"{d / WEIGHTS} does not match {d / CONFIG}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(state)
    meta = cfg.get("meta", {})
    stats = {t: TargetStats.from_dict(v) for t, v in meta.get("stats", {}).items()}
    return RadioModel(model, stats, meta).to(device).eval()
