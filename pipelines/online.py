"""Online teachers: frozen teachers run inside the training step on the student's views.

A cheap teacher (CLIP-B/16 forwards ~10000 views/s on an H100) can cost less to run than its cached
targets cost to read (~0.3 MB per view at 224 px). Its targets are computed per batch on the training
device, resampled to the student's grid and standardized, and never stored. The statistics that
standardize them come from the cache when it holds that teacher, otherwise from a warm-up pass over the
first ``stats_batches`` batches before step 0 (identical on every rank), saved in the run's output
directory so a resumed run uses the very same numbers.

An online teacher sees the *stored student view* (``student_resolution`` px), not the full-resolution crop
a cached teacher saw: for a teacher whose input is larger (SAM at 1024 px) the targets come from an
upsampled image, and the job says so.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from radio.normalize import RunningStats, TargetStats
from radio.targets import resample_targets

__all__ = ["OnlineTeacherConfig", "OnlineTeachers"]


@dataclass
class OnlineTeacherConfig:
    """A teacher run in the training step. ``source``/``revision`` default to the registry's."""

    source: str | None = None
    revision: str | None = None
    dtype: Literal["fp32", "bf16", "fp16"] | None = None  # None: bf16 on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the teacher's model
    stats_batches: int = 20  # warm-up batches for its statistics when the cache does not hold it


class OnlineTeachers:
    """The online teachers of one run: ``targets(images_B3HW, grid_hw)`` -> raw targets per teacher."""

    STATS_FILE = "online_stats.json"

    def __init__(self, configs: dict[str, OnlineTeacherConfig], device, student_resolution: int):
        from teachers import create_teacher

        self.teachers = {}
        for name, c in configs.items():
            dtype = c.dtype or ("bf16" if torch.device(device).type == "cuda" else "fp32")
            t = create_teacher(name, source=c.source, revision=c.revision, dtype=dtype, device=device)
            if c.compile:
                t.model.compile()
            self.teachers[name] = t
            if max(t.spec.input_size) > student_resolution:
                print(
                    f"[radio train] warning: online teacher {name} "
                    f"takes {t.spec.input_size[0]}x{t.spec.input_size[1]} inputs but sees the "
                    f"stored {student_resolution}px student views, upsampled: its targets will be "
                    "blurrier than cached ones (a cached teacher sees the full-resolution "
                    "crop). Cache it instead if that matters.",
                    file=sys.stderr,
                )
        self.configs = configs

    @property
    def specs(self) -> dict[str, dict]:
        return {n: t.spec.to_dict() for n, t in self.teachers.items()}

    def targets(self, images_B3HW: torch.Tensor, grid_hw: tuple[int, int]) -> dict[str, dict[str, torch.Tensor]]:
        """Raw (unstandardized) float32 targets at the student's grid, for uint8 images on the device."""
        out = {}
        for name, t in self.teachers.items():
            o = t(images_B3HW)
            # outputs of inference mode cannot be saved for backward; a clone outside it can
            feats = resample_targets(o.features_BHWC, grid_hw, o.valid_hw_B2).clone()
            out[name] = {"features": feats}
            if o.summary_BD is not None:
                out[name]["summary"] = o.summary_BD.float().clone()
        return out

    def statistics(
        self,
        cache_stats: dict[str, TargetStats],
        batches,
        grid_hw: tuple[int, int],
        out_dir: Path | None,
        device,
        write: bool = True,
    ) -> tuple[dict[str, TargetStats], dict[str, str]]:
        """Each online teacher's standardization and where it came from ("cache", "warm-up (N views)", or
        "saved" on resume). ``batches``: an iterable of loader batches for the warm-up; ``write``: save them
        to ``out_dir`` (the main process only)."""
        stats, origin = {}, {}
        saved_path = out_dir / self.STATS_FILE if out_dir is not None else None
        saved = json.loads(saved_path.read_text()) if saved_path is not None and saved_path.is_file() else {}
        need = []
        for name in self.teachers:
            if name in saved:
                stats[name], origin[name] = TargetStats.from_dict(saved[name]), "saved"
            elif name in cache_stats:
                stats[name], origin[name] = cache_stats[name], "cache"
            else:
                need.append(name)
        if need:
            n_batches = max(self.configs[n].stats_batches for n in need)
            feats = {n: RunningStats() for n in need}
            summ = {n: RunningStats() for n in need}
            views = 0
            for k, batch in enumerate(batches):
                if k >= n_batches:
                    break
                keep = batch["weight"] > 0
                images = batch["image"][keep].to(device)
                views += len(images)
                for n, tgt in self.targets(images, grid_hw).items():
                    if n in feats:
                        feats[n].update(tgt["features"].reshape(-1, tgt["features"].shape[-1]))
                        if "summary" in tgt:
                            summ[n].update(tgt["summary"])
            for n in need:
                stats[n] = TargetStats.from_running(feats[n], summ[n] if summ[n].count else None)
                origin[n] = f"warm-up ({views} views)"
        if saved_path is not None and write:
            saved_path.parent.mkdir(parents=True, exist_ok=True)
            saved_path.write_text(json.dumps({n: stats[n].to_dict() for n in self.teachers}, indent=1))
        return stats, origin
