"""A radio student as an MLflow model: one model, two ways to run it, no pickle.

- the ``pytorch`` flavor: the student's graph exported by ``torch.export`` (``pt2``) with dynamic batch, height
  and width, so ``mlflow.pytorch.load_model(uri)(x)`` runs at every batch size (1 included) and every resolution
  the student supports with sides of at least two patches (torch.export specializes a size-1 side). It takes
  float32 images in [0, 1], as the graph it is;
- the ``python_function`` flavor, served by this module (``loader_module``): an image batch (B, 3, H, W) in,
  as a numpy array or a dict with one entry (``{"images": x}``): float (float32, float64, float16) in [0, 1], or
  uint8 (or a JSON request's integers) in [0, 255]; named arrays out (``summary``, ``features``,
  ``<teacher>.summary``, ``<teacher>.features``, teachers' in their own space). It loads the student's
  safetensors (carried as extra files) with ``radio.load_student``, checks its input as the student does, and
  backs ``mlflow.pyfunc.load_model`` and ``mlflow models serve``.

The signature records the outputs and no input schema: MLflow's tensor schema holds one dtype and one input
shape (an array or a dict, not both), so any input schema would refuse, before radio's code runs, inputs this
model takes. The input contract is the model's metadata (``radio.input``) and radio's own checks, whose errors
name the problem.

Logged as ``runs:/<run_id>/model`` with ``mlflow.models.Model.log(flavor=this module, ...)`` (see
``pipelines.tracking._send_student``).
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
    outputs_schema = Schema(
        [
            TensorSpec(v.numpy().dtype, (-1, -1, v.shape[-1]) if v.ndim == 3 else (-1, v.shape[-1]), k)
            for k, v in outputs.items()
        ]
    )
    # the pt2 export reads its dynamic dimensions (-1: batch, height, width) from a tensor input schema
    export_signature = ModelSignature(inputs=Schema([TensorSpec(example.numpy().dtype, (-1, 3, -1, -1))]))
    files = [os.path.join(student_dir, f) for f in FLAVOR_FILES]
    mlflow.pytorch.save_model(
        graph,
        path,
        mlflow_model=mlflow_model,
        signature=export_signature,
        input_example=example.numpy(),
        extra_files=files,
        pip_requirements=pip_requirements,
        serialization_format="pt2",
    )
    mlflow_model.flavors["python_function"]["loader_module"] = (
        __name__  # predict() below, not the single-tensor pytorch wrapper
    )
    mlflow_model.signature = ModelSignature(outputs=outputs_schema)  # no input schema: see the module docstring
    p = graph.radio.patch_size
    mlflow_model.metadata = {
        **(mlflow_model.metadata or {}),
        "radio.input": (
            f"images (B, 3, H, W), H and W multiples of {p}: float in [0, 1] (float32, float64, float16) or uint8 "
            "in [0, 255]; pyfunc also takes {'images': array}. mlflow.pytorch.load_model's graph takes float32, "
            f"sides of at least {2 * p} px"
        ),
    }
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
        import torch

        with torch.no_grad():
            out = self.graph.forward_normalized(
                self.radio._condition(as_images(data))
            )  # the student's own input checks and normalization
        return {k: v.numpy() for k, v in out.items()}


def as_images(data):
    """What a pyfunc client sends -> a torch image batch: a dict with one entry (a named input, or
    ``{"images": x}``), a DataFrame of one column, a list or an array; floats as float32, integers (what a
    JSON request's numbers become) as uint8 when they lie in [0, 255]."""
    import numpy as np
    import torch

    if isinstance(data, dict):
        if len(data) != 1:
            raise ValueError(f"expected one input, an image batch (B, 3, H, W); got a dict with keys {sorted(data)}")
        data = next(iter(data.values()))
    if hasattr(data, "to_numpy"):  # a DataFrame
        data = data.to_numpy()
    x = np.asarray(data)
    if x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    elif x.dtype.kind in "iu" and x.dtype != np.uint8:
        lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ValueError(
                f"integer images must lie in [0, 255] (uint8 pixels), got values in [{lo}, {hi}]; "
                "send float images in [0, 1] or uint8"
            )
        x = x.astype(np.uint8)
    elif x.dtype != np.uint8:
        raise TypeError(f"images must be float in [0, 1] or uint8 in [0, 255], got an array of {x.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x))
