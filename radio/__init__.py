"""radio: the student library. ViT trunk, adapters, losses, target statistics, the cache format, views,
checkpoints. Depends on torch, numpy, pyarrow, safetensors and Pillow only."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_student", "resolve_student", "__version__"]


def resolve_student(path_or_run: str, tracking_uri: str | None = None):
    """(student directory, MLflow run id or None) for an exported directory or a run id.

    A run id is resolved with MLflow (the library's one, optional, use of it): the run's output
    directory when it is still on this machine, else its ``student`` artifact, downloaded.
    """
    import json
    from pathlib import Path

    p = Path(path_or_run)
    if p.exists():
        cfg = p / "config.json"
        meta = json.loads(cfg.read_text()).get("meta", {}) if cfg.is_file() else {}
        return p, meta.get("mlflow_run_id")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise FileNotFoundError(f"{path_or_run}: no such student directory (and MLflow is not installed to resolve it as a run id)") from None
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(path_or_run)
    except Exception:
        raise FileNotFoundError(f"{path_or_run!r} is neither a student directory nor an MLflow run id in {client.tracking_uri}") from None
    out = run.data.tags.get("radio.output")
    if out and (Path(out) / "student").is_dir():
        return Path(out) / "student", path_or_run
    return Path(client.download_artifacts(path_or_run, "student")), path_or_run


def load_student(path_or_run: str, device: str = "cpu"):
    """A trained student, ready for inference: ``model(images_uint8_B3HW)`` -> RadioOutput.

    ``path_or_run`` is an exported student directory (``OUTPUT/student``) or an MLflow run id.
    """
    from .checkpoint import load_student as _load

    return _load(resolve_student(path_or_run)[0], device)
