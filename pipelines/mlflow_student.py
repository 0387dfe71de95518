"""A radio student as an MLflow model: one model, two ways to run it, no pickle.

- the ``pytorch`` flavor: the student's graph exported by ``torch.export`` (``pt2``) with dynamic batch, height
  and width, so ``mlflow.pytorch.load_model(uri)(x)`` runs at every resolution the student supports;
- the ``python_function`` flavor, served by this module (``loader_module``): a numpy image batch (B, 3, H, W),
  float in [0, 1] or uint8, in; named arrays out (``summary``, ``features``, ``<teacher>.summary``,
  ``<teacher>.features``, teachers' in their own space). It loads the student's safetensors (carried as extra
  files) with ``radio.load_student``, checks its input as the student does, and backs ``mlflow.pyfunc.load_model``
  and ``mlflow models serve``.

Logged with ``mlflow.models.Model.log(flavor=this module, ...)`` (see ``pipelines.tracking._send_student``).
"""

from __future__ import annotations

import os
from pathlib import Path

FLAVOR_FILES = ("config.json", "model.safetensors")


def save_model(path, mlflow_model=None, student_dir: str = "", resolution: int = 224, pip_requirements=None, **kwargs):
    """Write the MLflow model at ``path``: the pytorch flavor (pt2, dynamic shapes) with the student's files,
    and a python_function flavor that this module loads."""
    import mlflow.pytorch
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from radio import load_student
    from radio.model import ExportableStudent

    graph = ExportableStudent(load_student(str(student_dir))).eval()
    example = torch.rand(2, 3, resolution, resolution)
    with torch.no_grad():
        outputs = graph(example)
    # unnamed input: pyfunc hands predict the array itself; -1: batch, height and width are dynamic in the export
    signature = ModelSignature(
        inputs=Schema([TensorSpec(example.numpy().dtype, (-1, 3, -1, -1))]),
        outputs=Schema(
            [
                TensorSpec(v.numpy().dtype, (-1, -1, v.shape[-1]) if v.ndim == 3 else (-1, v.shape[-1]), k)
                for k, v in outputs.items()
            ]
        ),
    )
    files = [os.path.join(student_dir, f) for f in FLAVOR_FILES]
    mlflow.pytorch.save_model(
        graph,
        path,
        mlflow_model=mlflow_model,
        signature=signature,
        input_example=example.numpy(),
        extra_files=files,
        pip_requirements=pip_requirements,
        serialization_format="pt2",
    )
    mlflow_model.flavors["python_function"]["loader_module"] = (
        __name__  # predict() below, not the single-tensor pytorch wrapper
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))


def _load_pyfunc(data_path: str, model_config=None):
    """MLflow's pyfunc entry: ``data_path`` is the model's ``data`` folder; the student's files sit beside it."""
    from radio import load_student
    from radio.resolve import student_dir_in

    root = Path(data_path)
    while not (root / "MLmodel").is_file() and root != root.parent:
        root = root.parent
    return StudentPyfunc(load_student(str(student_dir_in(root))))


class StudentPyfunc:
    """``predict(images)``: (B, 3, H, W) float in [0, 1] (bicubic overshoot accepted) or uint8 -> {name: array}."""

    def __init__(self, model):
        from radio.model import ExportableStudent

        self.radio = model.eval()
        self.graph = ExportableStudent(model).eval()

    def predict(self, data, params=None):
        import numpy as np
        import torch

        if isinstance(data, dict):  # a named input, or {"images": ...} from a client
            if len(data) != 1:
                raise ValueError(f"expected one input, an image batch (B, 3, H, W); got {sorted(data)}")
            data = next(iter(data.values()))
        if hasattr(data, "to_numpy"):  # a DataFrame
            data = data.to_numpy()
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(data)))
        if x.dtype == torch.float64:
            x = x.float()
        with torch.no_grad():
            out = self.graph.forward_normalized(
                self.radio._condition(x)
            )  # the student's own input checks and normalization
        return {k: v.numpy() for k, v in out.items()}
