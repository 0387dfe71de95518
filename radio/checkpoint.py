"""Student checkpoints: safetensors weights + a JSON config, loaded with no pickle.

A student directory holds ``model.safetensors`` (trunk + heads) and ``config.json``::

    {"format": "radio-student/1", "student": StudentConfig, "adapters": [AdapterConfig, ...],
     "meta": {"teachers": {name: spec dict}, "fingerprints": {...}, "stats": {name: TargetStats dict}, ...}}

``read_student(path)`` checks and reads those files; ``radio.model.load_student(path)`` builds the
:class:`RadioModel` from them (NVIDIA RADIO's public API: ``summary, features = model(x)``, adaptors chosen by
name in their teacher's own space). This module sits below ``radio/model.py``: it never imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .adapters import AdapterConfig
from .student import StudentConfig

__all__ = ["save_student", "read_student", "image_processor_config", "StudentFiles", "CheckpointError", "FORMAT"]

WEIGHTS, CONFIG, PROCESSOR = "model.safetensors", "config.json", "preprocessor_config.json"
# The model_type of config.json. transformers names it in the error it raises for a model type it does not know (a
# student loaded without ``import radio``), so it says what to do; no remote code is ever offered. Students exported
# before it carry LEGACY_MODEL_TYPE; ``radio.hf`` registers both with transformers' Auto classes.
MODEL_TYPE = "radio-student (pip install radio-distill, then import radio before loading)"
LEGACY_MODEL_TYPE = "radio-student"
FORMAT = "radio-student/1"


class CheckpointError(FileNotFoundError):
    pass


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary sibling and rename, so a crash never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_student(path: str | Path, model: Any, meta: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` of ``model`` (a ``radio.model.DistillModel``) into
    directory ``path``; returns it.

    ``meta``: plain JSON data to keep with the weights: ``teachers`` (spec dicts), ``fingerprints``,
    ``stats`` (teacher -> ``TargetStats.to_dict()``, undone by the loaded model), provenance.
    """
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    blob = save_bytes(state, metadata={"format": FORMAT})
    # the config records the weights' sha256: load_student refuses weights changed since they were written
    cfg = {
        "format": FORMAT,
        "model_type": MODEL_TYPE,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "student": asdict(model.student_cfg),
        "adapters": [asdict(c) for c in model.adapter_cfgs],
        "meta": meta or {},
    }
    cfg["config_sha256"] = _config_sha256(cfg)  # the whole config covered: an edited mean or width is refused
    text = json.dumps(cfg, indent=1)  # before any write: a non-JSON meta fails without touching the directory
    _atomic_write(d / WEIGHTS, lambda p: p.write_bytes(blob))
    _atomic_write(d / CONFIG, lambda p: p.write_text(text))
    processor = json.dumps(image_processor_config(model.student_cfg, (meta or {}).get("resolution")), indent=1)
    _atomic_write(d / PROCESSOR, lambda p: p.write_text(processor))
    return d


def image_processor_config(student: StudentConfig, resolution: int | None = None) -> dict:
    """``preprocessor_config.json``: what ``AutoImageProcessor`` and ``pipeline("image-feature-extraction")`` use.
    As RADIO's: CLIP's processor resizing to the resolution the student was distilled at (bicubic) and scaling to
    [0, 1], without normalizing (the model normalizes with its own mean/std, recorded here for reference)."""
    r = int(resolution or student.img_size or 224)
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": r, "width": r},
        "resample": 3,  # PIL bicubic
        "do_center_crop": False,
        "crop_size": {"height": r, "width": r},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": False,
        "image_mean": list(student.mean),
        "image_std": list(student.std),
    }


def _config_sha256(cfg: dict) -> str:
    """sha256 of a student config's canonical JSON, its own checksum left out."""
    rest = {k: v for k, v in cfg.items() if k != "config_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class StudentFiles(NamedTuple):
    """What a student directory holds, checked: configs, the weights' tensors and ``meta``."""

    path: Path
    student: StudentConfig
    adapters: list[AdapterConfig]
    state: dict[str, torch.Tensor]
    meta: dict


def read_student(path: str | Path) -> StudentFiles:
    """Read an exported student (a directory with model.safetensors + config.json). No pickle. Missing, damaged
    or changed files are one :class:`CheckpointError` naming the file and the repair."""
    d = Path(path)
    for f in (WEIGHTS, CONFIG):
        if not (d / f).is_file():
            raise CheckpointError(
                f"{d} is not a student checkpoint: {d / f} is missing (export one with `radio train`)"
            )
    try:
        cfg = json.loads((d / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{d / CONFIG} is not valid JSON ({e}): the student checkpoint is damaged; export it again "
            "(radio train ... resume=true re-exports)"
        ) from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(
            f"{d / CONFIG}: format {cfg.get('format') if isinstance(cfg, dict) else None!r}, "
            f"this version reads {FORMAT!r}"
        )
    want_cfg = cfg.get("config_sha256")  # absent in students written before it: read as they are
    if want_cfg is not None and _config_sha256(cfg) != want_cfg:
        raise CheckpointError(
            f"{d / CONFIG} does not match its recorded config_sha256: it was edited or damaged since export "
            "(its normalization, sizes or teachers cannot be trusted). Export the student again "
            "(radio train ... resume=true re-exports from the last checkpoint) or load another copy"
        )
    s = cfg["student"]
    student = StudentConfig(**{**s, "mean": tuple(s["mean"]), "std": tuple(s["std"])})
    adapters = [AdapterConfig(**{**a, "feature_grid": tuple(a["feature_grid"])}) for a in cfg["adapters"]]
    blob = (d / WEIGHTS).read_bytes()
    want = cfg.get("weights_sha256")  # absent in students written before checksums: loaded as they are
    if want is not None and hashlib.sha256(blob).hexdigest() != want:
        raise CheckpointError(
            f"{d / WEIGHTS} does not match the sha256 recorded in {d / CONFIG} ({len(blob)} "
            "bytes): the weights were changed or damaged since export. "
            "Export the student again (radio train ... resume=true re-exports from the last checkpoint) or "
            "load another copy"
        )
    try:
        state = load_bytes(blob)
    except Exception as e:  # truncated or not safetensors at all
        raise CheckpointError(
            f"{d / WEIGHTS} cannot be read as safetensors ({type(e).__name__}: {e}): the student checkpoint "
            "is damaged; export it again"
        ) from None
    meta = cfg.get("meta", {})
    if (d / "eval" / "metrics.json").is_file() and "eval" not in meta:  # what `radio eval` measured, for the model card
        meta["eval"] = json.loads((d / "eval" / "metrics.json").read_text())
    return StudentFiles(d, student, adapters, state, meta)
