"""radio: the student library. ViT trunk, adapters, losses, target statistics, the cache format, views,
checkpoints. Depends on torch, numpy, pyarrow, safetensors and Pillow only."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_student", "__version__"]


def load_student(path_or_run: str, device: str = "cpu"):
    """A trained student, ready for inference: ``model(images_uint8_B3HW)`` -> RadioOutput.

    ``path_or_run`` is an exported student directory (``OUTPUT/student``), or an MLflow run id whose
    ``student`` artifact is fetched with MLflow (the library's one optional use of it).
    """
    from pathlib import Path

    from .checkpoint import load_student as _load

    p = Path(path_or_run)
    if p.exists():
        return _load(p, device)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise FileNotFoundError(f"{path_or_run}: no such student directory (and MLflow is not installed to resolve it as a run id)") from None
    client = MlflowClient()
    try:
        run = client.get_run(path_or_run)
    except Exception:
        raise FileNotFoundError(f"{path_or_run!r} is neither a student directory nor an MLflow run id in {client.tracking_uri}") from None
    out = run.data.tags.get("radio.output")
    if out and (Path(out) / "student").is_dir():
        return _load(Path(out) / "student", device)
    return _load(client.download_artifacts(path_or_run, "student"), device)
