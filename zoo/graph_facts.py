"""What an int8 ONNX file leaves in float: the ops whose float inputs do not all come from a
DequantizeLinear (the same count for rq's files and ONNX Runtime's)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

QDQ = {"QuantizeLinear", "DequantizeLinear"}
# ops that only move, shape or pick data: they run in float or int8 at the same cost
DATA_MOVEMENT = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Shape", "Gather", "Slice", "Concat", "Split",
    "Identity", "Constant", "Cast", "Expand", "ConstantOfShape", "Range", "Size", "NonZero", "Tile", "Pad",
}  # fmt: skip


def float_ops(path: Path) -> dict[str, int]:
    """Op type -> how many nodes compute in float (a float input that is not a DequantizeLinear's output)."""
    model = onnx.load(str(path), load_external_data=False)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a model shape inference cannot read is still counted by name
        pass
    graph = model.graph
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    elem = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    elem.update({i.name: i.data_type for i in graph.initializer})
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in QDQ or node.op_type in DATA_MOVEMENT:
            continue
        float_inputs = [i for i in node.input if i and elem.get(i) in float_types]
        if any(i not in dequantized for i in float_inputs):
            counts[node.op_type] += 1
    return dict(sorted(counts.items()))
