"""ONNX export of a student: ``radio export STUDENT --onnx OUT.onnx``.

The graph is :class:`radio.model.ExportableStudent`: input ``images`` float [0, 1] (B, 3, H, W) with
dynamic batch, height and width (multiples of the patch); outputs ``summary`` (B, T*D), ``features``
(B, N, D) and, per teacher, ``<teacher>.features`` (B, N, Ct) and ``<teacher>.summary`` (B, Dt) in
the teacher's space. After writing, the file is run with onnxruntime on two input sizes and compared
with PyTorch; the export fails if any output differs by more than ``ATOL``. Weights under 1 GB are stored in
the one ``.onnx`` file; bigger ones in ``OUT.onnx.data`` beside it (ONNX's protobuf limit is 2 GB), which must
travel with it.

The PyTorch model's input checks are in the graph too. ONNX has no assert operator, so a refusal is a Reshape
to an impossible shape, computed from the pixels: onnxruntime then stops with an error naming the node, whose
name says what was wrong (``refused__float_images_must_lie_in_0_1_...`` for values outside the accepted
[-0.5, 1.5], e.g. a 0-255 float image; ``refused__images_hold_NaN_or_Inf``;
``refused__the_input_resolution_must_be_a_multiple_of_min_resolution_step_<p>...`` for a side that is not a multiple
of the patch, whose "requested shape" in onnxruntime's message is the nearest supported (height, width), as
PyTorch's message names it). One graph takes one input dtype, and onnxruntime refuses any other before the graph
runs ("Unexpected input data type. Actual: (tensor(double))": cast numpy's float64 with ``.astype(np.float32)``;
the PyTorch model casts it itself):
``input_dtype="float32"`` (default; [0, 1]) or ``"uint8"`` ([0, 255], scaled in the graph), chosen at export
(``radio export ... --onnx-input uint8``); the PyTorch model takes both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import RadioModel

import contextlib
import io
from pathlib import Path
from typing import Any

import torch

__all__ = ["export_onnx", "ATOL", "OnnxExportError"]

ATOL = 1e-4  # float32 CPU: measured ~2e-6 on the nano student (tests pin 1e-4)
ONNX_SINGLE_FILE_LIMIT = 1 << 30  # weights below this are stored inside the .onnx file (one self-contained file)


class OnnxExportError(RuntimeError):
    pass


def export_onnx(
    model: RadioModel,
    path: str | Path,
    opset: int = 18,
    check: bool = True,
    verbose: bool = False,
    input_dtype: str = "float32",
) -> dict:
    """Write ``model`` (a RadioModel) to ``path`` as ONNX; returns {"path", "outputs", "max_abs_diff"}.

    ``input_dtype``: ``float32`` (images in [0, 1]) or ``uint8`` (images in [0, 255]).

    Needs ``onnx`` and ``onnxscript`` (and ``onnxruntime`` for the check): ``pip install radio-distill[onnx]``.
    """
    from .model import ExportableStudent

    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise OnnxExportError(
            "ONNX export needs onnx and onnxscript: pip install 'radio-distill[onnx]' (or onnx onnxscript onnxruntime)"
        ) from None
    if input_dtype not in ("float32", "uint8"):
        raise ValueError(
            f"input_dtype={input_dtype!r}: an ONNX student takes float32 images in [0, 1] or uint8 images in [0, 255]"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportableStudent(model, checks=False).eval()  # guard_inputs puts the checks in the graph
    names = graph.output_names()
    r = model.preferred_resolution
    x = torch.rand(2, 3, r.height, r.width)
    auto = torch.export.Dim.AUTO
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    n_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())
    external = n_bytes >= ONNX_SINGLE_FILE_LIMIT  # protobuf caps one file at 2 GB: bigger weights go to OUT.onnx.data
    with sink, torch.no_grad():
        torch.onnx.export(
            graph,
            (x,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=names,
            dynamic_shapes=({0: auto, 2: auto, 3: auto},),
            verbose=verbose,
            external_data=external,
        )
    guard_inputs(path, model.INPUT_RANGE, input_dtype, patch=model.patch_size)
    report = {
        "path": str(path),
        "outputs": names,
        "max_abs_diff": None,
        "external_data": str(path) + ".data" if external else None,
        "input_dtype": input_dtype,
    }
    if check:
        inputs = [
            x,
            torch.rand(1, 3, r.height + 2 * model.patch_size, max(model.patch_size, r.width - model.patch_size)),
        ]
        if input_dtype == "uint8":
            inputs = [(v * 255).round().to(torch.uint8) for v in inputs]
        report["max_abs_diff"] = check_onnx(graph, path, inputs)
    return report


def guard_inputs(
    path: str | Path, value_range: tuple[float, float], input_dtype: str = "float32", patch: int | None = None
) -> None:
    """Put the PyTorch model's input checks in front of the exported graph (see the module's docstring), and
    for ``uint8`` make the input uint8 [0, 255], scaled to [0, 1] in the graph. ``patch``: also refuse a side that
    is not a multiple of it, as PyTorch does, naming the nearest supported resolution."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path), load_external_data=False)  # weights in OUT.onnx.data stay there, untouched
    g = model.graph
    [inp] = [i for i in g.input if i.name == "images"]
    checked = "images_checked"
    for node in g.node:  # every use of the input now reads the checked (and scaled) images
        for i, name in enumerate(node.input):
            if name == "images":
                node.input[i] = checked

    def c(name: str, value, dtype=TensorProto.FLOAT):
        values = value if isinstance(value, list) else [value]
        dims = [len(value)] if isinstance(value, list) else []
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, values))

    nodes = [
        c("guard_zero", [0.0]),
        c("guard_ok_shape", [1], TensorProto.INT64),
        c("guard_bad_shape", [-7], TensorProto.INT64),
    ]

    def refuse_unless(ok: str, why: str) -> str:
        """A [1]-shaped zero when ``ok``, else a Reshape that fails in a node named ``refused__<why>``."""
        nodes.extend(
            [
                helper.make_node("Where", [ok, "guard_ok_shape", "guard_bad_shape"], [f"{why}_shape"]),
                helper.make_node("Reshape", ["guard_zero", f"{why}_shape"], [f"{why}_zero"], name=f"refused__{why}"),
            ]
        )
        return f"{why}_zero"

    if input_dtype == "uint8":
        inp.type.tensor_type.elem_type = TensorProto.UINT8
        nodes += [
            helper.make_node("Cast", ["images"], ["images_float"], to=TensorProto.FLOAT),
            c("guard_255", 255.0),
            helper.make_node("Div", ["images_float", "guard_255"], [checked]),
        ]  # [0, 255] -> [0, 1]: always in range
    else:
        lo, hi = value_range
        nodes += [
            helper.make_node("IsNaN", ["images"], ["guard_nan"]),
            helper.make_node("IsInf", ["images"], ["guard_inf"]),
            helper.make_node("Or", ["guard_nan", "guard_inf"], ["guard_bad"]),
            helper.make_node("Cast", ["guard_bad"], ["guard_bad_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", ["guard_bad_f"], ["guard_any_bad"], keepdims=0),
            c("guard_zero_s", 0.0),
            helper.make_node("Equal", ["guard_any_bad", "guard_zero_s"], ["guard_finite"]),
        ]
        finite = refuse_unless("guard_finite", "images_hold_NaN_or_Inf")
        nodes += [
            helper.make_node("ReduceMin", ["images"], ["guard_min"], keepdims=0),
            helper.make_node("ReduceMax", ["images"], ["guard_max"], keepdims=0),
            c("guard_lo", float(lo)),
            c("guard_hi", float(hi)),
            helper.make_node("GreaterOrEqual", ["guard_min", "guard_lo"], ["guard_min_ok"]),
            helper.make_node("LessOrEqual", ["guard_max", "guard_hi"], ["guard_max_ok"]),
            helper.make_node("And", ["guard_min_ok", "guard_max_ok"], ["guard_in_range"]),
        ]
        in_range = refuse_unless(
            "guard_in_range",
            f"float_images_must_lie_in_0_1_overshoot_{lo:g}_{hi:g}_accepted__divide_0_255_images_by_255_or_export_with_onnx_input_uint8",
        )
        nodes += [
            helper.make_node("Add", ["images", finite], ["images_finite"]),
            helper.make_node("Add", ["images_finite", in_range], [checked]),
        ]
    if patch:
        nodes[-1].output[0] = "images_guarded"  # the checked images are those of a supported size
        sized = refuse_resolution(nodes, patch, c)
        nodes.append(helper.make_node("Add", ["images_guarded", sized], [checked]))
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)
    onnx.save_model(model, str(path))  # the graph only: external weights keep pointing at OUT.onnx.data
    onnx.checker.check_model(str(path))  # by path: works above protobuf's 2 GB too


def refuse_resolution(nodes: list, patch: int, c: Any) -> str:
    """PyTorch's refusal of a side that is not a multiple of ``patch``, in the graph: a Reshape that fails in a node
    named ``refused__the_input_resolution_must_be_a_multiple_of_min_resolution_step_<p>...``, to a shape that is the
    nearest supported (height, width), as PyTorch's message names it (onnxruntime prints it as the "requested
    shape"). Returns the name of a zero (1, 1) to add to the images."""
    from onnx import TensorProto, helper

    why = (
        f"the_input_resolution_must_be_a_multiple_of_min_resolution_step_{patch}"
        "__the_requested_shape_is_the_nearest_supported_resolution"
    )
    nodes.extend(
        [
            helper.make_node("Shape", ["images"], ["guard_shape"]),
            c("guard_hw_index", [2, 3], TensorProto.INT64),
            helper.make_node("Gather", ["guard_shape", "guard_hw_index"], ["guard_hw"], axis=0),
            c("guard_patch", [patch], TensorProto.INT64),
            helper.make_node("Mod", ["guard_hw", "guard_patch"], ["guard_partial"]),
            c("guard_zero_i", [0], TensorProto.INT64),
            helper.make_node("Equal", ["guard_partial", "guard_zero_i"], ["guard_whole"]),
            helper.make_node("Cast", ["guard_whole"], ["guard_whole_i"], to=TensorProto.INT64),
            helper.make_node("ReduceMin", ["guard_whole_i"], ["guard_all_whole"], keepdims=0),
            c("guard_one_i", 1, TensorProto.INT64),
            helper.make_node("Equal", ["guard_all_whole", "guard_one_i"], ["guard_sized"]),
            # nearest: max(p, round(side / p) * p), rounding half to even as Python's round (and ONNX's Round)
            helper.make_node("Cast", ["guard_hw"], ["guard_hw_f"], to=TensorProto.FLOAT),
            c("guard_patch_f", float(patch)),
            helper.make_node("Div", ["guard_hw_f", "guard_patch_f"], ["guard_cells"]),
            helper.make_node("Round", ["guard_cells"], ["guard_cells_r"]),
            helper.make_node("Mul", ["guard_cells_r", "guard_patch_f"], ["guard_near_f"]),
            helper.make_node("Max", ["guard_near_f", "guard_patch_f"], ["guard_near_m"]),
            helper.make_node("Cast", ["guard_near_m"], ["guard_near"], to=TensorProto.INT64),
            helper.make_node("Where", ["guard_sized", "guard_ok_shape", "guard_near"], [f"{why}_shape"]),
            helper.make_node("Reshape", ["guard_zero", f"{why}_shape"], ["guard_sized_zero"], name=f"refused__{why}"),
        ]
    )
    return "guard_sized_zero"


def check_onnx(graph: Any, path: str | Path, inputs: list[torch.Tensor]) -> float:
    """Largest |onnxruntime - PyTorch| over every output and input; raises OnnxExportError above ATOL."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxExportError(
            "checking the export needs onnxruntime: pip install onnxruntime (or pass check=False / --no-check)"
        ) from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    for x in inputs:
        got = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = graph(x.float() / 255 if x.dtype == torch.uint8 else x)
        for n, g in zip(names, got, strict=True):
            d = float((torch.from_numpy(g) - ref[n]).abs().max())
            if not d <= ATOL:
                raise OnnxExportError(
                    f"{path}: output {n!r} differs from PyTorch by {d:.3g} (> {ATOL}) at input {tuple(x.shape)}"
                )
            worst = max(worst, d)
    return worst
