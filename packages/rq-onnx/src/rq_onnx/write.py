"""Write the int8 model: int8 weights + DequantizeLinear, biases by the preset's rule, Q/DQ pairs
on the planned activations, all with rq_common's builders."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from rq_common.format import insert_qdq_many, make_quantized_constant, replace_initializers_with_quantized
from rq_common.qmath import QParams
from rq_onnx.plan import Plan
from rq_onnx.prepare.cleanup import remove_dead_nodes


def fix_batch_to_one(model: onnx.ModelProto, notes: list[str]) -> None:
    """The NPU compiles one static shape: batch 1 on every graph input (and the tool says so). An
    output dimension becomes 1 only where it is named like a fixed input batch: the first dimension
    of an output is not always the batch (a CTC recognizer's is its time steps)."""
    batch_names = set()
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value == 1):
            old = dims[0].dim_param or dims[0].dim_value
            if dims[0].dim_param:
                batch_names.add(dims[0].dim_param)
            dims[0].Clear()
            dims[0].dim_value = 1
            notes.append(f"npu_cnn: input '{value.name}' batch dimension {old!r} fixed to 1 (the NPU runs batch 1)")
    del model.graph.value_info[:]  # shapes inferred with the old batch dimension
    for value in model.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in batch_names:
                dim.Clear()
                dim.dim_value = 1


def write_quantized(
    model: onnx.ModelProto,
    plan: Plan,
    act: dict[str, QParams],
    weights: dict[str, QParams],
    biases: dict[tuple[str, int], QParams],
    bias_values: dict[tuple[str, int], np.ndarray] | None = None,
    weight_values: dict[str, np.ndarray] | None = None,
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The quantized model, and for every quantized tensor the name its dequantized value has.
    ``bias_values``: float biases that replace the model's (bias correction), by (node, slot);
    ``weight_values``: float weights that replace the model's (adaptive rounding), by name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    nodes = {n.name: n for n in graph.node}
    constants = {t.name: t for t in graph.initializer}
    for name, values in (weight_values or {}).items():
        constants[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))
    for use in plan.biases:
        node = nodes[use.node]
        qp = biases.get((use.node, use.slot))
        if qp is None:
            continue
        values = (bias_values or {}).get((use.node, use.slot))
        if values is None:
            values = numpy_helper.to_array(constants[use.name]).astype(np.float32).reshape(-1)
        if qp.per_channel and values.size == 1:
            values = np.full(qp.scale.shape, values[0], np.float32)
        pieces = make_quantized_constant(f"{use.node}_bias", values, qp)
        pieces.add_to(graph, 0)
        node.input[use.slot] = pieces.output
    replace_initializers_with_quantized(out, {name: weights[name] for name in sorted(weights)})
    dequantized = insert_qdq_many(out, {tensor: act[tensor] for tensor in plan.activations}, plan.float_readers)
    remove_dead_nodes(out)
    return out, dequantized
