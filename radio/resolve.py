"""Where a student named by the user lives: a directory, an MLflow run or URI, or a Hugging Face hub id.

Below ``radio/model.py`` (which loads what this finds) and above ``radio/hub.py`` (downloads)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_student", "student_dir_in"]


def student_dir_in(root: str | os.PathLike) -> Path:
    """The folder under ``root`` holding a student's config.json and model.safetensors (MLflow nests it)."""
    from pathlib import Path

    for cfg in sorted(Path(root).rglob("config.json")):
        if (cfg.parent / "model.safetensors").is_file():
            return cfg.parent
    raise FileNotFoundError(f"{root} holds no student (config.json beside model.safetensors)")


def _meta(d) -> dict:
    """A student directory's ``meta`` (empty when its config is missing or unreadable: loading reports that)."""
    import json
    from pathlib import Path

    try:
        cfg = json.loads((Path(d) / "config.json").read_text())
        return cfg.get("meta", {}) if isinstance(cfg, dict) else {}
    except (OSError, ValueError):
        return {}


def resolve_student(ref: str, tracking_uri: str | None = None, revision: str | None = None) -> tuple[Path, str | None]:
    """(student directory, MLflow run id or None) for any way of naming a student:

    - a directory (``OUTPUT/student``, or one written by ``save_pretrained``);
    - an MLflow run id (its output directory when still on this machine, else its ``student`` artifact)
      or an MLflow URI (``runs:/<run_id>/student``, ``models:/<name>/<version>``, ``models:/m-<model id>``);
    - a Hugging Face hub id ``org/name`` (``revision``: a branch, tag or commit), downloaded to the hub
      cache, or read from it when ``HF_HUB_OFFLINE=1``.
    """
    import re
    from pathlib import Path

    p = Path(ref)
    if p.exists():
        return p, _meta(p).get("mlflow_run_id")
    if ref.startswith(("runs:/", "models:/")):
        try:
            import mlflow.artifacts
        except ImportError:
            raise FileNotFoundError(f"{ref}: MLflow is not installed to resolve it") from None
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=ref, tracking_uri=tracking_uri)
        except Exception as e:
            raise FileNotFoundError(
                f"{ref}: not found in MLflow at {tracking_uri or mlflow.get_tracking_uri()} ({type(e).__name__}: {e})"
            ) from None
        d = student_dir_in(local)
        return d, _meta(d).get("mlflow_run_id")
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        return _resolve_run(ref, tracking_uri)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref):
        from .hub import download

        return download(ref, revision), None
    raise FileNotFoundError(
        f"{ref!r} is not a student directory, an MLflow run id or URI (runs:/..., models:/...), or a Hugging "
        "Face hub id (org/name)"
    )


def _resolve_run(run_id: str, tracking_uri: str | None):
    from pathlib import Path

    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise FileNotFoundError(
            f"{run_id}: no such student directory (and MLflow is not installed to resolve it as a run id)"
        ) from None
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise FileNotFoundError(
            f"{run_id!r} is neither a student directory nor an MLflow run id in {client.tracking_uri}"
        ) from None
    out = run.data.tags.get("radio.output")
    if out and (Path(out) / "student").is_dir():
        return Path(out) / "student", run_id
    return Path(client.download_artifacts(run_id, "student")), run_id
