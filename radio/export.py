"""ONNX export of a student: ``radio export STUDENT --onnx OUT.onnx``.

The graph is :class:`radio.model.ExportableStudent`: input ``images`` float [0, 1] (B, 3, H, W) with
dynamic batch, height and width (multiples of the patch); outputs ``summary`` (B, T*D), ``features``
(B, N, D) and, per teacher, ``<teacher>.features`` (B, N, Ct) and ``<teacher>.summary`` (B, Dt) in
the teacher's space. After writing, the file is run with onnxruntime on two input sizes and compared
with PyTorch; the export fails if any output differs by more than ``ATOL``. Weights under 1 GB are stored in
the one ``.onnx`` file; bigger ones in ``OUT.onnx.data`` beside it (ONNX's protobuf limit is 2 GB), which must
travel with it. A side that is not a multiple of the patch fails in onnxruntime (a Reshape that needs whole
patches), as the student refuses it; ONNX graphs cannot raise on values, so the [0, 1] range and NaN checks
of the PyTorch model are not in the file: feed it float32 images in [0, 1].
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

__all__ = ["export_onnx", "ATOL", "OnnxExportError"]

ATOL = 1e-4  # float32 CPU: measured ~2e-6 on the nano student (tests pin 1e-4)
ONNX_SINGLE_FILE_LIMIT = 1 << 30  # weights below this are stored inside the .onnx file (one self-contained file)


class OnnxExportError(RuntimeError):
    pass


def export_onnx(model, path: str | Path, opset: int = 18, check: bool = True, verbose: bool = False) -> dict:
    """Write ``model`` (a RadioModel) to ``path`` as ONNX; returns {"path", "outputs", "max_abs_diff"}.

    Needs ``onnx`` and ``onnxscript`` (and ``onnxruntime`` for the check): ``pip install radio-distill[onnx]``.
    """
    from .model import ExportableStudent

    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise OnnxExportError("ONNX export needs onnx and onnxscript: pip install 'radio-distill[onnx]' (or onnx onnxscript onnxruntime)") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportableStudent(model).eval()
    names = graph.output_names()
    r = model.preferred_resolution
    x = torch.rand(2, 3, r.height, r.width)
    auto = torch.export.Dim.AUTO
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    n_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())
    external = n_bytes >= ONNX_SINGLE_FILE_LIMIT  # protobuf caps one file at 2 GB: bigger weights go to OUT.onnx.data
    with sink, torch.no_grad():
        torch.onnx.export(graph, (x,), str(path), dynamo=True, opset_version=opset, input_names=["images"], output_names=names,
                          dynamic_shapes=({0: auto, 2: auto, 3: auto},), verbose=verbose, external_data=external)
    report = {"path": str(path), "outputs": names, "max_abs_diff": None, "external_data": str(path) + ".data" if external else None}
    if check:
        report["max_abs_diff"] = check_onnx(graph, path, [x, torch.rand(1, 3, r.height + 2 * model.patch_size, max(model.patch_size, r.width - model.patch_size))])
    return report


def check_onnx(graph, path: str | Path, inputs: list[torch.Tensor]) -> float:
    """Largest |onnxruntime - PyTorch| over every output and input; raises OnnxExportError above ATOL."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxExportError("checking the export needs onnxruntime: pip install onnxruntime (or pass check=False / --no-check)") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for x in inputs:
        got = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = graph(x)
        for n, g in zip(names, got):
            d = float((torch.from_numpy(g) - ref[n]).abs().max())
            if not d <= ATOL:
                raise OnnxExportError(f"{path}: output {n!r} differs from PyTorch by {d:.3g} (> {ATOL}) at input {tuple(x.shape)}")
            worst = max(worst, d)
    return worst
