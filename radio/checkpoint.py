"""Student checkpoints: safetensors weights + a JSON config, loaded with no pickle.

``load_student(path)`` returns a :class:`RadioModel` whose output mirrors NVIDIA RADIO's public API:
``summary`` and ``features`` from the trunk, plus ``adapters[teacher]`` in that teacher's own space
(the training-time standardization is undone), so an adapter output can stand in for the teacher.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .adapters import AdapterConfig, AdapterHeads
from .normalize import TargetStats
from .student import StudentConfig, ViTStudent

__all__ = ["DistillModel", "RadioModel", "RadioOutput", "save_student", "load_student", "CheckpointError"]

WEIGHTS, CONFIG = "model.safetensors", "config.json"


class CheckpointError(FileNotFoundError):
    pass


def to_model_input(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images (B, 3, H, W) -> normalized float."""
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif not torch.is_floating_point(x):
        raise TypeError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class DistillModel(nn.Module):
    """Trunk + heads, as trained. ``forward(images)`` -> {teacher: {"summary", "features"}} (normalized space)."""

    def __init__(self, student: StudentConfig, adapters: list[AdapterConfig]):
        super().__init__()
        self.trunk = ViTStudent(student)
        self.student_cfg, self.adapter_cfgs = self.trunk.cfg, list(adapters)
        self.heads = AdapterHeads(self.adapter_cfgs, self.trunk.cfg.dim, self.trunk.cfg.summary_teachers)

    def forward_all(self, images: torch.Tensor):
        out = self.trunk(to_model_input(images, self.student_cfg.mean, self.student_cfg.std))
        return out, self.heads(out)

    def forward(self, images: torch.Tensor) -> dict:
        return self.forward_all(images)[1]


@dataclass
class RadioOutput:
    summary: torch.Tensor  # (B, D): the first summary token (B, T, D in summary_tokens)
    features: torch.Tensor  # (B, h, w, D) trunk features; .permute(0, 3, 1, 2) for NCHW
    summary_tokens: torch.Tensor  # (B, T, D)
    adapters: dict  # teacher -> {"summary": (B, Dt)?, "features": (B, h, w, Ct)} in the teacher's space


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

    def forward(self, images: torch.Tensor) -> RadioOutput:
        out, preds = self.model.forward_all(images)
        adapters = {}
        for t, p in preds.items():
            st = self.stats.get(t)
            a = {"features": st.denormalize_features(p["features"]) if st else p["features"]}
            if "summary" in p:
                a["summary"] = st.denormalize_summary(p["summary"]) if st else p["summary"]
            adapters[t] = a
        return RadioOutput(out.summary_BTD[:, 0], out.features_BHWC(), out.summary_BTD, adapters)


def save_student(path: str | Path, model: DistillModel, meta: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (student, adapters, and ``meta``: specs, stats, ...)."""
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS))
    cfg = {"format": "radio-student/1", "student": asdict(model.student_cfg), "adapters": [asdict(c) for c in model.adapter_cfgs], "meta": meta or {}}
    (d / CONFIG).write_text(json.dumps(cfg, indent=1))
    return d


def load_student(path: str | Path, device: str | torch.device = "cpu") -> RadioModel:
    """Load an exported student (a directory with model.safetensors + config.json). No pickle."""
    d = Path(path)
    for f in (WEIGHTS, CONFIG):
        if not (d / f).is_file():
            raise CheckpointError(f"{d} is not a student checkpoint: {f} is missing (export one with `radio train`)")
    cfg = json.loads((d / CONFIG).read_text())
    s = cfg["student"]
    student = StudentConfig(**{**s, "mean": tuple(s["mean"]), "std": tuple(s["std"])})
    adapters = [AdapterConfig(**{**a, "feature_grid": tuple(a["feature_grid"])}) for a in cfg["adapters"]]
    model = DistillModel(student, adapters)
    model.load_state_dict(load_file(str(d / WEIGHTS)))
    meta = cfg.get("meta", {})
    stats = {t: TargetStats.from_dict(v) for t, v in meta.get("stats", {}).items()}
    return RadioModel(model, stats, meta).to(device).eval()
