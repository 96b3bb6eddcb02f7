"""What an int8 ONNX file leaves in float: the ops whose float inputs do not all come from a
DequantizeLinear (the same count for rq's files and ONNX Runtime's)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from rq_common.optable import facts_for

QDQ = {"QuantizeLinear", "DequantizeLinear"}
# ops that only move, shape or pick data: they run in float or int8 at the same cost
DATA_MOVEMENT = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Shape", "Gather", "Slice", "Concat", "Split",
    "Identity", "Constant", "Cast", "Expand", "ConstantOfShape", "Range", "Size", "NonZero", "Tile", "Pad",
}  # fmt: skip


def float_ops(path: Path) -> dict[str, int]:
    """Op type -> how many nodes compute in float: a float input that is not a DequantizeLinear's
    output, unless the node is an activation fused into a quantized op (Conv -> Relu -> Quantize:
    its input is the quantized op's output and its every reader a QuantizeLinear)."""
    model = onnx.load(str(path), load_external_data=False)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a model shape inference cannot read is still counted by name
        pass
    graph = model.graph
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    elem = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    elem.update({i.name: i.data_type for i in graph.initializer})
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}

    def float_inputs(node: onnx.NodeProto) -> list[str]:
        """The float tensors among the inputs the op table quantizes (a Resize's float scales are
        parameters, not data), or among all inputs of an op it does not know."""
        facts = facts_for(node.op_type)
        names = [node.input[i] for i in facts.quantized_slots(node)] if facts is not None else list(node.input)
        return [i for i in names if i and elem.get(i) in float_types]

    def reads_dequantized(node: onnx.NodeProto) -> bool:
        return all(i in dequantized for i in float_inputs(node))

    def fused_activation(node: onnx.NodeProto) -> bool:
        sources = [producer.get(i) for i in float_inputs(node)]
        outputs_quantized = all(r.op_type == "QuantizeLinear" for o in node.output for r in readers.get(o, [])) and any(
            readers.get(o) for o in node.output
        )
        return len(sources) == 1 and sources[0] is not None and reads_dequantized(sources[0]) and outputs_quantized

    counts: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in QDQ or node.op_type in DATA_MOVEMENT or reads_dequantized(node) or fused_activation(node):
            continue
        counts[node.op_type] += 1
    return dict(sorted(counts.items()))
