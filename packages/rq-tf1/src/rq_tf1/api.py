"""quantize_frozen_graph: vai_q_tensorflow's flow with its arguments, as a Python call.

Everything is written into a fresh folder beside ``output_dir`` and moved into place only when the
eval model and the ONNX model are both complete: a failure leaves no partial output.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from rq_common.errors import SpecError
from rq_common.format import require_valid
from rq_common.io import check_output_path, save_onnx
from rq_common.pipeline import QuantizeResult
from rq_common.qmath.equalization import Equalization, equalization_for
from rq_common.spec import CalibrationMethod, Preset, get_preset, require_eight_bit_activations
from rq_tf1.calibrate import calibrate
from rq_tf1.equalize import equalize_graph
from rq_tf1.errors import GraphError, InputFnError
from rq_tf1.export import to_onnx
from rq_tf1.graphdef import GraphDef, load_frozen_graph, nodes_by_name, require_nodes, run
from rq_tf1.plan import Tf1Plan, make_plan
from rq_tf1.quantized_graph import quantized_graph
from rq_tf1.transforms import prepare, round_leaky_alphas

EVAL_MODEL = "quantize_eval_model.pb"
ONNX_MODEL = "quantized.onnx"
VAI_METHODS = {0: CalibrationMethod.POT_NONOVERFLOW, 1: CalibrationMethod.POT_MINMSE}  # vai_q_tensorflow's --method


def parse_input_shapes(text: str | None, count: int) -> list[tuple | None]:
    """vai_q's --input_shapes: '?,224,224,3:?,10' -> one shape per input node (? or -1: any size)."""
    if not text:
        return [None] * count
    shapes = [tuple(_dim(d, text) for d in part.split(",")) for part in text.split(":")]
    if len(shapes) != count:
        raise GraphError(f"--input_shapes gives {len(shapes)} shape(s) for {count} input node(s); separate shapes with ':'")
    return shapes


def _dim(text: str, flag_value: str) -> int | None:
    """One size of --input_shapes: ? or -1 (any size), or a positive integer."""
    text = text.strip()
    if text in ("?", "-1"):
        return None
    if not text.isdigit() or int(text) == 0:
        raise GraphError(
            f"--input_shapes '{flag_value}': '{text}' is not a size; give positive integers or ? "
            "separated by ',' (e.g. ?,224,224,3), several inputs separated by ':'"
        )
    return int(text)


def load_input_fn(spec: str | Callable) -> Callable[[int], dict]:
    """'package.module.function' -> the function (vai_q's --input_fn)."""
    if callable(spec):
        return spec
    module_name, _, function = spec.rpartition(".")
    if not module_name:
        raise InputFnError(f"--input_fn '{spec}' is not 'module.function'; give the dotted path of a function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputFnError(f"--input_fn: cannot import module '{module_name}' ({error}); is it on PYTHONPATH?") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise InputFnError(f"--input_fn: module '{module_name}' has no function '{function}'")
    return fn


def check_shapes(graph_def: GraphDef, inputs: list[str], shapes: list[tuple | None]) -> dict[str, tuple]:
    """--input_shapes must agree with what the graph's placeholders declare (an input cut at
    another node declares nothing)."""
    by_name = nodes_by_name(graph_def)
    known = {}
    for name, shape in zip(inputs, shapes):
        declared = by_name[name].attr["shape"].shape
        if shape is not None and not declared.unknown_rank:
            dims = [d.size for d in declared.dim]
            if len(dims) != len(shape) or any(d >= 0 and s is not None and d != s for d, s in zip(dims, shape)):
                pretty = ",".join("?" if d < 0 else str(d) for d in dims)
                raise GraphError(f"--input_shapes gives {shape} for '{name}', but the graph declares {pretty}")
        known[name] = shape
    return known


def prepare_and_plan(
    input_frozen_graph, input_nodes, output_nodes, preset, exclude_nodes=(), equalization: Equalization | bool | None = None
) -> tuple[GraphDef, GraphDef, Tf1Plan]:
    graph_def = load_frozen_graph(input_frozen_graph)
    require_nodes(graph_def, input_nodes, "--input_nodes")
    require_nodes(graph_def, output_nodes, "--output_nodes")
    require_nodes(graph_def, exclude_nodes, "--ignore_nodes")
    prepared = prepare(graph_def, input_nodes, output_nodes)
    notes = []
    if preset.target.fixed_point_rules:
        prepared, notes = round_leaky_alphas(prepared)
    equalization = equalization_for(equalization, preset)
    if equalization is not None:
        prepared, equalized = equalize_graph(prepared, equalization, set(exclude_nodes), output_nodes)
        notes += equalized
    plan = make_plan(prepared, input_nodes, output_nodes, preset, exclude_nodes)
    plan.notes = notes
    return graph_def, prepared, plan


def quantize_frozen_graph(
    input_frozen_graph: str | Path,
    input_nodes: list[str],
    output_nodes: list[str],
    input_fn: str | Callable[[int], dict],
    max_calibration_batches: int = 100,
    output_dir: str | Path = "quantize_results",
    input_shapes: str | None = None,
    preset: str | Preset = "npu_cnn",
    method: int | None = None,
    exclude_nodes: Sequence[str] = (),
    quiet: bool = False,
    allow_violations: bool = False,
    equalization: Equalization | bool | None = None,
) -> QuantizeResult:
    """vai_q_tensorflow's quantize: writes ``output_dir/quantize_eval_model.pb`` (runs in TF and
    computes what the int8 model computes) and ``output_dir/quantized.onnx`` (the int8 format).
    ``method``: 0 = power-of-two NonOverflow, 1 = power-of-two MinMSE (vai_q's numbering), for the
    activations. ``max_calibration_batches``: input_fn is called for 0 .. this - 1 (``--calib_iter``).
    ``exclude_nodes``: nodes kept in float (``--ignore_nodes``). ``preset``: a name, or a Preset.
    ``equalization``: cross-layer equalization of the weighted ops joined through ReLU-like ops
    (rq_tf1.equalize): None (the default) on where the preset's weights are per tensor, True / an
    Equalization on, False off (``--equalize``).
    ``input_nodes`` may name any node (the last preprocessing one): the graph is cut there, and
    input_fn gives that node's values. Nothing is written when the ONNX model breaks a rule of the
    preset's format (FormatError), unless ``allow_violations`` (``--allow_violations``)."""
    check_output_path(output_dir, inputs=(input_frozen_graph,), folder=True)
    if method is not None and method not in VAI_METHODS:
        raise SpecError("--method", f"{method}: use 0 (power-of-two NonOverflow) or 1 (power-of-two MinMSE)")
    preset = get_preset(preset, activation_method=VAI_METHODS.get(method))
    require_eight_bit_activations(preset, "rq-tf1")
    fn = load_input_fn(input_fn)
    _, prepared, plan = prepare_and_plan(input_frozen_graph, input_nodes, output_nodes, preset, exclude_nodes, equalization)
    shapes = check_shapes(prepared, input_nodes, parse_input_shapes(input_shapes, len(input_nodes)))
    scales = calibrate(prepared, plan, preset, input_nodes, shapes, fn, max_calibration_batches, quiet=quiet)
    eval_graph, _, _ = quantized_graph(prepared, plan, scales, output_nodes, for_export=False)
    export_graph, activation_markers, weight_markers = quantized_graph(prepared, plan, scales, output_nodes, for_export=True)
    float_nodes = plan.float_nodes()
    model, violations, log = to_onnx(
        export_graph, input_nodes, output_nodes, activation_markers, weight_markers, scales, preset, float_nodes
    )
    require_valid(violations, preset, allow=allow_violations, flag="--allow_violations")
    files = _write(Path(output_dir), eval_graph, model)
    return QuantizeResult(
        files["onnx"],
        model,
        preset,
        quantized_ops=list(plan.placement.quantized_ops),
        float_ops=plan.placement.float_ops,
        notes=plan.notes + scales.notes,
        violations=violations,
        qparams={tensor: scales.of_tensor(plan, tensor) for tensor in plan.placement.quantized},
        log=log,
        files=files,
    )


def _write(output_dir: Path, eval_graph: GraphDef, model: onnx.ModelProto) -> dict[str, Path]:
    """Both files, moved into ``output_dir`` together; their paths by role."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        (staging / EVAL_MODEL).write_bytes(eval_graph.SerializeToString(deterministic=True))
        save_onnx(model, staging / ONNX_MODEL)
        output_dir.mkdir(exist_ok=True)
        for name in (EVAL_MODEL, ONNX_MODEL):
            (staging / name).replace(output_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"eval_model": output_dir / EVAL_MODEL, "onnx": output_dir / ONNX_MODEL}


def inspect_frozen_graph(input_frozen_graph, input_nodes=None, output_nodes=None, preset="npu_cnn") -> list[tuple[str, str, str]]:
    """(node, op, what rq-tf1 does with it) for every node of the graph."""
    graph_def = load_frozen_graph(input_frozen_graph)
    inputs = input_nodes or [n.name for n in graph_def.node if n.op == "Placeholder"]
    outputs = output_nodes or _sinks(graph_def)
    _, prepared, plan = prepare_and_plan(input_frozen_graph, inputs, outputs, get_preset(preset))
    kept = nodes_by_name(prepared)
    float_reason = {f.node: f.reason for f in plan.placement.float_ops}
    quantized_ops = set(plan.placement.quantized_ops)
    merged = {w.bias_add: w.node for w in plan.weighted if w.bias_add}
    rows = []
    for node in graph_def.node:
        if node.name not in kept:
            rows.append((node.name, node.op, "removed or folded (training-only, constant, or BatchNorm folded into the conv)"))
        elif node.name in quantized_ops:
            rows.append((node.name, node.op, "quantized"))
        elif node.name in merged and kept[node.name].op != node.op:
            rows.append((node.name, node.op, f"BatchNorm folded into {merged[node.name]} (its quantized bias now)"))
        elif node.name in merged:
            rows.append((node.name, node.op, f"quantized (the bias of {merged[node.name]})"))
        elif node.name in float_reason:
            rows.append((node.name, node.op, f"float: {float_reason[node.name]}"))
        else:
            rows.append(
                (node.name, node.op, "input" if node.op == "Placeholder" else "constant" if node.op == "Const" else "kept")
            )
    return rows


def _sinks(graph_def: GraphDef) -> list[str]:
    read = {ref.lstrip("^").split(":")[0] for n in graph_def.node for ref in n.input}
    return [n.name for n in graph_def.node if n.name not in read and n.op not in ("Const", "NoOp", "Assert")]


def run_eval_model(path: str | Path, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """Run a quantize_eval_model.pb in TensorFlow."""
    graph_def = GraphDef()
    graph_def.ParseFromString(Path(path).read_bytes())
    return run(graph_def, [f"{o}:0" for o in outputs], feeds)
